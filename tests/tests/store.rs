//! The local image store without a registry or a guest: untagged images,
//! image IDs, `vm tag`/`vm rmi` by ID, `vm image prune`, `vm images` and
//! `vm image inspect` in Docker's shape. Runs on this
//! machine.

use vm_tests::{env, section, work_dir};

#[test]
fn untagged_images_ids_tag_rmi_and_prune() {
    let e = env();
    let w = work_dir("store-ids");
    let script = format!(
        r#"
W={w}
export VM_ROOT=$W/state
# The same image twice (same config, different manifests): the second load
# takes the name, the first stays untagged.
$VM load -i $IMAGES/busybox.oci.tar > /dev/null
$VM load -i $IMAGES/busybox.docker.tar > /dev/null
echo "== list"
$VM images | awk 'NR > 1 {{ print $1, $2 }}' | LC_ALL=C sort
id=$($VM images | awk '$1 == "<none>" {{ print $3 }}')
dangling=$($VM images --format json | python3 -c 'import json,sys; print(*[json.loads(l)["Digest"][7:19] for l in sys.stdin if json.loads(l)["Repository"] == "<none>"])')
echo "== ambiguous"
# Both share the config, so the image ID names two manifests.
$VM tag $id old:1 2>&1 | grep -c "matches 2 images"
echo "== tag-by-digest"
$VM tag $dangling old:1; echo "rc=$?"
$VM tag old:1 old:2
$VM images | awk 'NR > 1 {{ print $1, $2 }}' | LC_ALL=C sort
echo "== rmi-by-id"
$VM rmi $dangling 2>&1; echo "rc=$?"
$VM rmi -f $dangling | sed 's/sha256:[0-9a-f]*/DIGEST/'; echo "rc=$?"
$VM images | awk 'NR > 1 {{ print $1, $2 }}'
echo "== prune"
$VM image prune -f
ls $VM_ROOT/images/blobs/sha256 | wc -l
echo "== end"
"#,
        w = w.display()
    );
    let out = e.run_here(&script);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    let after = |name| section(o, name).trim_end();
    assert_eq!(after("list"), "<none> <none>\nbusybox latest", "{out}");
    assert_eq!(after("ambiguous"), "1", "{out}");
    assert_eq!(
        after("tag-by-digest"),
        "rc=0\nbusybox latest\nold 1\nold 2",
        "{out}"
    );
    let rmi = after("rmi-by-id");
    assert!(
        rmi.starts_with(&format!(
            "vm: error: image {} has 2 names; remove them by name, or use --force\nrc=125\n",
            rmi.split(' ').nth(3).unwrap_or_default()
        )),
        "{out}"
    );
    assert!(
        rmi.ends_with("Untagged: old:1\nUntagged: old:2\nDeleted: DIGEST\nrc=0\nbusybox latest"),
        "{out}"
    );
    // Nothing untagged is left; busybox keeps its manifest, config and
    // layer.
    assert_eq!(after("prune"), "Total reclaimed space: 0B\n3", "{out}");
}

#[test]
fn images_list_and_inspect_as_docker_does() {
    let e = env();
    let w = work_dir("store-images");
    let script = format!(
        r#"
W={w}
export VM_ROOT=$W/state
$VM load -i $IMAGES/busybox.docker.tar > /dev/null
echo "== table"
$VM images | head -1 | tr -s ' '
$VM images | awk 'NR > 1 {{ print $1, $2, length($3), $(NF-1) }}'
echo "== templates"
$VM images --format '{{{{.Repository}}}}:{{{{.Tag}}}} {{{{len .ID}}}}'
$VM images -q | awk '{{ print length($0) }}'
$VM images -q --no-trunc | cut -c1-7
$VM images busybox:latest --format '{{{{.Repository}}}}'
$VM images nosuch | wc -l
echo "== size"
# Docker's count, worked out here with Python's tarfile from the same
# archive: every member but directories, a link's target's length, hard
# links not again.
python3 - "$IMAGES/busybox.docker.tar" <<'PY'
import io, json, sys, tarfile
outer = tarfile.open(sys.argv[1])
manifest = json.load(outer.extractfile("manifest.json"))[0]
total = 0
for layer in manifest["Layers"]:
    for m in tarfile.open(fileobj=io.BytesIO(outer.extractfile(layer).read())):
        if m.isdir() or m.islnk():
            continue
        total += len(m.linkname) if m.issym() else m.size
print(total)
PY
$VM image inspect -f '{{{{.Size}}}}' busybox
$VM image inspect -f '{{{{len .RepoDigests}}}} {{{{.Metadata.LastTagTime}}}}' busybox
$VM image inspect -f '{{{{index .RepoDigests 0}}}}' busybox | cut -c1-15
echo "== pipe"
# A reader that has gone: vm ends quietly by SIGPIPE (Python holds a
# pipe whose reading end it closed first, so the end is certain).
python3 -c 'import os, subprocess, sys
r, w = os.pipe(); os.close(r)
p = subprocess.run([sys.argv[1], "images", "--format", "json"], stdout=w, stderr=subprocess.PIPE)
print("rc=%d stderr=%d" % (p.returncode, len(p.stderr)))' "$VM"
echo "== end"
"#,
        w = w.display()
    );
    let out = e.run_here(&script);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    let after = |name| section(o, name).trim_end();
    assert_eq!(
        after("table"),
        "REPOSITORY TAG IMAGE ID CREATED SIZE\nbusybox latest 12 ago",
        "Docker's columns, a 12-digit ID, CREATED as a time ago\n{out}"
    );
    assert_eq!(
        after("templates"),
        "busybox:latest 12\n12\nsha256:\nbusybox\n1",
        "Go templates over Docker's fields, -q, --no-trunc, a REPOSITORY[:TAG] filter\n{out}"
    );
    let size: Vec<&str> = after("size").lines().collect();
    assert_eq!(size.len(), 4, "{out}");
    assert_eq!(
        size[0], size[1],
        "the unpacked size is what Python's tarfile counts in the archive's layers\n{out}"
    );
    assert_eq!(size[2], "1 0001-01-01T00:00:00Z", "{out}");
    assert_eq!(size[3], "busybox@sha256:", "{out}");
    assert_eq!(
        after("pipe"),
        "rc=-13 stderr=0",
        "a closed pipe ends vm by SIGPIPE, silently\n{out}"
    );
}
