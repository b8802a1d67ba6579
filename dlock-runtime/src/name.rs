//! Validated lock names.

use crate::Error;
use std::fmt;
use std::sync::Arc;

/// The longest lock name, in bytes. Backends map names to keys; long names are hashed where a
/// store's key is shorter.
///
/// ```
/// use dlock_runtime::{LockName, MAX_NAME_LEN};
/// assert!(LockName::new("n".repeat(MAX_NAME_LEN)).is_ok());
/// assert!(LockName::new("n".repeat(MAX_NAME_LEN + 1)).is_err());
/// ```
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

    /// The name as one safe file name or object-key segment of at most `max` bytes (`max` at
    /// least 40): `[A-Za-z0-9_-]` and non-leading `.` stay, every other byte becomes `%XX`, so
    /// `/`, `..`, `%` and `~` never appear raw; a longer result keeps a prefix and ends in `~`
    /// and a 128-bit hash of the whole name. Distinct names give distinct encodings (up to
    /// hash collisions among long names).
    ///
    /// ```
    /// use dlock_runtime::LockName;
    /// assert_eq!(LockName::new("deploy-prod")?.encoded(200), "deploy-prod");
    /// assert_eq!(LockName::new("../etc/passwd")?.encoded(200), "%2E.%2Fetc%2Fpasswd");
    /// assert!(LockName::new("x".repeat(1000))?.encoded(200).len() <= 200);
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn encoded(&self, max: usize) -> String {
        let max = max.max(40);
        let mut out = Self::encode_prefix(&self.0);
        if out.len() > max {
            let mut cut = max - 33;
            // Never split a %XX escape.
            while out.as_bytes()[cut.saturating_sub(2)..cut].contains(&b'%') {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('~');
            out.push_str(&format!(
                "{:016x}{:016x}",
                fnv1a(&self.0, 0xcbf2_9ce4_8422_2325),
                fnv1a(&self.0, 0x6c62_272e_07bb_0142)
            ));
        }
        out
    }

    /// The encoding of [`encoded`](LockName::encoded) without the length limit, for any text:
    /// the encoding of a name starts with the encoding of each of its prefixes (unless the
    /// name was shortened with a hash past that prefix).
    ///
    /// ```
    /// use dlock_runtime::LockName;
    /// assert_eq!(LockName::encode_prefix("deploy/"), "deploy%2F");
    /// assert!(LockName::new("deploy/prod")?.encoded(200).starts_with("deploy%2F"));
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn encode_prefix(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for (i, b) in text.bytes().enumerate() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
                b'.' if i > 0 => out.push('.'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    /// The name an [`encoded`](LockName::encoded) form stands for, unless it was shortened
    /// with a hash (then `None`: read the name from the lock's record instead).
    ///
    /// ```
    /// use dlock_runtime::LockName;
    /// let name = LockName::new("../etc/passwd")?;
    /// assert_eq!(LockName::decode(&name.encoded(200)), Some(name));
    /// assert_eq!(LockName::decode(&LockName::new("x".repeat(300))?.encoded(100)), None);
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn decode(encoded: &str) -> Option<LockName> {
        if encoded.contains('~') {
            return None;
        }
        let mut bytes = Vec::with_capacity(encoded.len());
        let mut rest = encoded.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            if b == b'%' {
                let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &tail[2..];
            } else {
                bytes.push(b);
                rest = tail;
            }
        }
        LockName::new(String::from_utf8(bytes).ok()?).ok()
    }
}

impl std::str::FromStr for LockName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        LockName::new(name)
    }
}

/// FNV-1a: the same in every build and on every machine, unlike std's `DefaultHasher`, so
/// every process maps a long name to the same key.
fn fnv1a(s: &str, seed: u64) -> u64 {
    s.bytes().fold(seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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

    fn enc(name: &str, max: usize) -> String {
        LockName::new(name).expect("valid").encoded(max)
    }

    #[test]
    fn encoding_keeps_names_inside_one_segment() {
        for name in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            ".hidden",
            "..",
            ".",
            "x%2F",
            "~",
            "~1",
        ] {
            let e = enc(name, 200);
            assert!(
                !e.contains('/') && !e.starts_with('.') && !e.contains('~'),
                "{name} -> {e}"
            );
        }
        assert_eq!(enc("a/b", 200), "a%2Fb");
        assert_ne!(enc("a/b", 200), enc("a%2Fb", 200), "encoding is injective");
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let (a, b) = (
            enc(&"x".repeat(1000), 180),
            enc(&format!("{}y", "x".repeat(999)), 180),
        );
        assert!(a.len() <= 180, "{}", a.len());
        assert_ne!(a, b);
        assert!(a.contains('~'));
        for max in 40..60 {
            let e = enc(&"/".repeat(500), max);
            assert!(e.len() <= max, "{max}: {e}");
            let stem = e.split('~').next().unwrap_or_default();
            assert_eq!(stem.len() % 3, 0, "a cut never splits an escape: {e}");
        }
    }

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
