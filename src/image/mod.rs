//! Images: reference parsing, the registry client with mirrors and auth, the content-addressed
//! store, layer unpacking and overlay mounts for container root filesystems.
//!
//! Owns everything under `<root>/images` and the overlay mounts it makes. Never imports `server`
//! nor CRI proto types.

pub mod types;
pub use types::{ImageConfig, ImageInfo};
