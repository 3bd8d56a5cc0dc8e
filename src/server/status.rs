//! Version, Status, RuntimeConfig, UpdateRuntimeConfig.

use super::Daemon;
use super::Res;
use crate::config::CgroupDriver;
use crate::cri::v1 as cri;
use std::sync::Arc;
use tonic::{Request, Response};

pub(super) async fn version(
    _d: &Arc<Daemon>,
    _req: Request<cri::VersionRequest>,
) -> Res<cri::VersionResponse> {
    Ok(Response::new(cri::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "ferrio".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    }))
}

pub(super) async fn status(
    d: &Arc<Daemon>,
    _req: Request<cri::StatusRequest>,
) -> Res<cri::StatusResponse> {
    let runtime_ready = cri::RuntimeCondition {
        r#type: "RuntimeReady".into(),
        status: true,
        reason: String::new(),
        message: String::new(),
    };
    let config = d.config.load();
    let network_ready = match d.cni.load().ready() {
        Ok(_) => cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err(e) => cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: format!("network plugin not ready: {e}"),
        },
    };
    let host = d.pods.host();
    // User namespaces need the node's idmapped mounts and a runtime that joins them (probed
    // per handler when it was set up).
    let features = |name: &str| cri::RuntimeHandlerFeatures {
        recursive_read_only_mounts: host.recursive_read_only_mounts,
        user_namespaces: host.idmapped_mounts
            && d.pods.runtime(name).is_ok_and(|r| r.user_namespaces()),
    };
    // kubelet looks a pod without a RuntimeClass up under "": the default handler is listed under that
    // name too, first, as CRI-O and containerd do.
    let default = &config.runtime.default_runtime;
    let runtime_handlers = std::iter::once("")
        .filter(|_| config.runtime.runtimes.contains_key(default))
        .chain(config.runtime.runtimes.keys().map(String::as_str))
        .map(|name| cri::RuntimeHandler {
            name: name.to_string(),
            features: Some(features(name)),
        })
        .collect();
    Ok(Response::new(cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime_ready, network_ready],
        }),
        info: Default::default(),
        runtime_handlers,
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true,
            // Pods with their own user namespace are refused at RunPodSandbox, on any network.
            user_namespaces_host_network: false,
        }),
    }))
}

pub(super) async fn runtime_config(
    d: &Arc<Daemon>,
    _req: Request<cri::RuntimeConfigRequest>,
) -> Res<cri::RuntimeConfigResponse> {
    let driver = match d.config.load().runtime.cgroup_manager {
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
    };
    Ok(Response::new(cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }))
}

pub(super) async fn update_runtime_config(
    _d: &Arc<Daemon>,
    _req: Request<cri::UpdateRuntimeConfigRequest>,
) -> Res<cri::UpdateRuntimeConfigResponse> {
    // kubelet sends the pod CIDR here; CNI's own config decides addresses, so there is
    // nothing to apply.
    Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
}
