//! Checks shared by the tests of the server backends (PostgreSQL, Redis, etcd): each takes the
//! backends as `Arc<dyn Backend>`, plus whatever differs between the servers.

use dlock_runtime::{
    AcquireOutcome, AcquireRequest, Backend, Error, Lease, Lock, LockGuard, LockName, Owner,
    Version,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// A lock name, from text the test knows to be valid.
pub fn name(text: &str) -> LockName {
    LockName::new(text).expect("name")
}

/// One acquisition attempt on `backend`, by a new owner, below the runtime's retries.
pub async fn raw_acquire(backend: &dyn Backend, name: &LockName, ttl: Duration) -> AcquireOutcome {
    let request = AcquireRequest::new(name.clone(), Owner::generate(), ttl);
    backend.try_acquire(&request).await.expect("try_acquire")
}

/// A task waiting for a lock: what its acquisition gave, and when it returned.
pub type Waiting = JoinHandle<(Result<LockGuard, Error>, Instant)>;

/// Starts a task that waits up to 20 s for `lock` on `waiter` (for a 30 s lease).
pub fn spawn_waiter(waiter: &Arc<dyn Backend>, lock: &str) -> Waiting {
    let (waiter, lock) = (waiter.clone(), lock.to_string());
    tokio::spawn(async move {
        let got = Lock::new(lock)
            .ttl(Duration::from_secs(30))
            .timeout(Duration::from_secs(20))
            .acquire_on(waiter)
            .await;
        (got, Instant::now())
    })
}

/// Takes `lock` on `holder` for 30 s.
pub async fn hold(holder: &Arc<dyn Backend>, lock: &str) -> LockGuard {
    Lock::new(lock)
        .ttl(Duration::from_secs(30))
        .acquire_on(holder.clone())
        .await
        .expect("acquire")
}

/// Releases `guard` and asserts that `waiting` then has the lock, and that the test sees so,
/// within `limit` of the release's start; returns the waiter's guard.
pub async fn assert_release_wakes_within(
    guard: LockGuard,
    waiting: Waiting,
    limit: Duration,
) -> LockGuard {
    let released = Instant::now();
    guard.release().await.expect("release");
    let (got, _) = waiting.await.expect("join");
    let got = got.expect("the waiter gets the lock");
    let took = released.elapsed();
    eprintln!("handoff from the release to the waiter: {took:?}");
    assert!(took < limit, "{took:?}");
    got
}

/// Takes `lock` through `holder`, starts a waiter on `waiter`, releases, and returns how long
/// after the release began the waiter had the lock.
pub async fn handoff(holder: &Arc<dyn Backend>, waiter: &Arc<dyn Backend>, lock: &str) -> Duration {
    let guard = hold(holder, lock).await;
    let waiting = spawn_waiter(waiter, lock);
    // Long enough for the waiter to be blocked on its notification (or watch).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    guard.release().await.expect("release");
    let (got, at) = waiting.await.expect("waiter");
    got.expect("the waiter gets the lock")
        .release()
        .await
        .expect("release");
    at - released
}

/// Ten handoffs from `holder` to `waiter` (two backend instances: to the runtime, two
/// processes with no shared local queue) each take less than `limit`. With `warm_up`, one
/// handoff first is not counted (while the waiter's listening connection opens, it polls).
pub async fn assert_release_wakes_another_process_within(
    holder: &Arc<dyn Backend>,
    waiter: &Arc<dyn Backend>,
    warm_up: bool,
    limit: Duration,
) {
    if warm_up {
        let first = handoff(holder, waiter, &crate::fresh_name("wake")).await;
        eprintln!("first handoff, while the waiter's listener connects: {first:?}");
    }
    let mut handoffs = Vec::new();
    for _ in 0..10 {
        handoffs.push(handoff(holder, waiter, &crate::fresh_name("wake")).await);
    }
    handoffs.sort();
    eprintln!(
        "handoff from release to the waiting process: median {:?}, max {:?}",
        handoffs[handoffs.len() / 2],
        handoffs[handoffs.len() - 1]
    );
    // Without notifications the waiter would sleep until its recheck (seconds).
    assert!(handoffs[handoffs.len() - 1] < limit, "{handoffs:?}");
}

/// Two processes (backend instances `a` and `b`) take `lock` in turns: each holds it 20 ms and
/// asks again right after its release, `rounds` times. The store keeps no queue, so only the
/// runtime's courtesy keeps a releaser from overtaking the other, which was woken by the
/// release: once both have seen the other hold the lock, a process should not take it twice in
/// a row while the other still wants it. Returns how often one did (without the courtesy, a
/// run of 8 turns in a row was seen).
pub async fn turns_taken_out_of_order(
    a: &Arc<dyn Backend>,
    b: &Arc<dyn Backend>,
    lock: &str,
    rounds: usize,
) -> usize {
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let worker = |who: usize, backend: &Arc<dyn Backend>| {
        let (backend, order, lock) = (backend.clone(), order.clone(), lock.to_string());
        tokio::spawn(async move {
            for _ in 0..rounds {
                let guard = Lock::new(lock.as_str())
                    .ttl(Duration::from_secs(30))
                    .timeout(Duration::from_secs(20))
                    .acquire_on(backend.clone())
                    .await
                    .expect("acquire");
                order.lock().expect("order").push(who);
                tokio::time::sleep(Duration::from_millis(20)).await;
                guard.release().await.expect("release");
            }
        })
    };
    let (first, second) = (worker(0, a), worker(1, b));
    first.await.expect("first process");
    second.await.expect("second process");
    let order = order.lock().expect("order").clone();
    eprintln!("turns: {order:?}");
    // From the second process's first turn on, both have seen the other hold the lock.
    let both = order
        .iter()
        .position(|&who| who != order[0])
        .expect("both had turns");
    let mut taken = [0, 0];
    let mut out_of_order = 0;
    for (i, &who) in order.iter().enumerate() {
        taken[who] += 1;
        if i > both && order[i - 1] == who && taken[1 - who] < rounds {
            out_of_order += 1;
        }
    }
    out_of_order
}

/// A `waiter` with notifications turned off says so, and still gets a lock `holder` releases
/// within 5 s, by polling.
pub async fn assert_polling_waiter_wakes(holder: &Arc<dyn Backend>, waiter: &Arc<dyn Backend>) {
    assert!(!waiter.capabilities().notified_waiting);
    let took = handoff(holder, waiter, &crate::fresh_name("polling")).await;
    eprintln!("handoff to a polling waiter: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Takes `lock` with a short `ttl` and checks that another owner is told it is busy; returns
/// the lease, which the caller lets run out.
pub async fn assert_short_lease_is_held(
    backend: &dyn Backend,
    lock: &LockName,
    ttl: Duration,
) -> Lease {
    let AcquireOutcome::Acquired(dead) = raw_acquire(backend, lock, ttl).await else {
        panic!("free");
    };
    assert!(matches!(
        raw_acquire(backend, lock, Duration::from_secs(5)).await,
        AcquireOutcome::Busy(_)
    ));
    dead
}

/// After `dead`'s lease on `lock` ran out on the server: a plain attempt (no takeover
/// version) takes the lock with a higher fencing token, `dead` can neither renew nor release
/// it, and the new holder keeps it.
pub async fn assert_expired_lease_is_replaced(backend: &dyn Backend, lock: &LockName, dead: Lease) {
    let AcquireOutcome::Acquired(next) = raw_acquire(backend, lock, Duration::from_secs(5)).await
    else {
        panic!("an expired lease must be free to a plain attempt");
    };
    assert!(next.fencing_token > dead.fencing_token);
    assert!(matches!(
        backend.renew(&dead, Duration::from_secs(5)).await,
        Err(Error::Lost { .. })
    ));
    assert!(matches!(
        backend.release(&dead).await,
        Err(Error::Lost { .. })
    ));
    assert!(
        backend.inspect(lock).await.expect("inspect").is_some(),
        "untouched"
    );
    backend.release(&next).await.expect("release");
}

/// `force_release` on a lock held through `backend`: refused for versions that are not the
/// holder's (naming the holder), then, at the version seen, it frees the lock, wakes a waiter on
/// `waiter` (another instance) within 250 ms, and the old holder's release is refused.
pub async fn assert_force_release_frees_only_the_version_seen(
    backend: &Arc<dyn Backend>,
    waiter: &Arc<dyn Backend>,
) {
    let lock = name(&crate::fresh_name("force"));
    let AcquireOutcome::Acquired(lease) =
        raw_acquire(&**backend, &lock, Duration::from_secs(30)).await
    else {
        panic!("free");
    };
    let listed = backend.list(lock.as_str()).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.owner, lease.owner);
    for stale in ["not-the-version", "1"] {
        let err = backend
            .force_release(&lock, &Version::new(stale))
            .await
            .expect_err("stale version");
        match err {
            Error::Changed { holder, .. } => {
                assert_eq!(holder.expect("named").owner, lease.owner);
            }
            other => panic!("{other}"),
        }
    }
    let waiting = {
        let (waiter, lock) = (waiter.clone(), lock.clone());
        tokio::spawn(async move {
            Lock::new(lock.as_str())
                .timeout(Duration::from_secs(20))
                .acquire_on(waiter)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forced = Instant::now();
    backend
        .force_release(&lock, &lease.version)
        .await
        .expect("the version seen");
    let got = waiting
        .await
        .expect("join")
        .expect("woken by the forced release");
    assert!(forced.elapsed() < Duration::from_millis(250));
    assert!(matches!(
        backend.release(&lease).await,
        Err(Error::Lost { .. })
    ));
    got.release().await.expect("release");
    assert!(backend.list(lock.as_str()).await.expect("list").is_empty());
}

/// Takes each of `names` on `backend`, checking that `inspect` finds it under its own name
/// with the guard's fencing token; returns the guards.
pub async fn acquire_each(backend: &Arc<dyn Backend>, names: &[String]) -> Vec<LockGuard> {
    let mut guards = Vec::new();
    for text in names {
        let guard = Lock::new(text.clone())
            .acquire_on(backend.clone())
            .await
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let holder = backend
            .inspect(&name(text))
            .await
            .expect("inspect")
            .expect("held");
        assert_eq!(holder.fencing_token, guard.fencing_token());
        guards.push(guard);
    }
    guards
}

/// Asserts that `list(prefix)` on `backend` names exactly the locks `expected`, in any order.
pub async fn assert_lists(backend: &dyn Backend, prefix: &str, expected: &[&str]) {
    let listed = backend.list(prefix).await.expect("list");
    let mut names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected = expected.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "list({prefix:?})");
}

/// Releases `guards`; then a 10 kB name is refused before it reaches the server, with a clear
/// error.
pub async fn release_all_and_refuse_a_long_name(
    backend: &Arc<dyn Backend>,
    guards: Vec<LockGuard>,
) {
    for guard in guards {
        guard.release().await.expect("release");
    }
    let err = Lock::new("x".repeat(10_000))
        .acquire_on(backend.clone())
        .await
        .expect_err("too long");
    assert!(matches!(err, Error::InvalidName { .. }), "{err}");
    assert!(err.to_string().contains("the limit is 1024"), "{err}");
}

/// Asserts that taking a lock through `backend` fails at once (not retried until its 30 s
/// timeout), permanently, saying `expected`, and without `secret` in the message.
pub async fn assert_refused(backend: Arc<dyn Backend>, expected: &str, secret: Option<&str>) {
    let started = Instant::now();
    let err = Lock::new("x")
        .timeout(Duration::from_secs(30))
        .acquire_on(backend)
        .await
        .expect_err("refused");
    assert!(!err.is_temporary(), "{err}");
    assert!(err.to_string().contains(expected), "{err}");
    if let Some(secret) = secret {
        assert!(
            !err.to_string().contains(secret),
            "no password in messages: {err}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not retried until the timeout"
    );
}

/// Runs the ignored test `from_env_child` of this same test binary in a child process with
/// the variables `env` set (so they never leak into other tests), and asserts that it passed.
pub fn run_from_env_child(env: &[(&str, &str)]) {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "from_env_child", "--ignored", "--nocapture"])
        .envs(env.iter().copied())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
