//! Capped exponential backoff with jitter.

use std::time::Duration;

/// How long to wait between attempts: exponential from `initial` up to `max`, each delay
/// drawn uniformly from its upper half ("equal jitter") so that waiters spread out but still
/// make progress.
///
/// The random source is injectable for tests with [`Backoff::with_seed`]:
///
/// ```
/// use dlock_runtime::Backoff;
/// use std::time::Duration;
///
/// let policy = Backoff::new(Duration::from_millis(10), Duration::from_millis(80)).with_seed(7);
/// let a: Vec<Duration> = policy.delays().take(6).collect();
/// let b: Vec<Duration> = policy.delays().take(6).collect();
/// assert_eq!(a, b, "same seed, same delays");
/// assert!(a.iter().all(|d| *d >= Duration::from_millis(5) && *d <= Duration::from_millis(80)));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    seed: Option<u64>,
    poll_gap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(25), Duration::from_secs(1))
    }
}

impl Backoff {
    /// Delays start near `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            multiplier: 2.0,
            seed: None,
            poll_gap: Duration::ZERO,
        }
    }

    /// Grows delays by `multiplier` (at least 1) instead of 2.
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            2.0
        };
        self
    }

    /// Draws jitter from a generator seeded with `seed`, for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The shortest gap between a polling waiter's looks at the lock (stores without
    /// notifications: S3, GCS, DynamoDB, MongoDB, or PostgreSQL and Redis with notifications
    /// off). By default a waiter sleeps until the holder is due to finish (learned from the
    /// holds it sees) and then looks about once a store round trip: the next holder starts
    /// within a few round trips of a release. A larger gap trades that handoff for fewer
    /// requests, where requests are billed or rate-limited (the README's trade-off table shows
    /// both). Notified waiters and the backoff after failures are not affected.
    ///
    /// ```
    /// use dlock_runtime::Backoff;
    /// use std::time::Duration;
    ///
    /// let frugal = Backoff::default().with_poll_gap(Duration::from_millis(50));
    /// assert_eq!(frugal.poll_gap(), Duration::from_millis(50));
    /// assert_eq!(Backoff::default().poll_gap(), Duration::ZERO);
    /// ```
    pub fn with_poll_gap(mut self, gap: Duration) -> Self {
        self.poll_gap = gap;
        self
    }

    /// The shortest gap between a polling waiter's looks ([`Backoff::with_poll_gap`]).
    pub fn poll_gap(&self) -> Duration {
        self.poll_gap
    }

    /// An endless sequence of delays.
    pub fn delays(&self) -> Delays {
        Delays {
            base: self.initial,
            policy: self.clone(),
            rng: match self.seed {
                Some(seed) => fastrand::Rng::with_seed(seed),
                None => fastrand::Rng::new(),
            },
        }
    }
}

/// The delays of one [`Backoff`] run: an endless iterator.
///
/// ```
/// use dlock_runtime::Backoff;
/// use std::time::Duration;
///
/// let mut delays = Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).delays();
/// let first = delays.next_delay();
/// assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
/// assert!(delays.take(20).all(|d| d <= Duration::from_millis(40)));
/// ```
#[derive(Debug)]
pub struct Delays {
    base: Duration,
    policy: Backoff,
    rng: fastrand::Rng,
}

impl Delays {
    /// The next delay (there always is one).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = base.mul_f64(self.policy.multiplier).min(self.policy.max);
        base.mul_f64(0.5 + self.rng.f64() * 0.5)
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap() {
        let policy =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(100)).with_seed(1);
        let delays: Vec<u128> = policy.delays().take(10).map(|d| d.as_millis()).collect();
        assert!(delays[0] <= 10, "{delays:?}");
        assert!(delays[3] >= 40, "grew: {delays:?}");
        assert!(delays.iter().all(|d| *d <= 100), "capped: {delays:?}");
        assert!(
            delays[6..].iter().all(|d| *d >= 50),
            "stays in the upper half at the cap: {delays:?}"
        );
    }

    #[test]
    fn seeds_change_jitter() {
        let a: Vec<_> = Backoff::default().with_seed(1).delays().take(8).collect();
        let b: Vec<_> = Backoff::default().with_seed(2).delays().take(8).collect();
        assert_ne!(a, b);
    }
}
