//! Scale runs through `dlock-contend scale`, at counts CI can afford: 4 processes × 100
//! acquisitions on every backend (memory as 4 tasks), checked by the witness outside dlock (an
//! O_EXCL marker file and a shared log with fencing tokens); one run with kills and stops on
//! the file backend and one with faults, kills and stops on a remote stand-in; runs through
//! restarts of the PostgreSQL, Redis and etcd servers; and the self-check that the witness does
//! see overlaps when the lock is skipped.
//!
//! The remote runs need the stand-ins (`source /tmp/standins.env`, or `tests/run-all.sh`).

use dlock_tests::stand_in;
use std::process::Command;

const CONTEND: &str = env!("CARGO_BIN_EXE_dlock-contend");

/// Runs `dlock-contend scale ARGS`; returns whether it passed and what it printed.
fn scale(args: &[&str]) -> (bool, String) {
    let out = Command::new(CONTEND)
        .arg("scale")
        .args(args)
        .output()
        .expect("run dlock-contend");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dlock-contend scale {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

/// A scale run that must pass every check.
fn assert_clean(args: &[&str]) -> String {
    let (ok, text) = scale(args);
    assert!(ok, "the scale run failed:\n{text}");
    assert!(text.contains(" | ok |"), "no passing table row:\n{text}");
    text
}

/// The number in the `overlaps by the log: N` line.
fn overlaps_by_the_log(text: &str) -> usize {
    text.lines()
        .find_map(|line| line.strip_prefix("overlaps by the log: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overlap count in:\n{text}"))
}

fn file_url(dir: &tempfile::TempDir) -> String {
    format!("file://{}", dir.path().display())
}

const SMALL: [&str; 4] = ["--processes", "4", "--acquisitions", "100"];

fn clean_run(url: &str, extra: &[&str]) -> String {
    let mut args = vec!["--backend", url];
    args.extend(SMALL);
    args.extend(extra);
    assert_clean(&args)
}

#[test]
fn file_four_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = clean_run(&file_url(&dir), &[]);
    assert!(text.contains("strictly increasing"), "{text}");
}

#[test]
fn memory_four_tasks() {
    let text = clean_run("memory://", &["--tasks"]);
    assert!(text.contains("strictly increasing"), "{text}");
}

#[test]
fn s3_four_processes() {
    let url = format!("s3://{}/scale", stand_in("DLOCK_TEST_S3_BUCKET"));
    clean_run(&url, &[]);
}

#[test]
fn gcs_four_processes() {
    let url = format!("gs://{}/scale", stand_in("DLOCK_TEST_GCS_BUCKET"));
    clean_run(&url, &[]);
}

#[test]
fn dynamodb_four_processes() {
    let url = format!("dynamodb://{}", stand_in("DLOCK_TEST_DYNAMODB_TABLE"));
    let text = clean_run(&url, &[]);
    assert!(text.contains("strictly increasing"), "{text}");
}

#[test]
fn mongodb_four_processes() {
    let text = clean_run(&mongodb_url(), &[]);
    assert!(text.contains("strictly increasing"), "{text}");
}

#[test]
fn postgres_four_processes() {
    let url = format!("{}?table=dlock_scale", stand_in("DLOCK_TEST_POSTGRES_URL"));
    let text = clean_run(&url, &[]);
    assert!(text.contains("strictly increasing"), "{text}");
}

#[test]
fn redis_four_processes() {
    let url = format!("{}/?prefix=scale:", stand_in("DLOCK_TEST_REDIS_URL"));
    let text = clean_run(&url, &[]);
    assert!(text.contains("strictly increasing"), "{text}");
}

#[test]
fn etcd_four_processes() {
    let text = clean_run(&etcd_url("scale"), &[]);
    assert!(text.contains("strictly increasing"), "{text}");
}

/// The test etcd server with the key prefix `prefix/`.
fn etcd_url(prefix: &str) -> String {
    let endpoint = stand_in("DLOCK_TEST_ETCD_ENDPOINT");
    let host = endpoint
        .split_once("://")
        .map_or(endpoint.as_str(), |(_, h)| h);
    format!("etcd://{host}/{prefix}/")
}

fn mongodb_url() -> String {
    let uri = stand_in("DLOCK_TEST_MONGODB_URI");
    let (base, query) = uri.split_once('?').unwrap_or((&uri, ""));
    format!("{base}?collection=scale&{query}")
}

/// Kills and stops on the file backend: the kernel frees a killed holder's lock at once, and
/// a stopped holder keeps it (no lease to lose).
#[test]
fn file_with_kills_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = clean_run(
        &file_url(&dir),
        &[
            "--ttl",
            "1s",
            "--kill-every",
            "400ms",
            "--stop-every",
            "1500ms",
        ],
    );
    assert!(!text.contains(" 0 killed"), "no kill happened:\n{text}");
}

/// Faults on the wire, kills and stops on a remote stand-in (GCS: fake-gcs-server is the
/// fastest): a stopped holder's lease is taken over, and it must report `lost` before it
/// leaves its section; a killed holder's lock is taken over within ttl + slack.
#[test]
fn gcs_with_faults_kills_and_stops() {
    let url = format!("gs://{}/scale-faults", stand_in("DLOCK_TEST_GCS_BUCKET"));
    let text = clean_run(
        &url,
        &[
            "--ttl",
            "1s",
            "--faults",
            "0.05",
            "--seed",
            "7",
            "--kill-every",
            "1500ms",
            "--stop-every",
            "2500ms",
        ],
    );
    assert!(text.contains(" requests: "), "no faults injected:\n{text}");
    assert!(!text.contains(" 0 killed"), "no kill happened:\n{text}");
}

/// The server restarts every 700 ms of the run (a fast shutdown; its data on disk): holders
/// and waiters ride the restarts out (requests fail or go unanswered, connections drop and
/// are made again), nobody overlaps, every acquisition completes and tokens keep increasing.
fn with_server_restarts(url: &str, restart_variable: &str) {
    let restart = stand_in(restart_variable);
    let text = clean_run(
        url,
        &[
            "--hold",
            "5ms",
            "--restart",
            &restart,
            "--restart-every",
            "700ms",
        ],
    );
    assert!(
        !text.contains("restarts: 0"),
        "no restart happened:\n{text}"
    );
    assert!(text.contains("strictly increasing"), "{text}");
}

#[test]
fn postgres_with_server_restarts() {
    let url = format!(
        "{}?table=dlock_scale_restarts",
        stand_in("DLOCK_TEST_POSTGRES_URL")
    );
    with_server_restarts(&url, "DLOCK_TEST_POSTGRES_RESTART");
}

#[test]
fn redis_with_server_restarts() {
    let url = format!(
        "{}/?prefix=scale-restarts:",
        stand_in("DLOCK_TEST_REDIS_URL")
    );
    with_server_restarts(&url, "DLOCK_TEST_REDIS_RESTART");
}

#[test]
fn etcd_with_server_restarts() {
    with_server_restarts(&etcd_url("scale-restarts"), "DLOCK_TEST_ETCD_RESTART");
}

/// The witness works: with the lock skipped, it sees overlaps and the run fails.
#[test]
fn the_witness_sees_overlaps_without_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = file_url(&dir);
    let mut args = vec!["--backend", url.as_str(), "--no-lock"];
    args.extend(SMALL);
    let (ok, text) = scale(&args);
    assert!(!ok, "a run without the lock passed:\n{text}");
    assert!(overlaps_by_the_log(&text) > 0, "{text}");
    assert!(text.contains("FAILED: "), "{text}");
    assert!(text.contains("marker collisions not excused"), "{text}");
}
