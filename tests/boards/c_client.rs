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

struct Run {
    out: Output,
    text: String,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).to_string()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).to_string()
    }
    /// Exit 0 and exactly these reply lines.
    fn replies(&self, expected: &str) {
        assert_eq!(self.out.status.code(), Some(0), "{}", self.text);
        assert_eq!(self.stdout(), expected, "{}", self.text);
    }
    /// Exit 2, no reply, one line on stderr.
    fn fails(&self) {
        assert_eq!(self.out.status.code(), Some(2), "{}", self.text);
        assert_eq!(self.stdout(), "", "{}", self.text);
        assert_eq!(self.stderr().lines().count(), 1, "{}", self.text);
        assert!(self.stderr().starts_with("wwep-button: "), "{}", self.text);
    }
}

/// `wwep-button ARGS HOST PORT MAC` with one line on stdin per press.
fn button(dir: &Path, args: &[&str], host: &str, port: u16, presses: usize) -> Run {
    let mut cmd = Command::new(dir.join("wwep-button"));
    cmd.args(args).arg(host).arg(port.to_string()).arg(MAC);
    let out = run_with_input(&mut cmd, "\n".repeat(presses).as_bytes());
    let text = describe(&cmd, &out);
    Run { out, text }
}

fn path(pki: &Pki, name: &str) -> String {
    pki.path(name).to_str().unwrap().to_string()
}

/// A server with the test PKI's certificate; requiring client certificates
/// from its CA when `mutual`.
fn tls_server(pki: &Pki, mutual: bool) -> ServerProcess {
    let (cert, key, ca) = (
        path(pki, "server.pem"),
        path(pki, "server.key"),
        path(pki, "ca.pem"),
    );
    let mut args = vec!["--cert", &cert, "--key", &key];
    if mutual {
        args.extend(["--client-ca", &ca]);
    }
    let server = ServerProcess::start(&args);
    assert!(
        server.tls.is_some(),
        "the TLS listener: {}",
        server.log_text()
    );
    server
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
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let server = tls_server(&pki, false);
    let port = server.tls.unwrap().port();
    let ca = path(&pki, "ca.pem");
    button(dir, &["--tls", "--ca", &ca], "localhost", port, 3).replies(THREE_PRESSES);
}

#[test]
fn tls_with_a_foreign_ca_fails_in_one_line() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let other = Pki::new(KeyKind::EcP256);
    let server = tls_server(&pki, false);
    let port = server.tls.unwrap().port();
    let run = button(
        dir,
        &["--tls", "--ca", &path(&other, "ca.pem")],
        "localhost",
        port,
        3,
    );
    run.fails();
    assert!(run.stderr().contains("TLS"), "{}", run.text);
}

#[test]
fn mutual_tls_needs_the_boards_certificate() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let server = tls_server(&pki, true);
    let port = server.tls.unwrap().port();
    let (ca, cert, key) = (
        path(&pki, "ca.pem"),
        path(&pki, "client.pem"),
        path(&pki, "client.key"),
    );
    button(
        dir,
        &["--tls", "--ca", &ca, "--cert", &cert, "--key", &key],
        "localhost",
        port,
        3,
    )
    .replies(THREE_PRESSES);
    button(dir, &["--tls", "--ca", &ca], "localhost", port, 1).fails();
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_text()
            .contains("handshake failed: certificate required")),
        "{}",
        server.log_text()
    );
}

#[test]
fn resume_skips_the_full_handshake_after_the_first_press() {
    let Some(dir) = build() else { return };
    let pki = Pki::new(KeyKind::EcP256);
    let server = tls_server(&pki, false);
    let port = server.tls.unwrap().port();
    let ca = path(&pki, "ca.pem");
    button(
        dir,
        &["--tls", "--ca", &ca, "--resume"],
        "localhost",
        port,
        3,
    )
    .replies(THREE_PRESSES);
    // Each transaction is recorded once its connection has closed.
    let transactions = || -> Vec<String> {
        server
            .log_text()
            .lines()
            .filter(|l| l.contains(" tls ") && l.contains("\"W04FB05"))
            .map(str::to_string)
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(5), || transactions().len() == 3),
        "three transactions: {}",
        server.log_text()
    );
    // Recorded in the order their closes ended, which need not be the order
    // of the presses. The server is this test's own, so the first press has
    // no session to resume: one full handshake and two resumed ones can only
    // mean that every press after the first resumed.
    let lines = transactions();
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
    assert_eq!(run.out.status.code(), Some(1), "{}", run.text);
    assert_eq!(run.stdout(), "X forbidden\nX forbidden\n", "{}", run.text);
}
