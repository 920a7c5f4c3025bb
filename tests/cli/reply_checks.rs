//! The client judges what comes back: an `A` for another register or value
//! than the request's is an error (exit 2, one line saying what came back),
//! in every subcommand and in `wwep bench`; and the errors of a wrong port
//! or address say what was probably meant.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::*;

struct Run {
    out: Output,
    text: String,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).to_string()
    }

    /// Exit 2, nothing on stdout, one line on stderr (besides warnings)
    /// holding every one of `needles`, and no panic.
    fn fails_with(&self, needles: &[&str]) -> &Self {
        assert_eq!(self.out.status.code(), Some(2), "{}", self.text);
        assert_eq!(self.stdout(), "", "no output on an error: {}", self.text);
        let err = String::from_utf8_lossy(&self.out.stderr);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("wwep: warning:"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", self.text);
        for needle in needles {
            assert!(lines[0].contains(needle), "{needle:?}: {}", self.text);
        }
        assert!(!err.contains("panicked"), "{}", self.text);
        self
    }
}

fn wwep(args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
    cmd.args(args);
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    Run { out, text }
}

/// A WWEP server of the test's own making: each connection's message (up to
/// 11 bytes, as a device sends it, or a line) gets `answer(message)`; stops
/// when dropped.
pub(crate) struct FakeServer {
    pub(crate) addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub(crate) fn start(answer: fn(&[u8]) -> Vec<u8>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut message = Vec::new();
                let mut buf = [0u8; 64];
                while message.len() < 11 && !message.ends_with(b"\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => message.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&answer(&message));
            }
        });
        FakeServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The red team's server: register 22 of device 1111 acknowledged, whatever
/// was asked.
fn always_another_register(_: &[u8]) -> Vec<u8> {
    b"A1111229999".to_vec()
}

#[test]
fn an_a_for_another_register_is_an_error_in_every_subcommand() {
    let fake = FakeServer::start(always_another_register);
    let srv = fake.addr.as_str();
    let write = "the server acknowledged A1111229999, not the write that was sent (W0FAC0B1234)";
    wwep(&["--server", srv, "write", "0FAC", "0B", "1234"]).fails_with(&[write]);
    wwep(&["--server", srv, "--json", "write", "0FAC", "0B", "1234"]).fails_with(&[write]);
    wwep(&["--server", srv, "send", "W0FAC0B1234\\n"]).fails_with(&[write]);
    wwep(&["--server", srv, "read", "0FAC", "0B"])
        .fails_with(&["the server answered A1111229999, not the read that was sent (R0FAC0B)"]);
    // toggle reads the LED register first: a state from another register is
    // no state.
    wwep(&["--server", srv, "toggle", "0FAC"])
        .fails_with(&["the server answered A1111229999, not the read that was sent (R0FAC05)"]);
    wwep(&["--server", srv, "--json", "toggle", "0FAC"]).fails_with(&["not the read"]);
}

#[test]
fn toggle_never_reports_a_write_acknowledged_for_another_register() {
    // The LED was never written (X, so off); the write is acknowledged for
    // another register.
    let fake = FakeServer::start(|message| match message.first() {
        Some(b'R') => b"X".to_vec(),
        _ => b"A04FB050002".to_vec(),
    });
    let srv = fake.addr.as_str();
    let mismatch = "the server acknowledged A04FB050002, not the write that was sent (W04FB050001)";
    for json in [&[][..], &["--json"]] {
        let args = [&["--server", srv][..], json, &["toggle", "04FB"]].concat();
        wwep(&args).fails_with(&[mismatch]);
    }
}

#[test]
fn bench_counts_a_mismatch_apart_from_completed_transactions() {
    // Device 0000 is answered rightly, device 0001 with another value.
    let fake = FakeServer::start(|message| match message.get(..5) {
        Some(b"W0000") => [b"A", &message[1..11]].concat(),
        _ if message.len() >= 11 => [b"A", &message[1..7], b"FFFF"].concat(),
        _ => b"X".to_vec(),
    });
    let bench = |extra: &[&str]| {
        let args = [
            &["--server", fake.addr.as_str(), "--json", "bench"][..],
            &["-c", "2", "--duration", "0.5", "--warmup", "0", "-q"],
            extra,
        ]
        .concat();
        wwep(&args)
    };
    let number = |run: &Run, key: &str| -> u64 {
        let out = run.stdout();
        out.split_once(&format!("\"{key}\":"))
            .and_then(|(_, rest)| rest.split([',', '}']).next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key}: {}", run.text))
    };
    let run = bench(&["--devices", "2"]);
    assert_eq!(run.out.status.code(), Some(0), "{}", run.text);
    assert!(number(&run, "completed") > 0, "{}", run.text);
    // About half the writes go to device 0001 (a value 0xFFFF written there
    // would be answered rightly; one in 65,536).
    assert!(number(&run, "mismatched") > 0, "{}", run.text);
    assert_eq!(number(&run, "bad_replies"), 0, "{}", run.text);
    assert!(run.stdout().contains("\"errors\":{}"), "{}", run.text);

    // Against the red team's server nothing completes: exit 2, one line why,
    // and the report still says what happened.
    let fake = FakeServer::start(always_another_register);
    let args = [
        "--server",
        fake.addr.as_str(),
        "bench",
        "-c",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "-q",
    ];
    let run = wwep(&args);
    assert_eq!(run.out.status.code(), Some(2), "{}", run.text);
    assert!(
        run.stdout().contains("0 transactions in")
            && run
                .stdout()
                .contains("mismatched replies (an A for another register or value): "),
        "{}",
        run.text
    );
    let err = String::from_utf8_lossy(&run.out.stderr);
    assert_eq!(err.lines().count(), 1, "{}", run.text);
    assert!(err.contains("no transaction completed"), "{}", run.text);
    assert!(err.contains("mismatched"), "{}", run.text);

    // Told to expect the constant (as `make bench` tells it of nginx), the
    // same server completes every transaction; another constant, none.
    for (expected, completes) in [("A1111229999", true), ("A1111229998", false)] {
        let run = wwep(&[&args[..], &["--json", "--expect-reply", expected]].concat());
        let code = if completes { 0 } else { 2 };
        assert_eq!(run.out.status.code(), Some(code), "{}", run.text);
        assert_eq!(number(&run, "completed") > 0, completes, "{}", run.text);
        assert_eq!(number(&run, "mismatched") > 0, !completes, "{}", run.text);
    }
}

#[test]
fn tls_against_the_plain_port_says_it_answered_in_clear_text() {
    let s = TestServer::start();
    let plain = format!("localhost:{}", s.plain().port());
    let ca = s.pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    // Both TLS clients: OpenSSL's, and rustls's that --resume uses.
    for resume in [&[][..], &["--resume"]] {
        let args = [
            &["--server", &plain, "--tls", "--ca", ca][..],
            resume,
            &["write", "1", "2", "3"],
        ]
        .concat();
        wwep(&args).fails_with(&[
            "the server answered in clear text (\"X",
            "is this the plain port? (drop --tls)",
        ]);
    }
    assert_eq!(s.server().store().unwrap().read(1, 2), None);
}

#[test]
fn plain_against_the_tls_port_says_to_try_tls() {
    let s = TestServer::start();
    let tls = format!("127.0.0.1:{}", s.tls().port());
    wwep(&["--server", &tls, "write", "1", "2", "3"]).fails_with(&[
        "the server closed without a WWEP reply, and it answers TLS on this port: try --tls",
    ]);
    wwep(&["--server", &tls, "--json", "read", "1", "2"]).fails_with(&["try --tls"]);
    // A server that closes without a reply and speaks no TLS gets no hint.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap().to_string();
    let closer = std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let _ = s.read(&mut [0u8; 512]);
        }
    });
    let run = wwep(&["--server", &silent, "write", "1", "2", "3"]);
    run.fails_with(&["the server closed the connection without a reply"]);
    assert!(!run.text.contains("--tls"), "{}", run.text);
    closer.join().unwrap();
}

#[test]
fn an_ipv6_address_with_a_port_needs_brackets() {
    let port = "40508";
    let hint = format!("IPv6 addresses need brackets: --server [::1]:{port}");
    let server = format!("::1:{port}");
    // Told before any connection is made, whatever the subcommand.
    for command in [
        &["read", "1", "2"][..],
        &["write", "1", "2", "3"],
        &["send", "R000102"],
        &["toggle", "1"],
        &["bench", "--duration", "0.1", "-q"],
    ] {
        let args = [&["--server", server.as_str()][..], command].concat();
        wwep(&args).fails_with(&[&hint]);
        let args = [&["--server", server.as_str(), "--json"][..], command].concat();
        wwep(&args).fails_with(&[&hint]);
    }
}

#[test]
fn the_http_port_is_named_when_a_wwep_client_meets_it() {
    let s = TestServer::with(|c| {
        c.http = Some(wwep::config::HttpConfig::new(
            "127.0.0.1:0".parse().unwrap(),
        ));
    });
    let http = s.server().http_addr().expect("an HTTP address");
    let http = format!("localhost:{}", http.port());
    // Plain: a message with its line end is a request line the HTTP side
    // answers at once (400), and that answer says which port this is.
    wwep(&["--server", &http, "send", "W0FAC0B1234\\n"])
        .fails_with(&["this is an HTTP port (wwep-server --http), not a WWEP port"]);
    wwep(&["--server", &http, "--json", "send", "R0FAC0B\\n"])
        .fails_with(&["this is an HTTP port"]);
    // TLS: the HTTP side answers the ClientHello in clear text HTTP.
    let ca = s.pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    for resume in [&[][..], &["--resume"]] {
        let args = [
            &["--server", &http, "--tls", "--ca", ca][..],
            resume,
            &["write", "1", "2", "3"],
        ]
        .concat();
        let run = wwep(&args);
        run.fails_with(&[
            "answered in clear text HTTP (\"HTTP/",
            "this is an HTTP port (wwep-server --http), not a WWEP port",
        ]);
        assert!(!run.text.contains("drop --tls"), "{}", run.text);
    }
    assert_eq!(s.server().store().unwrap().read(0x0FAC, 0x0B), None);
}
