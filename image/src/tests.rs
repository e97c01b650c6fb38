//! Image layouts and archives made by hand in a temporary directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vm-image-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("blobs/sha256")).expect("mkdir");
        Self(p)
    }

    fn blob(&self, data: &[u8]) -> (String, u64) {
        let d = Digest::of_bytes(data);
        std::fs::write(self.0.join("blobs/sha256").join(d.hex()), data).expect("write blob");
        (d.to_string(), data.len() as u64)
    }

    fn json_blob(&self, v: &serde_json::Value) -> (String, u64) {
        self.blob(&serde_json::to_vec(v).expect("json"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn config() -> serde_json::Value {
    json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/ep"], "Cmd": ["a", "b"], "Env": ["X=1"], "WorkingDir": "/w", "User": "app"},
        "rootfs": {"type": "layers", "diff_ids": []}
    })
}

/// A layout with one image; returns (dir, manifest digest, layer digest).
fn layout(
    name: &str,
    layer_type: &str,
    platform_index: bool,
    tag: Option<&str>,
) -> (Dir, String, String) {
    let d = Dir::new(name);
    std::fs::write(d.0.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let (cd, cs) = d.json_blob(&config());
    let (ld, ls) = d.blob(b"pretend this is a gzip layer");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": layer_type, "digest": ld, "size": ls}]
    });
    let (md, ms) = d.json_blob(&manifest);
    let mut top = json!({"mediaType": MANIFEST, "digest": md, "size": ms});
    if platform_index {
        // An index with an arm64 entry first: amd64 must be picked.
        let other = json!({"mediaType": MANIFEST, "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
                           "platform": {"architecture": "arm64", "os": "linux"}});
        let mine = json!({"mediaType": MANIFEST, "digest": md, "size": ms,
                          "platform": {"architecture": "amd64", "os": "linux"}});
        let (id, is) = d.json_blob(
            &json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [other, mine]}),
        );
        top = json!({"mediaType": INDEX, "digest": id, "size": is});
    }
    if let Some(t) = tag {
        top["annotations"] = json!({"org.opencontainers.image.ref.name": t});
    }
    let index = json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(
        d.0.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    (d, md, ld)
}

fn oci_ref(d: &Path, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("oci:{}:{t}", d.display()),
        None => format!("oci:{}", d.display()),
    }
}

#[test]
fn references_use_skopeo_transports() {
    assert_eq!(
        Reference::parse("oci:/a/b:tag").expect("oci"),
        Reference::OciDir {
            dir: "/a/b".into(),
            tag: Some("tag".into())
        }
    );
    assert_eq!(
        Reference::parse("oci:rel").expect("oci"),
        Reference::OciDir {
            dir: "rel".into(),
            tag: None
        }
    );
    assert_eq!(
        Reference::parse("oci-archive:/x.tar:v1").expect("archive"),
        Reference::OciArchive {
            file: "/x.tar".into(),
            tag: Some("v1".into())
        }
    );
    assert_eq!(
        Reference::parse("docker-archive:/x.tar").expect("docker"),
        Reference::DockerArchive {
            file: "/x.tar".into()
        }
    );
    for bad in ["busybox", "docker://busybox", "oci:", "ftp:x"] {
        assert!(Reference::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn digests_are_strict() {
    assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
    for bad in [
        "sha256:abc",
        "md5:00",
        &format!("sha256:{}", "A".repeat(64)),
        &format!("sha256:{}", "g".repeat(64)),
    ] {
        assert!(Digest::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_layout_resolves_through_an_index_to_amd64() {
    let (d, md, ld) = layout("index", LAYER, true, Some("v1"));
    let img = open(&oci_ref(&d.0, Some("v1"))).expect("open");
    assert_eq!(img.manifest_digest.to_string(), md);
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].digest.to_string(), ld);
    assert_eq!(img.layers[0].compression, Compression::Gzip);
    img.layers[0].verify().expect("layer verifies");
    assert_eq!(img.config.entrypoint, vec!["/ep"]);
    assert_eq!(img.config.cmd, vec!["a", "b"]);
    assert_eq!(
        (img.config.working_dir.as_str(), img.config.user.as_str()),
        ("/w", "app")
    );
    // A tag that is not there, and no tag with one image: fine.
    assert!(matches!(
        open(&oci_ref(&d.0, Some("nope"))),
        Err(Error::NotFound(_))
    ));
    assert!(open(&oci_ref(&d.0, None)).is_ok());
}

#[test]
fn tampered_missing_and_unknown_blobs_are_errors() {
    let (d, _, ld) = layout("tamper", LAYER, false, None);
    let layer_path = d.0.join("blobs/sha256").join(&ld["sha256:".len()..]);
    let mut data = std::fs::read(&layer_path).expect("read");
    data[0] ^= 1;
    std::fs::write(&layer_path, &data).expect("write");
    // Opening checks sizes; the digest is checked by verify.
    let img = open(&oci_ref(&d.0, None)).expect("open");
    assert!(matches!(
        img.layers[0].verify(),
        Err(Error::DigestMismatch { .. })
    ));
    std::fs::write(&layer_path, b"short").expect("write");
    assert!(matches!(
        open(&oci_ref(&d.0, None)),
        Err(Error::DigestMismatch { .. })
    ));
    std::fs::remove_file(&layer_path).expect("rm");
    assert!(matches!(
        open(&oci_ref(&d.0, None)),
        Err(Error::MissingBlob { .. })
    ));

    let (d, md, _) = layout("manifest", LAYER, false, None);
    let p = d.0.join("blobs/sha256").join(&md["sha256:".len()..]);
    let mut m = std::fs::read(&p).expect("read");
    m.push(b' ');
    std::fs::write(&p, &m).expect("write");
    assert!(matches!(
        open(&oci_ref(&d.0, None)),
        Err(Error::DigestMismatch { .. })
    ));

    let (d, _, _) = layout("media", "application/x-unknown", false, None);
    assert!(matches!(
        open(&oci_ref(&d.0, None)),
        Err(Error::UnsupportedMediaType { .. })
    ));
    assert!(matches!(
        open("oci:/nonexistent/vm-image-test"),
        Err(Error::NotFound(_))
    ));
}

fn tar_dir(src: &Path, out: &Path) {
    let f = std::fs::File::create(out).expect("create tar");
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", src).expect("append");
    b.finish().expect("finish");
}

#[test]
fn an_oci_archive_is_read_in_place() {
    let (d, _, ld) = layout("archive", LAYER, false, Some("t"));
    let out = std::env::temp_dir().join(format!("vm-image-test-{}.tar", std::process::id()));
    tar_dir(&d.0, &out);
    let img = open(&format!("oci-archive:{}:t", out.display())).expect("open");
    let src = &img.layers[0].source;
    assert_eq!(src.path, out);
    assert!(src.offset > 0, "the blob is read from inside the archive");
    let mut data = Vec::new();
    src.reader()
        .expect("reader")
        .read_to_end(&mut data)
        .expect("read");
    assert_eq!(data, b"pretend this is a gzip layer");
    assert_eq!(img.layers[0].digest.to_string(), ld);
    img.layers[0].verify().expect("verify");
    let _ = std::fs::remove_file(&out);
}

#[test]
fn a_docker_archive_checks_layers_against_diff_ids() {
    let d = Dir::new("docker");
    let layer = b"an uncompressed layer tar, as docker save writes";
    let diff = Digest::of_bytes(layer);
    let mut cfg = config();
    cfg["rootfs"]["diff_ids"] = json!([diff.to_string()]);
    let cfg_bytes = serde_json::to_vec(&cfg).expect("json");
    let cfg_name = format!("{}.json", Digest::of_bytes(&cfg_bytes).hex());
    std::fs::write(d.0.join(&cfg_name), &cfg_bytes).expect("config");
    std::fs::create_dir_all(d.0.join("abc")).expect("mkdir");
    std::fs::write(d.0.join("abc/layer.tar"), layer).expect("layer");
    let manifest =
        json!([{"Config": cfg_name, "RepoTags": ["x:latest"], "Layers": ["abc/layer.tar"]}]);
    std::fs::write(
        d.0.join("manifest.json"),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("m");
    let out = std::env::temp_dir().join(format!("vm-image-test-{}-docker.tar", std::process::id()));
    tar_dir(&d.0, &out);
    let img = open(&format!("docker-archive:{}", out.display())).expect("open");
    assert_eq!(img.layers[0].compression, Compression::None);
    img.layers[0].verify().expect("verify");
    assert_eq!(img.config.cmd, vec!["a", "b"]);

    std::fs::write(
        d.0.join("abc/layer.tar"),
        b"something else of a different length",
    )
    .expect("layer");
    tar_dir(&d.0, &out);
    let img = open(&format!("docker-archive:{}", out.display())).expect("open");
    assert!(matches!(
        img.layers[0].verify(),
        Err(Error::DigestMismatch { .. })
    ));
    let _ = std::fs::remove_file(&out);
}

#[test]
fn the_store_keeps_verified_blobs_names_and_nothing_half_written() {
    let d = Dir::new("store");
    let state = d.0.join("state");
    let store = store::Store::open(&state).expect("store");
    // A blob that does not match its digest leaves nothing behind.
    let want = Digest::of_bytes(b"right");
    assert!(store
        .put_blob(&mut &b"wrong"[..], &want, 5, "layer")
        .is_err());
    let blobs = state.join("images/blobs/sha256");
    assert_eq!(std::fs::read_dir(&blobs).expect("dir").count(), 0);

    let (src, _, _) = layout("store-src", LAYER, false, Some("busybox"));
    let img = open(&oci_ref(&src.0, Some("busybox"))).expect("open");
    let n = name::Name::parse("busybox").expect("name");
    let md = store.add(&img, std::slice::from_ref(&n)).expect("add");
    assert_eq!(md, img.manifest_digest);
    // Twice, from two threads at once: one entry, no damage.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let st = store::Store::open(&state).expect("store");
                st.add(&img, std::slice::from_ref(&n)).expect("add again");
            });
        }
    });
    let list = store.list().expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0].name.as_deref(),
        Some("docker.io/library/busybox:latest")
    );
    let again = store.image(&n).expect("by name");
    again.layers[0].verify().expect("stored layer verifies");
    assert_eq!(again.config.cmd, vec!["a", "b"]);
    // Another name for it; an unknown name is NotFound.
    let other = name::Name::parse("localhost:5000/x/y:1").expect("name");
    store
        .add(&again, std::slice::from_ref(&other))
        .expect("tag");
    assert_eq!(store.list().expect("list").len(), 2);
    assert!(matches!(
        store.image(&name::Name::parse("nope").expect("n")),
        Err(Error::NotFound(_))
    ));
    // Nothing temporary is left.
    let leftovers: Vec<_> = std::fs::read_dir(&blobs)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
