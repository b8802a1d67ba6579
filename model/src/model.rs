//! The state machine: clients running the runtime's acquire loop, guard and release over an
//! unreliable network to a store with atomic conditional writes. See the crate docs for what it
//! models and what it leaves out.

use crate::rules;
use stateright::{Model, Property};
use std::time::Duration;

/// A client index; also the owner id of its (single) acquisition.
pub type ClientId = u8;

/// Clock units per tick at the nominal rate: a client's clock reads `t * rate` after `t` ticks
/// of store time, with `rate` in `[UNITS - drift, UNITS + drift]`.
pub const UNITS: u32 = 1000;

/// Where a lease's start is dated from (the rule under test; `FirstSend` is the runtime's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseClockFrom {
    /// The first send whose outcome was unknown (it may have landed then): the runtime's rule.
    FirstSend,
    /// Mutation: the send of the attempt that was answered, ignoring earlier uncertain sends.
    LastAttempt,
}

/// What the store's conditional delete checks (the rule under test; `Version` is the
/// protocol's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReleaseCheck {
    /// Delete only the record at the lease's version and owner: the protocol's rule.
    Version,
    /// Mutation: delete whatever record is there ("release without owner check").
    None,
}

/// How the store issues fencing tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenRule {
    /// One counter per lock name, kept across release: the contract.
    Counter,
    /// Mutation: the replaced record's token plus one, restarting at 1 on a free lock.
    PerRecord,
}

/// The holder's safety margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Margin {
    /// `rules::lease_span`: the runtime's 1%.
    Runtime,
    /// Mutation: the holder believes for the whole ttl.
    None,
}

/// The kinds of network fault explored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultKinds {
    /// Processed, answer lost ([`Action::LoseAnswer`]).
    pub lose: bool,
    /// Processed, answer late ([`Action::Delay`]).
    pub delay: bool,
    /// Request duplicated ([`Action::Duplicate`]).
    pub duplicate: bool,
}

impl FaultKinds {
    /// Every kind.
    pub const ALL: FaultKinds = FaultKinds {
        lose: true,
        delay: true,
        duplicate: true,
    };
}

/// The model's bounds and rules. [`LockModel::small`] is what CI checks.
#[derive(Clone, Debug)]
pub struct LockModel {
    /// Clients (2 or 3); each makes one acquisition.
    pub clients: u8,
    /// The lease, in ticks.
    pub ttl_ticks: u16,
    /// What one tick of store time stands for (only the runtime's rules see durations).
    pub tick: Duration,
    /// Store time stops here.
    pub max_time: u16,
    /// Clock drift bound, in units per tick of [`UNITS`] (5 = ±0.5%); each client's rate is
    /// chosen from `{UNITS - drift, UNITS, UNITS + drift}` in the initial states.
    pub drift: u32,
    /// Network faults for the whole run, of the kinds in `fault_kinds`.
    pub faults: u8,
    /// Which faults the network may inject.
    pub fault_kinds: FaultKinds,
    /// Acquire attempts (top-level sends of the acquire loop) per client.
    pub attempts: u8,
    /// Renewal sends per client.
    pub renewals: u8,
    /// Release sends per client (`release_with_retries`).
    pub release_tries: u8,
    /// After a busy answer, poll with reads (S3, GCS) instead of writes.
    pub poll_with_reads: bool,
    /// The store also expires records `ttl` after their last write, in store time (Redis,
    /// etcd); without it only the client-side takeover frees a dead holder's lock.
    pub store_expiry: bool,
    /// Prompt scheduling: store time does not pass while a request is unprocessed, an awaited
    /// answer undelivered, or a client's next step due. Needed for the bounded-liveness
    /// property; without it a client may pause for any time (a GC or VM pause).
    pub prompt: bool,
    /// Holders may crash. (For safety a crash adds nothing to a client that pauses forever;
    /// it matters for the liveness property, which only counts crashed holders.)
    pub may_crash: bool,
    /// Requests may fail before reaching the store ([`Action::Fail`]). Off when exploring: a
    /// request abandoned by its caller may already land at any later moment or never before
    /// the end, which covers it; on for replaying traces with `Fault::Hang` or `Fault::Fail`.
    pub fail_requests: bool,
    /// The lease-start rule.
    pub lease_clock: LeaseClockFrom,
    /// The release rule.
    pub release_check: ReleaseCheck,
    /// The fencing-token rule.
    pub tokens: TokenRule,
    /// The holder's margin.
    pub margin: Margin,
}

impl LockModel {
    /// The bounds CI checks in debug builds: 2 clients, a 3-tick lease, one fault.
    pub fn small() -> Self {
        LockModel {
            clients: 2,
            ttl_ticks: 3,
            tick: Duration::from_secs(1),
            max_time: 7,
            drift: 5,
            faults: 1,
            fault_kinds: FaultKinds::ALL,
            attempts: 3,
            renewals: 1,
            release_tries: 1,
            poll_with_reads: false,
            store_expiry: false,
            prompt: false,
            may_crash: false,
            fail_requests: false,
            lease_clock: LeaseClockFrom::FirstSend,
            release_check: ReleaseCheck::Version,
            tokens: TokenRule::Counter,
            margin: Margin::Runtime,
        }
    }

    /// Larger bounds for `cargo run --release -p dlock-model -- large`: 3 clients, two faults.
    pub fn large() -> Self {
        LockModel {
            clients: 3,
            max_time: 8,
            faults: 2,
            ..Self::small()
        }
    }

    /// A configuration for the bounded-liveness property: prompt scheduling, a holder that
    /// crashes, a waiter with enough attempts.
    pub fn liveness() -> Self {
        LockModel {
            prompt: true,
            may_crash: true,
            max_time: 12,
            attempts: 6,
            faults: 1,
            ..Self::small()
        }
    }

    /// The lease as a duration.
    pub fn ttl(&self) -> Duration {
        self.tick * u32::from(self.ttl_ticks)
    }

    /// `d` in clock units (floor).
    pub fn units(&self, d: Duration) -> u32 {
        let n = d.as_nanos() * u128::from(UNITS) / self.tick.as_nanos().max(1);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// `u` clock units as a duration.
    pub fn duration(&self, u: u32) -> Duration {
        let nanos = self.tick.as_nanos() * u128::from(u) / u128::from(UNITS);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The holder's deadline for a lease that began at `start` (client clock units).
    pub fn deadline(&self, start: u32) -> u32 {
        let span = match self.margin {
            Margin::Runtime => rules::lease_span(self.ttl()),
            Margin::None => self.ttl(),
        };
        start.saturating_add(self.units(span))
    }

    fn lease_start(&self, uncertain_since: Option<u32>, sent: u32) -> u32 {
        match self.lease_clock {
            LeaseClockFrom::FirstSend => rules::lease_start(uncertain_since, sent),
            LeaseClockFrom::LastAttempt => sent,
        }
    }

    fn stale_at(&self, since: u32) -> u32 {
        let since = self.duration(since);
        self.units(rules::stale_at(since, self.ttl()))
    }

    fn renew_due(&self, last_start: u32) -> u32 {
        last_start.saturating_add(self.units(rules::renew_period(self.ttl())))
    }

    /// The bound of the liveness property: a crashed holder's record is gone or replaced this
    /// many ticks after its last write (two watches of a ttl each, rounding and drift).
    pub fn liveness_bound(&self) -> u16 {
        2 * self.ttl_ticks + 3
    }
}

/// A record as the store holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// Whose it is.
    pub owner: ClientId,
    /// A new version on every write.
    pub version: u8,
    /// The fencing token of the acquisition that wrote it first.
    pub token: u8,
    /// When it was last written, in store ticks (also the start of its store-side expiry).
    pub written_at: u16,
}

/// The store: one lock name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Store {
    /// The lock's record, if any.
    pub record: Option<Record>,
    /// The last version issued.
    pub last_version: u8,
    /// The last fencing token issued.
    pub last_token: u8,
}

/// A request to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Write if there is no record (create-if-absent).
    Create,
    /// Write if the record has this version (a takeover).
    Replace(u8),
    /// Rewrite our record if it has this version (a renewal).
    Renew(u8),
    /// Read the record.
    Read,
    /// Delete the record if it has this version (and is ours).
    Delete(u8),
}

/// A store's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    /// Written: the record's new version and token.
    Written {
        /// New version.
        version: u8,
        /// Its token.
        token: u8,
    },
    /// The condition failed.
    Refused,
    /// The record read: owner, version, token.
    Record(Option<(ClientId, u8, u8)>),
    /// Deleted, or already free (`true`); not at that version (`false`).
    Deleted(bool),
    /// No answer: the caller sees a temporary error.
    Error,
}

/// A message on the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// A request from a client.
    Request {
        /// From whom.
        from: ClientId,
        /// The client's call id.
        id: u8,
        /// What.
        op: Op,
    },
    /// An answer to a client.
    Answer {
        /// To whom.
        to: ClientId,
        /// The call it answers.
        id: u8,
        /// What.
        answer: Answer,
    },
}

/// A waiter's watch of a holder version (`Watch` in `lock.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Watch {
    /// The version seen.
    pub version: u8,
    /// When first seen, on the waiter's clock.
    pub since: u32,
}

/// Where an acquisition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcqStep {
    /// Between attempts; the next one may start at any time and is due at `due`.
    Waiting {
        /// On the client's clock.
        due: u32,
    },
    /// A conditional write in flight; `again` for the protocol's one extra free write.
    Write {
        /// Call id.
        id: u8,
        /// Whether this is the extra write after a read-back found no record.
        again: bool,
        /// Whether the attempt is a takeover (its write replaces a stale version).
        takeover: bool,
    },
    /// The protocol's read-back after a refused write.
    ReadBack {
        /// Call id.
        id: u8,
        /// As in `Write`.
        again: bool,
        /// As in `Write`.
        takeover: bool,
    },
    /// A poll with a read.
    Poll {
        /// Call id.
        id: u8,
    },
}

/// The acquire loop's state (`acquire_loop` and `Attempts` in `lock.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Acquiring {
    /// What it does now.
    pub step: AcqStep,
    /// When the current attempt was sent.
    pub sent: u32,
    /// When the first write whose outcome is unknown was sent.
    pub uncertain_since: Option<u32>,
    /// The holder version being watched.
    pub watch: Option<Watch>,
    /// The version to replace in the next write (a takeover).
    pub replace: Option<u8>,
    /// Whether the next attempt writes (else it reads).
    pub write: bool,
}

/// Where a held lock's renewal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldStep {
    /// No renewal in flight.
    Idle,
    /// A conditional renewal write in flight, sent at `sent`.
    Renew {
        /// Call id.
        id: u8,
        /// Send time on the client's clock.
        sent: u32,
    },
    /// The read-back of a refused renewal.
    RenewRead {
        /// Call id.
        id: u8,
        /// The renewal's send time.
        sent: u32,
    },
}

/// A held lock: the guard (`Shared` and `renew` in `guard.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holding {
    /// The record version last written.
    pub version: u8,
    /// The acquisition's fencing token.
    pub token: u8,
    /// `valid_until` on the client's clock.
    pub deadline: u32,
    /// When the current lease began (renewals are due a third of a ttl after).
    pub last_start: u32,
    /// The first renewal send whose outcome is unknown since the last confirmed one.
    pub uncertain_since: Option<u32>,
    /// A renewal failed: retry (after a backoff).
    pub retrying: bool,
    /// The renewal in flight.
    pub step: HoldStep,
}

/// Where a release is (`release_with_retries` over the protocol's `release`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelStep {
    /// Between tries.
    Waiting,
    /// Delete at the lease's version (`second`: at the version read back).
    Delete {
        /// Call id.
        id: u8,
        /// The read-back's delete.
        second: bool,
    },
    /// Read-back after a refused delete.
    ReadBack {
        /// Call id.
        id: u8,
    },
}

/// A client's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Taking the lock.
    Acquiring(Acquiring),
    /// Holding it.
    Holding(Holding),
    /// Releasing it (the body has ended).
    Releasing {
        /// The lease's version.
        version: u8,
        /// What the release does now.
        step: RelStep,
    },
    /// Released, or gave up releasing.
    Done,
    /// The guard was lost; it never writes again.
    Lost,
    /// Gave up acquiring.
    GaveUp,
    /// Crashed (while holding); its requests in flight may still land.
    Crashed,
}

/// One client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// Clock units per tick of store time.
    pub rate: u32,
    /// The next call id.
    pub next_id: u8,
    /// Acquire attempts left.
    pub attempts_left: u8,
    /// Renewal sends left.
    pub renewals_left: u8,
    /// Release sends left.
    pub release_left: u8,
    /// What it does.
    pub phase: Phase,
}

impl Client {
    /// The client's clock at store time `t`.
    pub fn clock(&self, t: u16) -> u32 {
        u32::from(t) * self.rate
    }

    /// Whether the client believes it holds the lock at store time `t`: its guard's deadline
    /// has not passed on its own clock.
    pub fn believes(&self, t: u16) -> bool {
        matches!(self.phase, Phase::Holding(h) if self.clock(t) < h.deadline)
    }

    /// The call id the client waits on, if any.
    pub fn awaiting(&self) -> Option<u8> {
        match self.phase {
            Phase::Acquiring(a) => match a.step {
                AcqStep::Write { id, .. } | AcqStep::ReadBack { id, .. } | AcqStep::Poll { id } => {
                    Some(id)
                }
                AcqStep::Waiting { .. } => None,
            },
            Phase::Holding(h) => match h.step {
                HoldStep::Renew { id, .. } | HoldStep::RenewRead { id, .. } => Some(id),
                HoldStep::Idle => None,
            },
            Phase::Releasing { step, .. } => match step {
                RelStep::Delete { id, .. } | RelStep::ReadBack { id } => Some(id),
                RelStep::Waiting => None,
            },
            _ => None,
        }
    }
}

/// Facts the properties look at, recorded as the run goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// A takeover landed while the replaced owner still believed it held.
    pub takeover_before_loss: bool,
    /// A renewal or delete changed a record that was not the sender's.
    pub stale_write: bool,
    /// A fencing token was issued that is not above every earlier one.
    pub token_regress: bool,
    /// The highest token issued.
    pub max_token: u8,
    /// A crashed holder's record was replaced by another client's.
    pub took_over_crashed: bool,
    /// Clients that crashed, as a bit set.
    pub crashed: u8,
}

/// The model's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Store time, in ticks.
    pub t: u16,
    /// The clients.
    pub clients: Vec<Client>,
    /// The store.
    pub store: Store,
    /// Messages in flight, sorted (a multiset).
    pub net: Vec<Msg>,
    /// Network faults left.
    pub faults_left: u8,
    /// Recorded facts.
    pub ghost: Ghost,
}

impl State {
    /// How many clients believe they hold the lock now.
    pub fn believers(&self) -> usize {
        self.clients.iter().filter(|c| c.believes(self.t)).count()
    }
}

/// A step of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// One tick of store time passes (every client's clock advances at its rate).
    Tick,
    /// The client starts its next call: an acquire attempt (write or read, as the loop says)
    /// or a renewal.
    Send(ClientId),
    /// The store processes a request, or a client receives an answer.
    Deliver(Msg),
    /// The store processes a request and its answer stays on the network, to be delivered
    /// later (a late answer). Without this fault an answer reaches its caller at once.
    Delay(Msg),
    /// The store processes a request but its answer is lost (the caller sees an error).
    LoseAnswer(Msg),
    /// A request fails before reaching the store.
    Fail(Msg),
    /// The network duplicates a request (it may land twice, the second time late).
    Duplicate(Msg),
    /// The client stops waiting for its call (its deadline passed; the request may still land).
    Abandon(ClientId),
    /// The body ends: the guard is released (or, if lost, left alone).
    Release(ClientId),
    /// The holder crashes.
    Crash(ClientId),
}

impl LockModel {
    fn store_view(&self, s: &State) -> Option<Record> {
        let r = s.store.record?;
        if self.store_expiry && s.t >= r.written_at.saturating_add(self.ttl_ticks) {
            return None;
        }
        Some(r)
    }

    /// A new acquisition's record replaces `old` (a takeover, or a create over an expired
    /// record): check the old owner no longer believes, and issue the token.
    fn acquire_record(&self, s: &mut State, from: ClientId, old: Option<Record>) -> Answer {
        if let Some(old) = s.store.record.or(old)
            && old.owner != from
        {
            if s.clients[usize::from(old.owner)].believes(s.t) {
                s.ghost.takeover_before_loss = true;
            }
            if s.ghost.crashed & (1 << old.owner) != 0 {
                s.ghost.took_over_crashed = true;
            }
        }
        let token = match self.tokens {
            TokenRule::Counter => s.store.last_token + 1,
            TokenRule::PerRecord => old.map_or(1, |r| r.token + 1),
        };
        if token <= s.ghost.max_token {
            s.ghost.token_regress = true;
        }
        s.ghost.max_token = s.ghost.max_token.max(token);
        s.store.last_token = s.store.last_token.max(token);
        s.store.last_version += 1;
        let version = s.store.last_version;
        s.store.record = Some(Record {
            owner: from,
            version,
            token,
            written_at: s.t,
        });
        Answer::Written { version, token }
    }

    /// The store's atomic conditional operations.
    fn process(&self, s: &mut State, from: ClientId, op: Op) -> Answer {
        let current = self.store_view(s);
        match op {
            Op::Create => match current {
                None => {
                    let old = s.store.record;
                    self.acquire_record(s, from, old)
                }
                Some(_) => Answer::Refused,
            },
            Op::Replace(v) => match current {
                Some(r) if r.version == v => self.acquire_record(s, from, Some(r)),
                _ => Answer::Refused,
            },
            Op::Renew(v) => match current {
                Some(r) if r.version == v => {
                    if r.owner != from {
                        s.ghost.stale_write = true;
                    }
                    s.store.last_version += 1;
                    let version = s.store.last_version;
                    s.store.record = Some(Record {
                        version,
                        written_at: s.t,
                        ..r
                    });
                    Answer::Written {
                        version,
                        token: r.token,
                    }
                }
                _ => Answer::Refused,
            },
            Op::Read => Answer::Record(current.map(|r| (r.owner, r.version, r.token))),
            Op::Delete(v) => match current {
                None => {
                    s.store.record = None;
                    Answer::Deleted(true)
                }
                Some(r) => {
                    let allowed = match self.release_check {
                        ReleaseCheck::Version => r.version == v && r.owner == from,
                        ReleaseCheck::None => true,
                    };
                    if allowed {
                        if r.owner != from {
                            s.ghost.stale_write = true;
                        }
                        s.store.record = None;
                    }
                    Answer::Deleted(allowed)
                }
            },
        }
    }

    fn send(&self, s: &mut State, c: ClientId, op: Op) -> u8 {
        let client = &mut s.clients[usize::from(c)];
        let id = client.next_id;
        client.next_id += 1;
        insert(&mut s.net, Msg::Request { from: c, id, op });
        id
    }

    /// The acquire loop's next attempt: a write (conditional on `replace`, if set) or a read.
    fn start_attempt(&self, s: &mut State, c: ClientId, mut a: Acquiring) {
        let now = s.clients[usize::from(c)].clock(s.t);
        s.clients[usize::from(c)].attempts_left -= 1;
        a.sent = now;
        if a.write {
            let takeover = a.replace.is_some();
            let op = match a.replace.take() {
                Some(v) => Op::Replace(v),
                None => Op::Create,
            };
            let id = self.send(s, c, op);
            a.step = AcqStep::Write {
                id,
                again: false,
                takeover,
            };
        } else {
            let id = self.send(s, c, Op::Read);
            a.step = AcqStep::Poll { id };
        }
        s.clients[usize::from(c)].phase = Phase::Acquiring(a);
    }

    /// The lock is ours: a guard whose lease began at `lease_start` (`LockGuard::start`).
    fn acquired(&self, s: &mut State, c: ClientId, a: Acquiring, version: u8, token: u8) {
        let start = self.lease_start(a.uncertain_since, a.sent);
        s.clients[usize::from(c)].phase = Phase::Holding(Holding {
            version,
            token,
            deadline: self.deadline(start),
            last_start: start,
            uncertain_since: None,
            retrying: false,
            step: HoldStep::Idle,
        });
    }

    /// After an attempt: wait until `due`, or give up when out of attempts.
    fn wait(&self, s: &mut State, c: ClientId, mut a: Acquiring, due: u32) {
        let client = &mut s.clients[usize::from(c)];
        if client.attempts_left == 0 {
            client.phase = Phase::GaveUp;
            return;
        }
        // Only prompt scheduling looks at when the next attempt is due.
        let due = if self.prompt { due } else { 0 };
        a.step = AcqStep::Waiting { due };
        // The next attempt dates itself; forget this one's send time (fewer distinct states).
        a.sent = 0;
        client.phase = Phase::Acquiring(a);
    }

    /// A write failed or went unanswered: it may have landed (`Attempts::write`).
    fn attempt_failed(&self, s: &mut State, c: ClientId, mut a: Acquiring, wrote: bool) {
        if wrote {
            a.uncertain_since.get_or_insert(a.sent);
        }
        let now = s.clients[usize::from(c)].clock(s.t);
        self.wait(s, c, a, now);
    }

    /// The acquire loop's handling of a holder that is not us (`Ok(Some(h))` in `acquire_loop`).
    fn busy(&self, s: &mut State, c: ClientId, mut a: Acquiring, version: u8) {
        let now = s.clients[usize::from(c)].clock(s.t);
        match a.watch {
            Some(w) if w.version == version => {
                if now >= self.stale_at(w.since) {
                    a.replace = Some(version);
                    a.write = true;
                    // `continue`: the takeover write goes out at once.
                    return self.wait(s, c, a, now);
                }
            }
            _ => {
                a.watch = Some(Watch {
                    version,
                    since: now,
                })
            }
        }
        a.write = !self.poll_with_reads;
        let due = a.watch.map_or(now, |w| self.stale_at(w.since));
        self.wait(s, c, a, due);
    }

    fn on_answer(&self, s: &mut State, c: ClientId, answer: Answer) {
        let client = s.clients[usize::from(c)];
        let now = client.clock(s.t);
        match client.phase {
            Phase::Acquiring(a) => match (a.step, answer) {
                (AcqStep::Write { .. } | AcqStep::ReadBack { .. }, Answer::Error) => {
                    self.attempt_failed(s, c, a, true)
                }
                (AcqStep::Poll { .. }, Answer::Error) => self.attempt_failed(s, c, a, false),
                (AcqStep::Write { .. }, Answer::Written { version, token }) => {
                    self.acquired(s, c, a, version, token)
                }
                (
                    AcqStep::Write {
                        again, takeover, ..
                    },
                    Answer::Refused,
                ) => {
                    let id = self.send(s, c, Op::Read);
                    s.clients[usize::from(c)].phase = Phase::Acquiring(Acquiring {
                        step: AcqStep::ReadBack {
                            id,
                            again,
                            takeover,
                        },
                        ..a
                    });
                }
                (
                    AcqStep::ReadBack {
                        again, takeover, ..
                    },
                    Answer::Record(r),
                ) => match r {
                    Some((owner, version, token)) if owner == c => {
                        self.acquired(s, c, a, version, token)
                    }
                    Some((_, version, _)) => {
                        // A refused takeover starts a fresh watch; a failed one keeps it.
                        let a = if takeover {
                            Acquiring { watch: None, ..a }
                        } else {
                            a
                        };
                        self.busy(s, c, a, version)
                    }
                    None if !again => {
                        let id = self.send(s, c, Op::Create);
                        s.clients[usize::from(c)].phase = Phase::Acquiring(Acquiring {
                            step: AcqStep::Write {
                                id,
                                again: true,
                                takeover,
                            },
                            ..a
                        });
                    }
                    None => self.attempt_failed(s, c, a, true),
                },
                (AcqStep::Poll { .. }, Answer::Record(r)) => match r {
                    Some((owner, version, token)) if owner == c => {
                        self.acquired(s, c, a, version, token)
                    }
                    Some((_, version, _)) => self.busy(s, c, a, version),
                    None => {
                        let a = Acquiring { write: true, ..a };
                        self.wait(s, c, a, now);
                    }
                },
                _ => unreachable!("acquire: {answer:?} in {a:?}"),
            },
            Phase::Holding(mut h) => {
                let sent = match h.step {
                    HoldStep::Renew { sent, .. } | HoldStep::RenewRead { sent, .. } => sent,
                    HoldStep::Idle => unreachable!("an answer to no renewal"),
                };
                let confirmed = |h: &mut Holding, version: u8| {
                    let started = self.lease_start(h.uncertain_since.take(), sent);
                    h.version = version;
                    h.deadline = self.deadline(started);
                    h.last_start = started;
                    h.retrying = false;
                    h.step = HoldStep::Idle;
                };
                match (h.step, answer) {
                    (_, Answer::Error) => {
                        h.uncertain_since.get_or_insert(sent);
                        h.retrying = true;
                        h.step = HoldStep::Idle;
                    }
                    (HoldStep::Renew { .. }, Answer::Written { version, .. }) => {
                        confirmed(&mut h, version)
                    }
                    (HoldStep::Renew { .. }, Answer::Refused) => {
                        let id = self.send(s, c, Op::Read);
                        h.step = HoldStep::RenewRead { id, sent };
                    }
                    (HoldStep::RenewRead { .. }, Answer::Record(r)) => match r {
                        Some((owner, version, _)) if owner == c => confirmed(&mut h, version),
                        _ => {
                            s.clients[usize::from(c)].phase = Phase::Lost;
                            return;
                        }
                    },
                    _ => unreachable!("renew: {answer:?} in {h:?}"),
                }
                s.clients[usize::from(c)].phase = Phase::Holding(h);
            }
            Phase::Releasing { version, step } => {
                let left = client.release_left;
                let retry = |s: &mut State| {
                    s.clients[usize::from(c)].phase = if left == 0 {
                        Phase::Done
                    } else {
                        Phase::Releasing {
                            version,
                            step: RelStep::Waiting,
                        }
                    };
                };
                match (step, answer) {
                    (_, Answer::Error) => retry(s),
                    (RelStep::Delete { .. }, Answer::Deleted(true)) => {
                        s.clients[usize::from(c)].phase = Phase::Done
                    }
                    (RelStep::Delete { second: false, .. }, Answer::Deleted(false)) => {
                        let id = self.send(s, c, Op::Read);
                        s.clients[usize::from(c)].phase = Phase::Releasing {
                            version,
                            step: RelStep::ReadBack { id },
                        };
                    }
                    (RelStep::Delete { second: true, .. }, Answer::Deleted(false)) => {
                        s.clients[usize::from(c)].phase = Phase::Done
                    }
                    (RelStep::ReadBack { .. }, Answer::Record(r)) => match r {
                        Some((owner, ours, _)) if owner == c => {
                            let id = self.send(s, c, Op::Delete(ours));
                            s.clients[usize::from(c)].phase = Phase::Releasing {
                                version,
                                step: RelStep::Delete { id, second: true },
                            };
                        }
                        // Someone else's, or free: `Lost`, reported as released.
                        _ => s.clients[usize::from(c)].phase = Phase::Done,
                    },
                    _ => unreachable!("release: {answer:?} in {step:?}"),
                }
            }
            _ => unreachable!("an answer to a client in {:?}", client.phase),
        }
    }

    /// Whether a client's next step is due now (prompt scheduling holds time back for it).
    fn due(&self, s: &State, c: &Client) -> bool {
        let now = c.clock(s.t);
        match c.phase {
            Phase::Acquiring(a) => matches!(a.step, AcqStep::Waiting { due } if now >= due),
            Phase::Holding(h) => {
                h.step == HoldStep::Idle
                    && c.renewals_left > 0
                    && now < h.deadline
                    && (h.retrying || now >= self.renew_due(h.last_start))
            }
            Phase::Releasing { step, .. } => step == RelStep::Waiting,
            _ => false,
        }
    }
}

/// Whether the call `c` waits for is still unprocessed (its request in flight): only then does
/// abandoning it differ from receiving its answer, or from a lost answer.
fn unprocessed(s: &State, c: ClientId) -> bool {
    let Some(id) = s.clients[usize::from(c)].awaiting() else {
        return false;
    };
    s.net
        .iter()
        .any(|m| matches!(m, Msg::Request { from, id: i, .. } if *from == c && *i == id))
}

/// Sends `answer` to the call `id` of `to`, if it still waits for it and has no answer yet (a
/// duplicated request is answered once: the caller stops listening after the first).
fn answer_to(s: &mut State, to: ClientId, id: u8, answer: Answer) {
    let pending = s
        .net
        .iter()
        .any(|m| matches!(m, Msg::Answer { to: t, id: i, .. } if *t == to && *i == id));
    if s.clients[usize::from(to)].awaiting() == Some(id) && !pending {
        insert(&mut s.net, Msg::Answer { to, id, answer });
    }
}

fn insert(net: &mut Vec<Msg>, m: Msg) {
    let at = net.binary_search(&m).unwrap_or_else(|e| e);
    net.insert(at, m);
}

fn remove(net: &mut Vec<Msg>, m: &Msg) -> bool {
    match net.binary_search(m) {
        Ok(i) => {
            net.remove(i);
            true
        }
        Err(_) => false,
    }
}

impl Model for LockModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        // The extremes of the drift bound: the worst cases of any pair of clocks.
        let rates = if self.drift == 0 {
            vec![UNITS]
        } else {
            vec![UNITS - self.drift, UNITS + self.drift]
        };
        let mut all: Vec<Vec<u32>> = vec![vec![]];
        for _ in 0..self.clients {
            all = all
                .into_iter()
                .flat_map(|v| {
                    rates.iter().map(move |r| {
                        let mut v = v.clone();
                        v.push(*r);
                        v
                    })
                })
                .collect();
        }
        all.into_iter()
            .map(|rates| State {
                t: 0,
                clients: rates
                    .into_iter()
                    .map(|rate| Client {
                        rate,
                        next_id: 0,
                        attempts_left: self.attempts,
                        renewals_left: self.renewals,
                        release_left: self.release_tries,
                        phase: Phase::Acquiring(Acquiring {
                            step: AcqStep::Waiting { due: 0 },
                            sent: 0,
                            uncertain_since: None,
                            watch: None,
                            replace: None,
                            write: true,
                        }),
                    })
                    .collect(),
                store: Store {
                    record: None,
                    last_version: 0,
                    last_token: 0,
                },
                net: Vec::new(),
                faults_left: self.faults,
                ghost: Ghost::default(),
            })
            .collect()
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let mut held_back = false;
        for m in &s.net {
            match *m {
                Msg::Request { .. } => {
                    held_back = true;
                    actions.push(Action::Deliver(*m));
                    if s.faults_left > 0 {
                        let k = self.fault_kinds;
                        if k.delay {
                            actions.push(Action::Delay(*m));
                        }
                        if k.lose {
                            actions.push(Action::LoseAnswer(*m));
                        }
                        if self.fail_requests {
                            actions.push(Action::Fail(*m));
                        }
                        if k.duplicate {
                            actions.push(Action::Duplicate(*m));
                        }
                    }
                }
                Msg::Answer { .. } => {
                    held_back = true;
                    actions.push(Action::Deliver(*m));
                }
            }
        }
        actions.dedup();
        for (i, c) in s.clients.iter().enumerate() {
            let id = i as ClientId;
            let now = c.clock(s.t);
            if self.due(s, c) {
                held_back = true;
            }
            match c.phase {
                Phase::Acquiring(a) => match a.step {
                    AcqStep::Waiting { .. } => actions.push(Action::Send(id)),
                    _ if unprocessed(s, id) => actions.push(Action::Abandon(id)),
                    _ => {}
                },
                Phase::Holding(h) => {
                    match h.step {
                        HoldStep::Idle => {
                            if c.renewals_left > 0
                                && now < h.deadline
                                && (h.retrying || now >= self.renew_due(h.last_start))
                            {
                                actions.push(Action::Send(id));
                            }
                            actions.push(Action::Release(id));
                        }
                        // A renewal is bounded by the lease's deadline.
                        _ if now >= h.deadline && unprocessed(s, id) => {
                            actions.push(Action::Abandon(id))
                        }
                        _ => {}
                    }
                    if self.may_crash {
                        actions.push(Action::Crash(id));
                    }
                }
                Phase::Releasing { step, .. } => match step {
                    RelStep::Waiting => actions.push(Action::Send(id)),
                    _ if unprocessed(s, id) => actions.push(Action::Abandon(id)),
                    _ => {}
                },
                _ => {}
            }
        }
        if s.t < self.max_time && !(self.prompt && held_back) {
            actions.push(Action::Tick);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => s.t += 1,
            Action::Send(c) => {
                let client = s.clients[usize::from(c)];
                match client.phase {
                    Phase::Acquiring(a) => self.start_attempt(&mut s, c, a),
                    Phase::Holding(mut h) => {
                        let sent = client.clock(s.t);
                        s.clients[usize::from(c)].renewals_left -= 1;
                        let id = self.send(&mut s, c, Op::Renew(h.version));
                        h.step = HoldStep::Renew { id, sent };
                        s.clients[usize::from(c)].phase = Phase::Holding(h);
                    }
                    Phase::Releasing { version, .. } => {
                        s.clients[usize::from(c)].release_left -= 1;
                        let id = self.send(&mut s, c, Op::Delete(version));
                        s.clients[usize::from(c)].phase = Phase::Releasing {
                            version,
                            step: RelStep::Delete { id, second: false },
                        };
                    }
                    _ => return None,
                }
            }
            Action::Deliver(m) => {
                if !remove(&mut s.net, &m) {
                    return None;
                }
                match m {
                    Msg::Request { from, id, op } => {
                        let answer = self.process(&mut s, from, op);
                        // Delivered at once, unless nobody waits for it any more.
                        if s.clients[usize::from(from)].awaiting() == Some(id) {
                            self.on_answer(&mut s, from, answer);
                        }
                    }
                    Msg::Answer { to, id, answer } => {
                        if s.clients[usize::from(to)].awaiting() != Some(id) {
                            return None;
                        }
                        self.on_answer(&mut s, to, answer);
                    }
                }
            }
            Action::LoseAnswer(m) | Action::Fail(m) => {
                let Msg::Request { from, id, op } = m else {
                    return None;
                };
                if s.faults_left == 0 || !remove(&mut s.net, &m) {
                    return None;
                }
                s.faults_left -= 1;
                if matches!(action, Action::LoseAnswer(_)) {
                    self.process(&mut s, from, op);
                }
                answer_to(&mut s, from, id, Answer::Error);
            }
            Action::Delay(m) => {
                let Msg::Request { from, id, op } = m else {
                    return None;
                };
                if s.faults_left == 0 || !remove(&mut s.net, &m) {
                    return None;
                }
                s.faults_left -= 1;
                let answer = self.process(&mut s, from, op);
                answer_to(&mut s, from, id, answer);
            }
            Action::Duplicate(m) => {
                if s.faults_left == 0 || !s.net.contains(&m) {
                    return None;
                }
                s.faults_left -= 1;
                insert(&mut s.net, m);
            }
            Action::Abandon(c) => {
                let id = s.clients[usize::from(c)].awaiting()?;
                s.net.retain(
                    |m| !matches!(m, Msg::Answer { to, id: i, .. } if *to == c && *i == id),
                );
                self.on_answer(&mut s, c, Answer::Error);
            }
            Action::Release(c) => {
                let client = s.clients[usize::from(c)];
                let Phase::Holding(h) = client.phase else {
                    return None;
                };
                // `release_lease`: a lost lease is never touched.
                s.clients[usize::from(c)].phase = if !client.believes(s.t) {
                    Phase::Lost
                } else if client.release_left == 0 {
                    Phase::Done
                } else {
                    Phase::Releasing {
                        version: h.version,
                        step: RelStep::Waiting,
                    }
                };
            }
            Action::Crash(c) => {
                s.clients[usize::from(c)].phase = Phase::Crashed;
                s.ghost.crashed |= 1 << c;
                s.net
                    .retain(|m| !matches!(m, Msg::Answer { to, .. } if *to == c));
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("mutual exclusion", |_, s: &State| s.believers() <= 1),
            Property::always("loss before takeover", |_, s: &State| {
                !s.ghost.takeover_before_loss
            }),
            Property::always("no stale release or renewal", |_, s: &State| {
                !s.ghost.stale_write
            }),
            Property::always("fencing tokens increase", |_, s: &State| {
                !s.ghost.token_regress
            }),
            Property::always(
                "a crashed holder's lock is freed",
                |m: &LockModel, s: &State| !m.prompt || !crashed_lock_stuck(m, s),
            ),
            Property::sometimes("takeover of a crashed holder", |_, s: &State| {
                s.ghost.took_over_crashed
            }),
        ]
    }
}

/// Bounded liveness: under prompt scheduling, a record whose owner crashed is still there
/// `liveness_bound` ticks after its last write while some client still tries to acquire.
pub fn crashed_lock_stuck(m: &LockModel, s: &State) -> bool {
    let Some(r) = s.store.record else {
        return false;
    };
    let waiting = s
        .clients
        .iter()
        .any(|c| matches!(c.phase, Phase::Acquiring(_)));
    s.ghost.crashed & (1 << r.owner) != 0
        && waiting
        && s.t >= r.written_at.saturating_add(m.liveness_bound())
}
