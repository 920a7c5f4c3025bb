//! The HTTP side (`--http`): `/metrics` parsed as Prometheus text with counters
//! that follow real transactions, `/health` and `/ready`, `--http-allow`, JSON
//! log lines, and the live page in a real (headless) browser.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use wwep::config::HttpConfig;

/// One sample of a Prometheus text exposition: `name{labels} value`.
type Samples = BTreeMap<String, f64>;

/// Parses the Prometheus text format (0.0.4) strictly enough to catch a
/// malformed line: every line is a comment (`# HELP`/`# TYPE` well formed) or
/// a sample with a valid name, well-formed labels and a number. Keys are the
/// name and the labels sorted by name: `name{a="1",b="2"}`.
fn parse_prometheus(text: &str) -> (Samples, BTreeMap<String, String>) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut samples = Samples::new();
    let mut types = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("bad comment: {line}"));
            assert!(valid_name(name), "bad name in {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad type in {line}"
                );
                assert!(
                    types.insert(name.to_string(), t.to_string()).is_none(),
                    "TYPE twice: {line}"
                );
            } else {
                assert_eq!(kind, "HELP", "unknown comment {line}");
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels: {line}"));
                let mut labels = Vec::new();
                let mut rest = inner;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("label: {line}"));
                    assert!(valid_name(key), "label name in {line}");
                    let end = after
                        .find('"')
                        .unwrap_or_else(|| panic!("label value: {line}"));
                    labels.push(format!("{key}=\"{}\"", &after[..end]));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                labels.sort();
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad name in {line}");
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", labels.join(","))
        };
        assert!(samples.insert(key, value).is_none(), "sample twice: {line}");
    }
    (samples, types)
}

fn metrics(addr: SocketAddr) -> Samples {
    let answer = http_get(addr, "/metrics");
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        answer.headers
    );
    parse_prometheus(&answer.body).0
}

/// `/metrics` once `ready` holds: a transaction is counted by its worker just
/// after its reply goes out, so a client may ask a moment before.
fn metrics_when(addr: SocketAddr, ready: impl Fn(&Samples) -> bool) -> Samples {
    let until = Instant::now() + IO_TIMEOUT;
    loop {
        let m = metrics(addr);
        if ready(&m) || Instant::now() > until {
            return m;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn transactions(m: &Samples) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("wwep_transactions_total{"))
        .map(|(_, v)| v)
        .sum()
}

fn tx(port: &str, command: &str, reply: &str, result: &str) -> String {
    format!(
        "wwep_transactions_total{{command=\"{command}\",port=\"{port}\",reply=\"{reply}\",result=\"{result}\"}}"
    )
}

fn with_http(config: &mut wwep::config::ServerConfig) {
    config.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap()));
}

#[test]
fn connections_closed_without_a_byte_are_not_transactions() {
    let s = TestServer::with(|c| {
        with_http(c);
        c.timeout = Duration::from_millis(1000);
    });
    let http = s.server().http_addr().expect("http address");
    // Port checks and load balancers' probes: connect, send nothing, close.
    for _ in 0..5 {
        let probe = connect(s.plain());
        half_close(&probe);
        drop(probe);
    }
    assert_eq!(s.plain_transact(b"W0FAC0B1234"), b"A0FAC0B1234");
    assert_eq!(s.plain_transact(b"R0FAC0B"), b"A0FAC0B1234");
    let empty = "wwep_connections_closed_total{reason=\"empty\"}";
    let m = metrics_when(http, |m| {
        transactions(m) >= 2.0 && m.get(empty) >= Some(&5.0)
    });
    assert_eq!(
        m.get(empty),
        Some(&5.0),
        "each probe counted once, as empty"
    );
    assert_eq!(
        transactions(&m),
        2.0,
        "only the two requests are transactions"
    );
    let timeouts: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("wwep_transactions_total") && k.contains("result=\"timeout\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(timeouts, 0.0, "a probe is not a timeout");
}

#[test]
fn metrics_follow_a_scripted_set_of_transactions() {
    let s = TestServer::with(|c| {
        with_http(c);
        c.timeout = Duration::from_millis(1000);
        c.gap = Duration::from_millis(50);
    });
    let http = s.server().http_addr().expect("http address");
    let before = metrics(http);
    assert_eq!(
        before[&tx("plain", "W", "A", "ok")],
        0.0,
        "every series starts at 0"
    );
    assert_eq!(before["wwep_registers"], 0.0);

    for request in [&b"W0FAC0B1234"[..], b"W0FAC0C0001\n", b"W00010500FF\r\n"] {
        assert_eq!(s.plain_transact(request)[0], b'A');
    }
    assert_eq!(s.plain_transact(b"R0FAC0B"), b"A0FAC0B1234");
    assert_eq!(s.plain_transact(b"R0FAC0D"), b"X");
    assert_eq!(s.plain_transact(b"W0FAC0BZZZZ"), b"X");
    assert_eq!(s.plain_transact(b"W01234\n"), b"X\n");
    assert_eq!(s.plain_transact(b"hello\n"), b"X\n");
    // Silence gets X after the timeout.
    let mut silent = connect(s.plain());
    assert_eq!(read_to_close(&mut silent), b"X");
    assert_eq!(s.tls_transact(b"W0FAC0E00AA"), b"A0FAC0E00AA");
    // Not TLS on the TLS port: a failed handshake of kind not_tls.
    let mut not_tls = connect(s.tls());
    not_tls.write_all(b"R0FAC0B\n").unwrap();
    let _ = not_tls.read(&mut [0u8; 64]);

    let m = metrics_when(http, |m| {
        transactions(m) >= 10.0 && m["wwep_tls_handshake_failures_total{kind=\"not_tls\"}"] >= 1.0
    });
    let expected = [
        (tx("plain", "W", "A", "ok"), 3.0),
        (tx("plain", "R", "A", "ok"), 1.0),
        (tx("plain", "R", "X", "not_found"), 1.0),
        (tx("plain", "W", "X", "bad_hex"), 1.0),
        (tx("plain", "W", "X", "bad_length"), 1.0),
        (tx("plain", "none", "X", "bad_command"), 1.0),
        (tx("plain", "none", "X", "timeout"), 1.0),
        (tx("tls", "W", "A", "ok"), 1.0),
        (tx("plain", "W", "X", "store_failure"), 0.0),
        (
            "wwep_transaction_duration_seconds_count{port=\"plain\"}".into(),
            9.0,
        ),
        (
            "wwep_transaction_duration_seconds_count{port=\"tls\"}".into(),
            1.0,
        ),
        (
            "wwep_tls_handshakes_total{outcome=\"full\",version=\"TLSv1.3\"}".into(),
            1.0,
        ),
        (
            "wwep_tls_handshake_failures_total{kind=\"not_tls\"}".into(),
            1.0,
        ),
        ("wwep_registers".into(), 4.0),
        ("wwep_listener_up{port=\"plain\"}".into(), 1.0),
        ("wwep_listener_up{port=\"tls\"}".into(), 1.0),
        (
            "wwep_connections_refused_total{reason=\"not_allowed\"}".into(),
            0.0,
        ),
    ];
    for (key, value) in &expected {
        assert_eq!(m.get(key), Some(value), "{key}");
    }
    assert_eq!(transactions(&m), 10.0, "no other transaction was counted");
    assert_eq!(
        m["wwep_transaction_duration_seconds_bucket{le=\"+Inf\",port=\"plain\"}"],
        9.0
    );
    let not_after = m["wwep_tls_certificate_not_after_seconds"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The test certificate is valid for about a year.
    assert!(not_after > now + 300.0 * 86400.0 && not_after < now + 400.0 * 86400.0);
    assert!(m.keys().any(|k| k.starts_with("wwep_build_info{commit=")));
}

#[test]
fn health_and_ready_answer_200_on_a_running_server() {
    let s = TestServer::with(with_http);
    let http = s.server().http_addr().unwrap();
    let health = http_get(http, "/health");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(http, "/ready").status, 200);
    assert_eq!(http_get(http, "/nowhere").status, 404);
    let page = http_get(http, "/");
    assert_eq!(page.status, 200);
    assert!(page.headers.contains("content-security-policy"));
    assert!(page.body.contains("/api/state"));
}

/// The page read without JavaScript (`curl /`, a text browser) says it needs
/// it and where the same figures are, and claims nothing about the registers
/// before its script has read them: with two registers written, the static
/// part never says none was.
#[test]
fn the_page_without_javascript_points_at_the_json_and_claims_nothing() {
    let s = TestServer::with(with_http);
    let http = s.server().http_addr().unwrap();
    for request in [&b"W0FAC0B1234"[..], b"W0ABC050001"] {
        assert_eq!(s.plain_transact(request)[0], b'A');
    }
    let page = http_get(http, "/");
    assert_eq!(page.status, 200);
    let (markup, _script) = page
        .body
        .split_once("<script>")
        .unwrap_or_else(|| panic!("a script in {}", page.body));
    let (_, noscript) = markup
        .split_once("<noscript>")
        .unwrap_or_else(|| panic!("a <noscript> in {markup}"));
    let (noscript, _) = noscript.split_once("</noscript>").expect("closed");
    assert!(noscript.contains("needs JavaScript"), "{noscript}");
    assert!(noscript.contains("href=\"/api/state\""), "{noscript}");
    assert!(noscript.contains("href=\"/metrics\""), "{noscript}");
    assert!(markup.contains("loading…"), "{markup}");
    assert!(!markup.contains("No register written"), "{markup}");
}

/// Three requests written at once on one connection are answered in the order
/// they were sent, each whole, and the connection closes after the one that
/// asked for it.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = TestServer::with(with_http);
    let http = s.server().http_addr().unwrap();
    let mut c = TcpStream::connect(http).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("send");
    let mut got = String::new();
    c.read_to_string(&mut got).expect("answers, then the close");
    // Each answer: its head, then exactly Content-Length bytes of body.
    let mut answers = Vec::new();
    let mut rest = got.as_str();
    while !rest.is_empty() {
        let Some(head_end) = rest.find("\r\n\r\n") else {
            panic!("an answer without its head's end: {got}");
        };
        let head = &rest[..head_end];
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length: {got}"));
        let body = &rest[head_end + 4..head_end + 4 + length];
        let status = head.lines().next().unwrap_or("");
        answers.push((status.to_string(), body.to_string()));
        rest = &rest[head_end + 4 + length..];
    }
    let expected = [
        ("HTTP/1.1 200 OK", "ok\n"),
        (
            "HTTP/1.1 404 Not Found",
            "not found: try /, /metrics, /health, /ready, /api/state, /api/events or /api/devices/0FAC (any device id)\n",
        ),
        ("HTTP/1.1 200 OK", "ready\n"),
    ];
    let answers: Vec<(&str, &str)> = answers
        .iter()
        .map(|(s, b)| (s.as_str(), b.as_str()))
        .collect();
    assert_eq!(answers, expected, "{got}");
}

#[test]
fn http_allow_refuses_other_addresses() {
    let s = TestServer::with(|c| {
        c.http = Some(HttpConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            ..HttpConfig::new("127.0.0.1:0".parse().unwrap())
        });
    });
    let http = s.server().http_addr().unwrap();
    assert_eq!(
        http_get_from(Some("127.0.0.1"), http, "/metrics")
            .unwrap()
            .status,
        200
    );
    for path in ["/metrics", "/health", "/", "/api/state"] {
        let refused = http_get_from(Some("127.0.0.2"), http, path).unwrap();
        assert_eq!(refused.status, 403, "{path}");
        assert!(!refused.body.contains("wwep_"), "{path}");
    }
}

/// A tiny tmpfs, unmounted on drop; `None` where mounting is not allowed.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(bytes: usize) -> Option<TinyDisk> {
        let dir = tempfile::tempdir().unwrap();
        let size = format!("size={bytes}");
        let mut mount = Command::new("mount");
        mount.args(["-t", "tmpfs", "-o", &size, "tmpfs"]);
        mount.arg(dir.path()).stderr(Stdio::null());
        let mounted = mount.status().is_ok_and(|s| s.success());
        mounted.then_some(TinyDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file until it is full.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Whatever page-sized space is left goes byte by byte.
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
        filler
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn health_turns_503_when_the_data_file_fails_and_200_when_it_recovers() {
    let Some(disk) = TinyDisk::mount(64 * 1024) else {
        skip("cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = disk.path().join("registers.wwep");
    let s = TestServer::with(|c| {
        with_http(c);
        c.tls_port = None;
        c.data = Some(wwep::store::DataConfig {
            path: data.clone(),
            fsync: wwep::store::journal::Fsync::Always,
            compaction: wwep::store::journal::CompactionPolicy::default(),
            repair: false,
        });
    });
    let http = s.server().http_addr().unwrap();
    assert_eq!(s.plain_transact(b"W0FAC0B1234"), b"A0FAC0B1234");
    assert!(eventually(IO_TIMEOUT, || http_get(http, "/health").status == 200));

    let filler = disk.fill();
    // The file's last page may still have room for a few hundred records.
    let failed_after = (0..2000u32).find(|i| {
        let request = format!("W{:04X}{:02X}0001", 0x1000 + i / 256, i % 256);
        s.plain_transact(request.as_bytes()) == b"X"
    });
    assert!(failed_after.is_some(), "the disk is full");
    assert!(eventually(IO_TIMEOUT, || http_get(http, "/health").status == 503));
    let health = http_get(http, "/health");
    assert!(health.body.contains("data file"), "{}", health.body);
    assert_eq!(health.body.lines().count(), 1, "one line: {}", health.body);
    // A transaction is counted once its connection has closed, just after
    // the client has read its reply.
    let mut m = metrics(http);
    assert!(
        eventually(IO_TIMEOUT, || {
            m = metrics(http);
            m.get(&tx("plain", "W", "X", "store_failure")) == Some(&1.0)
        }),
        "the failed write is not counted: {m:?}"
    );
    assert_eq!(m["wwep_data_file_write_errors_total"], 1.0);
    // Reads keep working meanwhile.
    assert_eq!(s.plain_transact(b"R0FAC0B"), b"A0FAC0B1234");
    assert_eq!(http_get(http, "/health").status, 503);

    std::fs::remove_file(filler).unwrap();
    assert_eq!(s.plain_transact(b"W0FAC0B5678"), b"A0FAC0B5678");
    assert!(eventually(IO_TIMEOUT, || http_get(http, "/health").status == 200));
    assert!(metrics(http)["wwep_data_file_bytes"] > 0.0);
    drop(s);
}

/// A server process, killed by PID and reaped on drop (also when a test fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `wwep-server` with `args` and returns it with its HTTP address,
/// read from the startup log (text or JSON).
fn server_with_http(args: &[&str]) -> (Child, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut cmd = server_cmd();
    cmd.args(["--no-tls", "--http", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Child(cmd.spawn().expect("spawn wwep-server"));
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .expect("wwep-server reports its HTTP address");
        if let Some(at) = line.find("http listener on ") {
            let rest = &line[at + "http listener on ".len()..];
            let addr = rest.split(['"', ' ']).next().unwrap().parse().unwrap();
            return (child, addr, rx);
        }
    }
}

/// For the page's tests: a server with its HTTP address and its open port's;
/// `None` (skipped) without chromium and mkfifo.
fn server_for_a_browser() -> Option<(Child, SocketAddr, SocketAddr)> {
    if !have_tool("chromium") || !have_tool("mkfifo") {
        return None;
    }
    let (server, http, rx) = server_with_http(&[]);
    let plain = plain_addr(&rx, &mut Vec::new());
    Some((server, http, plain))
}

/// The plain port's address, from a `plain listener on ADDR` line.
fn plain_addr(rx: &std::sync::mpsc::Receiver<String>, seen: &mut Vec<String>) -> SocketAddr {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("plain listener line");
        seen.push(line.clone());
        if let Some(at) = line.find("plain listener on ") {
            let rest = &line[at + "plain listener on ".len()..];
            return rest.split(['"', ' ']).next().unwrap().parse().unwrap();
        }
    }
}

#[test]
fn json_log_lines_parse_and_carry_the_transaction_fields() {
    let (child, http, rx) = server_with_http(&["--log-format", "json"]);
    let mut lines = Vec::new();
    let plain = plain_addr(&rx, &mut lines);
    assert_eq!(
        transact(&mut connect(plain), b"W0FAC0B1234\n"),
        b"A0FAC0B1234\n"
    );
    assert!(eventually(IO_TIMEOUT, || http_get(http, "/ready").status == 200));
    let transaction = loop {
        let line = rx.recv_timeout(IO_TIMEOUT).expect("a transaction line");
        lines.push(line.clone());
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        if v["event"] == "transaction" {
            break v;
        }
    };
    drop(child);
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in ["time", "level", "target", "message", "event"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
    }
    assert_eq!(transaction["level"], "info");
    assert_eq!(transaction["port"], "plain");
    assert_eq!(transaction["n"], 1);
    assert_eq!(transaction["request"], "W0FAC0B1234\\n");
    assert_eq!(transaction["reply"], "A0FAC0B1234\\n");
    assert!(transaction["us"].is_u64());
    assert_eq!(transaction["tls"], "");
    let peer: SocketAddr = transaction["peer"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.1");
    assert!(transaction["time"].as_str().unwrap().ends_with('Z'));
}

/// Headless Chromium with a fresh profile, the flags that work on these machines.
fn chromium(profile: &Path) -> Command {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

#[test]
fn the_live_page_shows_a_register_written_over_the_plain_port() {
    let Some((_server, http, plain)) = server_for_a_browser() else {
        return;
    };
    assert_eq!(
        transact(&mut connect(plain), b"W0FAC0B1234"),
        b"A0FAC0B1234"
    );
    assert_eq!(transact(&mut connect(plain), b"R0FAC0C"), b"X");
    // The register is not in the HTML: the page's script must fetch and draw it.
    assert!(!http_get(http, "/").body.contains("1234"));
    let started = Instant::now();
    // Driven over the DevTools protocol rather than `--dump-dom`: the page
    // keeps its event stream open, so a virtual-time budget never runs out.
    let mut browser = Browser::start();
    browser.open(&format!("http://{http}/"));
    let live = r#"document.getElementById("status")?.textContent ?? null"#;
    let until = Instant::now() + Duration::from_secs(20);
    while browser.eval(live) != "live" {
        assert!(Instant::now() < until, "the page never said it was live");
        std::thread::sleep(Duration::from_millis(50));
    }
    let item = browser.eval(
        r#"document.querySelector('[data-device="0FAC"][data-register="0B"]')?.outerHTML ?? null"#,
    );
    let item = item
        .as_str()
        .unwrap_or_else(|| panic!("no register 0B of device 0FAC in the page"));
    assert!(item.contains(">1234<"), "value 1234 shown: {item}");
    assert!(
        item.contains(">plain<"),
        "written over the plain port: {item}"
    );
    assert_eq!(
        browser.eval(r#"document.getElementById("recent").textContent.includes("R0FAC0C")"#),
        true,
        "the transaction list shows the read"
    );
    eprintln!("chromium rendered the page in {:?}", started.elapsed());
}

#[test]
fn refusals_are_counted_by_reason_and_busy_replies_as_transactions() {
    let s = TestServer::with(|c| {
        with_http(c);
        c.max_per_ip = 1;
        c.tls_port = None;
    });
    let http = s.server().http_addr().unwrap();
    // One unfinished connection holds the address's only place...
    let mut holder = connect(s.plain());
    holder.write_all(b"W0F").unwrap();
    assert!(s.in_flight_becomes(1, IO_TIMEOUT));
    // ...so the next one from it gets X at once.
    assert_eq!(s.plain_transact(b"W0FAC0B1234"), b"X");
    let m = metrics_when(http, |m| {
        m["wwep_connections_refused_total{reason=\"per_address\"}"] >= 1.0
    });
    assert_eq!(
        m["wwep_connections_refused_total{reason=\"per_address\"}"],
        1.0
    );
    assert_eq!(m["wwep_connections_refused_total{reason=\"full\"}"], 0.0);
    assert_eq!(m[&tx("plain", "none", "X", "busy")], 1.0);
    assert_eq!(m["wwep_connections_open"], 1.0);
    drop(holder);
}

/// Headless Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: JSON messages ended by NUL on fds 3 and 4,
/// here two named pipes), enough to open a page and evaluate expressions.
pub(crate) struct Browser {
    _child: Child,
    to: std::fs::File,
    from: std::sync::mpsc::Receiver<serde_json::Value>,
    next_id: u64,
    session: Option<String>,
    _dir: tempfile::TempDir,
}

impl Browser {
    pub(crate) fn start() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let (to_path, from_path) = (dir.path().join("to"), dir.path().join("from"));
        for p in [&to_path, &from_path] {
            assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
        }
        let profile = dir.path().join("profile");
        let mut cmd = chromium(&profile);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let script = format!(
            "exec chromium {} --remote-debugging-pipe about:blank 3<\"$1\" 4>\"$2\"",
            args.join(" ")
        );
        cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&to_path)
            .arg(&from_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = Child(cmd.spawn().expect("spawn chromium"));
        // The shell opens "to" for reading, then "from" for writing: same order here.
        let to = std::fs::OpenOptions::new()
            .write(true)
            .open(&to_path)
            .unwrap();
        let from = std::fs::File::open(&from_path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for message in BufReader::new(from).split(0) {
                let Ok(message) = message else { break };
                let Ok(value) = serde_json::from_slice(&message) else {
                    continue;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Browser {
            _child: child,
            to,
            from: rx,
            next_id: 1,
            session: None,
            _dir: dir,
        }
    }

    /// Sends a command and waits for its answer's `result`.
    pub(crate) fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = serde_json::Value::String(session.clone());
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let answer = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from chromium to {method}"));
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab and talks to that tab from now on.
    pub(crate) fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", serde_json::json!({"url": url}));
        let attached = self.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    }

    /// The value of a JavaScript expression in the page.
    pub(crate) fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked to close, Chromium ends its helper processes too; the child
        // guard kills it by PID if it has not exited within 2 s.
        let _ = self
            .to
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Ok(Some(_)) = self._child.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_open_page_shows_a_new_write_within_two_seconds() {
    let Some((_server, http, plain)) = server_for_a_browser() else {
        return;
    };
    let mut browser = Browser::start();
    browser.open(&format!("http://{http}/"));
    let value = r#"document.querySelector('[data-device="0FAC"][data-register="0B"] .value')?.textContent ?? null"#;
    let live = r#"document.getElementById("status")?.textContent ?? null"#;
    let until = Instant::now() + Duration::from_secs(20);
    while browser.eval(live) != "live" {
        assert!(Instant::now() < until, "the page never said it was live");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        browser.eval(value),
        serde_json::Value::Null,
        "nothing written yet"
    );
    assert_eq!(
        transact(&mut connect(plain), b"W0FAC0B1234"),
        b"A0FAC0B1234"
    );
    let written = Instant::now();
    loop {
        if browser.eval(value) == "1234" {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "the page did not show the write within 2 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the page showed the write after {:?}", written.elapsed());
    // And a new value for the same register replaces it.
    assert_eq!(
        transact(&mut connect(plain), b"W0FAC0BBEEF"),
        b"A0FAC0BBEEF"
    );
    let written = Instant::now();
    while browser.eval(value) != "BEEF" {
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "no update within 2 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn before_the_server_is_up_ready_and_health_say_starting() {
    // The HTTP side alone, as during the data file's replay.
    let config = HttpConfig::new("127.0.0.1:0".parse().unwrap());
    let http = wwep::http::HttpServer::start(
        &config,
        std::sync::Arc::new(wwep::metrics::Metrics::new()),
        std::sync::Arc::new(wwep::activity::Activity::new()),
    )
    .expect("http starts");
    let ready = http_get(http.addr(), "/ready");
    assert_eq!((ready.status, ready.body.as_str()), (503, "starting\n"));
    let health = http_get(http.addr(), "/health");
    assert_eq!(health.status, 503);
    assert!(health.body.starts_with("starting"), "{}", health.body);
    // Metrics are there already (build info, zeroes).
    let m = parse_prometheus(&http_get(http.addr(), "/metrics").body).0;
    assert!(m.keys().any(|k| k.starts_with("wwep_build_info")));
    http.stop();
}

#[test]
fn the_data_file_reports_its_fsyncs_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::with(|c| {
        with_http(c);
        c.tls_port = None;
        c.data = Some(wwep::store::DataConfig {
            path: dir.path().join("registers.wwep"),
            fsync: wwep::store::journal::Fsync::EverySec,
            compaction: wwep::store::journal::CompactionPolicy {
                ratio: 2.0,
                min_bytes: 64,
            },
            repair: false,
        });
    });
    let http = s.server().http_addr().unwrap();
    // One register written over and over: the file soon outgrows it.
    for value in 0..40u16 {
        let request = format!("W0FAC0B{value:04X}");
        assert_eq!(s.plain_transact(request.as_bytes())[0], b'A');
    }
    // The maintenance thread fsyncs and compacts once a second.
    let m = metrics_when(http, |m| {
        m["wwep_data_file_fsyncs_total"] >= 1.0 && m["wwep_data_file_compactions_total"] >= 1.0
    });
    assert!(m["wwep_data_file_fsyncs_total"] >= 1.0, "{m:?}");
    assert_eq!(
        m["wwep_data_file_fsync_duration_seconds_count"],
        m["wwep_data_file_fsyncs_total"]
    );
    assert!(m["wwep_data_file_compactions_total"] >= 1.0, "{m:?}");
    assert_eq!(m["wwep_data_file_write_errors_total"], 0.0);
    assert!(m["wwep_data_file_bytes"] > 0.0);
}

#[test]
fn the_lookup_box_shows_any_device_and_follows_its_writes() {
    let Some((_server, http, plain)) = server_for_a_browser() else {
        return;
    };
    for write in ["W0FAC0B1234", "W0ABC010042"] {
        let reply = transact(&mut connect(plain), write.as_bytes());
        assert_eq!(reply, write.replacen('W', "A", 1).as_bytes());
    }
    let mut browser = Browser::start();
    // The id prefilled from the address, in lower case.
    browser.open(&format!("http://{http}/#0fac"));
    let shown = |register: &str| {
        format!(
            r#"document.querySelector('#lookup [data-register="{register}"] .value')?.textContent ?? null"#
        )
    };
    let wait_for = |browser: &mut Browser, expression: &str, want: &str| {
        let until = Instant::now() + Duration::from_secs(20);
        while browser.eval(expression) != want {
            assert!(Instant::now() < until, "{expression} never became {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&mut browser, &shown("0B"), "1234");
    assert_eq!(
        browser.eval(r#"document.getElementById("lookup").dataset.device"#),
        "0FAC"
    );
    // Live: a new value shows within the page's refresh.
    assert_eq!(
        transact(&mut connect(plain), b"W0FAC0BBEEF"),
        b"A0FAC0BBEEF"
    );
    let written = Instant::now();
    wait_for(&mut browser, &shown("0B"), "BEEF");
    assert!(
        written.elapsed() < Duration::from_secs(3),
        "the lookup followed the write only after {:?}",
        written.elapsed()
    );
    // Typed into the box: another device, then one with nothing written.
    let typed = |id: &str| {
        format!(
            r#"(() => {{ const i = document.getElementById("lookup-id"); i.value = "{id}"; i.dispatchEvent(new Event("input")); return true; }})()"#
        )
    };
    browser.eval(&typed("0abc"));
    wait_for(&mut browser, &shown("01"), "0042");
    browser.eval(&typed("0FAD"));
    wait_for(
        &mut browser,
        r#"document.getElementById("lookup-note").textContent"#,
        "nothing has been written to 0FAD",
    );
    assert_eq!(
        browser.eval(r#"document.getElementById("lookup").hidden"#),
        true
    );
}
