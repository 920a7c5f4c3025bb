//! Who may talk to the server, and hostile traffic on loopback: allow-lists,
//! per-address limits, a read-only open port, slow clients and connection floods.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use wwep::connection::Access;

/// A connection from a chosen loopback source address.
fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    let source: IpAddr = source.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

#[test]
fn allow_list_closes_other_addresses_without_a_reply() {
    let s = TestServer::with(|c| {
        c.allow = vec![
            "127.0.0.2/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]
    });
    let mut allowed = connect_from("127.0.0.2", s.plain()).unwrap();
    assert_eq!(transact(&mut allowed, b"W0001010001"), b"A0001010001");
    let mut other = connect_from("127.0.0.1", s.plain()).unwrap();
    let _ = other.write_all(b"R000101");
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut other, &mut got);
    assert!(got.is_empty(), "no reply to a denied address: {got:?}");
    let tls_other = connect_from("127.0.0.1", s.tls()).unwrap();
    assert!(s.pki.connector().connect("localhost", tls_other).is_err());
    assert_eq!(s.server().stats().denied, 2);
}

#[test]
fn per_address_limit_answers_x_and_spares_other_addresses() {
    let s = TestServer::with(|c| {
        c.max_per_ip = 3;
        c.timeout = Duration::from_secs(3);
    });
    let holders: Vec<_> = (0..3)
        .map(|_| connect_from("127.0.0.2", s.plain()).unwrap())
        .collect();
    assert!(s.in_flight_becomes(3, Duration::from_secs(2)));
    let mut fourth = connect_from("127.0.0.2", s.plain()).unwrap();
    fourth.write_all(b"R000101").unwrap();
    assert_eq!(read_to_close(&mut fourth), b"X");
    // Another address is served at once.
    let mut other = connect_from("127.0.0.3", s.plain()).unwrap();
    assert_eq!(transact(&mut other, b"W0001010001"), b"A0001010001");
    assert_eq!(s.server().stats().rejected, 1);
    drop(holders);
    assert!(s.in_flight_becomes(0, Duration::from_secs(5)));
    let mut again = connect_from("127.0.0.2", s.plain()).unwrap();
    assert_eq!(transact(&mut again, b"R000101"), b"A0001010001");
}

#[test]
fn read_only_open_port_leaves_writes_to_tls() {
    let s = TestServer::with(|c| c.plain_access = Access::ReadOnly);
    assert_eq!(s.plain_transact(b"W0001010001"), b"X");
    assert_eq!(s.plain_transact(b"R000101"), b"X");
    assert_eq!(s.tls_transact(b"W0001010002"), b"A0001010002");
    assert_eq!(s.plain_transact(b"R000101"), b"A0001010002");
    assert_eq!(s.server().store().read(1, 1), Some(2));
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
        match connect_from("127.0.0.2", s.plain()) {
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
        let mut c = connect_from("127.0.0.1", s.plain()).unwrap();
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
        eprintln!("skipping: the open-files limit is below {}", COUNT + 500);
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let mut server = ServerProcess::start(&[
        "--cert",
        pki.path("server.pem").to_str().unwrap(),
        "--key",
        pki.path("server.key").to_str().unwrap(),
        "--max-per-ip",
        "100000",
        "--timeout-ms",
        "3000",
    ]);
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
    // Meanwhile the server is alive and answers on the other port's address.
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
        server.log_text().contains("--max-connections"),
        "refusals are logged"
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
