//! Who may talk to the server, and hostile traffic on loopback: allow-lists,
//! per-address limits, a read-only open port, slow clients and connection floods.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;
use wwep::config::PortAccess;
#[test]
fn allow_list_closes_other_addresses_without_a_reply() {
    let s = TestServer::with(|c| {
        c.allow = vec![
            "127.0.0.2/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]
    });
    let mut allowed = try_connect_from("127.0.0.2", s.plain()).unwrap();
    assert_eq!(transact(&mut allowed, b"W0001010001"), b"A0001010001");
    let mut other = try_connect_from("127.0.0.1", s.plain()).unwrap();
    let _ = other.write_all(b"R000101");
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut other, &mut got);
    assert!(got.is_empty(), "no reply to a denied address: {got:?}");
    let tls_other = try_connect_from("127.0.0.1", s.tls()).unwrap();
    assert!(s.pki.connector().connect("localhost", tls_other).is_err());
    assert_eq!(s.stats_when(|st| st.denied >= 2).denied, 2);
}

#[test]
fn per_address_limit_answers_x_and_spares_other_addresses() {
    let s = TestServer::with(|c| {
        c.max_per_ip = 3;
        c.timeout = Duration::from_secs(3);
    });
    let holders: Vec<_> = (0..3)
        .map(|_| try_connect_from("127.0.0.2", s.plain()).unwrap())
        .collect();
    assert!(s.in_flight_becomes(3, Duration::from_secs(2)));
    let mut fourth = try_connect_from("127.0.0.2", s.plain()).unwrap();
    fourth.write_all(b"R000101").unwrap();
    assert_eq!(read_to_close(&mut fourth), b"X");
    // Another address is served at once.
    let mut other = try_connect_from("127.0.0.3", s.plain()).unwrap();
    assert_eq!(transact(&mut other, b"W0001010001"), b"A0001010001");
    assert_eq!(s.stats_when(|st| st.rejected >= 1).rejected, 1);
    drop(holders);
    assert!(s.in_flight_becomes(0, Duration::from_secs(5)));
    let mut again = try_connect_from("127.0.0.2", s.plain()).unwrap();
    assert_eq!(transact(&mut again, b"R000101"), b"A0001010001");
}

#[test]
fn read_only_open_port_leaves_writes_to_tls() {
    let s = TestServer::with(|c| c.plain_access = PortAccess::ReadOnly);
    assert_eq!(s.plain_transact(b"W0001010001"), b"X");
    assert_eq!(s.plain_transact(b"R000101"), b"X");
    assert_eq!(s.tls_transact(b"W0001010002"), b"A0001010002");
    assert_eq!(s.plain_transact(b"R000101"), b"A0001010002");
    assert_eq!(s.server().store().unwrap().read(1, 1), Some(2));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
fn slow_clients_from_one_address_do_not_starve_another() {
    // Default limits, as shipped.
    let s = TestServer::start();
    let mut slow = Vec::new();
    for _ in 0..300 {
        match try_connect_from("127.0.0.2", s.plain()) {
            Ok(mut c) => {
                let _ = c.write_all(b"W");
                slow.push(c);
            }
            Err(e) => panic!("opening slow connection {}: {e}", slow.len()),
        }
    }
    let mut latencies = Vec::new();
    for i in 0..50u16 {
        let started = Instant::now();
        let mut c = try_connect_from("127.0.0.1", s.plain()).unwrap();
        let reply = transact(&mut c, format!("W0002{:02X}{i:04X}", i as u8).as_bytes());
        latencies.push(started.elapsed());
        assert_eq!(reply, format!("A0002{:02X}{i:04X}", i as u8).as_bytes());
    }
    latencies.sort();
    let p99 = percentile(&latencies, 0.99);
    assert!(
        p99 < Duration::from_millis(200),
        "p99 {p99:?} with 300 slow clients"
    );
    drop(slow);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Opens `count` connections at once (optionally sending `first`), holds them,
/// and checks the server process stays alive, small, and answers once they close.
fn flood(tls_port: bool, first: &[u8]) {
    const COUNT: usize = 3000;
    if open_files_limit() < (COUNT as u64) + 500 {
        skip(&format!("the open-files limit is below {}", COUNT + 500));
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let mut server =
        ServerProcess::with_pki(&pki, &["--max-per-ip", "100000", "--timeout-ms", "3000"]);
    let pid = server.child.id();
    let baseline = rss_kib(pid);
    let target = if tls_port {
        server.tls.unwrap()
    } else {
        server.plain.unwrap()
    };
    let mut held = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        if let Ok(mut c) = TcpStream::connect_timeout(&target, IO_TIMEOUT) {
            let _ = c.write_all(first);
            held.push(c);
        }
    }
    assert!(
        held.len() > COUNT / 2,
        "only {} connections opened",
        held.len()
    );
    // Meanwhile the server is alive and answers others at once.
    let during = Instant::now();
    let mut c = connect(server.plain.unwrap());
    assert_eq!(transact(&mut c, b"W0003030002"), b"A0003030002");
    assert!(
        during.elapsed() < Duration::from_secs(1),
        "answered in {:?} during the flood",
        during.elapsed()
    );
    let peak = rss_kib(pid);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "server died: {}",
        server.log_text()
    );
    assert!(
        peak < baseline + 200 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
    drop(held);
    let closed = Instant::now();
    let mut c = connect(server.plain.unwrap());
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(transact(&mut c, b"W0003030003"), b"A0003030003");
    assert!(
        closed.elapsed() < Duration::from_secs(2),
        "answered {:?} after the flood closed",
        closed.elapsed()
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "server died: {}",
        server.log_text()
    );
}

#[test]
fn three_thousand_connections_at_once_on_the_open_port() {
    flood(false, b"");
}

#[test]
fn three_thousand_unfinished_tls_handshakes() {
    // Half a ClientHello record header, then nothing.
    flood(true, b"\x16\x03\x01");
}

/// The start of a TLS 1.2 ClientHello: record header, handshake header, version,
/// then the random bytes.
const CLIENT_HELLO_START: &[u8] = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03\
\x5a\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff\
\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10";

/// Raises this process's open-file limit for a test that holds thousands of
/// sockets; false when the hard limit does not allow `wanted`.
fn enough_files(wanted: u64) -> bool {
    rlimit::increase_nofile_limit(wanted).is_ok_and(|got| got >= wanted)
}

fn tls_transact(connector: &native_tls::TlsConnector, addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let tcp = try_connect_from("127.0.0.1", addr).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut tls = connector.connect("localhost", tcp).expect("handshake");
    tls.write_all(request).unwrap();
    read_to_close(&mut tls)
}

#[test]
fn trickling_tls_clients_and_idle_floods_leave_service_to_others() {
    const TRICKLERS: usize = 300;
    const IDLE: usize = 2000;
    if !enough_files(2 * (TRICKLERS + IDLE) as u64 + 1000) {
        skip("the open-files limit is too low for this test");
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let mut server = ServerProcess::with_pki(&pki, &[]);
    let (plain, tls) = (server.plain.unwrap(), server.tls.unwrap());
    // Built once: loading trust roots is the client's cost, not the server's.
    let connector = pki.connector();
    // 300 TLS clients from 10 addresses start a ClientHello and trickle it.
    let mut tricklers = Vec::new();
    for i in 0..TRICKLERS {
        let source = format!("127.0.1.{}", 10 + i % 10);
        let mut c = try_connect_from(&source, tls).expect("trickler connects");
        c.write_all(&CLIENT_HELLO_START[..1]).unwrap();
        tricklers.push(c);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sent = 1;
            let until = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(250));
                let byte = &CLIENT_HELLO_START[sent % CLIENT_HELLO_START.len()..][..1];
                for c in &mut tricklers {
                    let _ = c.write(byte);
                }
                sent += 1;
            }
            tricklers
        })
    };
    // 2,000 idle connections from 8 other addresses, on both ports.
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let source = format!("127.0.2.{}", 10 + i % 8);
        let target = if i % 2 == 0 { plain } else { tls };
        idle.push(try_connect_from(&source, target).expect("idle connection"));
    }
    // A well-behaved client on each port is still served promptly.
    let mut plain_latency = Vec::new();
    let mut tls_latency = Vec::new();
    for i in 0..100u16 {
        let request = format!("W0004{:02X}{i:04X}", i as u8);
        let want = format!("A0004{:02X}{i:04X}", i as u8);
        let started = Instant::now();
        let mut c = try_connect_from("127.0.0.1", plain).unwrap();
        assert_eq!(transact(&mut c, request.as_bytes()), want.as_bytes());
        plain_latency.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(
            tls_transact(&connector, tls, request.as_bytes()),
            want.as_bytes()
        );
        tls_latency.push(started.elapsed());
    }
    plain_latency.sort();
    tls_latency.sort();
    let (p99_plain, p99_tls) = (
        percentile(&plain_latency, 0.99),
        percentile(&tls_latency, 0.99),
    );
    eprintln!(
        "under the floods: plain p50 {:?} p99 {p99_plain:?}, tls p50 {:?} p99 {p99_tls:?} max {:?}",
        plain_latency[50], tls_latency[50], tls_latency[99]
    );
    assert!(
        p99_plain < Duration::from_millis(100) && p99_tls < Duration::from_millis(100),
        "p99 plain {p99_plain:?}, tls {p99_tls:?} under 300 tricklers and 2,000 idle connections"
    );
    // A stop does not wait on slow clients longer than the timeout (5 s).
    let stopping = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    let took = stopping.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tricklers = trickle.join().unwrap();
    assert!(status.is_some_and(|s| s.success()), "{}", server.log_text());
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(took < Duration::from_secs(6), "SIGTERM took {took:?}");
    drop((tricklers, idle));
}

#[test]
fn a_burst_of_busy_clients_from_one_address_is_never_refused() {
    // Default limits, as shipped: a classroom behind one NAT.
    let s = TestServer::start();
    let addr = s.plain();
    for round in 0..3u16 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(256));
        let clients: Vec<_> = (0..256u16)
            .map(|i| {
                let barrier = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let request = format!("W{round:04X}{:02X}{i:04X}", i as u8);
                    let mut c = try_connect_from("127.0.0.1", addr).unwrap();
                    barrier.wait();
                    (transact(&mut c, request.as_bytes()), request)
                })
            })
            .collect();
        for client in clients {
            let (reply, request) = client.join().unwrap();
            assert_eq!(
                reply[0],
                b'A',
                "{request} got {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
    }
    let stats = s.stats_when(|st| st.transactions >= 3 * 256);
    assert_eq!((stats.rejected, stats.shed), (0, 0));
}
