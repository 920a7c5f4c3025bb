//! The HTTP side under a flood of refused, idle and slow clients: its thread
//! count stays fixed and an allowed client is still answered at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{ServerProcess, eventually, http_get_from, skip, try_connect_from};

const REFUSED: usize = 1000;
const ALLOWED_IDLE: usize = 200;
/// Threads the server may gain during the flood (none are expected: one
/// event-loop thread serves every HTTP connection).
const THREAD_SLACK: u64 = 2;

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The server's HTTP address once `path` answers 200 there.
fn answering(server: &ServerProcess, path: &str) -> SocketAddr {
    let addr = server.await_http_addr();
    assert!(
        eventually(Duration::from_secs(10), || get(addr, path) == 200),
        "{path} never answered 200\n{}",
        server.log_text()
    );
    addr
}

/// One request on a fresh connection; the status line's code, or 0.
fn get(addr: SocketAddr, path: &str) -> u16 {
    http_get_from(Some("127.0.0.1"), addr, path).map_or(0, |a| a.status)
}

/// A server whose HTTP side allows 127.0.0.1 alone; `None` (skipped) where
/// 127.0.0.2 cannot be a source address, as the refused clients need.
fn http_for_127_0_0_1_only() -> Option<ServerProcess> {
    let probe = try_connect_from("127.0.0.2", "127.0.0.1:9".parse().unwrap());
    if probe.is_err_and(|e| e.kind() == std::io::ErrorKind::AddrNotAvailable) {
        skip("cannot bind 127.0.0.2 as a source address");
        return None;
    }
    let only = ["--http-allow", "127.0.0.1/32"];
    Some(ServerProcess::start(
        &[&["--no-tls", "--http", "127.0.0.1:0"][..], &only].concat(),
    ))
}

#[test]
fn refused_idle_and_slow_clients_neither_add_threads_nor_slow_an_allowed_client() {
    let wanted = (REFUSED + ALLOWED_IDLE + 200) as u64;
    let got = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    if got < wanted {
        skip(&format!("the open-files limit is {got}, below {wanted}"));
        return;
    }
    let Some(server) = http_for_127_0_0_1_only() else {
        return;
    };
    let pid = server.child.id();
    let addr = answering(&server, "/ready");
    let before = threads(pid);

    let mut idle = Vec::new();
    let mut slow = Vec::new();
    for i in 0..REFUSED {
        let source = format!("127.0.0.{}", 2 + i % 250);
        if let Ok(c) = try_connect_from(&source, addr) {
            if i % 2 == 0 {
                idle.push(c);
            } else {
                slow.push(c);
            }
        }
    }
    for _ in 0..ALLOWED_IDLE {
        if let Ok(c) = try_connect_from("127.0.0.1", addr) {
            idle.push(c);
        }
    }
    assert!(idle.len() + slow.len() > REFUSED, "the flood did not open");
    // The slow half sends a request head a byte every 2 s until told to stop.
    let (stop, stopped) = mpsc::channel::<()>();
    let pacer = std::thread::spawn(move || {
        let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";
        let mut at = 0;
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            stopped.recv_timeout(Duration::from_secs(2))
        {
            for c in &mut slow {
                let _ = c.write(&head[at % head.len()..][..1]);
            }
            at += 1;
        }
    });

    // At least 100 requests, and for long enough that the slow half has sent
    // a few bytes each.
    let mut took = Vec::new();
    let flood_on = Instant::now();
    let mut i = 0;
    while i < 100 || flood_on.elapsed() < Duration::from_millis(4500) {
        i += 1;
        let path = if i % 2 == 0 { "/health" } else { "/metrics" };
        let start = Instant::now();
        let status = get(addr, path);
        took.push(start.elapsed());
        assert_eq!(status, 200, "{path} during the flood");
    }
    let during = threads(pid);
    let _ = stop.send(());
    let _ = pacer.join();
    drop(idle);

    took.sort();
    let p99 = took[took.len() * 99 / 100 - 1];
    eprintln!(
        "threads before {before}, during {during}; p99 {p99:?}, max {:?}",
        took[took.len() - 1]
    );
    assert!(before > 0, "no thread count in /proc/{pid}/status");
    assert!(
        during <= before + THREAD_SLACK,
        "threads grew from {before} to {during}"
    );
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
}

/// A request head sent a byte at a time is shed at the request deadline (5 s),
/// and counted.
#[test]
fn a_slow_request_head_is_shed_at_the_deadline() {
    let server = ServerProcess::start(&["--no-tls", "--http", "127.0.0.1:0"]);
    let addr = server.await_http_addr();
    let mut c: TcpStream = try_connect_from("127.0.0.1", addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let _ = c.write_all(b"GET / HT");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let held = start.elapsed();
    assert!(
        held >= Duration::from_millis(4500) && held < Duration::from_secs(8),
        "closed after {held:?}"
    );
    let mut metrics = String::new();
    if let Ok(mut m) = try_connect_from("127.0.0.1", addr) {
        let _ = m.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let _ = m.read_to_string(&mut metrics);
    }
    assert!(
        metrics.contains("wwep_http_connections_shed_total{reason=\"deadline\"} 1"),
        "{metrics}"
    );
}

/// Sends `/health` on a keep-alive connection and reads its whole answer.
fn health_on(c: &mut TcpStream) -> bool {
    if c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"HTTP/1.1 200")
}

/// With the cap reached, a new connection sheds the one idle the longest.
#[test]
fn a_full_table_sheds_the_oldest_idle_connection() {
    let server = ServerProcess::start(&[
        "--no-tls",
        "--http",
        "127.0.0.1:0",
        "--http-max-connections",
        "2",
    ]);
    let addr = answering(&server, "/health");
    // Each answered once, so each is accepted and idle, the first the longest.
    let mut oldest = try_connect_from("127.0.0.1", addr).expect("connect");
    assert!(health_on(&mut oldest));
    let mut second = try_connect_from("127.0.0.1", addr).expect("connect");
    assert!(health_on(&mut second));
    let mut third = try_connect_from("127.0.0.1", addr).expect("connect");
    assert!(health_on(&mut third), "the new connection is served");
    let closed = matches!(oldest.read(&mut [0u8; 1]), Ok(0) | Err(_));
    assert!(closed, "the oldest idle connection was not shed");
    assert!(
        health_on(&mut second),
        "the newer connection was shed instead"
    );
}

/// 300 connections each holding a partial request head fill the table (at
/// its default size, 256); once they are past their first second, a health
/// probe sheds the oldest of them and is answered at once, probe after probe.
#[test]
fn health_probes_get_through_a_table_full_of_slow_heads() {
    const HEADS: usize = 300;
    let wanted = (HEADS + 200) as u64;
    let got = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    if got < wanted {
        skip(&format!("the open-files limit is {got}, below {wanted}"));
        return;
    }
    let server = ServerProcess::start(&["--no-tls", "--http", "127.0.0.1:0"]);
    let addr = answering(&server, "/health");
    let mut heads = Vec::new();
    for _ in 0..HEADS {
        let mut c = try_connect_from("127.0.0.1", addr).expect("connect");
        c.write_all(b"GET /health HTTP/1.1\r\nHo")
            .expect("a partial head");
        heads.push(c);
    }
    // The heads are held: past the first second that protects a request
    // just begun, and well within the 5 s request deadline.
    std::thread::sleep(Duration::from_millis(1500));
    for probe in 1..=5 {
        let start = Instant::now();
        let status = get(addr, "/health");
        let took = start.elapsed();
        assert_eq!(status, 200, "probe {probe} among {HEADS} slow heads");
        assert!(took < Duration::from_secs(1), "probe {probe} took {took:?}");
    }
    // Each probe took the place of a slow head.
    let metrics = http_get_from(Some("127.0.0.1"), addr, "/metrics").expect("/metrics");
    let full: f64 = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("wwep_http_connections_shed_total{reason=\"full\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(full >= 5.0, "shed for room: {full}");
    // The line says what was shed, in its own kind: lines about other sheds
    // (the idle connections used to find the server's ports) do not hide it.
    server.assert_logs_within("still sending its request", Duration::from_secs(5));
    drop(heads);
}

/// One `/health` probe on a fresh connection, as a balancer's `curl -m 2`:
/// whether it was answered 200 within `limit`.
fn probe_within(addr: SocketAddr, limit: Duration) -> bool {
    let start = Instant::now();
    let Ok(mut c) = TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    if c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let Some(left) = limit.checked_sub(start.elapsed()).filter(|l| !l.is_zero()) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(left));
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"HTTP/1.1 200")
}

/// Clients that hold the table with partial request heads and reconnect
/// each connection before it is a second old, so that every connection held
/// is always within its first second: a health probe still gets in (it takes
/// the place of the youngest slow head) and is answered.
#[test]
fn health_probes_get_through_slow_heads_that_reconnect_before_their_first_second() {
    const TABLE: usize = 32;
    /// More than the table holds, so it stays full.
    const HEADS: usize = 48;
    const THREADS: usize = 2;
    const AGE: Duration = Duration::from_millis(800);
    const PROBES: usize = 20;
    let server = ServerProcess::start(&[
        "--no-tls",
        "--http",
        "127.0.0.1:0",
        "--http-max-connections",
        &TABLE.to_string(),
    ]);
    let addr = answering(&server, "/health");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reconnects = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let churners: Vec<_> = (0..THREADS)
        .map(|t| {
            let (stop, reconnects) = (stop.clone(), reconnects.clone());
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                let per = HEADS / THREADS;
                // Ages spread over AGE, so that reconnections are steady.
                let step = AGE / (HEADS as u32);
                let start = Instant::now();
                let mut held: Vec<(Instant, Option<TcpStream>)> = (0..per)
                    .map(|i| (start + step * (i * THREADS + t) as u32, None))
                    .collect();
                while !stop.load(Relaxed) {
                    let now = Instant::now();
                    for (due, c) in &mut held {
                        if *due > now {
                            continue;
                        }
                        drop(c.take());
                        *due = now + AGE;
                        if let Ok(mut fresh) = TcpStream::connect(addr) {
                            let _ = fresh.write_all(b"GET /health HTTP/1.1\r\nHo");
                            *c = Some(fresh);
                            reconnects.fetch_add(1, Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    // The churn fills the table and keeps every connection young.
    std::thread::sleep(Duration::from_millis(2000));
    let mut answered = 0;
    for _ in 0..PROBES {
        let start = Instant::now();
        if probe_within(addr, Duration::from_secs(2)) {
            answered += 1;
        }
        if let Some(rest) = Duration::from_millis(100).checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in churners {
        c.join().expect("a churning thread");
    }
    let reconnected = reconnects.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{answered} of {PROBES} probes answered; {reconnected} slow heads opened");
    assert!(
        reconnected > 2 * HEADS as u64,
        "the slow heads did not churn: {reconnected} opened"
    );
    assert!(
        answered >= PROBES - 2,
        "{answered} of {PROBES} probes answered among slow heads reconnecting at {AGE:?}\n{}",
        server.log_text()
    );
    server.assert_logs_within(
        "every connection within its first second",
        Duration::from_secs(5),
    );
}

/// HEAD has the headers without the body; other methods get 405; an
/// oversized head 431; a body 413.
#[test]
fn head_other_methods_and_oversized_requests() {
    let server = ServerProcess::start(&["--no-tls", "--http", "127.0.0.1:0"]);
    let addr = server.await_http_addr();
    let send = |raw: &[u8]| {
        let mut c = try_connect_from("127.0.0.1", addr).expect("connect");
        let _ = c.write_all(raw);
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let head = send(b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("X-Content-Type-Options: nosniff"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD carried a body: {head}");
    let post = send(b"POST / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let body = send(b"GET / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    assert!(body.starts_with("HTTP/1.1 413"), "{body}");
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(20_000, b'a');
    let big = send(&big);
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
}

/// A refused address gets its `403` and its connection's end: the server
/// keeps the socket about a second, so that the answer is not lost to a
/// reset, and then lets it go however long the client keeps sending, so a
/// refused client cannot hold a connection open.
#[test]
fn a_refused_client_that_keeps_sending_is_let_go_after_its_403() {
    let Some(server) = http_for_127_0_0_1_only() else {
        return;
    };
    let addr = answering(&server, "/ready");

    let mut refused = try_connect_from("127.0.0.2", addr).expect("connect");
    let mut writer = refused.try_clone().expect("clone");
    let started = Instant::now();
    // A byte every 50 ms, for far longer than the server keeps the socket;
    // once it is gone, the kernel answers with a reset and a write fails.
    let sender = std::thread::spawn(move || {
        while started.elapsed() < Duration::from_secs(15) {
            if writer.write_all(b"G").is_err() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    refused
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut got = Vec::new();
    let _ = refused.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    let let_go = sender.join().expect("the sender thread");
    eprintln!("refused connection let go after {let_go:?}");
    let let_go = let_go.expect("the server still held the refused connection after 15 s");
    assert!(
        let_go >= Duration::from_millis(900),
        "let go after {let_go:?}: the 403 could be lost to the reset"
    );
    assert!(
        let_go < Duration::from_secs(8),
        "let go only after {let_go:?}, though the server keeps a refused socket about 1 s"
    );
}
