//! Time arithmetic that never panics: every `Duration` a user can pass is accepted, and the
//! ones too long to add to a clock mean "no limit".

use std::time::Duration;
use tokio::time::Instant;

/// About thirty years: later than any deadline anyone waits for, early enough to add to any
/// clock reading without overflow.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `t + d`, or a moment thirty years away when that would overflow the clock.
pub(crate) fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(FAR)).unwrap_or(t)
}

/// `d` scaled by `num / den`, saturating.
pub(crate) fn scale(d: Duration, num: u32, den: u32) -> Duration {
    d.checked_mul(num)
        .map(|x| x / den.max(1))
        .unwrap_or_else(|| (d / den.max(1)).saturating_mul(num))
}

/// Milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch of a wall-clock time (0 before the epoch); for records
/// people read, never for decisions.
pub(crate) fn unix_millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// The wall-clock time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_unix_millis(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > after(now, Duration::from_secs(3600)));
        assert_eq!(scale(Duration::MAX, 2, 3), Duration::MAX / 3 * 2);
        assert_eq!(scale(Duration::from_secs(3), 1, 3), Duration::from_secs(1));
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
