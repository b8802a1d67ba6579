//! Amazon S3 with conditional writes: `PutObject` with `If-None-Match: *` acquires,
//! `PutObject` with `If-Match: <etag>` renews or takes over, `DeleteObject` with
//! `If-Match: <etag>` releases.
//!
//! S3 answers a lost race with 412, and (real S3 only) a concurrent conditional write on the
//! same key with 409 ConditionalRequestConflict, which is retried. Neither is a modelled error
//! in the SDK, so the HTTP status decides. A 412 can also be the SDK's own retry of a write
//! that had succeeded; the record is then read back and decided by owner id.

use super::aws::AwsSettings;
use super::object_record;
use super::protocol::{Condition, ConditionalStore, Write};
use crate::backend::{Capabilities, Holder, Lease, Owner, Version};
use crate::{Error, LockName};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use std::fmt;
use tokio::sync::OnceCell;

const KIND: &str = "s3";

/// What a request was doing, for error messages and for how its statuses are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Doing {
    CheckBucket,
    Write,
    Read,
    Delete,
    List,
}

impl std::fmt::Display for Doing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Doing::CheckBucket => "checking the bucket",
            Doing::Write => "writing the lock record",
            Doing::Read => "reading the lock record",
            Doing::Delete => "deleting the lock record",
            Doing::List => "listing lock records",
        })
    }
}

/// Locks as objects in an S3 bucket, under a key prefix.
///
/// Build it with [`S3Backend::builder`] (or [`S3Backend::from_env`], or the URL
/// `s3://bucket/prefix`). The client is created on first use from the standard AWS
/// configuration (environment, profile, instance role), and the first use checks that the
/// bucket exists and is reachable, so a wrong bucket or endpoint fails at once with a clear
/// error instead of being retried.
///
/// IAM permissions needed on `arn:aws:s3:::BUCKET/PREFIX*`: `s3:PutObject`, `s3:GetObject`
/// (for HEAD), `s3:DeleteObject`; and `s3:ListBucket` on the bucket for the start-up check.
///
/// ```no_run
/// use dlock_runtime::{Registry, S3Backend};
///
/// let s3 = S3Backend::builder()
///     .bucket("my-locks")
///     .prefix("ci/")
///     .endpoint("http://127.0.0.1:5000") // a local stand-in; omit for AWS
///     .region("us-east-1")
///     .credentials("test", "test")
///     .build()?;
/// Registry::builder().backend("s3", s3).build()?.install().expect("once");
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
pub struct S3Backend {
    settings: S3Builder,
    prefix: String,
    client: OnceCell<Client>,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.settings.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.settings.aws.endpoint)
            .finish_non_exhaustive()
    }
}

/// Settings for an [`S3Backend`]; setters never fail, [`build`](S3Builder::build) checks.
///
/// ```
/// use dlock_runtime::S3Backend;
///
/// let backend = S3Backend::builder().bucket("my-locks").prefix("ci/").region("us-east-1").build()?;
/// assert_eq!(backend.key_for(&"deploy/prod".parse()?), "ci/deploy%2Fprod");
/// assert!(S3Backend::builder().build().is_err(), "a bucket is required");
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "call .build()"]
pub struct S3Builder {
    bucket: String,
    prefix: String,
    aws: AwsSettings,
    path_style: Option<bool>,
}

impl S3Builder {
    /// The bucket (required).
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// A key prefix; lock keys are `PREFIX/ENCODED-NAME` and never leave it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    super::aws::aws_setters!();

    /// Path-style addressing (`endpoint/bucket/key`); on by default with a custom endpoint.
    pub fn path_style(mut self, path_style: bool) -> Self {
        self.path_style = Some(path_style);
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<S3Backend, Error> {
        object_record::check_bucket(KIND, &self.bucket, "s3", "DLOCK_S3_BUCKET")?;
        let prefix = object_record::check_prefix(KIND, &self.prefix)?;
        Ok(S3Backend {
            settings: self,
            prefix,
            client: OnceCell::new(),
        })
    }
}

impl S3Backend {
    /// Settings to fill in.
    pub fn builder() -> S3Builder {
        S3Builder::default()
    }

    /// Settings from the environment: bucket from `DLOCK_S3_BUCKET`, prefix from
    /// `DLOCK_S3_PREFIX`; the AWS variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, ...) are read by the AWS configuration as usual.
    pub fn from_env() -> S3Builder {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        S3Backend::builder()
            .bucket(var("DLOCK_S3_BUCKET"))
            .prefix(var("DLOCK_S3_PREFIX"))
    }

    /// `s3://bucket/prefix`, with the rest from the environment.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let (bucket, prefix) = object_record::split_url(url, "s3");
        let mut builder = S3Backend::from_env().bucket(bucket);
        if !prefix.is_empty() {
            builder = builder.prefix(prefix);
        }
        builder.build()
    }

    /// The object key of a lock.
    pub fn key_for(&self, name: &LockName) -> String {
        object_record::key(&self.prefix, name)
    }

    async fn client(&self) -> Result<&Client, Error> {
        self.client.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Client, Error> {
        let s = &self.settings;
        let sdk = s.aws.load().await;
        let custom_endpoint = sdk.endpoint_url().is_some();
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(s.path_style.unwrap_or(custom_endpoint))
            .build();
        let client = Client::from_conf(config);
        client
            .head_bucket()
            .bucket(&s.bucket)
            .send()
            .await
            .map_err(|e| self.error(Doing::CheckBucket, e))?;
        Ok(client)
    }

    /// Maps an SDK error to dlock's: by HTTP status where S3 answered (it does not model 409
    /// or 412), by the kind of failure where it did not.
    fn error<E>(&self, doing: Doing, e: SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let bucket = &self.settings.bucket;
        let status = status(&e);
        let code = e
            .as_service_error()
            .and_then(|s| s.code())
            .unwrap_or_default()
            .to_string();
        let detail = DisplayErrorContext(&e).to_string();
        let unreachable = super::aws::unreachable(&e);
        let (temporary, message) = match status {
            Some(404) if code == "NoSuchBucket" || doing == Doing::CheckBucket => (
                false,
                format!(
                    "bucket `{bucket}` does not exist (or this endpoint does not have it); create it or fix the name"
                ),
            ),
            Some(401 | 403) => (
                false,
                format!(
                    "access denied to bucket `{bucket}` while {doing}; the credentials need s3:PutObject, \
                     s3:GetObject and s3:DeleteObject on arn:aws:s3:::{bucket}/{}*, and s3:ListBucket on the bucket",
                    self.prefix
                ),
            ),
            // A 400 RequestTimeout (the connection idled too long) is worth a retry.
            Some(400) if code == "RequestTimeout" => (true, format!("{doing}: {detail}")),
            Some(301 | 400) => (
                false,
                format!(
                    "S3 rejected the request while {doing} (wrong region or endpoint for bucket `{bucket}`?): {detail}"
                ),
            ),
            Some(409 | 429 | 500..=599) => (true, format!("{doing}: {detail}")),
            Some(_) => (false, format!("{doing}: {detail}")),
            None if unreachable => (
                true,
                format!(
                    "cannot reach S3{} while {doing}: {detail}; check the endpoint (AWS_ENDPOINT_URL) and the network",
                    self.settings.aws.at()
                ),
            ),
            None => (
                false,
                format!(
                    "the AWS configuration is incomplete while {doing}: {detail}; set AWS_REGION and credentials"
                ),
            ),
        };
        Error::backend_failure(KIND, temporary, message, Some(Box::new(e)))
    }
}

#[async_trait::async_trait]
impl ConditionalStore for S3Backend {
    const KIND: &'static str = KIND;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            leases: true,
            // A refused write does not say who holds the lock (it would cost a read too):
            // waiters read, and write only when the lock looks free or stale.
            poll_with_reads: true,
            ..Capabilities::default()
        }
    }

    fn location(&self, name: &LockName) -> String {
        format!("s3://{}/{}", self.settings.bucket, self.key_for(name))
    }

    async fn write(&self, lease: &Lease, condition: Condition<'_>) -> Result<Write, Error> {
        let expected = condition.expected();
        let client = self.client().await?;
        let mut put = client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(self.key_for(&lease.name))
            .set_metadata(Some(object_record::metadata(lease)))
            .content_type("text/plain")
            .body(ByteStream::from(object_record::body(lease)));
        put = match expected {
            None => put.if_none_match("*"),
            Some(version) => put.if_match(version.as_str()),
        };
        match put.send().await {
            Ok(out) => Ok(Write::Done {
                version: Version::new(out.e_tag().unwrap_or_default()),
                fencing_token: None,
            }),
            // 412: the condition failed. 404: an If-Match target is gone.
            Err(e) if matches!(status(&e), Some(412 | 404)) => Ok(Write::Refused(None)),
            Err(e) => Err(self.error(Doing::Write, e)),
        }
    }

    async fn read(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        Ok(self
            .head(&self.key_for(name))
            .await?
            .map(|(holder, _)| holder))
    }

    async fn delete(
        &self,
        name: &LockName,
        version: &Version,
        _owner: Option<&Owner>,
    ) -> Result<bool, Error> {
        // The ETag names one write of one owner: the version alone decides.
        let client = self.client().await?;
        let result = client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(self.key_for(name))
            .if_match(version.as_str())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            // Gone: nothing of anyone else's was touched (also the SDK retrying our own delete).
            Err(e) if status(&e) == Some(404) => Ok(true),
            Err(e) if status(&e) == Some(412) => Ok(false),
            Err(e) => Err(self.error(Doing::Delete, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let client = self.client().await?;
        let key_prefix = object_record::key_prefix(&self.prefix, prefix);
        let mut held = Vec::new();
        let mut token = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(&self.settings.bucket)
                .prefix(&key_prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.error(Doing::List, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                // Listing has no metadata: one HEAD per lock for its holder and name.
                if let Some((holder, Some(name))) = self.head(key).await?
                    && name.as_str().starts_with(prefix)
                {
                    held.push((name, holder));
                }
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(held);
            }
        }
    }
}

impl S3Backend {
    /// The holder and lock name of the record at `key`, `None` if there is none.
    async fn head(&self, key: &str) -> Result<Option<(Holder, Option<LockName>)>, Error> {
        let client = self.client().await?;
        match client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let version = Version::new(out.e_tag().unwrap_or_default());
                let name = object_record::name(out.metadata(), key, &self.prefix);
                Ok(Some((object_record::holder(out.metadata(), version), name)))
            }
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error(Doing::Read, e)),
        }
    }
}

fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}
