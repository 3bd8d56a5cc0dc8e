//! Annotations: the request's own, plus the keys tools know from containerd (container type,
//! sandbox id/name/namespace/uid, container name, image, pod log directory).

use std::collections::HashMap;

use oci_spec::runtime::Spec;

use super::{Input, SpecError};

/// Annotation keys ferrio writes into every spec (containerd's names, which tools know).
pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANN_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const ANN_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const ANN_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const ANN_SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
pub const ANN_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const ANN_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// Which kind of spec this is (the container-type annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpecKind {
    /// The pod's pause container.
    #[default]
    Sandbox,
    Container,
}

/// The pod's identity as kubelet names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// What the annotations say.
#[derive(Debug, Clone, Default)]
pub struct AnnotationsInput {
    pub kind: SpecKind,
    /// The request's own annotations, overridden by ferrio's keys.
    pub request: HashMap<String, String>,
    pub pod: Option<PodIdentity>,
    pub container_name: Option<String>,
    pub image_name: Option<String>,
    /// The pod's log directory; empty = none.
    pub log_directory: String,
}

/// crun's annotation naming the cgroup it makes below a systemd scope for the processes; empty:
/// none, the processes stay in the scope itself.
pub const ANN_CRUN_SYSTEMD_SUBGROUP: &str = "run.oci.systemd.subgroup";

/// Step: the spec's annotations.
pub fn annotations(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let mut a = annotation_map(&input.annotations);
    if is_systemd_cgroups_path(&input.cgroups_path) {
        // On cgroup v2 crun otherwise moves the processes into `<scope>/container`, while
        // kubelet, stats, updates and OOM reports look at the scope (runc ignores the key).
        a.entry(ANN_CRUN_SYSTEMD_SUBGROUP.into()).or_default();
    }
    spec.set_annotations(Some(a));
    Ok(())
}

/// A cgroups path for the runtime's systemd driver: `slice:prefix:name`.
fn is_systemd_cgroups_path(path: &str) -> bool {
    !path.starts_with('/') && path.split(':').count() == 3
}

/// The annotations a spec gets (what OCI hooks' `when.annotations` match, too).
pub fn annotation_map(req: &AnnotationsInput) -> HashMap<String, String> {
    let mut a = req.request.clone();
    let kind = match req.kind {
        SpecKind::Sandbox => "sandbox",
        SpecKind::Container => "container",
    };
    a.insert(ANN_CONTAINER_TYPE.into(), kind.into());
    if let Some(name) = &req.container_name {
        a.insert(ANN_CONTAINER_NAME.into(), name.clone());
    }
    if let Some(image) = &req.image_name {
        a.insert(ANN_IMAGE_NAME.into(), image.clone());
    }
    if let Some(pod) = &req.pod {
        a.insert(ANN_SANDBOX_NAME.into(), pod.name.clone());
        a.insert(ANN_SANDBOX_NAMESPACE.into(), pod.namespace.clone());
        a.insert(ANN_SANDBOX_UID.into(), pod.uid.clone());
    }
    if !req.log_directory.is_empty() {
        a.insert(ANN_SANDBOX_LOG_DIR.into(), req.log_directory.clone());
    }
    a
}

/// Records the sandbox id in a spec; the caller knows it, the translators do not.
pub fn set_sandbox_id(spec: &mut Spec, sandbox_id: &str) {
    let annotations = spec.annotations_mut().get_or_insert_with(HashMap::new);
    annotations.insert(ANN_SANDBOX_ID.to_string(), sandbox_id.to_string());
}
