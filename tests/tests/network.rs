//! Container networks, as root in the nested host: tests/scripts/network.sh
//! boots the containers; each section here checks one behaviour.

use vm_tests::{env, section, work_dir, ScriptOutput};

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn run() -> ScriptOutput {
    let e = env();
    let w = work_dir("network");
    let script = format!(
        "W={w} DEBIAN_IMAGE={debian} bash {repo}/tests/scripts/network.sh",
        w = w.display(),
        debian = vm_tests::debian_image().display(),
        repo = e.repo.display()
    );
    e.run_with_kvm_retrying_for(&script, 600, |out| out.stdout.contains("rc=124"))
}

#[test]
fn container_networks() {
    let out = run();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("== end"), "{out}");

    assert_eq!(
        lines(section(&out.stdout, "none")),
        ["lo ", "lo-up", "rc=0"],
        "--network none: lo alone, and up\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "bridge")),
        [
            "eth0 lo ",
            "10.213.0.X/16",
            "default via 10.213.0.1 dev eth0 ",
            "1",
            "search corp.example",
            "192.0.2.9\tdb",
        ],
        "the default network: an address on 10.213.0.0/16, the route, a name server, --dns-search, --add-host\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "egress")),
        ["198.51.100.1", "rc=0"],
        "a container reaches the outside, masqueraded behind the host's address\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "host-services")),
        [
            "10.213.0.1 blocked",
            "198.51.100.1 blocked",
            "gateway-pings",
            "host-service"
        ],
        "a container reaches none of the host's own services (which do answer the host)\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "spoof")),
        ["sent", "ctl-arp ctl-ip end", "0"],
        "frames from another MAC, ARP and IPv4 from another address, and other ethertypes are dropped at the bridge; the container's own pass\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "publish")),
        [
            "hello-from-web",
            "hello-from-web",
            "hello-from-web",
            "80/tcp -> 0.0.0.0:8080",
            "0.0.0.0:8080",
            "web 0.0.0.0:8080->80/tcp",
            "1",
        ],
        "-p publishes on 127.0.0.1, the host's addresses and to other hosts; vm port, ps, inspect\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "udp")),
        [
            "5353/udp -> 0.0.0.0:5353",
            "pong hi-over-udp",
            "hi-over-udp"
        ],
        "UDP publishing, both ways\n{out}"
    );

    let s = section(&out.stdout, "taken");
    assert_eq!(
        lines(s),
        ["rc=125", "1"],
        "a taken port fails the run with 125, naming the port\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "ten")),
        ["10", "10", "host-reached=10 peers-reached=10"],
        "ten containers at once: ten addresses, each reachable from the host and from a peer\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "killed-monitor")),
        ["swept"],
        "{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "user-networks")),
        [
            "bridge bridge back bridge front bridge sealed bridge ",
            "10.77.0.0/24 10.77.0.1 back False",
            "again rc=125",
            "1",
            "1",
            "1",
            "1",
            "api",
            "user-refused",
            // from front
            "1",
            "api",
            "api",
            "both",
            "db-unknown",
            "10.77.0.50 unreachable",
            "plain unreachable",
            "198.51.100.7 www.example.test",
            "-- back",
            "db",
            "both",
            "1",
            "api-unknown",
            "-- sealed",
            "198.51.100.2 unreachable",
            "no-names-out",
            "1",
            "-- views",
            "back 10.77.0 store",
            "front 10.214.0 ",
            "10.77.0.50",
            "both front,back",
            "db back",
            "2",
            "1",
            "front",
            "back",
            "sealed",
            "0",
            "0",
            "0",
        ],
        "user-defined networks: ls, inspect, a taken name, a taken subnet, link-local and a subnet the host routes refused; connect refused while running; root on the host reaches a container, other users do not; containers find each other by name and alias on their network and not across networks; other names are forwarded to --dns; an internal network has no way out and publishes nothing; connect (stopped only), two networks at once; rm removes the bridge, its firewall elements and its files\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "rootless")),
        [
            "198.51.100.1",
            "80/tcp -> 0.0.0.0:8090",
            "hello-rootless",
            "hello-rootless",
            "udp rc=125",
            "1",
            "0"
        ],
        "a user who is not root: egress through passt (NAT to the host's address), the port as published and answering on 127.0.0.1 and to another host (over vsock), UDP publishing refused, and passt ends with the container\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "leftovers")),
        ["0", "0", "0", "1"],
        "after rm (and a killed monitor's sweep) no TAP, no TAP chain, no lease is left; the bridge stays, as docker0 does\n{out}"
    );
}
