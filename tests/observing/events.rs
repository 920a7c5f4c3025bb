//! `GET /api/events`: each acknowledged write as a Server-Sent Event, seen by
//! a `curl -N`-like watcher on a std socket and by `wwep watch`; the device
//! filter; a watcher that never reads dropped while the writers go on;
//! watchers holding places in the HTTP connection table.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use wwep::civil_date::UtcTime;
use wwep::config::HttpConfig;

/// An event as a watcher reads it: its `id`, `event` and `data` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    id: Option<String>,
    event: String,
    data: String,
}

/// A watcher of `/api/events` on a std socket, reading as `curl -N` does.
struct Watcher {
    reader: BufReader<TcpStream>,
}

impl Watcher {
    /// Opens the stream `path` asks for; fails the test unless it is a 200
    /// event stream.
    fn open(addr: SocketAddr, path: &str) -> Watcher {
        let mut stream = connect(addr);
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            let n = reader.read_line(&mut head).expect("the stream's head");
            assert!(n > 0, "closed before the head's end: {head:?}");
        }
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream\r\n"),
            "{head}"
        );
        Watcher { reader }
    }

    /// The next event (comments and `retry:` skipped), within `within`;
    /// `None` when the stream ends or nothing comes.
    fn next(&mut self, within: Duration) -> Option<Event> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(within))
            .unwrap();
        let mut fields: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                let get = |name: &str| {
                    fields
                        .iter()
                        .find(|(f, _)| f == name)
                        .map(|(_, v)| v.clone())
                };
                if let Some(event) = get("event") {
                    return Some(Event {
                        id: get("id"),
                        event,
                        data: get("data").unwrap_or_default(),
                    });
                }
                fields.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (name, value) = line.split_once(": ").expect("a field: value line");
            fields.push((name.to_string(), value.to_string()));
        }
    }

    /// The next event, which must come within the test's time limit.
    fn expect(&mut self) -> Event {
        self.next(IO_TIMEOUT)
            .expect("an event within the time limit")
    }
}

/// The `data` of a write event as JSON.
fn data(event: &Event) -> serde_json::Value {
    assert_eq!(event.event, "write", "{event:?}");
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("{e}: {event:?}"))
}

/// The device, register, value and transport of a write event, and its time.
fn write_of(event: &Event) -> ([String; 4], String) {
    let d = data(event);
    let field = |name: &str| {
        d.get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no {name}: {d}"))
            .to_string()
    };
    let object = d.as_object().expect("an object");
    assert_eq!(
        object.len(),
        5,
        "exactly device, register, value, transport, time: {d}"
    );
    (
        [
            field("device"),
            field("register"),
            field("value"),
            field("transport"),
        ],
        field("time"),
    )
}

fn http_server(adjust: impl FnOnce(&mut HttpConfig)) -> TestServer {
    TestServer::with(|c| {
        let mut http = HttpConfig::new("127.0.0.1:0".parse().unwrap());
        adjust(&mut http);
        c.http = Some(http);
    })
}

fn http_addr(server: &TestServer) -> SocketAddr {
    server.server().http_addr().expect("an HTTP address")
}

fn strings(items: [&str; 4]) -> [String; 4] {
    items.map(str::to_string)
}

#[test]
fn a_write_reaches_a_watcher_as_an_event_with_its_fields() {
    let server = http_server(|_| {});
    let mut watcher = Watcher::open(http_addr(&server), "/api/events");
    let before = UtcTime::at(SystemTime::now() - Duration::from_secs(5)).to_string();
    assert_eq!(server.plain_transact(b"W0FAC0B1234"), b"A0FAC0B1234");
    let first = watcher.expect();
    let after = UtcTime::at(SystemTime::now() + Duration::from_secs(5)).to_string();
    let (fields, time) = write_of(&first);
    assert_eq!(fields, strings(["0FAC", "0B", "1234", "plain"]));
    // RFC 3339 in UTC with microseconds, and now: the strings sort as times.
    assert_eq!(time.len(), "2026-12-06T23:59:59.123456Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    assert!(
        before <= time && time <= after,
        "{before} <= {time} <= {after}"
    );
    let first_id: u64 = first.id.as_deref().unwrap().parse().expect("a number");

    // Neither a read, nor a refused write, nor a failed one is an event.
    assert_eq!(server.plain_transact(b"R0FAC0B"), b"A0FAC0B1234");
    assert_eq!(server.plain_transact(b"W0FAC0B12"), b"X");
    assert_eq!(server.plain_transact(b"R0FAC0C"), b"X");
    assert_eq!(server.tls_transact(b"W0FAC0C00ff\n"), b"A0FAC0C00FF\n");
    let second = watcher.expect();
    assert_eq!(
        write_of(&second).0,
        strings(["0FAC", "0C", "00FF", "tls"]),
        "the next event is the TLS write: {second:?}"
    );
    let second_id: u64 = second.id.as_deref().unwrap().parse().expect("a number");
    assert!(second_id > first_id, "{first_id} then {second_id}");
}

#[test]
fn a_device_filter_keeps_that_device_and_a_bad_one_is_refused() {
    let server = http_server(|_| {});
    let addr = http_addr(&server);
    let mut all = Watcher::open(addr, "/api/events");
    let mut one = Watcher::open(addr, "/api/events?device=0fac");
    for request in [
        &b"W000105BEEF"[..],
        b"W0FAC0B1234",
        b"W0FAD0B0001",
        b"W0FAC0D0002",
    ] {
        assert_eq!(server.plain_transact(request)[0], b'A');
    }
    let devices = |w: &mut Watcher, n: usize| -> Vec<String> {
        (0..n).map(|_| write_of(&w.expect()).0[0].clone()).collect()
    };
    assert_eq!(devices(&mut all, 4), ["0001", "0FAC", "0FAD", "0FAC"]);
    assert_eq!(devices(&mut one, 2), ["0FAC", "0FAC"]);
    assert_eq!(
        one.next(Duration::from_millis(300)),
        None,
        "nothing of another device"
    );

    for bad in ["0FA", "0FAC0", "0FAG", "", "0FAC&x=1"] {
        let answer = http_get(addr, &format!("/api/events?device={bad}"));
        assert_eq!(answer.status, 400, "device={bad}: {}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("4 hex digits"), "device={bad}: {error}");
    }
    let other = http_get(addr, "/api/events?since=5");
    assert_eq!(other.status, 400, "{}", other.body);
    // HEAD: the stream's head, then the close.
    let mut head = connect(addr);
    head.write_all(b"HEAD /api/events HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let head = String::from_utf8(read_to_close(&mut head)).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "a body after HEAD: {head:?}");
}

/// Writers on `threads` threads, one write per connection, until `stop`;
/// every reply must be its `A`. Counts the writes and the slowest reply.
struct Writers {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    slowest_us: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(plain: SocketAddr, threads: u16) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let slowest_us = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|t| {
                let (stop, written, slowest) = (
                    Arc::clone(&stop),
                    Arc::clone(&written),
                    Arc::clone(&slowest_us),
                );
                std::thread::spawn(move || {
                    let mut i: u32 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let request =
                            format!("W{:04X}{:02X}{:04X}", 0xE000 + t, i % 256, i % 65536);
                        let start = Instant::now();
                        let reply = transact(&mut connect(plain), request.as_bytes());
                        let took = start.elapsed().as_micros() as u64;
                        assert_eq!(reply, format!("A{}", &request[1..]).as_bytes());
                        slowest.fetch_max(took, Ordering::Relaxed);
                        written.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            written,
            slowest_us,
            threads,
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops them; the slowest reply, after every writer ended well.
    fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a writer got something other than its A");
        }
        Duration::from_micros(self.slowest_us.load(Ordering::Relaxed))
    }
}

/// The value of one sample of `/metrics` (0 when absent).
fn metric(addr: SocketAddr, series: &str) -> f64 {
    http_get(addr, "/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_watcher_that_never_reads_is_dropped_while_the_writers_go_on() {
    let server = http_server(|_| {});
    let addr = http_addr(&server);
    // A small receive window, so the server's side fills soon: what is not
    // read then waits in the server until the feed has moved on without it.
    let stuck = {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream
            .write_all(b"GET /api/events HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        stream
    };
    assert!(
        eventually(IO_TIMEOUT, || metric(addr, "wwep_http_watchers") == 1.0),
        "the watcher never counted"
    );
    let writers = Writers::start(server.plain(), 8);
    // The feed keeps 16,384 writes; the stuck watcher's buffers a few
    // thousand more. Past that it must be gone, and the writers unharmed.
    let limit = Instant::now() + Duration::from_secs(120);
    let dropped = || metric(addr, "wwep_http_watchers_dropped_total{reason=\"behind\"}");
    while dropped() < 1.0 && Instant::now() < limit && writers.written() < 200_000 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let written = writers.written();
    let after_drop = written;
    // The writers go on as before once it is gone.
    assert!(
        eventually(Duration::from_secs(30), || writers.written()
            > after_drop + 1000),
        "the writers stalled"
    );
    let slowest = writers.finish();
    eprintln!("dropped after about {written} writes; slowest reply {slowest:?}");
    assert_eq!(dropped(), 1.0, "not dropped after {written} writes");
    assert_eq!(metric(addr, "wwep_http_watchers"), 0.0);
    assert!(
        written > 16_384,
        "dropped after {written} writes, before it could be behind"
    );
    // Never waited for: no reply took anything like the time a watcher's
    // buffers take to fill (a debug build on a busy machine, hence the margin).
    assert!(
        slowest < Duration::from_secs(2),
        "slowest reply {slowest:?}"
    );
    drop(stuck);
}

#[test]
fn watchers_hold_places_in_the_table_and_the_oldest_is_shed_last() {
    let server = http_server(|h| h.max_connections = 2);
    let addr = http_addr(&server);
    // A watcher and an idle keep-alive connection fill the table: a
    // newcomer sheds the idle one, whatever its age.
    let mut watcher = Watcher::open(addr, "/api/events");
    let mut idle = connect(addr);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    // Past the watcher's first second, a newcomer may shed it too.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(http_get(addr, "/health").status, 200);
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        rest.ends_with(b"ok\n"),
        "the idle connection was closed: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(server.plain_transact(b"W0FAC0B1234"), b"A0FAC0B1234");
    assert_eq!(
        write_of(&watcher.expect()).0[2],
        "1234",
        "the watcher kept its place"
    );

    // Two watchers fill it: past their first second the oldest is shed,
    // told why, and the newer one goes on.
    let mut newer = Watcher::open(addr, "/api/events");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(http_get(addr, "/health").status, 200);
    let last = watcher.expect();
    assert_eq!(
        (last.event.as_str(), last.data.as_str()),
        ("dropped", r#"{"reason":"shed"}"#)
    );
    assert_eq!(watcher.next(IO_TIMEOUT), None, "closed after");
    assert_eq!(server.plain_transact(b"W0FAC0B4321"), b"A0FAC0B4321");
    assert_eq!(write_of(&newer.expect()).0[2], "4321");
    let shed = metric(addr, "wwep_http_connections_shed_total{reason=\"full\"}");
    assert!(shed >= 2.0, "shed {shed}");
    assert_eq!(metric(addr, "wwep_http_watchers"), 1.0);
}

/// `wwep watch` with `args`, its output piped.
fn watch(http: SocketAddr, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wwep"))
        .args(["watch", "--http", &http.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wwep watch");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// Lines from a child's output, each within the time limit (read on a
/// thread: a pipe has no read timeout).
fn lines(out: BufReader<ChildStdout>) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn exit_within(child: &mut Child, limit: Duration) -> (Option<i32>, String) {
    let mut status = None;
    eventually(limit, || {
        status = child.try_wait().unwrap_or(None);
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("wwep watch did not exit within {limit:?}");
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (status.code(), stderr)
}

/// Waits until the server has `n` watchers.
fn watchers_become(http: SocketAddr, n: f64) {
    assert!(
        eventually(IO_TIMEOUT, || metric(http, "wwep_http_watchers") == n),
        "the server never had {n} watchers"
    );
}

#[test]
fn wwep_watch_prints_each_write_and_filters_by_device() {
    let server = http_server(|_| {});
    let http = http_addr(&server);
    let (mut all, out) = watch(http, &[]);
    let all_lines = lines(out);
    let (mut one, out) = watch(http, &["0FAC"]);
    let one_lines = lines(out);
    let (mut json, out) = watch(http, &["--json", "0FAC"]);
    let json_lines = lines(out);
    watchers_become(http, 3.0);
    assert_eq!(server.plain_transact(b"W000105BEEF"), b"A000105BEEF");
    assert_eq!(server.tls_transact(b"W0FAC0B1234"), b"A0FAC0B1234");
    let next = |rx: &std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(IO_TIMEOUT)
            .expect("a line within the time limit")
    };
    let fields =
        |line: String| -> Vec<String> { line.split(' ').map(str::to_string).collect::<Vec<_>>() };
    let first = fields(next(&all_lines));
    assert_eq!(first[..4], ["0001", "05", "BEEF", "plain"], "{first:?}");
    assert!(first[4].ends_with('Z') && first[4].len() == 27, "{first:?}");
    assert_eq!(fields(next(&all_lines))[..4], ["0FAC", "0B", "1234", "tls"]);
    assert_eq!(fields(next(&one_lines))[..4], ["0FAC", "0B", "1234", "tls"]);
    let line = next(&json_lines);
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(event["device"], "0FAC", "{line}");
    assert_eq!(event["transport"], "tls", "{line}");

    // Ctrl-C is its normal end: exit 0, nothing said.
    for child in [&mut all, &mut one, &mut json] {
        signal(child, "INT");
        let (code, stderr) = exit_within(child, IO_TIMEOUT);
        assert_eq!((code, stderr.as_str()), (Some(0), ""));
    }
}

#[test]
fn wwep_watch_ends_quietly_when_its_reader_goes_and_says_why_otherwise() {
    let server = http_server(|_| {});
    let http = http_addr(&server);
    // `wwep watch | head -1`: the reader goes after one line, and the
    // watcher ends then, with status 0 and nothing said, though no other
    // write comes to fail to print (the server's keep-alive comments, every
    // 15 s, print nothing; the limit is well inside that).
    let (mut piped, out) = watch(http, &[]);
    watchers_become(http, 1.0);
    assert_eq!(server.plain_transact(b"W0FAC0B1234"), b"A0FAC0B1234");
    let mut out = out;
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("0FAC 0B 1234 plain "), "{first}");
    drop(out);
    let (code, stderr) = exit_within(&mut piped, IO_TIMEOUT);
    assert_eq!((code, stderr.as_str()), (Some(0), ""));

    // A stream that cannot be opened: exit 2, one line naming --http.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (mut refused, _) = watch(closed, &[]);
    let (code, stderr) = exit_within(&mut refused, IO_TIMEOUT);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("--http {closed}")) && stderr.contains("connect"),
        "{stderr}"
    );
    let (mut bad, _) = watch(http, &["0FAG"]);
    let (code, stderr) = exit_within(&mut bad, IO_TIMEOUT);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("DEVICE"), "{stderr}");

    // The server going away breaks the stream: exit 1, one line.
    let (mut broken, _out) = watch(http, &[]);
    watchers_become(http, 1.0);
    drop(server);
    let (code, stderr) = exit_within(&mut broken, IO_TIMEOUT);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the server is stopping") || stderr.contains("ended without a reason"),
        "{stderr}"
    );
}

/// A stand-in for the HTTP side that answers every connection with
/// `answer` and then closes it (or, given nothing, holds it open and
/// silent); its address.
fn fake_http(answer: &'static [u8]) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            // The request head first, as a server reads it.
            let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
            let _ = conn.read(&mut [0u8; 1024]);
            if answer.is_empty() {
                held.push(conn);
            } else {
                let _ = conn.write_all(answer);
            }
        }
    });
    addr
}

const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";

#[test]
fn wwep_watch_says_why_the_stream_ended() {
    // An end with no `event: dropped` is not called the server stopping.
    let cut = fake_http(STREAM_HEAD.as_bytes());
    let (mut child, _out) = watch(cut, &[]);
    let (code, stderr) = exit_within(&mut child, IO_TIMEOUT);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "wwep: the stream ended without a reason (the server may have dropped this watcher for falling behind, or gone away)\n"
    );
    // A reason given is said.
    for (reason, said) in [
        (
            &b"behind"[..],
            "the server dropped this watcher: it fell too far behind",
        ),
        (
            b"stalled",
            "the server dropped this watcher: it stopped reading",
        ),
        (
            b"shed",
            "the server dropped this watcher to make room (--http-max-connections)",
        ),
        (b"stopping", "the server is stopping"),
    ] {
        let answer = [
            STREAM_HEAD.as_bytes(),
            b"event: dropped\ndata: {\"reason\":\"",
            reason,
            b"\"}\n\n",
        ]
        .concat();
        let server = fake_http(answer.leak());
        let (mut child, _out) = watch(server, &[]);
        let (code, stderr) = exit_within(&mut child, IO_TIMEOUT);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr, format!("wwep: {said}\n"));
    }
}

#[test]
fn wwep_watch_against_the_wrong_port_says_so() {
    let one_line = |args: &[&str], http: SocketAddr| {
        let (mut child, _out) = watch(http, args);
        let (code, stderr) = exit_within(&mut child, IO_TIMEOUT);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    // The WWEP port answers `X`: not HTTP, and which port is.
    let server = http_server(|_| {});
    let stderr = one_line(&[], server.plain());
    assert!(
        stderr.contains("does not look like the server's HTTP port: it answered \"X\", not HTTP")
            && stderr.contains("the one given to wwep-server --http"),
        "{stderr}"
    );
    // A port that takes the connection and says nothing.
    let silent = fake_http(b"");
    let stderr = one_line(&["--timeout-ms", "300"], silent);
    assert!(stderr.contains("no answer within 300 ms"), "{stderr}");
}

/// `wwep watch --http GIVEN`, its output piped.
fn watch_given(given: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wwep"))
        .args(["watch", "--http", given])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wwep watch");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

#[test]
fn wwep_watch_takes_its_address_as_server_does_or_as_a_url() {
    let server = http_server(|_| {});
    let http = http_addr(&server);
    let forms = [
        format!("http://{http}"),
        format!("http://{http}/"),
        format!("{http}/"),
        format!("localhost:{}", http.port()),
    ];
    let mut children = Vec::new();
    for given in &forms {
        let (child, out) = watch_given(given);
        children.push((given, child, lines(out)));
    }
    watchers_become(http, forms.len() as f64);
    assert_eq!(server.plain_transact(b"W0FAC0B1234"), b"A0FAC0B1234");
    for (given, mut child, rx) in children {
        let line = rx.recv_timeout(IO_TIMEOUT).expect("a line");
        assert!(line.starts_with("0FAC 0B 1234 plain "), "{given}: {line}");
        signal(&child, "INT");
        let (code, stderr) = exit_within(&mut child, IO_TIMEOUT);
        assert_eq!((code, stderr.as_str()), (Some(0), ""), "{given}");
    }
    // Refused before any connection, in --server's words, naming --http.
    let port = http.port();
    for (given, said) in [
        (
            format!(":{port}"),
            format!("missing host in --http ':{port}'"),
        ),
        (
            "localhost:".to_string(),
            "missing port after ':' in --http 'localhost:'".to_string(),
        ),
        (
            "[::1]:99999".to_string(),
            "invalid port '99999' in --http '[::1]:99999' (expected 0-65535)".to_string(),
        ),
        (
            format!("::1:{port}"),
            format!("IPv6 addresses need brackets: --http [::1]:{port}, not ::1:{port}"),
        ),
        (
            format!("https://{http}"),
            "the server's HTTP side is plain HTTP, not HTTPS".to_string(),
        ),
        (
            format!("http://{http}/api/events"),
            "without a path".to_string(),
        ),
    ] {
        let (mut child, _out) = watch_given(&given);
        let (code, stderr) = exit_within(&mut child, IO_TIMEOUT);
        assert_eq!(code, Some(2), "{given}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{given}: {stderr}");
        assert!(stderr.contains(&said), "{given}: {stderr}");
    }
}

#[test]
fn wwep_watch_refuses_a_device_one_digit_too_long() {
    let server = http_server(|_| {});
    let (mut child, _out) = watch(http_addr(&server), &["0FAC0"]);
    let (code, stderr) = exit_within(&mut child, IO_TIMEOUT);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "wwep: invalid DEVICE '0FAC0': 5 hex digits, expected at most 4 (0000-FFFF)\n"
    );
}

/// A watcher connection on a socket with a small receive window, so that
/// what it does not read soon waits in the server; its request sent.
fn small_window_watcher(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    stream
}

/// A watcher that stops reading during a burst of writes and is dropped for
/// falling behind: when it reads again, its stream ends with whole events and
/// `event: dropped` (reason `behind`), never half an event.
#[test]
fn a_watcher_dropped_behind_gets_whole_events_and_is_told_why() {
    let server = http_server(|_| {});
    let addr = http_addr(&server);
    let mut stuck = small_window_watcher(addr);
    assert!(
        eventually(IO_TIMEOUT, || metric(addr, "wwep_http_watchers") == 1.0),
        "the watcher never counted"
    );
    let writers = Writers::start(server.plain(), 8);
    let limit = Instant::now() + Duration::from_secs(120);
    let dropped = || metric(addr, "wwep_http_watchers_dropped_total{reason=\"behind\"}");
    while dropped() < 1.0 && Instant::now() < limit && writers.written() < 200_000 {
        std::thread::sleep(Duration::from_millis(200));
    }
    writers.finish();
    assert_eq!(dropped(), 1.0, "never dropped");
    // It reads again: everything the server still sends, to the end.
    stuck.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut stream = Vec::new();
    let end = stuck.read_to_end(&mut stream);
    let text = String::from_utf8_lossy(&stream);
    assert!(end.is_ok(), "{end:?} after {} bytes", stream.len());
    let farewell = "event: dropped\ndata: {\"reason\":\"behind\"}\n\n";
    assert!(
        text.ends_with(farewell),
        "the stream's end: {:?}",
        &text[text.len().saturating_sub(300)..]
    );
    // Every part before it whole: the head, `retry`, then write events.
    let (head, body) = text.split_once("\r\n\r\n").expect("the stream's head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = &body[..body.len() - farewell.len()];
    assert!(body.ends_with("\n\n"), "ends in half an event: {body:?}");
    let mut events = 0;
    for part in body.trim_end_matches('\n').split("\n\n") {
        if part.starts_with("retry:") || part.starts_with(':') {
            continue;
        }
        let lines: Vec<&str> = part.lines().collect();
        assert!(
            lines.len() == 3
                && lines[0].starts_with("id: ")
                && lines[1] == "event: write"
                && lines[2].starts_with("data: {")
                && lines[2].ends_with('}'),
            "not a whole event: {part:?}"
        );
        events += 1;
    }
    eprintln!("{events} whole events, then told why");
    assert!(events > 0, "no event before the drop");
}

/// Bytes a client sends that the server only discards (a watcher's, or a
/// connection's after the answer that closes it) are not read without end:
/// a flooding watcher is closed, a closing connection is no longer read.
#[test]
fn a_client_that_floods_what_is_discarded_is_not_read_without_end() {
    let server = http_server(|_| {});
    let addr = http_addr(&server);
    /// Far more than the socket buffers on either side hold.
    const FLOOD: usize = 256 << 20;
    /// Sends up to FLOOD bytes; how many went before a write failed or
    /// stalled (`None`: all went).
    fn flood(c: &mut TcpStream) -> Option<usize> {
        c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk = vec![b'x'; 1 << 16];
        let mut sent = 0;
        while sent < FLOOD {
            match c.write(&chunk) {
                Ok(n) if n > 0 => sent += n,
                _ => return Some(sent),
            }
        }
        None
    }
    let mut watcher = Watcher::open(addr, "/api/events");
    let sent = flood(watcher.reader.get_mut());
    eprintln!("a flooding watcher sent {sent:?} bytes");
    assert!(
        sent.is_some_and(|n| n < FLOOD / 4),
        "the watcher's {sent:?} bytes were all read"
    );
    assert!(
        eventually(IO_TIMEOUT, || metric(addr, "wwep_http_watchers") == 0.0),
        "the flooding watcher is still watching"
    );

    let mut closing = connect(addr);
    closing
        .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    closing.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let sent = flood(&mut closing);
    eprintln!("a flooding closing connection sent {sent:?} bytes");
    assert!(
        sent.is_some_and(|n| n < FLOOD / 4),
        "the closing connection's {sent:?} bytes were all read"
    );
    // The server still answers.
    assert_eq!(http_get(addr, "/health").status, 200);
}
