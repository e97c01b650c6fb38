//! The local image store without a registry or a guest: untagged images,
//! image IDs, `vm tag`/`vm rmi` by ID, `vm image prune`. Runs on this
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
