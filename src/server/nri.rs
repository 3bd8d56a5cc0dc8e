//! NRI around the CRI calls: ferrio's pod and container records as NRI's types, the events sent before and
//! after the room calls, and the daemon state the NRI room reads (Synchronize) and changes (plugin updates).

use super::Daemon;
use crate::container::lifecycle::{Container, ContainerState, SpecAdjust};
use crate::cri::v1 as cri;
use crate::nri::{api, NodeState, Nri};
use crate::sandbox::lifecycle::Sandbox;
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::{Arc, Weak};

/// `s` as plugins see a pod.
pub(super) fn pod(s: &Sandbox) -> api::PodSandbox {
    let st = s.status();
    let mut namespaces = Vec::new();
    let ns = &s.meta.namespaces;
    for (kind, path) in [("network", &ns.net), ("ipc", &ns.ipc), ("uts", &ns.uts)] {
        if let Some(p) = path {
            namespaces.push(api::LinuxNamespace {
                r#type: kind.to_string(),
                path: p.display().to_string(),
            });
        }
    }
    api::PodSandbox {
        id: s.id.clone(),
        name: s.meta.name.clone(),
        uid: s.meta.uid.clone(),
        namespace: s.meta.namespace.clone(),
        labels: s.meta.labels.clone().into_iter().collect(),
        annotations: s.meta.annotations.clone().into_iter().collect(),
        runtime_handler: s.meta.runtime_handler.clone(),
        linux: Some(api::LinuxPodSandbox {
            cgroup_parent: s.meta.cgroup_parent.clone(),
            cgroups_path: s.meta.cgroup_parent.clone(),
            namespaces,
            ..Default::default()
        }),
        pid: st.pause_pid.max(0) as u32,
        ips: st.ips.clone(),
    }
}

/// `c` as plugins see a container, from its record (the spec's details are only sent at create).
pub(super) fn container(c: &Container) -> api::Container {
    let st = c.status();
    let state = match st.state() {
        ContainerState::Creating | ContainerState::Created => api::ContainerState::ContainerCreated,
        ContainerState::Running => api::ContainerState::ContainerRunning,
        ContainerState::Exited => api::ContainerState::ContainerStopped,
    };
    api::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.meta.sandbox_id.clone(),
        name: c.meta.name.clone(),
        state: state as i32,
        labels: c.meta.labels.clone().into_iter().collect(),
        annotations: c.meta.annotations.clone().into_iter().collect(),
        linux: Some(api::LinuxContainer {
            cgroups_path: c.cgroups_path(),
            ..Default::default()
        }),
        pid: st.pid.max(0) as u32,
        created_at: c.meta.created_at,
        started_at: st.started_at,
        finished_at: st.finished_at,
        exit_code: st.exit_code,
        status_message: st.message.clone(),
        ..Default::default()
    }
}

/// The container being created, as described by its spec.
fn container_from_spec(
    id: &str,
    pod_id: &str,
    config: &cri::ContainerConfig,
    spec: &oci_spec::runtime::Spec,
) -> api::Container {
    let doc = serde_json::to_value(spec).unwrap_or_default();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mounts = doc["mounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| api::Mount {
                    destination: m["destination"].as_str().unwrap_or_default().to_string(),
                    r#type: m["type"].as_str().unwrap_or_default().to_string(),
                    source: m["source"].as_str().unwrap_or_default().to_string(),
                    options: strings(&m["options"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let rlimits = doc["process"]["rlimits"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| api::PosixRlimit {
                    r#type: l["type"].as_str().unwrap_or_default().to_string(),
                    hard: l["hard"].as_u64().unwrap_or_default(),
                    soft: l["soft"].as_u64().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let res = &doc["linux"]["resources"];
    let i64_of = |v: &Value| v.as_i64().map(|value| api::OptionalInt64 { value });
    let u64_of = |v: &Value| v.as_u64().map(|value| api::OptionalUInt64 { value });
    let resources = api::LinuxResources {
        memory: Some(api::LinuxMemory {
            limit: i64_of(&res["memory"]["limit"]),
            swap: i64_of(&res["memory"]["swap"]),
            ..Default::default()
        }),
        cpu: Some(api::LinuxCpu {
            shares: u64_of(&res["cpu"]["shares"]),
            quota: i64_of(&res["cpu"]["quota"]),
            period: u64_of(&res["cpu"]["period"]),
            cpus: res["cpu"]["cpus"].as_str().unwrap_or_default().to_string(),
            mems: res["cpu"]["mems"].as_str().unwrap_or_default().to_string(),
            ..Default::default()
        }),
        pids: res["pids"]["limit"]
            .as_i64()
            .map(|limit| api::LinuxPids { limit }),
        ..Default::default()
    };
    let namespaces = doc["linux"]["namespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| api::LinuxNamespace {
                    r#type: n["type"].as_str().unwrap_or_default().to_string(),
                    path: n["path"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    api::Container {
        id: id.to_string(),
        pod_sandbox_id: pod_id.to_string(),
        name: config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        state: api::ContainerState::ContainerUnknown as i32,
        labels: config.labels.clone().into_iter().collect(),
        annotations: doc["annotations"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        args: strings(&doc["process"]["args"]),
        env: strings(&doc["process"]["env"]),
        mounts,
        linux: Some(api::LinuxContainer {
            namespaces,
            resources: Some(resources),
            oom_score_adj: doc["process"]["oomScoreAdj"]
                .as_i64()
                .map(|value| api::OptionalInt { value }),
            cgroups_path: doc["linux"]["cgroupsPath"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        }),
        rlimits,
        ..Default::default()
    }
}

/// CreateContainer's spec edit: the plugins' adjustments, or their refusal.
pub(super) struct Adjust {
    pub nri: Arc<Nri>,
    pub pod: api::PodSandbox,
    pub config: cri::ContainerConfig,
}

impl SpecAdjust for Adjust {
    fn adjust<'a>(
        &'a self,
        id: &'a str,
        spec: oci_spec::runtime::Spec,
        cdi: crate::spec::NriCdi<'a>,
    ) -> BoxFuture<'a, Result<oci_spec::runtime::Spec, String>> {
        Box::pin(async move {
            let container = container_from_spec(id, &self.pod.id, &self.config, &spec);
            let collected = self
                .nri
                .create_container(&self.pod, container)
                .await
                .map_err(|e| e.to_string())?;
            let owners = &collected.owners;
            crate::spec::nri_adjustments(&spec, &collected.adjust, cdi, |device| {
                owners
                    .key_owner(api::Field::CdiDevices, device)
                    .unwrap_or_default()
                    .to_string()
            })
            .map_err(|e| e.to_string())
        })
    }

    fn created<'a>(&'a self, c: &'a Arc<Container>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.nri
                .post_create_container(&self.pod, &container(c))
                .await
        })
    }
}

/// NRI's resources as a CRI update over `base` (what is in force): fields plugins left unset keep their value.
fn cri_resources(
    base: Option<cri::LinuxContainerResources>,
    r: &api::LinuxResources,
) -> cri::LinuxContainerResources {
    let mut out = base.unwrap_or_default();
    if let Some(m) = &r.memory {
        if let Some(v) = m.limit {
            out.memory_limit_in_bytes = v.value;
        }
        if let Some(v) = m.swap {
            out.memory_swap_limit_in_bytes = v.value;
        }
    }
    if let Some(c) = &r.cpu {
        if let Some(v) = c.shares {
            out.cpu_shares = v.value as i64;
        }
        if let Some(v) = c.quota {
            out.cpu_quota = v.value;
        }
        if let Some(v) = c.period {
            out.cpu_period = v.value as i64;
        }
        if !c.cpus.is_empty() {
            out.cpuset_cpus = c.cpus.clone();
        }
        if !c.mems.is_empty() {
            out.cpuset_mems = c.mems.clone();
        }
    }
    for l in &r.hugepage_limits {
        out.hugepage_limits.retain(|h| h.page_size != l.page_size);
        out.hugepage_limits.push(cri::HugepageLimit {
            page_size: l.page_size.clone(),
            limit: l.limit,
        });
    }
    for (k, v) in &r.unified {
        out.unified.insert(k.clone(), v.clone());
    }
    out
}

/// `r` as NRI resources (UpdateContainer's requested resources).
pub(super) fn nri_resources(r: &cri::LinuxContainerResources) -> api::LinuxResources {
    api::LinuxResources {
        memory: Some(api::LinuxMemory {
            limit: Some(api::OptionalInt64 {
                value: r.memory_limit_in_bytes,
            }),
            swap: (r.memory_swap_limit_in_bytes != 0).then_some(api::OptionalInt64 {
                value: r.memory_swap_limit_in_bytes,
            }),
            ..Default::default()
        }),
        cpu: Some(api::LinuxCpu {
            shares: Some(api::OptionalUInt64 {
                value: r.cpu_shares.max(0) as u64,
            }),
            quota: Some(api::OptionalInt64 { value: r.cpu_quota }),
            period: Some(api::OptionalUInt64 {
                value: r.cpu_period.max(0) as u64,
            }),
            cpus: r.cpuset_cpus.clone(),
            mems: r.cpuset_mems.clone(),
            ..Default::default()
        }),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| api::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        ..Default::default()
    }
}

/// Apply plugin updates as UpdateContainerResources would; returns the ones that failed.
pub(super) async fn apply_updates(
    d: &Daemon,
    updates: Vec<api::ContainerUpdate>,
) -> Vec<api::ContainerUpdate> {
    let mut failed = Vec::new();
    for u in updates {
        let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
            continue;
        };
        let outcome = match d.containers.get(&u.container_id) {
            Ok(c) => {
                let res = cri_resources(
                    crate::container::update::current_resources(&c)
                        .map(|r| super::records::resources_to_cri(&r)),
                    r,
                );
                d.containers
                    .update_resources(&u.container_id, super::records::resources(&res))
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            tracing::warn!(container = %u.container_id, error = %e, "NRI: plugin update failed");
            if !u.ignore_failure {
                failed.push(u);
            }
        }
    }
    failed
}

/// The daemon as the NRI room sees it.
pub(super) struct DaemonView(pub Weak<Daemon>);

impl NodeState for DaemonView {
    fn snapshot(&self) -> BoxFuture<'_, (Vec<api::PodSandbox>, Vec<api::Container>)> {
        Box::pin(async move {
            let Some(d) = self.0.upgrade() else {
                return (Vec::new(), Vec::new());
            };
            let pods = d.pods.list().iter().map(|s| pod(s)).collect();
            // Containers still being created are included: one whose CreateContainer event went out before
            // the plugin registered would otherwise reach it neither way.
            let containers = d.containers.list().iter().map(|c| container(c)).collect();
            (pods, containers)
        })
    }

    fn update_containers(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> BoxFuture<'_, Vec<api::ContainerUpdate>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(d) => apply_updates(&d, updates).await,
                None => updates,
            }
        })
    }

    fn evict_container(&self, eviction: api::ContainerEviction) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(d) = self.0.upgrade() else { return };
            tracing::info!(container = %eviction.container_id, reason = %eviction.reason, "NRI: plugin evicts a container");
            if let Ok(Some(c)) = d.containers.find(&eviction.container_id) {
                if let Err(e) = d.containers.stop(&c, 0).await {
                    tracing::warn!(container = %c.id, error = %e, "NRI: eviction failed");
                }
            }
        })
    }
}

/// The pod of container `c`, if it still exists.
pub(super) fn pod_of(d: &Daemon, c: &Container) -> Option<api::PodSandbox> {
    d.pods
        .find(&c.meta.sandbox_id)
        .ok()
        .flatten()
        .map(|s| pod(&s))
}

/// Tell plugins a container stopped by itself (StopContainer tells them for stops it makes). Off the event
/// feed's task, so a slow plugin never delays kubelet's container events.
pub(super) fn container_exited(d: &Arc<Daemon>, id: &str) {
    let Some(nri) = d.nri.clone() else { return };
    let Ok(Some(c)) = d.containers.find(id) else {
        return;
    };
    let pod = pod_of(d, &c).unwrap_or_default();
    tokio::spawn(async move {
        nri.stop_container(&pod, &container(&c)).await;
    });
}

/// NRI's RunPodSandbox, sent while the pod is not yet ready: a plugin's error rolls the pod back.
pub(super) struct RunPodHook(pub Arc<Nri>);

impl crate::sandbox::lifecycle::BeforeReady for RunPodHook {
    fn before_ready<'a>(
        &'a self,
        rec: &'a Arc<Sandbox>,
        ips: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut p = pod(rec);
            p.ips = ips.to_vec();
            self.0.run_pod_sandbox(&p).await.map_err(|e| e.to_string())
        })
    }
}
