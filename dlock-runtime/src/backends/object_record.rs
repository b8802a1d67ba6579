//! The object stores' lock record (S3, GCS): the holder as object metadata, readable with a
//! metadata-only request, and a small body that differs on every write, so that every write
//! gets a new version even where the version is a content hash (S3's ETag). Also their keys,
//! URLs and settings checks.

use crate::backend::{Holder, Lease, Owner, Version};
use crate::time::{from_unix_millis, unix_millis};
use crate::{Error, LockName};
use std::collections::HashMap;
use std::time::Duration;

const OWNER: &str = "dlock-owner";
const HOST: &str = "dlock-host";
const PID: &str = "dlock-pid";
const ACQUIRED_AT: &str = "dlock-acquired-at-ms";
const TTL: &str = "dlock-ttl-ms";
/// The lock name, percent-encoded (metadata values must be ASCII): `list` reads it back, also
/// for names whose key was shortened with a hash.
const NAME: &str = "dlock-name";

/// The metadata of a lease's record.
pub(crate) fn metadata(lease: &Lease) -> HashMap<String, String> {
    HashMap::from([
        (OWNER.to_string(), lease.owner.id.clone()),
        (HOST.to_string(), lease.owner.host.clone()),
        (PID.to_string(), lease.owner.pid.to_string()),
        (
            ACQUIRED_AT.to_string(),
            unix_millis(lease.acquired_at).to_string(),
        ),
        (TTL.to_string(), crate::time::millis(lease.ttl).to_string()),
        (NAME.to_string(), lease.name.encoded(usize::MAX)),
    ])
}

/// The body of a lease's record: readable by people, and new on every write.
pub(crate) fn body(lease: &Lease) -> Vec<u8> {
    format!(
        "dlock lock record\nname={}\nowner={}\nhost={}\npid={}\nacquired_at_ms={}\nttl_ms={}\nwrite={}\n",
        lease.name,
        lease.owner.id,
        lease.owner.host,
        lease.owner.pid,
        unix_millis(lease.acquired_at),
        crate::time::millis(lease.ttl),
        crate::backend::random_id(),
    )
    .into_bytes()
}

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
        acquired_at: number(ACQUIRED_AT).map(from_unix_millis),
        ttl: number(TTL).map(Duration::from_millis),
        fencing_token: None,
    }
}

/// The lock name a record's metadata (or, failing that, its key under `prefix`) names.
pub(crate) fn name(
    metadata: Option<&HashMap<String, String>>,
    key: &str,
    prefix: &str,
) -> Option<LockName> {
    let encoded = metadata
        .and_then(|m| m.get(NAME).cloned())
        .or_else(|| key.strip_prefix(prefix).map(str::to_string))?;
    LockName::decode(&encoded)
}

/// The object key of a lock: the prefix, then the encoded name (never able to leave the
/// prefix), within the stores' 1024-byte key limit.
pub(crate) fn key(prefix: &str, name: &LockName) -> String {
    format!("{prefix}{}", name.encoded(1000 - prefix.len().min(900)))
}

/// The key prefix under which every lock whose name starts with `name_prefix` lives.
pub(crate) fn key_prefix(prefix: &str, name_prefix: &str) -> String {
    let encoded = LockName::encode_prefix(name_prefix);
    format!("{prefix}{encoded}")
}

/// `scheme://bucket/prefix` split into bucket and prefix.
pub(crate) fn split_url<'a>(url: &'a str, scheme: &str) -> (&'a str, &'a str) {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .unwrap_or(url);
    rest.split_once('/').unwrap_or((rest, ""))
}

/// Checks that a bucket was given.
pub(crate) fn check_bucket(
    backend: &'static str,
    bucket: &str,
    scheme: &str,
    env: &str,
) -> Result<(), Error> {
    if bucket.is_empty() {
        return Err(Error::Config {
            message: format!(
                "{backend}: no bucket given; set one with `.bucket(..)`, `{scheme}://BUCKET/prefix` or {env}"
            ),
        });
    }
    Ok(())
}

/// Checks a configured key prefix: it may be empty, or must end with `/`.
pub(crate) fn check_prefix(backend: &'static str, prefix: &str) -> Result<String, Error> {
    let prefix = prefix.trim_start_matches('/');
    if prefix.len() > 512 {
        return Err(Error::Config {
            message: format!("{backend}: the key prefix is longer than 512 bytes"),
        });
    }
    if prefix.is_empty() || prefix.ends_with('/') {
        Ok(prefix.to_string())
    } else {
        Ok(format!("{prefix}/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_bodies_differ() {
        let lease = Lease {
            name: LockName::new("a/b ü").expect("name"),
            owner: Owner::generate(),
            version: Version::new("1"),
            ttl: Duration::from_secs(30),
            fencing_token: None,
            acquired_at: from_unix_millis(1_700_000_000_000),
        };
        let meta = metadata(&lease);
        assert!(meta.values().all(|v| v.is_ascii()), "{meta:?}");
        let holder = holder(Some(&meta), Version::new("1"));
        assert_eq!(holder.owner, lease.owner);
        assert_eq!(holder.ttl, Some(lease.ttl));
        assert_eq!(holder.acquired_at, Some(lease.acquired_at));
        assert_eq!(name(Some(&meta), "x", ""), Some(lease.name.clone()));
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
        let name = LockName::new("deploy/prod").expect("name");
        assert!(key("p/", &name).starts_with(&key_prefix("p/", "deploy/")));
        assert!(key("p/", &name).starts_with(&key_prefix("p/", "")));
        assert_eq!(
            super::name(None, &key("p/", &name), "p/"),
            Some(name),
            "a key without metadata decodes"
        );
    }
}
