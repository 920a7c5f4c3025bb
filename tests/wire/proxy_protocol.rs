//! PROXY protocol from load balancers: the client's address reaches the log, the
//! allow-list and the per-address limit; headers from anyone else, or malformed
//! ones, close the connection; and a real nginx in front works end to end.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use wwep::net::proxy::V2_SIGNATURE;

fn v2_header(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(source);
    h.extend([127, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(27708u16.to_be_bytes());
    h
}

fn proxied_server(pki: &Pki, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.1",
        "--explain-errors",
    ];
    args.extend_from_slice(extra);
    ServerProcess::with_pki(pki, &args)
}

/// One transaction with `to` from the balancer (127.0.0.1, in --proxy-from).
fn from_balancer(to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    transact(&mut connect_from("127.0.0.1", to), bytes)
}

/// One transaction with `to` from 127.0.0.2, an address not in --proxy-from.
fn from_elsewhere(to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    transact(&mut connect_from("127.0.0.2", to), bytes)
}

fn logged(server: &ServerProcess, text: &str) -> bool {
    eventually(Duration::from_secs(5), || server.log_text().contains(text))
}

fn assert_logged(server: &ServerProcess, text: &str) {
    server.assert_logs_within(text, Duration::from_secs(5));
}

#[test]
fn the_client_address_comes_from_a_trusted_balancer_header() {
    let pki = Pki::new(KeyKind::EcP256);
    let server = proxied_server(&pki, &[]);
    let plain = server.plain.unwrap();
    // Version 1, header and request in one segment.
    let reply = from_balancer(
        plain,
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 27708\r\nW0FAC0B0001",
    );
    assert_eq!(reply, b"A0FAC0B0001");
    assert_logged(&server, "plain 192.0.2.7:56324 \"W0FAC0B0001\"");
    // Version 2, the header in its own segment.
    let mut c = connect_from("127.0.0.1", plain);
    c.set_nodelay(true).unwrap();
    c.write_all(&v2_header([192, 0, 2, 8], 4000)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    c.write_all(b"R0FAC0B").unwrap();
    assert_eq!(read_to_close(&mut c), b"A0FAC0B0001");
    assert_logged(&server, "plain 192.0.2.8:4000 \"R0FAC0B\"");
    // On the TLS port the header comes before the ClientHello.
    let mut tcp = connect_from("127.0.0.1", server.tls.unwrap());
    tcp.write_all(&v2_header([192, 0, 2, 9], 5000)).unwrap();
    let mut tls = pki
        .connector()
        .connect("localhost", tcp)
        .expect("handshake");
    assert_eq!(transact(&mut tls, b"R0FAC0B\n"), b"A0FAC0B0001\n");
    assert_logged(&server, "tls 192.0.2.9:5000");
}

#[test]
fn headers_from_elsewhere_or_malformed_close_the_connection() {
    let pki = Pki::new(KeyKind::EcP256);
    let server = proxied_server(&pki, &[]);
    let plain = server.plain.unwrap();
    // A header from an address not in --proxy-from is not believed.
    let reply = from_elsewhere(
        plain,
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\nW0FAC0B0002",
    );
    assert_eq!(reply, b"");
    assert_logged(&server, "PROXY header from an address not in --proxy-from");
    // Without a header, that address is served as itself.
    assert_eq!(from_elsewhere(plain, b"W0FAC0B0003"), b"A0FAC0B0003");
    assert_logged(&server, "plain 127.0.0.2:");
    // Nothing of that was stored.
    assert_eq!(from_elsewhere(plain, b"R0FAC0B"), b"A0FAC0B0003");
}

#[test]
fn a_trusted_balancers_malformed_or_missing_header_closes_the_connection() {
    let pki = Pki::new(KeyKind::EcP256);
    let server = proxied_server(&pki, &[]);
    let plain = server.plain.unwrap();
    let reply = from_balancer(
        plain,
        b"PROXY TCP4 192.0.2.7 198.51.100.1 70000 1\r\nW0FAC0B0004",
    );
    assert_eq!(reply, b"");
    // (The log holds one line a second per kind of refusal.)
    assert_logged(&server, "malformed PROXY v1 line");
    let reply = from_balancer(plain, b"W0FAC0B0004");
    assert_eq!(reply, b"");
    let reply = from_elsewhere(plain, b"R0FAC0B");
    assert_eq!(reply, b"X not found", "nothing was stored");
}

#[test]
fn limits_apply_to_the_client_behind_the_balancer() {
    let pki = Pki::new(KeyKind::EcP256);
    let server = proxied_server(&pki, &["--allow", "127.0.0.1,192.0.2.0/24"]);
    let plain = server.plain.unwrap();
    let reply = from_balancer(
        plain,
        b"PROXY TCP4 203.0.113.5 198.51.100.1 1000 27708\r\nR0FAC0B",
    );
    assert_eq!(reply, b"");
    assert_logged(&server, "203.0.113.5:1000 (through 127.0.0.1:");
    let reply = from_balancer(
        plain,
        b"PROXY TCP4 192.0.2.5 198.51.100.1 1000 27708\r\nW0FAC0B0005",
    );
    assert_eq!(reply, b"A0FAC0B0005");
}

/// nginx's stream module on `listen`, forwarding to `upstream` with a PROXY
/// header; killed by PID on drop.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers (SIGKILL would orphan them),
    /// then SIGKILL if it has not gone within two seconds.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn nginx(listen: u16, upstream: SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nginx.conf");
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "load_module {STREAM_MODULE};\nworker_processes 1;\npid {pid};\nerror_log {log} warn;\n\
             events {{ worker_connections 256; }}\n\
             stream {{ server {{ listen 127.0.0.1:{listen}; proxy_pass {upstream}; proxy_protocol on; }} }}\n",
            pid = dir.path().join("nginx.pid").display(),
            log = dir.path().join("error.log").display(),
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || TcpStream::connect(addr).is_ok()),
        "nginx did not start"
    );
    Nginx { child, _dir: dir }
}

#[test]
fn through_nginx_the_log_shows_the_board_not_the_balancer() {
    if !have_tool("nginx") {
        return;
    }
    if !std::path::Path::new(STREAM_MODULE).exists() {
        assert!(
            std::env::var("WWEP_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "nginx's stream module is required (WWEP_REQUIRE_TOOLS=1)"
        );
        skip("nginx's stream module is not installed");
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let server = proxied_server(&pki, &[]);
    let (plain_port, tls_port) = (free_port(), free_port());
    let _plain = nginx(plain_port, server.plain.unwrap());
    let _tls = nginx(tls_port, server.tls.unwrap());
    let balanced = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let mut c = connect_from("127.0.0.3", balanced(plain_port));
    assert_eq!(transact(&mut c, b"W0FAC0B0006"), b"A0FAC0B0006");
    assert_logged(&server, "plain 127.0.0.3:");
    let tcp = connect_from("127.0.0.4", balanced(tls_port));
    let mut tls = pki
        .connector()
        .connect("localhost", tcp)
        .expect("handshake");
    assert_eq!(transact(&mut tls, b"R0FAC0B"), b"A0FAC0B0006");
    assert_logged(&server, "tls 127.0.0.4:");
}

/// HAProxy with `dist/haproxy.cfg`, pointed at `plain` and `tls` pairs of front
/// ends; killed by PID on drop.
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_shipped_haproxy_config_spreads_boards_over_two_front_ends() {
    if !have_tool("haproxy") {
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let a = proxied_server(&pki, &[]);
    let b = proxied_server(&pki, &[]);
    let (plain_port, tls_port) = (free_port(), free_port());
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/haproxy.cfg")).unwrap();
    let port = |addr: Option<SocketAddr>| addr.unwrap().port();
    let config = shipped
        .replace("bind :27708", &format!("bind 127.0.0.1:{plain_port}"))
        .replace("bind :40508", &format!("bind 127.0.0.1:{tls_port}"))
        .replace(
            "10.0.0.11:27708 check",
            &format!("127.0.0.1:{} check", port(a.plain)),
        )
        .replace(
            "10.0.0.12:27708 check",
            &format!("127.0.0.1:{} check", port(b.plain)),
        )
        .replace(
            "10.0.0.11:40508 check port 27708",
            &format!("127.0.0.1:{} check port {}", port(a.tls), port(a.plain)),
        )
        .replace(
            "10.0.0.12:40508 check port 27708",
            &format!("127.0.0.1:{} check port {}", port(b.tls), port(b.plain)),
        )
        .replace("log stdout format raw local0 notice", "")
        // The test machine's open-file limit, not a production box's.
        .replace("maxconn 50000", "maxconn 1000");
    assert!(
        !config
            .lines()
            .any(|l| l.trim_start().starts_with("server") && l.contains("10.0.0.")),
        "every front end was replaced"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let _haproxy = Haproxy { child, _dir: dir };
    let balanced = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    // Health checks reach both front ends (a read, answered X) before boards do.
    assert!(
        logged(&a, "\"R000000\\n\" -> \"X not found\\n\"") && logged(&b, "\"R000000\\n\""),
        "{}",
        a.log_text()
    );
    for i in 0..6u16 {
        let source = format!("127.0.0.{}", 10 + i);
        let request = format!("W00070{i}{i:04X}");
        let mut c = connect_from(&source, balanced(plain_port));
        assert_eq!(
            transact(&mut c, request.as_bytes()),
            format!("A00070{i}{i:04X}").as_bytes()
        );
        let tcp = connect_from(&source, balanced(tls_port));
        let mut tls = pki
            .connector()
            .connect("localhost", tcp)
            .expect("handshake");
        let read = format!("R00070{i}");
        let reply = transact(&mut tls, read.as_bytes());
        // Each front end has its own memory here: the read may land on the
        // other one. What matters is that both serve and see the board.
        assert!(
            reply.starts_with(b"A") || reply.starts_with(b"X"),
            "{reply:?}"
        );
    }
    // Lines are logged just after each reply.
    let both = || format!("{}\n{}", a.log_text(), b.log_text());
    assert!(
        eventually(Duration::from_secs(5), || both()
            .contains("plain 127.0.0.10:")
            && both().contains("tls 127.0.0.15:")),
        "{}",
        both()
    );
    assert!(
        eventually(Duration::from_secs(5), || a.log_text().contains("\"W00070")
            && b.log_text().contains("\"W00070")),
        "leastconn spread the boards over both front ends"
    );
}
