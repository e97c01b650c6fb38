//! Finding virtio-blk disks by the serial the host gave them.

use std::path::PathBuf;

/// `/dev/vdX` whose serial (virtio-blk GET_ID) is `serial`.
pub fn by_serial(serial: &str) -> std::io::Result<PathBuf> {
    for entry in std::fs::read_dir("/sys/block")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("vd") {
            continue;
        }
        let s = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if s.trim_end_matches(['\n', '\0']) == serial {
            return Ok(PathBuf::from("/dev").join(name));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no disk with serial {serial:?}"),
    ))
}
