//! The lock protocol of every store that offers conditional writes (S3, GCS, DynamoDB,
//! MongoDB), written once over [`ConditionalStore`]; and the object stores' record: the holder
//! as object metadata (readable with a metadata-only request), and a small body that differs on
//! every write, so that every write gets a new version even where the version is a content
//! hash (S3's ETag).

use crate::backend::{Holder, Lease, Version};
use std::time::{Duration, SystemTime};
// The object stores' record helpers below need these too.
#[cfg(any(feature = "s3", feature = "gcs"))]
use {crate::backend::Owner, std::collections::HashMap, std::time::UNIX_EPOCH};

#[cfg(any(feature = "s3", feature = "gcs"))]
const OWNER: &str = "dlock-owner";
#[cfg(any(feature = "s3", feature = "gcs"))]
const HOST: &str = "dlock-host";
#[cfg(any(feature = "s3", feature = "gcs"))]
const PID: &str = "dlock-pid";
#[cfg(any(feature = "s3", feature = "gcs"))]
const ACQUIRED_AT: &str = "dlock-acquired-at-ms";
#[cfg(any(feature = "s3", feature = "gcs"))]
const TTL: &str = "dlock-ttl-ms";

#[cfg(any(feature = "s3", feature = "gcs"))]
fn millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(any(feature = "s3", feature = "gcs"))]
/// The metadata of a lease's record.
pub(crate) fn metadata(lease: &Lease) -> HashMap<String, String> {
    HashMap::from([
        (OWNER.to_string(), lease.owner.id.clone()),
        (HOST.to_string(), lease.owner.host.clone()),
        (PID.to_string(), lease.owner.pid.to_string()),
        (
            ACQUIRED_AT.to_string(),
            millis(lease.acquired_at).to_string(),
        ),
        (TTL.to_string(), lease.ttl.as_millis().to_string()),
    ])
}

#[cfg(any(feature = "s3", feature = "gcs"))]
/// The body of a lease's record: readable by people, and new on every write.
pub(crate) fn body(lease: &Lease) -> Vec<u8> {
    format!(
        "dlock lock record\nname={}\nowner={}\nhost={}\npid={}\nacquired_at_ms={}\nttl_ms={}\nwrite={}\n",
        lease.name,
        lease.owner.id,
        lease.owner.host,
        lease.owner.pid,
        millis(lease.acquired_at),
        lease.ttl.as_millis(),
        Owner::generate().id,
    )
    .into_bytes()
}

#[cfg(any(feature = "s3", feature = "gcs"))]
/// The holder a record's metadata names; a record without dlock's metadata (written by
/// something else) is held by an unknown owner.
pub(crate) fn holder(metadata: Option<&HashMap<String, String>>, version: Version) -> Holder {
    let get = |key: &str| metadata.and_then(|m| m.get(key));
    let owner = match (get(OWNER), get(HOST), get(PID).and_then(|p| p.parse().ok())) {
        (Some(id), Some(host), Some(pid)) => Owner {
            id: id.clone(),
            host: host.clone(),
            pid,
        },
        _ => Owner::unknown(),
    };
    let number = |key: &str| get(key).and_then(|v| v.parse::<u64>().ok());
    Holder {
        owner,
        version,
        acquired_at: number(ACQUIRED_AT).map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        ttl: number(TTL).map(Duration::from_millis),
        fencing_token: None,
    }
}

#[cfg(any(feature = "s3", feature = "gcs"))]
/// The object key of a lock: the prefix, then the encoded name (never able to leave the
/// prefix), within the stores' 1024-byte key limit.
pub(crate) fn key(prefix: &str, name: &crate::LockName) -> String {
    format!("{prefix}{}", name.encoded(1000 - prefix.len().min(900)))
}

#[cfg(any(feature = "s3", feature = "gcs"))]
/// `scheme://bucket/prefix` split into bucket and prefix.
pub(crate) fn split_url<'a>(url: &'a str, scheme: &str) -> (&'a str, &'a str) {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .unwrap_or(url);
    rest.split_once('/').unwrap_or((rest, ""))
}

#[cfg(any(feature = "s3", feature = "gcs"))]
/// Checks that a bucket was given.
pub(crate) fn check_bucket(
    backend: &'static str,
    bucket: &str,
    scheme: &str,
    env: &str,
) -> Result<(), crate::Error> {
    if bucket.is_empty() {
        return Err(crate::Error::Config {
            message: format!(
                "{backend}: no bucket given; set one with `.bucket(..)`, `{scheme}://BUCKET/prefix` or {env}"
            ),
        });
    }
    Ok(())
}

/// Implements [`Backend`](crate::Backend) for a [`ConditionalStore`]: the lock protocol is
/// the same for every conditional store.
macro_rules! conditional_store_backend {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::Backend for $store {
            fn kind(&self) -> &'static str {
                <Self as $crate::backends::record_store::ConditionalStore>::KIND
            }

            fn capabilities(&self) -> $crate::Capabilities {
                $crate::backends::record_store::ConditionalStore::capabilities(self)
            }

            async fn try_acquire(&self, request: &$crate::AcquireRequest) -> Result<$crate::AcquireOutcome, $crate::Error> {
                $crate::backends::record_store::try_acquire(self, request).await
            }

            async fn renew(&self, lease: &$crate::Lease, ttl: std::time::Duration) -> Result<$crate::Lease, $crate::Error> {
                $crate::backends::record_store::renew(self, lease, ttl).await
            }

            async fn release(&self, lease: &$crate::Lease) -> Result<(), $crate::Error> {
                $crate::backends::record_store::release(self, lease).await
            }

            async fn inspect(&self, name: &$crate::LockName) -> Result<Option<$crate::Holder>, $crate::Error> {
                $crate::backends::record_store::ConditionalStore::read(self, name).await
            }

            fn stale_lock_hint(&self, name: &$crate::LockName, _holder: Option<&$crate::Holder>) -> String {
                format!(
                    "If its holder is gone, it is taken over once its record has stayed unchanged for a whole \
                     lease (ttl); to free it now, delete {}",
                    $crate::backends::record_store::ConditionalStore::location(self, name)
                )
            }
        }
    };
}
pub(crate) use conditional_store_backend;

#[cfg(any(feature = "s3", feature = "gcs"))]
/// Checks a configured key prefix: it may be empty, or must end with `/`.
pub(crate) fn check_prefix(backend: &'static str, prefix: &str) -> Result<String, crate::Error> {
    let prefix = prefix.trim_start_matches('/');
    if prefix.len() > 512 {
        return Err(crate::Error::Config {
            message: format!("{backend}: the key prefix is longer than 512 bytes"),
        });
    }
    if prefix.is_empty() || prefix.ends_with('/') {
        Ok(prefix.to_string())
    } else {
        Ok(format!("{prefix}/"))
    }
}

/// When a conditional write may happen.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Condition<'a> {
    /// A new acquisition of a free lock (no record, or a released one).
    Free,
    /// A takeover of a stale holder whose record still has this version.
    Replace(&'a Version),
    /// A renewal by the lease's owner, whose record still has this version.
    Renew(&'a Version),
}

#[cfg(any(feature = "s3", feature = "gcs"))]
impl Condition<'_> {
    /// The version the record must have: none for a free lock. Object stores write a takeover
    /// and a renewal alike, as a write if the version matches.
    pub(crate) fn expected(&self) -> Option<&Version> {
        match self {
            Condition::Free => None,
            Condition::Replace(version) | Condition::Renew(version) => Some(version),
        }
    }
}

/// The answer to a conditional write.
#[derive(Debug)]
pub(crate) enum Write {
    /// Written: the record's new version, and its fencing token where the store keeps one.
    Done {
        version: Version,
        fencing_token: Option<u64>,
    },
    /// The condition failed. Carries the record as it is, where the store returned it with the
    /// failure (DynamoDB's ALL_OLD); `None` makes the protocol read it.
    Refused(Option<Holder>),
}

/// The three requests a store must make conditionally; the lock protocol on top of them is
/// written once, in [`try_acquire`], [`renew`] and [`release`].
#[async_trait::async_trait]
pub(crate) trait ConditionalStore: Send + Sync {
    /// The backend kind, for messages.
    const KIND: &'static str;

    /// What the backend can do (all these stores have leases).
    fn capabilities(&self) -> crate::Capabilities;

    /// Where a lock's record lives, for people: `s3://bucket/key`.
    fn location(&self, name: &crate::LockName) -> String;

    /// Writes `lease`'s record if `condition` holds.
    async fn write(&self, lease: &Lease, condition: Condition<'_>) -> Result<Write, crate::Error>;

    /// The holder as it is now, `None` if the lock is free.
    async fn read(&self, name: &crate::LockName) -> Result<Option<Holder>, crate::Error>;

    /// Frees the lock if its record's version is still `lease.version`: `Ok(true)` when freed
    /// or already free, `Ok(false)` when someone else holds it.
    async fn delete(&self, lease: &Lease) -> Result<bool, crate::Error>;
}

/// After a failed condition, the record decides: ours means the write had succeeded (an SDK
/// retry of a successful write comes back as a failed condition); anyone else's is busy.
async fn resolve<S: ConditionalStore>(
    store: &S,
    lease: &Lease,
    current: Option<Holder>,
) -> Result<Result<Holder, Option<Holder>>, crate::Error> {
    let current = match current {
        Some(holder) => Some(holder),
        None => store.read(&lease.name).await?,
    };
    match current {
        Some(h) if h.owner.id == lease.owner.id => Ok(Ok(h)),
        other => Ok(Err(other)),
    }
}

pub(crate) async fn try_acquire<S: ConditionalStore>(
    store: &S,
    request: &crate::AcquireRequest,
) -> Result<crate::AcquireOutcome, crate::Error> {
    let mut lease = Lease {
        name: request.name.clone(),
        owner: request.owner.clone(),
        version: Version::new(""),
        ttl: request.ttl,
        fencing_token: None,
        acquired_at: SystemTime::now(),
    };
    let condition = request
        .replace
        .as_ref()
        .map_or(Condition::Free, Condition::Replace);
    let mut written = store.write(&lease, condition).await?;
    if matches!(written, Write::Refused(None))
        && request.replace.is_some()
        && store.read(&request.name).await?.is_none()
    {
        // The stale record is gone already: take the lock as free.
        written = store.write(&lease, Condition::Free).await?;
    }
    let (version, fencing_token) = match written {
        Write::Done {
            version,
            fencing_token,
        } => (version, fencing_token),
        Write::Refused(current) => match resolve(store, &lease, current).await? {
            Ok(ours) => (ours.version, ours.fencing_token),
            Err(Some(holder)) => return Ok(crate::AcquireOutcome::Busy(holder)),
            Err(None) => {
                return Err(crate::Error::temporary(
                    S::KIND,
                    "the lock record changed while it was read; retrying",
                    None,
                ));
            }
        },
    };
    lease.version = version;
    lease.fencing_token = fencing_token;
    Ok(crate::AcquireOutcome::Acquired(lease))
}

pub(crate) async fn renew<S: ConditionalStore>(
    store: &S,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, crate::Error> {
    let renewed = Lease {
        ttl,
        ..lease.clone()
    };
    let lost = || crate::Error::Lost {
        name: lease.name.to_string(),
    };
    let version = match store
        .write(&renewed, Condition::Renew(&lease.version))
        .await?
    {
        Write::Done { version, .. } => version,
        Write::Refused(current) => {
            resolve(store, lease, current)
                .await?
                .map_err(|_| lost())?
                .version
        }
    };
    Ok(Lease { version, ..renewed })
}

pub(crate) async fn release<S: ConditionalStore>(
    store: &S,
    lease: &Lease,
) -> Result<(), crate::Error> {
    if store.delete(lease).await? {
        Ok(())
    } else {
        Err(crate::Error::Lost {
            name: lease.name.to_string(),
        })
    }
}

#[cfg(all(test, any(feature = "s3", feature = "gcs")))]
mod tests {
    use super::*;
    use crate::LockName;

    #[test]
    fn metadata_round_trips_and_bodies_differ() {
        let lease = Lease {
            name: LockName::new("a/b").expect("name"),
            owner: Owner::generate(),
            version: Version::new("1"),
            ttl: Duration::from_secs(30),
            fencing_token: None,
            acquired_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        };
        let holder = holder(Some(&metadata(&lease)), Version::new("1"));
        assert_eq!(holder.owner, lease.owner);
        assert_eq!(holder.ttl, Some(lease.ttl));
        assert_eq!(holder.acquired_at, Some(lease.acquired_at));
        assert_ne!(body(&lease), body(&lease));
        assert!(super::holder(None, Version::new("x")).owner.is_unknown());
    }

    #[test]
    fn keys_stay_under_the_prefix() {
        assert_eq!(check_prefix("s3", "locks").expect("ok"), "locks/");
        assert_eq!(check_prefix("s3", "/a/b/").expect("ok"), "a/b/");
        assert_eq!(check_prefix("s3", "").expect("ok"), "");
        let k = key("locks/", &LockName::new("../../other").expect("name"));
        assert_eq!(k, "locks/%2E.%2F..%2Fother");
        assert!(key("p/", &LockName::new("z".repeat(1024)).expect("name")).len() <= 1024);
    }
}
