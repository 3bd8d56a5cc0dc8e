//! Image references, normalised the way Kubernetes and the docker CLI do:
//! `busybox` -> `docker.io/library/busybox:latest`, `name@sha256:..` keeps no tag.

use std::fmt;

use super::ImageError;

/// The registry that unqualified names belong to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Docker Hub's official images live under this namespace.
const OFFICIAL_NAMESPACE: &str = "library";
const MAX_NAME_LEN: usize = 255;

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    /// `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `algorithm:hex`, e.g. `sha256:...`.
    pub digest: Option<String>,
}

impl Reference {
    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, if the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{}", self.name(), t))
    }

    /// `registry/repository@digest` for a given digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{}", self.name(), digest)
    }

    /// What to ask the registry's manifest endpoint for: the digest if any, else the tag.
    pub fn manifest_key(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
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

impl std::str::FromStr for Reference {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        normalize(s)
    }
}

/// Parse and normalise any reference kubelet may send.
pub fn normalize(s: &str) -> Result<Reference, ImageError> {
    let bad = |reason: &str| ImageError::InvalidReference {
        reference: s.to_string(),
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(bad("empty reference"));
    }
    if s.trim() != s || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace or control characters"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            validate_digest(d).map_err(|r| bad(&r))?;
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A tag is a ':' after the last '/': a ':' before it is a registry port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
        _ => (rest, None),
    };
    if let Some(t) = &tag {
        validate_tag(t).map_err(|r| bad(&r))?;
    }
    if name.is_empty() {
        return Err(bad("empty repository name"));
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            "a 64-character hexadecimal string is an image id, not a name",
        ));
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, path)) if is_registry(first) => (first.to_string(), path.to_string()),
        _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
    };
    let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
        DEFAULT_REGISTRY.to_string()
    } else {
        registry
    };
    validate_registry(&registry).map_err(|r| bad(&r))?;
    let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{repository}")
    } else {
        repository
    };
    for comp in repository.split('/') {
        validate_component(comp).map_err(|r| bad(&r))?;
    }
    if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
        return Err(bad("name longer than 255 characters"));
    }
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_string()),
        (t, _) => t,
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// The first path component names a registry when it looks like a host: it has a dot or a port,
/// or is `localhost` (the docker CLI's rule).
fn is_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

fn validate_registry(r: &str) -> Result<(), String> {
    let err = || format!("invalid registry host {r:?}");
    let (host, port) = if let Some(v6) = r.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(err)?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(err());
        }
        (
            None,
            after
                .strip_prefix(':')
                .map(Some)
                .unwrap_or(if after.is_empty() {
                    None
                } else {
                    return Err(err());
                }),
        )
    } else {
        match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(err());
        }
    }
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid registry port in {r:?}"));
        }
    }
    Ok(())
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn validate_component(c: &str) -> Result<(), String> {
    let err = || {
        format!("invalid repository path component {c:?} (lowercase letters, digits and separators . _ __ - only)")
    };
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return Err(err());
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or any number of "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(err());
        }
    }
    Ok(())
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[\w][\w.-]{0,127}`.
fn validate_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {t:?}"))
    }
}

/// `algorithm:hex`; sha256 must have exactly 64 lowercase hex digits.
pub fn validate_digest(d: &str) -> Result<(), String> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| format!("invalid digest {d:?}: missing algorithm"))?;
    let hex_ok =
        |n: usize| hex.len() == n && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match alg {
        "sha256" if hex_ok(64) => Ok(()),
        "sha512" if hex_ok(128) => Ok(()),
        "sha256" | "sha512" => Err(format!(
            "invalid digest {d:?}: wrong length or not lowercase hex"
        )),
        _ => Err(format!("unsupported digest algorithm {alg:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).unwrap().to_string()
    }

    const D: &str = "sha256:4e1f0b4b3d0b0e5b6c1a8e3d2c5f9a7b6e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";

    #[test]
    fn docker_hub_short_names() {
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("someone/app:v1"), "docker.io/someone/app:v1");
        assert_eq!(n("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            n("index.docker.io/library/busybox:1"),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        assert_eq!(
            n("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(n("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(n("localhost/x"), "localhost/x:latest");
        assert_eq!(
            n(&format!("busybox@{D}")),
            format!("docker.io/library/busybox@{D}")
        );
        let r = normalize(&format!("quay.io/a/b:1.0@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_key(), D);
        assert_eq!(r.registry, "quay.io");
        assert_eq!(r.repository, "a/b");
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox::1",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "busybox:tag with space",
            " busybox",
            "busybox:-tag",
            &"a".repeat(300),
            "4e1f0b4b3d0b0e5b6c1a8e3d2c5f9a7b6e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b",
        ] {
            match normalize(bad) {
                Err(ImageError::InvalidReference { reference, .. }) => assert_eq!(reference, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn separators() {
        assert!(normalize("a_b__c-d---e.f").is_ok());
        assert!(normalize("a___b").is_err());
        assert!(normalize("a.-b").is_err());
    }
}
