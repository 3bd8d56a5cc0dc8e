//! The image room's error type: every variant names the reference, blob, entry or path at fault.

use std::path::PathBuf;

/// Errors of pulling, storing, unpacking and mounting images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference cannot be parsed (maps to gRPC InvalidArgument).
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// No mirror nor registry has the image, or the store does not hold it (maps to NotFound).
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    /// A registry answered with an error or could not be reached.
    #[error("registry {endpoint}: {reason}")]
    Registry { endpoint: String, reason: String },
    /// The manifest is of a kind ferrio refuses (Docker schema 1) or does not know.
    #[error("image {reference}: unsupported manifest {media_type}: {reason}")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
        reason: String,
    },
    /// An index/manifest list has no entry for this node's platform.
    #[error("image {reference}: no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    /// Content did not hash to the digest it was fetched by.
    #[error("blob {blob}: digest mismatch (got {actual})")]
    DigestMismatch { blob: String, actual: String },
    /// Content was not of the size its descriptor says.
    #[error("blob {blob}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        blob: String,
        expected: u64,
        actual: u64,
    },
    /// A manifest or config blob is not valid JSON of the expected shape.
    #[error("blob {blob}: malformed {what}: {reason}")]
    Malformed {
        blob: String,
        what: String,
        reason: String,
    },
    /// A layer entry tried to leave its layer directory or is otherwise unsafe.
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    /// A layer could not be unpacked; the OS error is kept (a full disk is ENOSPC).
    #[error("layer {layer}: unpack failed at {entry:?}: {source}")]
    Unpack {
        layer: String,
        entry: String,
        #[source]
        source: std::io::Error,
    },
    /// A mount or unmount failed.
    #[error("mount {path}: {reason}")]
    Mount { path: PathBuf, reason: String },
    /// Local file-system trouble.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `map_err` helper for I/O results: `.map_err(io_at(&path))`.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::io(path, e)
}
