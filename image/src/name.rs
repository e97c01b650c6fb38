//! Image names as Docker reads them: `busybox` is
//! `docker.io/library/busybox:latest`; `host:port/repo:tag`;
//! `repo@sha256:...`.

use std::fmt;

use crate::{Digest, Error, Result};

pub const DEFAULT_REGISTRY: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// Registry host (with port), e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Name {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Reference(format!("invalid image name {s:?}: {why}"));
        if s.is_empty() || s.len() > 4096 {
            return Err(bad("empty or too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|_| bad("bad digest"))?)),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(bad("bad tag"));
            }
        }
        let (registry, path) = match repo.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), repo.to_string()),
        };
        let path = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        };
        if !path.split('/').all(component_ok) {
            return Err(bad(
                "repository names are lower-case letters, digits and . _ - separated by /",
            ));
        }
        Ok(Self {
            registry,
            repository: path,
            tag: if tag.is_none() && digest.is_none() {
                Some("latest".into())
            } else {
                tag
            },
            digest,
        })
    }

    /// The repository as Docker shows it (`busybox`, `user/app`,
    /// `localhost:5000/app`).
    pub fn familiar_repository(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_normalisation() {
        let n = Name::parse("busybox").expect("busybox");
        assert_eq!(n.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(n.familiar_repository(), "busybox");
        assert_eq!(
            Name::parse("user/app:1.0").expect("user").to_string(),
            "docker.io/user/app:1.0"
        );
        let n = Name::parse("localhost:5000/a/b:t").expect("local");
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str(), n.tag.as_deref()),
            ("localhost:5000", "a/b", Some("t"))
        );
        assert_eq!(n.familiar_repository(), "localhost:5000/a/b");
        let d = format!("sha256:{}", "a".repeat(64));
        let n = Name::parse(&format!("quay.io/x/y@{d}")).expect("digest");
        assert_eq!(
            (n.tag.as_deref(), n.digest.map(|d| d.to_string())),
            (None, Some(d))
        );
        for bad in ["", "UPPER", "a:", "a:-x", "a@sha256:00", "a//b", "-a"] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
    }
}
