//! The `wwep-server` binary: startup failures, flags and environment, and the
//! real tools people use against it (`nc`, `openssl s_client`).

use std::process::Command;

use crate::common::*;

/// Runs the server expecting it to refuse to start; returns its stderr.
fn refuses_to_start(cmd: &mut Command, code: i32) -> String {
    let out = run_with_input(cmd, b"");
    let text = describe(cmd, &out);
    assert_eq!(out.status.code(), Some(code), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {text}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{text}"
    );
    stderr
}

#[test]
fn bad_certificate_or_key_exits_non_zero_naming_the_file() {
    let pki = Pki::new(KeyKind::EcP256);
    let other = Pki::new(KeyKind::EcP256);
    let garbage = pki.write("garbage.pem", b"this is not a certificate\n");
    let empty = pki.write("empty.pem", b"");
    let key_as_cert = pki.write(
        "keyascert.pem",
        &pki.server.key.private_key_to_pem_pkcs8().unwrap(),
    );
    let encrypted = pki.write(
        "encrypted.key",
        &pki.server
            .key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pw")
            .unwrap(),
    );
    let other_key = other.write(
        "other.key",
        &other.server.key.private_key_to_pem_pkcs8().unwrap(),
    );
    let cert = pki.path("server.pem");
    let key = pki.path("server.key");
    let missing = pki.path("missing.pem");
    let cases = [
        (missing.clone(), key.clone(), missing.clone(), "cannot read"),
        (
            cert.clone(),
            missing.clone(),
            missing.clone(),
            "cannot read",
        ),
        (
            garbage.clone(),
            key.clone(),
            garbage.clone(),
            "no certificate",
        ),
        (empty.clone(), key.clone(), empty.clone(), "no certificate"),
        (
            key_as_cert.clone(),
            key.clone(),
            key_as_cert.clone(),
            "certificate",
        ),
        (
            cert.clone(),
            garbage.clone(),
            garbage.clone(),
            "no private key",
        ),
        (
            cert.clone(),
            encrypted.clone(),
            encrypted.clone(),
            "encrypted",
        ),
        (
            cert.clone(),
            other_key.clone(),
            cert.clone(),
            "does not match",
        ),
        (
            pki.dir.path().to_path_buf(),
            key.clone(),
            pki.dir.path().to_path_buf(),
            "cannot read",
        ),
    ];
    for (cert, key, named, problem) in cases {
        let mut cmd = server_cmd();
        cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        let stderr = refuses_to_start(&mut cmd, 1);
        assert!(
            stderr.contains(&*named.to_string_lossy()) && stderr.contains(problem),
            "expected {named:?} and {problem:?} in: {stderr}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let stderr = refuses_to_start(&mut server_cmd(), 2);
    assert!(
        stderr.contains("--cert") && stderr.contains("--no-tls"),
        "{stderr}"
    );
    let stderr = refuses_to_start(server_cmd().args(["--no-tls", "--no-plain"]), 2);
    assert!(stderr.contains("--no-plain"), "{stderr}");
    let stderr = refuses_to_start(server_cmd().args(["--no-tls", "--workers", "0"]), 2);
    assert!(stderr.contains("--workers"), "{stderr}");
    // Absurd sizes are refused in one line, before any thread or socket exists.
    for (flag, value) in [
        ("--workers", "100000"),
        ("--max-connections", "100000000"),
        ("--timeout-ms", "99999999999"),
        ("--gap-ms", "9000"),
    ] {
        let stderr = refuses_to_start(server_cmd().args(["--no-tls", flag, value]), 2);
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
    let out = run_with_input(server_cmd().args(["--plain-port", "70000"]), b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plain-port"));
}

#[test]
fn help_lists_every_flag_with_its_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_wwep-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, var) in [
        ("--client-ca", "WWEP_CLIENT_CA"),
        ("--allow", "WWEP_ALLOW"),
        ("--max-per-ip", "WWEP_MAX_PER_IP"),
        ("--plain-read-only", "WWEP_PLAIN_READ_ONLY"),
        ("--data", "WWEP_DATA"),
        ("--fsync", "WWEP_FSYNC"),
        ("--repair", "WWEP_REPAIR"),
        ("--compact-ratio", "WWEP_COMPACT_RATIO"),
        ("--compact-min-bytes", "WWEP_COMPACT_MIN_BYTES"),
    ] {
        assert!(
            help.contains(flag) && help.contains(var),
            "--help lacks {flag} / {var}"
        );
    }
}

#[test]
fn busy_port_exits_1_naming_the_address() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let stderr = refuses_to_start(
        Command::new(env!("CARGO_BIN_EXE_wwep-server")).args([
            "--bind",
            "127.0.0.1",
            "--no-tls",
            "--plain-port",
            &port,
        ]),
        1,
    );
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn help_and_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_wwep-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--bind",
        "--plain-port",
        "--tls-port",
        "--no-plain",
        "--no-tls",
        "--cert",
        "--key",
        "--pkcs12",
        "--workers",
        "--max-connections",
        "--timeout-ms",
        "--gap-ms",
        "--explain-errors",
        "WWEP_PLAIN_PORT",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wwep-server"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn serves_both_ports_and_logs_each_transaction() {
    let pki = Pki::new(KeyKind::EcP256);
    let server = ServerProcess::start(&[
        "--cert",
        pki.path("server.pem").to_str().unwrap(),
        "--key",
        pki.path("server.key").to_str().unwrap(),
    ]);
    let plain = server.plain.unwrap();
    assert_eq!(
        transact(&mut connect(plain), b"W0FAC0B1234\n"),
        b"A0FAC0B1234\n"
    );
    let mut tls = pki
        .connector()
        .connect("localhost", connect(server.tls.unwrap()))
        .unwrap();
    assert_eq!(transact(&mut tls, b"R0FAC0B"), b"A0FAC0B1234");
    assert_eq!(transact(&mut connect(plain), b"\x1b[2J\n"), b"X\n");
    assert!(eventually(std::time::Duration::from_secs(5), || server
        .log_text()
        .contains("#3 ")));
    let log = server.log_text();
    // Lines are numbered as they are logged, just after each reply has gone.
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or("")
            .to_string()
    };
    let first = line("\"W0FAC0B1234\\n\" -> \"A0FAC0B1234\\n\"");
    assert!(
        first.contains(" plain 127.0.0.1:") && first.contains('#'),
        "{log}"
    );
    let second = line("\"R0FAC0B\" -> \"A0FAC0B1234\"");
    assert!(
        second.contains(" tls 127.0.0.1:") && second.ends_with("us"),
        "{log}"
    );
    assert!(
        ["#1 ", "#2 ", "#3 "].iter().all(|n| log.contains(n)),
        "{log}"
    );
    // Control bytes from a client are escaped, never written raw to the console.
    assert!(
        log.contains("\"\\x1B[2J\\n\" -> \"X\\n\"") && !log.contains('\x1b'),
        "{log}"
    );
}

#[test]
fn settings_come_from_the_environment() {
    let server = ServerProcess::start_env(
        &[],
        &[("WWEP_NO_TLS", "true"), ("WWEP_EXPLAIN_ERRORS", "true")],
    );
    assert!(server.tls.is_none());
    assert_eq!(
        transact(&mut connect(server.plain.unwrap()), b"R0FAC0B\n"),
        b"X not found\n"
    );
}

#[test]
fn ipv6_bind() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        skip("no IPv6 loopback here");
        return;
    }
    let server = ServerProcess::spawn(&["--bind", "::1", "--plain-port", "0", "--no-tls"], &[]);
    let addr = server.plain.unwrap();
    assert!(addr.is_ipv6(), "{addr}");
    let reply = transact(&mut connect(addr), b"W0001020003");
    assert_eq!(reply, b"A0001020003");
}

#[test]
fn netcat_reads_and_writes() {
    if !have_tool("nc") {
        return;
    }
    let server = ServerProcess::start(&["--no-tls"]);
    let port = server.plain.unwrap().port().to_string();
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

#[test]
fn openssl_s_client_reads_and_writes() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Pki::new(KeyKind::Rsa2048);
    let server = ServerProcess::start(&[
        "--no-plain",
        "--cert",
        pki.path("server.pem").to_str().unwrap(),
        "--key",
        pki.path("server.key").to_str().unwrap(),
    ]);
    let connect_to = format!("127.0.0.1:{}", server.tls.unwrap().port());
    let s_client_cmd = |ca: &std::path::Path| {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-quiet",
            "-connect",
            &connect_to,
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(ca);
        cmd
    };
    let s_client = |input: &[u8], extra: &[&str]| {
        let mut cmd = s_client_cmd(&pki.path("ca.pem"));
        cmd.args(extra);
        let out = run_with_input(&mut cmd, input);
        (out.stdout.clone(), describe(&cmd, &out))
    };
    let (out, text) = s_client(b"W0FAC0B1234\n", &[]);
    assert_eq!(out, b"A0FAC0B1234\n", "{text}");
    let (out, text) = s_client(b"R0FAC0B\n", &["-crlf"]);
    assert_eq!(out, b"A0FAC0B1234\r\n", "{text}");
    let (out, text) = s_client(b"R0FAC0B\n", &["-tls1_2"]);
    assert_eq!(out, b"A0FAC0B1234\n", "{text}");
    // Verification really happens: a CA that did not sign the server fails.
    let stranger = Pki::new(KeyKind::EcP256);
    let mut cmd = s_client_cmd(&stranger.path("ca.pem"));
    let out = run_with_input(&mut cmd, b"R0FAC0B\n");
    assert!(!out.stdout.starts_with(b"A"), "{}", describe(&cmd, &out));
}

#[test]
fn access_and_limit_flags_reach_the_server() {
    let server = ServerProcess::start_env(
        &[
            "--no-tls",
            "--plain-read-only",
            "--max-per-ip",
            "5",
            "--max-connections",
            "100",
            "--timeout-ms",
            "2000",
            "--gap-ms",
            "50",
            "--workers",
            "4",
            "--explain-errors",
        ],
        &[("WWEP_ALLOW", "10.0.0.0/8,127.0.0.1")],
    );
    let addr = server.plain.unwrap();
    assert_eq!(
        transact(&mut connect(addr), b"W0001010001\n"),
        b"X forbidden\n"
    );
    assert_eq!(transact(&mut connect(addr), b"R000101\n"), b"X not found\n");
    // 127.0.0.2 is not in WWEP_ALLOW: closed without a reply.
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.2:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut denied: std::net::TcpStream = socket.into();
    denied
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let _ = std::io::Write::write_all(&mut denied, b"R000101\n");
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut denied, &mut got);
    assert!(got.is_empty(), "{got:?}");
    assert!(eventually(std::time::Duration::from_secs(5), || server
        .log_text()
        .contains("not in --allow")));
    // The gap is 50 ms: a short message without terminator is judged quickly.
    let mut c = connect(addr);
    std::io::Write::write_all(&mut c, b"R00").unwrap();
    assert_eq!(
        read_exact_within(&mut c, 12, std::time::Duration::from_millis(500)),
        b"X bad length"
    );
}

#[test]
fn pkcs12_identity_from_the_command_line() {
    let pki = Pki::new(KeyKind::EcP256);
    let file = pki.write("server.p12", &pkcs12(&pki.server, "server", "secret"));
    let server = ServerProcess::start_env(
        &["--no-plain", "--pkcs12", file.to_str().unwrap()],
        &[("WWEP_PKCS12_PASSWORD", "secret")],
    );
    let mut tls = pki
        .connector()
        .connect("localhost", connect(server.tls.unwrap()))
        .unwrap();
    assert_eq!(transact(&mut tls, b"W0001020003"), b"A0001020003");
    let mut cmd = server_cmd();
    cmd.args(["--no-plain", "--pkcs12"])
        .arg(&file)
        .env("WWEP_PKCS12_PASSWORD", "wrong");
    let stderr = refuses_to_start(&mut cmd, 1);
    assert!(
        stderr.contains("server.p12") && stderr.contains("password"),
        "{stderr}"
    );
}
