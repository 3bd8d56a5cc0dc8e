//! The typed facts a container's record keeps from its CreateContainer request and from the
//! create itself, and the record's schema versions ([`Schema`]): what the daemon reads back about
//! a container is decided here once, at create (or, for a record written before these fields
//! existed, at load), never re-read from the raw request.

use super::lifecycle::{ContainerMeta, ContainerStatus};
use crate::sandbox::record::IdMapping;
use crate::state::Schema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How mounts below a bind mount propagate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// The default; also what an unknown CRI value means to the spec translator.
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

impl Propagation {
    /// The propagation of a CRI `MountPropagation` number, as records written before versions
    /// hold it.
    fn from_v0(p: i32) -> Propagation {
        match p {
            1 => Propagation::HostToContainer,
            2 => Propagation::Bidirectional,
            _ => Propagation::Private,
        }
    }
}

/// The image an image volume mounts, as the request named it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MountImage {
    pub image: String,
    pub annotations: BTreeMap<String, String>,
    pub user_specified_image: String,
    pub runtime_handler: String,
}

/// One mount of the request, as ContainerStatus reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub selinux_relabel: bool,
    pub propagation: Propagation,
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    pub recursive_read_only: bool,
    /// Set for an image volume.
    pub image: Option<MountImage>,
    pub image_sub_path: String,
}

/// A hugepage limit: `limit` bytes of pages of `page_size` ("2MB", "1GB").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

/// A container's Linux resources, as the create request or the last update set them. Zero or
/// empty means "not set", as in CRI.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    pub unified: BTreeMap<String, String>,
    pub memory_swap_limit_in_bytes: i64,
}

impl Resources {
    /// The same limits as the spec room's input.
    pub fn to_spec(&self) -> crate::spec::Resources {
        crate::spec::Resources {
            cpu_period: self.cpu_period,
            cpu_quota: self.cpu_quota,
            cpu_shares: self.cpu_shares,
            memory_limit_in_bytes: self.memory_limit_in_bytes,
            memory_swap_limit_in_bytes: self.memory_swap_limit_in_bytes,
            cpuset_cpus: self.cpuset_cpus.clone(),
            cpuset_mems: self.cpuset_mems.clone(),
            hugepage_limits: self
                .hugepage_limits
                .iter()
                .map(|h| (h.page_size.clone(), h.limit))
                .collect(),
            unified: self.unified.clone().into_iter().collect(),
        }
    }
}

/// The user the container's process runs as, resolved against the image at create.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

impl ProcessUser {
    /// The process user of an OCI spec; `None` when the spec has no process.
    pub fn of_spec(spec: &oci_spec::runtime::Spec) -> Option<ProcessUser> {
        let user = spec.process().as_ref()?.user();
        Some(ProcessUser {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        })
    }
}

/// What the daemon keeps from a CreateContainer request besides the fields every record had.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerRequestFacts {
    /// The request's mounts, in its order (image volumes pair with `image_volumes` in order).
    pub mounts: Vec<Mount>,
    /// `linux.resources`; `None` when the request set none.
    pub resources: Option<Resources>,
    /// An env value is not UTF-8, so the process runs through `ferrio-envexec` and so do its
    /// exec processes (see [`crate::spec::envexec`]).
    #[serde(default)]
    pub envexec: bool,
    /// The request's `tty`, `stdin` and `stdin_once`, for the monitor a deferred create
    /// starts at StartContainer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_once: bool,
}

impl ContainerRequestFacts {
    fn from_v0(config: &v0::ContainerConfig) -> ContainerRequestFacts {
        ContainerRequestFacts {
            mounts: config.mounts.iter().map(v0::Mount::typed).collect(),
            resources: config
                .linux
                .as_ref()
                .and_then(|l| l.resources.as_ref())
                .map(v0::LinuxContainerResources::typed),
            // Records from before versions were written when such values were refused.
            envexec: false,
            // Only read for a deferred create, which such records never have.
            tty: false,
            stdin: false,
            stdin_once: false,
        }
    }
}

/// The CRI request (and the status's resources) as a record written before versions holds
/// it, reduced to what the migration reads. The shape is frozen here, so a later change of the
/// CRI types cannot change how those records read; like the CRI JSON, a missing field is its
/// default.
mod v0 {
    use crate::sandbox::record::v0::IdMapping;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct ContainerConfig {
        pub mounts: Vec<Mount>,
        pub linux: Option<LinuxContainerConfig>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct LinuxContainerConfig {
        pub resources: Option<LinuxContainerResources>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Mount {
        pub container_path: String,
        pub host_path: String,
        pub readonly: bool,
        pub selinux_relabel: bool,
        pub propagation: i32,
        pub uid_mappings: Vec<IdMapping>,
        pub gid_mappings: Vec<IdMapping>,
        pub recursive_read_only: bool,
        pub image: Option<ImageSpec>,
        pub image_sub_path: String,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct ImageSpec {
        pub image: String,
        pub annotations: BTreeMap<String, String>,
        pub user_specified_image: String,
        pub runtime_handler: String,
    }

    impl Mount {
        pub fn typed(&self) -> super::Mount {
            super::Mount {
                container_path: self.container_path.clone(),
                host_path: self.host_path.clone(),
                readonly: self.readonly,
                selinux_relabel: self.selinux_relabel,
                propagation: super::Propagation::from_v0(self.propagation),
                uid_mappings: self.uid_mappings.iter().map(IdMapping::typed).collect(),
                gid_mappings: self.gid_mappings.iter().map(IdMapping::typed).collect(),
                recursive_read_only: self.recursive_read_only,
                image: self.image.as_ref().map(|i| super::MountImage {
                    image: i.image.clone(),
                    annotations: i.annotations.clone(),
                    user_specified_image: i.user_specified_image.clone(),
                    runtime_handler: i.runtime_handler.clone(),
                }),
                image_sub_path: self.image_sub_path.clone(),
            }
        }
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct LinuxContainerResources {
        pub cpu_period: i64,
        pub cpu_quota: i64,
        pub cpu_shares: i64,
        pub memory_limit_in_bytes: i64,
        pub oom_score_adj: i64,
        pub cpuset_cpus: String,
        pub cpuset_mems: String,
        pub hugepage_limits: Vec<HugepageLimit>,
        pub unified: BTreeMap<String, String>,
        pub memory_swap_limit_in_bytes: i64,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct HugepageLimit {
        pub page_size: String,
        pub limit: u64,
    }

    impl LinuxContainerResources {
        pub fn typed(&self) -> super::Resources {
            super::Resources {
                cpu_period: self.cpu_period,
                cpu_quota: self.cpu_quota,
                cpu_shares: self.cpu_shares,
                memory_limit_in_bytes: self.memory_limit_in_bytes,
                oom_score_adj: self.oom_score_adj,
                cpuset_cpus: self.cpuset_cpus.clone(),
                cpuset_mems: self.cpuset_mems.clone(),
                hugepage_limits: self
                    .hugepage_limits
                    .iter()
                    .map(|h| super::HugepageLimit {
                        page_size: h.page_size.clone(),
                        limit: h.limit,
                    })
                    .collect(),
                unified: self.unified.clone(),
                memory_swap_limit_in_bytes: self.memory_swap_limit_in_bytes,
            }
        }
    }
}

impl Schema for ContainerMeta {
    /// 1: the typed request facts ([`ContainerRequestFacts`]) beside the raw request.
    const VERSION: u64 = 1;

    fn migrate(from: u64, mut value: serde_json::Value) -> Result<serde_json::Value, String> {
        if from == 0 {
            let m = value.as_object_mut().ok_or("not a JSON object")?;
            let raw = m.get("config").cloned().ok_or("no config")?;
            let config: v0::ContainerConfig =
                serde_json::from_value(raw).map_err(|e| format!("config: {e}"))?;
            let facts = serde_json::to_value(ContainerRequestFacts::from_v0(&config))
                .map_err(|e| e.to_string())?;
            m.insert("request".into(), facts);
        }
        Ok(value)
    }
}

impl Schema for ContainerStatus {
    /// 1: `resources` typed ([`Resources`]) instead of CRI JSON; the resolved `user`.
    const VERSION: u64 = 1;

    fn migrate(from: u64, mut value: serde_json::Value) -> Result<serde_json::Value, String> {
        if from == 0 {
            let m = value.as_object_mut().ok_or("not a JSON object")?;
            let resources = match m.remove("resources") {
                None | Some(serde_json::Value::Null) => None,
                Some(raw) => {
                    let r: v0::LinuxContainerResources =
                        serde_json::from_value(raw).map_err(|e| format!("resources: {e}"))?;
                    Some(r.typed())
                }
            };
            let resources = serde_json::to_value(resources).map_err(|e| e.to_string())?;
            m.insert("resources".into(), resources);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::lifecycle::ContainerState;
    use crate::state::{decode, Table};
    use std::path::Path;

    const V0: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/state/testdata/v0");

    fn load<T: Schema>(name: &str) -> T {
        let path = Path::new(V0).join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        decode(&path, &bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fixture_resources() -> Resources {
        Resources {
            cpu_period: 100000,
            cpu_quota: 50000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 * 1024 * 1024,
            oom_score_adj: 100,
            ..Default::default()
        }
    }

    #[test]
    fn a_container_record_written_before_versions_loads_with_its_typed_facts() {
        let m: ContainerMeta = load("container-running.meta.json");
        assert_eq!(m.request.mounts.len(), 1);
        let mount = &m.request.mounts[0];
        assert_eq!(mount.container_path, "/data");
        assert!(mount.host_path.ends_with("/fixture-volume"));
        assert!(mount.readonly);
        assert!(!mount.selinux_relabel && !mount.recursive_read_only);
        assert_eq!(mount.propagation, Propagation::Private);
        assert!(mount.uid_mappings.is_empty() && mount.gid_mappings.is_empty());
        assert_eq!(mount.image, None);
        assert_eq!(mount.image_sub_path, "");
        assert_eq!(m.request.resources, Some(fixture_resources()));
        assert_eq!(m.name, "web");
        assert_eq!(m.attempt, 0);
        assert_eq!(m.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(
            m.annotations
                .get("example.com/revision")
                .map(String::as_str),
            Some("7")
        );
        assert_eq!(m.image_ref, "docker.io/library/busybox:1.36");
        assert!(m.image_id.starts_with("sha256:"));
        assert!(m.image_volumes.is_empty());
        assert!(m
            .log_path
            .as_deref()
            .is_some_and(|p| p.ends_with("web/0.log")));
        assert_eq!(m.stop_signal, 15);
        assert_eq!(m.termination_message, None);
        assert!(m
            .cgroups_path
            .starts_with("/ferrio-e2e-f2fc38b75106/ferrio-"));
        assert_eq!(m.config["working_dir"], "/tmp");

        let s: ContainerStatus = load("container-running.status.json");
        assert_eq!(s.state(), ContainerState::Running);
        assert_eq!(
            s.resources,
            Some(Resources {
                cpu_quota: 80000,
                cpu_shares: 768,
                memory_limit_in_bytes: 96 * 1024 * 1024,
                ..fixture_resources()
            })
        );
        assert_eq!(s.user, None, "not kept before versions");

        let m: ContainerMeta = load("container-exited.meta.json");
        assert_eq!(m.request, ContainerRequestFacts::default());
        let s: ContainerStatus = load("container-exited.status.json");
        assert_eq!(s.state(), ContainerState::Exited);
        assert_eq!(s.exit_code, 3);
        assert_eq!(s.reason(), "Error");
        assert_eq!(s.resources, None);
    }

    #[tokio::test]
    async fn a_container_record_round_trips_at_the_current_version() {
        let mut m: ContainerMeta = load("container-running.meta.json");
        m.request.mounts.push(Mount {
            container_path: "/img".into(),
            propagation: Propagation::HostToContainer,
            uid_mappings: vec![IdMapping {
                host_id: 1000,
                container_id: 0,
                length: 1,
            }],
            image: Some(MountImage {
                image: "docker.io/library/busybox:1.36".into(),
                ..Default::default()
            }),
            image_sub_path: "etc".into(),
            ..Default::default()
        });
        m.request.resources.as_mut().unwrap().hugepage_limits = vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 0,
        }];
        let mut s: ContainerStatus = load("container-running.status.json");
        s.user = Some(ProcessUser {
            uid: 1000,
            gid: 3000,
            additional_gids: vec![4000],
        });
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = Table::<ContainerMeta, ContainerStatus>::open(dir.path()).unwrap();
        t.insert("c1", m.clone(), s.clone()).await.unwrap();
        drop(t);
        for f in ["meta.json", "status.json"] {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.path().join("c1").join(f)).unwrap())
                    .unwrap();
            assert_eq!(json["version"], 1, "{f}");
        }
        let (t, broken) = Table::<ContainerMeta, ContainerStatus>::open(dir.path()).unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        let back = t.get("c1").unwrap().unwrap();
        assert_eq!(back.meta.request, m.request);
        assert_eq!(back.status().resources, s.resources);
        assert_eq!(back.status().user, s.user);
        assert_eq!(
            serde_json::to_value(&back.meta).unwrap(),
            serde_json::to_value(&m).unwrap()
        );
    }

    #[tokio::test]
    async fn the_committed_records_open_as_a_table_and_a_broken_one_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        for (id, name) in [("c1", "container-running"), ("c2", "container-exited")] {
            std::fs::create_dir(dir.path().join(id)).unwrap();
            for f in ["meta.json", "status.json"] {
                std::fs::copy(
                    Path::new(V0).join(format!("{name}.{f}")),
                    dir.path().join(id).join(f),
                )
                .unwrap();
            }
        }
        // A v0 status whose resources are not CRI resources.
        std::fs::create_dir(dir.path().join("c3")).unwrap();
        std::fs::copy(
            Path::new(V0).join("container-exited.meta.json"),
            dir.path().join("c3/meta.json"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c3/status.json"),
            r#"{"created": true, "pid": 1, "monitor_pid": 2, "started_at": 1, "finished_at": 0,
                "exit_code": 0, "oom_killed": false, "message": "", "resources": {"cpu_shares": "many"}}"#,
        )
        .unwrap();
        let (t, broken) = Table::<ContainerMeta, ContainerStatus>::open(dir.path()).unwrap();
        assert_eq!(t.list().len(), 2, "c3 is not loaded with a default");
        assert!(t.get("c3").unwrap().is_none());
        assert_eq!(broken.len(), 1);
        let text = broken[0].1.to_string();
        assert!(text.contains("c3/status.json"), "{text}");
        assert!(text.contains("resources"), "{text}");
    }
}
