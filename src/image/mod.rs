//! Images: reference parsing, the registry client with mirrors and auth, the content-addressed
//! store, layer unpacking and overlay mounts for container root filesystems.
//!
//! Owns everything under `<root>/images` and the overlay mounts it makes. Never imports `server`
//! nor CRI proto types.

mod error;
pub mod manifest;
pub mod overlay;
pub mod reference;
mod registry;
mod store;
pub mod types;
pub mod unpack;
pub mod usage;

pub use error::ImageError;
pub use reference::Reference;
pub use registry::RegistryAuth;
pub use store::{ImageStore, Removed};
pub use types::{ImageConfig, ImageInfo};
pub use usage::FsUsage;
