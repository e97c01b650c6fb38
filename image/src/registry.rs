//! Pulling from a registry (the OCI distribution API): manifests with
//! the media types we accept, indexes resolved to linux/amd64, blobs
//! streamed into the store and checked against their digests on the way,
//! anonymous or basic credentials, and bearer tokens from the
//! `WWW-Authenticate` challenge. HTTPS, except plain HTTP for localhost,
//! 127.0.0.1 and registries named insecure.

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;

use crate::digest::check_bytes;
use crate::media::{self, MAX_JSON};
use crate::name::{Name, DEFAULT_REGISTRY};
use crate::store::Store;
use crate::{Digest, Error, Result};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const ATTEMPTS: u32 = 3;

pub struct Options {
    /// Registries to reach over plain HTTP (besides localhost).
    pub insecure: Vec<String>,
    /// `user:password` for basic auth, or for the token endpoint.
    pub credentials: Option<String>,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    repo: String,
    credentials: Option<String>,
    token: Option<String>,
}

fn net(what: &str, e: impl std::fmt::Display) -> Error {
    Error::NotFound(format!("{what}: {e}"))
}

impl Client {
    fn new(name: &Name, opts: &Options) -> Self {
        let host = if name.registry == DEFAULT_REGISTRY {
            "registry-1.docker.io".to_string()
        } else {
            name.registry.clone()
        };
        let bare = host.split(':').next().unwrap_or_default();
        let plain =
            bare == "localhost" || bare == "127.0.0.1" || opts.insecure.iter().any(|i| i == &host);
        let scheme = if plain { "http" } else { "https" };
        Self {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(Duration::from_secs(60))
                .build(),
            base: format!("{scheme}://{host}/v2/{}", name.repository),
            repo: name.repository.clone(),
            credentials: opts.credentials.clone(),
            token: None,
        }
    }

    /// GET with auth; on a 401 it answers the challenge once and retries.
    /// Transient failures (connection errors, 5xx, 429) are retried with
    /// backoff.
    fn get(&mut self, path: &str, accept: Option<&str>) -> Result<ureq::Response> {
        let url = format!("{}/{path}", self.base);
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            } else if let Some(c) = &self.credentials {
                req = req.set("Authorization", &basic(c));
            }
            match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if !challenged => {
                    challenged = true;
                    let challenge = r.header("WWW-Authenticate").unwrap_or_default().to_string();
                    self.authenticate(&challenge)?;
                }
                Err(ureq::Error::Status(401, _)) => {
                    return Err(Error::NotFound(format!(
                        "{url}: unauthorized (401): check the credentials (`vm login`)"
                    )))
                }
                Err(ureq::Error::Status(404, _)) => {
                    return Err(Error::NotFound(format!("{url}: not found (404)")))
                }
                Err(ureq::Error::Status(code, _))
                    if (code >= 500 || code == 429) && attempt + 1 < ATTEMPTS =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                Err(ureq::Error::Status(code, _)) => return Err(net(&url, format!("HTTP {code}"))),
                Err(e) if attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                // ureq's message names the URL already.
                Err(e) => return Err(Error::NotFound(format!("cannot reach the registry: {e}"))),
            }
        }
    }

    fn authenticate(&mut self, challenge: &str) -> Result<()> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            // Basic: the credentials go with the next request as they are.
            if self.credentials.is_none() {
                return Err(Error::NotFound(format!(
                    "{}: the registry wants credentials (`vm login`)",
                    self.base
                )));
            }
            return Ok(());
        };
        let field = |k: &str| {
            params.split(',').find_map(|p| {
                let (key, v) = p.trim().split_once('=')?;
                (key == k).then(|| v.trim_matches('"').to_string())
            })
        };
        let realm =
            field("realm").ok_or_else(|| net(&self.base, "bearer challenge without a realm"))?;
        let service = field("service").unwrap_or_default();
        let scope = field("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let mut req = self
            .agent
            .get(&realm)
            .query("service", &service)
            .query("scope", &scope);
        if let Some(c) = &self.credentials {
            req = req.set("Authorization", &basic(c));
        }
        let resp = req.call().map_err(|e| net(&realm, e))?;
        let mut body = String::new();
        resp.into_reader()
            .take(MAX_JSON)
            .read_to_string(&mut body)
            .map_err(|e| net(&realm, e))?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| net(&realm, e))?;
        let token = v["token"].as_str().or_else(|| v["access_token"].as_str());
        self.token = Some(
            token
                .ok_or_else(|| net(&realm, "no token in the answer"))?
                .to_string(),
        );
        Ok(())
    }

    /// A manifest or index, at most MAX_JSON bytes, with its media type.
    fn manifest(&mut self, reference: &str) -> Result<(String, Vec<u8>)> {
        let resp = self.get(&format!("manifests/{reference}"), Some(ACCEPT))?;
        let media_type = resp.content_type().to_string();
        let mut data = Vec::new();
        resp.into_reader()
            .take(MAX_JSON + 1)
            .read_to_end(&mut data)
            .map_err(|e| net(reference, e))?;
        if data.len() as u64 > MAX_JSON {
            return Err(Error::Invalid {
                what: format!("manifest {reference}"),
                detail: format!("larger than the {MAX_JSON}-byte limit"),
            });
        }
        Ok((media_type, data))
    }
}

fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// Pulls `name` into the store and names it; returns the manifest digest.
pub fn pull(
    store: &Store,
    name: &Name,
    opts: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Digest> {
    let mut c = Client::new(name, opts);
    let reference = match (&name.digest, &name.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".into(),
    };
    let (mut media_type, mut data) = c.manifest(&reference)?;
    if let Some(d) = &name.digest {
        check_bytes("manifest", d, &data)?;
    }
    for _ in 0..4 {
        if media_type != media::OCI_INDEX && media_type != media::DOCKER_LIST {
            break;
        }
        let index: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| Error::Invalid {
                what: "index".into(),
                detail: e.to_string(),
            })?;
        let pick = index["manifests"]
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                })
            })
            .ok_or_else(|| Error::NotFound(format!("{name} has no linux/amd64 image")))?;
        let d = Digest::parse(pick["digest"].as_str().unwrap_or_default())?;
        let (mt, bytes) = c.manifest(&d.to_string())?;
        check_bytes("manifest", &d, &bytes)?;
        (media_type, data) = (mt, bytes);
    }
    if media_type != media::OCI_MANIFEST && media_type != media::DOCKER_MANIFEST {
        return Err(Error::UnsupportedMediaType {
            what: "manifest",
            media_type,
        });
    }
    let m: serde_json::Value = serde_json::from_slice(&data).map_err(|e| Error::Invalid {
        what: "manifest".into(),
        detail: e.to_string(),
    })?;
    let mut blobs = vec![(&m["config"], "image config")];
    blobs.extend(
        m["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| (l, "layer")),
    );
    for (desc, what) in blobs {
        if what == "layer" {
            media::layer_compression(desc["mediaType"].as_str().unwrap_or_default())?;
        }
        let d = Digest::parse(desc["digest"].as_str().unwrap_or_default())?;
        let size = desc["size"].as_u64().ok_or_else(|| Error::Invalid {
            what: format!("{what} {d}"),
            detail: "no size".into(),
        })?;
        if store.has_blob(&d) {
            continue;
        }
        progress(&format!(
            "{}: downloading {} ({size} bytes)",
            &d.hex()[..12],
            what
        ));
        let mut tries = 0;
        loop {
            let resp = c.get(&format!("blobs/{d}"), None)?;
            match store.put_blob(&mut resp.into_reader().take(size + 1), &d, size, what) {
                Ok(()) => break,
                Err(Error::Read { .. }) if tries + 1 < ATTEMPTS => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
    let md = store.put_bytes(&data, "manifest")?;
    store.name_manifest(
        &media_type,
        &md,
        data.len() as u64,
        std::slice::from_ref(name),
    )?;
    Ok(md)
}
