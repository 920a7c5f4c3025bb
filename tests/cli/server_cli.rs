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
fn tls_tickets_outside_0_to_8_are_refused_naming_the_flag() {
    let pki = Pki::new(KeyKind::EcP256);
    let with_identity = || {
        let mut cmd = server_cmd();
        cmd.arg("--cert")
            .arg(pki.path("server.pem"))
            .arg("--key")
            .arg(pki.path("server.key"));
        cmd
    };
    // Past the maximum, on the command line or in the variable: one line.
    let stderr = refuses_to_start(with_identity().args(["--tls-tickets", "9"]), 2);
    assert!(
        stderr.contains("--tls-tickets must be at most 8"),
        "{stderr}"
    );
    let stderr = refuses_to_start(with_identity().env("WWEP_TLS_TICKETS", "9"), 2);
    assert!(stderr.contains("--tls-tickets"), "{stderr}");
    // Not a count at all: the argument parser's usage error, its first line
    // naming the flag.
    for value in ["--tls-tickets=-1", "--tls-tickets=one"] {
        let out = run_with_input(with_identity().arg(value), b"");
        assert_eq!(out.status.code(), Some(2), "{value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains("--tls-tickets"), "{value}: {stderr}");
    }
    let stderr = refuses_to_start(server_cmd().args(["--no-tls", "--tls-tickets", "2"]), 2);
    assert!(
        stderr.contains("--tls-tickets") && stderr.contains("--no-tls"),
        "{stderr}"
    );
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

/// Writes a certificate and its key as `NAME.pem` and `NAME.key`.
fn write_pair(pki: &Pki, name: &str, issued: &Issued) -> (String, String) {
    let cert = pki.write(&format!("{name}.pem"), &issued.cert.to_pem().unwrap());
    let key = pki.write(
        &format!("{name}.key"),
        &issued.key.private_key_to_pem_pkcs8().unwrap(),
    );
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

/// Environment variables given to a command.
type Environment<'a> = Vec<(&'a str, &'a str)>;

#[test]
fn flags_that_conflict_or_do_nothing_alone_are_usage_errors_naming_both() {
    let pki = Pki::new(KeyKind::EcP256);
    let cert = pki.path("server.pem");
    let key = pki.path("server.key");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tls = ["--cert", cert, "--key", key];
    // Ports here are refused before anything binds them.
    let cases: Vec<(Vec<&str>, Environment, [&str; 2])> = vec![
        (
            vec!["--no-tls", "--client-ca", cert],
            vec![],
            ["--client-ca", "--no-tls"],
        ),
        (
            vec!["--no-tls", "--cert", cert, "--key", key],
            vec![],
            ["--cert", "--no-tls"],
        ),
        (
            vec!["--no-tls", "--key", key],
            vec![],
            ["--key", "--no-tls"],
        ),
        (
            vec!["--no-tls", "--tls-min", "1.3"],
            vec![],
            ["--tls-min", "--no-tls"],
        ),
        (
            vec!["--no-tls", "--client-crl", cert],
            vec![],
            ["--client-crl", "--no-tls"],
        ),
        (
            vec!["--no-tls", "--fsync", "always"],
            vec![],
            ["--fsync", "--data"],
        ),
        (vec!["--no-tls", "--repair"], vec![], ["--repair", "--data"]),
        (
            vec!["--no-tls", "--compact-ratio", "2"],
            vec![],
            ["--compact-ratio", "--data"],
        ),
        (
            vec!["--no-tls", "--compact-min-bytes", "9"],
            vec![],
            ["--compact-min-bytes", "--data"],
        ),
        (
            vec!["--no-tls", "--store-wait-replicas", "1"],
            vec![],
            ["--store-wait-replicas", "--store"],
        ),
        (
            vec!["--no-tls", "--http-allow", "127.0.0.1"],
            vec![],
            ["--http-allow", "--http"],
        ),
        (
            vec![
                "--no-plain",
                "--plain-read-only",
                "--cert",
                cert,
                "--key",
                key,
            ],
            vec![],
            ["--plain-read-only", "--no-plain"],
        ),
        (vec!["--cert", cert], vec![], ["--cert", "--key"]),
        (
            vec!["--cert", cert, "--key", key, "--pkcs12", cert],
            vec![],
            ["--cert", "--pkcs12"],
        ),
        (
            vec!["--no-tls", "--proxy-protocol"],
            vec![],
            ["--proxy-protocol", "--proxy-from"],
        ),
        // The same rule for flags given in the environment, named both ways.
        (
            vec![],
            vec![("WWEP_NO_TLS", "true"), ("WWEP_CLIENT_CA", cert)],
            ["WWEP_CLIENT_CA", "WWEP_NO_TLS"],
        ),
        (
            vec!["--no-tls"],
            vec![("WWEP_FSYNC", "always")],
            ["WWEP_FSYNC", "--data"],
        ),
        // Two listeners on one port.
        (
            [&tls[..], &["--plain-port", "40990", "--tls-port", "40990"]].concat(),
            vec![],
            ["--plain-port", "--tls-port"],
        ),
        (
            vec![
                "--no-tls",
                "--plain-port",
                "40991",
                "--http",
                "127.0.0.1:40991",
            ],
            vec![],
            ["--plain-port", "--http"],
        ),
        (
            [
                &tls[..],
                &["--tls-port", "40992", "--http", "127.0.0.1:40992"],
            ]
            .concat(),
            vec![],
            ["--tls-port", "--http"],
        ),
    ];
    for (args, env, named) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep-server"));
        cmd.args(["--bind", "127.0.0.1"]);
        for port in ["--plain-port", "--tls-port"] {
            if !args.contains(&port) {
                cmd.args([port, "0"]);
            }
        }
        cmd.args(&args).envs(env.iter().copied());
        let stderr = refuses_to_start(&mut cmd, 2);
        assert!(
            named.iter().all(|n| stderr.contains(n)),
            "{args:?} {env:?}: expected {named:?} in {stderr}"
        );
    }
    // A switch turned off in its variable is not given; port 0 is no clash.
    let server = ServerProcess::start_env(
        &["--cert", cert, "--key", key, "--http", "127.0.0.1:0"],
        &[("WWEP_NO_TLS", "false")],
    );
    assert!(
        eventually(std::time::Duration::from_secs(5), || server
            .log_text()
            .contains("tls listener on")),
        "{}",
        server.log_text()
    );
}

#[test]
fn two_certificates_of_one_key_type_are_refused_naming_both() {
    let pki = Pki::new(KeyKind::EcP256);
    let other = issue(&CertSpec::server("localhost"), Some(&pki.ca));
    let (cert2, key2) = write_pair(&pki, "second", &other);
    let cert1 = pki.path("server.pem");
    let mut cmd = server_cmd();
    cmd.arg("--cert")
        .arg(format!("{},{cert2}", cert1.display()))
        .arg("--key")
        .arg(format!("{},{key2}", pki.path("server.key").display()));
    let stderr = refuses_to_start(&mut cmd, 1);
    assert!(
        stderr.contains(&cert2)
            && stderr.contains(&*cert1.to_string_lossy())
            && stderr.contains("ECDSA"),
        "{stderr}"
    );
}

#[test]
fn certificate_dates_are_judged_alike_at_start_and_at_reload() {
    let pki = Pki::new(KeyKind::EcP256);
    let future = issue(
        &CertSpec {
            not_before: 2 * 86400,
            ..CertSpec::server("localhost")
        },
        Some(&pki.ca),
    );
    let soon = issue(
        &CertSpec {
            not_after: 3 * 86400,
            ..CertSpec::server("localhost")
        },
        Some(&pki.ca),
    );
    let (future_cert, future_key) = write_pair(&pki, "future", &future);
    let (soon_cert, soon_key) = write_pair(&pki, "soon", &soon);
    // Not valid yet: refused at start...
    let stderr = refuses_to_start(
        server_cmd().args(["--cert", &future_cert, "--key", &future_key]),
        1,
    );
    assert!(
        stderr.contains(&future_cert) && stderr.contains("not valid before"),
        "{stderr}"
    );
    // ...expiring soon: warned at start...
    let live_cert = pki.path("live.pem");
    let live_key = pki.path("live.key");
    std::fs::copy(&soon_cert, &live_cert).unwrap();
    std::fs::copy(&soon_key, &live_key).unwrap();
    let server = ServerProcess::start(&[
        "--no-plain",
        "--cert",
        live_cert.to_str().unwrap(),
        "--key",
        live_key.to_str().unwrap(),
    ]);
    let warned = |server: &ServerProcess| {
        server
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("expires on") && l.contains("days left"))
            .count()
    };
    assert_eq!(warned(&server), 1, "{}", server.log_text());
    // ...and again at reload.
    server.signal("HUP");
    assert!(
        eventually(std::time::Duration::from_secs(5), || warned(&server) == 2),
        "{}",
        server.log_text()
    );
    // Not valid yet: refused at reload too, the certificate in service kept.
    std::fs::copy(&future_cert, &live_cert).unwrap();
    std::fs::copy(&future_key, &live_key).unwrap();
    server.signal("HUP");
    assert!(
        eventually(std::time::Duration::from_secs(5), || server
            .log_text()
            .contains("keeping the old certificate")),
        "{}",
        server.log_text()
    );
    assert!(server.log_text().contains("not valid before"));
    let tls = pki
        .connector()
        .connect("localhost", connect(server.tls.unwrap()))
        .unwrap();
    let served = tls.peer_certificate().unwrap().unwrap().to_der().unwrap();
    assert_eq!(served, soon.cert.to_der().unwrap(), "the old one is served");
}

#[test]
fn paths_that_are_not_regular_files_are_refused_saying_what_they_are() {
    let pki = Pki::new(KeyKind::EcP256);
    let cert = pki.path("server.pem");
    let key = pki.path("server.key");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let fifo = pki.path("rules.acl");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let fifo = fifo.to_str().unwrap();
    let big = pki.write("big.pem", &vec![b'#'; (1 << 20) + 1]);
    let big = big.to_str().unwrap();
    let dir = pki.dir.path().to_str().unwrap();
    let cases: [(&[&str], i32, &str, &str); 9] = [
        (&["--no-tls", "--acl", fifo], 2, fifo, "a FIFO"),
        (
            &["--cert", "/dev/zero", "--key", key],
            1,
            "/dev/zero",
            "a character device",
        ),
        (
            &["--cert", cert, "--key", key, "--client-ca", "/dev/urandom"],
            1,
            "/dev/urandom",
            "a character device",
        ),
        (&["--cert", cert, "--key", fifo], 1, fifo, "a FIFO"),
        (&["--pkcs12", fifo], 1, fifo, "a FIFO"),
        (
            &[
                "--cert",
                cert,
                "--key",
                key,
                "--client-ca",
                cert,
                "--client-crl",
                fifo,
            ],
            1,
            fifo,
            "a FIFO",
        ),
        (&["--cert", dir, "--key", key], 1, dir, "a directory"),
        (
            &["--cert", big, "--key", key],
            1,
            big,
            "larger than 1024 KiB",
        ),
        (
            &[
                "--no-tls",
                "--store",
                "redis://127.0.0.1:1",
                "--store-ca",
                fifo,
            ],
            2,
            fifo,
            "a FIFO",
        ),
    ];
    for (args, code, named, what) in cases {
        let began = std::time::Instant::now();
        let stderr = refuses_to_start(server_cmd().args(args), code);
        assert!(
            began.elapsed() < std::time::Duration::from_secs(2),
            "{args:?} took {:?}",
            began.elapsed()
        );
        assert!(
            stderr.contains(named) && stderr.contains(what),
            "{args:?}: expected {named} and {what:?} in {stderr}"
        );
    }
}

#[test]
fn an_acl_file_beginning_with_a_byte_order_mark_loads() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("boards.acl");
    std::fs::write(&acl, b"\xEF\xBB\xBFallow anyone read *\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep-server"));
    cmd.arg("--check-acl").arg(&acl);
    let out = run_with_input(&mut cmd, b"");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&cmd, &out));
    let server = ServerProcess::start(&["--no-tls", "--acl", acl.to_str().unwrap()]);
    let addr = server.plain.unwrap();
    assert_eq!(transact(&mut connect(addr), b"W0001020003\n"), b"X\n");
    assert!(
        server.log_text().contains("1 rule"),
        "{}",
        server.log_text()
    );
}

#[test]
fn a_legacy_pkcs12_file_loads_with_its_password() {
    let pki = Pki::new(KeyKind::Rsa2048);
    let Some(file) = legacy_pkcs12(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.path("legacy.p12"),
        "secret",
    ) else {
        return;
    };
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
        stderr.contains("legacy.p12") && stderr.contains("wrong password"),
        "{stderr}"
    );
}

/// The cells of a Markdown table row, trimmed (`\\|` stays in its cell);
/// none for a line that is not a row.
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    if !line.starts_with('|') {
        return Vec::new();
    }
    let mut cells = vec![String::new()];
    let mut escaped = false;
    for c in line.chars() {
        match c {
            '|' if !escaped => cells.push(String::new()),
            _ => cells.last_mut().unwrap().push(c),
        }
        escaped = c == '\\';
    }
    // The empty text before the first bar and after the last.
    cells[1..cells.len() - 1]
        .iter()
        .map(|c| c.trim().to_string())
        .collect()
}

/// The text between `[NAME: ` and `]` in a flag's help block.
fn bracketed<'a>(block: &'a str, name: &str) -> Option<&'a str> {
    let start = block.find(&format!("[{name}: "))? + name.len() + 3;
    let end = block[start..].find(']')?;
    Some(&block[start..start + end])
}

#[test]
fn docs_server_md_lists_every_flag_with_its_variable_and_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_wwep-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let flags = help_flags(&help);
    assert!(flags.len() > 30, "{flags:?}");
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/server.md")).unwrap();
    let mut missing = Vec::new();
    for (flag, block) in &flags {
        // The row of the options table: the flag first, then its variable.
        let row = doc.lines().map(cells).find(|cells| {
            cells.len() == 4
                && cells[0].trim_start_matches('`').split([' ', '`']).next() == Some(flag)
                && (cells[1].is_empty() || cells[1].starts_with("`WWEP_"))
        });
        let Some(row) = row else {
            missing.push(flag.clone());
            continue;
        };
        if let Some(var) = bracketed(block, "env").map(|e| e.trim_end_matches('='))
            && row[1] != format!("`{var}`")
        {
            missing.push(format!("{flag}'s variable {var}"));
        }
        if let Some(default) = bracketed(block, "default").filter(|d| !d.contains(' '))
            && row[2].trim_matches('`') != default
        {
            missing.push(format!("{flag}'s default {default}"));
        }
    }
    assert!(missing.is_empty(), "docs/server.md lacks {missing:?}");
}

#[test]
fn docs_server_md_has_the_flag_rules_of_the_code() {
    use wwep::config::{FLAG_RULES, FlagRule};
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/server.md")).unwrap();
    let documented: Vec<String> = doc
        .lines()
        .filter(|l| l.contains(" | needs | ") || l.contains(" | conflicts with | "))
        .map(str::to_string)
        .collect();
    let code: Vec<String> = FLAG_RULES
        .iter()
        .map(|(flag, rule)| match rule {
            FlagRule::Needs(other) => format!("| `{flag}` | needs | `{other}` |"),
            FlagRule::ConflictsWith(other) => format!("| `{flag}` | conflicts with | `{other}` |"),
        })
        .collect();
    assert_eq!(documented, code);
    // Every flag a rule names is a flag of the server: a misspelt one would
    // never count as given, and its rule would never fire.
    let out = Command::new(env!("CARGO_BIN_EXE_wwep-server"))
        .arg("--help")
        .output()
        .unwrap();
    let flags = help_flags(&String::from_utf8_lossy(&out.stdout));
    for (flag, rule) in FLAG_RULES {
        let (FlagRule::Needs(other) | FlagRule::ConflictsWith(other)) = rule;
        for named in [flag, other] {
            assert!(flags.iter().any(|(f, _)| f == *named), "{named} is no flag");
        }
    }
}
