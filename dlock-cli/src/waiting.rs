//! While `dlock run` waits on a terminal: one status line on stderr, updated in place (who
//! holds the lock, for how long, how long we have waited, the timeout).

use crate::cli::Timeout;
use crate::logging;
use crate::output::{age, short, who};
use dlock_runtime::{Backend, Error, Holder, LockGuard, LockName};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// An acquisition that takes less than this shows nothing: most locks are free.
const QUIET_START: Duration = Duration::from_millis(300);
/// How often the status line looks at the holder (a read: it never disturbs the lock).
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The longest one look may take before the line shows what it knew.
const LOOK_LIMIT: Duration = Duration::from_secs(3);

/// Runs `acquire`; if it takes a while and `show` is set (stderr is a terminal and `--quiet` is
/// not), shows the status line meanwhile.
pub async fn acquire_with_status(
    acquire: impl Future<Output = Result<LockGuard, Error>>,
    backend: Arc<dyn Backend>,
    name: &LockName,
    timeout: Timeout,
    show: bool,
) -> Result<LockGuard, Error> {
    if !show {
        return acquire.await;
    }
    let started = Instant::now();
    tokio::pin!(acquire);
    tokio::select! {
        result = &mut acquire => return result,
        () = tokio::time::sleep(QUIET_START) => {}
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message(name, None, started.elapsed(), timeout));
    bar.enable_steady_tick(Duration::from_millis(100));
    logging::set_status_line(&bar);
    let result = tokio::select! {
        result = &mut acquire => result,
        () = show_status(&bar, &*backend, name, started, timeout) => acquire.await,
    };
    logging::clear_status_line();
    result
}

/// Updates the line every second, forever (until the acquisition ends).
async fn show_status(
    bar: &ProgressBar,
    backend: &dyn Backend,
    name: &LockName,
    started: Instant,
    timeout: Timeout,
) {
    let mut holder: Option<Holder> = None;
    loop {
        let trouble = match tokio::time::timeout(LOOK_LIMIT, backend.inspect(name)).await {
            Ok(Ok(now)) => {
                holder = now;
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not look at the holder");
                Some(if e.is_temporary() {
                    "the backend does not answer (retrying)"
                } else {
                    "cannot read the holder"
                })
            }
            Err(_) => Some("the backend does not answer (retrying)"),
        };
        let mut line = message(name, holder.as_ref(), started.elapsed(), timeout);
        if let Some(trouble) = trouble {
            line = format!("{line}; {trouble}");
        }
        bar.set_message(line);
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// `waiting for lock `deploy`: held by pid 4242 on ci-7 for 1m 12s (its clock); waited 12s of 10m`
fn message(name: &LockName, holder: Option<&Holder>, waited: Duration, timeout: Timeout) -> String {
    let held = match holder {
        Some(h) => {
            let since = h
                .acquired_at
                .and_then(age)
                .map(|a| format!(" for {} (by its clock)", short(a)))
                .unwrap_or_default();
            format!("held by {}{since}", who(h))
        }
        None => "its holder is releasing it or unknown".to_string(),
    };
    let limit = match timeout {
        Timeout::Forever => "no timeout".to_string(),
        Timeout::For(t) => format!("timeout {}", humantime::format_duration(t)),
    };
    format!(
        "waiting for lock `{name}`: {held}; waited {} ({limit})",
        short(waited)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlock_runtime::{Owner, Version};
    use std::time::SystemTime;

    #[test]
    fn the_line_says_who_and_how_long() {
        let name = LockName::new("deploy").expect("name");
        let holder = Holder {
            owner: Owner {
                id: "x".into(),
                host: "ci-7".into(),
                pid: 4242,
            },
            version: Version::new("1"),
            acquired_at: Some(SystemTime::now() - Duration::from_secs(72)),
            ttl: None,
            fencing_token: None,
        };
        let line = message(
            &name,
            Some(&holder),
            Duration::from_secs(12),
            Timeout::For(Duration::from_secs(600)),
        );
        assert!(line.starts_with("waiting for lock `deploy`: held by pid 4242 on ci-7 for 1m 1"));
        assert!(line.ends_with("waited 12s (timeout 10m)"), "{line}");
    }
}
