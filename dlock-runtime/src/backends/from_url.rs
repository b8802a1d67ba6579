//! Backends from URLs, for configuration files, flags and environment variables.

use crate::{Backend, Error};
use std::sync::Arc;

/// Builds the backend a URL describes.
///
/// | URL | backend |
/// |---|---|
/// | `memory://` | a new [`MemoryBackend`](crate::MemoryBackend) |
/// | `file:///var/lock/app` | a private [`FileBackend`](crate::FileBackend) in that directory (feature `file`) |
/// | `file:///var/lock/app?shared=true` | a [`FileBackend`](crate::FileBackend) shared by every user |
/// | `s3://bucket/prefix` | an `S3Backend` (feature `s3`) |
/// | `gs://bucket/prefix` | a `GcsBackend` (feature `gcs`) |
/// | `dynamodb://table` | a `DynamoDbBackend` (feature `dynamodb`) |
/// | `mongodb://host/db?collection=locks` | a `MongoBackend` (feature `mongodb`) |
/// | `postgres://user@host/db?table=locks` | a `PostgresBackend` (feature `postgres`) |
/// | `redis://host:6379/?prefix=dlock:` | a `RedisBackend` (feature `redis`) |
/// | `etcd://host:2379/prefix` | an `EtcdBackend` (feature `etcd`) |
///
/// ```
/// let backend = dlock_runtime::backend_from_url("memory://")?;
/// assert_eq!(backend.kind(), "memory");
/// let err = dlock_runtime::backend_from_url("ftp://localhost").unwrap_err();
/// assert!(err.to_string().contains("supported: file://, memory://"), "{err}");
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
pub fn backend_from_url(url: &str) -> Result<Arc<dyn Backend>, Error> {
    let config = |message: String| Error::Config { message };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(config(format!(
            "`{url}` is not a backend URL; write it like `file:///var/lock/app` or `memory://`"
        )));
    };
    match scheme {
        "memory" if rest.is_empty() => Ok(Arc::new(crate::MemoryBackend::new())),
        "memory" => Err(config(format!(
            "`{url}`: a memory URL takes nothing after `memory://`"
        ))),
        "file" => file(url, rest),
        #[cfg(feature = "s3")]
        "s3" => Ok(Arc::new(crate::S3Backend::from_url(url)?)),
        #[cfg(feature = "dynamodb")]
        "dynamodb" => Ok(Arc::new(crate::DynamoDbBackend::from_url(url)?)),
        #[cfg(feature = "mongodb")]
        "mongodb" | "mongodb+srv" => Ok(Arc::new(crate::MongoBackend::from_url(url)?)),
        #[cfg(feature = "gcs")]
        "gs" => Ok(Arc::new(crate::GcsBackend::from_url(url)?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(crate::PostgresBackend::from_url(url)?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(crate::RedisBackend::from_url(url)?)),
        #[cfg(feature = "etcd")]
        "etcd" | "etcds" => Ok(Arc::new(crate::EtcdBackend::from_url(url)?)),
        _ if [
            "gs",
            "s3",
            "dynamodb",
            "mongodb",
            "mongodb+srv",
            "postgres",
            "postgresql",
            "redis",
            "rediss",
            "etcd",
            "etcds",
        ]
        .contains(&scheme) =>
        {
            Err(config(format!(
                "`{url}`: the `{scheme}` backend is not compiled in; enable dlock-runtime's `{}` feature (supported here: {})",
                feature_of(scheme),
                supported()
            )))
        }
        _ => Err(config(format!(
            "`{url}`: unknown backend scheme `{scheme}`; supported: {}",
            supported()
        ))),
    }
}

/// The cargo feature of a URL scheme.
fn feature_of(scheme: &str) -> &str {
    match scheme {
        "gs" => "gcs",
        "mongodb+srv" => "mongodb",
        "postgresql" => "postgres",
        "rediss" => "redis",
        "etcds" => "etcd",
        other => other,
    }
}

/// The URL schemes compiled in, for messages.
fn supported() -> String {
    let schemes: [(&str, bool); 9] = [
        ("file://", cfg!(feature = "file")),
        ("memory://", true),
        ("s3://", cfg!(feature = "s3")),
        ("gs://", cfg!(feature = "gcs")),
        ("dynamodb://", cfg!(feature = "dynamodb")),
        ("mongodb://", cfg!(feature = "mongodb")),
        ("postgres://", cfg!(feature = "postgres")),
        ("redis://", cfg!(feature = "redis")),
        ("etcd://", cfg!(feature = "etcd")),
    ];
    let on: Vec<&str> = schemes
        .iter()
        .filter(|(_, on)| *on)
        .map(|(scheme, _)| *scheme)
        .collect();
    on.join(", ")
}

#[cfg(feature = "file")]
fn file(url: &str, rest: &str) -> Result<Arc<dyn Backend>, Error> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let shared = match query {
        "" | "shared=false" => false,
        "shared" | "shared=true" => true,
        other => {
            return Err(Error::Config {
                message: format!(
                    "`{url}`: unknown option `{other}`; a file URL takes only `?shared=true`"
                ),
            });
        }
    };
    if !path.starts_with('/') {
        return Err(Error::Config {
            message: format!(
                "`{url}`: a file URL needs an absolute path after `file://`, like `file:///var/lock/app`"
            ),
        });
    }
    Ok(Arc::new(if shared {
        crate::FileBackend::shared(path)?
    } else {
        crate::FileBackend::new(path)?
    }))
}

#[cfg(not(feature = "file"))]
fn file(url: &str, _rest: &str) -> Result<Arc<dyn Backend>, Error> {
    Err(Error::Config {
        message: format!(
            "`{url}`: the file backend is not compiled in; enable the `file` feature of dlock-runtime"
        ),
    })
}
