//! The daemon's error type and the ONE place errors become gRPC status codes.
//!
//! Every room has its own small error enum; this wraps them and decides, variant by variant,
//! which code a CRI client sees. The message is the room error's own text (it names the id,
//! path or reference that was wrong).

use crate::container::lifecycle::ContainerError;
use crate::image::ImageError;
use crate::monitor::attach::AttachError;
use crate::monitor::MonitorError;
use crate::network::NetworkError;
use crate::oci::apparmor::AppArmorError;
use crate::oci::cgroups::CgroupError;
use crate::oci::OciError;
use crate::sandbox::lifecycle::SandboxError;
use crate::sandbox::namespaces::NamespaceError;
use crate::spec::SpecError;
use crate::state::StateError;
use crate::systemd::SystemdError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Nri(#[from] crate::nri::NriError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `e` says the file system is full: kubelet (and a person) then sees
/// ResourceExhausted rather than a generic failure, and the image garbage collector has a reason
/// to run.
fn disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull
}

/// The code of a room error that wraps an OS error: ResourceExhausted for a full disk,
/// `otherwise` for the rest.
fn io_code(e: &std::io::Error, otherwise: Code) -> Code {
    if disk_full(e) {
        Code::ResourceExhausted
    } else {
        otherwise
    }
}

// Every mapping below names each variant: a new variant does not compile until someone decides
// which code kubelet sees for it. Timeouts are DeadlineExceeded, so kubelet reads them as "took
// too long" and retries, not as a failure of unknown kind.

fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::InvalidReference { .. } => Code::InvalidArgument,
        ImageError::NotFound { .. } => Code::NotFound,
        ImageError::Unpack { source, .. } | ImageError::Io { source, .. } => {
            io_code(source, Code::Unknown)
        }
        ImageError::Registry { .. }
        | ImageError::UnsupportedManifest { .. }
        | ImageError::NoMatchingPlatform { .. }
        | ImageError::DigestMismatch { .. }
        | ImageError::SizeMismatch { .. }
        | ImageError::Malformed { .. }
        | ImageError::UnsafeEntry { .. }
        | ImageError::Mount { .. } => Code::Unknown,
    }
}

fn spec_code(e: &SpecError) -> Code {
    match e {
        SpecError::Invalid { .. } => Code::InvalidArgument,
        SpecError::Io { source, .. } => io_code(source, Code::Unknown),
        SpecError::Build(_) => Code::Unknown,
    }
}

/// A profile that is not loaded (or AppArmor off) is the host's state, not a bad request:
/// the same request succeeds once the operator loads the profile.
fn apparmor_code(e: &AppArmorError) -> Code {
    match e {
        AppArmorError::NotLoaded { .. } | AppArmorError::Disabled { .. } => {
            Code::FailedPrecondition
        }
        AppArmorError::Io { source, .. } => io_code(source, Code::Unknown),
        AppArmorError::Load { .. } => Code::Unknown,
    }
}

/// Records that cannot be read or written are the daemon's own trouble: Internal.
fn state_code(e: &StateError) -> Code {
    match e {
        StateError::Ambiguous { .. } => Code::InvalidArgument,
        StateError::Io { source, .. } => io_code(source, Code::Internal),
        StateError::Corrupt { .. } | StateError::Version { .. } => Code::Internal,
    }
}

fn network_code(e: &NetworkError) -> Code {
    match e {
        NetworkError::NotReady { .. } => Code::FailedPrecondition,
        NetworkError::Timeout { .. } => Code::DeadlineExceeded,
        NetworkError::Io { source, .. } => io_code(source, Code::Unknown),
        NetworkError::Plugin { .. } | NetworkError::Config { .. } => Code::Unknown,
    }
}

fn oci_code(e: &OciError) -> Code {
    match e {
        OciError::Timeout { .. } => Code::DeadlineExceeded,
        OciError::Spawn { source, .. } => io_code(source, Code::Unknown),
        OciError::Failed { .. } => Code::Unknown,
    }
}

fn monitor_code(e: &MonitorError) -> Code {
    match e {
        MonitorError::Timeout { .. } | MonitorError::SignalTimeout { .. } => Code::DeadlineExceeded,
        MonitorError::Signal { source, .. } => attach_code(source),
        MonitorError::Spawn { source, .. }
        | MonitorError::ReadExit { source, .. }
        | MonitorError::Watch { source, .. }
        | MonitorError::Sync { source, .. }
        | MonitorError::HandleFile { source, .. } => io_code(source, Code::Unknown),
        MonitorError::Runtime { .. }
        | MonitorError::Protocol { .. }
        | MonitorError::ParseExit { .. } => Code::Unknown,
    }
}

fn attach_code(e: &AttachError) -> Code {
    match e {
        AttachError::Connect { source, .. } | AttachError::Io(source) => {
            io_code(source, Code::Unknown)
        }
        AttachError::Protocol(_) | AttachError::Refused(_) => Code::Unknown,
    }
}

fn namespace_code(e: &NamespaceError) -> Code {
    match e {
        NamespaceError::Io { source, .. } => io_code(source, Code::Unknown),
        NamespaceError::Pin { .. } | NamespaceError::Thread(_) => Code::Unknown,
    }
}

fn cgroup_code(e: &CgroupError) -> Code {
    match e {
        CgroupError::Io { source, .. } => io_code(source, Code::Unknown),
        CgroupError::Path(_) => Code::Unknown,
    }
}

/// systemd not moving a process into its unit in time is a timeout like the runtime's.
fn systemd_code(e: &SystemdError) -> Code {
    match e {
        SystemdError::NotMoved { .. } => Code::DeadlineExceeded,
        SystemdError::Connect(_) | SystemdError::Call { .. } => Code::Unknown,
    }
}

fn sandbox_code(e: &SandboxError) -> Code {
    match e {
        SandboxError::Invalid { .. } => Code::InvalidArgument,
        SandboxError::NotFound(_) => Code::NotFound,
        SandboxError::NotReady { .. } => Code::FailedPrecondition,
        SandboxError::Unsupported { .. } => Code::FailedPrecondition,
        SandboxError::State(e) => state_code(e),
        SandboxError::Namespace(e) => namespace_code(e),
        SandboxError::Network(e) => network_code(e),
        SandboxError::Image(e) => image_code(e),
        SandboxError::Spec(e) => spec_code(e),
        SandboxError::AppArmor(e) => apparmor_code(e),
        SandboxError::Monitor(e) => monitor_code(e),
        SandboxError::Oci(e) => oci_code(e),
        SandboxError::Cgroup(e) => cgroup_code(e),
        SandboxError::Systemd(e) => systemd_code(e),
        SandboxError::Io { source, .. } => io_code(source, Code::Unknown),
        SandboxError::Refused { .. } => Code::Unknown,
    }
}

fn container_code(e: &ContainerError) -> Code {
    match e {
        ContainerError::Invalid { .. } => Code::InvalidArgument,
        ContainerError::NotFound(_) | ContainerError::ImageNotFound(_) => Code::NotFound,
        ContainerError::WrongState { .. } => Code::FailedPrecondition,
        ContainerError::KillTimeout { .. } => Code::DeadlineExceeded,
        ContainerError::Sandbox(e) => sandbox_code(e),
        ContainerError::State(e) => state_code(e),
        ContainerError::Image(e) => image_code(e),
        ContainerError::Spec(e) => spec_code(e),
        ContainerError::AppArmor(e) => apparmor_code(e),
        ContainerError::Monitor(e) => monitor_code(e),
        ContainerError::Oci(e) => oci_code(e),
        ContainerError::Attach { source, .. } => attach_code(source),
        ContainerError::Io { source, .. } => io_code(source, Code::Unknown),
        ContainerError::Refused { .. } => Code::Unknown,
    }
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Sandbox(e) => sandbox_code(e),
            Error::Container(e) => container_code(e),
            Error::Image(e) => image_code(e),
            Error::State(e) => state_code(e),
            Error::Nri(e) => nri_code(e),
        }
    }
}

fn nri_code(e: &crate::nri::NriError) -> Code {
    use crate::nri::NriError;
    match e {
        NriError::Io { source, .. } => io_code(source, Code::Unknown),
        NriError::Plugin { .. } | NriError::Conflict(_) => Code::Unknown,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_variant() {
        let s: Status = Error::from(SandboxError::NotFound("abc".into())).into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("abc"));
        let s: Status = Error::from(ContainerError::Sandbox(SandboxError::Invalid {
            field: "metadata".into(),
            reason: "missing".into(),
        }))
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let s: Status = Error::from(ImageError::NotFound {
            reference: "x".into(),
            detail: "y".into(),
        })
        .into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = Error::from(ContainerError::WrongState {
            id: "c".into(),
            reason: "running".into(),
        })
        .into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = Error::from(ContainerError::AppArmor(AppArmorError::NotLoaded {
            name: "k8s-nginx".into(),
        }))
        .into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("k8s-nginx"), "{s:?}");
    }

    #[test]
    fn a_full_image_disk_is_resource_exhausted() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let s: Status = Error::from(ImageError::Unpack {
            layer: "sha256:ab".into(),
            entry: "big".into(),
            source: full,
        })
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("No space left on device"), "{s:?}");
        let s: Status = Error::from(ImageError::Io {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        })
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s: Status = Error::from(ImageError::Io {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        })
        .into();
        assert_eq!(s.code(), Code::Unknown);
    }

    fn io(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }

    /// The disk-full check reads the OS error, never its text: a message that merely quotes
    /// "No space left on device" is no full disk, and a context-wrapped ENOSPC still is.
    #[test]
    fn a_full_disk_is_recognised_by_its_os_error() {
        let unpack = |source| {
            Error::from(ImageError::Unpack {
                layer: "sha256:ab".into(),
                entry: "big".into(),
                source,
            })
            .code()
        };
        let quoted = std::io::Error::other(io(libc::ENOSPC).to_string());
        assert_eq!(unpack(quoted), Code::Unknown);
        let wrapped = std::io::Error::new(io(libc::ENOSPC).kind(), "xattr user.a: full");
        assert_eq!(unpack(wrapped), Code::ResourceExhausted);
        let state = Error::from(StateError::Io {
            path: "/x".into(),
            source: io(libc::ENOSPC),
        });
        assert_eq!(state.code(), Code::ResourceExhausted);
    }

    /// One row per variant family: the room error, and the code kubelet gets for it.
    #[test]
    fn every_variant_family_has_its_code() {
        use std::time::Duration;
        let timeout = || MonitorError::Timeout {
            id: "c".into(),
            timeout: Duration::from_secs(240),
        };
        let oci_timeout = || OciError::Timeout {
            runtime: "runc".into(),
            verb: "kill",
            id: "c".into(),
            secs: 60,
        };
        let rows: Vec<(Error, Code)> = vec![
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            // Image.
            (
                ImageError::InvalidReference {
                    reference: "A".into(),
                    reason: "upper case".into(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                ImageError::Registry {
                    endpoint: "r".into(),
                    reason: "503".into(),
                }
                .into(),
                Code::Unknown,
            ),
            (
                ImageError::Mount {
                    path: "/m".into(),
                    reason: "busy".into(),
                }
                .into(),
                Code::Unknown,
            ),
            // State.
            (
                StateError::Ambiguous { prefix: "a".into() }.into(),
                Code::InvalidArgument,
            ),
            (
                StateError::Io {
                    path: "/r".into(),
                    source: io(libc::EIO),
                }
                .into(),
                Code::Internal,
            ),
            // Spec, inside a container.
            (
                ContainerError::Spec(SpecError::invalid("linux.resources", "negative")).into(),
                Code::InvalidArgument,
            ),
            (
                ContainerError::Spec(SpecError::Build("bad".into())).into(),
                Code::Unknown,
            ),
            // AppArmor.
            (
                SandboxError::AppArmor(AppArmorError::Disabled { name: "p".into() }).into(),
                Code::FailedPrecondition,
            ),
            (
                SandboxError::AppArmor(AppArmorError::Load {
                    name: "p".into(),
                    reason: "syntax".into(),
                })
                .into(),
                Code::Unknown,
            ),
            // Network.
            (
                SandboxError::Network(NetworkError::NotReady {
                    reason: "no conflist".into(),
                })
                .into(),
                Code::FailedPrecondition,
            ),
            (
                SandboxError::Network(NetworkError::Plugin {
                    plugin: "bridge".into(),
                    command: "ADD".into(),
                    message: "no".into(),
                })
                .into(),
                Code::Unknown,
            ),
            (
                SandboxError::Network(NetworkError::Timeout {
                    plugin: "bridge".into(),
                    command: "ADD".into(),
                })
                .into(),
                Code::DeadlineExceeded,
            ),
            // OCI runtime.
            (
                SandboxError::Oci(OciError::Failed {
                    runtime: "runc".into(),
                    verb: "create",
                    id: "p".into(),
                    message: "exit 1".into(),
                })
                .into(),
                Code::Unknown,
            ),
            (
                SandboxError::Oci(oci_timeout()).into(),
                Code::DeadlineExceeded,
            ),
            (
                ContainerError::Oci(oci_timeout()).into(),
                Code::DeadlineExceeded,
            ),
            // Monitor.
            (
                SandboxError::Monitor(timeout()).into(),
                Code::DeadlineExceeded,
            ),
            (
                ContainerError::Monitor(timeout()).into(),
                Code::DeadlineExceeded,
            ),
            (
                ContainerError::Monitor(MonitorError::Runtime {
                    id: "c".into(),
                    message: "exec failed".into(),
                })
                .into(),
                Code::Unknown,
            ),
            (
                ContainerError::Monitor(MonitorError::Spawn {
                    id: "c".into(),
                    path: "/m".into(),
                    source: io(libc::ENOSPC),
                })
                .into(),
                Code::ResourceExhausted,
            ),
            // Container lifecycle.
            (
                ContainerError::KillTimeout {
                    id: "c".into(),
                    waited: Duration::from_secs(10),
                }
                .into(),
                Code::DeadlineExceeded,
            ),
            (
                ContainerError::ImageNotFound("busybox".into()).into(),
                Code::NotFound,
            ),
            (
                ContainerError::Attach {
                    id: "c".into(),
                    source: AttachError::Refused("no".into()),
                }
                .into(),
                Code::Unknown,
            ),
            // Pod plumbing.
            (
                SandboxError::Namespace(NamespaceError::Thread("gone".into())).into(),
                Code::Unknown,
            ),
            (
                SandboxError::Cgroup(CgroupError::Path("x".into())).into(),
                Code::Unknown,
            ),
            (
                SandboxError::Systemd(SystemdError::NotMoved {
                    pid: 1,
                    unit: "u.scope".into(),
                    waited: Duration::from_secs(5),
                })
                .into(),
                Code::DeadlineExceeded,
            ),
            (
                SandboxError::NotReady { id: "p".into() }.into(),
                Code::FailedPrecondition,
            ),
        ];
        for (e, code) in rows {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{text}");
            assert_eq!(
                s.message(),
                text,
                "the message is the room error's own text"
            );
        }
    }

    #[test]
    fn a_container_that_outlives_sigkill_is_a_deadline_not_a_state() {
        let s: Status = Error::from(ContainerError::KillTimeout {
            id: "c1".into(),
            waited: std::time::Duration::from_secs(10),
        })
        .into();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert_eq!(s.message(), "container c1: did not exit after SIGKILL");
    }
}
