//! The timing rules of a lease, in one place: the guard, the acquire loop and the model checker
//! (`model/`, through `__private::rules`) all call these, so the checked protocol cannot drift
//! from the code.

use crate::time::scale;
use std::time::Duration;

/// The part of a lease the holder treats as its own: a hundredth less than the ttl, so that a
/// waiter whose clock runs up to 1% fast still cannot take over before the holder knows.
pub fn lease_span(ttl: Duration) -> Duration {
    ttl - ttl / 100
}

/// When a lease that turned out to be ours began, at the latest: at the first send whose
/// outcome was unknown (it may have landed then), else at the send that was answered. Dates
/// both an acquisition and a confirmed renewal.
pub fn lease_start<T: Ord + Copy>(uncertain_since: Option<T>, sent: T) -> T {
    uncertain_since.map_or(sent, |u| u.min(sent))
}

/// How often a holder renews its lease: every third of the ttl (at least every millisecond).
pub fn renew_period(ttl: Duration) -> Duration {
    scale(ttl, 1, 3).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules() {
        let ttl = Duration::from_secs(30);
        assert_eq!(lease_span(ttl), Duration::from_millis(29_700));
        assert_eq!(lease_start(Some(3), 5), 3);
        assert_eq!(lease_start(None, 5), 5);
        assert_eq!(lease_start(Some(7), 5), 5);
        assert_eq!(renew_period(ttl), Duration::from_secs(10));
        assert_eq!(renew_period(Duration::ZERO), Duration::from_millis(1));
    }
}
