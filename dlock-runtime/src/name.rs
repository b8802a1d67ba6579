//! Validated lock names.

use crate::Error;
use std::fmt;
use std::sync::Arc;

/// The longest lock name, in bytes. Backends map names to keys; long names are hashed where a
/// store's key is shorter.
pub const MAX_NAME_LEN: usize = 1024;

/// A lock name that every backend can store: 1 to [`MAX_NAME_LEN`] bytes of UTF-8 without
/// control characters (so no NUL, newline or escape sequences in logs).
///
/// Names are opaque to dlock: `/`, `..` and `%` are allowed and each backend maps them to a key
/// that cannot escape its directory or prefix.
///
/// ```
/// use dlock_runtime::LockName;
/// assert_eq!(LockName::new("deploy-prod")?.as_str(), "deploy-prod");
/// assert!(LockName::new("").is_err());
/// assert!(LockName::new("bad\0name").is_err());
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(Arc<str>);

impl LockName {
    /// Validates a name.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let invalid = |reason: String| Error::InvalidName {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("a lock name must not be empty".into()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(format!(
                "it is {} bytes long; the limit is {MAX_NAME_LEN}",
                name.len()
            )));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(invalid(format!(
                "it contains the control character {c:?}; use printable characters only"
            )));
        }
        Ok(LockName(name.into()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for LockName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced() {
        assert!(LockName::new("a".repeat(MAX_NAME_LEN)).is_ok());
        let err = LockName::new("a".repeat(MAX_NAME_LEN + 1)).unwrap_err();
        assert!(err.to_string().contains("the limit is 1024"), "{err}");
        assert!(LockName::new("tab\there").is_err());
        assert!(
            LockName::new("../../etc/passwd").is_ok(),
            "mapping, not validation, keeps paths safe"
        );
    }
}
