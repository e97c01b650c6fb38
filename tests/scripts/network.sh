#!/usr/bin/env bash
# Container networks, as root in the nested host: --network none, the
# default bridge network (address, route, DNS), egress through NAT to a
# network namespace that stands in for the internet, published ports
# (TCP on 127.0.0.1 and the host's other addresses, UDP), a taken port,
# spoofed addresses, the host's own services, ten containers at once,
# user-defined networks (names, walls, internal, connect), and nothing left after stop and rm or after a killed monitor.
# Needs: $VM, $IMAGES, $DEBIAN_IMAGE (an OCI layout), $VM_ROOT, $W.
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
R="vm run --rm -m 96m"
D=oci:$DEBIAN_IMAGE

# The "internet": a namespace behind a veth pair, 198.51.100.2, with an
# HTTP server whose CGI answers with the client's address.
ip netns add inet
ip link add vmh0 type veth peer name vmi0
ip link set vmi0 netns inet
ip addr add 198.51.100.1/24 dev vmh0
ip link set vmh0 up
ip netns exec inet ip addr add 198.51.100.2/24 dev vmi0
ip netns exec inet ip link set vmi0 up
ip netns exec inet ip link set lo up
mkdir -p "$W/www/cgi-bin"
# (httpd listens on IPv6 too: an IPv4 client shows as [::ffff:A.B.C.D])
printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "$REMOTE_ADDR" | sed "s/^\\[::ffff://; s/\\]$//"\n' > "$W/www/cgi-bin/ip"
chmod +x "$W/www/cgi-bin/ip"
ip netns exec inet busybox httpd -f -p 80 -h "$W/www" &
inet_httpd=$!
# A service of the host's own, which containers must not reach.
python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7777)); s.listen(8)
while True:
    c, _ = s.accept(); c.sendall(b"host-service\n"); c.close()' &
host_service=$!
trap 'kill $inet_httpd $host_service 2>/dev/null; ip netns del inet 2>/dev/null' EXIT

echo "== none"
$R --network none $I sh -c 'ls /sys/class/net | tr "\n" " "; echo
ping -c 1 -W 2 127.0.0.1 > /dev/null && echo lo-up'; echo "rc=$?"

echo "== bridge"
$R --dns-search corp.example --add-host db:192.0.2.9 $I sh -c '
ls /sys/class/net | tr "\n" " "; echo
ip -4 -o addr show eth0 | awk "{print \$4}" | sed "s/\.[0-9]*\/16$/.X\/16/"
ip route | grep ^default
grep -c ^nameserver /etc/resolv.conf
grep ^search /etc/resolv.conf
grep -w db /etc/hosts'

echo "== egress"
$R $I wget -q -O - http://198.51.100.2/cgi-bin/ip; echo "rc=$?"

echo "== host-services"
$R $I sh -c 'for a in 10.213.0.1 198.51.100.1; do
  if echo hi | nc -w 3 $a 7777 2>/dev/null | grep -q host-service; then echo "$a reached"; else echo "$a blocked"; fi
done
ping -c 1 -W 3 10.213.0.1 > /dev/null && echo gateway-pings'
# (the host's service itself answers on the host)
echo hi | busybox nc -w 3 127.0.0.1 7777

echo "== spoof"
# A container's root (with Docker's CAP_NET_RAW) forges frames; what gets
# through to the bridge is seen there.
here=$(dirname "$0")
python3 "$here/sniff.py" vm0 > "$W/sniffed" &
sniffer=$!
for _ in $(seq 1 50); do grep -q listening "$W/sniffed" 2>/dev/null && break; sleep 0.1; done
vm run --rm "$D" perl -e "$(cat "$here/spoof.pl")"
wait $sniffer
tail -1 "$W/sniffed"
# The bridge never learned the forged MAC (link-local frames, which skip
# its prerouting hook, included).
bridge fdb show br vm0 | grep -ci 02:00:00:00:00:99

echo "== publish"
vm run -d --name web -m 96m -p 8080:80 $I sh -c '
mkdir -p /www && echo hello-from-web > /www/index.html
exec httpd -f -p 80 -h /www' > /dev/null
await web '{{.State.Status}}' running
for _ in $(seq 1 150); do
    curl -s -m 2 http://127.0.0.1:8080/ > /dev/null && break
    sleep 0.2
done
curl -s -m 5 http://127.0.0.1:8080/
curl -s -m 5 http://198.51.100.1:8080/
ip netns exec inet curl -s -m 5 http://198.51.100.1:8080/
vm port web
vm port web 80
vm ps --format '{{.Names}} {{.Ports}}'
vm inspect -f '{{.NetworkSettings.Ports}}' web | grep -c 8080

echo "== udp"
# busybox has no UDP server: Debian's perl-base does it.
vm run -d --name udp -p 5353:5353/udp "$D" perl -MIO::Socket::INET -e '
$| = 1;
my $s = IO::Socket::INET->new(LocalPort => 5353, Proto => "udp") or die "socket: $!";
while (defined $s->recv(my $m, 1500)) { print $m; $s->send("pong $m"); }' > /dev/null
await udp '{{.State.Status}}' running
vm port udp
python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for _ in range(120):
    s.sendto(b"hi-over-udp\n", ("127.0.0.1", 5353))
    try:
        print(s.recv(100).decode().strip())
        break
    except socket.timeout:
        pass
'
vm logs udp | head -1
vm rm -f udp > /dev/null

echo "== taken"
$R -p 8080:80 $I true 2> "$W/taken.err"; echo "rc=$?"
grep -c "port 8080/tcp on 0.0.0.0 is already in use" "$W/taken.err"
vm rm -f web > /dev/null

echo "== ten"
for i in 0 1 2 3 4 5 6 7 8 9; do
    vm run -d --name "n$i" -m 64m $I sh -c "mkdir /w; echo n$i > /w/index.html; exec httpd -f -p 80 -h /w" > /dev/null \
        || echo "n$i failed"
done
ips=""
for i in 0 1 2 3 4 5 6 7 8 9; do
    await "n$i" '{{.State.Status}}' running
    ips="$ips $(vm inspect -f '{{.NetworkSettings.IPAddress}}' "n$i")"
done
echo "$ips" | tr ' ' '\n' | grep -c .
echo "$ips" | tr ' ' '\n' | grep . | sort -u | wc -l
# Each answers the host, and n0 reaches each of the others.
ok=0 peer=0
for i in 0 1 2 3 4 5 6 7 8 9; do
    ip=$(vm inspect -f '{{.NetworkSettings.IPAddress}}' "n$i")
    for _ in $(seq 1 100); do curl -s -m 2 "http://$ip/" > /dev/null && break; sleep 0.2; done
    [ "$(curl -s -m 5 "http://$ip/")" = "n$i" ] && ok=$((ok + 1))
    [ "$(timeout 20 "$VM" exec n0 wget -q -O - "http://$ip/")" = "n$i" ] && peer=$((peer + 1))
done
echo "host-reached=$ok peers-reached=$peer"
vm rm -f n0 n1 n2 n3 n4 n5 n6 n7 n8 n9 > /dev/null

echo "== killed-monitor"
vm run -d --name victim -m 64m -p 8081:80 $I sleep 1000 > /dev/null
await victim '{{.State.Status}}' running
kill -9 "$(vm inspect -f '{{.State.Pid}}' victim)"
sleep 1
# The next command sweeps what the monitor left.
$R --network none $I true
vm rm -f victim > /dev/null
echo swept

echo "== user-networks"
GET=$(cat "$here/get.pl")
ip netns exec inet python3 "$here/dns-server.py" 198.51.100.2 &
inet_dns=$!
vm network create front > /dev/null
vm network create --subnet 10.77.0.0/24 --label tier=back back > /dev/null
vm network create --internal sealed > /dev/null
vm network ls --format '{{.Name}} {{.Driver}}' | tr '\n' ' '; echo
vm network inspect back | python3 -c '
import json, sys
n = json.load(sys.stdin)[0]
c = n["IPAM"]["Config"][0]
print(c["Subnet"], c["Gateway"], n["Labels"]["tier"], n["Internal"])'
vm network create front 2> /dev/null; echo "again rc=$?"
vm network create --subnet 10.77.0.128/25 other 2>&1 > /dev/null | grep -c "overlaps network back"
vm network create --subnet 169.254.169.0/24 meta 2>&1 > /dev/null | grep -c "link-local"
ip route add 203.0.113.0/24 dev vmh0
vm network create --subnet 203.0.113.0/24 routed 2>&1 > /dev/null | grep -c "the host's route to 203.0.113.0/24"
ip route del 203.0.113.0/24 dev vmh0
webserver() {
    vm run -d --name "$1" -m 64m "${@:2}" $I sh -c "mkdir /w; echo $1 > /w/index.html; exec httpd -f -p 80 -h /w" > /dev/null
}
webserver api --network front --network-alias backend-api
webserver db --network back --ip 10.77.0.50
webserver plain
vm create --name both -m 64m --network front $I sh -c "mkdir /w; echo both > /w/index.html; exec httpd -f -p 80 -h /w" > /dev/null
vm network connect --alias store back both
vm start both > /dev/null
for c in api db plain both; do await $c '{{.State.Status}}' running; done
vm network connect back api 2>&1 | grep -c "no hot-plug"
# Root on the host reaches a container; other users only through ports.
api_ip=$(vm inspect -f '{{.NetworkSettings.IPAddress}}' api)
curl -s -m 5 "http://$api_ip/"
setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -m 3 "http://$api_ip/" || echo user-refused
plain_ip=$(vm inspect -f '{{.NetworkSettings.IPAddress}}' plain)
# From front: names and aliases there, the outside's names through the
# network's DNS; nothing on back or the default network.
$R --network front --dns 198.51.100.2 "$D" sh -c "
getent hosts api | grep -c '^10\.214\.'
perl -e '$GET' api
perl -e '$GET' backend-api
perl -e '$GET' both
getent hosts db | grep -q '^10\.77\.' || echo db-unknown
perl -e '$GET' 10.77.0.50
perl -e '$GET' $plain_ip
getent hosts www.example.test | awk '{print \$1, \$2}'" | sed "s/^$plain_ip /plain /"
echo "-- back"
$R --network back "$D" sh -c "
perl -e '$GET' db
perl -e '$GET' store
getent hosts both | cut -d' ' -f1 | grep -c '^10\.77\.0\.'
getent hosts api > /dev/null || echo api-unknown"
echo "-- sealed"
$R --network sealed --dns 198.51.100.2 "$D" sh -c "
perl -e '$GET' 198.51.100.2
getent hosts www.example.test > /dev/null || echo no-names-out"
$R --network sealed -p 8082:80 $I true 2>&1 | grep -c "internal"
echo "-- views"
vm inspect both | python3 -c '
import json, sys
n = json.load(sys.stdin)[0]["NetworkSettings"]["Networks"]
for k, v in n.items():
    print(k, v["IPAddress"].rsplit(".", 1)[0], ",".join(v["Aliases"]))'
vm inspect -f '{{.NetworkSettings.IPAddress}}' db
vm ps --filter network=back --format '{{.Names}} {{.Networks}}' | sort
vm network inspect -f '{{len .Containers}}' back
vm network rm back 2>&1 | grep -c "running containers"
vm rm -f api db both plain > /dev/null
vm network rm front back sealed
ip -o link show | grep -c ' vmbr-'
nft list set ip vm bridges | grep -c vmbr-
ls "$VM_ROOT/networks" | grep -c -e front -e back -e sealed
kill $inet_dns

echo "== rootless"
# A user who is not root gets passt. passt wants an interface with a
# default route: the veth to the "internet".
ip route add default via 198.51.100.2 dev vmh0
chmod 666 /dev/kvm
# The VMM of a user who is not root gets its namespaces in a user namespace.
sysctl -qw kernel.unprivileged_userns_clone=1 2>/dev/null
sysctl -qw user.max_user_namespaces=10000
U=/tmp/rootless
mkdir -p "$U/state"
cp "$VM_KERNEL" "$U/vmlinux"
cp "$VM_INITRD" "$U/agent.cpio"
# (umoci's layouts are private to root)
cp -r "$IMAGES/oci" "$U/oci"
chown 65534:65534 "$U/state"
chmod -R a+rX "$U"
as_user() {
    setpriv --reuid=65534 --regid=65534 --clear-groups \
        env HOME="$U" VM_ROOT="$U/state" VM_KERNEL="$U/vmlinux" VM_INITRD="$U/agent.cpio" \
        timeout 120 "$VM" "$@"
}
as_user run -d --name rl -m 96m -p 8090:80 "oci:$U/oci:busybox" sh -c '
mkdir -p /w && echo hello-rootless > /w/index.html
exec httpd -f -p 80 -h /w' > /dev/null
as_user exec rl wget -q -O - http://198.51.100.2/cgi-bin/ip
as_user port rl
# The published port, on 127.0.0.1 and from the "internet".
for _ in $(seq 1 100); do curl -s -m 2 http://127.0.0.1:8090/ > /dev/null && break; sleep 0.2; done
curl -s -m 5 http://127.0.0.1:8090/
ip netns exec inet curl -s -m 5 http://198.51.100.1:8090/
as_user rm -f rl > /dev/null
as_user run --rm -p 5353/udp "oci:$U/oci:busybox" true 2> "$U/udp.err"; echo "udp rc=$?"
grep -c "cannot publish UDP ports" "$U/udp.err"
pgrep -c -x passt

echo "== leftovers"
ip -o link show | grep -c ' vm[0-9]*-'
nft list table netdev vm | grep -c 'chain vm[0-9]*-'
grep -c '10\.213\.' "$VM_ROOT/networks/bridge.leases.json"
ip -o link show vm0 | grep -c vm0
echo "== end"
