//! Redis: a placeholder while the backend is written (issue 10). Not usable yet.

use crate::backend::{AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Version};
use crate::{Error, LockName};
use std::time::Duration;

/// Locks in Redis (not implemented yet).
#[derive(Debug)]
pub struct RedisBackend;

/// Settings for a [`RedisBackend`] (not implemented yet).
#[derive(Debug, Default)]
pub struct RedisBuilder;

impl RedisBackend {
    /// Not implemented yet.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        Err(Error::Config {
            message: format!("`{url}`: the redis backend is not implemented yet"),
        })
    }
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn try_acquire(&self, _: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        unimplemented!()
    }
    async fn renew(&self, _: &Lease, _: Duration) -> Result<Lease, Error> {
        unimplemented!()
    }
    async fn release(&self, _: &Lease) -> Result<(), Error> {
        unimplemented!()
    }
    async fn inspect(&self, _: &LockName) -> Result<Option<Holder>, Error> {
        unimplemented!()
    }
    async fn list(&self, _: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        unimplemented!()
    }
    async fn force_release(&self, _: &LockName, _: &Version) -> Result<(), Error> {
        unimplemented!()
    }
}
