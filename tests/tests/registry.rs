//! `vm pull`, `vm push`, `vm login`/`logout` against real registries on
//! loopback: Debian's docker-registry (distribution 2.8), plain and behind
//! TLS with a generated CA and htpasswd basic auth, and a small
//! token-auth registry (tests/fixtures/token-registry.py) for Docker
//! Hub's bearer flow and hostile answers. None of this boots a guest, so
//! it runs on this machine directly.

use vm_tests::{debian_image, env, section, work_dir, START_REGISTRY};

fn after<'a>(text: &'a str, name: &str) -> &'a str {
    section(text, name).trim_end()
}

#[test]
fn registry_login_push_and_pull_over_tls_with_basic_auth() {
    let e = env();
    let w = work_dir("registry-tls");
    let script = format!(
        r#"
W={w}
cd $W
export VM_ROOT=$W/state VM_CONFIG=$W/config DOCKER_CONFIG=$W/docker
{START_REGISTRY}
# A CA, a server certificate for 127.0.0.1 signed by it, a password file.
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=vm-test-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext
openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 2 -extfile ext 2>/dev/null
htpasswd -Bbn alice s3cret > htpasswd
mkdir certs && cp ca.crt certs/
start_registry tls 5443 <<EOF
  tls:
    certificate: $W/srv.crt
    key: $W/srv.key
auth:
  htpasswd:
    realm: vm-test
    path: $W/htpasswd
EOF
start_registry plain 5057 < /dev/null
$VM load -i $IMAGES/busybox.oci.tar > /dev/null
$VM tag busybox 127.0.0.1:5443/t/bb:v1
echo "== no-ca"
echo s3cret | $VM login -u alice --password-stdin 127.0.0.1:5443 2>&1; echo "rc=$?"
echo "== wrong-password"
echo wrong | $VM login -u alice --password-stdin --ca-file ca.crt 127.0.0.1:5443 2>&1; echo "rc=$?"
ls -A $VM_CONFIG 2>/dev/null | wc -l
echo "== anonymous-push"
$VM push --ca-file ca.crt 127.0.0.1:5443/t/bb:v1 2>&1; echo "rc=$?"
echo "== login"
# The CA where Docker keeps them: certs.d/HOST:PORT/*.crt.
mkdir -p $VM_CONFIG/certs.d/127.0.0.1:5443 && cp ca.crt $VM_CONFIG/certs.d/127.0.0.1:5443/
echo s3cret | $VM login -u alice --password-stdin 127.0.0.1:5443; echo "rc=$?"
stat -c %a $VM_CONFIG/config.json
python3 -c 'import json,sys; print(*json.load(open(sys.argv[1]))["auths"])' $VM_CONFIG/config.json
echo "== push"
$VM push 127.0.0.1:5443/t/bb:v1 | sed 's/ size: [0-9]*//'; echo "rc=$?"
$VM push 127.0.0.1:5443/t/bb:v1 > /dev/null; echo "rc=$?"
skopeo inspect --cert-dir certs --creds alice:s3cret --format '{{{{.Digest}}}}' docker://127.0.0.1:5443/t/bb:v1
skopeo inspect --format '{{{{.Digest}}}}' oci-archive:$IMAGES/busybox.oci.tar:busybox
skopeo copy --quiet --src-cert-dir certs --src-creds alice:s3cret docker://127.0.0.1:5443/t/bb:v1 oci:$W/back:bb
skopeo inspect --format '{{{{.Digest}}}}' oci:$W/back:bb
echo "== pull"
export VM_ROOT=$W/state2
$VM pull 127.0.0.1:5443/t/bb:v1 | tail -1; echo "rc=$?"
$VM images | awk 'NR > 1 {{ print $1, $2 }}'
echo "== logout"
$VM logout 127.0.0.1:5443
$VM logout 127.0.0.1:5443
$VM pull 127.0.0.1:5443/t/bb:v1 2>&1 | grep -c "wants credentials"
# Docker's own file is read too.
mkdir -p $DOCKER_CONFIG
printf '{{"auths":{{"127.0.0.1:5443":{{"auth":"%s"}}}}}}' $(printf alice:s3cret | base64) > $DOCKER_CONFIG/config.json
$VM pull 127.0.0.1:5443/t/bb:v1 > /dev/null; echo "rc=$?"
echo "== prompt"
# On a terminal: user name and password asked for, the password not echoed.
(sleep 1; printf 'alice\n'; sleep 1; printf 's3cret\n') | script -qec "$VM login 127.0.0.1:5443" /dev/null > $W/prompt.out; echo "rc=$?"
tr -d '\r' < $W/prompt.out | grep -c s3cret
tr -d '\r' < $W/prompt.out | grep -c -e '^Username: alice$' -e '^Login Succeeded$'
echo "== plain"
# Several layers over plain HTTP (loopback), read back by skopeo and vm.
$VM load -i $IMAGES/oci > /dev/null
$VM tag layers 127.0.0.1:5057/x/layers:3
$VM push 127.0.0.1:5057/x/layers:3 > /dev/null; echo "rc=$?"
skopeo inspect --tls-verify=false --format '{{{{.Digest}}}} {{{{len .Layers}}}}' docker://127.0.0.1:5057/x/layers:3
$VM image inspect layers | python3 -c 'import json,sys; i=json.load(sys.stdin)[0]; print(i["ManifestDigest"], len(i["Layers"]))'
export VM_ROOT=$W/state3
$VM pull 127.0.0.1:5057/x/layers:3 | head -1
echo "== end"
"#,
        w = w.display()
    );
    let out = e.run_here(&script);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    let no_ca = after(o, "no-ca");
    assert!(no_ca.contains("UnknownIssuer"), "{out}");
    assert!(no_ca.contains("--ca-file"), "{out}");
    assert!(no_ca.ends_with("rc=125"), "{out}");
    let wrong = after(o, "wrong-password");
    assert!(wrong.contains("unauthorized (401"), "{out}");
    // Nothing stored for a refused login.
    assert!(wrong.ends_with("rc=125\n0"), "{out}");
    let anon = after(o, "anonymous-push");
    assert!(anon.contains("wants credentials"), "{out}");
    assert!(anon.ends_with("rc=125"), "{out}");
    assert_eq!(
        after(o, "login"),
        "Login Succeeded\nrc=0\n600\n127.0.0.1:5443",
        "{out}"
    );
    // vm push keeps the manifest's digest: skopeo reads the same one from
    // the registry, and copies it back unchanged.
    let push: Vec<&str> = after(o, "push").lines().collect();
    assert_eq!(push.len(), 6, "{out}");
    let digest = push[4];
    assert!(digest.starts_with("sha256:"), "{out}");
    assert_eq!(push[0], format!("v1: digest: {digest}"), "{out}");
    assert_eq!(&push[1..3], ["rc=0", "rc=0"], "{out}");
    assert_eq!(push[3], digest, "{out}");
    assert_eq!(push[5], digest, "{out}");
    assert_eq!(
        after(o, "pull"),
        "Downloaded: 127.0.0.1:5443/t/bb:v1\nrc=0\n127.0.0.1:5443/t/bb v1",
        "{out}"
    );
    assert_eq!(
        after(o, "logout"),
        "Removing login credentials for 127.0.0.1:5443\nNot logged in to 127.0.0.1:5443\n1\nrc=0",
        "{out}"
    );
    assert_eq!(after(o, "prompt"), "rc=0\n0\n2", "{out}");
    let plain: Vec<&str> = after(o, "plain").lines().collect();
    assert_eq!(plain.len(), 4, "{out}");
    assert_eq!(plain[0], "rc=0", "{out}");
    let layers: usize = plain[1]
        .split(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(layers > 1, "{out}");
    assert_eq!(plain[1], plain[2], "{out}");
    let pushed = plain[1].split(' ').next().unwrap_or_default();
    assert_eq!(plain[3], format!("Digest: {pushed}"), "{out}");
}

#[test]
fn registry_token_auth_retries_and_hostile_answers() {
    let e = env();
    let w = work_dir("registry-token");
    let script = format!(
        r#"
W={w}
export VM_ROOT=$W/state VM_CONFIG=$W/config DOCKER_CONFIG=$W/docker
python3 tests/fixtures/token-registry.py 5071 $IMAGES/oci > $W/reg.log 2>&1 &
reg=$!
trap 'kill $reg' EXIT
for i in $(seq 1 100); do grep -q ready $W/reg.log && break; sleep 0.1; done
R=127.0.0.1:5071
echo "== anonymous"
$VM pull $R/good/img:busybox 2>&1; echo "rc=$?"
echo "== login"
echo nope | $VM login -u bob --password-stdin $R 2>&1; echo "rc=$?"
echo hunter2 | $VM login -u bob --password-stdin $R; echo "rc=$?"
echo "== pull"
# Each blob's first request fails with 503: retried.
$VM pull $R/good/img:busybox | tail -1; echo "rc=$?"
echo "== multi-arch"
# A manifest list: linux/amd64 is picked, the others are never fetched.
$VM pull $R/good/img:multi | tail -1; echo "rc=$?"
$VM image inspect $R/good/img:multi | python3 -c 'import json,sys; i=json.load(sys.stdin)[0]; print(i["Architecture"], i["ManifestDigest"] == sys.argv[1])' "$($VM image inspect $R/good/img:busybox | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["ManifestDigest"])')"
echo "== hostile"
$VM pull $R/big/x 2>&1; echo "rc=$?"
$VM pull $R/weird/x 2>&1; echo "rc=$?"
$VM pull $R/long/x 2>&1; echo "rc=$?"
$VM pull $R/hugeconfig/x 2>&1; echo "rc=$?"
$VM pull $R/good/img:nosuch 2>&1; echo "rc=$?"
echo "== store"
$VM images | awk 'NR > 1 {{ print $1, $2 }}'
ls -A $VM_ROOT/images/blobs/sha256 | wc -l
echo "== end"
"#,
        w = w.display()
    );
    let out = e.run_here(&script);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    let anon = after(o, "anonymous");
    assert!(
        anon.contains("wants credentials: `vm login 127.0.0.1:5071`"),
        "{out}"
    );
    assert!(anon.ends_with("rc=125"), "{out}");
    let login = after(o, "login");
    assert!(login.contains("refused the credentials"), "{out}");
    assert!(login.ends_with("rc=125\nLogin Succeeded\nrc=0"), "{out}");
    assert_eq!(
        after(o, "pull"),
        "Downloaded: 127.0.0.1:5071/good/img:busybox\nrc=0",
        "{out}"
    );
    assert_eq!(
        after(o, "multi-arch"),
        "Downloaded: 127.0.0.1:5071/good/img:multi\nrc=0\namd64 True",
        "{out}"
    );
    let hostile: Vec<&str> = after(o, "hostile").lines().collect();
    assert_eq!(hostile.len(), 10, "{out}");
    assert!(
        hostile[0].contains("larger than the 4194304-byte limit"),
        "{out}"
    );
    assert!(
        hostile[2]
            .contains("unsupported manifest media type \"application/vnd.example.thing.v1+json\""),
        "{out}"
    );
    assert!(
        hostile[4].contains("longer than the 2 bytes its descriptor gives"),
        "{out}"
    );
    assert!(
        hostile[6].contains("1099511627776 bytes is more than the 4194304-byte limit"),
        "{out}"
    );
    assert!(
        hostile[8].contains("not found (404: MANIFEST_UNKNOWN"),
        "{out}"
    );
    for rc in [1, 3, 5, 7, 9] {
        assert_eq!(hostile[rc], "rc=125", "{out}");
    }
    // Only the good image is stored (under both tags): its manifest,
    // config and one layer.
    assert_eq!(
        after(o, "store"),
        "127.0.0.1:5071/good/img busybox\n127.0.0.1:5071/good/img multi\n3",
        "{out}"
    );
}

#[test]
fn registry_pull_killed_midway_then_pulled_again() {
    let e = env();
    let w = work_dir("registry-kill");
    let script = format!(
        r#"
W={w}
export VM_ROOT=$W/state VM_CONFIG=$W/config DOCKER_CONFIG=$W/docker
{START_REGISTRY}
start_registry plain 5058 < /dev/null
skopeo copy --quiet --dest-tls-verify=false oci:{debian}:debian docker://127.0.0.1:5058/deb/debian:12
B=$VM_ROOT/images/blobs/sha256
# Every blob in the store is what its name says.
check_blobs() {{
    bad=0
    for f in $B/*; do [ -e "$f" ] || continue; [ "$(sha256sum < $f | cut -c1-64)" = "$(basename $f)" ] || bad=$((bad + 1)); done
    echo "bad=$bad"
}}
echo "== kill"
# Kill the pull while its layer is half written; the download can be
# quicker than the first try to catch it, so try a few times.
for try in 1 2 3 4 5; do
    rm -rf $VM_ROOT
    $VM pull 127.0.0.1:5058/deb/debian:12 > /dev/null 2>&1 &
    pid=$!
    while kill -0 $pid 2>/dev/null && ! ls $B/.tmp-* > /dev/null 2>&1; do :; done
    kill -KILL $pid 2>/dev/null
    wait $pid; rc=$?
    [ $rc = 137 ] && ls $B/.tmp-* > /dev/null 2>&1 && break
done
echo "rc=$rc"
$VM images | wc -l
check_blobs
echo "== again"
$VM pull 127.0.0.1:5058/deb/debian:12 | tail -1; echo "rc=$?"
$VM images | awk 'NR > 1 {{ print $1, $2 }}'
ls -A $B | grep -c '^\.tmp-' || true
check_blobs
echo "== concurrent"
export VM_ROOT=$W/state2
$VM pull 127.0.0.1:5058/deb/debian:12 > $W/p1 2>&1 & p1=$!
$VM pull 127.0.0.1:5058/deb/debian:12 > $W/p2 2>&1 & p2=$!
wait $p1; echo "rc=$?"; wait $p2; echo "rc=$?"
$VM images | awk 'NR > 1 {{ print $1, $2 }}'
B=$VM_ROOT/images/blobs/sha256
check_blobs
ls $B | wc -l
echo "== end"
"#,
        w = w.display(),
        debian = debian_image().display()
    );
    let out = e.run_here(&script);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    // Killed mid-layer: no image named, nothing under a digest that does
    // not match it.
    assert_eq!(after(o, "kill"), "rc=137\n1\nbad=0", "{out}");
    assert_eq!(
        after(o, "again"),
        "Downloaded: 127.0.0.1:5058/deb/debian:12\nrc=0\n127.0.0.1:5058/deb/debian 12\n0\nbad=0",
        "{out}"
    );
    assert_eq!(
        after(o, "concurrent"),
        "rc=0\nrc=0\n127.0.0.1:5058/deb/debian 12\nbad=0\n3",
        "{out}"
    );
}
