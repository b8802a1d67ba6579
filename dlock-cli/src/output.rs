//! What `status` and `list` print: the JSON schema (`--json`) and the text for people.

use dlock_runtime::Holder;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// One lock, as `dlock status --json` prints it (and `dlock list --json`, in an array).
///
/// The schema is stable: fields may be added, never renamed, removed or retyped.
#[derive(Debug, Serialize)]
pub struct LockJson {
    /// The lock name.
    pub name: String,
    /// Whether someone holds it.
    pub held: bool,
    /// The holder; `null` when free.
    pub holder: Option<HolderJson>,
}

/// The holder of a lock in [`LockJson`].
#[derive(Debug, Serialize)]
pub struct HolderJson {
    /// The owner id: 128 random bits (hex) per acquisition; `null` if the holder has not
    /// written its record yet.
    pub owner: Option<String>,
    /// The holder's host name; `null` if unknown.
    pub host: Option<String>,
    /// The holder's process id on that host; `null` if unknown.
    pub pid: Option<u32>,
    /// When it was acquired, RFC 3339 UTC by the holder's clock; `null` if not recorded.
    pub since: Option<String>,
    /// The holder's lease in milliseconds; `null` where the lock has no lease.
    pub ttl_ms: Option<u64>,
    /// The record version, for `dlock release --force NAME --if-version VERSION`.
    pub version: String,
    /// The fencing token; `null` where the backend issues none.
    pub fencing_token: Option<u64>,
}

impl LockJson {
    /// A lock and its holder, if any.
    pub fn new(name: &str, holder: Option<&Holder>) -> Self {
        LockJson {
            name: name.to_string(),
            held: holder.is_some(),
            holder: holder.map(|h| {
                let known = !h.owner.is_unknown();
                HolderJson {
                    owner: known.then(|| h.owner.id.clone()),
                    host: known.then(|| h.owner.host.clone()),
                    pid: known.then_some(h.owner.pid),
                    since: h
                        .acquired_at
                        .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    ttl_ms: h
                        .ttl
                        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                    version: h.version.to_string(),
                    fencing_token: h.fencing_token,
                }
            }),
        }
    }
}

/// Prints `value` as one line of JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        // Plain structs of strings and numbers always serialize.
        Err(e) => eprintln!("dlock: could not write JSON: {e}"),
    }
}

/// `pid 4242 on ci-7`, or what is known.
pub fn who(holder: &Holder) -> String {
    if holder.owner.is_unknown() {
        "an owner that has not written its record yet".to_string()
    } else {
        format!("pid {} on {}", holder.owner.pid, holder.owner.host)
    }
}

/// How long ago `at` was on this machine's clock (`None` if it is in the future here).
pub fn age(at: SystemTime) -> Option<Duration> {
    SystemTime::now().duration_since(at).ok()
}

/// A duration for people, to the second (`1m 12s`), or `0s`.
pub fn short(d: Duration) -> String {
    let secs = Duration::from_secs(d.as_secs());
    if secs.is_zero() {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(secs).to_string()
    }
}

/// `dlock status` for people.
pub fn status_text(name: &str, holder: Option<&Holder>, free_hint: &str) -> String {
    let Some(h) = holder else {
        return format!("lock `{name}` is free");
    };
    let mut lines = vec![format!("lock `{name}` is held")];
    let row = |label: &str, value: String| format!("  {label:<15}{value}");
    if h.owner.is_unknown() {
        lines.push(row(
            "owner:",
            "not written yet (a holder is starting)".into(),
        ));
    } else {
        lines.push(row("owner:", h.owner.id.clone()));
        lines.push(row("host:", h.owner.host.clone()));
        lines.push(row("pid:", h.owner.pid.to_string()));
    }
    lines.push(row(
        "since:",
        match h.acquired_at {
            Some(at) => format!(
                "{} (holder's clock{})",
                humantime::format_rfc3339_seconds(at),
                age(at)
                    .map(|a| format!(", {} ago by ours", short(a)))
                    .unwrap_or_default()
            ),
            None => "not recorded".into(),
        },
    ));
    lines.push(row(
        "ttl:",
        match h.ttl {
            Some(ttl) => humantime::format_duration(ttl).to_string(),
            None => "none (freed when its process exits)".into(),
        },
    ));
    lines.push(row("version:", h.version.to_string()));
    lines.push(row(
        "fencing token:",
        h.fencing_token.map_or_else(
            || "none (this backend issues none)".into(),
            |t| t.to_string(),
        ),
    ));
    lines.push(free_hint.to_string());
    lines.join("\n")
}

/// `dlock list` for people: a table, or a line saying there is nothing.
pub fn list_text(locks: &[(dlock_runtime::LockName, Holder)], prefix: &str) -> String {
    if locks.is_empty() {
        return if prefix.is_empty() {
            "no lock is held".to_string()
        } else {
            format!("no lock whose name starts with `{prefix}` is held")
        };
    }
    let header = [
        "NAME",
        "HOLDER",
        "SINCE (holder's clock)",
        "TTL",
        "VERSION",
        "TOKEN",
    ];
    let rows: Vec<[String; 6]> = locks
        .iter()
        .map(|(name, h)| {
            [
                name.to_string(),
                who(h),
                h.acquired_at.map_or("-".into(), |t| {
                    humantime::format_rfc3339_seconds(t).to_string()
                }),
                h.ttl
                    .map_or("-".into(), |t| humantime::format_duration(t).to_string()),
                h.version.to_string(),
                h.fencing_token.map_or("-".into(), |t| t.to_string()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out
    };
    let mut out = vec![line(&header.map(String::from))];
    out.extend(rows.iter().map(|r| line(r)));
    out.join("\n")
}

/// `text` quoted for a POSIX shell where it needs quoting, so printed commands can be pasted.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlock_runtime::{Owner, Version};

    fn holder() -> Holder {
        Holder {
            owner: Owner {
                id: "ab".repeat(16),
                host: "ci-7".into(),
                pid: 4242,
            },
            version: Version::new("3"),
            acquired_at: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            ttl: Some(Duration::from_secs(30)),
            fencing_token: Some(7),
        }
    }

    #[test]
    fn json_schema() {
        let json = serde_json::to_value(LockJson::new("deploy", Some(&holder()))).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "name": "deploy",
                "held": true,
                "holder": {
                    "owner": "ab".repeat(16),
                    "host": "ci-7",
                    "pid": 4242,
                    "since": "2023-11-14T22:13:20.123Z",
                    "ttl_ms": 30000,
                    "version": "3",
                    "fencing_token": 7
                }
            })
        );
        let free = serde_json::to_value(LockJson::new("deploy", None)).expect("json");
        assert_eq!(
            free,
            serde_json::json!({"name": "deploy", "held": false, "holder": null})
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("deploy-prod"), "deploy-prod");
        assert_eq!(shell_quote("s3://b/p"), "s3://b/p");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn list_table_lines_up() {
        let name = dlock_runtime::LockName::new("deploy").expect("name");
        let text = list_text(&[(name, holder())], "");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("HOLDER"), lines[1].find("pid 4242"));
    }
}
