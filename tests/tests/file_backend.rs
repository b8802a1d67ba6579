//! The file backend across processes and users: counted mutual exclusion, a `kill -9`'d
//! holder, the multi-user traps of shared lock directories, and planted links.

use dlock_runtime::{Backend, FileBackend, Lock, LockName};
use dlock_tests::{
    Holder, assert_exclusive_across_processes, fresh_name, try_once, try_once_with,
    worker_copy_for_all_users,
};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

#[test]
fn four_processes_never_overlap() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_exclusive_across_processes(Path::new(WORKER), &url(dir.path()), 4, 250);
}

#[test]
fn a_killed_holders_lock_is_free_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, name) = (url(dir.path()), fresh_name("killed"));
    let holder = Holder::start(Path::new(WORKER), &url, &name);
    let busy = try_once(Path::new(WORKER), &url, &name).unwrap_err();
    assert!(
        busy.contains(&format!("pid {}", holder.pid())),
        "the busy error names the holder: {busy}"
    );
    assert!(
        busy.contains("The kernel frees it when"),
        "and says how it is freed: {busy}"
    );
    holder.kill();
    let start = Instant::now();
    try_once(Path::new(WORKER), &url, &name).expect("free right after kill -9");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// Turns on Linux's `fs.protected_regular` (as Debian and Ubuntu ship it) for the test, so the
/// multi-user trap is real here, and restores the old value afterwards.
struct ProtectedRegular(Option<String>);

impl ProtectedRegular {
    const PATH: &str = "/proc/sys/fs/protected_regular";

    fn enable() -> Self {
        let old = std::fs::read_to_string(Self::PATH).expect("read protected_regular");
        std::fs::write(Self::PATH, "1")
            .expect("this test runs as root and sets fs.protected_regular=1");
        ProtectedRegular(Some(old))
    }
}

impl Drop for ProtectedRegular {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write(Self::PATH, old.trim());
        }
    }
}

const NOBODY: u32 = 65534;

#[test]
fn users_share_lock_files_in_a_sticky_directory() {
    // Only root can run a worker as another user.
    let uid = std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid();
    assert_eq!(
        uid, 0,
        "this test needs root: it runs a worker as `nobody` (uid {NOBODY})"
    );
    let _protected = ProtectedRegular::enable();

    let base = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let worker = worker_copy_for_all_users(Path::new(WORKER), base.path());
    let locks = base.path().join("locks");
    let backend = Arc::new(FileBackend::shared(&locks).expect("lock dir"));
    let mode = std::fs::metadata(&locks)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(
        mode, 0o1777,
        "a new lock directory is sticky and shared like /tmp"
    );
    let url = format!("{}?shared=true", url(&locks));
    let as_nobody = || {
        let mut command = Command::new(&worker);
        command.uid(NOBODY).gid(NOBODY);
        command
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");

    // `nobody` holds a lock, so its file exists, owned by `nobody`.
    let name = fresh_name("users-a");
    let path = backend.path_for(&LockName::new(name.as_str()).expect("name"));
    let holder = Holder::start_with(as_nobody(), &url, &name);
    assert_eq!(std::fs::metadata(&path).expect("stat").uid(), NOBODY);
    assert_eq!(
        std::fs::metadata(&path).expect("stat").mode() & 0o777,
        0o666,
        "shared lock files are readable and writable by every user"
    );
    let busy = try_once(&worker, &url, &name).expect_err("held by nobody");
    assert!(
        busy.contains(&format!("pid {}", holder.pid())),
        "root sees nobody's record: {busy}"
    );
    // Killed, it leaves its file behind, still owned by `nobody`.
    holder.kill();
    let trap = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path);
    assert_eq!(
        trap.map(drop).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::PermissionDenied),
        "the multi-user trap is live: even root cannot O_CREAT-open another user's file here"
    );
    rt.block_on(async {
        let guard = Lock::new(name.as_str())
            .acquire_on(backend.clone())
            .await
            .expect("root locks the file nobody left");
        let busy = try_once_with(as_nobody(), &url, &name).unwrap_err();
        assert!(
            busy.contains(&format!("pid {}", std::process::id())),
            "nobody sees root's record: {busy}"
        );
        guard.release().await.expect("release");
    });
    assert!(
        !path.exists(),
        "root may remove any file here, and does on release"
    );

    // And the other way round: root's leftover file, locked by nobody, who may not remove it.
    let name = fresh_name("users-b");
    let path = backend.path_for(&LockName::new(name.as_str()).expect("name"));
    Holder::start(&worker, &url, &name).kill();
    assert_eq!(std::fs::metadata(&path).expect("stat").uid(), 0);
    try_once_with(as_nobody(), &url, &name).expect("nobody locks root's lock file");
    assert!(
        path.exists(),
        "nobody may not remove root's file in a sticky directory, so it stays, marked free"
    );
    rt.block_on(async {
        let free = backend
            .inspect(&LockName::new(name.as_str()).expect("name"))
            .await
            .expect("inspect");
        assert!(free.is_none(), "{free:?}");
    });
}

#[tokio::test]
async fn planted_links_are_never_followed_or_written_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(FileBackend::new(dir.path().join("locks")).expect("dir"));
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "do not touch\n").expect("write");

    let name = LockName::new(fresh_name("symlink")).expect("name");
    std::os::unix::fs::symlink(&precious, backend.path_for(&name)).expect("plant symlink");
    let err = Lock::new(name.as_str())
        .acquire_on(backend.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("refusing to follow the symbolic link"),
        "{err}"
    );
    assert!(!err.is_temporary(), "a planted link is not retried");

    let name = LockName::new(fresh_name("hardlink")).expect("name");
    std::fs::hard_link(&precious, backend.path_for(&name)).expect("plant hard link");
    let err = Lock::new(name.as_str())
        .acquire_on(backend.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hard links"), "{err}");
    assert!(
        backend.inspect(&name).await.is_err(),
        "inspect refuses it too"
    );

    assert_eq!(
        std::fs::read_to_string(&precious).expect("read"),
        "do not touch\n"
    );
}

#[tokio::test]
async fn hostile_names_stay_inside_the_directory() {
    let base = tempfile::tempdir().expect("tempdir");
    let locks = base.path().join("locks");
    let backend = Arc::new(FileBackend::new(&locks).expect("dir"));
    let long = "n".repeat(1024);
    for name in [
        "../escape",
        "/etc/passwd",
        "a/../../b",
        "..",
        ".",
        "%2e%2e%2f",
        long.as_str(),
    ] {
        let guard = Lock::new(name)
            .acquire_on(backend.clone())
            .await
            .expect("any valid name works");
        let path = backend.path_for(guard.name());
        assert_eq!(path.parent(), Some(locks.as_path()), "{name:?}: {path:?}");
        assert!(path.exists(), "{name:?}: the lock file is where it says");
        guard.release().await.expect("release");
    }
    let inside: Vec<_> = std::fs::read_dir(&locks)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        inside,
        [".dlock-fencing"],
        "released lock files are removed; only the fencing counter stays"
    );
    let outside: Vec<_> = std::fs::read_dir(base.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        outside,
        ["locks"],
        "nothing was created outside the lock directory"
    );
    for name in ["", "nul\0byte", &"n".repeat(1025)] {
        let err = Lock::new(name)
            .acquire_on(backend.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err, dlock_runtime::Error::InvalidName { .. }),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn a_missing_or_unusable_directory_is_a_clear_error() {
    let base = tempfile::tempdir().expect("tempdir");
    let file = base.path().join("plain-file");
    std::fs::write(&file, "").expect("write");
    let err = FileBackend::new(&file).unwrap_err();
    assert!(err.to_string().contains("is not a directory"), "{err}");
    let err = dlock_runtime::backend_from_url("file://relative/path").unwrap_err();
    assert!(err.to_string().contains("absolute path"), "{err}");
}

use std::os::unix::fs::MetadataExt;

#[tokio::test]
async fn fencing_tokens_survive_removed_and_damaged_lock_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(FileBackend::new(dir.path()).expect("dir"));
    let name = LockName::new(fresh_name("tokens")).expect("name");
    let token = |guard: &dlock_runtime::LockGuard| guard.fencing_token().expect("token");
    let first = Lock::new(name.as_str())
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    let t1 = token(&first);
    first.release().await.expect("release");
    assert!(!backend.path_for(&name).exists(), "removed on release");
    // A damaged record in a lock file is not where tokens come from.
    std::fs::write(backend.path_for(&name), "token=0\ngarbage").expect("damage");
    let second = Lock::new(name.as_str())
        .acquire_on(backend.clone())
        .await
        .expect("acquire over a damaged record");
    let t2 = token(&second);
    assert!(t2 > t1, "{t2} after {t1}");
    second.release().await.expect("release");
    let other = Lock::new(fresh_name("tokens-other"))
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    assert!(token(&other) > t2, "one counter for the directory");
    other.release().await.expect("release");
}

/// First come, first served across processes: waiters get the lock in the order they started
/// waiting, and a process that has just released it lets them go first. (Each backend
/// instance stands for a process: separate instances share no local queue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_get_the_lock_in_arrival_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = fresh_name("fifo");
    let process = || Arc::new(FileBackend::new(dir.path()).expect("dir"));
    let first = process();
    let holder = Lock::new(name.as_str())
        .acquire_on(first.clone())
        .await
        .expect("acquire");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 1..=3 {
        let (backend, order, name) = (process(), order.clone(), name.clone());
        waiters.push(tokio::spawn(async move {
            let guard = Lock::new(name.as_str())
                .timeout(Duration::from_secs(30))
                .acquire_on(backend)
                .await
                .expect("acquire");
            order.lock().expect("order").push(i);
            tokio::time::sleep(Duration::from_millis(30)).await;
            guard.release().await.expect("release");
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    holder.release().await.expect("release");
    let again = Lock::new(name.as_str())
        .timeout(Duration::from_secs(30))
        .acquire_on(first)
        .await
        .expect("acquire again");
    order.lock().expect("order").push(0);
    again.release().await.expect("release");
    for waiter in waiters {
        waiter.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("order"), [1, 2, 3, 0]);
}

/// Waiters do not wake each other: one change of the lock file wakes each waiter once, it
/// looks, finds the lock still held and sleeps again. (A waiter that watched through a
/// descriptor opened for writing woke every other waiter when it closed it, and they it: a
/// storm of looks that ran on by itself, ~2,400 per acquisition with 8 processes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_do_not_wake_each_other() {
    use dlock_runtime::conformance::FaultyBackend;
    let dir = tempfile::tempdir().expect("tempdir");
    let name = fresh_name("herd");
    let holder = Lock::new(name.as_str())
        .acquire_on(Arc::new(FileBackend::new(dir.path()).expect("dir")))
        .await
        .expect("acquire");
    let mut waiters = Vec::new();
    let mut counted = Vec::new();
    for _ in 0..4 {
        let backend = Arc::new(FaultyBackend::new(Arc::new(
            FileBackend::new(dir.path()).expect("dir"),
        )));
        counted.push(backend.clone());
        let name = name.clone();
        waiters.push(tokio::spawn(async move {
            Lock::new(name.as_str())
                .timeout(Duration::from_millis(1500))
                .acquire_on(backend)
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Something else closes the lock file after writing: every watch wakes once.
    let path = FileBackend::new(dir.path())
        .expect("dir")
        .path_for(&LockName::new(name.as_str()).expect("name"));
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open"),
    );
    for waiter in waiters {
        assert!(
            waiter.await.expect("waiter").is_err(),
            "the lock stays held"
        );
    }
    let looks: Vec<usize> = counted.iter().map(|b| b.calls().acquires).collect();
    eprintln!("looks per waiter: {looks:?}");
    // The first look, one after the wake-up, a last one at the deadline (3), and one spare.
    assert!(
        looks.iter().all(|&n| n <= 4),
        "each waiter looked a few times, not in a storm: {looks:?}"
    );
    holder.release().await.expect("release");
}
