//! The fault-injection proxy does what each fault says, against a tiny in-test HTTP/1.1
//! upstream that counts the requests it processed, with raw keep-alive HTTP/1.1 clients.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dlock_tests::fault_proxy::{Fault, FaultCounts, FaultProxy, Mode};

/// A loopback HTTP/1.1 server: keep-alive, reads each whole request (Content-Length or
/// chunked body), counts it, records its request line and when it arrived, and answers
/// `200` with the body `ok N` (N: the requests it has processed so far, this one included).
struct Upstream {
    addr: SocketAddr,
    processed: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let upstream = Upstream {
            addr,
            processed: Arc::default(),
            open: Arc::default(),
            connections: Arc::default(),
            seen: Arc::default(),
        };
        let (processed, open, connections, seen) = (
            upstream.processed.clone(),
            upstream.open.clone(),
            upstream.connections.clone(),
            upstream.seen.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let (processed, open, seen) = (processed.clone(), open.clone(), seen.clone());
                thread::spawn(move || {
                    let _ = serve(stream, &processed, &seen);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        upstream
    }

    fn processed(&self) -> usize {
        self.processed.load(Ordering::SeqCst)
    }

    fn request_lines(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(line, _)| line.clone())
            .collect()
    }

    fn last_arrival(&self) -> Instant {
        self.seen.lock().unwrap().last().expect("a request").1
    }
}

fn serve(
    stream: TcpStream,
    processed: &AtomicUsize,
    seen: &Mutex<Vec<(String, Instant)>>,
) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let arrived = Instant::now();
        read_body(&mut reader, &head)?;
        let n = processed.fetch_add(1, Ordering::SeqCst) + 1;
        seen.lock().unwrap().push((head[0].clone(), arrived));
        let body = format!("ok {n}");
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

/// The head's lines (request or status line first) without CRLFs; `None` at EOF first.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

fn header(head: &[String], name: &str) -> Option<String> {
    head.iter().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

fn read_body(reader: &mut impl BufRead, head: &[String]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                        return Ok(body);
                    }
                }
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let length = header(head, "content-length").map_or(0, |v| v.parse().unwrap());
    body.resize(length, 0);
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// An HTTP/1.1 response as the client read it.
#[derive(Debug)]
struct Response {
    status: u16,
    head: Vec<String>,
    body: String,
}

/// A raw keep-alive HTTP/1.1 client.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn set_read_timeout(&self, timeout: Duration) {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
    }

    fn send(&mut self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> io::Result<()> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.writer.write_all(&bytes)
    }

    /// Sends a chunked PUT, one write per chunk, with a short pause between writes.
    fn send_chunked(&mut self, path: &str, chunks: &[&[u8]]) -> io::Result<()> {
        write!(
            self.writer,
            "PUT {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        )?;
        for chunk in chunks {
            thread::sleep(Duration::from_millis(20));
            write!(self.writer, "{:x};ext=1\r\n", chunk.len())?;
            self.writer.write_all(chunk)?;
            self.writer.write_all(b"\r\n")?;
        }
        thread::sleep(Duration::from_millis(20));
        self.writer.write_all(b"0\r\nx-trailer: t\r\n\r\n")
    }

    /// The next response; `Ok(None)` if the connection ended before any byte of it.
    fn response(&mut self) -> io::Result<Option<Response>> {
        let Some(head) = read_head(&mut self.reader)? else {
            return Ok(None);
        };
        let status = head[0].split(' ').nth(1).unwrap().parse().unwrap();
        let body = read_body(&mut self.reader, &head)?;
        Ok(Some(Response {
            status,
            head,
            body: String::from_utf8(body).unwrap(),
        }))
    }

    fn call(&mut self, method: &str, path: &str) -> io::Result<Option<Response>> {
        self.send(method, path, &[], b"")?;
        self.response()
    }

    /// The status of a whole request/response on this connection; panics on no answer.
    fn status(&mut self, method: &str, path: &str) -> u16 {
        self.call(method, path)
            .expect("an answer")
            .expect("an answer, not EOF")
            .status
    }

    /// Reads once: what the connection does next (data, EOF, timeout, reset).
    fn read_raw(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 1024];
        self.reader.read(&mut buf)
    }
}

/// One request on a fresh connection; its status (the injected ones close the connection).
fn fresh_status(proxy: &FaultProxy, method: &str, path: &str) -> u16 {
    Client::connect(proxy.addr()).status(method, path)
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    done()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[test]
fn passes_several_requests_on_one_keep_alive_connection() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    assert_eq!(proxy.addr().ip().to_string(), "127.0.0.1");
    assert_eq!(
        proxy.url(),
        format!("http://127.0.0.1:{}", proxy.addr().port())
    );
    let mut client = Client::connect(proxy.addr());
    for i in 1..=5 {
        let response = client.call("GET", &format!("/k{i}")).unwrap().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, format!("ok {i}"));
    }
    // A request with a body, split over two writes, is one request.
    client
        .writer
        .write_all(b"PUT /body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    client.writer.write_all(b"56789").unwrap();
    assert_eq!(client.response().unwrap().unwrap().status, 200);
    assert_eq!(upstream.processed(), 6);
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    assert_eq!(proxy.requests(), 6);
    assert_eq!(
        proxy.counts(),
        FaultCounts {
            passed: 6,
            ..FaultCounts::default()
        }
    );
}

#[test]
fn drop_answer_loses_the_answer_of_a_request_the_server_processed() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    let mut client = Client::connect(proxy.addr());
    assert_eq!(client.status("GET", "/before"), 200);
    proxy.arm(Fault::DropAnswer, 1);
    let answer = client.call("PUT", "/lost");
    assert!(
        matches!(answer, Ok(None)) || matches!(&answer, Err(e) if !is_timeout(e)),
        "expected the connection to end with no answer, got {answer:?}"
    );
    assert_eq!(upstream.processed(), 2, "the server processed the request");
    assert_eq!(upstream.request_lines()[1], "PUT /lost HTTP/1.1");
    assert_eq!(proxy.counts().drop_answer, 1);
    // The next connection works.
    assert_eq!(fresh_status(&proxy, "GET", "/after"), 200);
    assert_eq!(upstream.processed(), 3);
}

#[test]
fn reset_resets_the_client_and_the_server_never_sees_the_request() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    let mut bystander = Client::connect(proxy.addr());
    assert_eq!(bystander.status("GET", "/bystander"), 200);
    let mut client = Client::connect(proxy.addr());
    proxy.arm(Fault::Reset, 1);
    client.send("DELETE", "/reset", &[], b"").unwrap();
    let err = client.read_raw().expect_err("the connection is reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(upstream.processed(), 1, "only the bystander's request");
    assert!(wait_until(Duration::from_secs(2), || proxy.connections() == 1));
    // Errors on one connection do not touch another.
    assert_eq!(bystander.status("GET", "/bystander-again"), 200);
    assert_eq!(upstream.processed(), 2);
    assert_eq!(proxy.counts().reset, 1);
    assert_eq!(proxy.counts().passed, 2);
}

#[test]
fn blackhole_keeps_the_connection_open_and_silent() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    let mut client = Client::connect(proxy.addr());
    client.set_read_timeout(Duration::from_millis(300));
    proxy.arm(Fault::Blackhole, 1);
    client.send("GET", "/void", &[], b"").unwrap();
    let err = client.read_raw().expect_err("no answer");
    assert!(is_timeout(&err), "{err}");
    // Still open: more can be written, and a read still times out instead of seeing EOF.
    client.send("GET", "/void-again", &[], b"").unwrap();
    let err = client.read_raw().expect_err("still no answer");
    assert!(is_timeout(&err), "{err}");
    assert_eq!(upstream.processed(), 0, "the server saw nothing");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.counts().blackhole, 1);
    assert_eq!(
        proxy.requests(),
        1,
        "the rest of a blackholed connection is one request"
    );
    // Other connections pass.
    assert_eq!(fresh_status(&proxy, "GET", "/fine"), 200);
    // Stopping the proxy ends the blackholed connection.
    client.set_read_timeout(Duration::from_secs(5));
    let started = Instant::now();
    proxy.stop();
    match client.read_raw() {
        Ok(0) => {}
        Err(e) if !is_timeout(&e) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn blackhole_mode_holds_every_request_until_healed() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    proxy.set_mode(Mode::Blackhole);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(proxy.addr())).collect();
    for client in &mut clients {
        client.set_read_timeout(Duration::from_millis(200));
        client.send("GET", "/void", &[], b"").unwrap();
    }
    for client in &mut clients {
        let err = client.read_raw().expect_err("no answer");
        assert!(is_timeout(&err), "{err}");
    }
    assert_eq!(upstream.processed(), 0);
    assert_eq!(proxy.counts().blackhole, 3);
    proxy.heal();
    assert_eq!(fresh_status(&proxy, "GET", "/healed"), 200);
    // `disconnect_all` ends the blackholed connections.
    proxy.disconnect_all();
    for client in &mut clients {
        client.set_read_timeout(Duration::from_secs(5));
        match client.read_raw() {
            Ok(0) => {}
            Err(e) if !is_timeout(&e) => {}
            other => panic!("expected the connection to end, got {other:?}"),
        }
    }
}

#[test]
fn delay_holds_the_request_before_the_server_sees_it() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    let mut client = Client::connect(proxy.addr());
    assert_eq!(client.status("GET", "/warm"), 200);
    let delay = Duration::from_millis(300);
    proxy.arm(Fault::Delay(delay), 1);
    let sent = Instant::now();
    assert_eq!(client.status("GET", "/slow"), 200);
    assert!(sent.elapsed() >= delay, "{:?}", sent.elapsed());
    assert!(
        upstream.last_arrival() - sent >= delay,
        "the server saw the request after {:?}",
        upstream.last_arrival() - sent
    );
    // Only that one request.
    let sent = Instant::now();
    assert_eq!(client.status("GET", "/fast"), 200);
    assert!(sent.elapsed() < delay);
    assert_eq!(proxy.counts().delay, 1);
}

#[test]
fn delay_answer_forwards_at_once_and_holds_the_answer() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    let mut client = Client::connect(proxy.addr());
    assert_eq!(client.status("GET", "/warm"), 200);
    let delay = Duration::from_millis(300);
    proxy.arm(Fault::DelayAnswer(delay), 1);
    let sent = Instant::now();
    let response = client.call("GET", "/slow-answer").unwrap().unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, "ok 2"));
    assert!(sent.elapsed() >= delay, "{:?}", sent.elapsed());
    assert!(
        upstream.last_arrival() - sent < delay / 2,
        "the server saw the request only after {:?}",
        upstream.last_arrival() - sent
    );
    let sent = Instant::now();
    assert_eq!(client.status("GET", "/fast"), 200);
    assert!(sent.elapsed() < delay);
    assert_eq!(proxy.counts().delay_answer, 1);
}

#[test]
fn http_status_answers_without_forwarding() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);

    // A request with a Content-Length body.
    proxy.arm(Fault::HttpStatus(503), 1);
    let mut client = Client::connect(proxy.addr());
    client.send("PUT", "/b/lock", &[], &[b'x'; 5000]).unwrap();
    let response = client.response().unwrap().unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.head[0], "HTTP/1.1 503 Service Unavailable");
    assert_eq!(
        header(&response.head, "connection").as_deref(),
        Some("close")
    );
    assert_eq!(
        header(&response.head, "content-type").as_deref(),
        Some("application/xml")
    );
    assert!(
        response.body.contains("<Code>SlowDown</Code>"),
        "{}",
        response.body
    );
    assert!(
        matches!(client.read_raw(), Ok(0)),
        "closed after the answer"
    );

    // A chunked body, written in several pieces, ending with a trailer.
    proxy.arm(Fault::HttpStatus(503), 1);
    let mut client = Client::connect(proxy.addr());
    client
        .send_chunked("/b/lock", &[b"first chunk", &[b'y'; 3000], b"last"])
        .unwrap();
    let response = client.response().unwrap().unwrap();
    assert_eq!(response.status, 503);
    assert!(
        matches!(client.read_raw(), Ok(0)),
        "closed after the answer"
    );

    // `Expect: 100-continue`: answered at once, without waiting for the body.
    proxy.arm(Fault::HttpStatus(429), 1);
    let mut client = Client::connect(proxy.addr());
    client
        .writer
        .write_all(
            b"PUT /b/lock HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n",
        )
        .unwrap();
    let response = client.response().unwrap().unwrap();
    assert_eq!(response.status, 429);

    assert_eq!(upstream.processed(), 0, "the server saw none of them");
    assert!(wait_until(Duration::from_secs(2), || upstream
        .connections
        .load(Ordering::SeqCst)
        == 3));
    assert_eq!(proxy.counts().http_status, 3);
    // And nothing of them leaks into later requests.
    assert_eq!(fresh_status(&proxy, "GET", "/after"), 200);
    assert_eq!(upstream.request_lines(), vec!["GET /after HTTP/1.1"]);
}

#[test]
fn arm_applies_to_exactly_n_requests_in_order() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    proxy.arm(Fault::HttpStatus(500), 3);
    proxy.arm(Fault::HttpStatus(503), 1);
    let statuses: Vec<u16> = (0..6).map(|_| fresh_status(&proxy, "GET", "/k")).collect();
    assert_eq!(statuses, [500, 500, 500, 503, 200, 200]);
    assert_eq!(upstream.processed(), 2);
    assert_eq!(
        proxy.counts(),
        FaultCounts {
            passed: 2,
            http_status: 4,
            ..FaultCounts::default()
        }
    );
    // Across connections too: faults count requests, not connections.
    proxy.arm(Fault::HttpStatus(500), 1);
    let mut client = Client::connect(proxy.addr());
    assert_eq!(client.status("GET", "/k"), 500);
    let mut client = Client::connect(proxy.addr());
    assert_eq!(client.status("GET", "/k"), 200);
    assert_eq!(client.status("GET", "/k"), 200);
}

#[test]
fn arm_matching_only_hits_matching_requests() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    proxy.arm_matching(Fault::HttpStatus(503), 2, |head| {
        head.starts_with(b"DELETE ")
    });
    proxy.arm_matching(Fault::HttpStatus(412), 1, |head| {
        String::from_utf8_lossy(head)
            .to_ascii_lowercase()
            .contains("\r\nif-match:")
    });
    let mut client = Client::connect(proxy.addr());
    assert_eq!(client.status("GET", "/k"), 200);
    assert_eq!(client.status("PUT", "/k"), 200);
    assert_eq!(client.status("DELETE", "/k"), 503);
    let mut client = Client::connect(proxy.addr());
    client
        .send("PUT", "/k", &["If-Match: \"e1\""], b"v")
        .unwrap();
    assert_eq!(client.response().unwrap().unwrap().status, 412);
    let mut client = Client::connect(proxy.addr());
    client
        .send("PUT", "/k", &["If-Match: \"e1\""], b"v")
        .unwrap();
    assert_eq!(
        client.response().unwrap().unwrap().status,
        200,
        "armed once"
    );
    assert_eq!(client.status("GET", "/k"), 200);
    assert_eq!(client.status("DELETE", "/k"), 503);
    let mut client = Client::connect(proxy.addr());
    assert_eq!(client.status("DELETE", "/k"), 200, "armed twice");
    assert_eq!(
        upstream.request_lines(),
        [
            "GET /k HTTP/1.1",
            "PUT /k HTTP/1.1",
            "PUT /k HTTP/1.1",
            "GET /k HTTP/1.1",
            "DELETE /k HTTP/1.1"
        ]
    );
    assert_eq!(proxy.counts().http_status, 3);
    assert_eq!(proxy.counts().passed, 5);
}

fn random_statuses(seed: u64, rate: f64, requests: usize) -> Vec<u16> {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    proxy.set_mode(Mode::Random {
        seed,
        rate,
        kinds: vec![Fault::HttpStatus(503), Fault::HttpStatus(429)],
    });
    let statuses: Vec<u16> = (0..requests)
        .map(|_| fresh_status(&proxy, "GET", "/k"))
        .collect();
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(upstream.processed(), passed);
    let counts = proxy.counts();
    assert_eq!(counts.passed as usize, passed);
    assert_eq!(counts.http_status as usize, requests - passed);
    statuses
}

#[test]
fn random_mode_is_seeded_and_follows_its_rate() {
    assert!(
        random_statuses(1, 1.0, 12)
            .iter()
            .all(|&s| s == 503 || s == 429)
    );
    assert!(random_statuses(1, 0.0, 12).iter().all(|&s| s == 200));
    let first = random_statuses(7, 0.5, 24);
    let again = random_statuses(7, 0.5, 24);
    assert_eq!(first, again, "the same seed gives the same sequence");
    for status in [200, 503, 429] {
        assert!(first.contains(&status), "{first:?} lacks {status}");
    }
    assert_ne!(
        first,
        random_statuses(8, 0.5, 24),
        "another seed, another sequence"
    );
}

#[test]
fn counts_match_what_was_applied() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    proxy.arm(Fault::Delay(Duration::from_millis(10)), 1);
    proxy.arm(Fault::DelayAnswer(Duration::from_millis(10)), 2);
    proxy.arm(Fault::HttpStatus(500), 1);
    proxy.arm(Fault::DropAnswer, 1);
    proxy.arm(Fault::Reset, 1);
    let mut client = Client::connect(proxy.addr());
    for _ in 0..3 {
        assert_eq!(client.status("GET", "/k"), 200);
    }
    assert_eq!(client.status("GET", "/k"), 500);
    assert!(matches!(
        Client::connect(proxy.addr()).call("GET", "/k"),
        Ok(None) | Err(_)
    ));
    assert!(Client::connect(proxy.addr()).call("GET", "/k").is_err());
    assert_eq!(fresh_status(&proxy, "GET", "/k"), 200);
    // Armed but not yet applied faults are cleared by `heal`.
    proxy.arm(Fault::Reset, 5);
    proxy.heal();
    assert_eq!(fresh_status(&proxy, "GET", "/k"), 200);
    assert_eq!(
        proxy.counts(),
        FaultCounts {
            passed: 2,
            drop_answer: 1,
            reset: 1,
            delay: 1,
            delay_answer: 2,
            blackhole: 0,
            http_status: 1,
        }
    );
    assert_eq!(proxy.counts().faults(), 6);
    assert_eq!(proxy.requests(), 8);
    assert_eq!(upstream.processed(), 6, "all but the 500 and the reset");
}

#[test]
fn disconnect_all_closes_open_connections_and_keeps_listening() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(proxy.addr())).collect();
    for client in &mut clients {
        assert_eq!(client.status("GET", "/k"), 200);
    }
    assert_eq!(proxy.connections(), 3);
    proxy.disconnect_all();
    for client in &mut clients {
        assert!(matches!(client.read_raw(), Ok(0)), "the connection ended");
    }
    assert!(wait_until(Duration::from_secs(2), || proxy.connections() == 0));
    assert!(wait_until(Duration::from_secs(2), || upstream
        .open
        .load(Ordering::SeqCst)
        == 0));
    assert_eq!(fresh_status(&proxy, "GET", "/again"), 200);
}

#[test]
fn dropping_the_proxy_closes_the_port_and_every_connection() {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.addr);
    let addr = proxy.addr();
    let mut idle = Client::connect(addr);
    assert_eq!(idle.status("GET", "/k"), 200);
    let mut delayed = Client::connect(addr);
    proxy.arm(Fault::Delay(Duration::from_secs(3600)), 1);
    delayed.send("GET", "/forever", &[], b"").unwrap();
    assert!(wait_until(Duration::from_secs(2), || proxy.requests() == 2));
    let started = Instant::now();
    drop(proxy);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "dropping took {took:?}");
    assert!(TcpStream::connect(addr).is_err(), "the port is closed");
    for client in [&mut idle, &mut delayed] {
        match client.read_raw() {
            Ok(0) => {}
            Err(e) if !is_timeout(&e) => {}
            other => panic!("expected the connection to end, got {other:?}"),
        }
    }
    assert!(wait_until(Duration::from_secs(2), || upstream
        .open
        .load(Ordering::SeqCst)
        == 0));
    assert_eq!(upstream.processed(), 1);
}

/// Not only HTTP: a binary request/response protocol (length-prefixed, like MongoDB's wire
/// protocol) passes, and faults apply per message.
#[test]
fn binary_protocols_pass_and_faults_apply_per_message() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counter = counter.clone();
            thread::spawn(move || {
                let mut len = [0u8; 4];
                while conn.read_exact(&mut len).is_ok() {
                    let mut msg = vec![0; u32::from_le_bytes(len) as usize - 4];
                    if conn.read_exact(&mut msg).is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.write_all(&len);
                    let _ = conn.write_all(&msg);
                }
            });
        }
    });
    let proxy = FaultProxy::start(upstream);
    proxy.arm_matching(Fault::DropAnswer, 1, |first| first.ends_with(b"drop me"));
    let mut conn = TcpStream::connect(proxy.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut roundtrip = |payload: &[u8]| -> io::Result<Vec<u8>> {
        let mut msg = ((payload.len() + 4) as u32).to_le_bytes().to_vec();
        msg.extend_from_slice(payload);
        conn.write_all(&msg)?;
        let mut back = vec![0; msg.len()];
        conn.read_exact(&mut back)?;
        Ok(back[4..].to_vec())
    };
    for i in 0..3 {
        let payload = format!("hello {i}");
        assert_eq!(roundtrip(payload.as_bytes()).unwrap(), payload.as_bytes());
    }
    assert!(roundtrip(b"drop me").is_err(), "the answer was dropped");
    assert_eq!(served.load(Ordering::SeqCst), 4);
    assert_eq!(proxy.counts().passed, 3);
    assert_eq!(proxy.counts().drop_answer, 1);
}
