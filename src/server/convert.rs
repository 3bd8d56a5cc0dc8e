//! ferrio's records -> CRI messages. Cheap: List RPCs call these for every object every second.

use crate::container::lifecycle::{Container, ContainerState};
use crate::cri::v1 as cri;
use crate::image::ImageInfo;
use crate::sandbox::lifecycle::{Sandbox, SandboxMeta, SandboxState};
use std::collections::{BTreeMap, HashMap};

pub fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Every key/value of `selector` is present in `labels`.
pub fn matches(labels: &BTreeMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod's config as CreateContainer's spec translation reads it, rebuilt from the record for
/// clients that send none with the request (kubelet always does).
pub fn pod_config(m: &SandboxMeta) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: m.name.clone(),
            uid: m.uid.clone(),
            namespace: m.namespace.clone(),
            attempt: m.attempt,
        }),
        hostname: m.request.requested_hostname.clone(),
        log_directory: m.log_directory.clone(),
        labels: map(&m.labels),
        annotations: map(&m.annotations),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(super::records::namespace_modes_to_cri(
                    &m.request.namespace_modes,
                )),
                privileged: m.request.privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn sandbox_state(s: SandboxState) -> cri::PodSandboxState {
    match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::Creating | SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub fn sandbox_metadata(s: &Sandbox) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: s.meta.name.clone(),
        uid: s.meta.uid.clone(),
        namespace: s.meta.namespace.clone(),
        attempt: s.meta.attempt,
    }
}

pub fn pod_sandbox(s: &Sandbox) -> cri::PodSandbox {
    cri::PodSandbox {
        id: s.id.clone(),
        metadata: Some(sandbox_metadata(s)),
        state: sandbox_state(s.peek(|st| st.state)) as i32,
        created_at: s.meta.created_at,
        labels: map(&s.meta.labels),
        annotations: map(&s.meta.annotations),
        runtime_handler: s.meta.runtime_handler.clone(),
    }
}

/// The namespace modes the pod was created with.
fn namespace_options(s: &Sandbox) -> cri::NamespaceOption {
    super::records::namespace_modes_to_cri(&s.meta.request.namespace_modes)
}

pub fn pod_sandbox_status(s: &Sandbox) -> cri::PodSandboxStatus {
    let st = s.status();
    let mut ips = st.ips.iter();
    let network = if s.meta.host_network {
        None
    } else {
        Some(cri::PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        })
    };
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: Some(sandbox_metadata(s)),
        state: sandbox_state(st.state) as i32,
        created_at: s.meta.created_at,
        network,
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(namespace_options(s)),
            }),
        }),
        labels: map(&s.meta.labels),
        annotations: map(&s.meta.annotations),
        runtime_handler: s.meta.runtime_handler.clone(),
    }
}

pub fn container_state(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Creating => cri::ContainerState::ContainerUnknown,
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
    }
}

fn container_metadata(c: &Container) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.meta.name.clone(),
        attempt: c.meta.attempt,
    }
}

fn image_spec(c: &Container) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.meta.image_ref.clone(),
        ..Default::default()
    }
}

pub fn container(c: &Container) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.meta.sandbox_id.clone(),
        metadata: Some(container_metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.meta.image_id.clone(),
        state: container_state(c.peek(|st| st.state())) as i32,
        created_at: c.meta.created_at,
        labels: map(&c.meta.labels),
        annotations: map(&c.meta.annotations),
        image_id: c.meta.image_id.clone(),
    }
}

pub fn container_status(c: &Container) -> cri::ContainerStatus {
    let st = c.status();
    // Image volumes report the image they mount by id (`image_ref`, as PullImage answers), in
    // the order the record keeps them.
    let mut image_ids = c.meta.image_volumes.iter();
    let mounts = c
        .meta
        .request
        .mounts
        .iter()
        .map(|m| {
            let id = m
                .image
                .as_ref()
                .filter(|i| !i.image.is_empty())
                .and_then(|_| image_ids.next());
            super::records::mount_to_cri(m, id.map(String::as_str))
        })
        .collect();
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(container_metadata(c)),
        state: container_state(st.state()) as i32,
        created_at: c.meta.created_at,
        started_at: st.started_at,
        finished_at: st.finished_at,
        exit_code: st.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.meta.image_id.clone(),
        reason: st.reason().to_string(),
        message: st.message.clone(),
        labels: map(&c.meta.labels),
        annotations: map(&c.meta.annotations),
        mounts,
        log_path: c
            .meta
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: super::resources::container_resources(c),
        image_id: c.meta.image_id.clone(),
        user: None,
        stop_signal: super::records::cri_signal(c.meta.stop_signal) as i32,
    }
}

pub fn image(i: &ImageInfo, pinned: bool) -> cri::Image {
    let user = i.config.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned,
    }
}
