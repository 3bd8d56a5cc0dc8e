//! A small client for the OCI distribution API (Docker registry v2): endpoints from the mirror
//! config, bearer-token and basic auth, manifests and blobs with digest checks.
//!
//! Hand-written rather than `oci-client` because pulls must stream blobs straight into the layer
//! unpacker and move between mirrors with their own timeouts, which that crate does not expose.

use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::manifest::{ACCEPT, MAX_MANIFEST_BYTES};
use super::reference::Reference;
use super::ImageError;
use crate::config::{ImageConfig, PullFromMirror};

/// Docker Hub's API host (the name `docker.io` has no registry behind it).
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Credentials from PullImageRequest.auth (the CRI AuthConfig).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// An OAuth2 refresh token, exchanged at the token realm.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl std::fmt::Debug for RegistryAuth {
    /// Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RegistryAuth {
    /// Username and password, from the explicit fields or the base64 `auth` field.
    fn basic(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

/// Credentials for `ep` from a docker `config.json`-style file (`{"auths": {"host[/path]":
/// {"auth": base64(user:pass)} }}`, also `username`/`password`, `identitytoken`,
/// `registrytoken`), given as the file's `path` (for errors) and `bytes`. The longest key that
/// is the endpoint's host or a path prefix of `host/repository` wins; `https://` and a trailing
/// `/v1/` or `/v2/` are ignored, and the Docker Hub aliases count as one.
pub fn auth_from_file(
    path: &std::path::Path,
    bytes: &[u8],
    ep: &Endpoint,
) -> Result<Option<RegistryAuth>, ImageError> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Entry {
        auth: String,
        username: String,
        password: String,
        identitytoken: String,
        registrytoken: String,
    }
    let file: File = serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
        blob: path.display().to_string(),
        what: "auth file".into(),
        reason: e.to_string(),
    })?;
    let hub = |h: &str| -> String {
        match h {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_API.into(),
            _ => h.to_string(),
        }
    };
    let host = hub(&ep.host);
    let full = format!("{host}/{}", ep.repository);
    let best = file
        .auths
        .iter()
        .filter_map(|(k, v)| {
            let k = k
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            let k = k
                .strip_suffix("/v1")
                .or_else(|| k.strip_suffix("/v2"))
                .unwrap_or(k);
            let (h, rest) = k.split_once('/').unwrap_or((k, ""));
            let key = if rest.is_empty() {
                hub(h)
            } else {
                format!("{}/{rest}", hub(h))
            };
            let hit = key == host || full == key || full.starts_with(&format!("{key}/"));
            hit.then_some((key.len(), v))
        })
        .max_by_key(|(len, _)| *len);
    Ok(best.map(|(_, e)| RegistryAuth {
        username: e.username.clone(),
        password: e.password.clone(),
        auth: e.auth.clone(),
        identity_token: e.identitytoken.clone(),
        registry_token: e.registrytoken.clone(),
    }))
}

/// Timeouts applied to every registry and mirror, so a dead or stalled one is skipped quickly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// A whole manifest, config or token request.
    pub request: Duration,
    /// Silence while streaming a blob.
    pub read: Duration,
}

impl Timeouts {
    /// One limit for every phase: a mirror's `timeout`.
    pub fn all(d: Duration) -> Timeouts {
        Timeouts {
            connect: d,
            request: d,
            read: d,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
            read: Duration::from_secs(30),
        }
    }
}

pub fn build_client(t: Timeouts) -> Result<reqwest::Client, ImageError> {
    reqwest::Client::builder()
        .connect_timeout(t.connect)
        .read_timeout(t.read)
        .user_agent(concat!("ferrio/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ImageError::Registry {
            endpoint: "(client)".into(),
            reason: format!("cannot build http client: {e}"),
        })
}

/// One place to pull a repository from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` as reached over the network.
    pub host: String,
    /// Repository path on that host.
    pub repository: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// This endpoint's own limits (a mirror's `timeout`); `None` = the store's defaults.
    pub timeouts: Option<Timeouts>,
}

impl Endpoint {
    fn base(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)
    }
}

/// The endpoints to try for `r`, in order (registries.conf semantics): the longest matching
/// `[[image.registry]]` prefix (at a path boundary) is replaced by each mirror's location, then by
/// the entry's own location when `fallback` is set. Without a matching entry: the registry itself.
pub fn endpoints(r: &Reference, cfg: &ImageConfig) -> Vec<Endpoint> {
    let full = r.to_string();
    let name = r.name();
    let entry = cfg
        .registry
        .iter()
        .filter(|e| {
            !e.prefix.is_empty()
                && (full == e.prefix
                    || full
                        .strip_prefix(e.prefix.as_str())
                        .is_some_and(|rest| rest.starts_with(['/', ':', '@'])))
        })
        .max_by_key(|e| e.prefix.len());
    let Some(entry) = entry else {
        return endpoint_at(&name, "", false).into_iter().collect();
    };
    // The part of the name after the prefix (empty when the prefix also named a tag or digest).
    let rest = name.get(entry.prefix.len()..).unwrap_or("");
    let by_digest = r.digest.is_some();
    let mut out: Vec<Endpoint> = entry
        .mirror
        .iter()
        .filter(|m| match m.pull_from_mirror {
            PullFromMirror::All => true,
            PullFromMirror::DigestOnly => by_digest,
            PullFromMirror::TagOnly => !by_digest,
        })
        .filter_map(|m| {
            let mut ep = endpoint_at(&m.location, rest, m.insecure)?;
            // Validated when the config was loaded; a bad value here means "defaults".
            ep.timeouts = crate::config::parse_duration(&m.timeout)
                .ok()
                .map(Timeouts::all);
            Some(ep)
        })
        .collect();
    if entry.fallback || entry.mirror.is_empty() {
        let location = if entry.location.is_empty() {
            &entry.prefix
        } else {
            &entry.location
        };
        out.extend(endpoint_at(location, rest, entry.insecure));
    }
    out
}

fn endpoint_at(location: &str, rest: &str, insecure: bool) -> Option<Endpoint> {
    let joined = format!("{}{}", location.trim_end_matches('/'), rest);
    let (host, repository) = joined.split_once('/')?;
    if host.is_empty() || repository.is_empty() {
        return None;
    }
    let host = if host == "docker.io" || host == "index.docker.io" {
        DOCKER_HUB_API
    } else {
        host
    };
    Some(Endpoint {
        host: host.to_string(),
        repository: repository.trim_matches('/').to_string(),
        insecure,
        timeouts: None,
    })
}

/// How we authenticate to one endpoint, learnt from its 401 challenges.
#[derive(Debug, Clone)]
enum Credential {
    None,
    Bearer(String),
    Basic(String, String),
}

/// A conversation with one endpoint for the length of one pull.
pub struct Session<'a> {
    client: &'a reqwest::Client,
    pub endpoint: Endpoint,
    auth: Option<&'a RegistryAuth>,
    credential: Credential,
    timeouts: Timeouts,
}

/// A manifest as served: its digest, content type and bytes.
pub struct Fetched {
    pub digest: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl<'a> Session<'a> {
    pub fn new(
        client: &'a reqwest::Client,
        endpoint: Endpoint,
        auth: Option<&'a RegistryAuth>,
        timeouts: Timeouts,
    ) -> Self {
        let credential = match auth {
            Some(a) if !a.registry_token.is_empty() => Credential::Bearer(a.registry_token.clone()),
            _ => Credential::None,
        };
        let timeouts = endpoint.timeouts.unwrap_or(timeouts);
        Session {
            client,
            endpoint,
            auth,
            credential,
            timeouts,
        }
    }

    /// A session for the same endpoint with what this one learnt about auth.
    pub fn fork(&self) -> Session<'a> {
        Session {
            client: self.client,
            endpoint: self.endpoint.clone(),
            auth: self.auth,
            credential: self.credential.clone(),
            timeouts: self.timeouts,
        }
    }

    fn err(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Registry {
            endpoint: self.endpoint.to_string(),
            reason: reason.into(),
        }
    }

    /// GET `path` under /v2/<repo>/, authenticating on a 401 and retrying once.
    /// `whole` bounds the entire request by the request timeout (not for blob streams).
    async fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        whole: bool,
    ) -> Result<reqwest::Response, ImageError> {
        let url = format!(
            "{}/v2/{}/{}",
            self.endpoint.base(),
            self.endpoint.repository,
            path
        );
        for attempt in 0..2 {
            let mut req = self.client.get(&url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if whole {
                req = req.timeout(self.timeouts.request);
            }
            req = match &self.credential {
                Credential::None => req,
                Credential::Bearer(t) => req.bearer_auth(t),
                Credential::Basic(u, p) => req.basic_auth(u, Some(p)),
            };
            let send = req.send();
            // A blob stream has no overall limit, but its headers must come within the request
            // timeout: a mirror that accepts and then says nothing is skipped.
            let resp = match tokio::time::timeout(self.timeouts.request, send).await {
                Ok(r) => r.map_err(|e| self.err(describe(&e)))?,
                Err(_) => {
                    return Err(self.err(format!(
                        "GET {url}: no answer within {:?} (timed out)",
                        self.timeouts.request
                    )))
                }
            };
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.authenticate(&challenge).await?;
                continue;
            }
            return Ok(resp);
        }
        Err(self.err(format!("GET {url}: unauthorized")))
    }

    /// Answer a WWW-Authenticate challenge: fetch a bearer token from the realm, or use basic auth.
    async fn authenticate(&mut self, challenge: &str) -> Result<(), ImageError> {
        let (scheme, params) = parse_challenge(challenge);
        let basic = self.auth.and_then(RegistryAuth::basic);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => match basic {
                Some((u, p)) => {
                    self.credential = Credential::Basic(u, p);
                    Ok(())
                }
                None => Err(self.err("registry requires basic auth and no credentials were given")),
            },
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        self.err(format!("bearer challenge without realm: {challenge}"))
                    })?;
                let service = params
                    .iter()
                    .find(|(k, _)| k == "service")
                    .map(|(_, v)| v.clone());
                let scope = params
                    .iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| format!("repository:{}:pull", self.endpoint.repository));
                let token = self
                    .fetch_token(&realm, service.as_deref(), &scope, basic)
                    .await?;
                self.credential = Credential::Bearer(token);
                Ok(())
            }
            _ => Err(self.err(format!("unsupported auth challenge {challenge:?}"))),
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        basic: Option<(String, String)>,
    ) -> Result<String, ImageError> {
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let identity = self
            .auth
            .map(|a| a.identity_token.as_str())
            .filter(|t| !t.is_empty());
        let req = if let Some(refresh) = identity {
            // OAuth2 refresh-token grant, as docker does with an identity token.
            let mut form = query.clone();
            form.extend([
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", "ferrio"),
            ]);
            self.client.post(realm).form(&form)
        } else {
            let mut r = self.client.get(realm).query(&query);
            if let Some((u, p)) = basic {
                r = r.basic_auth(u, Some(p));
            }
            r
        };
        let resp = req
            .timeout(self.timeouts.request)
            .send()
            .await
            .map_err(|e| self.err(format!("token request to {realm}: {}", describe(&e))))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("token request to {realm}: {}", resp.status())));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let body = read_limited(resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| self.err(format!("token response from {realm}: {e}")))?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("token response from {realm}: {e}")))?;
        let token = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if token.is_empty() {
            return Err(self.err(format!("token response from {realm} has no token")));
        }
        Ok(token)
    }

    /// Turn a non-success status into an error; 404 becomes NotFound for `what`.
    async fn check(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response, ImageError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
        let detail = registry_error_text(&body);
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(ImageError::NotFound {
                reference: what.to_string(),
                detail: format!("{}: {status}{detail}", self.endpoint),
            });
        }
        Err(self.err(format!("{what}: {status}{detail}")))
    }

    /// Fetch a manifest by tag or digest; a digest is verified against the bytes.
    pub async fn manifest(&mut self, key: &str) -> Result<Fetched, ImageError> {
        let resp = self
            .get(&format!("manifests/{key}"), Some(ACCEPT), true)
            .await?;
        // A digest is written `name@sha256:...`, a tag `name:tag`.
        let sep = if key.contains(':') { '@' } else { ':' };
        let what = format!("{}{sep}{key}", self.endpoint);
        let resp = self.check(resp, &what).await?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = read_limited(resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| self.err(format!("manifest {key}: {e}")))?;
        let digest = sha256_digest(&body);
        if key.contains(':') && key != digest {
            return Err(ImageError::DigestMismatch {
                blob: key.to_string(),
                actual: digest,
            });
        }
        Ok(Fetched {
            digest,
            content_type,
            body,
        })
    }

    /// Fetch a small blob (an image config) into memory, verifying digest and size.
    pub async fn small_blob(&mut self, digest: &str, size: u64) -> Result<Vec<u8>, ImageError> {
        if size > MAX_MANIFEST_BYTES {
            return Err(self.err(format!(
                "blob {digest}: {size} bytes is too large for a config"
            )));
        }
        let resp = self.get(&format!("blobs/{digest}"), None, true).await?;
        let resp = self.check(resp, digest).await?;
        let body = read_limited(resp, size)
            .await
            .map_err(|e| self.err(format!("blob {digest}: {e}")))?;
        if body.len() as u64 != size {
            return Err(ImageError::SizeMismatch {
                blob: digest.to_string(),
                expected: size,
                actual: body.len() as u64,
            });
        }
        let actual = sha256_digest(&body);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                blob: digest.to_string(),
                actual,
            });
        }
        Ok(body)
    }

    /// Start streaming a blob; the caller verifies what it reads.
    pub async fn blob_stream(&mut self, digest: &str) -> Result<reqwest::Response, ImageError> {
        let resp = self.get(&format!("blobs/{digest}"), None, false).await?;
        self.check(resp, digest).await
    }

    /// A registry error for this endpoint (used by callers streaming a blob).
    pub fn error(&self, reason: impl Into<String>) -> ImageError {
        self.err(reason)
    }

    /// The limits this session runs under (the endpoint's own, or the defaults).
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Read a body, refusing more than `limit` bytes (so a hostile server cannot exhaust memory).
async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// reqwest's Display hides the cause; the chain says "connection refused" or "timed out".
pub fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    if e.is_timeout() {
        s.push_str(" (timed out)");
    }
    s
}

/// The `errors` array of a registry error body, as ` (CODE: message; ...)`.
fn registry_error_text(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => {
            let v: Vec<String> = e
                .errors
                .iter()
                .map(|i| format!("{}: {}", i.code, i.message))
                .collect();
            format!(" ({})", v.join("; "))
        }
        _ => String::new(),
    }
}

/// `Bearer realm="https://auth",service="reg",scope="repository:a:pull"` -> ("Bearer", [(k, v)]).
pub fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = rest[ks..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                // Values are ASCII in practice; take whole chars to stay on boundaries.
                let c = rest[i..].chars().next().unwrap_or(' ');
                val.push(c);
                i += c.len_utf8();
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = rest[vs..i].trim().to_string();
        }
        if !key.is_empty() {
            params.push((key, val));
        }
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MirrorConfig, RegistryConfig};
    use crate::image::reference::normalize;

    #[test]
    fn challenge_parsing() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:library/busybox:pull".into()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p[0].1, "Registry Realm");
    }

    fn reg(
        prefix: &str,
        location: &str,
        fallback: bool,
        mirrors: &[(&str, bool)],
    ) -> RegistryConfig {
        RegistryConfig {
            prefix: prefix.into(),
            location: location.into(),
            insecure: false,
            fallback,
            mirror: mirrors
                .iter()
                .map(|(l, i)| MirrorConfig {
                    location: (*l).into(),
                    insecure: *i,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn mirror_endpoints_longest_prefix() {
        let cfg = ImageConfig {
            registry: vec![
                reg("docker.io", "", true, &[("mirror.local:5000", true)]),
                reg(
                    "docker.io/library",
                    "",
                    false,
                    &[("127.0.0.1:5000/hub", true)],
                ),
                reg(
                    "registry.k8s.io",
                    "",
                    true,
                    &[("127.0.0.1:5000", true), ("m2.example/k8s", false)],
                ),
            ],
            ..Default::default()
        };
        let e = endpoints(&normalize("busybox:1.36").unwrap(), &cfg);
        assert_eq!(
            e,
            vec![Endpoint {
                host: "127.0.0.1:5000".into(),
                repository: "hub/busybox".into(),
                insecure: true,
                timeouts: None,
            }]
        );
        let e = endpoints(&normalize("someone/app").unwrap(), &cfg);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].to_string(), "mirror.local:5000/someone/app");
        assert_eq!(e[1].to_string(), "registry-1.docker.io/someone/app");
        assert!(!e[1].insecure);
        let e = endpoints(&normalize("registry.k8s.io/pause:3.10").unwrap(), &cfg);
        let s: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            s,
            vec![
                "127.0.0.1:5000/pause",
                "m2.example/k8s/pause",
                "registry.k8s.io/pause"
            ]
        );
        // No entry: the registry itself, over HTTPS. A prefix must end at a path boundary.
        let e = endpoints(&normalize("registry.k8s.io.evil/pause").unwrap(), &cfg);
        assert_eq!(e[0].to_string(), "registry.k8s.io.evil/pause");
        assert!(!e[0].insecure);
    }

    #[test]
    fn auth_file_longest_match() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config.json");
        let text = r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnB3"},
                "quay.io": {"username": "q", "password": "p"},
                "quay.io/org": {"identitytoken": "refresh"},
                "127.0.0.1:5000": {"registrytoken": "tok"}
            }}"#;
        std::fs::write(&f, text).unwrap();
        let read = |ep: &Endpoint| auth_from_file(&f, text.as_bytes(), ep);
        let ep = |host: &str, repo: &str| Endpoint {
            host: host.into(),
            repository: repo.into(),
            insecure: false,
            timeouts: None,
        };
        let a = read(&ep(DOCKER_HUB_API, "library/busybox"))
            .unwrap()
            .unwrap();
        assert_eq!(a.basic(), Some(("hub".into(), "pw".into())));
        let a = read(&ep("quay.io", "org/app")).unwrap().unwrap();
        assert_eq!(a.identity_token, "refresh");
        let a = read(&ep("quay.io", "orgx/app")).unwrap().unwrap();
        assert_eq!(a.username, "q");
        let a = read(&ep("127.0.0.1:5000", "x")).unwrap().unwrap();
        assert_eq!(a.registry_token, "tok");
        assert!(read(&ep("ghcr.io", "x")).unwrap().is_none());
        assert!(auth_from_file(&f, b"{", &ep("quay.io", "x")).is_err());
    }

    #[test]
    fn auth_field_decodes() {
        let a = RegistryAuth {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:x"),
            ..Default::default()
        };
        assert_eq!(a.basic(), Some(("u".into(), "p:x".into())));
        assert!(!format!("{a:?}").contains("dTpw"));
    }
}
