//! When a waiter that cannot be notified looks at the lock again.
//!
//! Blind backoff either hammers the store or sleeps through a release. Instead, a waiter learns
//! how long holders of this lock hold it (from the owner changes it sees) and how long a request
//! takes, sleeps until the current holder is due to finish, then looks about once a round trip,
//! backing off if the holder runs late. Until it has seen a hold end, it backs off as usual.

use crate::backend::Holder;
use crate::backoff::Delays;
use crate::time::{after, scale};
use std::time::Duration;
use tokio::time::Instant;

/// The shortest and longest gap between the quick looks around a holder's expected end.
const QUICK_MIN: Duration = Duration::from_millis(2);
const QUICK_MAX: Duration = Duration::from_millis(250);

/// A waiter's polling plan for one acquisition.
#[derive(Debug)]
pub(crate) struct Schedule {
    backoff: Delays,
    /// The holder seen last, and when it was first seen.
    owner: Option<(String, Instant)>,
    /// How long a hold lasts, as seen so far (a moving average).
    hold: Option<Duration>,
    /// How long a request takes (a moving average).
    round_trip: Option<Duration>,
    /// Quick looks since the current holder was due.
    late_looks: u32,
    /// The shortest gap between looks ([`crate::Backoff::with_poll_gap`]).
    gap: Duration,
}

/// The moving average of `old` and `new`, weighing the new sample a quarter.
fn average(old: Option<Duration>, new: Duration) -> Duration {
    match old {
        None => new,
        Some(old) => scale(old, 3, 4) + scale(new, 1, 4),
    }
}

impl Schedule {
    pub fn new(policy: &crate::Backoff, hold: Option<Duration>) -> Self {
        Schedule {
            backoff: policy.delays(),
            owner: None,
            hold,
            round_trip: None,
            late_looks: 0,
            gap: policy.poll_gap(),
        }
    }

    /// The hold length learned so far (kept by this process for the next acquisition).
    pub fn hold(&self) -> Option<Duration> {
        self.hold
    }

    /// A request that took `round_trip` found the lock held by `holder`.
    pub fn observe(&mut self, holder: &Holder, round_trip: Duration) {
        let now = Instant::now();
        self.round_trip = Some(average(self.round_trip, round_trip));
        match &self.owner {
            Some((id, _)) if *id == holder.owner.id => {}
            Some((_, since)) => {
                // The previous holder's hold ended between our last two looks.
                self.hold = Some(average(self.hold, now - *since));
                self.owner = Some((holder.owner.id.clone(), now));
                self.late_looks = 0;
            }
            None => self.owner = Some((holder.owner.id.clone(), now)),
        }
    }

    /// The gap between quick looks: about a round trip, or the configured gap if longer.
    fn quick(&self) -> Duration {
        self.round_trip
            .map_or(QUICK_MAX, |rt| rt.clamp(QUICK_MIN, QUICK_MAX))
            .max(self.gap)
    }

    /// When to look next.
    pub fn next(&mut self) -> Instant {
        let now = Instant::now();
        let (Some(hold), Some((_, since))) = (self.hold, &self.owner) else {
            return after(now, self.backoff.next_delay());
        };
        let quick = self.quick();
        let due = after(*since, hold);
        if now + quick < due {
            // Sleep until just before the holder is due to finish.
            return due - quick;
        }
        // Due (or late): look about once a round trip, backing off as the holder runs late,
        // never waiting longer than a tenth of a hold (or a second).
        let step = quick
            .saturating_mul(1 << self.late_looks.min(10))
            .min((hold / 10).max(quick))
            .min(Duration::from_secs(1));
        self.late_looks += 1;
        after(now, step)
    }

    /// A request failed: back off.
    pub fn failed(&mut self) -> Instant {
        after(Instant::now(), self.backoff.next_delay())
    }

    /// How long a request takes, as seen so far.
    pub fn round_trip(&self) -> Option<Duration> {
        self.round_trip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Owner, Version};

    fn holder(id: &str) -> Holder {
        Holder {
            owner: Owner {
                id: id.into(),
                ..Owner::generate()
            },
            version: Version::new("1"),
            acquired_at: None,
            ttl: None,
            fencing_token: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_sleep_until_the_holder_is_due_then_look_each_round_trip() {
        let mut s = Schedule::new(&crate::Backoff::default().with_seed(1), None);
        let rt = Duration::from_millis(10);
        s.observe(&holder("a"), rt);
        assert!(
            s.next() - Instant::now() <= Duration::from_millis(25),
            "backoff first"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.observe(&holder("b"), rt);
        assert_eq!(s.hold(), Some(Duration::from_millis(100)));
        // b is due 100 ms after it was first seen: sleep until one round trip before.
        assert_eq!(s.next() - Instant::now(), Duration::from_millis(90));
        tokio::time::sleep(Duration::from_millis(95)).await;
        s.observe(&holder("b"), rt);
        let steps: Vec<Duration> = (0..3).map(|_| s.next() - Instant::now()).collect();
        assert_eq!(
            steps,
            [rt, Duration::from_millis(10), Duration::from_millis(10)],
            "capped at a tenth of the hold"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_gap_spaces_the_looks_around_the_holders_end() {
        let policy = crate::Backoff::default()
            .with_seed(1)
            .with_poll_gap(Duration::from_millis(30));
        let mut s = Schedule::new(&policy, Some(Duration::from_millis(100)));
        let rt = Duration::from_millis(10);
        s.observe(&holder("a"), rt);
        // Due 100 ms after it was first seen: sleep until one gap (not one round trip) before.
        assert_eq!(s.next() - Instant::now(), Duration::from_millis(70));
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.observe(&holder("a"), rt);
        let steps: Vec<Duration> = (0..3).map(|_| s.next() - Instant::now()).collect();
        assert_eq!(
            steps,
            [Duration::from_millis(30); 3],
            "never closer than the gap"
        );
    }
}
