//! Exhaustive checks of bounded configurations, and mutations: each broken rule is found by
//! the checker in the same configuration in which the runtime's rule passes. Every test prints
//! the number of states it explored (`cargo test -p dlock-model -- --nocapture`).

use dlock_model::{FaultKinds, LeaseClockFrom, LockModel, Margin, ReleaseCheck, TokenRule, check};

const SAFETY: [&str; 4] = [
    "mutual exclusion",
    "loss before takeover",
    "no stale release or renewal",
    "fencing tokens increase",
];

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Checks `model`; asserts no safety property fails; returns the states explored.
fn holds(what: &str, model: LockModel) -> usize {
    let outcome = check(model, threads());
    println!("{what}: states explored: {}", outcome.states);
    for p in SAFETY
        .iter()
        .chain(["a crashed holder's lock is freed"].iter())
    {
        assert!(!outcome.found(p), "{what}: {p} fails:\n{}", outcome.report);
    }
    outcome.states
}

/// Checks `model`; asserts `property` fails.
fn fails(what: &str, model: LockModel, property: &str) {
    let outcome = check(model, threads());
    println!(
        "{what}: states explored: {}; discoveries: {:?}",
        outcome.states, outcome.discoveries
    );
    assert!(
        outcome.found(property),
        "{what}: the checker found no counterexample of `{property}`"
    );
}

/// Lost acquire answers, no renewals, no releases: where the lease starts is all that matters.
fn lost_answers() -> LockModel {
    LockModel {
        max_time: 3,
        drift: 0,
        fault_kinds: FaultKinds {
            lose: true,
            delay: false,
            duplicate: false,
        },
        renewals: 0,
        release_tries: 0,
        ..LockModel::small()
    }
}

#[test]
fn lease_clock_from_the_first_send() {
    holds("first send", lost_answers());
    let broken = LockModel {
        lease_clock: LeaseClockFrom::LastAttempt,
        ..lost_answers()
    };
    fails("last attempt", broken.clone(), "mutual exclusion");
    fails("last attempt", broken, "loss before takeover");
}

/// A release whose request is duplicated (the copy lands late), then the other client.
fn duplicated_release() -> LockModel {
    LockModel {
        max_time: 1,
        drift: 0,
        fault_kinds: FaultKinds {
            lose: false,
            delay: false,
            duplicate: true,
        },
        attempts: 2,
        renewals: 0,
        release_tries: 1,
        ..LockModel::small()
    }
}

#[test]
fn release_is_conditional_on_the_owner() {
    holds("owner check", duplicated_release());
    let broken = LockModel {
        release_check: ReleaseCheck::None,
        ..duplicated_release()
    };
    fails(
        "release without owner check",
        broken,
        "no stale release or renewal",
    );
}

#[test]
fn fencing_tokens_survive_release() {
    let model = LockModel {
        faults: 0,
        ..duplicated_release()
    };
    holds("token counter", model.clone());
    let broken = LockModel {
        tokens: TokenRule::PerRecord,
        ..model
    };
    fails("token per record", broken, "fencing tokens increase");
}

/// Clocks at the extremes of ±0.5% drift, no faults: the 1% margin is what separates the
/// holder's deadline from a fast waiter's takeover.
fn drifting() -> LockModel {
    LockModel {
        max_time: 3,
        faults: 0,
        renewals: 0,
        release_tries: 0,
        ..LockModel::small()
    }
}

#[test]
fn the_margin_covers_drift() {
    holds("1% margin", drifting());
    let broken = LockModel {
        margin: Margin::None,
        ..drifting()
    };
    fails("no margin", broken, "mutual exclusion");
}

#[test]
fn renewals_under_lost_and_late_answers() {
    holds(
        "renewals",
        LockModel {
            max_time: 3,
            attempts: 2,
            drift: 0,
            release_tries: 0,
            fault_kinds: FaultKinds {
                lose: true,
                delay: true,
                duplicate: false,
            },
            ..LockModel::small()
        },
    );
}

#[test]
fn a_crashed_holder_is_taken_over() {
    let outcome = check(
        LockModel {
            faults: 0,
            release_tries: 0,
            drift: 0,
            max_time: 9,
            attempts: 3,
            ..LockModel::liveness()
        },
        threads(),
    );
    println!("liveness: states explored: {}", outcome.states);
    assert!(
        !outcome.found("a crashed holder's lock is freed"),
        "{}",
        outcome.report
    );
    assert!(outcome.found("takeover of a crashed holder"));
    for p in SAFETY {
        assert!(!outcome.found(p), "{p}: {}", outcome.report);
    }
}
