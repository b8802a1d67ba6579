//! The examples do what their docs say, as separate processes.

use std::process::{Command, Output, Stdio};

fn run(bin: &str, args: &[&str], backend: &str) -> std::process::Child {
    Command::new(bin)
        .args(args)
        .env("DLOCK_BACKEND", backend)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_tick_runs_on_exactly_one_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = format!("file://{}", dir.path().display());
    let bin = env!("CARGO_BIN_EXE_scheduled");
    let replicas: Vec<_> = ["a", "b"]
        .iter()
        .map(|r| run(bin, &["--ticks", "3", "--replica", r], &backend))
        .collect();
    let mut made = std::collections::BTreeMap::<String, Vec<String>>::new();
    for child in replicas {
        let out = child.wait_with_output().expect("wait");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        for line in stdout.lines().filter(|l| l.contains("report made by")) {
            let (tick, who) = line.split_once(": report made by ").expect("format");
            made.entry(tick.to_string())
                .or_default()
                .push(who.to_string());
        }
    }
    assert!(made.len() >= 3, "each tick was reported: {made:?}");
    assert!(
        made.values().all(|who| who.len() == 1),
        "a tick ran twice: {made:?}"
    );
}

#[test]
fn a_second_deploy_waits_and_names_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = format!("file://{}", dir.path().display());
    let bin = env!("CARGO_BIN_EXE_deploy");
    let first = run(bin, &["--work-secs", "1", "build"], &backend);
    let builder = first.id();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = run(
        bin,
        &["--work-secs", "1", "deploy", "--env", "prod"],
        &backend,
    );
    let (out1, out2) = (
        first.wait_with_output().expect("wait"),
        second.wait_with_output().expect("wait"),
    );
    let ((build_out, build_err), (deploy_out, deploy_err)) = (text(&out1), text(&out2));
    assert!(
        out1.status.success() && out2.status.success(),
        "{build_err}\n{deploy_err}"
    );
    assert!(build_out.contains("build: artifacts ready"), "{build_out}");
    assert!(
        deploy_err.contains("waiting for lock lock=artifacts"),
        "{deploy_err}"
    );
    assert!(
        deploy_err.contains(&format!("(pid {builder} on host")),
        "names the builder: {deploy_err}"
    );
    assert!(deploy_out.contains("deploy prod: done"), "{deploy_out}");
}

#[test]
fn a_bad_backend_url_is_a_clear_startup_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(["deploy", "--env", "qa"])
        .env("DLOCK_BACKEND", "ftp://nowhere")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown backend scheme `ftp`; supported: file://, memory://"),
        "{stderr}"
    );
}

/// The stand-in's bucket, from tests/run-all.sh; panics (never skips) without it.
#[cfg(any(
    feature = "s3",
    feature = "gcs",
    feature = "dynamodb",
    feature = "mongodb"
))]
fn stand_in_bucket(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `bash tests/run-all.sh`, which starts the local stand-ins")
    })
}

/// The build/deploy example on a cloud backend: a deploy waits for a build, on another process.
#[cfg(any(
    feature = "s3",
    feature = "gcs",
    feature = "dynamodb",
    feature = "mongodb"
))]
fn deploy_waits_for_build_on(backend: &str) {
    let bin = env!("CARGO_BIN_EXE_deploy");
    let first = run(bin, &["--work-secs", "1", "build"], backend);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = run(
        bin,
        &["--work-secs", "1", "deploy", "--env", "prod"],
        backend,
    );
    let (out1, out2) = (
        first.wait_with_output().expect("wait"),
        second.wait_with_output().expect("wait"),
    );
    let ((_, build_err), (deploy_out, deploy_err)) = (text(&out1), text(&out2));
    assert!(
        out1.status.success() && out2.status.success(),
        "{build_err}\n{deploy_err}"
    );
    assert!(
        deploy_err.contains("waiting for lock lock=artifacts"),
        "{deploy_err}"
    );
    assert!(deploy_out.contains("deploy prod: done"), "{deploy_out}");
}

#[cfg(feature = "s3")]
#[test]
fn the_deploy_example_runs_on_s3() {
    deploy_waits_for_build_on(&format!(
        "s3://{}/examples",
        stand_in_bucket("DLOCK_TEST_S3_BUCKET")
    ));
}

#[cfg(feature = "gcs")]
#[test]
fn the_deploy_example_runs_on_gcs() {
    deploy_waits_for_build_on(&format!(
        "gs://{}/examples",
        stand_in_bucket("DLOCK_TEST_GCS_BUCKET")
    ));
}

#[cfg(feature = "dynamodb")]
#[test]
fn the_deploy_example_runs_on_dynamodb() {
    deploy_waits_for_build_on(&format!(
        "dynamodb://{}",
        stand_in_bucket("DLOCK_TEST_DYNAMODB_TABLE")
    ));
}

#[cfg(feature = "mongodb")]
#[test]
fn the_deploy_example_runs_on_mongodb() {
    let uri = stand_in_bucket("DLOCK_TEST_MONGODB_URI");
    let (base, query) = uri.split_once('?').unwrap_or((&uri, ""));
    deploy_waits_for_build_on(&format!("{base}?collection=examples&{query}"));
}
