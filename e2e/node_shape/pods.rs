//! Pods and containers shaped as kubelet sends them: the pod cgroup parent of each QoS class in
//! the syntax of each cgroup driver, made before RunPodSandbox and removed after RemovePodSandbox,
//! as kubelet's cgroup manager does.

use crate::client::Cri;
use crate::node::{self, Proc};
use ferrio::cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxContainerResources,
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use std::time::{Duration, Instant};

pub const BUSYBOX: &str = "docker.io/library/busybox:1.36";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

pub const ALL_QOS: [Qos; 3] = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort];

/// A pod's cgroup as kubelet names it: `parent` is what RunPodSandbox carries, `dir` where it
/// lives below the hierarchy root, `slice` the systemd unit (systemd driver only).
#[derive(Debug, Clone)]
pub struct PodCgroup {
    pub parent: String,
    pub dir: String,
    pub slice: Option<String>,
}

/// kubelet's pod cgroup for `uid` in `qos` (pkg/kubelet/cm: `kubepods[/<qos>]/pod<uid>`; the
/// systemd driver spells it as nested slices, with the uid's dashes as underscores).
pub fn pod_cgroup(driver: Driver, qos: Qos, uid: &str) -> PodCgroup {
    let qos_name = match qos {
        Qos::Guaranteed => None,
        Qos::Burstable => Some("burstable"),
        Qos::BestEffort => Some("besteffort"),
    };
    match driver {
        Driver::Cgroupfs => {
            let parent = match qos_name {
                None => format!("/kubepods/pod{uid}"),
                Some(q) => format!("/kubepods/{q}/pod{uid}"),
            };
            PodCgroup {
                dir: parent.clone(),
                parent,
                slice: None,
            }
        }
        Driver::Systemd => {
            let u = uid.replace('-', "_");
            let (parent, slice) = match qos_name {
                None => {
                    let s = format!("kubepods-pod{u}.slice");
                    (format!("/kubepods.slice/{s}"), s)
                }
                Some(q) => {
                    let s = format!("kubepods-{q}-pod{u}.slice");
                    (format!("/kubepods.slice/kubepods-{q}.slice/{s}"), s)
                }
            };
            PodCgroup {
                dir: parent.clone(),
                parent,
                slice: Some(slice),
            }
        }
    }
}

impl PodCgroup {
    /// Made before RunPodSandbox, as kubelet does.
    pub fn create(&self) -> Result<(), String> {
        match &self.slice {
            Some(slice) => node::start_slice(slice),
            None => std::fs::create_dir_all(node::cgroup_dir(&self.dir))
                .map_err(|e| format!("mkdir {}: {e}", self.dir)),
        }
    }

    /// Removed after RemovePodSandbox, as kubelet does; the runtime must have left it empty.
    pub fn remove(&self) -> Result<(), String> {
        match &self.slice {
            Some(slice) => node::stop_slice(slice),
            // The runtime made it (no parent was sent); nothing of kubelet's.
            None if self.dir.is_empty() => Ok(()),
            None => {
                let dir = node::cgroup_dir(&self.dir);
                match std::fs::remove_dir(&dir) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("rmdir {}: {e}", dir.display())),
                }
            }
        }
    }

    /// Where a container (or the pause) of this pod lives: ferrio names scopes and directories
    /// `ferrio-<id>`.
    pub fn container_dir(&self, driver: Driver, id: &str) -> String {
        match driver {
            Driver::Systemd => format!("{}/ferrio-{id}.scope", self.dir),
            Driver::Cgroupfs => format!("{}/ferrio-{id}", self.dir),
        }
    }
}

/// A running pod of the suite: its id, config and kubelet-made cgroup.
#[derive(Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub cgroup: PodCgroup,
}

pub fn uid() -> String {
    let r: u128 = rand::random();
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub async fn run_pod(
    cri: &mut Cri,
    driver: Driver,
    qos: Qos,
    name: &str,
    resources: Option<LinuxContainerResources>,
) -> Result<Pod, String> {
    let uid = uid();
    let cgroup = pod_cgroup(driver, qos, &uid);
    cgroup.create()?;
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: "node-shape".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: format!("/var/log/pods/node-shape_{name}_{uid}"),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup.parent.clone(),
            resources,
            ..Default::default()
        }),
        ..Default::default()
    };
    let res = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await;
    match res {
        Ok(r) => Ok(Pod {
            id: r.into_inner().pod_sandbox_id,
            config,
            cgroup,
        }),
        Err(e) => {
            let _ = cgroup.remove();
            Err(format!("RunPodSandbox {name} under {}: {e}", cgroup.parent))
        }
    }
}

/// StopPodSandbox, RemovePodSandbox, then the pod cgroup as kubelet removes it.
pub async fn remove_pod(cri: &mut Cri, pod: &Pod) -> Result<(), String> {
    let id = pod.id.clone();
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .map_err(|e| format!("StopPodSandbox {id}: {e}"))?;
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .map_err(|e| format!("RemovePodSandbox {id}: {e}"))?;
    pod.cgroup.remove()
}

pub fn container(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

pub fn with_resources(mut c: ContainerConfig, r: LinuxContainerResources) -> ContainerConfig {
    c.linux = Some(LinuxContainerConfig {
        resources: Some(r),
        ..Default::default()
    });
    c
}

/// CreateContainer + StartContainer; the container's id.
pub async fn start(cri: &mut Cri, pod: &Pod, config: ContainerConfig) -> Result<String, String> {
    let name = config.metadata.as_ref().map(|m| m.name.clone());
    let id = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .map_err(|e| format!("CreateContainer {name:?}: {e}"))?
        .into_inner()
        .container_id;
    cri.rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|e| format!("StartContainer {id}: {e}"))?;
    Ok(id)
}

/// ContainerStatus (verbose): the CRI status and the container's and its monitor's processes.
pub struct Observed {
    pub status: ferrio::cri::v1::ContainerStatus,
    pub pid: i32,
    pub monitor_pid: i32,
}

/// The `info` of a verbose status call as JSON (`Null` when the daemon sent none).
pub fn verbose_info(info: &std::collections::HashMap<String, String>) -> serde_json::Value {
    info.get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

pub async fn observe(cri: &mut Cri, id: &str) -> Result<Observed, String> {
    let r = cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .map_err(|e| format!("ContainerStatus {id}: {e}"))?
        .into_inner();
    let info = verbose_info(&r.info);
    let num = |k: &str| info["status"][k].as_i64().unwrap_or(0) as i32;
    Ok(Observed {
        status: r
            .status
            .ok_or_else(|| format!("ContainerStatus {id}: no status"))?,
        pid: num("pid"),
        monitor_pid: num("monitor_pid"),
    })
}

/// Polls ContainerStatus until the container is in `state`.
pub async fn wait_state(
    cri: &mut Cri,
    id: &str,
    state: ContainerState,
    timeout: Duration,
) -> Result<Observed, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let o = observe(cri, id).await?;
        if o.status.state == state as i32 {
            return Ok(o);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "container {id} not {state:?} after {timeout:?}: {:?}",
                o.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The running container's process and its monitor, identified by pid and start time.
pub async fn running_procs(cri: &mut Cri, id: &str) -> Result<(Proc, Proc), String> {
    let o = wait_state(
        cri,
        id,
        ContainerState::ContainerRunning,
        Duration::from_secs(60),
    )
    .await?;
    let c = Proc::of(o.pid).ok_or_else(|| format!("container {id}: no process {}", o.pid))?;
    let m = Proc::of(o.monitor_pid)
        .ok_or_else(|| format!("container {id}: no monitor process {}", o.monitor_pid))?;
    Ok((c, m))
}
