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
    /// The holder seen last, and when its hold began as far as we can tell: the middle of the
    /// gap between the look that first saw it and the look before.
    owner: Option<(String, Instant)>,
    /// When the last look was answered.
    last_look: Option<Instant>,
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
            last_look: None,
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
        let previous = self.last_look.replace(now);
        self.round_trip = Some(average(self.round_trip, round_trip));
        match &self.owner {
            Some((id, _)) if *id == holder.owner.id => {}
            Some((_, since)) => {
                // The previous holder's hold ended, and this one's began, between our last two
                // looks: count from the middle of that gap. (Counting from this look, a waiter
                // that slept through the change would expect the new holder a whole gap late,
                // and look in the middle of every later hold, never in the moment between.)
                let changed = previous.map_or(now, |p| p + (now - p) / 2);
                self.hold = Some(average(self.hold, changed - *since));
                self.owner = Some((holder.owner.id.clone(), changed));
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
        tokio::time::sleep(Duration::from_millis(90)).await;
        s.observe(&holder("a"), rt);
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.observe(&holder("b"), rt);
        // a's hold ended, and b's began, between the last two looks: in the middle, 100 ms
        // after a was first seen.
        assert_eq!(s.hold(), Some(Duration::from_millis(100)));
        // b is due 100 ms after it began (10 ms ago): sleep until one round trip before.
        assert_eq!(s.next() - Instant::now(), Duration::from_millis(80));
        tokio::time::sleep(Duration::from_millis(85)).await;
        s.observe(&holder("b"), rt);
        let steps: Vec<Duration> = (0..3).map(|_| s.next() - Instant::now()).collect();
        assert_eq!(
            steps,
            [rt, Duration::from_millis(10), Duration::from_millis(10)],
            "capped at a tenth of the hold"
        );
    }

    /// A waiter that slept through a change of holder counts the new hold from the middle of
    /// the gap between its looks, not from the look that saw it: counting from the look, it
    /// expected every holder a whole gap late and looked in the middle of the next hold each
    /// time, while the releaser took the lock again (74-92% of handoffs on MongoDB, 4 x 25).
    #[tokio::test(start_paused = true)]
    async fn a_change_seen_late_is_placed_between_the_looks() {
        let mut s = Schedule::new(
            &crate::Backoff::default().with_seed(1),
            Some(Duration::from_millis(100)),
        );
        let rt = Duration::from_millis(2);
        s.observe(&holder("a"), rt);
        // The next look comes 60 ms late: b has held the lock for ~30 ms already.
        tokio::time::sleep(Duration::from_millis(160)).await;
        s.observe(&holder("b"), rt);
        // b began ~80 ms after the first look (the middle of the gap), and holds last ~95 ms
        // now (100 averaged with a's 80 ms as seen): due at 175 ms, so look at 173 ms, 13 ms
        // from now (counted from this look: 253 ms, 93 ms from now).
        assert_eq!(s.next() - Instant::now(), Duration::from_millis(13));
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
