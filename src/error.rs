//! The daemon's error type and the ONE place errors become gRPC status codes.
//!
//! Every room has its own small error enum; this wraps them and decides, variant by variant,
//! which code a CRI client sees. The message is the room error's own text (it names the id,
//! path or reference that was wrong).

use crate::container::lifecycle::ContainerError;
use crate::image::ImageError;
use crate::network::NetworkError;
use crate::oci::apparmor::AppArmorError;
use crate::sandbox::lifecycle::SandboxError;
use crate::spec::SpecError;
use crate::state::StateError;
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::InvalidReference { .. } => Code::InvalidArgument,
        ImageError::NotFound { .. } => Code::NotFound,
        e if image_disk_full(e) => Code::ResourceExhausted,
        _ => Code::Unknown,
    }
}

/// Whether the image store's file system is full: kubelet (and a person) then sees
/// ResourceExhausted rather than Unknown. The unpacker keeps only the OS error's text, so its
/// reason is matched against that text (found by the e2e disk-full test).
fn image_disk_full(e: &ImageError) -> bool {
    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
    match e {
        ImageError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
        ImageError::Unpack { reason, .. } => reason.contains(&enospc.to_string()),
        _ => false,
    }
}

fn spec_code(e: &SpecError) -> Code {
    match e {
        SpecError::Invalid { .. } => Code::InvalidArgument,
        _ => Code::Unknown,
    }
}

/// A profile that is not loaded (or AppArmor off) is the host's state, not a bad request:
/// the same request succeeds once the operator loads the profile.
fn apparmor_code(e: &AppArmorError) -> Code {
    match e {
        AppArmorError::NotLoaded { .. } | AppArmorError::Disabled { .. } => {
            Code::FailedPrecondition
        }
        _ => Code::Unknown,
    }
}

fn state_code(e: &StateError) -> Code {
    match e {
        StateError::Ambiguous { .. } => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

fn sandbox_code(e: &SandboxError) -> Code {
    match e {
        SandboxError::Invalid { .. } => Code::InvalidArgument,
        SandboxError::NotFound(_) => Code::NotFound,
        SandboxError::NotReady { .. } => Code::FailedPrecondition,
        SandboxError::State(e) => state_code(e),
        SandboxError::Image(e) => image_code(e),
        SandboxError::Spec(e) => spec_code(e),
        SandboxError::AppArmor(e) => apparmor_code(e),
        SandboxError::Network(NetworkError::NotReady { .. }) => Code::FailedPrecondition,
        _ => Code::Unknown,
    }
}

fn container_code(e: &ContainerError) -> Code {
    match e {
        ContainerError::Invalid { .. } => Code::InvalidArgument,
        ContainerError::NotFound(_) | ContainerError::ImageNotFound(_) => Code::NotFound,
        ContainerError::WrongState { .. } => Code::FailedPrecondition,
        ContainerError::Sandbox(e) => sandbox_code(e),
        ContainerError::State(e) => state_code(e),
        ContainerError::Image(e) => image_code(e),
        ContainerError::Spec(e) => spec_code(e),
        ContainerError::AppArmor(e) => apparmor_code(e),
        _ => Code::Unknown,
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
        }
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
            reason: full.to_string(),
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
}
