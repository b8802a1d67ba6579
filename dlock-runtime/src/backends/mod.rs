//! The built-in backends, one module each.

#[cfg(any(feature = "s3", feature = "dynamodb"))]
mod aws;

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "file")]
pub mod file;
pub mod from_url;
#[cfg(feature = "gcs")]
pub mod gcs;
pub mod memory;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "mongodb")]
pub mod mongodb;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "s3", feature = "gcs"))]
mod object_record;
#[cfg(any(
    feature = "s3",
    feature = "gcs",
    feature = "dynamodb",
    feature = "mongodb"
))]
mod protocol;
#[cfg(feature = "s3")]
pub mod s3;
