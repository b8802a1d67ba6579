//! A loopback TCP proxy that injects faults between a backend's client and a local test server.
//!
//! Put a [`FaultProxy`] between a lock backend's client (the AWS SDK for S3 and DynamoDB, the
//! GCS JSON-API client, the MongoDB driver, ...) and its local stand-in, point the client at
//! [`FaultProxy::url`] or [`FaultProxy::addr`], and inject faults to prove the lock stays safe
//! when answers are lost, connections reset, requests hang or the service throttles.
//!
//! The proxy pipes bytes both ways, one upstream connection per client connection, and knows
//! nothing of the protocol except where requests begin: on each connection a new *request*
//! begins with the first client bytes, and again whenever the client sends bytes after the
//! server has sent some (an HTTP `1xx` interim answer such as `100 Continue` does not count as
//! the server's answer). Faults apply per request: armed faults first ([`FaultProxy::arm`],
//! [`FaultProxy::arm_matching`], first in first out), then the standing [`Mode`].
//!
//! For an HTTP request the proxy waits for the whole head (up to 64 KiB) before deciding, so
//! a predicate sees the request line and every header; for other protocols it sees the bytes
//! of the first read of the request (a whole message when the client writes it at once).
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//!
//! use dlock_tests::fault_proxy::{Fault, FaultProxy};
//!
//! // A tiny upstream that echoes every read back.
//! let server = TcpListener::bind("127.0.0.1:0").unwrap();
//! let upstream = server.local_addr().unwrap();
//! std::thread::spawn(move || {
//!     for conn in server.incoming() {
//!         let Ok(mut conn) = conn else { continue };
//!         std::thread::spawn(move || {
//!             let mut buf = [0; 1024];
//!             while let Ok(n @ 1..) = conn.read(&mut buf) {
//!                 if conn.write_all(&buf[..n]).is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! });
//!
//! let proxy = FaultProxy::start(upstream);
//! let mut client = TcpStream::connect(proxy.addr()).unwrap();
//! client.write_all(b"ping").unwrap();
//! let mut answer = [0; 4];
//! client.read_exact(&mut answer).unwrap();
//! assert_eq!(&answer, b"ping");
//!
//! // The next request reaches the echo server, but its answer is lost on the way back.
//! proxy.arm(Fault::DropAnswer, 1);
//! client.write_all(b"pong").unwrap();
//! assert_eq!(client.read(&mut answer).unwrap_or(0), 0);
//! assert_eq!(proxy.counts().drop_answer, 1);
//! assert_eq!(proxy.requests(), 2);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the accept thread sleeps when no connection is waiting (it also checks for stop).
const ACCEPT_POLL: Duration = Duration::from_millis(2);
/// How long a connection waits to reach the upstream before giving up on the client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After the client closes its side, how long the server may still answer before both close.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// After an injected HTTP status, how long the proxy reads (and drops) what the client still
/// sends, so closing does not reset the connection before the client has read the answer.
const LINGERING_CLOSE: Duration = Duration::from_millis(500);
/// How long stopping waits for the connection threads before leaving them detached.
const STOP_BOUND: Duration = Duration::from_secs(5);
/// The most the proxy buffers while waiting for the end of an HTTP head.
const MAX_HEAD: usize = 64 * 1024;
/// Read buffer size for each direction.
const BUF_SIZE: usize = 16 * 1024;

/// A fault applied to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forward the request, then swallow the server's answer (and everything else it sends on
    /// that connection) and close the client side: the client sees the connection end with no
    /// answer although the server processed the request (the "lost answer" case).
    DropAnswer,
    /// Do not forward the request; reset the client connection (a TCP RST: `SO_LINGER` 0, then
    /// close) and close the upstream connection.
    Reset,
    /// Hold the request for this long, then forward it (and its answer) normally.
    Delay(Duration),
    /// Forward the request at once; hold the first bytes of its answer for this long.
    DelayAnswer(Duration),
    /// Do not forward and never answer: the client connection stays open and idle (everything
    /// the client sends on it from then on is dropped) until the client gives up or the proxy
    /// stops.
    Blackhole,
    /// HTTP/1.1 only: read the whole request (head, then a `Content-Length` or chunked body;
    /// not the body when the head says `Expect: 100-continue`), do not forward it, answer with
    /// this status, an S3-style XML error body (`<Error><Code>SlowDown</Code>...`) and
    /// `Connection: close`, then close.
    HttpStatus(u16),
}

/// The standing mode, applied to every request that no armed fault takes.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Mode {
    /// Forward everything (the default).
    #[default]
    Pass,
    /// Apply [`Fault::Blackhole`] to every request.
    Blackhole,
    /// Give each request, independently, a fault drawn uniformly from `kinds` with probability
    /// `rate` (0.0 to 1.0), from a PRNG seeded with `seed`: the same seed gives the same
    /// sequence of decisions for the same sequence of requests.
    Random {
        /// The PRNG seed (SplitMix64), reset each time the mode is set.
        seed: u64,
        /// The probability, 0.0 to 1.0, that a request gets a fault.
        rate: f64,
        /// The faults to draw from; empty means no faults.
        kinds: Vec<Fault>,
    },
}

/// How many requests passed and how many faults of each kind were applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests forwarded with no fault.
    pub passed: u64,
    /// [`Fault::DropAnswer`]s applied.
    pub drop_answer: u64,
    /// [`Fault::Reset`]s applied.
    pub reset: u64,
    /// [`Fault::Delay`]s applied.
    pub delay: u64,
    /// [`Fault::DelayAnswer`]s applied.
    pub delay_answer: u64,
    /// [`Fault::Blackhole`]s applied (armed or from [`Mode::Blackhole`]).
    pub blackhole: u64,
    /// [`Fault::HttpStatus`] answers injected.
    pub http_status: u64,
}

impl FaultCounts {
    /// All faults applied, of every kind.
    pub fn faults(&self) -> u64 {
        self.drop_answer
            + self.reset
            + self.delay
            + self.delay_answer
            + self.blackhole
            + self.http_status
    }
}

/// A loopback TCP proxy to one upstream address that injects [`Fault`]s per request.
///
/// It listens on `127.0.0.1` only, on a free port. Dropping it (or [`FaultProxy::stop`])
/// closes the listener and every connection and ends its threads (named `fault-proxy-*`),
/// waiting a bounded time for them.
pub struct FaultProxy {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.inner.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free `127.0.0.1` port, in [`Mode::Pass`].
    ///
    /// # Panics
    ///
    /// If it cannot listen or start its accept thread (see [`FaultProxy::try_start`]).
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        FaultProxy::try_start(upstream).expect("start the fault proxy")
    }

    /// Like [`FaultProxy::start`], returning the error instead of panicking.
    pub fn try_start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            upstream,
            stopping: AtomicBool::new(false),
            control: Mutex::new(Control::default()),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let accept_inner = inner.clone();
        let accept = thread::Builder::new()
            .name(format!("fault-proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(&accept_inner, &listener))?;
        Ok(FaultProxy {
            inner,
            addr,
            accept: Some(accept),
        })
    }

    /// The address the proxy listens on (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as an HTTP endpoint: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.inner.upstream
    }

    /// Queues `fault` for the next `n` requests, on any connection, after the faults already
    /// armed.
    pub fn arm(&self, fault: Fault, n: usize) {
        self.push_armed(fault, n, None);
    }

    /// Queues `fault` for the next `n` requests for which `predicate` holds, after the faults
    /// already armed. The predicate sees the first bytes of the request: for HTTP the whole
    /// head (request line and headers, up to 64 KiB, perhaps followed by some body), for other
    /// protocols at least the bytes of the first read. It runs under the proxy's control lock:
    /// it must not call back into the proxy. A predicate that panics counts as not matching.
    pub fn arm_matching<P>(&self, fault: Fault, n: usize, predicate: P)
    where
        P: Fn(&[u8]) -> bool + Send + 'static,
    {
        self.push_armed(fault, n, Some(Box::new(predicate)));
    }

    fn push_armed(&self, fault: Fault, n: usize, predicate: Option<Predicate>) {
        if n == 0 {
            return;
        }
        lock(&self.inner.control).armed.push(Armed {
            fault,
            remaining: n,
            predicate,
        });
    }

    /// Sets the standing mode for every request no armed fault takes, until changed.
    /// Setting [`Mode::Random`] (re)seeds its PRNG.
    pub fn set_mode(&self, mode: Mode) {
        let mut control = lock(&self.inner.control);
        if let Mode::Random { seed, .. } = &mode {
            control.rng = SplitMix64(*seed);
        }
        control.mode = mode;
    }

    /// Clears every armed fault and sets [`Mode::Pass`]. Connections already blackholed stay
    /// so (their request is lost); [`FaultProxy::disconnect_all`] closes them.
    pub fn heal(&self) {
        let mut control = lock(&self.inner.control);
        control.armed.clear();
        control.mode = Mode::Pass;
    }

    /// How many requests passed and how many faults of each kind were applied so far.
    pub fn counts(&self) -> FaultCounts {
        lock(&self.inner.control).counts
    }

    /// How many requests the proxy has seen so far, on all connections.
    pub fn requests(&self) -> u64 {
        lock(&self.inner.control).requests
    }

    /// How many client connections are open through the proxy right now.
    pub fn connections(&self) -> usize {
        lock(&self.inner.conns).len()
    }

    /// Closes every open connection, both sides (to the client it looks like a server
    /// restart). The proxy keeps listening; new connections work as before.
    pub fn disconnect_all(&self) {
        self.inner.close_all();
    }

    /// Stops the proxy: closes the listener and every connection and waits (a bounded time)
    /// for its threads. Dropping the proxy does the same.
    pub fn stop(self) {
        drop(self);
    }

    fn shutdown(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        // The accept thread polls the flag every few milliseconds, and drops the listener.
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        // No new connection can appear now: close the open ones and wait for their threads.
        self.inner.close_all();
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        let deadline = Instant::now() + STOP_BOUND;
        for handle in threads {
            while !handle.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type Predicate = Box<dyn Fn(&[u8]) -> bool + Send>;

struct Armed {
    fault: Fault,
    remaining: usize,
    predicate: Option<Predicate>,
}

#[derive(Default)]
struct Control {
    armed: Vec<Armed>,
    mode: Mode,
    rng: SplitMix64,
    counts: FaultCounts,
    requests: u64,
}

/// SplitMix64 (Steele, Lea, Flood): tiny, seedable, good enough to pick faults.
#[derive(Default)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Inner {
    upstream: SocketAddr,
    stopping: AtomicBool,
    control: Mutex<Control>,
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
}

impl Inner {
    /// Counts a new request and picks its fault (`None`: pass).
    fn decide(&self, head: &[u8]) -> Option<Fault> {
        let mut guard = lock(&self.control);
        let control = &mut *guard;
        control.requests += 1;
        let mut chosen = None;
        for i in 0..control.armed.len() {
            let armed = &mut control.armed[i];
            let matches = match &armed.predicate {
                None => true,
                Some(predicate) => {
                    catch_unwind(AssertUnwindSafe(|| predicate(head))).unwrap_or(false)
                }
            };
            if matches {
                chosen = Some(armed.fault);
                armed.remaining -= 1;
                if armed.remaining == 0 {
                    control.armed.remove(i);
                }
                break;
            }
        }
        if chosen.is_none() {
            chosen = match &control.mode {
                Mode::Pass => None,
                Mode::Blackhole => Some(Fault::Blackhole),
                Mode::Random { rate, kinds, .. } => {
                    let roll = control.rng.next_f64();
                    let pick = control.rng.next_u64();
                    if roll < *rate && !kinds.is_empty() {
                        Some(kinds[(pick % kinds.len() as u64) as usize])
                    } else {
                        None
                    }
                }
            };
        }
        let counts = &mut control.counts;
        match chosen {
            None => counts.passed += 1,
            Some(Fault::DropAnswer) => counts.drop_answer += 1,
            Some(Fault::Reset) => counts.reset += 1,
            Some(Fault::Delay(_)) => counts.delay += 1,
            Some(Fault::DelayAnswer(_)) => counts.delay_answer += 1,
            Some(Fault::Blackhole) => counts.blackhole += 1,
            Some(Fault::HttpStatus(_)) => counts.http_status += 1,
        }
        chosen
    }

    fn close_all(&self) {
        let conns: Vec<Arc<ConnShared>> = lock(&self.conns).values().cloned().collect();
        for conn in conns {
            conn.close();
        }
    }

    fn spawn_conn(self: &Arc<Self>, stream: TcpStream) {
        // Accepted sockets may inherit the listener's non-blocking flag on some platforms.
        if stream.set_nonblocking(false).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(stream);
        let shared = Arc::new(ConnShared::new(Arc::downgrade(&client)));
        lock(&self.conns).insert(id, shared.clone());
        let inner = self.clone();
        let spawned = thread::Builder::new()
            .name(format!("fault-proxy-conn-{id}"))
            .spawn(move || run_conn(&inner, id, &shared, client));
        match spawned {
            Ok(handle) => {
                let mut threads = lock(&self.threads);
                // Finished threads need no join; forget them so the list stays short.
                threads.retain(|t| !t.is_finished());
                threads.push(handle);
            }
            Err(_) => {
                lock(&self.conns).remove(&id);
            }
        }
    }
}

fn accept_loop(inner: &Arc<Inner>, listener: &TcpListener) {
    while !inner.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => inner.spawn_conn(stream),
            // WouldBlock: nothing waiting; anything else (e.g. out of descriptors): back off.
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

/// What the proxy does with the next answer bytes from the server.
#[derive(Debug, Default, Clone, Copy)]
enum Answer {
    #[default]
    Pass,
    Delay(Duration),
    Drop,
}

struct ConnState {
    /// The connection is being closed: both directions stop.
    closed: bool,
    /// The client connection is being reset: never shut it down (that would send a FIN).
    aborted: bool,
    /// A request was blackholed: drop everything from both sides from now on.
    blackholed: bool,
    /// The server sent bytes since the last request began (true before the first request).
    server_spoke: bool,
    /// The server-to-client thread has ended.
    s2c_done: bool,
    answer: Answer,
    client: Weak<TcpStream>,
    upstream: Weak<TcpStream>,
}

struct ConnShared {
    state: Mutex<ConnState>,
    cv: Condvar,
}

impl ConnShared {
    fn new(client: Weak<TcpStream>) -> ConnShared {
        ConnShared {
            state: Mutex::new(ConnState {
                closed: false,
                aborted: false,
                blackholed: false,
                server_spoke: true,
                s2c_done: false,
                answer: Answer::Pass,
                client,
                upstream: Weak::new(),
            }),
            cv: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    /// Closes both sides (the client side only if it is not being reset) and wakes every
    /// thread of the connection. Idempotent.
    fn close(&self) {
        let (client, upstream) = {
            let mut state = self.state();
            state.closed = true;
            let client = if state.aborted {
                None
            } else {
                state.client.upgrade()
            };
            (client, state.upstream.upgrade())
        };
        self.cv.notify_all();
        if let Some(upstream) = upstream {
            let _ = upstream.shutdown(Shutdown::Both);
        }
        if let Some(client) = client {
            let _ = client.shutdown(Shutdown::Both);
        }
    }

    /// Sleeps for `duration` unless the connection closes first; true if it is still open.
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now().checked_add(duration);
        let mut state = self.state();
        loop {
            if state.closed {
                return false;
            }
            let wait = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return true,
                },
                None => Duration::from_secs(3600),
            };
            state = self
                .cv
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until the server-to-client thread ends, the connection closes, or `limit`.
    fn wait_s2c(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut state = self.state();
        while !state.s2c_done && !state.closed {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            if left.is_zero() {
                return;
            }
            state = self
                .cv
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Unregisters and closes a connection when its thread ends, however it ends.
struct ConnGuard<'a> {
    inner: &'a Inner,
    id: u64,
    shared: &'a ConnShared,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.shared.close();
        lock(&self.inner.conns).remove(&self.id);
    }
}

/// How the client-to-server direction ended.
enum End {
    /// The client closed its side (or its read failed).
    ClientEof,
    /// The connection was closed (by the proxy, a fault, or a failed write).
    Closed,
    /// The client connection is being reset: drop it without shutting it down.
    Aborted,
}

fn run_conn(inner: &Arc<Inner>, id: u64, shared: &Arc<ConnShared>, client: Arc<TcpStream>) {
    let _guard = ConnGuard { inner, id, shared };
    let Ok(upstream) = TcpStream::connect_timeout(&inner.upstream, CONNECT_TIMEOUT) else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let upstream = Arc::new(upstream);
    {
        let mut state = shared.state();
        state.upstream = Arc::downgrade(&upstream);
        if state.closed {
            return;
        }
    }
    let s2c = {
        let (shared, client, upstream) = (shared.clone(), client.clone(), upstream.clone());
        thread::Builder::new()
            .name(format!("fault-proxy-s2c-{id}"))
            .spawn(move || server_to_client(&shared, &client, &upstream))
    };
    let Ok(s2c) = s2c else { return };
    match client_to_server(inner, shared, &client, &upstream) {
        End::ClientEof => {
            // Pass the client's FIN on, give the server a moment to answer, then close.
            let _ = upstream.shutdown(Shutdown::Write);
            shared.wait_s2c(HALF_CLOSE_GRACE);
            shared.close();
        }
        End::Closed => shared.close(),
        // The upstream is already shut down; the client is reset when its last handle drops.
        End::Aborted => {}
    }
    let _ = s2c.join();
    // `client` and `upstream` drop here, the guard after them.
}

fn client_to_server(
    inner: &Inner,
    shared: &ConnShared,
    client: &TcpStream,
    upstream: &TcpStream,
) -> End {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match read(client, &mut buf) {
            Ok(0) | Err(_) => {
                return if shared.state().closed {
                    End::Closed
                } else {
                    End::ClientEof
                };
            }
            Ok(n) => n,
        };
        let new_request = {
            let mut state = shared.state();
            if state.closed {
                return End::Closed;
            }
            if state.blackholed {
                continue;
            }
            std::mem::replace(&mut state.server_spoke, false)
        };
        if !new_request {
            // More of the current request.
            if write(upstream, &buf[..n]).is_err() {
                return End::Closed;
            }
            continue;
        }
        let mut request = buf[..n].to_vec();
        let client_eof = looks_like_http(&request) && gather_head(client, &mut request);
        let fault = inner.decide(&request);
        let answer = match fault {
            None | Some(Fault::Delay(_)) => Answer::Pass,
            Some(Fault::DelayAnswer(delay)) => Answer::Delay(delay),
            Some(Fault::DropAnswer) => Answer::Drop,
            Some(Fault::Blackhole) => {
                shared.state().blackholed = true;
                if client_eof {
                    return End::ClientEof;
                }
                continue;
            }
            Some(Fault::Reset) => {
                reset(shared, client, upstream);
                return End::Aborted;
            }
            Some(Fault::HttpStatus(status)) => {
                answer_status(client, request, client_eof, status);
                return End::Closed;
            }
        };
        if let Some(Fault::Delay(delay)) = fault
            && !shared.sleep(delay)
        {
            return End::Closed;
        }
        shared.state().answer = answer;
        if write(upstream, &request).is_err() {
            return End::Closed;
        }
        if client_eof {
            return End::ClientEof;
        }
    }
}

fn server_to_client(shared: &ConnShared, client: &TcpStream, upstream: &TcpStream) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match read(upstream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let interim = is_interim_http_response(chunk);
        let answer = {
            let mut state = shared.state();
            if state.closed {
                break;
            }
            if state.blackholed {
                continue;
            }
            if interim {
                Answer::Pass
            } else {
                std::mem::take(&mut state.answer)
            }
        };
        match answer {
            Answer::Pass => {}
            Answer::Delay(delay) => {
                if !shared.sleep(delay) {
                    break;
                }
            }
            Answer::Drop => {
                // Swallow this and everything after it: close both sides.
                shared.close();
                break;
            }
        }
        if !interim {
            shared.state().server_spoke = true;
        }
        if write(client, chunk).is_err() {
            break;
        }
    }
    let propagate = {
        let mut state = shared.state();
        state.s2c_done = true;
        !state.closed && !state.blackholed
    };
    shared.cv.notify_all();
    if propagate {
        // The server closed (or failed): end both directions. Data already written to the
        // client still arrives before the FIN.
        shared.close();
    }
}

/// Resets the client connection: `SO_LINGER` 0 so that closing its last handle sends a RST,
/// and closes the upstream connection. Falls back to a plain shutdown (a FIN, not a RST) if
/// the socket option cannot be set.
fn reset(shared: &ConnShared, client: &TcpStream, upstream: &TcpStream) {
    // std's `TcpStream::set_linger` is unstable (`tcp_linger`); tokio's `TcpSocket` sets it on
    // a duplicate of the descriptor (the option belongs to the socket, not the descriptor).
    let zero_linger = client
        .try_clone()
        .and_then(|dup| tokio::net::TcpSocket::from_std_stream(dup).set_zero_linger());
    {
        let mut state = shared.state();
        state.closed = true;
        state.aborted = zero_linger.is_ok();
    }
    shared.cv.notify_all();
    let _ = upstream.shutdown(Shutdown::Both);
    if zero_linger.is_err() {
        let _ = client.shutdown(Shutdown::Both);
    }
}

/// Reads the rest of the HTTP request, answers `status` and closes the client side gracefully.
fn answer_status(client: &TcpStream, request: Vec<u8>, client_eof: bool, status: u16) {
    if !client_eof {
        consume_http_request(client, request);
    }
    let _ = write(client, http_error_response(status).as_bytes());
    let _ = client.shutdown(Shutdown::Write);
    // Read what the client may still send until it closes (or briefly), so that closing with
    // unread data does not reset the connection before the client has read the answer.
    let deadline = Instant::now() + LINGERING_CLOSE;
    let mut sink = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || client.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match read(client, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// The response for an injected status: an S3-style XML error, `Connection: close`.
fn http_error_response(status: u16) -> String {
    let (reason, code) = match status {
        400 => ("Bad Request", "BadRequest"),
        403 => ("Forbidden", "AccessDenied"),
        404 => ("Not Found", "NoSuchKey"),
        409 => ("Conflict", "OperationAborted"),
        412 => ("Precondition Failed", "PreconditionFailed"),
        429 => ("Too Many Requests", "SlowDown"),
        500 => ("Internal Server Error", "InternalError"),
        502 => ("Bad Gateway", "BadGateway"),
        503 => ("Service Unavailable", "SlowDown"),
        504 => ("Gateway Timeout", "GatewayTimeout"),
        _ => ("Injected Fault", "InjectedFault"),
    };
    let body = format!("<Error><Code>{code}</Code><Message>injected</Message></Error>");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reads (and drops) the body of the HTTP request whose first bytes are `request`.
fn consume_http_request(client: &TcpStream, request: Vec<u8>) {
    let Some(head_end) = find(&request, b"\r\n\r\n") else {
        return;
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim().to_string())
            .collect::<Vec<_>>()
    };
    if header("expect").iter().any(|v| v == "100-continue") {
        // The client waits for `100 Continue` before the body: a final answer is enough.
        return;
    }
    let chunked = header("transfer-encoding")
        .iter()
        .any(|v| v.split(',').any(|coding| coding.trim() == "chunked"));
    let mut body = Pull {
        buf: request,
        pos: head_end + 4,
        stream: client,
    };
    if chunked {
        loop {
            let Some(line) = body.line() else { return };
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                return;
            };
            if size == 0 {
                // Trailers, up to the empty line.
                while let Some(line) = body.line() {
                    if line.is_empty() {
                        return;
                    }
                }
                return;
            }
            if !body.skip(size.saturating_add(2)) {
                return;
            }
        }
    } else if let Some(length) = header("content-length")
        .first()
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.skip(length);
    }
}

/// Buffered bytes of a request, then more from the client as needed.
struct Pull<'a> {
    buf: Vec<u8>,
    pos: usize,
    stream: &'a TcpStream,
}

impl Pull<'_> {
    fn fill(&mut self) -> bool {
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        match read(self.stream, &mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next line without its CRLF; `None` at EOF or past 8 KiB without a CRLF.
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                let line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                return Some(line);
            }
            if self.buf.len() - self.pos > 8192 || !self.fill() {
                return None;
            }
        }
    }

    /// Skips `n` bytes; false at EOF first.
    fn skip(&mut self, mut n: usize) -> bool {
        loop {
            let take = (self.buf.len() - self.pos).min(n);
            self.pos += take;
            n -= take;
            if n == 0 {
                return true;
            }
            if !self.fill() {
                return false;
            }
        }
    }
}

/// Reads more of an HTTP request until the end of its head; true if the client closed first.
fn gather_head(client: &TcpStream, request: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    while find(request, b"\r\n\r\n").is_none() && request.len() < MAX_HEAD {
        match read(client, &mut chunk) {
            Ok(0) | Err(_) => return true,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    false
}

/// Whether these first bytes of a request look like an HTTP request line (`METHOD `).
fn looks_like_http(bytes: &[u8]) -> bool {
    let method = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    (1..=16).contains(&method) && bytes.get(method).is_none_or(|&b| b == b' ')
}

/// Whether these bytes from the server are exactly one HTTP `1xx` interim response (such as
/// `100 Continue`), which is not the answer to the request (`101` is: the protocol changes).
fn is_interim_http_response(bytes: &[u8]) -> bool {
    let interim_status = (bytes.starts_with(b"HTTP/1.1 1") || bytes.starts_with(b"HTTP/1.0 1"))
        && !bytes[9..].starts_with(b"101");
    interim_status && find(bytes, b"\r\n\r\n").is_some_and(|end| end + 4 == bytes.len())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read(mut stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn write(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_is_deterministic_and_uniform_enough() {
        let mut a = SplitMix64(42);
        let mut b = SplitMix64(42);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut rng = SplitMix64(7);
        let below_half = (0..10_000).filter(|_| rng.next_f64() < 0.5).count();
        assert!((4_500..5_500).contains(&below_half), "{below_half}");
    }

    #[test]
    fn recognises_http_requests_and_interim_answers() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"DELETE /b/k HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PO"));
        assert!(!looks_like_http(b"\x2a\x00\x00\x00\x01\x02"));
        assert!(!looks_like_http(b"*1\r\n$4\r\nPING\r\n"));
        assert!(!looks_like_http(b"PING\r\n"));
        assert!(is_interim_http_response(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!is_interim_http_response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
        ));
        assert!(!is_interim_http_response(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
        ));
        assert!(!is_interim_http_response(b"HTTP/1.1 200 OK\r\n\r\n"));
    }
}
