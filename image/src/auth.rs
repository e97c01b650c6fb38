//! Registry credentials and settings, in a file shaped like Docker's
//! `config.json`: `auths` maps a registry to `{"auth": base64(user:pass)}`
//! and `insecure-registries` lists registries reached over plain HTTP.
//! Ours is `$VM_CONFIG/config.json` (default `$XDG_CONFIG_HOME/vm`, else
//! `~/.config/vm`); credentials missing there are looked up in Docker's
//! (`$DOCKER_CONFIG/config.json`, default `~/.docker/config.json`), which
//! we never write. Certificate authorities for a registry are the `*.crt`
//! files in `certs.d/HOST[:PORT]/` beside our file or in
//! `/etc/docker/certs.d/HOST[:PORT]/`, as Docker lays them out.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::name::DEFAULT_REGISTRY;
use crate::{Error, Result};

/// The key Docker files Docker Hub's credentials under.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The directory of our config file.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VM_CONFIG") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(d).join("vm");
    }
    home().join(".config/vm")
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

fn docker_config_file() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return PathBuf::from(d).join("config.json");
    }
    home().join(".docker/config.json")
}

/// The registry part of an `auths` key: Docker writes `host[:port]` for
/// most registries but a URL for Docker Hub (and older tools wrote URLs
/// for others too).
fn key_registry(key: &str) -> &str {
    let bare = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = bare.split('/').next().unwrap_or(bare);
    match host {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
        h => h,
    }
}

/// The key `vm login` files a registry's credentials under.
fn registry_key(registry: &str) -> String {
    if registry == DEFAULT_REGISTRY {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

pub struct Config {
    path: PathBuf,
    value: Value,
}

fn read_json(path: &Path) -> Result<Value> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| Error::Invalid {
            what: path.display().to_string(),
            detail: format!("{e}; fix or remove the file"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `user:password` from an `auths` entry (its `auth`, or the `username`
/// and `password` fields some tools write).
fn entry_credentials(v: &Value) -> Option<String> {
    if let Some(a) = v["auth"].as_str().filter(|a| !a.is_empty()) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
        let s = String::from_utf8(bytes).ok()?;
        return s.contains(':').then_some(s);
    }
    let user = v["username"].as_str()?;
    let pass = v["password"].as_str()?;
    Some(format!("{user}:{pass}"))
}

fn find_credentials(auths: &Value, registry: &str) -> Option<String> {
    auths
        .as_object()?
        .iter()
        .filter(|(k, _)| key_registry(k) == registry)
        .find_map(|(_, v)| entry_credentials(v))
}

impl Config {
    /// Our config file (an empty one when it does not exist yet).
    pub fn load() -> Result<Self> {
        Self::load_from(&config_dir())
    }

    pub fn load_from(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let value = read_json(&path)?;
        if !value.is_object() {
            return Err(Error::Invalid {
                what: path.display().to_string(),
                detail: "not a JSON object; fix or remove the file".into(),
            });
        }
        Ok(Self { path, value })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `user:password` for `registry` (normalised, `docker.io` for Docker
    /// Hub): ours first, then Docker's file. A Docker file that cannot be
    /// read is ignored: it is not ours to judge.
    pub fn credentials(&self, registry: &str) -> Option<String> {
        find_credentials(&self.value["auths"], registry).or_else(|| {
            let docker = read_json(&docker_config_file()).ok()?;
            find_credentials(&docker["auths"], registry)
        })
    }

    /// Registries named insecure in the file.
    pub fn insecure_registries(&self) -> Vec<String> {
        self.value["insecure-registries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// Extra certificate authorities for `registry` (`host[:port]`).
    pub fn ca_files(&self, registry: &str) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(parent) = self.path.parent() {
            dirs.push(parent.join("certs.d").join(registry));
        }
        dirs.push(Path::new("/etc/docker/certs.d").join(registry));
        let mut out = Vec::new();
        for d in dirs {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect();
            found.sort();
            out.extend(found);
        }
        out
    }

    /// Stores credentials for `registry` (the file is written whole, mode
    /// 0600, through a renamed temporary file).
    pub fn set_credentials(&mut self, registry: &str, user: &str, password: &str) -> Result<()> {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.remove_keys(registry);
        if !self.value["auths"].is_object() {
            self.value["auths"] = json!({});
        }
        self.value["auths"][registry_key(registry)] = json!({ "auth": auth });
        self.save()
    }

    /// Forgets `registry`'s credentials; false when there were none.
    pub fn remove_credentials(&mut self, registry: &str) -> Result<bool> {
        if !self.remove_keys(registry) {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    fn remove_keys(&mut self, registry: &str) -> bool {
        let Some(auths) = self.value["auths"].as_object_mut() else {
            return false;
        };
        let before = auths.len();
        auths.retain(|k, _| key_registry(k) != registry);
        auths.len() != before
    }

    fn save(&self) -> Result<()> {
        let io = |source| Error::Read {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut data = serde_json::to_vec_pretty(&self.value).map_err(|e| Error::Invalid {
            what: "the config".into(),
            detail: e.to_string(),
        })?;
        data.push(b'\n');
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let r = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_docker_keys() {
        let dir = std::env::temp_dir().join(format!("vm-auth-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Config::load_from(&dir).expect("empty config");
        assert_eq!(c.credentials("example.com:5000"), None);
        c.set_credentials("example.com:5000", "ann", "p:ss")
            .expect("save");
        c.set_credentials(DEFAULT_REGISTRY, "bob", "x")
            .expect("save");
        let c2 = Config::load_from(&dir).expect("load");
        assert_eq!(
            c2.credentials("example.com:5000").as_deref(),
            Some("ann:p:ss")
        );
        assert_eq!(c2.credentials(DEFAULT_REGISTRY).as_deref(), Some("bob:x"));
        let raw = read_json(c2.path()).expect("json");
        assert!(raw["auths"][DOCKER_HUB_KEY]["auth"].is_string());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c2.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut c3 = c2;
        assert!(c3.remove_credentials("example.com:5000").expect("rm"));
        assert!(!c3.remove_credentials("example.com:5000").expect("rm"));
        // Keys other tools write: URLs, username/password fields.
        let auths = json!({
            "https://reg.example:444/v2/": {"username": "u", "password": "p"},
            "bad.example": {"auth": "not base64!"},
        });
        assert_eq!(
            find_credentials(&auths, "reg.example:444").as_deref(),
            Some("u:p")
        );
        assert_eq!(find_credentials(&auths, "bad.example"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
