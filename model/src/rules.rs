//! The runtime's pure timing rules, as the model uses them.
//!
//! Each function here is a copy of a private rule of `dlock-runtime` and must stay identical
//! to it. The trace-agreement tests (`tests/trace_agreement.rs`) run the real runtime and fail
//! if the two disagree on the deadlines they produce; the TODOs name the `#[doc(hidden)] pub`
//! function the runtime should expose so that this module can call it instead of copying it.

use std::time::Duration;

/// The part of a lease the holder treats as its own: a hundredth less than the ttl.
///
/// TODO(issue 11): call `dlock_runtime::__private::rules::lease_span` once the runtime exposes
/// `guard::lease_span` there (it is `fn lease_span(ttl: Duration) -> Duration` in
/// `dlock-runtime/src/guard.rs`).
pub fn lease_span(ttl: Duration) -> Duration {
    ttl - ttl / 100
}

/// When the lease of a record that turned out to be ours began at the latest: at the first send
/// whose outcome was unknown (it may have landed then), else at this attempt's send. The same
/// rule dates an acquisition (`Attempts::lease_start` in `lock.rs`) and a confirmed renewal
/// (`uncertain_since.take().map_or(sent, |u| u.min(sent))` in `guard.rs`'s `renew`).
///
/// TODO(issue 11): call `dlock_runtime::__private::rules::lease_start` once the runtime has it
/// (generic over the clock type, used by both `Attempts::lease_start` and `renew`).
pub fn lease_start<T: Ord + Copy>(uncertain_since: Option<T>, sent: T) -> T {
    uncertain_since.map_or(sent, |u| u.min(sent))
}

/// How often a holder renews: a third of the ttl (at least 1 ms).
///
/// TODO(issue 11): call `dlock_runtime::__private::rules::renew_period` (today inline in
/// `guard.rs`'s `renew`: `scale(shared.ttl, 1, 3).max(Duration::from_millis(1))`).
pub fn renew_period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

/// When a waiter that first saw a version at `since` may take it over: after the holder's whole
/// lease on the waiter's own clock (`Watch::stale_at` in `lock.rs`).
///
/// TODO(issue 11): call `dlock_runtime::__private::rules::stale_at` (today `Watch::stale_at`,
/// `after(self.since, self.lease)`).
pub fn stale_at<T: std::ops::Add<Duration, Output = T>>(since: T, lease: Duration) -> T {
    since + lease
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_the_runtime_documentation() {
        let ttl = Duration::from_secs(30);
        assert_eq!(lease_span(ttl), Duration::from_millis(29_700));
        assert_eq!(lease_start(Some(3), 5), 3);
        assert_eq!(lease_start(None, 5), 5);
        assert_eq!(lease_start(Some(7), 5), 5);
        assert_eq!(renew_period(ttl), Duration::from_secs(10));
        assert_eq!(
            stale_at(Duration::from_secs(1), ttl),
            Duration::from_secs(31)
        );
    }
}
