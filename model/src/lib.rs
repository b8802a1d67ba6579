//! A model-checked version of dlock's lease protocol, with [stateright].
//!
//! # What is modelled
//!
//! One lock name in a store with atomic conditional operations (the conditional-store protocol
//! of `dlock-runtime/src/backends/protocol.rs`): create-if-absent, replace-if-version (a
//! takeover), renew-if-version, read, and delete-if-version-and-owner. Every write makes a new
//! version; fencing tokens come from one counter per name. Optionally
//! ([`LockModel::store_expiry`]) the store also expires a record `ttl` after its last write, in
//! store time, as Redis and etcd do.
//!
//! Two or three clients each make one acquisition and run the runtime's logic as transitions:
//!
//! * the acquire loop (`lock.rs`): a conditional write, the protocol's read-back of a refused
//!   write and its one extra free write, polls with reads or writes, the watch of a holder
//!   version and the takeover once it stayed unchanged for a whole ttl on the waiter's clock,
//!   and `uncertain_since`: the lease of a record that turns out to be ours is dated from the
//!   first write whose outcome was unknown ([`rules::lease_start`]);
//! * the guard (`guard.rs`): `valid_until` = lease start + [`rules::lease_span`] (ttl less 1%),
//!   renewals a third of a ttl after the lease start, a renewal whose answer was lost dating the
//!   next confirmed one, the read-back of a refused renewal, loss when the deadline passes or
//!   the record is someone else's;
//! * release (`release_lease`, `release_with_retries` and the protocol's `release`): a lost
//!   guard never writes; otherwise a delete at the lease's version, and after a refusal a read
//!   back and a delete of the version that is ours, retried a bounded number of times.
//!
//! The network between them loses answers after the store processed the request, fails
//! requests before they reach it, duplicates requests (the copy may land much later) and
//! delivers everything in any order and at any time: a late answer, or a request that lands
//! after its caller stopped waiting ([`Action::Abandon`]). Faults are bounded by
//! [`LockModel::faults`] for the whole run.
//!
//! Time is discrete: store time advances in ticks ([`Action::Tick`]). Each client has its own
//! monotonic clock running at a rate within `±drift` of the store's (chosen in the initial
//! states), so clock readings differ between clients; a client may take no step for any number
//! of ticks (a pause: when it runs again its clock has jumped relative to its last step).
//! Client clocks are in thousandths of a tick; the runtime's rules are applied to them as
//! [`Duration`](std::time::Duration)s ([`LockModel::tick`] says what a tick stands for).
//!
//! # Properties
//!
//! * `mutual exclusion`: never two clients that believe they hold the lock at the same store
//!   instant (believe = the guard's deadline has not passed on the client's own clock);
//! * `loss before takeover`: when a takeover lands, the replaced holder's deadline has passed
//!   on its clock (it knew of the loss no later than the takeover);
//! * `no stale release or renewal`: a renewal or delete never changes a record that is not the
//!   sender's;
//! * `fencing tokens increase`: every token issued is above every earlier one;
//! * `a crashed holder's lock is freed` (bounded liveness, with [`LockModel::prompt`]
//!   scheduling): while a client still tries to acquire, a crashed holder's record does not
//!   outlive its last write by more than [`LockModel::liveness_bound`] ticks;
//! * `takeover of a crashed holder` (`sometimes`, reachability): a crashed holder's lock can be
//!   taken over.
//!
//! Stateright's `eventually` is not used for liveness: it only looks at paths to terminal
//! states and may miss counterexamples through revisited states, and in a model where a client
//! may pause forever no lock is freed "eventually". The bounded form under prompt scheduling
//! is checked as an invariant instead.
//!
//! # Bounds
//!
//! [`LockModel::small`] (CI, debug build): 2 clients, a 3-tick lease, 7 ticks, drift ±0.5%,
//! one fault, 3 acquire attempts, 2 renewals, 2 release tries. [`LockModel::large`]: 3
//! clients, 8 ticks, two faults (`cargo run --release -p dlock-model -- large`).
//!
//! # What it abstracts away
//!
//! * Each client acquires once; owners are client ids. Re-acquisition by the same process, the
//!   local (in-process) queue, `min_hold`, `confirm_fresh` (renewing a very late acquisition
//!   before handing it out), the cleanup of an interrupted acquisition and notified waiting are
//!   not modelled (a notification is just a wake-up: any schedule is already allowed).
//! * Backoff delays and poll schedules are nondeterministic: a client may retry at any time
//!   after a failure and poll at any time before its watch goes stale; a waiter is due at the
//!   latest when its watch goes stale.
//! * Call deadlines: an acquire or release call may be abandoned at any time, a renewal once
//!   the lease's deadline has passed.
//! * Clock rates are constant per client; a clock that stops while the store's runs (a
//!   suspended machine) is outside the drift bound and no lease protocol survives it.
//! * Store-specific statuses, permanent errors, `force_release` and `list` are not modelled.
//!
//! # Tying the model to the code
//!
//! The timing rules are the runtime's functions (copied in [`rules`] until the runtime exposes
//! them; each copy names the function to expose). `tests/trace_agreement.rs` runs the real
//! runtime (MemoryBackend wrapped in the conformance `FaultyBackend`, tokio's paused clock)
//! through scripted scenarios, records what it did, replays the trace through this model's
//! transitions with [`replay::Replay`] and checks every step is enabled and the beliefs agree.

pub mod model;
pub mod replay;
pub mod rules;

pub use model::{
    Action, Answer, ClientId, FaultKinds, LeaseClockFrom, LockModel, Margin, Msg, Op, Phase,
    ReleaseCheck, State, TokenRule,
};

use stateright::{Checker, Model};

/// The result of checking a model to completion.
#[derive(Debug)]
pub struct Outcome {
    /// Unique states explored.
    pub states: usize,
    /// The longest path explored.
    pub depth: usize,
    /// The properties with a discovery: counterexamples of `always` properties, examples of
    /// `sometimes` ones, each with the path's length.
    pub discoveries: Vec<(&'static str, usize)>,
    /// Counterexample paths, formatted, for failure messages.
    pub report: String,
}

impl Outcome {
    /// Whether `property` has a discovery.
    pub fn found(&self, property: &str) -> bool {
        self.discoveries.iter().any(|(name, _)| *name == property)
    }
}

/// Checks `model` exhaustively (breadth first, `threads` threads).
pub fn check(model: LockModel, threads: usize) -> Outcome {
    let properties = model.properties();
    let limit = std::env::var("DLOCK_MODEL_MAX_STATES")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut builder = model.checker().threads(threads);
    if let Some(limit) = limit {
        builder = builder.target_state_count(limit);
    }
    if let Some(depth) = std::env::var("DLOCK_MODEL_MAX_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.target_max_depth(depth);
    }
    let checker = builder.spawn_bfs().join();
    let mut discoveries = Vec::new();
    let mut report = String::new();
    for p in properties {
        if let Some(path) = checker.discovery(p.name) {
            let path = path.into_vec();
            discoveries.push((p.name, path.len()));
            if !matches!(p.expectation, stateright::Expectation::Sometimes) {
                report.push_str(&format!("{}:\n", p.name));
                for (state, action) in path {
                    report.push_str(&format!(
                        "  {:?} t={} {:?}\n",
                        action, state.t, state.clients
                    ));
                }
            }
        }
    }
    Outcome {
        depth: checker.max_depth(),
        states: checker.unique_state_count(),
        discoveries,
        report,
    }
}
