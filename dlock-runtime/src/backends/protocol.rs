//! The lock protocol of every store that offers conditional writes (S3, GCS, DynamoDB,
//! MongoDB), written once over [`ConditionalStore`]: this is the only code that decides
//! acquire, takeover, the read-back of ambiguous writes, renewal, release and forced release.
//! A store only speaks its own conditional operations and maps its own statuses.

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version,
};
use crate::{Error, LockName};
use std::time::{Duration, SystemTime};

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

impl Condition<'_> {
    /// The version the record must have: none for a free lock. Object stores write a takeover
    /// and a renewal alike, as a write if the version matches.
    #[cfg(any(feature = "s3", feature = "gcs"))]
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

/// The requests a store must make conditionally; the lock protocol on top of them is written
/// once, in this module, and every `ConditionalStore` is a [`Backend`] through it.
#[async_trait::async_trait]
pub(crate) trait ConditionalStore: Send + Sync + std::fmt::Debug {
    /// The backend kind, for messages.
    const KIND: &'static str;

    /// What the backend can do (all these stores have leases).
    fn capabilities(&self) -> Capabilities;

    /// Where a lock's record lives, for people: `s3://bucket/key`.
    fn location(&self, name: &LockName) -> String;

    /// Writes `lease`'s record if `condition` holds.
    async fn write(&self, lease: &Lease, condition: Condition<'_>) -> Result<Write, Error>;

    /// The holder as it is now, `None` if the lock is free.
    async fn read(&self, name: &LockName) -> Result<Option<Holder>, Error>;

    /// Frees the lock if its record still has `version` (and, where the store checks it,
    /// `owner`): `Ok(true)` when freed or already free, `Ok(false)` when the record is not at
    /// that version.
    async fn delete(
        &self,
        name: &LockName,
        version: &Version,
        owner: Option<&Owner>,
    ) -> Result<bool, Error>;

    /// Every held lock whose name starts with `prefix` (any order).
    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error>;
}

/// After a failed condition, the record decides: ours means the write had succeeded (a retry
/// of a write that had succeeded comes back as a failed condition); anyone else's is busy.
async fn resolve<S: ConditionalStore>(
    store: &S,
    name: &LockName,
    owner: &Owner,
    current: Option<Holder>,
) -> Result<Result<Holder, Option<Holder>>, Error> {
    let current = match current {
        Some(holder) => Some(holder),
        None => store.read(name).await?,
    };
    match current {
        Some(h) if h.owner.id == owner.id => Ok(Ok(h)),
        other => Ok(Err(other)),
    }
}

fn lost(name: &LockName) -> Error {
    Error::Lost {
        name: name.to_string(),
    }
}

#[async_trait::async_trait]
impl<S: ConditionalStore> Backend for S {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn capabilities(&self) -> Capabilities {
        ConditionalStore::capabilities(self)
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
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
        let mut written = self.write(&lease, condition).await?;
        // A refused write whose read-back finds the lock free (the holder left in between, or
        // a stale record is gone already): one more write, as a free lock.
        let mut again = true;
        let (version, fencing_token) = loop {
            match written {
                Write::Done {
                    version,
                    fencing_token,
                } => break (version, fencing_token),
                Write::Refused(current) => {
                    match resolve(self, &request.name, &request.owner, current).await? {
                        Ok(ours) => break (ours.version, ours.fencing_token),
                        Err(Some(holder)) => return Ok(AcquireOutcome::Busy(holder)),
                        Err(None) if again => {
                            again = false;
                            written = self.write(&lease, Condition::Free).await?;
                        }
                        Err(None) => {
                            return Err(Error::temporary(
                                S::KIND,
                                "the lock record changed while it was read; retrying",
                                None,
                            ));
                        }
                    }
                }
            }
        };
        lease.version = version;
        lease.fencing_token = fencing_token;
        Ok(AcquireOutcome::Acquired(lease))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let renewed = Lease {
            ttl,
            ..lease.clone()
        };
        let version = match self
            .write(&renewed, Condition::Renew(&lease.version))
            .await?
        {
            Write::Done { version, .. } => version,
            Write::Refused(current) => {
                resolve(self, &lease.name, &lease.owner, current)
                    .await?
                    .map_err(|_| lost(&lease.name))?
                    .version
            }
        };
        Ok(Lease { version, ..renewed })
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        if self
            .delete(&lease.name, &lease.version, Some(&lease.owner))
            .await?
        {
            return Ok(());
        }
        // Refused: a renewal whose answer was lost may have moved our own record on.
        match resolve(self, &lease.name, &lease.owner, None).await? {
            Ok(ours)
                if self
                    .delete(&lease.name, &ours.version, Some(&lease.owner))
                    .await? =>
            {
                Ok(())
            }
            _ => Err(lost(&lease.name)),
        }
    }

    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        self.read(name).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let mut held = ConditionalStore::list(self, prefix).await?;
        held.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(held)
    }

    async fn force_release(&self, name: &LockName, version: &Version) -> Result<(), Error> {
        if self.delete(name, version, None).await? {
            return Ok(());
        }
        Err(Error::Changed {
            name: name.to_string(),
            expected: version.clone(),
            holder: self.read(name).await?.map(Box::new),
        })
    }

    fn stale_lock_hint(&self, name: &LockName, holder: Option<&Holder>) -> String {
        let version = holder.map_or("VERSION", |h| h.version.as_str());
        format!(
            "If its holder is gone, it is taken over once its record has stayed unchanged for a \
             whole lease (ttl); to free it now, run `dlock release --force '{name}' --if-version \
             {version}` (the record is {})",
            self.location(name)
        )
    }
}
