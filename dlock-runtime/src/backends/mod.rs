//! The built-in backends, one module each.

#[cfg(feature = "file")]
pub mod file;
pub mod from_url;
pub mod memory;
