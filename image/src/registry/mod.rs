//! The OCI distribution API, as a client: pulling into the store
//! ([`pull`]), pushing from it ([`push`]) and checking credentials
//! ([`login`]). Requests carry basic credentials or a bearer token got by
//! answering the registry's `WWW-Authenticate` challenge; transient
//! failures (connection errors, 5xx, 429) are retried with backoff. HTTPS
//! with the system's web roots plus any CA files given, except plain HTTP
//! for localhost, 127.0.0.1 and registries named insecure.

mod pull;
mod push;

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::media::MAX_JSON;
use crate::name::{Name, DEFAULT_REGISTRY};
use crate::{Error, Result};

pub use pull::pull;
pub use push::push;

const ATTEMPTS: u32 = 3;

#[derive(Default)]
pub struct Options {
    /// Registries to reach over plain HTTP (besides localhost).
    pub insecure: Vec<String>,
    /// `user:password` for basic auth, or for the token endpoint.
    pub credentials: Option<String>,
    /// PEM files of certificate authorities to trust besides the usual.
    pub ca_files: Vec<PathBuf>,
}

/// What a pull or push reports as it goes.
pub enum Progress<'a> {
    /// A step: a blob started, finished or found already there.
    Line(&'a str),
    /// Bytes moved so far, of the total to move.
    Bytes { done: u64, total: u64 },
}

/// A reader that adds what it reads to a shared counter.
struct Counting<'a, R> {
    inner: R,
    counter: &'a std::sync::atomic::AtomicU64,
    read: u64,
}

impl<'a, R> Counting<'a, R> {
    fn new(inner: R, counter: &'a std::sync::atomic::AtomicU64) -> Self {
        Self {
            inner,
            counter,
            read: 0,
        }
    }

    /// Takes back what this reader counted (its transfer is retried).
    fn uncount(&self) {
        self.counter
            .fetch_sub(self.read, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.counter
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// What a request sends.
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A stream of `size` bytes, opened anew for each attempt.
    Stream(&'a dyn Fn() -> Result<Box<dyn Read + 'a>>, u64),
}

#[derive(Clone)]
struct Client {
    agent: ureq::Agent,
    /// `scheme://host[:port]`.
    origin: String,
    repo: String,
    credentials: Option<String>,
    token: Option<String>,
}

fn net(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Registry(format!("{what}: {e}"))
}

/// The host a name's registry is reached at.
fn host_of(registry: &str) -> &str {
    if registry == DEFAULT_REGISTRY {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// Whether a registry host (with or without a port) is this machine:
/// `localhost` or a loopback address, as a URL parser reads it (a name
/// such as `127.example.com` is not).
fn is_loopback(host: &str) -> bool {
    url::Url::parse(&format!("http://{host}/"))
        .ok()
        .and_then(|u| u.host().map(|h| loopback(&h)))
        .unwrap_or(false)
}

fn loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
    }
}

/// Credentials go to a token service (the realm a registry names, often
/// on another host) only over HTTPS, or over plain HTTP to this machine.
fn may_send_credentials(realm: &str) -> bool {
    match url::Url::parse(realm) {
        Ok(u) if u.scheme() == "https" => u.host().is_some(),
        Ok(u) if u.scheme() == "http" => u.host().is_some_and(|h| loopback(&h)),
        _ => false,
    }
}

/// A TLS configuration trusting the web roots and the CAs in `files`.
fn tls_config(files: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for f in files {
        let bad = |detail: String| Error::Invalid {
            what: format!("CA file {}", f.display()),
            detail,
        };
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(f)
            .map_err(|e| bad(e.to_string()))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| net("TLS", e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The `message`s of a registry's error body (`{"errors": [...]}`), or
/// the start of the body when it is something else.
fn error_text(resp: ureq::Response) -> String {
    let mut body = String::new();
    let _ = resp.into_reader().take(4096).read_to_string(&mut body);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let msgs: Vec<String> = v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let code = e["code"].as_str().unwrap_or_default();
            let msg = e["message"].as_str().unwrap_or_default();
            format!("{code}: {msg}")
        })
        .collect();
    if msgs.is_empty() {
        body.chars().filter(|c| !c.is_control()).take(200).collect()
    } else {
        msgs.join("; ")
    }
}

impl Client {
    fn new(registry: &str, repo: &str, opts: &Options) -> Result<Self> {
        let host = host_of(registry);
        let plain_allowed =
            is_loopback(host) || opts.insecure.iter().any(|i| i == host || i == registry);
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60));
        if !opts.ca_files.is_empty() {
            agent = agent.tls_config(tls_config(&opts.ca_files)?);
        }
        let agent = agent.build();
        let https = format!("https://{host}");
        let origin = if plain_allowed {
            choose_scheme(&agent, host, https)?
        } else {
            https
        };
        Ok(Self {
            agent,
            origin,
            repo: repo.to_string(),
            credentials: opts.credentials.clone(),
            token: None,
        })
    }

    fn for_name(name: &Name, opts: &Options) -> Result<Self> {
        Self::new(&name.registry, &name.repository, opts)
    }

    /// A URL in this repository (`blobs/...`, `manifests/...`).
    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.origin, self.repo)
    }

    /// One request with auth: a 401 is answered once (the challenge) and
    /// the request sent again; transient failures are retried with
    /// backoff. A 404 is [`Error::NotFound`]; other failures are
    /// [`Error::Registry`] with the registry's own message.
    fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &Body,
    ) -> Result<ureq::Response> {
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            let mut req = self.agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            } else if let Some(c) = &self.credentials {
                req = req.set("Authorization", &basic(c));
            }
            let result = match body {
                Body::Empty => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::Stream(open, size) => {
                    req.set("Content-Length", &size.to_string()).send(open()?)
                }
            };
            let retry = match result {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if !challenged => {
                    challenged = true;
                    let challenge = r.header("WWW-Authenticate").unwrap_or_default().to_string();
                    self.authenticate(&challenge)?;
                    continue;
                }
                Err(ureq::Error::Status(401, r)) => {
                    return Err(Error::Registry(format!(
                        "{url}: unauthorized (401: {}): check the credentials (`vm login`)",
                        error_text(r)
                    )))
                }
                Err(ureq::Error::Status(404, r)) => {
                    return Err(Error::NotFound(format!(
                        "{url}: not found (404{})",
                        match error_text(r) {
                            t if t.is_empty() => String::new(),
                            t => format!(": {t}"),
                        }
                    )))
                }
                Err(ureq::Error::Status(code, r)) => {
                    let transient = code >= 500 || code == 429;
                    let e = net(url, format!("HTTP {code}: {}", error_text(r)));
                    if !transient {
                        return Err(e);
                    }
                    e
                }
                // ureq's message names the URL already.
                Err(e) => {
                    let text = e.to_string();
                    let hint = ca_hint(&text, self.origin.split("://").nth(1).unwrap_or_default());
                    if !hint.is_empty() {
                        return Err(Error::Registry(format!("{text}{hint}")));
                    }
                    Error::Registry(format!("cannot reach the registry: {text}"))
                }
            };
            attempt += 1;
            if attempt >= ATTEMPTS {
                return Err(retry);
            }
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
    }

    fn get(&mut self, path: &str, accept: Option<&str>) -> Result<ureq::Response> {
        let url = self.url(path);
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        self.send("GET", &url, &headers, &Body::Empty)
    }

    fn wants_credentials(&self) -> Error {
        Error::Registry(format!(
            "{}: the registry wants credentials: `vm login {}` first",
            self.origin,
            self.origin.split("://").nth(1).unwrap_or_default()
        ))
    }

    fn authenticate(&mut self, challenge: &str) -> Result<()> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            // Basic: the credentials go with the next request as they are.
            if self.credentials.is_none() {
                return Err(self.wants_credentials());
            }
            return Ok(());
        };
        let params = challenge_params(params);
        let field = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let realm =
            field("realm").ok_or_else(|| net(&self.origin, "bearer challenge without a realm"))?;
        let mut req = self.agent.get(&realm);
        if let Some(s) = field("service") {
            req = req.query("service", &s);
        }
        let scope = field("scope")
            .or_else(|| (!self.repo.is_empty()).then(|| format!("repository:{}:pull", self.repo)));
        if let Some(s) = scope {
            req = req.query("scope", &s);
        }
        if let Some(c) = &self.credentials {
            if !may_send_credentials(&realm) {
                return Err(Error::Registry(format!(
                    "{}: the registry's token service {realm:?} is not HTTPS and not on this \
                     machine; vm does not send credentials there",
                    self.origin
                )));
            }
            req = req.set("Authorization", &basic(c));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(401 | 403, _)) if self.credentials.is_none() => {
                return Err(self.wants_credentials())
            }
            Err(ureq::Error::Status(code @ (401 | 403), r)) => {
                return Err(Error::Registry(format!(
                    "{realm}: the token service refused the credentials ({code}: {}); check them (`vm login`)",
                    error_text(r)
                )))
            }
            Err(e) => return Err(net(&realm, e)),
        };
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
}

/// For a registry that may speak plain HTTP: HTTPS when it answers
/// that (any HTTP status will do), else HTTP, as Docker does.
fn choose_scheme(agent: &ureq::Agent, host: &str, https: String) -> Result<String> {
    let tls_error = match agent.get(&format!("{https}/v2/")).call() {
        Ok(_) | Err(ureq::Error::Status(..)) => return Ok(https),
        Err(e) => e,
    };
    let http = format!("http://{host}");
    match agent.get(&format!("{http}/v2/")).call() {
        Ok(_) => Ok(http),
        Err(ureq::Error::Status(code, _)) if code != 400 => Ok(http),
        Err(ureq::Error::Status(..)) => Err(Error::Registry(format!(
            "{https}: the registry speaks HTTPS but the connection failed: {tls_error}{}",
            ca_hint(&tls_error.to_string(), host)
        ))),
        Err(e) => Err(Error::Registry(format!("cannot reach the registry: {e}"))),
    }
}

/// What to do about a TLS failure: a certificate the client does not
/// trust, or a registry that does not speak TLS at all.
fn ca_hint(error: &str, host: &str) -> String {
    if error.contains("certificate") {
        format!("; if the registry's certificate is signed by a private CA, pass it with --ca-file FILE or put it in {}/certs.d/{host}/ca.crt", crate::auth::config_dir().display())
    } else if error.contains("InvalidContentType") {
        format!("; the registry does not speak HTTPS: if it is meant to be plain HTTP, name it with --insecure-registry {host}")
    } else {
        String::new()
    }
}

/// The `key=value` pairs of a `WWW-Authenticate` challenge; values may
/// be quoted and hold commas (`scope="repository:a/b:pull,push"`).
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            }
        };
        out.push((key, value));
        rest = tail.trim_start_matches([',', ' ']);
    }
    out
}

fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// Checks that `registry` accepts the credentials in `opts` (what `vm
/// login` does before it stores them): `GET /v2/` must succeed.
pub fn login(registry: &str, opts: &Options) -> Result<()> {
    let mut c = Client::new(registry, "", opts)?;
    let url = format!("{}/v2/", c.origin);
    c.send("GET", &url, &[], &Body::Empty).map(drop)
}

#[cfg(test)]
mod tests {
    use super::{challenge_params, is_loopback, may_send_credentials};

    #[test]
    fn challenge_values_may_be_quoted_and_hold_commas() {
        let p = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        let want = [
            ("realm", "https://auth.example/token"),
            ("service", "registry.example"),
            ("scope", "repository:a/b:pull,push"),
        ];
        let got: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        let p = challenge_params(r#"realm=plain, error="insufficient_scope", x="a\"b""#);
        let got: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("realm", "plain"),
                ("error", "insufficient_scope"),
                ("x", "a\"b")
            ]
        );
        assert!(challenge_params("").is_empty());
        // Garbage does not panic.
        let _ = challenge_params("=,=\"\\");
    }

    #[test]
    fn loopback_is_parsed_not_guessed_from_the_name() {
        for h in [
            "localhost",
            "LOCALHOST:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.8.9.10:1",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "127.example.com",
            "127.0.0.1.nip.io:5000",
            "localhost.example.com",
            "10.0.0.1:5000",
            "[::2]",
            "registry-1.docker.io",
            "",
            "a b",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn credentials_go_to_a_token_service_over_https_or_to_this_machine() {
        for realm in [
            "https://auth.docker.io/token",
            "HTTPS://auth.example:8443/token?x=1",
            "http://127.0.0.1:5001/token",
            "http://localhost/token",
            "http://[::1]:80/token",
        ] {
            assert!(may_send_credentials(realm), "{realm}");
        }
        for realm in [
            "http://auth.example/token",
            "http://127.evil.example/token",
            "ftp://auth.example/token",
            "file:///etc/passwd",
            "//auth.example/token",
            "auth.example/token",
            "",
        ] {
            assert!(!may_send_credentials(realm), "{realm}");
        }
    }
}
