//! The typed facts a pod's record keeps from its RunPodSandbox request, and the record's schema
//! versions ([`Schema`]): what the daemon reads back about a pod is decided here once, at create
//! (or, for a record written before these fields existed, at load), never re-read from the raw
//! request.

use super::lifecycle::{SandboxMeta, SandboxStatus};
use crate::state::Schema;
use serde::{Deserialize, Serialize};

/// How one namespace of a pod or container is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceMode {
    /// The pod's (the default; also what an unknown CRI value means to the spec translators).
    #[default]
    Pod,
    Container,
    Node,
    Target,
}

impl NamespaceMode {
    /// The mode of a CRI `NamespaceMode` number, as records written before versions hold it.
    fn from_v0(mode: i32) -> NamespaceMode {
        match mode {
            1 => NamespaceMode::Container,
            2 => NamespaceMode::Node,
            3 => NamespaceMode::Target,
            _ => NamespaceMode::Pod,
        }
    }
}

/// One range of a user namespace's id mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub host_id: u32,
    pub container_id: u32,
    pub length: u32,
}

/// The user namespace the request asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserNamespace {
    pub mode: NamespaceMode,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

/// The namespace modes a pod was created with, as PodSandboxStatus reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NamespaceModes {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    /// The container whose namespaces `Target` modes name.
    pub target_id: String,
    /// `None` when the request named no user namespace.
    pub userns: Option<UserNamespace>,
}

/// What the daemon keeps from a RunPodSandbox request besides the fields every record had.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PodRequestFacts {
    pub namespace_modes: NamespaceModes,
    /// `linux.security_context.privileged`: only a privileged pod may hold privileged containers.
    pub privileged: bool,
    /// The hostname the request named; empty when the pod takes the node's (the record's
    /// `hostname` is then the node's name at create).
    pub requested_hostname: String,
}

impl PodRequestFacts {
    fn from_v0(config: &v0::PodSandboxConfig) -> PodRequestFacts {
        let sc = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref());
        let ids = |v: &[v0::IdMapping]| v.iter().map(v0::IdMapping::typed).collect();
        PodRequestFacts {
            namespace_modes: sc
                .and_then(|s| s.namespace_options.as_ref())
                .map(|o| NamespaceModes {
                    network: NamespaceMode::from_v0(o.network),
                    pid: NamespaceMode::from_v0(o.pid),
                    ipc: NamespaceMode::from_v0(o.ipc),
                    target_id: o.target_id.clone(),
                    userns: o.userns_options.as_ref().map(|u| UserNamespace {
                        mode: NamespaceMode::from_v0(u.mode),
                        uids: ids(&u.uids),
                        gids: ids(&u.gids),
                    }),
                })
                .unwrap_or_default(),
            privileged: sc.is_some_and(|s| s.privileged),
            requested_hostname: config.hostname.clone(),
        }
    }
}

/// The CRI request as a record written before versions holds it (its `config`), reduced to what
/// the migration reads. The shape is frozen here, so a later change of the CRI types cannot
/// change how those records read; like the CRI JSON, a missing field is its default.
pub(crate) mod v0 {
    use serde::Deserialize;

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct PodSandboxConfig {
        pub hostname: String,
        pub linux: Option<LinuxPodSandboxConfig>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct LinuxPodSandboxConfig {
        pub security_context: Option<LinuxSandboxSecurityContext>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct LinuxSandboxSecurityContext {
        pub namespace_options: Option<NamespaceOption>,
        pub privileged: bool,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct NamespaceOption {
        pub network: i32,
        pub pid: i32,
        pub ipc: i32,
        pub target_id: String,
        pub userns_options: Option<UserNamespace>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct UserNamespace {
        pub mode: i32,
        pub uids: Vec<IdMapping>,
        pub gids: Vec<IdMapping>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct IdMapping {
        pub host_id: u32,
        pub container_id: u32,
        pub length: u32,
    }

    impl IdMapping {
        pub fn typed(&self) -> super::IdMapping {
            super::IdMapping {
                host_id: self.host_id,
                container_id: self.container_id,
                length: self.length,
            }
        }
    }
}

impl Schema for SandboxMeta {
    /// 1: the typed request facts ([`PodRequestFacts`]) beside the raw request.
    const VERSION: u64 = 1;

    fn migrate(from: u64, mut value: serde_json::Value) -> Result<serde_json::Value, String> {
        if from == 0 {
            let m = value.as_object_mut().ok_or("not a JSON object")?;
            let raw = m.get("config").cloned().ok_or("no config")?;
            let config: v0::PodSandboxConfig =
                serde_json::from_value(raw).map_err(|e| format!("config: {e}"))?;
            let facts = serde_json::to_value(PodRequestFacts::from_v0(&config))
                .map_err(|e| e.to_string())?;
            m.insert("request".into(), facts);
        }
        Ok(value)
    }
}

impl Schema for SandboxStatus {
    /// 1: unchanged from the unversioned files.
    const VERSION: u64 = 1;

    fn migrate(_from: u64, value: serde_json::Value) -> Result<serde_json::Value, String> {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::lifecycle::SandboxState;
    use crate::state::{decode, encode, Table};
    use std::path::Path;

    const V0: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/state/testdata/v0");

    fn fixture(name: &str) -> (std::path::PathBuf, Vec<u8>) {
        let path = Path::new(V0).join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (path, bytes)
    }

    #[test]
    fn a_pod_record_written_before_versions_loads_with_its_typed_facts() {
        let (path, bytes) = fixture("sandbox.meta.json");
        let m: SandboxMeta = decode(&path, &bytes).unwrap();
        assert_eq!(
            m.request,
            PodRequestFacts {
                namespace_modes: NamespaceModes {
                    network: NamespaceMode::Pod,
                    pid: NamespaceMode::Container,
                    ipc: NamespaceMode::Pod,
                    target_id: String::new(),
                    userns: None,
                },
                privileged: false,
                requested_hostname: "fixture-pod".into(),
            }
        );
        assert_eq!(m.name, "fixture-pod");
        assert_eq!(m.namespace, "fixtures");
        assert_eq!(m.uid, "0123456789abcdef0123456789abcdef");
        assert_eq!(m.attempt, 1);
        assert_eq!(m.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            m.annotations.get("example.com/owner").map(String::as_str),
            Some("team-a")
        );
        assert_eq!(m.runtime_handler, "runc");
        assert_eq!(m.hostname, "fixture-pod");
        assert!(m
            .log_directory
            .ends_with("fixture-pod_848f4fd65128c097211e5bea87317e98"));
        assert_eq!(m.cgroup_parent, "/ferrio-e2e-f2fc38b75106");
        assert_eq!(m.port_mappings.len(), 1);
        assert_eq!(m.port_mappings[0].container_port, 80);
        assert!(m.namespaces.net.is_some() && m.namespaces.uts.is_some());
        assert!(!m.host_network);
        assert_eq!(m.config["dns_config"]["servers"][0], "10.96.0.10");

        let (path, bytes) = fixture("sandbox.status.json");
        let s: SandboxStatus = decode(&path, &bytes).unwrap();
        assert_eq!(s.state, SandboxState::Ready);
        assert_eq!(s.ips, ["10.214.50.2"]);
        assert!(s.network_attached && s.pause_created);
        assert!(s.network_result.is_some());
        assert_eq!(s.resources, None);
    }

    #[tokio::test]
    async fn a_pod_record_round_trips_at_the_current_version() {
        let (path, bytes) = fixture("sandbox.meta.json");
        let mut m: SandboxMeta = decode(&path, &bytes).unwrap();
        m.request.privileged = true;
        m.request.namespace_modes.userns = Some(UserNamespace {
            mode: NamespaceMode::Node,
            uids: vec![IdMapping {
                host_id: 1000,
                container_id: 0,
                length: 65536,
            }],
            gids: vec![],
        });
        let (spath, sbytes) = fixture("sandbox.status.json");
        let s: SandboxStatus = decode(&spath, &sbytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = Table::<SandboxMeta, SandboxStatus>::open(dir.path()).unwrap();
        t.insert("p1", m.clone(), s.clone()).await.unwrap();
        drop(t);
        let written = std::fs::read(dir.path().join("p1/meta.json")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(json["version"], SandboxMeta::VERSION);
        let (t, broken) = Table::<SandboxMeta, SandboxStatus>::open(dir.path()).unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        let back = t.get("p1").unwrap().unwrap();
        assert_eq!(back.meta.request, m.request);
        assert_eq!(
            serde_json::to_value(&back.meta).unwrap(),
            serde_json::to_value(&m).unwrap()
        );
        assert_eq!(
            serde_json::to_value(back.status()).unwrap(),
            serde_json::to_value(&s).unwrap()
        );
        assert_eq!(
            encode(&path, &back.meta).unwrap(),
            encode(&path, &m).unwrap()
        );
    }

    #[test]
    fn a_pod_record_whose_request_does_not_decode_is_an_error_naming_it() {
        let (_, bytes) = fixture("sandbox.meta.json");
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        json["config"]["linux"]["security_context"]["privileged"] = "yes".into();
        let path = Path::new("/somewhere/sandboxes/p1/meta.json");
        let err = decode::<SandboxMeta>(path, &serde_json::to_vec(&json).unwrap()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/somewhere/sandboxes/p1/meta.json"), "{text}");
        assert!(
            text.contains("privileged") || text.contains("config"),
            "{text}"
        );
    }
}
