//! Why an OCI spec could not be produced.

use std::path::PathBuf;

/// Why an OCI spec could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The CRI request asks for something invalid or impossible (maps to InvalidArgument).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The OCI types refused what we built (a bug on our side).
    #[error("building the oci spec: {0}")]
    Build(String),
    /// A file the spec depends on could not be read or created.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SpecError {
    /// Shorthand for the InvalidArgument case.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<oci_spec::OciSpecError> for SpecError {
    fn from(e: oci_spec::OciSpecError) -> Self {
        SpecError::Build(e.to_string())
    }
}
