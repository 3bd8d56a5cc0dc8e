//! Manifests, indexes and image configs as the registry serves them (OCI and Docker schema 2),
//! and the choice of one platform out of an index.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ImageConfig, ImageError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What we ask registries for; schema 1 is listed last so that we get to say why we refuse it
/// instead of a registry-side conversion error.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json;q=0.9, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1";

/// Manifests and configs larger than this are refused rather than buffered.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this node runs: linux and the Go name of the CPU architecture.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A parsed manifest document: either one image or an index of images.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Vec<Descriptor>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageManifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Parse a manifest body; `content_type` is the registry's Content-Type header (may be empty).
pub fn parse(
    reference: &str,
    digest: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Manifest, ImageError> {
    let malformed = |reason: String| ImageError::Malformed {
        blob: digest.to_string(),
        what: "manifest".into(),
        reason,
    };
    let probe: Probe = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let media_type = probe
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| ct.to_string());
    if probe.schema_version == Some(1)
        || media_type == DOCKER_SCHEMA1
        || media_type == DOCKER_SCHEMA1_SIGNED
    {
        return Err(ImageError::UnsupportedManifest {
            reference: reference.to_string(),
            media_type: if media_type.is_empty() { DOCKER_SCHEMA1.into() } else { media_type },
            reason: "Docker schema 1 manifests are deprecated and not supported; push the image again with a current client (schema 2 or OCI)".into(),
        });
    }
    match (media_type.as_str(), probe.manifests, probe.config) {
        (OCI_INDEX | DOCKER_LIST, Some(m), _) | ("", Some(m), None) => Ok(Manifest::Index(m)),
        (OCI_MANIFEST | DOCKER_MANIFEST | "", _, Some(config)) => {
            Ok(Manifest::Image(ImageManifest {
                config,
                layers: probe.layers.unwrap_or_default(),
            }))
        }
        (OCI_INDEX | DOCKER_LIST | OCI_MANIFEST | DOCKER_MANIFEST, _, _) => {
            Err(malformed(format!("{media_type} lacks its required fields")))
        }
        (other, _, _) => Err(ImageError::UnsupportedManifest {
            reference: reference.to_string(),
            media_type: other.to_string(),
            reason: "not an image manifest or index".into(),
        }),
    }
}

/// Pick the entry of an index that runs on `want`: same os and architecture; the same variant
/// preferred, then one without a variant, then any variant. Attestations (unknown/unknown) and
/// entries without a platform never match.
pub fn select_platform<'a>(entries: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    candidates
        .iter()
        .find(|d| want.variant.is_some() && variant_of(d) == want.variant)
        .or_else(|| candidates.iter().find(|d| variant_of(d).is_none()))
        // amd64 "v1" is the baseline every amd64 host runs.
        .or_else(|| {
            candidates
                .iter()
                .find(|d| variant_of(d).as_deref() == Some("v1"))
        })
        .or_else(|| {
            if want.variant.is_none() {
                None
            } else {
                candidates.first()
            }
        })
        .copied()
}

/// The list of platforms in an index, for error messages.
pub fn platforms(entries: &[Descriptor]) -> String {
    let v: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The parts of the image config JSON ferrio uses.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConfigBlob {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl ConfigBlob {
    pub fn parse(digest: &str, body: &[u8]) -> Result<ConfigBlob, ImageError> {
        serde_json::from_slice(body).map_err(|e| ImageError::Malformed {
            blob: digest.to_string(),
            what: "image config".into(),
            reason: e.to_string(),
        })
    }

    /// The runnable defaults containers inherit.
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.unwrap_or_default(),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(os: &str, arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 1,
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(String::from),
            }),
            annotations: BTreeMap::new(),
        }
    }

    fn p(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
        }
    }

    #[test]
    fn selects_matching_platform() {
        let idx = vec![
            desc("unknown", "unknown", None, 0),
            desc("linux", "arm", Some("v6"), 1),
            desc("linux", "arm", Some("v7"), 2),
            desc("linux", "arm64", Some("v8"), 3),
            desc("linux", "amd64", None, 4),
            desc("windows", "amd64", None, 5),
        ];
        assert_eq!(select_platform(&idx, &p("amd64", None)).unwrap().size, 1);
        assert_eq!(
            select_platform(&idx, &p("amd64", None)).unwrap().digest,
            idx[4].digest
        );
        assert_eq!(
            select_platform(&idx, &p("arm", Some("v7"))).unwrap().digest,
            idx[2].digest
        );
        assert_eq!(
            select_platform(&idx, &p("arm64", Some("v8")))
                .unwrap()
                .digest,
            idx[3].digest
        );
        assert!(select_platform(&idx, &p("s390x", None)).is_none());
        // arm64 images often carry no variant at all.
        let idx2 = vec![desc("linux", "arm64", None, 7)];
        assert_eq!(
            select_platform(&idx2, &p("arm64", Some("v8")))
                .unwrap()
                .digest,
            idx2[0].digest
        );
        // An amd64 host takes the v1 baseline over higher micro-architecture levels.
        let idx3 = vec![
            desc("linux", "amd64", Some("v3"), 8),
            desc("linux", "amd64", Some("v1"), 9),
        ];
        assert_eq!(
            select_platform(&idx3, &p("amd64", None)).unwrap().digest,
            idx3[1].digest
        );
    }

    #[test]
    fn refuses_schema1() {
        let body = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = parse("x:y", "sha256:00", "application/json", body).unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
    }

    #[test]
    fn parses_docker_and_oci() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
          "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":3},
          "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:bb","size":4}]}"#;
        match parse("r", "d", "", body).unwrap() {
            Manifest::Image(m) => assert_eq!(m.layers.len(), 1),
            other => panic!("{other:?}"),
        }
        let body = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":3,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        assert!(
            matches!(parse("r", "d", OCI_INDEX, body).unwrap(), Manifest::Index(v) if v.len() == 1)
        );
    }

    #[test]
    fn image_config_fields() {
        let body = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/e"],"Cmd":["a","b"],
          "Env":["A=1"],"WorkingDir":"/w","User":"1:2","StopSignal":"SIGQUIT","Volumes":{"/data":{}},
          "Labels":{"k":"v"}},"rootfs":{"type":"layers","diff_ids":["sha256:cc"]}}"#;
        let c = ConfigBlob::parse("d", body).unwrap();
        let ic = c.image_config();
        assert_eq!(ic.entrypoint, vec!["/e"]);
        assert_eq!(ic.cmd, vec!["a", "b"]);
        assert_eq!(ic.env, vec!["A=1"]);
        assert_eq!(ic.working_dir, "/w");
        assert_eq!(ic.user, "1:2");
        assert_eq!(ic.stop_signal, "SIGQUIT");
        assert_eq!(ic.volumes, vec!["/data"]);
        assert_eq!(ic.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(c.rootfs.diff_ids, vec!["sha256:cc"]);
    }
}
