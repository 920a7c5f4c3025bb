//! The C board server (clients/c, `wwep-board-server`: course exercises 4, 5
//! and 7) as people and boards use it: both ports at once over one store, the
//! spec's examples, every framing rule of docs/server.md, bad input, `nc`,
//! `openssl s_client`, the Rust `wwep` client, client certificates, a full
//! store, its console lines, its stop and its exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::c_build::build;
use crate::common::*;
use openssl::hash::MessageDigest;

/// A `wwep-board-server` on 127.0.0.1 and ephemeral ports, killed on drop.
struct BoardServer {
    child: Child,
    plain: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    /// Transaction lines (stdout) and the rest (stderr), as they come.
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Collects a pipe's lines into `into`, passing each on to `tx` too.
fn collect_lines(
    pipe: impl Read + Send + 'static,
    into: &Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::Sender<String>>,
) {
    let into = Arc::clone(into);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            into.lock().unwrap().push(line);
        }
    });
}

impl BoardServer {
    /// Starts the server with [`LOOPBACK_EPHEMERAL`] and `args`, and waits for
    /// the listeners it announces.
    fn start(dir: &Path, args: &[&str]) -> BoardServer {
        let mut cmd = Command::new(dir.join("wwep-board-server"));
        cmd.args(LOOPBACK_EPHEMERAL).args(args);
        Self::spawn(cmd, args)
    }

    /// Starts `cmd` (the server, however it is wrapped) given `args`.
    fn spawn(mut cmd: Command, args: &[&str]) -> BoardServer {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wwep-board-server");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let (tx, rx) = mpsc::channel();
        collect_lines(child.stdout.take().expect("stdout"), &stdout, None);
        collect_lines(child.stderr.take().expect("stderr"), &stderr, Some(tx));
        let mut server = BoardServer {
            child,
            plain: None,
            tls: None,
            stdout,
            stderr,
        };
        let wants_plain = !args.contains(&"--no-plain");
        let wants_tls = !args.contains(&"--no-tls");
        let until = Instant::now() + Duration::from_secs(20);
        while (wants_plain && server.plain.is_none()) || (wants_tls && server.tls.is_none()) {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!(
                    "wwep-board-server did not report its listeners: {:?}",
                    server.stderr.lock().unwrap()
                );
            };
            // The shape of wwep-server's start lines: "... plain listener on ADDR".
            let addr = line.rsplit(' ').next().and_then(|a| a.parse().ok());
            if line.contains("plain listener on") {
                server.plain = addr;
            } else if line.contains("tls listener on") {
                server.tls = addr;
            }
        }
        server
    }

    fn plain(&self) -> SocketAddr {
        self.plain.expect("the plain listener")
    }

    fn tls(&self) -> SocketAddr {
        self.tls.expect("the TLS listener")
    }

    fn console(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn log_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        eventually(limit, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for BoardServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path(pki: &Pki, name: &str) -> String {
    pki.path(name)
        .to_str()
        .expect("a temporary path is UTF-8")
        .to_string()
}

/// A server on both ports with the test PKI's server certificate, and `extra`.
fn both_ports(dir: &Path, pki: &Pki, extra: &[&str]) -> BoardServer {
    let (cert, key) = (path(pki, "server.pem"), path(pki, "server.key"));
    let mut args = vec!["--cert", cert.as_str(), "--key", key.as_str()];
    args.extend_from_slice(extra);
    BoardServer::start(dir, &args)
}

/// One TLS transaction that verifies the server against the test CA:
/// `chunks` written one after another, then everything read until the close.
fn tls_transact_chunks(
    pki: &Pki,
    identity: Option<native_tls::Identity>,
    addr: SocketAddr,
    chunks: &[&[u8]],
) -> Result<Vec<u8>, String> {
    let ca = native_tls::Certificate::from_pem(&pki.ca.cert.to_pem().unwrap()).unwrap();
    let mut builder = native_tls::TlsConnector::builder();
    builder
        .add_root_certificate(ca)
        .disable_built_in_roots(true)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if let Some(identity) = identity {
        builder.identity(identity);
    }
    let connector = builder.build().map_err(|e| e.to_string())?;
    let mut stream = connector
        .connect("localhost", connect(addr))
        .map_err(|e| format!("handshake: {e}"))?;
    for chunk in chunks {
        stream.write_all(chunk).map_err(|e| format!("write: {e}"))?;
        stream.flush().map_err(|e| format!("flush: {e}"))?;
        if chunks.len() > 1 {
            // A pause inside the message (shorter than the gap) so the parts
            // travel as separate records: the stimulus, not a synchronization.
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => return Err(format!("read: {e}")),
            // The reply is in; a reset after it is not this test's concern.
            Err(_) => return Ok(out),
        }
    }
}

fn tls_transact(pki: &Pki, addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    tls_transact_chunks(pki, None, addr, &[request]).unwrap_or_else(|e| {
        panic!(
            "TLS transaction {:?}: {e}",
            String::from_utf8_lossy(request)
        )
    })
}

/// Plain: `chunks` written with a pause between them, then read to the close.
fn plain_chunks(addr: SocketAddr, chunks: &[&[u8]]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.set_nodelay(true).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            // A pause shorter than the gap, so the parts arrive as separate
            // segments: the stimulus, not a synchronization.
            std::thread::sleep(Duration::from_millis(30));
        }
        stream.write_all(chunk).unwrap();
    }
    read_to_close(&mut stream)
}

/// Plain: `first`, a pause of `pause_ms` (the stimulus), `second`, then read
/// to the close.
fn plain_paused(addr: SocketAddr, first: &[u8], pause_ms: u64, second: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.set_nodelay(true).unwrap();
    stream.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(pause_ms));
    stream.write_all(second).unwrap();
    read_to_close(&mut stream)
}

#[test]
fn the_spec_examples_on_both_ports_over_one_store() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let server = both_ports(dir, &pki, &[]);
    let (plain, tls) = (server.plain(), server.tls());
    assert_eq!(transact(&mut connect(plain), b"R0FAC0B\n"), b"X\n");
    assert_eq!(
        transact(&mut connect(plain), b"W0FAC0B1234\n"),
        b"A0FAC0B1234\n"
    );
    // Written on the open port, read on the secure one: one store.
    assert_eq!(tls_transact(&pki, tls, b"R0FAC0B\n"), b"A0FAC0B1234\n");
    assert_eq!(tls_transact(&pki, tls, b"W0FAC0B5678"), b"A0FAC0B5678");
    assert_eq!(transact(&mut connect(plain), b"R0FAC0B"), b"A0FAC0B5678");
    // Register 05 of two devices: two registers.
    assert_eq!(
        transact(&mut connect(plain), b"W1234050001\n"),
        b"A1234050001\n"
    );
    assert_eq!(tls_transact(&pki, tls, b"WABCD050002\n"), b"AABCD050002\n");
    assert_eq!(
        transact(&mut connect(plain), b"R123405\n"),
        b"A1234050001\n"
    );
    assert_eq!(tls_transact(&pki, tls, b"RABCD05\n"), b"AABCD050002\n");
    // The whole device space is addressable.
    assert_eq!(
        transact(&mut connect(plain), b"WFFFFFFFFFF\n"),
        b"AFFFFFFFFFF\n"
    );
    assert_eq!(
        transact(&mut connect(plain), b"W0000000000\n"),
        b"A0000000000\n"
    );
    assert_eq!(tls_transact(&pki, tls, b"RFFFFFF\n"), b"AFFFFFFFFFF\n");
}

#[test]
fn a_device_client_gets_its_answer_without_a_terminator_or_a_close() {
    let Some(dir) = build() else { return };
    let server = BoardServer::start(dir, &["--no-tls"]);
    let addr = server.plain();
    for (request, reply) in [
        (&b"W0FAC0B1234"[..], &b"A0FAC0B1234"[..]),
        (b"R0FAC0B", b"A0FAC0B1234"),
    ] {
        let mut stream = connect(addr);
        stream.write_all(request).unwrap();
        // The course's board reads 11 bytes within 500 ms, its side still open.
        let got = read_exact_within(&mut stream, 11, Duration::from_millis(500));
        assert_eq!(got, reply);
    }
}

#[test]
fn every_framing_rule_on_the_open_port() {
    let Some(dir) = build() else { return };
    // No case here waits for the gap; a long one keeps a loaded machine's
    // stretched pauses between parts from ending a message early.
    let server = BoardServer::start(dir, &["--no-tls", "--gap-ms", "2000"]);
    let addr = server.plain();
    assert_eq!(plain_chunks(addr, &[b"W0FAC0B1234"]), b"A0FAC0B1234");
    let cases: &[(&[&[u8]], &[u8])] = &[
        // The reply ends as the request did.
        (&[b"R0FAC0B\n"], b"A0FAC0B1234\n"),
        (&[b"R0FAC0B\r\n"], b"A0FAC0B1234\r\n"),
        (&[b"R0FAC0B"], b"A0FAC0B1234"),
        // A message split over segments is joined.
        (&[b"W0F", b"AC0B", b"4321"], b"A0FAC0B4321"),
        (&[b"R0FAC0B\r", b"\n"], b"A0FAC0B4321\r\n"),
        // Judged on every byte received: one too many in one piece is X.
        (&[b"W0FAC0B12345"], b"X"),
        (&[b"W0FAC0B12345\n"], b"X\n"),
        // Bytes after the terminator are ignored.
        (&[b"R0FAC0B\r\ngarbage"], b"A0FAC0B4321\r\n"),
        (&[b"R0FAC0B\nR0FAC0B\n"], b"A0FAC0B4321\n"),
        // A line end before the length a command needs ends a short message.
        (&[b"W01234\n"], b"X\n"),
        (&[b"\n"], b"X\n"),
        (&[b"\r\n"], b"X\r\n"),
    ];
    for (chunks, reply) in cases {
        assert_eq!(
            plain_chunks(addr, chunks),
            *reply,
            "request {:?}",
            chunks
                .iter()
                .map(|c| String::from_utf8_lossy(c))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn an_unfinished_message_is_judged_after_the_gap_or_at_end_of_file() {
    let Some(dir) = build() else { return };
    let server = BoardServer::start(dir, &["--no-tls"]);
    let addr = server.plain();
    // No terminator, side left open: X once 100 ms pass without a byte.
    let mut stream = connect(addr);
    let began = Instant::now();
    stream.write_all(b"W01234").unwrap();
    assert_eq!(read_to_close(&mut stream), b"X");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(2000),
        "judged after {took:?}"
    );
    // Half-closed: judged at once, whatever is there.
    for (request, reply) in [
        (&b"W01234"[..], &b"X"[..]),
        (b"W0FAC0B1234", b"A0FAC0B1234"),
        // A terminator cut short by the end of file is dropped.
        (b"R0FAC0B\r", b"A0FAC0B1234"),
    ] {
        let mut stream = connect(addr);
        let began = Instant::now();
        stream.write_all(request).unwrap();
        half_close(&stream);
        assert_eq!(read_to_close(&mut stream), reply);
        assert!(began.elapsed() < Duration::from_secs(2));
    }
    // Connected, then closed without a byte: nobody to answer, no console line.
    let stream = connect(addr);
    half_close(&stream);
    let mut stream = stream;
    assert_eq!(read_to_close(&mut stream), b"");
    let transactions = 4;
    assert!(
        eventually(Duration::from_secs(5), || server.console().len()
            == transactions),
        "{:?}",
        server.console()
    );
}

#[test]
fn gap_ms_sets_how_long_a_pause_may_be() {
    let Some(dir) = build() else { return };
    let server = BoardServer::start(dir, &["--no-tls", "--gap-ms", "400"]);
    let addr = server.plain();
    // A 150 ms pause is now inside one message.
    assert_eq!(plain_paused(addr, b"W0FAC0B", 150, b"1234"), b"A0FAC0B1234");
    let mut stream = connect(addr);
    let began = Instant::now();
    stream.write_all(b"W01234").unwrap();
    assert_eq!(read_to_close(&mut stream), b"X");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_millis(3000),
        "judged after {took:?}"
    );
}

#[test]
fn bad_input_gets_x_and_hex_may_be_lowercase() {
    let Some(dir) = build() else { return };
    let server = BoardServer::start(dir, &["--no-tls"]);
    let addr = server.plain();
    let cases: &[(&[u8], &[u8])] = &[
        (b"W0fac0babcd\n", b"A0FAC0BABCD\n"),
        (b"R0fAc0B\n", b"A0FAC0BABCD\n"),
        // Commands are uppercase R and W only.
        (b"w0fac0b1234\n", b"X\n"),
        (b"r0fac0b\n", b"X\n"),
        (b"A0FAC0B1234\n", b"X\n"),
        (b"hello\n", b"X\n"),
        (b"W0FAC0BG234\n", b"X\n"),
        (b"R0FAC0\n", b"X\n"),
        (b"R0FAC0B1\n", b"X\n"),
        (b"W 0FAC0B1234\n", b"X\n"),
        // A TLS ClientHello on the open port: judged after the gap.
        (b"\x16\x03\x01\x00\x05", b"X"),
    ];
    for (request, reply) in cases {
        assert_eq!(
            transact(&mut connect(addr), request),
            *reply,
            "request {:?}",
            String::from_utf8_lossy(request)
        );
    }
    // More than a message can hold, with no line end: judged at 64 bytes.
    assert_eq!(transact(&mut connect(addr), &[b'Z'; 100]), b"X");
}

#[test]
fn a_silent_client_gets_x_after_its_time_and_holds_only_its_own_slot() {
    let Some(dir) = build() else { return };
    let server = BoardServer::start(dir, &["--no-tls", "--timeout-ms", "1000"]);
    let addr = server.plain();
    let began = Instant::now();
    let mut silent = connect(addr);
    // Another client beside it is served at once.
    let mut talker = connect(addr);
    talker.write_all(b"W0001020003").unwrap();
    let got = read_exact_within(&mut talker, 11, Duration::from_millis(500));
    assert_eq!(got, b"A0001020003");
    assert!(began.elapsed() < Duration::from_millis(900));
    // The silent one gets a bare X when its second is up.
    assert_eq!(read_to_close(&mut silent), b"X");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(3000),
        "X after {took:?}"
    );
}

/// `make -C clients/c SLOTS=1` into target/c-client-1slot: the course's
/// one-connection-at-a-time server (exercise 4).
fn one_slot_build() -> Option<std::path::PathBuf> {
    // The main build first: it checks the tools and records a skip.
    let main = build()?;
    let target = main.with_file_name("c-client-1slot");
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/c");
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&sources)
        .arg(format!("BUILD={}", target.display()))
        .arg("SLOTS=1")
        .arg(target.join("wwep-board-server"));
    let out = run_with_input(&mut make, b"");
    assert!(out.status.success(), "{}", describe(&make, &out));
    Some(target)
}

#[test]
fn with_one_slot_it_serves_one_connection_at_a_time() {
    let Some(dir) = one_slot_build() else { return };
    let server = BoardServer::start(&dir, &["--no-tls", "--timeout-ms", "1000"]);
    let addr = server.plain();
    let began = Instant::now();
    let mut silent = connect(addr);
    // The second waits in the backlog until the first has had its time.
    let mut next = connect(addr);
    next.write_all(b"W0001010001").unwrap();
    let got = read_exact_within(&mut next, 11, Duration::from_secs(5));
    assert_eq!(got, b"A0001010001");
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "served after {waited:?} beside a silent client"
    );
    assert_eq!(read_to_close(&mut silent), b"X");
}

#[test]
fn a_tls_client_silent_in_its_handshake_is_closed_at_its_time() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let server = both_ports(dir, &pki, &["--no-plain", "--timeout-ms", "1000"]);
    let began = Instant::now();
    // Connected, no ClientHello: no reply can be encrypted, so it is closed.
    let mut silent = connect(server.tls());
    assert_eq!(read_to_close(&mut silent), b"");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_text()
            .contains("closed without a reply: SSL - The operation timed out")),
        "{}",
        server.log_text()
    );
}

#[test]
fn tls_follows_the_same_framing_rules() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    // A long gap, as above: the split below must not depend on timing.
    let server = both_ports(dir, &pki, &["--no-plain", "--gap-ms", "2000"]);
    let tls = server.tls();
    assert_eq!(tls_transact(&pki, tls, b"W0FAC0B1234"), b"A0FAC0B1234");
    let split = tls_transact_chunks(&pki, None, tls, &[b"R0FA", b"C0B\r\n"]);
    assert_eq!(split.as_deref(), Ok(&b"A0FAC0B1234\r\n"[..]));
    assert_eq!(tls_transact(&pki, tls, b"W0FAC0B12345"), b"X");
    assert_eq!(tls_transact(&pki, tls, b"r0fac0b\n"), b"X\n");
    // A board over TLS: 11 bytes, no terminator, no close.
    let ca = native_tls::Certificate::from_pem(&pki.ca.cert.to_pem().unwrap()).unwrap();
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(ca)
        .disable_built_in_roots(true)
        .build()
        .unwrap();
    let mut stream = connector.connect("localhost", connect(tls)).unwrap();
    stream.write_all(b"R0FAC0B").unwrap();
    stream
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = [0u8; 11];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"A0FAC0B1234");
}

#[test]
fn netcat_on_the_open_port() {
    let Some(dir) = build() else { return };
    if !have_tool("nc") {
        return;
    }
    let server = BoardServer::start(dir, &["--no-tls"]);
    let port = server.plain().port().to_string();
    let nc = |input: &[u8]| {
        let mut cmd = Command::new("nc");
        cmd.args(["-w", "5", "127.0.0.1", &port]);
        let out = run_with_input(&mut cmd, input);
        assert!(out.status.success(), "{}", describe(&cmd, &out));
        out.stdout
    };
    assert_eq!(nc(b"R0FAC0B\n"), b"X\n");
    assert_eq!(nc(b"W0FAC0B1234\n"), b"A0FAC0B1234\n");
    assert_eq!(nc(b"R0FAC0B\n"), b"A0FAC0B1234\n");
    assert_eq!(nc(b"R0FAC0B"), b"A0FAC0B1234");
    assert_eq!(nc(b"W01234"), b"X");
    assert_eq!(nc(b"hello\n"), b"X\n");
}

/// `openssl s_client` against the server's TLS port, verifying `ca`.
fn s_client(addr: SocketAddr, ca: &str, flags: &[&str], input: &[u8]) -> (String, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost", "-verify_return_error"])
        .args(["-CAfile", ca])
        .args(flags);
    let out = run_with_input(&mut cmd, input);
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        describe(&cmd, &out),
    )
}

#[test]
fn openssl_s_client_verifies_the_ca_and_resumes_with_a_ticket() {
    let Some(dir) = build() else { return };
    if !have_tool("openssl") {
        return;
    }
    let pki = Pki::new(KeyKind::Rsa2048);
    let server = both_ports(dir, &pki, &[]);
    let (tls, ca) = (server.tls(), path(&pki, "ca.pem"));
    let (out, text) = s_client(tls, &ca, &["-quiet"], b"W0FAC0B1234\n");
    assert_eq!(out, "A0FAC0B1234\n", "{text}");
    let (out, text) = s_client(tls, &ca, &["-quiet", "-crlf"], b"R0FAC0B\n");
    assert_eq!(out, "A0FAC0B1234\r\n", "{text}");
    // Verification really happens: a CA that did not sign the server fails.
    let stranger = Pki::new(KeyKind::EcP256);
    let (out, text) = s_client(tls, &path(&stranger, "ca.pem"), &["-quiet"], b"R0FAC0B\n");
    assert!(!out.contains("A0FAC0B"), "{text}");
    // TLS 1.2 only, as the boards speak it.
    let (out, text) = s_client(tls, &ca, &["-quiet", "-tls1_3"], b"R0FAC0B\n");
    assert!(!out.contains("A0FAC0B"), "{text}");
    // A ticket from the first connection resumes the session on the second.
    let session = path(&pki, "session");
    let (out, text) = s_client(tls, &ca, &["-ign_eof", "-sess_out", &session], b"R0FAC0B\n");
    assert!(
        out.contains("New, TLSv1.2") && out.contains("A0FAC0B1234"),
        "{text}"
    );
    let (out, text) = s_client(tls, &ca, &["-ign_eof", "-sess_in", &session], b"R0FAC0B\n");
    assert!(
        out.contains("Reused, TLSv1.2") && out.contains("A0FAC0B1234"),
        "{text}"
    );
}

#[test]
fn keys_and_certificates_load_in_every_form_the_course_used() {
    let Some(dir) = build() else { return };
    let rsa = Pki::new(KeyKind::Rsa2048);
    let ec = Pki::new(KeyKind::EcP256);
    // Signed by the test CA, so the client verifies them.
    let forms: Vec<(&str, &Pki, Vec<u8>, Vec<u8>)> = vec![
        (
            "PKCS#1 PEM",
            &rsa,
            rsa.server.cert.to_pem().unwrap(),
            rsa.server.key.rsa().unwrap().private_key_to_pem().unwrap(),
        ),
        (
            "PKCS#8 DER, certificate DER",
            &rsa,
            rsa.server.cert.to_der().unwrap(),
            rsa.server.key.private_key_to_pkcs8().unwrap(),
        ),
        (
            "SEC1 PEM",
            &ec,
            ec.server.cert.to_pem().unwrap(),
            ec.server
                .key
                .ec_key()
                .unwrap()
                .private_key_to_pem()
                .unwrap(),
        ),
        (
            "SEC1 DER",
            &ec,
            ec.server.cert.to_pem().unwrap(),
            ec.server
                .key
                .ec_key()
                .unwrap()
                .private_key_to_der()
                .unwrap(),
        ),
    ];
    for (i, (form, pki, cert, key)) in forms.into_iter().enumerate() {
        let cert = pki.write(&format!("form{i}.cert"), &cert);
        let key = pki.write(&format!("form{i}.key"), &key);
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let server = BoardServer::start(dir, &["--no-plain", "--cert", cert, "--key", key]);
        assert_eq!(
            tls_transact_chunks(pki, None, server.tls(), &[b"W0001020003"]).as_deref(),
            Ok(&b"A0001020003"[..]),
            "{form}: {}",
            server.log_text()
        );
    }
    // Course material: an expired SHA-1 self-signed certificate with a
    // traditional RSA key, and an RSA-1024 one. Served as they are; a client
    // that knows they are old skips verification, as course boards did.
    let expired = issue(
        &CertSpec {
            kind: KeyKind::Rsa2048,
            digest: MessageDigest::sha1(),
            not_before: -3 * 365 * 86400,
            not_after: -2 * 365 * 86400,
            ..CertSpec::server("old course server")
        },
        None,
    );
    let short = issue(
        &CertSpec {
            kind: KeyKind::Rsa1024,
            digest: MessageDigest::sha1(),
            ..CertSpec::server("rsa1024 board server")
        },
        None,
    );
    let connector = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for (name, old) in [("expired", &expired), ("short", &short)] {
        let cert = rsa.write(&format!("{name}.pem"), &old.cert.to_pem().unwrap());
        let key = rsa.write(
            &format!("{name}.key"),
            &old.key.rsa().unwrap().private_key_to_pem().unwrap(),
        );
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let server = BoardServer::start(dir, &["--no-plain", "--cert", cert, "--key", key]);
        let mut tls = connector
            .connect("localhost", connect(server.tls()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(transact(&mut tls, b"W0001020003"), b"A0001020003", "{name}");
    }
}

#[test]
fn the_rust_client_on_both_ports() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let server = both_ports(dir, &pki, &[]);
    let ca = path(&pki, "ca.pem");
    let wwep = |port: SocketAddr, tls: bool, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
        cmd.args(["--server", &port.to_string()]);
        if tls {
            cmd.args(["--tls", "--ca", &ca]);
        }
        cmd.args(args);
        let out = run_with_input(&mut cmd, b"");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            describe(&cmd, &out),
        )
    };
    let (code, out, text) = wwep(server.plain(), false, &["write", "04FB", "05", "0001"]);
    assert_eq!((code, out.as_str()), (Some(0), "A04FB050001\n"), "{text}");
    let (code, out, text) = wwep(server.tls(), true, &["read", "04FB", "05"]);
    assert_eq!((code, out.as_str()), (Some(0), "A04FB050001\n"), "{text}");
    // The course's button press: the LED was on, so it goes off.
    let (code, out, text) = wwep(server.tls(), true, &["toggle", "04FB"]);
    assert_eq!((code, out.as_str()), (Some(0), "off\n"), "{text}");
    let (code, out, text) = wwep(server.plain(), false, &["read", "04FB", "05"]);
    assert_eq!((code, out.as_str()), (Some(0), "A04FB050000\n"), "{text}");
    let (code, out, text) = wwep(server.plain(), false, &["read", "04FB", "06"]);
    assert_eq!((code, out.as_str()), (Some(1), "X\n"), "{text}");
}

#[test]
fn the_c_button_presses_against_the_c_board_server() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let ca = path(&pki, "ca.pem");
    let (cert, key) = (path(&pki, "client.pem"), path(&pki, "client.key"));
    let server = both_ports(dir, &pki, &["--client-ca", &ca]);
    // One board, the button's MAC aa:bb:cc:dd:ee:ff (device 04FB): three
    // presses on the open port, then three over TLS with its certificate,
    // resuming the session after the first.
    let press = |args: &[&str], port: u16| {
        let mut cmd = Command::new(dir.join("wwep-button"));
        cmd.args(args)
            .args(["localhost", &port.to_string(), "aa:bb:cc:dd:ee:ff"]);
        let out = run_with_input(&mut cmd, b"\n\n\n");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            describe(&cmd, &out),
        )
    };
    let three = "A04FB050001\nA04FB050000\nA04FB050001\n";
    let (code, out, text) = press(&[], server.plain().port());
    assert_eq!((code, out.as_str()), (Some(0), three), "{text}");
    let tls_args = [
        "--tls", "--ca", &ca, "--cert", &cert, "--key", &key, "--resume",
    ];
    let (code, out, text) = press(&tls_args, server.tls().port());
    assert_eq!((code, out.as_str()), (Some(0), three), "{text}");
    assert_eq!(
        transact(&mut connect(server.plain()), b"R04FB05\n"),
        b"A04FB050001\n"
    );
}

#[test]
fn the_library_halves_over_tls_with_everything_from_buffers() {
    let Some(dir) = build() else { return };
    // clients/c/test_wwep_tls_server.c: the server given its certificate, key
    // and client CA with the _buffer calls; a forked board with and without
    // its certificate, through wwep_transact over the client's TLS.
    let pki = Pki::new(KeyKind::EcP256);
    let mut cmd = Command::new(dir.join("test_wwep_tls_server"));
    for name in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        cmd.arg(pki.path(name));
    }
    let out = run_with_input(&mut cmd, b"");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&cmd, &out));
}

#[test]
fn client_certificates_are_required_with_client_ca() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let stranger = Pki::new(KeyKind::EcP256);
    // A CA file as people keep them: several certificates, text between them.
    let mut bundle = b"Another CA, not the clients':\n".to_vec();
    bundle.extend(stranger.ca.cert.to_pem().unwrap());
    bundle.extend(b"\nThe CA that signed the boards:\n");
    bundle.extend(pki.ca.cert.to_pem().unwrap());
    let ca = pki.write("client-cas.pem", &bundle);
    let server = both_ports(dir, &pki, &["--client-ca", ca.to_str().unwrap()]);
    let identity = || {
        native_tls::Identity::from_pkcs8(
            &pki.client.cert.to_pem().unwrap(),
            &pki.client.key.private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap()
    };
    let with = tls_transact_chunks(&pki, Some(identity()), server.tls(), &[b"W04FB050001\n"]);
    assert_eq!(with.as_deref(), Ok(&b"A04FB050001\n"[..]));
    let without = tls_transact_chunks(&pki, None, server.tls(), &[b"R04FB05\n"]);
    assert!(
        !matches!(&without, Ok(reply) if !reply.is_empty()),
        "served without a certificate: {without:?}"
    );
    // A client certificate from a CA that is not in the file is refused too.
    let outsider = Pki::new(KeyKind::EcP256);
    let foreign = native_tls::Identity::from_pkcs8(
        &outsider.client.cert.to_pem().unwrap(),
        &outsider.client.key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
    let refused = tls_transact_chunks(&pki, Some(foreign), server.tls(), &[b"R04FB05\n"]);
    assert!(
        !matches!(&refused, Ok(reply) if !reply.is_empty()),
        "served a foreign certificate: {refused:?}"
    );
    // Each refusal is one line on stderr saying why.
    let said = |why: &str| {
        eventually(Duration::from_secs(5), || {
            server
                .log_text()
                .lines()
                .any(|l| l.contains("closed without a reply") && l.contains(why))
        })
    };
    assert!(
        said("No client certification received"),
        "{}",
        server.log_text()
    );
    assert!(
        said("not correctly signed by the trusted CA"),
        "{}",
        server.log_text()
    );
    // The open port asks for nothing.
    assert_eq!(
        transact(&mut connect(server.plain()), b"R04FB05\n"),
        b"A04FB050001\n"
    );
}

#[test]
fn a_full_store_refuses_new_registers_but_not_overwrites() {
    let Some(dir) = build() else { return };
    let server = BoardServer::start(dir, &["--no-tls", "--capacity", "3"]);
    let addr = server.plain();
    for (request, reply) in [
        (&b"W000001AAAA\n"[..], &b"A000001AAAA\n"[..]),
        (b"W000002BBBB\n", b"A000002BBBB\n"),
        (b"W000003CCCC\n", b"A000003CCCC\n"),
        (b"W000004DDDD\n", b"X\n"),
        (b"W0000010001\n", b"A0000010001\n"),
        (b"R000001\n", b"A0000010001\n"),
        (b"R000004\n", b"X\n"),
    ] {
        assert_eq!(
            transact(&mut connect(addr), request),
            reply,
            "request {:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[test]
fn one_console_line_per_transaction() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let server = both_ports(dir, &pki, &[]);
    let mut stream = connect(server.plain());
    let local = stream.local_addr().unwrap();
    assert_eq!(transact(&mut stream, b"W0FAC0B1234\n"), b"A0FAC0B1234\n");
    assert_eq!(tls_transact(&pki, server.tls(), b"R0FAC0B"), b"A0FAC0B1234");
    assert!(
        eventually(Duration::from_secs(5), || server.console().len() == 2),
        "{:?}",
        server.console()
    );
    let lines = server.console();
    assert_eq!(
        lines[0],
        format!("#1 plain {local} \"W0FAC0B1234\\n\" -> \"A0FAC0B1234\\n\"")
    );
    assert!(
        lines[1].starts_with("#2 tls 127.0.0.1:")
            && lines[1].ends_with(" \"R0FAC0B\" -> \"A0FAC0B1234\""),
        "{lines:?}"
    );
}

#[test]
fn sigterm_and_sigint_stop_it_cleanly() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    for signal in ["TERM", "INT"] {
        let mut server = both_ports(dir, &pki, &[]);
        // A connection still silent at the stop gets its X.
        let mut silent = connect(server.plain());
        assert_eq!(
            transact(&mut connect(server.plain()), b"W0001010001"),
            b"A0001010001"
        );
        server.signal(signal);
        let status = server.wait_exit(Duration::from_secs(5));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "SIG{signal}: {}",
            server.log_text()
        );
        assert_eq!(read_to_close(&mut silent), b"X");
        // The write and the silent X; the last line may still be on its way.
        assert!(
            eventually(Duration::from_secs(5), || server
                .log_text()
                .contains("stopped after 2 transactions")),
            "{}",
            server.log_text()
        );
    }
}

/// CPU time the process has used (user + system), from /proc; None where
/// there is no /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th of them, in clock ticks (100 a second on
    // Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[test]
fn out_of_descriptors_it_waits_without_spinning_and_recovers() {
    let Some(dir) = build() else { return };
    // Room for stdio, the listener and three connections: the fourth client
    // cannot be accepted until a silent one is answered.
    let program = dir.join("wwep-board-server");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 7 && exec \"$0\" \"$@\"")
        .arg(&program)
        .args(LOOPBACK_EPHEMERAL)
        .args(["--no-tls", "--timeout-ms", "1500"]);
    let server = BoardServer::spawn(cmd, &["--no-tls"]);
    let addr = server.plain();
    let silent: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    let before = cpu_time(server.child.id());
    let began = Instant::now();
    let mut late = connect(addr);
    late.write_all(b"W0001010001").unwrap();
    let got = read_exact_within(&mut late, 11, Duration::from_secs(5));
    assert_eq!(got, b"A0001010001", "{}", server.log_text());
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "served after {waited:?}"
    );
    // Waiting costs a wake-up every few milliseconds; a loop retrying the
    // accept would use a whole core, or what a busy machine leaves of one.
    if let (Some(before), Some(after)) = (before, cpu_time(server.child.id())) {
        let used = after.saturating_sub(before);
        assert!(
            used < waited / 10,
            "{used:?} of CPU in {waited:?} while the backlog could not be taken"
        );
    }
    drop(silent);
}

/// Runs wwep-board-server with `args` that stop it before it serves.
fn refused(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(dir.join("wwep-board-server"));
    cmd.args(LOOPBACK_EPHEMERAL).args(args);
    let out = run_with_input(&mut cmd, b"");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        describe(&cmd, &out),
    )
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let Some(dir) = build() else { return };
    for (args, flag) in [
        (&["--bogus"][..], "--bogus"),
        (&["--no-tls", "--capacity", "0"], "--capacity"),
        (&["--no-tls", "--capacity", "many"], "--capacity"),
        (&["--no-tls", "--timeout-ms"], "--timeout-ms"),
        (&["--no-tls", "--plain-port", "65536"], "--plain-port"),
        (&["--no-tls", "--no-plain"], "--no-plain"),
        (&["--no-tls", "--bind", "localhost"], "--bind"),
        (&["--key", "k.pem"], "--cert"),
    ] {
        let (code, stderr, text) = refused(dir, args);
        assert_eq!(code, Some(2), "{text}");
        assert_eq!(stderr.lines().count(), 1, "{text}");
        assert!(
            stderr.starts_with("wwep-board-server: ") && stderr.contains(flag),
            "{text}"
        );
    }
}

#[test]
fn help_names_every_flag() {
    let Some(dir) = build() else { return };
    let mut cmd = Command::new(dir.join("wwep-board-server"));
    cmd.arg("--help");
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let usage = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--bind",
        "--plain-port",
        "--tls-port",
        "--cert",
        "--key",
        "--client-ca",
        "--no-tls",
        "--no-plain",
        "--capacity",
        "--timeout-ms",
        "--gap-ms",
    ] {
        assert!(usage.contains(flag), "{flag}: {text}");
    }
}

#[test]
fn unusable_files_exit_1_naming_the_file() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let (cert, key) = (path(&pki, "server.pem"), path(&pki, "server.key"));
    let missing = path(&pki, "missing.pem");
    let junk = pki.write("junk.pem", b"not a certificate\n");
    let junk = junk.to_str().unwrap();
    for (args, file) in [
        (vec!["--cert", &missing, "--key", &key], missing.as_str()),
        (vec!["--cert", &cert, "--key", junk], junk),
        (vec!["--cert", junk, "--key", &key], junk),
        (
            vec!["--cert", &cert, "--key", &key, "--client-ca", &missing],
            missing.as_str(),
        ),
    ] {
        let (code, stderr, text) = refused(dir, &args);
        assert_eq!(code, Some(1), "{text}");
        assert_eq!(stderr.lines().count(), 1, "{text}");
        assert!(stderr.contains(file), "{text}");
    }
}

#[test]
fn a_port_in_use_exits_1() {
    let Some(dir) = build() else { return };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut cmd = Command::new(dir.join("wwep-board-server"));
    cmd.args(["--bind", "127.0.0.1", "--no-tls", "--plain-port", &port]);
    let out = run_with_input(&mut cmd, b"");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&cmd, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&port) && stderr.contains("in use"),
        "{}",
        describe(&cmd, &out)
    );
    drop(taken);
}
