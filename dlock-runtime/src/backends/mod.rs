//! The built-in backends, one module each.

#[cfg(any(feature = "s3", feature = "dynamodb"))]
mod aws;

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "file")]
pub mod file;
pub mod from_url;
#[cfg(feature = "gcs")]
pub mod gcs;
pub mod memory;
#[cfg(feature = "mongodb")]
pub mod mongodb;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod notify;
#[cfg(any(feature = "s3", feature = "gcs"))]
mod object_record;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(
    feature = "s3",
    feature = "gcs",
    feature = "dynamodb",
    feature = "mongodb"
))]
mod protocol;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "s3")]
pub mod s3;
