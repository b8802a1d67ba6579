//! The built-in backends, one module each.

#[cfg(feature = "file")]
pub mod file;
pub mod from_url;
#[cfg(feature = "gcs")]
pub mod gcs;
pub mod memory;
#[cfg(any(feature = "s3", feature = "gcs"))]
mod object_record;
#[cfg(feature = "s3")]
pub mod s3;
