//! The TLS port's policy, as clients see it: protocol versions, the one set of
//! cipher suites (with and without client certificates), RSA and ECDSA side by
//! side, session resumption and the tickets per TLS 1.3 handshake, revocation,
//! reloads that cannot break the port, and no delayed-ACK stalls for clients
//! that leave Nagle's algorithm on.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use openssl::ssl::{SslConnector, SslMethod, SslSessionCacheMode, SslVerifyMode, SslVersion};
use wwep::tls::{ClientAuth, DEFAULT_TLS12_CIPHERS, DEFAULT_TLS13_CIPHERSUITES, IdentitySource};

/// `openssl s_client` against `addr`, verifying it with the test CA; reads until
/// the server closes.
fn s_client(pki: &Pki, addr: SocketAddr, args: &[&str], input: &[u8]) -> (Output, String) {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .arg("-verify_return_error")
        .arg("-ign_eof")
        .args(args);
    let out = run_with_input(&mut cmd, input);
    let text = describe(&cmd, &out);
    (out, text)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Writes an RSA server certificate from the same CA beside the ECDSA one.
fn rsa_identity(pki: &Pki) -> IdentitySource {
    let rsa = issue(
        &CertSpec {
            kind: KeyKind::Rsa2048,
            ..CertSpec::server("localhost")
        },
        Some(&pki.ca),
    );
    let (cert, key) = pki.write_issued("server-rsa", &rsa);
    IdentitySource::Pem { cert, key }
}

#[test]
fn tls_1_3_and_1_2_with_s_client() {
    if !have_tool("openssl") {
        return;
    }
    let s = TestServer::start();
    for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let (out, text) = s_client(&s.pki, s.tls(), &[flag], b"W0FAC0B0013\n");
        assert!(stdout(&out).contains("A0FAC0B0013\n"), "{text}");
        assert!(stdout(&out).contains(&format!("New, {version}")), "{text}");
    }
    // --tls-min 1.3 turns 1.2 away.
    let strict = TestServer::with(|c| c.tls.min = wwep::tls::TlsVersion::Tls13);
    let (out, text) = s_client(&strict.pki, strict.tls(), &["-tls1_2"], b"R000000\n");
    assert!(
        !stdout(&out).contains("A000000") && !stdout(&out).contains("\nX"),
        "{text}"
    );
    assert!(
        eventually(Duration::from_secs(5), || strict
            .server()
            .stats()
            .handshake_failures
            >= 1),
        "the refusal is counted"
    );
}

/// The suites a server accepts, tried one at a time with the openssl crate.
fn accepted_suites(addr: SocketAddr, pki: &Pki, client_cert: bool) -> BTreeSet<String> {
    let all = Command::new("openssl")
        .args(["ciphers", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"])
        .output()
        .expect("openssl ciphers");
    let list = String::from_utf8_lossy(&all.stdout).trim().to_string();
    let tls13: Vec<&str> = DEFAULT_TLS13_CIPHERSUITES
        .split(':')
        .chain(["TLS_AES_128_CCM_8_SHA256"])
        .collect();
    let mut accepted = BTreeSet::new();
    for name in list.split(':').chain(tls13.iter().copied()) {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_security_level(0);
        b.set_verify(SslVerifyMode::NONE);
        if name.starts_with("TLS_") {
            b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
            if b.set_ciphersuites(name).is_err() {
                continue;
            }
        } else {
            b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
            if b.set_cipher_list(name).is_err() {
                continue;
            }
        }
        if client_cert {
            b.set_certificate(&pki.client.cert).unwrap();
            b.set_private_key(&pki.client.key).unwrap();
        }
        let connector = b.build();
        let tcp = connect(addr);
        let Ok(mut tls) = connector.connect("localhost", tcp) else {
            continue;
        };
        if tls.write_all(b"R000000").is_ok() {
            let mut reply = Vec::new();
            let _ = tls.read_to_end(&mut reply);
            if reply.starts_with(b"X") || reply.starts_with(b"A") {
                accepted.insert(name.to_string());
            }
        }
    }
    accepted
}

#[test]
fn one_cipher_policy_with_and_without_client_certificates() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let rsa = rsa_identity(&pki);
    let open = TestServer::with_pki(Arc::clone(&pki), |c| c.extra_identity = Some(rsa.clone()));
    let ca = pki.path("ca.pem");
    let mutual = TestServer::with_pki(Arc::clone(&pki), |c| {
        c.extra_identity = Some(rsa);
        c.client_auth = ClientAuth::Required { ca };
    });
    let without = accepted_suites(open.tls(), &pki, false);
    let with = accepted_suites(mutual.tls(), &pki, true);
    assert_eq!(
        without, with,
        "turning on client certificates changes nothing"
    );
    // RSA and ECDSA suites both work: both certificates are served.
    for needed in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES128-CCM",
        "ECDHE-ECDSA-AES128-CCM8",
        "DHE-RSA-AES128-CCM",
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_128_CCM_SHA256",
    ] {
        assert!(
            without.contains(needed),
            "{needed} missing from {without:?}"
        );
    }
    // Nothing outside the forward-secret AEAD default is accepted.
    let default: BTreeSet<&str> = DEFAULT_TLS12_CIPHERS
        .split(':')
        .chain(DEFAULT_TLS13_CIPHERSUITES.split(':'))
        .collect();
    for suite in &without {
        assert!(default.contains(suite.as_str()), "{suite} accepted");
    }
    for refused in [
        "AES128-SHA",
        "AES256-SHA",
        "AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-SHA",
    ] {
        assert!(!without.contains(refused), "{refused} accepted");
    }
}

#[test]
fn sessions_resume_by_id_and_by_ticket_with_and_without_client_certificates() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let ca = pki.path("ca.pem");
    let open = TestServer::with_pki(Arc::clone(&pki), |_| {});
    let mutual = TestServer::with_pki(Arc::clone(&pki), |c| {
        c.client_auth = ClientAuth::Required { ca }
    });
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let client_args = [
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ];
    let cases: [(&str, &[&str]); 3] = [
        ("TLSv1.2 session id", &["-tls1_2", "-no_ticket"]),
        ("TLSv1.2 ticket", &["-tls1_2"]),
        ("TLSv1.3 ticket", &["-tls1_3"]),
    ];
    for (server, with_cert) in [(&open, false), (&mutual, true)] {
        for (name, flags) in cases {
            let session = pki.path(&format!("session-{with_cert}-{}", name.replace(' ', "-")));
            let session = session.to_str().unwrap();
            let mut args: Vec<&str> = flags.to_vec();
            if with_cert {
                args.extend(client_args);
            }
            let mut first = args.clone();
            first.extend(["-sess_out", session]);
            let (out, text) = s_client(&pki, server.tls(), &first, b"R000000\n");
            assert!(stdout(&out).contains("New, TLSv1."), "{name}: {text}");
            let mut again = args.clone();
            again.extend(["-sess_in", session]);
            let (out, text) = s_client(&pki, server.tls(), &again, b"W0000000001\n");
            assert!(
                stdout(&out).contains("Reused, TLSv1."),
                "{name} with_cert={with_cert}: {text}"
            );
            assert!(stdout(&out).contains("A0000000001"), "{name}: {text}");
        }
    }
}

/// The session tickets a TLS 1.3 client (OpenSSL) receives over one
/// transaction with `s`: the handshake, a write, and its reply read to the
/// server's close, so every ticket sent has arrived. OpenSSL's client calls
/// its new-session callback once per ticket.
fn tickets_after_one_handshake(s: &TestServer) -> usize {
    let count = Arc::new(AtomicUsize::new(0));
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(s.pki.path("ca.pem")).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    let seen = Arc::clone(&count);
    b.set_new_session_callback(move |_, _| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let mut tls = b.build().connect("localhost", connect(s.tls())).unwrap();
    assert_eq!(tls.ssl().version_str(), "TLSv1.3");
    assert_eq!(transact(&mut tls, b"W0000000001"), b"A0000000001");
    count.load(Ordering::SeqCst)
}

#[test]
fn a_tls_1_3_handshake_ends_with_as_many_tickets_as_set_one_by_default() {
    let default = TestServer::start();
    assert_eq!(tickets_after_one_handshake(&default), 1, "the default");
    for tickets in [0, 2, 8] {
        let s = TestServer::with(|c| c.tls.tickets = tickets);
        assert_eq!(
            tickets_after_one_handshake(&s),
            tickets,
            "--tls-tickets {tickets}"
        );
    }
}

/// The test CA's revocation list, made the way an operator makes one
/// (`openssl ca -gencrl`), revoking `revoke` first when given.
fn crl(pki: &Pki, revoke: Option<&Path>) -> Vec<u8> {
    let dir = pki.path("ca-db");
    std::fs::create_dir_all(&dir).unwrap();
    let index = dir.join("index.txt");
    if !index.exists() {
        std::fs::write(&index, b"").unwrap();
        std::fs::write(dir.join("crlnumber"), b"01\n").unwrap();
    }
    let config = pki.write(
        "ca.cnf",
        format!(
            "[ca]\ndefault_ca = test\n[test]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\ndefault_crl_days = 7\n",
            index.display(),
            dir.join("crlnumber").display()
        )
        .as_bytes(),
    );
    let ca_key = pki.write("ca.key", &pki.ca.key.private_key_to_pem_pkcs8().unwrap());
    let ca = |args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new("openssl");
        cmd.arg("ca")
            .arg("-config")
            .arg(&config)
            .arg("-keyfile")
            .arg(&ca_key);
        cmd.arg("-cert").arg(pki.path("ca.pem")).args(args);
        let out = run_with_input(&mut cmd, b"");
        assert!(out.status.success(), "{}", describe(&cmd, &out));
    };
    if let Some(cert) = revoke {
        ca(&["-revoke".as_ref(), cert.as_os_str()]);
    }
    let out = pki.path("crl.out");
    ca(&["-gencrl".as_ref(), "-out".as_ref(), out.as_os_str()]);
    std::fs::read(out).unwrap()
}

#[test]
fn a_revoked_client_certificate_is_refused_and_its_sessions_stop_resuming() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let crl_path = pki.write("clients.crl", &crl(&pki, None));
    let server = ServerProcess::with_pki(
        &pki,
        &[
            "--client-ca",
            pki.path("ca.pem").to_str().unwrap(),
            "--client-crl",
            crl_path.to_str().unwrap(),
        ],
    );
    let tls = server.tls.unwrap();
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let session = pki.path("session");
    let base = [
        "-tls1_2",
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ];
    let mut first = base.to_vec();
    first.extend(["-sess_out", session.to_str().unwrap()]);
    let (out, text) = s_client(&pki, tls, &first, b"W0000010001\n");
    assert!(
        stdout(&out).contains("A0000010001"),
        "not yet revoked: {text}"
    );
    // The CA revokes the board's certificate; the operator reloads.
    pki.write("clients.crl", &crl(&pki, Some(&pki.path("client.pem"))));
    server.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || server
        .log_text()
        .contains("SIGHUP: reloaded")));
    let mut again = base.to_vec();
    again.extend(["-sess_in", session.to_str().unwrap()]);
    let (out, text) = s_client(&pki, tls, &again, b"W0000010002\n");
    assert!(
        !stdout(&out).contains("A0000010002"),
        "revoked, resumed anyway: {text}"
    );
    assert!(!stdout(&out).contains("Reused,"), "{text}");
    let (out, text) = s_client(&pki, tls, &base, b"W0000010003\n");
    assert!(
        !stdout(&out).contains("A0000010003"),
        "revoked, served anyway: {text}"
    );
    server.assert_logs_within(
        "handshake failed: certificate revoked",
        Duration::from_secs(5),
    );
}

#[test]
fn sighup_refuses_an_expired_certificate_and_keeps_serving_the_old_one() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let server = ServerProcess::with_pki(&pki, &[]);
    let expired = issue(
        &CertSpec {
            not_before: -10 * 86400,
            not_after: -86400,
            ..CertSpec::server("localhost")
        },
        Some(&pki.ca),
    );
    pki.write("server.pem", &expired.cert.to_pem().unwrap());
    pki.write(
        "server.key",
        &expired.key.private_key_to_pem_pkcs8().unwrap(),
    );
    server.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = server.log_text();
            log.contains("keeping the old certificate") && log.contains("expired")
        }),
        "{}",
        server.log_text()
    );
    let (out, text) = s_client(&pki, server.tls.unwrap(), &[], b"W0000020001\n");
    assert!(
        stdout(&out).contains("A0000020001"),
        "still verifiable: {text}"
    );
}

/// The median time of `runs` transactions.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[test]
fn clients_with_nagle_on_are_not_held_by_delayed_acks() {
    let s = TestServer::start();
    let connector = s.pki.connector();
    let mut plain = Vec::new();
    let mut tls = Vec::new();
    for i in 0..7u16 {
        // Nagle stays on (as embedded stacks leave it): each small write after
        // the first waits for the server's ACK of the one before.
        let started = Instant::now();
        let mut c = connect(s.plain());
        c.write_all(b"W0005").unwrap();
        c.write_all(format!("05{i:04X}").as_bytes()).unwrap();
        assert_eq!(read_to_close(&mut c), format!("A000505{i:04X}").as_bytes());
        plain.push(started.elapsed());
        let started = Instant::now();
        let mut t = connector.connect("localhost", connect(s.tls())).unwrap();
        t.write_all(b"W0006").unwrap();
        t.write_all(b"06").unwrap();
        t.write_all(format!("{i:04X}").as_bytes()).unwrap();
        assert_eq!(read_to_close(&mut t), format!("A000606{i:04X}").as_bytes());
        tls.push(started.elapsed());
    }
    let (plain, tls) = (median(plain), median(tls));
    eprintln!("split writes with Nagle on: plain {plain:?}, tls {tls:?}");
    // A delayed-ACK stall costs at least 40 ms (Linux's minimum delayed ACK)
    // per stalled write; below 30 ms none happened, even on a busy machine.
    assert!(plain < Duration::from_millis(30), "plain {plain:?}");
    assert!(tls < Duration::from_millis(30), "tls {tls:?}");
}

/// `wwep bench` with `--resume` (and `extra` flags) against `addr`: its
/// handshakes and how many of them resumed.
fn bench_resumption(addr: SocketAddr, ca: &Path, extra: &[&str]) -> (u64, u64) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
    cmd.arg("--server")
        .arg(addr.to_string())
        .args(["--servername", "localhost", "--tls", "--ca"])
        .arg(ca)
        .args(["--resume", "--json", "bench", "-c", "2", "--requests", "40"])
        .args(["--warmup", "0", "--quiet"])
        .args(extra);
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let json = stdout(&out);
    let number = |field: &str| -> u64 {
        json.split(&format!("\"{field}\":"))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {text}"))
    };
    let (handshakes, resumed) = (number("handshakes"), number("resumed"));
    assert!(handshakes >= 40, "{text}");
    (handshakes, resumed)
}

#[test]
fn wwep_bench_resume_reuses_sessions_like_a_board() {
    let s = TestServer::start();
    let ca = s.pki.path("ca.pem");
    for extra in [
        &[][..],
        &["--tls12"][..],
        &["--tls12", "--resume-with", "ticket"][..],
        &["--tls12", "--resume-with", "session-id"][..],
    ] {
        let (handshakes, resumed) = bench_resumption(s.tls(), &ca, extra);
        assert!(
            resumed >= handshakes - 4,
            "most handshakes resume with {extra:?}: {resumed} of {handshakes}"
        );
    }
    // Resumption needs a CA to trust.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
    cmd.arg("--server").arg(s.tls().to_string()).args([
        "--tls",
        "--insecure",
        "--resume",
        "read",
        "1",
        "1",
    ]);
    let out = run_with_input(&mut cmd, b"");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&cmd, &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume needs --ca"));
}

#[test]
fn wwep_bench_resume_with_session_id_uses_the_servers_session_cache() {
    // Without the server's session cache only tickets can resume a TLS 1.2
    // session: the session-ID-only client then never resumes, the ticket one does.
    let s = TestServer::with(|c| c.tls.session_cache = 0);
    let ca = s.pki.path("ca.pem");
    let (_, resumed) = bench_resumption(s.tls(), &ca, &["--tls12", "--resume-with", "session-id"]);
    assert_eq!(
        resumed, 0,
        "session-id only resumed without a session cache"
    );
    let (handshakes, resumed) =
        bench_resumption(s.tls(), &ca, &["--tls12", "--resume-with", "ticket"]);
    assert!(resumed >= handshakes - 4, "{resumed} of {handshakes}");
}

#[test]
fn wwep_resume_with_is_refused_where_it_means_nothing() {
    let s = TestServer::start();
    let ca = s.pki.path("ca.pem");
    let refused = |args: &[&str], words: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
        cmd.arg("--server").arg(s.tls().to_string()).args(args);
        let out = run_with_input(&mut cmd, b"");
        let text = describe(&cmd, &out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains(words), "{text}");
        assert_eq!(stderr.lines().count(), 1, "one line: {text}");
    };
    let ca = ca.to_str().unwrap();
    let bench = ["bench", "--requests", "1", "--warmup", "0", "--quiet"];
    // TLS 1.3 has no session-ID resumption.
    let session_id = [
        "--tls",
        "--ca",
        ca,
        "--resume",
        "--resume-with",
        "session-id",
    ];
    for then in [&bench[..], &["read", "1", "1"][..]] {
        refused(
            &[&session_id[..], then].concat(),
            "--resume-with session-id needs bench --tls12",
        );
    }
    // Without --resume, or without TLS, there is nothing to resume.
    let args = [
        &["--tls", "--ca", ca, "--resume-with", "ticket"][..],
        &bench[..],
        &["--tls12"][..],
    ]
    .concat();
    refused(&args, "--resume-with needs --resume");
    refused(
        &["--resume-with", "ticket", "read", "1", "1"],
        "--resume-with needs --tls",
    );
}
