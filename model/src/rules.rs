//! The runtime's timing rules, as the model uses them: the lease span, the lease start and the
//! renewal period are the runtime's own functions (`dlock_runtime::__private::rules`), so the
//! model cannot drift from them. The trace-agreement tests (`tests/trace_agreement.rs`) check
//! the rest against recorded runs of the real runtime.

use std::time::Duration;

pub use dlock_runtime::__private::rules::{lease_span, lease_start, renew_period};

/// When a waiter that first saw a version at `since` may take it over: after the holder's whole
/// lease on the waiter's own clock (`Watch::stale_at` in `lock.rs`).
/// (The runtime adds with saturation on its `Instant`; the model's ticks never get near it.)
pub fn stale_at<T: std::ops::Add<Duration, Output = T>>(since: T, lease: Duration) -> T {
    since + lease
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_version_turns_stale_after_the_whole_lease() {
        let ttl = Duration::from_secs(30);
        assert_eq!(
            stale_at(Duration::from_secs(1), ttl),
            Duration::from_secs(31)
        );
    }
}
