//! Google Cloud Storage over the JSON API: the lock object is created with
//! `ifGenerationMatch=0`, renewed or taken over by rewriting it with
//! `ifGenerationMatch=<generation>`, and deleted with `ifGenerationMatch=<generation>`.
//!
//! Client crate: `gcloud-storage` (the former community `google-cloud-storage`). It speaks the
//! JSON API over HTTP, takes a custom endpoint and anonymous credentials, and sets
//! `ifGenerationMatch` on uploads and deletes. The official `google-cloud-storage` 1.x deletes
//! over gRPC (storage v2), which no local stand-in speaks, so its conditional delete could not
//! be tested here at all. Lock writes are always multipart uploads: the stand-in enforces
//! preconditions only on those, and GCS treats them the same as any other upload.
//!
//! Generation numbers are versions here, never fencing tokens: GCS does not document them as
//! increasing. Waiters poll with metadata reads, because GCS allows about one write per second
//! to one object.

use super::object_record;
use super::protocol::{Condition, ConditionalStore, Write};
use crate::backend::{Capabilities, Holder, Lease, Owner, Version};
use crate::{Error, LockName};
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::buckets::get::GetBucketRequest;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use std::fmt;
use tokio::sync::OnceCell;

const KIND: &str = "gcs";

/// Locks as objects in a GCS bucket, under a name prefix.
///
/// Build it with [`GcsBackend::builder`] (or [`GcsBackend::from_env`], or the URL
/// `gs://bucket/prefix`). Without an endpoint, credentials come from Application Default
/// Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's login, or the metadata server).
/// With `STORAGE_EMULATOR_HOST` set (or an endpoint given), requests go there, anonymously.
/// The first use checks that the bucket exists, so a wrong bucket fails at once.
///
/// IAM permissions needed: `storage.objects.create`, `storage.objects.get`,
/// `storage.objects.delete` on the bucket (roles/storage.objectUser covers them), and
/// `storage.buckets.get` for the start-up check.
///
/// ```no_run
/// use dlock_runtime::{GcsBackend, Registry};
///
/// let gcs = GcsBackend::builder()
///     .bucket("my-locks")
///     .prefix("deploys/")
///     .endpoint("http://127.0.0.1:4443") // a local stand-in; omit for Google Cloud
///     .build()?;
/// Registry::builder().backend("gcs", gcs).build()?.install().expect("once");
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
pub struct GcsBackend {
    settings: GcsBuilder,
    prefix: String,
    client: OnceCell<Client>,
}

impl fmt::Debug for GcsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsBackend")
            .field("bucket", &self.settings.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.settings.endpoint)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`GcsBackend`]; setters never fail, [`build`](GcsBuilder::build) checks.
///
/// ```
/// use dlock_runtime::GcsBackend;
///
/// let backend = GcsBackend::builder().bucket("my-locks").prefix("ci").build()?;
/// assert_eq!(backend.object_for(&"deploy/prod".parse()?), "ci/deploy%2Fprod");
/// assert!(GcsBackend::builder().build().is_err(), "a bucket is required");
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "call .build()"]
pub struct GcsBuilder {
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
}

impl GcsBuilder {
    /// The bucket (required).
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// A name prefix; lock objects are `PREFIX/ENCODED-NAME` and never leave it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A custom endpoint, used anonymously (a local stand-in such as fake-gcs-server).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<GcsBackend, Error> {
        object_record::check_bucket(KIND, &self.bucket, "gs", "DLOCK_GCS_BUCKET")?;
        let prefix = object_record::check_prefix(KIND, &self.prefix)?;
        Ok(GcsBackend {
            settings: self,
            prefix,
            client: OnceCell::new(),
        })
    }
}

impl GcsBackend {
    /// Settings to fill in.
    pub fn builder() -> GcsBuilder {
        GcsBuilder::default()
    }

    /// Settings from the environment: `DLOCK_GCS_BUCKET`, `DLOCK_GCS_PREFIX`, and
    /// `STORAGE_EMULATOR_HOST` (`host:port` or a URL) for a local stand-in.
    pub fn from_env() -> GcsBuilder {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let mut builder = GcsBackend::builder()
            .bucket(var("DLOCK_GCS_BUCKET"))
            .prefix(var("DLOCK_GCS_PREFIX"));
        let emulator = var("STORAGE_EMULATOR_HOST");
        if !emulator.is_empty() {
            let url = if emulator.contains("://") {
                emulator
            } else {
                format!("http://{emulator}")
            };
            builder = builder.endpoint(url);
        }
        builder
    }

    /// `gs://bucket/prefix`, with the rest from the environment.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let (bucket, prefix) = object_record::split_url(url, "gs");
        let mut builder = GcsBackend::from_env().bucket(bucket);
        if !prefix.is_empty() {
            builder = builder.prefix(prefix);
        }
        builder.build()
    }

    /// The object name of a lock.
    pub fn object_for(&self, name: &LockName) -> String {
        object_record::key(&self.prefix, name)
    }

    async fn client(&self) -> Result<&Client, Error> {
        self.client.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Client, Error> {
        // Every request is bounded here too (the runtime also bounds each call by its deadline).
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| {
                Error::permanent(KIND, format!("cannot build the HTTP client: {e}"), None)
            })?;
        let http = Some(reqwest_middleware::ClientBuilder::new(http).build());
        let config = match &self.settings.endpoint {
            Some(endpoint) => ClientConfig {
                storage_endpoint: endpoint.trim_end_matches('/').to_string(),
                http,
                ..ClientConfig::default()
            }
            .anonymous(),
            None => ClientConfig {
                http,
                ..ClientConfig::default()
            }
            .with_auth()
            .await
            .map_err(|e| {
                Error::permanent(
                    KIND,
                    format!(
                        "no Google Cloud credentials: {e}; set GOOGLE_APPLICATION_CREDENTIALS, run \
                         `gcloud auth application-default login`, or run on Google Cloud"
                    ),
                    Some(Box::new(e)),
                )
            })?,
        };
        let client = Client::new(config);
        let request = GetBucketRequest {
            bucket: self.settings.bucket.clone(),
            ..GetBucketRequest::default()
        };
        client
            .get_bucket(&request)
            .await
            .map_err(|e| self.error(Doing::CheckBucket, e))?;
        Ok(client)
    }

    fn error(&self, doing: Doing, e: GcsError) -> Error {
        let bucket = &self.settings.bucket;
        let (temporary, message) = match status(&e) {
            Some(404) if doing == Doing::CheckBucket => (
                false,
                format!(
                    "bucket `{bucket}` does not exist (or this endpoint does not have it); create it or fix the name"
                ),
            ),
            Some(401 | 403) => (
                false,
                format!(
                    "access denied to bucket `{bucket}` while {doing}; the credentials need storage.objects.create, \
                     .get and .delete on it (roles/storage.objectUser) and storage.buckets.get: {e}"
                ),
            ),
            Some(408 | 429 | 500..=599) => (true, format!("{doing}: {e}")),
            Some(_) => (false, format!("{doing}: {e}")),
            None if matches!(e, GcsError::TokenSource(_)) => {
                (false, format!("{doing}: {e}; check the credentials"))
            }
            None => (
                true,
                format!(
                    "cannot reach Cloud Storage{} while {doing}: {e}; check the endpoint (STORAGE_EMULATOR_HOST) and the network",
                    self.settings
                        .endpoint
                        .as_deref()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default()
                ),
            ),
        };
        Error::backend_failure(KIND, temporary, message, Some(Box::new(e)))
    }
}

/// What a request was doing, for error messages and for how its statuses are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Doing {
    CheckBucket,
    Write,
    Read,
    Delete,
    List,
}

impl fmt::Display for Doing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Doing::CheckBucket => "checking the bucket",
            Doing::Write => "writing the lock object",
            Doing::Read => "reading the lock object",
            Doing::Delete => "deleting the lock object",
            Doing::List => "listing lock objects",
        })
    }
}

/// The HTTP status of a failed request, where the server answered.
fn status(e: &GcsError) -> Option<u16> {
    match e {
        GcsError::Response(r) => Some(r.code),
        GcsError::HttpClient(e) | GcsError::RawResponse(e, _) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

/// A version as a GCS generation. Versions come from GCS itself, so anything else is a
/// version made up elsewhere (a caller's typo in a forced release): refused, not a lost lock.
fn generation(version: &Version) -> Result<i64, Error> {
    version.as_str().parse().map_err(|_| {
        Error::permanent(
            KIND,
            format!("`{version}` is not a GCS generation (a number); use the version `dlock status` shows"),
            None,
        )
    })
}

#[async_trait::async_trait]
impl ConditionalStore for GcsBackend {
    const KIND: &'static str = KIND;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            leases: true,
            poll_with_reads: true,
            ..Capabilities::default()
        }
    }

    fn location(&self, name: &LockName) -> String {
        format!("gs://{}/{}", self.settings.bucket, self.object_for(name))
    }

    async fn write(&self, lease: &Lease, condition: Condition<'_>) -> Result<Write, Error> {
        let expected = condition.expected();
        let client = self.client().await?;
        let request = UploadObjectRequest {
            bucket: self.settings.bucket.clone(),
            if_generation_match: Some(expected.map(generation).transpose()?.unwrap_or(0)),
            ..UploadObjectRequest::default()
        };
        let object = Object {
            name: self.object_for(&lease.name),
            content_type: Some("text/plain".into()),
            metadata: Some(object_record::metadata(lease)),
            ..Object::default()
        };
        let upload = UploadType::Multipart(Box::new(object));
        match client
            .upload_object(&request, object_record::body(lease), &upload)
            .await
        {
            Ok(object) => Ok(Write::Done {
                version: Version::new(object.generation.to_string()),
                fencing_token: None,
            }),
            // 412: the generation did not match. 404: a conditional target is gone.
            Err(e) if matches!(status(&e), Some(412 | 404)) => Ok(Write::Refused(None)),
            Err(e) => Err(self.error(Doing::Write, e)),
        }
    }

    async fn read(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        let client = self.client().await?;
        let request = GetObjectRequest {
            bucket: self.settings.bucket.clone(),
            object: self.object_for(name),
            ..GetObjectRequest::default()
        };
        match client.get_object(&request).await {
            Ok(object) => Ok(Some(holder_of(&object))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error(Doing::Read, e)),
        }
    }

    async fn delete(
        &self,
        name: &LockName,
        version: &Version,
        _owner: Option<&Owner>,
    ) -> Result<bool, Error> {
        // A generation names one write of one owner: the version alone decides.
        let client = self.client().await?;
        let request = DeleteObjectRequest {
            bucket: self.settings.bucket.clone(),
            object: self.object_for(name),
            if_generation_match: Some(generation(version)?),
            ..DeleteObjectRequest::default()
        };
        match client.delete_object(&request).await {
            // Gone: nothing of anyone else's was touched (also a retry of our own delete).
            Ok(()) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(true),
            Err(e) if status(&e) == Some(412) => Ok(false),
            Err(e) => Err(self.error(Doing::Delete, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let client = self.client().await?;
        let mut held = Vec::new();
        let mut request = ListObjectsRequest {
            bucket: self.settings.bucket.clone(),
            prefix: Some(object_record::key_prefix(&self.prefix, prefix)),
            ..ListObjectsRequest::default()
        };
        loop {
            let page = client
                .list_objects(&request)
                .await
                .map_err(|e| self.error(Doing::List, e))?;
            // Listing returns each object's metadata: no request per lock.
            for object in page.items.unwrap_or_default() {
                let name =
                    object_record::name(object.metadata.as_ref(), &object.name, &self.prefix);
                if let Some(name) = name.filter(|n| n.as_str().starts_with(prefix)) {
                    held.push((name, holder_of(&object)));
                }
            }
            match page.next_page_token {
                Some(token) => request.page_token = Some(token),
                None => return Ok(held),
            }
        }
    }
}

fn holder_of(object: &Object) -> Holder {
    object_record::holder(
        object.metadata.as_ref(),
        Version::new(object.generation.to_string()),
    )
}
