//! The `wwep` client binary against real servers on ephemeral ports: every
//! subcommand, the TLS trust options and the exit codes scripts rely on.

use std::process::{Command, Output};
use std::sync::Arc;

use crate::common::*;

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
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn expect(&self, code: i32, stdout: &str) -> &Self {
        assert_eq!(self.code(), Some(code), "{}", self.text);
        assert_eq!(self.stdout(), stdout, "{}", self.text);
        self
    }
    /// One line on stderr that mentions `needle`, and no panic.
    fn fails_with(&self, needle: &str) -> &Self {
        assert_eq!(self.code(), Some(2), "{}", self.text);
        let err = self.stderr();
        assert!(err.contains(needle), "expected {needle:?}: {}", self.text);
        let lines = err
            .lines()
            .filter(|l| !l.starts_with("wwep: warning:"))
            .count();
        assert_eq!(lines, 1, "{}", self.text);
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

fn plain_server(s: &TestServer) -> String {
    format!("127.0.0.1:{}", s.plain().port())
}

fn tls_server(s: &TestServer) -> String {
    format!("localhost:{}", s.tls().port())
}

#[test]
fn read_write_send_over_the_open_port() {
    let s = TestServer::start();
    let srv = plain_server(&s);
    wwep(&["--server", &srv, "read", "0FAC", "0B"]).expect(1, "X\n");
    wwep(&["--server", &srv, "write", "0fac", "0x0b", "1234"]).expect(0, "A0FAC0B1234\n");
    // Connection flags go before or after the subcommand.
    wwep(&["read", "fac", "b", "--server", &srv]).expect(0, "A0FAC0B1234\n");
    wwep(&["--server", &srv, "send", "W01234"]).expect(1, "X\n");
    wwep(&["--server", &srv, "send", "R0FAC0B\\r\\n"]).expect(0, "A0FAC0B1234\n");
    wwep(&["--server", &srv, "send", "\\x00\\xff"]).expect(1, "X\n");
    assert_eq!(s.server().store().unwrap().read(0x0FAC, 0x0B), Some(0x1234));
}

#[test]
fn json_output() {
    let s = TestServer::start();
    let srv = plain_server(&s);
    wwep(&["--server", &srv, "--json", "write", "1", "2", "3"]).expect(
        0,
        "{\"reply\":\"A0001020003\",\"accepted\":true,\"device\":\"0001\",\"register\":\"02\",\"value\":\"0003\"}\n",
    );
    wwep(&["--server", &srv, "read", "1", "3", "--json"]).expect(
        1,
        "{\"reply\":\"X\",\"accepted\":false,\"device\":null,\"register\":null,\"value\":null}\n",
    );
    wwep(&["device-id", "--json", "00:00:00:00:01:02"])
        .expect(0, "{\"mac\":\"00:00:00:00:01:02\",\"device\":\"0003\"}\n");
}

#[test]
fn toggle_flips_the_led_register_of_the_mac_device() {
    let s = TestServer::start();
    let srv = plain_server(&s);
    let mac = "aa:bb:cc:dd:ee:ff";
    wwep(&["device-id", mac]).expect(0, "04FB\n");
    wwep(&["device-id", "aa-bb-cc-dd-ee-ff"]).expect(0, "04FB\n");
    wwep(&["device-id", "AABBCCDDEEFF"]).expect(0, "04FB\n");
    // Never written counts as off, so the first press turns the LED on.
    wwep(&["--server", &srv, "toggle", "--device-from-mac", mac]).expect(0, "on\n");
    assert_eq!(s.server().store().unwrap().read(0x04FB, 0x05), Some(1));
    wwep(&["--server", &srv, "toggle", "04fb"]).expect(0, "off\n");
    assert_eq!(s.server().store().unwrap().read(0x04FB, 0x05), Some(0));
    wwep(&["--server", &srv, "--json", "toggle", "--device-from-mac", mac]).expect(
        0,
        "{\"reply\":\"A04FB050001\",\"accepted\":true,\"device\":\"04FB\",\"register\":\"05\",\"value\":\"0001\",\"state\":\"on\"}\n",
    );
    wwep(&["--server", &srv, "read", "--device-from-mac", mac, "05"]).expect(0, "A04FB050001\n");
    wwep(&[
        "--server",
        &srv,
        "write",
        "--device-from-mac",
        mac,
        "06",
        "abcd",
    ])
    .expect(0, "A04FB06ABCD\n");
}

#[test]
fn a_field_one_digit_too_long_is_refused_not_read_as_another_device() {
    let s = TestServer::start();
    let srv = plain_server(&s);
    // `0FAC0` is a typo for 0FAC, or for FAC0: neither is written.
    wwep(&["--server", &srv, "write", "0FAC0", "05", "0001"])
        .fails_with("invalid DEVICE '0FAC0': 5 hex digits, expected at most 4 (0000-FFFF)");
    wwep(&["--server", &srv, "write", "0FAC", "005", "0001"]).fails_with("invalid REGISTER '005'");
    wwep(&["--server", &srv, "write", "0FAC", "05", "00001"]).fails_with("invalid VALUE '00001'");
    wwep(&["--server", &srv, "toggle", "0x0FAC0"]).fails_with("invalid DEVICE '0x0FAC0'");
    let store = s.server().store().unwrap();
    assert_eq!(store.read(0xFAC0, 0x05), None);
    assert_eq!(store.read(0x0FAC, 0x05), None);
    // Shorter forms and either case, as the README has them.
    wwep(&["--server", &srv, "write", "fac0", "5", "1"]).expect(0, "AFAC0050001\n");
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    wwep(&["read", "10000", "00"]).fails_with("invalid DEVICE '10000': 5 hex digits");
    wwep(&["read", "1", "100"]).fails_with("invalid REGISTER '100': 3 hex digits");
    wwep(&["write", "1", "1", "fffff"]).fails_with("invalid VALUE 'fffff': 5 hex digits");
    wwep(&["--server", "h:99999", "read", "1", "1"]).fails_with("invalid port '99999'");
    wwep(&["--server", "[::1]:99999", "read", "1", "1"]).fails_with("invalid port '99999'");
    wwep(&["read", "xyz", "00"]).fails_with("invalid DEVICE 'xyz'");
    wwep(&["device-id", "aa:bb"]).fails_with("invalid MAC address 'aa:bb'");
    wwep(&["toggle", "--device-from-mac", "nonsense"]).fails_with("invalid MAC");
    wwep(&["toggle"]).fails_with("--device-from-mac");
    wwep(&["send", "\\q"]).fails_with("invalid escape");
    wwep(&["--ca", "x.pem", "read", "1", "1"]).fails_with("--ca needs --tls");
    wwep(&["--server", "h:notaport", "read", "1", "1"]).fails_with("invalid port");
    wwep(&["--tls", "--ca", "/nonexistent/ca.pem", "read", "1", "1"])
        .fails_with("/nonexistent/ca.pem: cannot read");
    let out = wwep(&["read"]);
    assert_eq!(out.code(), Some(2), "{}", out.text);
    let out = wwep(&["--help"]);
    assert_eq!(out.code(), Some(0));
    for word in [
        "read",
        "write",
        "send",
        "toggle",
        "device-id",
        "--server",
        "--tls",
        "--ca",
        "--insecure",
    ] {
        assert!(out.stdout().contains(word), "--help lacks {word}");
    }
    assert!(
        wwep(&["--version"])
            .stdout()
            .contains(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn network_errors_exit_2_saying_what_failed() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = format!("127.0.0.1:{port}");
    wwep(&["--server", &srv, "read", "1", "1"]).fails_with(&format!("connection refused by {srv}"));
    // A listener that never accepts: the connection lands in its backlog and no
    // reply ever comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = silent.local_addr().unwrap().to_string();
    wwep(&["--server", &srv, "--timeout-ms", "300", "read", "1", "1"])
        .fails_with("timed out after 300 ms");
    wwep(&[
        "--server",
        &srv,
        "--timeout-ms",
        "300",
        "--tls",
        "--insecure",
        "read",
        "1",
        "1",
    ])
    .fails_with("timed out");
    wwep(&["--server", "no-such-host.invalid", "read", "1", "1"])
        .fails_with("cannot resolve no-such-host.invalid");
}

#[test]
fn tls_with_the_course_ca() {
    let s = TestServer::start();
    let srv = tls_server(&s);
    let ca = s.pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    wwep(&[
        "--server", &srv, "--tls", "--ca", ca, "write", "0FAC", "0B", "0001",
    ])
    .expect(0, "A0FAC0B0001\n");
    wwep(&["--tls", "--ca", ca, "--server", &srv, "read", "0FAC", "0B"]).expect(0, "A0FAC0B0001\n");
    // The IP address is in the certificate too.
    let by_ip = format!("127.0.0.1:{}", s.tls().port());
    wwep(&[
        "--server", &by_ip, "--tls", "--ca", ca, "read", "0FAC", "0B",
    ])
    .expect(0, "A0FAC0B0001\n");
}

#[test]
fn ca_bundle_with_comments_and_der_ca() {
    let s = TestServer::start();
    let srv = tls_server(&s);
    let other = Pki::new(KeyKind::EcP256);
    let mut bundle = b"Course CA bundle\n# first: an unrelated CA\n".to_vec();
    bundle.extend(other.ca.cert.to_pem().unwrap());
    bundle.extend(b"\nsecond: the CA that signed the server\n");
    bundle.extend(s.pki.ca.cert.to_pem().unwrap());
    bundle.extend(b"end of bundle\n");
    let bundle = s.pki.write("bundle.pem", &bundle);
    wwep(&[
        "--server",
        &srv,
        "--tls",
        "--ca",
        bundle.to_str().unwrap(),
        "write",
        "1",
        "1",
        "1",
    ])
    .expect(0, "A0001010001\n");
    let der = s.pki.write("ca.cer", &s.pki.ca.cert.to_der().unwrap());
    wwep(&[
        "--server",
        &srv,
        "--tls",
        "--ca",
        der.to_str().unwrap(),
        "read",
        "1",
        "1",
    ])
    .expect(0, "A0001010001\n");
    let garbage = s.pki.write("garbage.cer", b"\x30\x03\x02\x01");
    wwep(&[
        "--server",
        &srv,
        "--tls",
        "--ca",
        garbage.to_str().unwrap(),
        "read",
        "1",
        "1",
    ])
    .fails_with("no certificate found");
}

#[test]
fn wrong_ca_is_not_trusted_and_insecure_warns() {
    let s = TestServer::start();
    let srv = tls_server(&s);
    let stranger = Pki::new(KeyKind::EcP256);
    let wrong = stranger.path("ca.pem");
    wwep(&[
        "--server",
        &srv,
        "--tls",
        "--ca",
        wrong.to_str().unwrap(),
        "write",
        "1",
        "1",
        "1",
    ])
    .fails_with("certificate not trusted");
    assert_eq!(
        s.server().store().unwrap().read(1, 1),
        None,
        "nothing was sent"
    );
    let run = wwep(&[
        "--server",
        &srv,
        "--tls",
        "--insecure",
        "write",
        "1",
        "1",
        "2",
    ]);
    run.expect(0, "A0001010002\n");
    assert!(run.stderr().contains("man in the middle"), "{}", run.text);
}

#[test]
fn hostname_mismatch_is_fixed_by_servername() {
    let pki = Pki::new(KeyKind::EcP256);
    let named = issue(
        &CertSpec {
            sans: &["wwep.test"],
            ..CertSpec::server("wwep.test")
        },
        Some(&pki.ca),
    );
    let cert = pki.write("named.pem", &named.cert.to_pem().unwrap());
    let key = pki.write("named.key", &named.key.private_key_to_pem_pkcs8().unwrap());
    let s = TestServer::with_pki(Arc::new(pki), |c| {
        c.identity = Some(wwep::tls::IdentitySource::Pem { cert, key })
    });
    let srv = tls_server(&s);
    let ca = s.pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    wwep(&["--server", &srv, "--tls", "--ca", ca, "read", "1", "1"])
        .fails_with("hostname mismatch");
    wwep(&[
        "--server",
        &srv,
        "--tls",
        "--ca",
        ca,
        "--servername",
        "wwep.test",
        "write",
        "1",
        "1",
        "1",
    ])
    .expect(0, "A0001010001\n");
}

#[test]
fn server_address_forms() {
    let s = TestServer::start();
    let port = s.plain().port().to_string();
    wwep(&[
        "--server",
        &format!("localhost:{port}"),
        "write",
        "2",
        "2",
        "2",
    ])
    .expect(0, "A0002020002\n");
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        // The test server listens on 127.0.0.1 only: [::1] is refused.
        wwep(&["--server", &format!("[::1]:{port}"), "read", "2", "2"])
            .fails_with("connection refused");
    }
}

#[test]
fn bench_runs_a_bounded_load_and_reports_json() {
    let s = TestServer::start();
    let srv = plain_server(&s);
    let run = wwep(&[
        "--server",
        &srv,
        "--json",
        "bench",
        "-c",
        "4",
        "--requests",
        "300",
        "--warmup",
        "0",
        "--mix",
        "50/50",
        "--devices",
        "2",
        "--source-ip",
        "127.0.0.2",
        "--quiet",
    ]);
    assert_eq!(run.code(), Some(0), "{}", run.text);
    let out = run.stdout();
    let completed: u64 = out
        .split("\"completed\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Exactly the count: transactions that complete after the last of them
    // are not counted.
    assert_eq!(completed, 300, "{out}");
    assert!(
        out.contains("\"errors\":{}") && out.contains("\"bad_replies\":0"),
        "{out}"
    );
    // Writes went to the two devices only.
    let written = (0..=1u16)
        .map(|d| {
            (0..=255u8)
                .filter(|&r| s.server().store().unwrap().read(d, r).is_some())
                .count()
        })
        .sum::<usize>();
    assert!(
        written > 0 && s.server().store().unwrap().len() == written,
        "{written} of {}",
        s.server().store().unwrap().len()
    );
    let text = wwep(&[
        "--server",
        &srv,
        "bench",
        "-c",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--quiet",
    ]);
    assert_eq!(text.code(), Some(0), "{}", text.text);
    assert!(
        text.stdout().contains("transactions/s") && text.stdout().contains("errors: none"),
        "{}",
        text.text
    );
    // Against nothing: every transaction fails, counted by kind, exit 2.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = wwep(&[
        "--server",
        &format!("127.0.0.1:{port}"),
        "--json",
        "bench",
        "-c",
        "1",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "-q",
    ]);
    assert_eq!(dead.code(), Some(2), "{}", dead.text);
    assert!(dead.stdout().contains("\"connect\":"), "{}", dead.text);
    wwep(&["bench", "--mix", "60/60"]).fails_with("add up to 100");
}

#[test]
fn bench_over_tls_offering_only_tls_1_2() {
    let s = TestServer::start();
    let ca = s.pki.path("ca.pem");
    let run = wwep(&[
        "--server",
        &tls_server(&s),
        "--tls",
        "--ca",
        ca.to_str().unwrap(),
        "--json",
        "bench",
        "--tls12",
        "-c",
        "2",
        "--requests",
        "20",
        "--warmup",
        "0",
        "-q",
    ]);
    assert_eq!(run.code(), Some(0), "{}", run.text);
    assert!(run.stdout().contains("\"errors\":{}"), "{}", run.text);
    assert!(!s.server().store().unwrap().is_empty(), "{}", run.text);

    // Against a server that speaks only TLS 1.3, every --tls12 handshake fails.
    use openssl::ssl::{SslAcceptor, SslMethod, SslVersion};
    let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).unwrap();
    b.set_private_key(&s.pki.server.key).unwrap();
    b.set_certificate(&s.pki.server.cert).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    let acceptor = b.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = std::sync::Arc::clone(&stop);
    let tls13_only = std::thread::spawn(move || {
        while !stopper.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                        .unwrap();
                    let _ = acceptor.accept(stream);
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    });
    let refused = wwep(&[
        "--server",
        &format!("localhost:{port}"),
        "--tls",
        "--ca",
        ca.to_str().unwrap(),
        "--json",
        "bench",
        "--tls12",
        "-c",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "-q",
    ]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tls13_only.join().unwrap();
    assert_eq!(refused.code(), Some(2), "{}", refused.text);
    assert!(refused.stdout().contains("\"tls\":"), "{}", refused.text);
}

#[test]
fn a_server_that_wants_a_client_certificate_refuses_without_one() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let ca = pki.path("ca.pem");
    let s = TestServer::with_pki(Arc::clone(&pki), |c| {
        c.client_auth = wwep::tls::ClientAuth::Required { ca: ca.clone() }
    });
    let srv = tls_server(&s);
    let ca = ca.to_str().unwrap();
    // In TLS 1.3 the refusal comes after the client's handshake is done, so
    // it arrives on the first read; --resume goes through the other library.
    for extra in [&[][..], &["--resume"][..]] {
        let mut args = vec!["--server", &srv, "--tls", "--ca", ca];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["read", "1", "1"]);
        wwep(&args).fails_with("the server refused the connection");
    }
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    wwep(&[
        "--server",
        &srv,
        "--tls",
        "--ca",
        ca,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "write",
        "1",
        "1",
        "7",
    ])
    .expect(0, "A0001010007\n");
}

#[test]
fn a_legacy_pkcs12_client_identity_loads_with_its_password() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let Some(file) = legacy_pkcs12(
        &pki.path("client.pem"),
        &pki.path("client.key"),
        &pki.path("client-legacy.p12"),
        "secret",
    ) else {
        return;
    };
    let ca = pki.path("ca.pem");
    let s = TestServer::with_pki(Arc::clone(&pki), |c| {
        c.client_auth = wwep::tls::ClientAuth::Required { ca: ca.clone() }
    });
    let srv = tls_server(&s);
    let with_password = |password: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
        cmd.args(["--server", &srv, "--tls", "--ca"])
            .arg(&ca)
            .arg("--pkcs12")
            .arg(&file)
            .args(["write", "1", "1", "7"])
            .env("WWEP_PKCS12_PASSWORD", password);
        let out = run_with_input(&mut cmd, b"");
        let text = describe(&cmd, &out);
        Run { out, text }
    };
    with_password("secret").expect(0, "A0001010007\n");
    with_password("wrong")
        .fails_with("client-legacy.p12")
        .fails_with("wrong password");
}

#[test]
fn every_flag_of_the_client_is_documented() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wwep"))
            .args(args)
            .output()
            .unwrap();
        help_flags(&String::from_utf8_lossy(&out.stdout))
    };
    let read = |path: &str| {
        std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let readme = read("README.md");
    let performance = read("docs/performance.md");
    let global = help(&["--help"]);
    assert!(global.len() > 10, "{global:?}");
    let mut missing = Vec::new();
    for (flag, _) in &global {
        if !mentions_flag(&readme, flag) {
            missing.push(format!("README.md: {flag}"));
        }
    }
    for (flag, _) in help(&["bench", "--help"]) {
        if !global.iter().any(|(f, _)| *f == flag) && !mentions_flag(&performance, &flag) {
            missing.push(format!("docs/performance.md: {flag}"));
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

#[test]
fn a_ca_or_identity_that_is_not_a_file_is_refused_saying_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ca.pem");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let fifo = fifo.to_str().unwrap();
    let server = ["--server", "127.0.0.1:1", "--tls"];
    let cases: [(&[&str], &str, &str); 3] = [
        (&["--ca", fifo], fifo, "a FIFO"),
        (
            &["--ca", "/dev/urandom"],
            "/dev/urandom",
            "a character device",
        ),
        (&["--insecure", "--pkcs12", fifo], fifo, "a FIFO"),
    ];
    for (args, named, what) in cases {
        let began = std::time::Instant::now();
        let run = wwep(&[&server[..], args, &["read", "1", "1"]].concat());
        run.fails_with(named).fails_with(what);
        assert!(
            began.elapsed() < std::time::Duration::from_secs(2),
            "{}",
            run.text
        );
    }
}
