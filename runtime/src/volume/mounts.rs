//! A container's mounts as Docker's flags give them: `-v`, `--mount`,
//! `--tmpfs`, checked and kept in the container's configuration.

use serde::{Deserialize, Serialize};

/// What is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A host directory.
    Bind,
    /// A named (or anonymous) volume of the state root.
    Volume,
    /// A tmpfs in the guest's memory.
    Tmpfs,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Volume => "volume",
            Self::Tmpfs => "tmpfs",
        }
    }
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: Kind,
    /// Bind: the host directory (absolute). Volume: its name (empty until
    /// an anonymous one is made). Tmpfs: empty.
    pub source: String,
    /// Where the container sees it (absolute).
    pub target: String,
    pub read_only: bool,
    /// A volume made for this container alone (`-v /path`, the image's
    /// `VOLUME`): `rm -v` and `--rm` remove it.
    #[serde(default)]
    pub anonymous: bool,
    /// Volume: do not copy the image's files at the target into it when
    /// it is empty (`nocopy`, `volume-nocopy`).
    #[serde(default)]
    pub no_copy: bool,
    /// Bind given with `-v`, whose missing source is made; `--mount`
    /// refuses a missing one.
    #[serde(default)]
    pub create_source: bool,
    /// Tmpfs: its size in bytes (0: the kernel's default, half the RAM)
    /// and mode; files in it may be executed only with `exec`.
    #[serde(default)]
    pub tmpfs_size: u64,
    #[serde(default)]
    pub tmpfs_mode: Option<u32>,
    #[serde(default)]
    pub tmpfs_exec: bool,
    /// `--mount volume-label=`: labels of a volume this mount creates.
    #[serde(default)]
    pub volume_labels: Vec<(String, String)>,
}

impl Mount {
    fn new(kind: Kind, source: &str, target: &str) -> Self {
        Self {
            kind,
            source: source.to_string(),
            target: target.to_string(),
            read_only: false,
            anonymous: false,
            no_copy: false,
            create_source: false,
            tmpfs_size: 0,
            tmpfs_mode: None,
            tmpfs_exec: false,
            volume_labels: Vec::new(),
        }
    }

    /// Docker's `Mode` in `inspect`'s `Mounts`.
    pub fn mode(&self) -> String {
        let mut m = Vec::new();
        if self.kind == Kind::Volume && self.no_copy {
            m.push("nocopy");
        }
        if self.read_only {
            m.push("ro");
        }
        m.join(",")
    }
}

type R<T> = std::result::Result<T, String>;

/// A path inside the container: absolute, not `/`, no `..`.
pub fn check_target(t: &str) -> R<String> {
    if !t.starts_with('/') {
        return Err(format!(
            "invalid mount target {t:?}: it must be an absolute path in the container"
        ));
    }
    if t.split('/').any(|c| c == "..") {
        return Err(format!("invalid mount target {t:?}: '..' is not allowed"));
    }
    if t.contains('\0') {
        return Err(format!("invalid mount target {t:?}"));
    }
    let clean = clean_path(t);
    if clean == "/" {
        return Err("invalid mount target \"/\": the root cannot be a mount".into());
    }
    Ok(clean)
}

/// A host path for a bind mount: absolute, no `..`.
fn check_bind_source(s: &str) -> R<String> {
    if !s.starts_with('/') {
        return Err(format!(
            "invalid bind source {s:?}: it must be an absolute path on the host"
        ));
    }
    if s.split('/').any(|c| c == "..") || s.contains('\0') {
        return Err(format!("invalid bind source {s:?}: '..' is not allowed"));
    }
    Ok(clean_path(s))
}

/// `//a/./b/` is `/a/b`.
fn clean_path(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// A volume name as Docker takes them.
pub fn check_volume_name(n: &str) -> R<()> {
    let ok = n.len() >= 2
        && n.len() <= 255
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid volume name {n:?}: use 2 or more letters, digits, '_', '.' and '-', starting with a letter or digit"
        ))
    }
}

/// `-v [SOURCE:]TARGET[:OPTIONS]`.
pub fn parse_volume_flag(spec: &str) -> R<Mount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [t] => ("", *t, ""),
        [s, t] => (*s, *t, ""),
        [s, t, o] => (*s, *t, *o),
        _ => {
            return Err(format!(
                "invalid volume specification {spec:?}: use [SOURCE:]TARGET[:ro|rw]"
            ))
        }
    };
    if target.is_empty() {
        return Err(format!("invalid volume specification {spec:?}: no target"));
    }
    let target = check_target(target)?;
    let mut m = if source.is_empty() {
        let mut m = Mount::new(Kind::Volume, "", &target);
        m.anonymous = true;
        m
    } else if source.starts_with('/') || source.starts_with('.') || source.starts_with('~') {
        if !source.starts_with('/') {
            return Err(format!(
                "invalid bind source {source:?}: it must be an absolute path on the host (the shell expands $PWD/..., not ./...)"
            ));
        }
        let mut m = Mount::new(Kind::Bind, &check_bind_source(source)?, &target);
        m.create_source = true;
        m
    } else {
        check_volume_name(source)?;
        Mount::new(Kind::Volume, source, &target)
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" | "readonly" => m.read_only = true,
            "rw" => m.read_only = false,
            "nocopy" if m.kind == Kind::Volume => m.no_copy = true,
            // SELinux relabelling and macOS consistency hints mean
            // nothing here; Docker accepts them on Linux too.
            "z" | "Z" | "cached" | "delegated" | "consistent" | "private" | "rprivate" => {}
            "shared" | "rshared" | "slave" | "rslave" => {
                return Err(format!(
                    "mount propagation {o:?} cannot cross into a VM: the guest has its own kernel; use the default (rprivate)"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid mode {o:?} in volume specification {spec:?}: use ro, rw{}",
                    if m.kind == Kind::Volume { " or nocopy" } else { "" }
                ))
            }
        }
    }
    Ok(m)
}

fn parse_bool(key: &str, v: Option<&str>) -> R<bool> {
    match v {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(format!("invalid value {v:?} for {key}: use true or false")),
    }
}

/// `--mount type=bind|volume|tmpfs,source=...,target=...,readonly,...`.
pub fn parse_mount_flag(spec: &str) -> R<Mount> {
    let mut kind = Kind::Volume;
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    let mut no_copy = false;
    let mut size = None;
    let mut mode = None;
    let mut labels = Vec::new();
    let mut kind_only: Vec<(&str, Kind)> = Vec::new();
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (field.trim(), None),
        };
        let value =
            || v.ok_or_else(|| format!("invalid field {field:?} in --mount: {k} needs a value"));
        match k.to_ascii_lowercase().as_str() {
            "type" => {
                kind = match value()? {
                    "bind" => Kind::Bind,
                    "volume" => Kind::Volume,
                    "tmpfs" => Kind::Tmpfs,
                    t => {
                        return Err(format!(
                            "invalid mount type {t:?}: use bind, volume or tmpfs"
                        ))
                    }
                }
            }
            "source" | "src" => source = Some(value()?.to_string()),
            "target" | "destination" | "dst" => target = Some(value()?.to_string()),
            "readonly" | "ro" => read_only = parse_bool(k, v)?,
            "volume-nocopy" => {
                no_copy = parse_bool(k, v)?;
                kind_only.push((k, Kind::Volume));
            }
            "volume-label" => {
                let (lk, lv) = value()?.split_once('=').unwrap_or((value()?, ""));
                labels.push((lk.to_string(), lv.to_string()));
                kind_only.push((k, Kind::Volume));
            }
            "volume-driver" => {
                if value()? != "local" {
                    return Err(format!(
                        "volume driver {:?} is not available: only \"local\" is",
                        value()?
                    ));
                }
                kind_only.push((k, Kind::Volume));
            }
            "tmpfs-size" => {
                size = Some(parse_size(value()?)?);
                kind_only.push((k, Kind::Tmpfs));
            }
            "tmpfs-mode" => {
                mode = Some(parse_mode(value()?)?);
                kind_only.push((k, Kind::Tmpfs));
            }
            "consistency" => {}
            "bind-propagation" => {
                match value()? {
                    "private" | "rprivate" => {}
                    p => {
                        return Err(format!(
                            "mount propagation {p:?} cannot cross into a VM: the guest has its own kernel"
                        ))
                    }
                }
                kind_only.push((k, Kind::Bind));
            }
            _ => return Err(format!("unexpected key {k:?} in --mount {spec:?}")),
        }
    }
    for (key, only) in kind_only {
        if only != kind {
            return Err(format!(
                "{key} cannot be used with type={} (only with type={})",
                kind.name(),
                only.name()
            ));
        }
    }
    let target = target.ok_or_else(|| format!("--mount {spec:?}: target is required"))?;
    let target = check_target(&target)?;
    let source = source.unwrap_or_default();
    let mut m = match kind {
        Kind::Bind => {
            if source.is_empty() {
                return Err(format!("--mount {spec:?}: type=bind needs a source"));
            }
            Mount::new(kind, &check_bind_source(&source)?, &target)
        }
        Kind::Volume if source.is_empty() => {
            let mut m = Mount::new(kind, "", &target);
            m.anonymous = true;
            m
        }
        Kind::Volume => {
            check_volume_name(&source)?;
            Mount::new(kind, &source, &target)
        }
        Kind::Tmpfs => {
            if !source.is_empty() {
                return Err(format!("--mount {spec:?}: type=tmpfs takes no source"));
            }
            let mut m = Mount::new(kind, "", &target);
            m.tmpfs_exec = true;
            m
        }
    };
    m.read_only = read_only;
    m.no_copy = no_copy;
    m.tmpfs_size = size.unwrap_or(0);
    m.tmpfs_mode = mode;
    m.volume_labels = labels;
    Ok(m)
}

/// `--tmpfs TARGET[:size=...,mode=...,ro,exec,...]`.
pub fn parse_tmpfs_flag(spec: &str) -> R<Mount> {
    let (target, opts) = spec.split_once(':').unwrap_or((spec, ""));
    let mut m = Mount::new(Kind::Tmpfs, "", &check_target(target)?);
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => m.tmpfs_size = parse_size(v)?,
            Some(("mode", v)) => m.tmpfs_mode = Some(parse_mode(v)?),
            None if o == "ro" => m.read_only = true,
            None if o == "rw" => m.read_only = false,
            None if o == "exec" => m.tmpfs_exec = true,
            None if o == "noexec" => m.tmpfs_exec = false,
            // Always set: nothing on a tmpfs may gain privileges or
            // open a device.
            None if [
                "nosuid",
                "nodev",
                "suid",
                "dev",
                "atime",
                "noatime",
                "relatime",
                "strictatime",
            ]
            .contains(&o) => {}
            _ => {
                return Err(format!(
                "invalid tmpfs option {o:?} in {spec:?}: use size=, mode=, ro, rw, exec or noexec"
            ))
            }
        }
    }
    Ok(m)
}

/// `64m`, `1g`, `512k`, `1024` (bytes).
pub fn parse_size(v: &str) -> R<u64> {
    let v = v.trim();
    let lower = v.to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1u64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        Some((i, 't')) => (&lower[..i], 1 << 40),
        _ => (lower, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {v:?}: use a number of bytes, or with k, m or g"))
}

fn parse_mode(v: &str) -> R<u32> {
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid tmpfs mode {v:?}: use octal, such as 1777"))
}

/// Refuses two mounts on one target, as Docker does.
pub fn check_duplicates(mounts: &[Mount]) -> R<()> {
    let mut seen = std::collections::BTreeSet::new();
    for m in mounts {
        if !seen.insert(m.target.as_str()) {
            return Err(format!("duplicate mount point: {}", m.target));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags() {
        let m = parse_volume_flag("data:/var/lib/data").expect("named");
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str()),
            (Kind::Volume, "data", "/var/lib/data")
        );
        assert!(!m.read_only && !m.anonymous);
        let m = parse_volume_flag("/srv/www/:/usr/share/nginx/html:ro").expect("bind");
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str()),
            (Kind::Bind, "/srv/www", "/usr/share/nginx/html")
        );
        assert!(m.read_only && m.create_source);
        let m = parse_volume_flag("/cache").expect("anonymous");
        assert!(m.anonymous && m.kind == Kind::Volume && m.source.is_empty());
        let m = parse_volume_flag("v1:/d:nocopy,ro,z").expect("options");
        assert!(m.no_copy && m.read_only);
        for bad in [
            "a:b:c:d",
            "data:rel/path",
            "data:/",
            "/h/../etc:/x",
            "data:/a/../b",
            "x:/d",
            "-bad:/d",
            "./rel:/d",
            "v:/d:bogus",
            "v:/d:rshared",
            "/h:/d:nocopy",
            "",
        ] {
            assert!(parse_volume_flag(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn mount_flags() {
        let m = parse_mount_flag("type=bind,source=/srv,target=/data,readonly").expect("bind");
        assert_eq!(
            (m.kind, m.read_only, m.create_source),
            (Kind::Bind, true, false)
        );
        let m = parse_mount_flag("src=vol,dst=/d,volume-nocopy,volume-label=a=b").expect("volume");
        assert_eq!((m.kind, m.no_copy), (Kind::Volume, true));
        assert_eq!(m.volume_labels, vec![("a".to_string(), "b".to_string())]);
        let m =
            parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1770").expect("tmpfs");
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (64 << 20, Some(0o1770)));
        let m = parse_mount_flag("type=volume,target=/anon").expect("anonymous");
        assert!(m.anonymous);
        let m = parse_mount_flag("type=volume,src=vol,target=/d,ro=false").expect("ro=false");
        assert!(!m.read_only);
        for bad in [
            "type=bind,target=/d",
            "type=nfs,target=/d",
            "source=v",
            "type=bind,src=/a,dst=/d,tmpfs-size=1m",
            "type=tmpfs,src=x,dst=/d",
            "type=volume,src=v,dst=/d,readonly=maybe",
            "type=volume,src=v,dst=/d,volume-driver=nfs",
            "dst=/d,colour=red",
        ] {
            assert!(parse_mount_flag(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn tmpfs_flags() {
        let m = parse_tmpfs_flag("/run:size=1g,mode=755,exec").expect("tmpfs");
        assert_eq!(
            (m.tmpfs_size, m.tmpfs_mode, m.tmpfs_exec),
            (1 << 30, Some(0o755), true)
        );
        let m = parse_tmpfs_flag("/tmp").expect("plain");
        assert!(!m.tmpfs_exec && m.tmpfs_size == 0);
        for bad in ["tmp", "/t:size=lots", "/t:mode=999", "/t:uid=0", "/"] {
            assert!(parse_tmpfs_flag(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn duplicate_targets_are_refused() {
        let a = parse_volume_flag("a1:/d").expect("a");
        let b = parse_tmpfs_flag("/d/").expect("b");
        assert!(check_duplicates(&[a.clone(), b]).is_err());
        assert!(check_duplicates(&[a]).is_ok());
    }
}
