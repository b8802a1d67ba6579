//! Checks the lock model and prints the number of states explored.
//!
//! `cargo run --release -p dlock-model -- [small|large|liveness|expiry] [THREADS]`

use dlock_model::{LockModel, check};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "small".to_string());
    let threads = args
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let model = match which.as_str() {
        "small" => LockModel::small(),
        "large" => LockModel::large(),
        "liveness" => LockModel::liveness(),
        "expiry" => LockModel {
            store_expiry: true,
            ..LockModel::small()
        },
        "tiny" => LockModel {
            max_time: 5,
            ..LockModel::small()
        },
        other => {
            eprintln!("unknown configuration `{other}`: small, large, liveness or expiry");
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let outcome = check(model, threads);
    println!("configuration: {which}");
    println!("states explored: {}", outcome.states);
    println!("max depth: {}", outcome.depth);
    println!("time: {:.1?}", start.elapsed());
    for (name, len) in &outcome.discoveries {
        println!("discovery: {name} (path of {len} states)");
    }
    let failed = outcome
        .discoveries
        .iter()
        .any(|(name, _)| *name != "takeover of a crashed holder");
    if failed {
        println!("{}", outcome.report);
        std::process::exit(1);
    }
    println!("all properties hold");
}
