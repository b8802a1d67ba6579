//! Waiting on releases a server announces: the part shared by the backends whose waiters are
//! woken by a message (PostgreSQL's `LISTEN/NOTIFY`, Redis's pub/sub).
//!
//! A backend with notifications keeps one [`Listener`]: a background task holding one
//! connection that listens on the backend's release channel, shared by all its waiters. This
//! module does everything but talk to the server:
//!
//! - the bookkeeping ([`Heard`]): when each lock name was last released (at most
//!   [`MAX_REMEMBERED`] names; when there are more, those older than [`REMEMBER`] are forgotten
//!   first, then all), when the subscription last took effect, and whether it is in effect
//!   now;
//! - [`wait`](Listener::wait): returns at once if a release of the name was heard after the
//!   waiter's `since` (or the subscription started after it, or the releases before it were
//!   forgotten, so one may have been missed), else at the next release of that name or the
//!   next connection change; while not subscribed, after a short poll ([`FALLBACK_POLL`]);
//! - the reconnect loop ([`Listener::start`]): one [`Server::session`] after another, with a
//!   growing, jittered pause after each failure, waking every waiter when the connection is
//!   made or lost;
//! - the check that a session's connection is alive ([`keep_alive`]) and the time limits on its
//!   requests ([`within`]).
//!
//! What stays in each backend ([`Server`]): connecting, subscribing (`LISTEN`, `SUBSCRIBE`),
//! reading the server's messages and what a ping is.

use crate::background::Background;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the listening connection is checked with a ping (a dead one is replaced).
pub(crate) const LISTEN_PING: Duration = Duration::from_secs(5);
/// How long a waiter sleeps between looks while the listening connection is down.
pub(crate) const FALLBACK_POLL: Duration = Duration::from_millis(500);
/// The most releases the listener remembers (it forgets older ones first, then all).
pub(crate) const MAX_REMEMBERED: usize = 4096;
/// How long the listener remembers a release when it has to forget some.
pub(crate) const REMEMBER: Duration = Duration::from_secs(60);

/// The server-specific half of a [`Listener`]: one listening connection at a time.
pub(crate) trait Server: Send + Sync + 'static {
    /// Logged when the listening task cannot be started.
    const START_FAILED: &'static str;
    /// Logged when a connection that was listening ends (the listener reconnects).
    const LOST: &'static str;
    /// Logged when a connection fails before it listened.
    const FAILING: &'static str;

    /// Connects, subscribes to the release channel, then calls [`Heard::connected`] and, for
    /// every release read, [`Heard::released`] with the lock's name; returns only when the
    /// connection fails (or ends), with why.
    fn session(&self, heard: &Heard) -> impl Future<Output = Result<(), String>> + Send;
}

/// The listening connection shared by a backend's waiters: a [`Server`], what was heard, and
/// the task that listens.
pub(crate) struct Listener<S> {
    server: S,
    heard: Heard,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl<S: Server> Listener<S> {
    /// A listener that has not started: [`start`](Listener::start) connects.
    pub(crate) fn new(server: S) -> Listener<S> {
        Listener {
            server,
            heard: Heard::default(),
            task: Mutex::new(None),
        }
    }

    /// Starts the listening task unless it runs.
    pub(crate) fn start(self: &Arc<Self>) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.is_some() {
            return;
        }
        match Background::default().spawn(self.clone().run()) {
            Ok(handle) => *task = Some(handle.abort_handle()),
            Err(e) => tracing::warn!(error = %e, "{}", S::START_FAILED),
        }
    }

    /// Stops the listening task (when its backend is dropped).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    /// Returns when `name` may have been released after `since`: see [`Heard::wait`].
    pub(crate) async fn wait(&self, name: &str, since: Instant) {
        self.heard.wait(name, since).await;
    }

    /// Listens until stopped, reconnecting after a growing pause when the connection ends.
    async fn run(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            let result = self.server.session(&self.heard).await;
            let was_listening = self.heard.disconnected();
            match result {
                Err(e) if was_listening => {
                    tracing::info!(error = %e, "{}", S::LOST);
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "{}", S::FAILING);
                }
                Ok(()) => failures = 0,
            }
            let base = Duration::from_millis(50)
                .saturating_mul(1 << failures.min(7))
                .min(Duration::from_secs(5));
            let jitter = base.mul_f64(fastrand::f64() * 0.5);
            tokio::time::sleep(base + jitter).await;
        }
    }
}

/// What a listener heard: releases by name, and whether (since when) it listens.
#[derive(Default)]
pub(crate) struct Heard {
    state: Mutex<State>,
    /// Woken when the connection is made or lost: every waiter looks again.
    everyone: Notify,
}

#[derive(Default)]
struct State {
    /// When the subscription last took effect; `None` while not listening.
    listening_since: Option<Instant>,
    /// When a release of each name was last heard.
    released: HashMap<String, Instant>,
    /// Releases heard before this were forgotten.
    forgotten_before: Option<Instant>,
    /// The waiters of each name.
    waiters: HashMap<String, Arc<Notify>>,
}

/// A waiter's registration; removed with the last waiter of its name.
struct Registration<'a> {
    heard: &'a Heard,
    name: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut state = self.heard.lock();
        if let Some(notify) = state.waiters.get(self.name)
            && Arc::ptr_eq(notify, &self.notify)
            && Arc::strong_count(notify) <= 2
        {
            state.waiters.remove(self.name);
        }
    }
}

impl Heard {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The subscription took effect: from now on every release is heard. Wakes every waiter.
    pub(crate) fn connected(&self) {
        self.lock().listening_since = Some(Instant::now());
        self.everyone.notify_waiters();
    }

    /// The connection ended; returns whether it was listening. Wakes every waiter.
    fn disconnected(&self) -> bool {
        let was = self.lock().listening_since.take().is_some();
        self.everyone.notify_waiters();
        was
    }

    /// A release of `name` was heard: remembers it and wakes the waiters of that name.
    pub(crate) fn released(&self, name: &str) {
        let now = Instant::now();
        let mut state = self.lock();
        state.released.insert(name.to_string(), now);
        if state.released.len() > MAX_REMEMBERED {
            let horizon = now.checked_sub(REMEMBER).unwrap_or(now);
            state.released.retain(|_, at| *at >= horizon);
            if state.released.len() > MAX_REMEMBERED {
                state.released.clear();
                state.forgotten_before = Some(now);
            } else {
                state.forgotten_before =
                    Some(horizon.max(state.forgotten_before.unwrap_or(horizon)));
            }
        }
        if let Some(notify) = state.waiters.get(name) {
            notify.notify_waiters();
        }
    }

    /// Returns when `name` may have been released after `since`: at once if a release was
    /// heard since then (or the connection was made since then, so one may have been missed),
    /// else at the next release, connection change or — while not listening — a short poll.
    async fn wait(&self, name: &str, since: Instant) {
        let registration = {
            let mut state = self.lock();
            let notify = state
                .waiters
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(Notify::new()))
                .clone();
            Registration {
                heard: self,
                name,
                notify,
            }
        };
        let mut mine = pin!(registration.notify.notified());
        let mut all = pin!(self.everyone.notified());
        let listening = {
            let state = self.lock();
            // Subscribed before looking: a release heard after this look wakes us.
            mine.as_mut().enable();
            all.as_mut().enable();
            match state.listening_since {
                None => false,
                Some(at) if at > since => return,
                Some(_) => {
                    let heard = state.released.get(name).is_some_and(|at| *at > since);
                    let forgotten = state.forgotten_before.is_some_and(|at| at > since);
                    if heard || forgotten {
                        return;
                    }
                    true
                }
            }
        };
        if listening {
            tokio::select! {
                _ = mine => {}
                _ = all => {}
            }
        } else {
            tokio::select! {
                _ = all => {}
                _ = tokio::time::sleep(FALLBACK_POLL) => {}
            }
        }
    }
}

/// `request`'s answer within `limit`, with its error as text; `silence` is the error when no
/// answer comes in time.
pub(crate) async fn within<T, E: fmt::Display>(
    limit: Duration,
    request: impl Future<Output = Result<T, E>>,
    silence: &str,
) -> Result<T, String> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(silence.to_string()),
    }
}

/// Pings every [`LISTEN_PING`] until a ping fails or goes `request_timeout` without an answer:
/// a listening connection that died without a word is noticed (and replaced).
pub(crate) async fn keep_alive<F, E>(
    request_timeout: Duration,
    mut ping: impl FnMut() -> F,
) -> Result<(), String>
where
    F: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    loop {
        tokio::time::sleep(LISTEN_PING).await;
        within(request_timeout, ping(), "no answer to a ping").await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a wait is still waiting after `after` (tokio's paused time; the releases are
    /// dated by the real clock).
    async fn still_waiting(heard: &Heard, name: &str, since: Instant, after: Duration) -> bool {
        tokio::time::timeout(after, heard.wait(name, since))
            .await
            .is_err()
    }

    /// A moment strictly after every `Instant` taken so far, and strictly before the next.
    fn tick() -> Instant {
        std::thread::sleep(Duration::from_millis(1));
        let now = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        now
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_returns_at_once_for_what_it_may_have_missed() {
        let heard = Heard::default();
        let before = tick();
        heard.connected();
        assert!(
            !still_waiting(&heard, "a", before, Duration::from_millis(1)).await,
            "connected after `since`: a release may have been missed"
        );
        let since = tick();
        assert!(still_waiting(&heard, "a", since, Duration::from_secs(60)).await);
        heard.released("b");
        assert!(still_waiting(&heard, "a", since, Duration::from_secs(60)).await);
        heard.released("a");
        assert!(!still_waiting(&heard, "a", since, Duration::from_millis(1)).await);
        assert!(
            still_waiting(&heard, "a", tick(), Duration::from_secs(60)).await,
            "a release before `since` does not count"
        );
        assert!(heard.lock().waiters.is_empty(), "registrations are removed");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_at_their_release_and_at_a_disconnection() {
        let heard = Arc::new(Heard::default());
        heard.connected();
        let since = tick();
        let wait = |name: &'static str| {
            let heard = heard.clone();
            tokio::spawn(async move { heard.wait(name, since).await })
        };
        let (a, b) = (wait("a"), wait("b"));
        tokio::task::yield_now().await;
        heard.released("a");
        a.await.expect("woken by its release");
        tokio::task::yield_now().await;
        assert!(!b.is_finished(), "not woken by another name's release");
        assert!(heard.disconnected());
        b.await.expect("woken by the disconnection");
        assert!(!heard.disconnected(), "not listening any more");
    }

    #[tokio::test(start_paused = true)]
    async fn while_not_listening_waiters_poll() {
        let heard = Heard::default();
        let since = Instant::now();
        let short = FALLBACK_POLL - Duration::from_millis(1);
        assert!(still_waiting(&heard, "a", since, short).await);
        let long = FALLBACK_POLL + Duration::from_millis(1);
        assert!(!still_waiting(&heard, "a", since, long).await);
    }

    #[test]
    fn older_releases_are_forgotten_first() {
        let heard = Heard::default();
        let old = Instant::now()
            .checked_sub(REMEMBER * 2)
            .expect("a clock this old");
        heard.lock().released = (0..MAX_REMEMBERED).map(|i| (i.to_string(), old)).collect();
        heard.released("new");
        let state = heard.lock();
        assert_eq!(state.released.len(), 1);
        assert!(state.released.contains_key("new"));
        assert!(state.forgotten_before.is_some_and(|at| at > old));
    }

    #[test]
    fn then_all_of_them() {
        let heard = Heard::default();
        for i in 0..=MAX_REMEMBERED {
            heard.released(&i.to_string());
        }
        let state = heard.lock();
        assert!(state.released.is_empty(), "all heard within REMEMBER");
        assert!(state.forgotten_before.is_some());
    }
}
