//! The C client library (clients/c) against the real server: its unit tests,
//! then `wwep-button` as a board would run it — open port, TLS with the test CA,
//! a foreign CA, mutual TLS, and TLS session resumption.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::c_build::build;
use crate::common::*;

/// The MAC of the course's board; its device id is 04FB.
const MAC: &str = "aa:bb:cc:dd:ee:ff";
const THREE_PRESSES: &str = "A04FB050001\nA04FB050000\nA04FB050001\n";

/// What a `wwep-button` run printed, with the whole run described for
/// failure messages.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    text: String,
}

impl Run {
    fn of(cmd: &Command, out: Output) -> Run {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        Run {
            code: out.status.code(),
            stdout: text(&out.stdout),
            stderr: text(&out.stderr),
            text: describe(cmd, &out),
        }
    }
    /// Exit 0 and exactly these reply lines.
    fn replies(&self, expected: &str) {
        assert_eq!(self.code, Some(0), "{}", self.text);
        assert_eq!(self.stdout, expected, "{}", self.text);
    }
    /// Exit 2, no reply, one line on stderr.
    fn fails(&self) {
        assert_eq!(self.code, Some(2), "{}", self.text);
        assert_eq!(self.stdout, "", "{}", self.text);
        assert_eq!(self.stderr.lines().count(), 1, "{}", self.text);
        assert!(self.stderr.starts_with("wwep-button: "), "{}", self.text);
    }
}

/// `wwep-button ARGS HOST PORT MAC` with one line on stdin per press.
fn button(dir: &Path, args: &[&str], host: &str, port: u16, presses: usize) -> Run {
    let mut cmd = Command::new(dir.join("wwep-button"));
    cmd.args(args).arg(host).arg(port.to_string()).arg(MAC);
    let out = run_with_input(&mut cmd, "\n".repeat(presses).as_bytes());
    Run::of(&cmd, out)
}

fn path(pki: &Pki, name: &str) -> String {
    pki.path(name).to_str().unwrap().to_string()
}

/// A board before a TLS server of its own: the built C client, the test PKI,
/// the server with its certificate (requiring client certificates from its
/// CA when `mutual`), the server's TLS port and the CA file for `--ca`.
struct TlsBoard {
    dir: &'static Path,
    pki: Pki,
    server: ServerProcess,
    port: u16,
    ca: String,
}

/// `None` (skipped) when the C client cannot be built here.
fn tls_board(mutual: bool) -> Option<TlsBoard> {
    let dir = build()?;
    let pki = Pki::new(KeyKind::EcP256);
    let ca = path(&pki, "ca.pem");
    let client_ca = if mutual {
        &["--client-ca", &ca][..]
    } else {
        &[]
    };
    let server = ServerProcess::with_pki(&pki, client_ca);
    let Some(tls) = server.tls else {
        panic!("no TLS listener: {}", server.log_text())
    };
    Some(TlsBoard {
        dir,
        pki,
        port: tls.port(),
        server,
        ca,
    })
}

#[test]
fn presses_on_the_open_port_toggle_the_led() {
    let Some(dir) = build() else { return };
    let server = ServerProcess::start(&["--no-tls"]);
    let port = server.plain.expect("the plain listener").port();
    button(dir, &[], "127.0.0.1", port, 3).replies(THREE_PRESSES);
    // The Rust client reads what the board wrote.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
    cmd.args([
        "--server",
        &format!("127.0.0.1:{port}"),
        "read",
        "04FB",
        "05",
    ]);
    let out = run_with_input(&mut cmd, b"");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&cmd, &out));
    assert_eq!(out.stdout, b"A04FB050001\n", "{}", describe(&cmd, &out));
}

#[test]
fn tls_with_the_servers_ca() {
    let Some(b) = tls_board(false) else { return };
    button(b.dir, &["--tls", "--ca", &b.ca], "localhost", b.port, 3).replies(THREE_PRESSES);
}

#[test]
fn tls_with_a_foreign_ca_fails_in_one_line() {
    let Some(b) = tls_board(false) else { return };
    let other = Pki::new(KeyKind::EcP256);
    let foreign = ["--tls", "--ca", &path(&other, "ca.pem")];
    let run = button(b.dir, &foreign, "localhost", b.port, 3);
    run.fails();
    assert!(run.stderr.contains("TLS"), "{}", run.text);
}

#[test]
fn mutual_tls_needs_the_boards_certificate() {
    let Some(b) = tls_board(true) else { return };
    let (cert, key) = (b.pki.path("client.pem"), b.pki.path("client.key"));
    let with_certificate = [&["--tls", "--ca", &b.ca][..], &identity_args(&cert, &key)].concat();
    button(b.dir, &with_certificate, "localhost", b.port, 3).replies(THREE_PRESSES);
    button(b.dir, &["--tls", "--ca", &b.ca], "localhost", b.port, 1).fails();
    b.server.assert_logs_within(
        "handshake failed: certificate required",
        Duration::from_secs(5),
    );
}

#[test]
fn resume_skips_the_full_handshake_after_the_first_press() {
    let Some(b) = tls_board(false) else { return };
    let resume = ["--tls", "--ca", &b.ca, "--resume"];
    button(b.dir, &resume, "localhost", b.port, 3).replies(THREE_PRESSES);
    // Each transaction is recorded once its connection has closed.
    let press = |l: &&str| l.contains(" tls ") && l.contains("\"W04FB05");
    let mut lines: Vec<String> = Vec::new();
    let recorded = eventually(Duration::from_secs(5), || {
        let log = b.server.log_text();
        lines = log.lines().filter(press).map(String::from).collect();
        lines.len() == 3
    });
    assert!(recorded, "three transactions: {}", b.server.log_text());
    // Recorded in the order their closes ended, which need not be the order
    // of the presses. The server is this test's own, so the first press has
    // no session to resume: one full handshake and two resumed ones can only
    // mean that every press after the first resumed.
    let full = lines.iter().filter(|l| l.contains(" full ")).count();
    let resumed = lines.iter().filter(|l| l.contains(" resumed ")).count();
    assert_eq!(
        (full, resumed),
        (1, 2),
        "one full handshake, then resumptions: {lines:#?}"
    );
}

#[test]
fn a_refusal_is_printed_with_its_reason() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    // Only boards with certificates may write: the open port is refused.
    let acl = pki.write("rules.acl", b"allow any-certificate read,write self\n");
    let server = ServerProcess::start(&[
        "--no-tls",
        "--explain-errors",
        "--acl",
        acl.to_str().unwrap(),
    ]);
    let port = server.plain.expect("the plain listener").port();
    let run = button(dir, &[], "127.0.0.1", port, 2);
    assert_eq!(run.code, Some(1), "{}", run.text);
    assert_eq!(run.stdout, "X forbidden\nX forbidden\n", "{}", run.text);
}

#[test]
fn an_a_for_another_register_is_no_acknowledgement() {
    let Some(dir) = build() else { return };
    // A server that acknowledges every message with register 22 of device
    // 1111, whatever was written.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut request = [0u8; 11];
        std::io::Read::read_exact(&mut s, &mut request).unwrap();
        std::io::Write::write_all(&mut s, b"A1111229999").unwrap();
        request
    });
    let run = button(dir, &[], "127.0.0.1", port, 3);
    run.fails();
    assert!(
        run.stderr
            .contains("acknowledged A1111229999, not the write that was sent (W04FB050001)"),
        "{}",
        run.text
    );
    // The first press was sent as a board sends it, and the run stopped there.
    assert_eq!(&server.join().unwrap(), b"W04FB050001");
}
