//! The TLS port: the spec's sequence over native-tls, every key form the course
//! hands out, old certificates, protocol versions and hostile handshakes.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use wwep::tls::{Identity, IdentitySource};

#[test]
fn spec_sequence_over_tls_rsa() {
    let s = TestServer::with_pki(Arc::new(Pki::new(KeyKind::Rsa2048)), |_| {});
    s.tls_replies(&[
        (b"R0FAC0B", b"X"),
        (b"W0FAC0B1234", b"A0FAC0B1234"),
        (b"R0FAC0B\r\n", b"A0FAC0B1234\r\n"),
        (b"W01234\n", b"X\n"),
    ]);
    // Both listeners share one store.
    s.plain_replies(&[
        (b"R0FAC0B", b"A0FAC0B1234"),
        (b"W0FAC0B4321", b"A0FAC0B4321"),
    ]);
    assert_eq!(s.tls_transact(b"R0FAC0B"), b"A0FAC0B4321");
}

#[test]
fn tls_device_client_without_terminator_or_close() {
    tls_answered_within_500ms(b"W0FAC0B0001", b"A0FAC0B0001");
}

#[test]
fn short_illegal_message_over_tls_is_answered_promptly() {
    tls_answered_within_500ms(b"W01234", b"X");
}

/// Over a fresh handshake, sends `request` with neither a terminator nor a
/// close and expects `want` within 500 ms.
fn tls_answered_within_500ms(request: &[u8], want: &[u8]) {
    let s = TestServer::start();
    let tcp = connect(s.tls());
    let mut tls = s.pki.connector().connect("localhost", tcp).unwrap();
    tls.write_all(request).unwrap();
    tls.get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut reply = vec![0u8; want.len()];
    std::io::Read::read_exact(&mut tls, &mut reply).expect("reply within 500 ms");
    assert_eq!(reply, want);
}

fn serves_with_key(name: &str, key_pem: &[u8], pki: Pki) {
    let key = pki.write(name, key_pem);
    let cert = pki.path("server.pem");
    serves(
        pki,
        IdentitySource::Pem { cert, key },
        &format!("key form {name}"),
    );
}

/// The TLS port answers a client that verifies `identity` with the test CA.
fn serves(pki: Pki, identity: IdentitySource, what: &str) {
    let s = TestServer::serving(pki, identity);
    assert_eq!(s.tls_transact(b"W0001020003"), b"A0001020003", "{what}");
}

#[test]
fn every_key_form_openssl_writes_is_accepted() {
    let pki = Pki::new(KeyKind::Rsa2048);
    let pkcs1 = pki.server.key.rsa().unwrap().private_key_to_pem().unwrap();
    assert!(pkcs1.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
    serves_with_key("pkcs1.key", &pkcs1, pki);

    let pki = Pki::new(KeyKind::EcP256);
    let sec1 = pki
        .server
        .key
        .ec_key()
        .unwrap()
        .private_key_to_pem()
        .unwrap();
    assert!(sec1.starts_with(b"-----BEGIN EC PRIVATE KEY-----"));
    serves_with_key("sec1.key", &sec1, pki);

    let pki = Pki::new(KeyKind::EcP256);
    let pkcs8 = pki.server.key.private_key_to_pem_pkcs8().unwrap();
    assert!(pkcs8.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    serves_with_key("pkcs8.key", &pkcs8, pki);

    let pki = Pki::new(KeyKind::EcP256);
    let der = pki.server.key.private_key_to_der().unwrap();
    serves_with_key("der.key", &der, pki);
}

#[test]
fn pkcs12_identity_is_accepted() {
    let pki = Pki::new(KeyKind::EcP256);
    let file = pki.write("server.p12", &pkcs12(&pki.server, "server", "s3cret"));
    let wrong = IdentitySource::Pkcs12 {
        file: file.clone(),
        password: "wrong".into(),
    };
    let err = Identity::load(&wrong)
        .err()
        .expect("wrong password is refused");
    assert_eq!(err.path, file);
    assert_eq!(err.kind, wwep::tls::TlsErrorKind::Pkcs12Locked, "{err}");
    let password = "s3cret".into();
    serves(pki, IdentitySource::Pkcs12 { file, password }, "PKCS#12");
}

#[test]
fn intermediates_in_the_cert_file_are_sent() {
    let pki = Pki::new(KeyKind::EcP256);
    let intermediate = issue(
        &CertSpec {
            is_ca: true,
            sans: &[],
            ..CertSpec::server("wwep intermediate")
        },
        Some(&pki.ca),
    );
    let leaf = issue(&CertSpec::server("localhost"), Some(&intermediate));
    let mut chain = leaf.cert.to_pem().unwrap();
    chain.extend(intermediate.cert.to_pem().unwrap());
    let cert = pki.write("chain.pem", &chain);
    let key = pki.write("leaf.key", &leaf.key.private_key_to_pem_pkcs8().unwrap());
    // The client trusts only the root: the handshake needs the intermediate.
    serves(pki, IdentitySource::Pem { cert, key }, "the chain");
}

#[test]
fn expired_sha1_self_signed_certificate_loads_with_a_warning() {
    let pki = Pki::new(KeyKind::Rsa2048);
    let old = old_course_certificate();
    let cert = pki.write("old.pem", &old.cert.to_pem().unwrap());
    let key = pki.write(
        "old.key",
        &old.key.rsa().unwrap().private_key_to_pem().unwrap(),
    );
    let source = IdentitySource::Pem {
        cert: cert.clone(),
        key: key.clone(),
    };
    let identity = Identity::load(&source).expect("old certificate loads");
    let warnings = identity.expiry_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("CN=old course server") && warnings[0].contains("expired"));
    // A client that knows the certificate is old skips verification, as course
    // boards did; the server must still serve it.
    unverified_write(&TestServer::serving(pki, source), "the old certificate");
}

/// A write through `s`'s TLS port from a client that accepts any certificate.
fn unverified_write(s: &TestServer, what: &str) {
    let mut tls = unverifying_connector()
        .connect("localhost", connect(s.tls()))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(transact(&mut tls, b"W0001020003"), b"A0001020003", "{what}");
}

#[test]
fn old_weak_certificates_are_still_served() {
    // RSA-1024 self-signed, and a SHA-1 leaf signed by an (RSA-2048) CA: both
    // refused by OpenSSL's default security level, both in course material.
    let pki = Pki::new(KeyKind::Rsa2048);
    let sha1 = |kind, cn| CertSpec {
        kind,
        digest: MessageDigest::sha1(),
        ..CertSpec::server(cn)
    };
    let short_key = issue(&sha1(KeyKind::Rsa1024, "rsa1024 board server"), None);
    let sha1_leaf = issue(&sha1(KeyKind::Rsa2048, "sha1 leaf"), Some(&pki.ca));
    let pki = Arc::new(pki);
    for (name, issued) in [("short", &short_key), ("sha1", &sha1_leaf)] {
        let (cert, key) = pki.write_issued(name, issued);
        let identity = IdentitySource::Pem { cert, key };
        let s = TestServer::with_pki(Arc::clone(&pki), |c| c.identity = Some(identity));
        unverified_write(&s, name);
    }
}

#[test]
fn certificate_expiring_soon_is_warned_about() {
    let pki = Pki::new(KeyKind::EcP256);
    let ten_days = CertSpec {
        not_after: 10 * 86400,
        ..CertSpec::server("soon")
    };
    let (cert, key) = pki.write_issued("soon", &issue(&ten_days, Some(&pki.ca)));
    let identity = Identity::load(&IdentitySource::Pem { cert, key }).unwrap();
    let warnings = identity.expiry_warnings();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("CN=soon") && warnings[0].contains("days left"),
        "{warnings:?}"
    );
    let fresh = Identity::load(&pki.identity()).unwrap();
    assert!(fresh.expiry_warnings().is_empty());
}

fn openssl_client(min: SslVersion, max: SslVersion) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    // Let this client offer old protocol versions at all.
    b.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
    b.set_min_proto_version(Some(min)).unwrap();
    b.set_max_proto_version(Some(max)).unwrap();
    b.build()
}

#[test]
fn tls_1_1_client_is_refused_and_tls_1_2_accepted() {
    let s = TestServer::start();
    let old = openssl_client(SslVersion::TLS1_1, SslVersion::TLS1_1);
    assert!(
        old.connect("localhost", connect(s.tls())).is_err(),
        "TLS 1.1 must be refused"
    );
    let tls12 = openssl_client(SslVersion::TLS1_2, SslVersion::TLS1_2);
    let mut stream = tls12
        .connect("localhost", connect(s.tls()))
        .expect("TLS 1.2 works");
    assert_eq!(stream.ssl().version_str(), "TLSv1.2");
    assert_eq!(transact(&mut stream, b"W0001020003"), b"A0001020003");
}

#[test]
fn plain_bytes_on_the_tls_port_leave_the_server_healthy() {
    let s = TestServer::start();
    let mut c = connect(s.tls());
    c.write_all(b"W0FAC0B1234\n").unwrap();
    // The handshake fails; the server closes (an alert or nothing, never a reply).
    let reply = read_to_close_lenient(&mut c);
    assert!(!reply.starts_with(b"A"), "{reply:?}");
    assert_eq!(
        s.tls_transact(b"R0FAC0B"),
        b"X",
        "the plain bytes wrote nothing"
    );
    assert_eq!(s.plain_transact(b"W0FAC0B0001"), b"A0FAC0B0001");
}

#[test]
fn unfinished_handshake_is_dropped_after_the_timeout() {
    // Long enough for a handshake on a busy machine, short for a test.
    let s = TestServer::with(|c| c.timeout = Duration::from_millis(1000));
    let mut c = connect(s.tls());
    let started = Instant::now();
    assert!(read_to_close_lenient(&mut c).is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert!(s.in_flight_becomes(0, Duration::from_secs(2)));
    assert_eq!(s.tls_transact(b"W0FAC0B0001"), b"A0FAC0B0001");
}

/// Reads until close, treating a reset as the end.
fn read_to_close_lenient(c: &mut std::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match std::io::Read::read(c, &mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A first byte that is no command is answered at once: with a 3 s gap, the
/// `X` still comes long before the gap could have ended.
#[test]
fn a_lowercase_command_over_tls_is_answered_without_the_gap() {
    let s = TestServer::with(|c| {
        c.gap = Duration::from_secs(3);
        c.timeout = Duration::from_secs(10);
    });
    let tcp = connect(s.tls());
    let mut tls = s.pki.connector().connect("localhost", tcp).unwrap();
    let started = std::time::Instant::now();
    tls.write_all(b"w0fac0b1234").unwrap();
    tls.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = [0u8; 1];
    std::io::Read::read_exact(&mut tls, &mut reply).expect("a reply");
    assert_eq!(&reply, b"X");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "X after {:?}: the gap was waited",
        started.elapsed()
    );
}

/// How many lines of its kind each handshake-failure line of `kind` says
/// were held back before it, in order.
fn held_back_by_line(log: &str, kind: &str) -> Vec<u64> {
    let needle = format!("handshake failed: {kind}");
    log.lines()
        .filter(|line| line.contains(&needle))
        .map(|line| {
            line.strip_suffix(" more like this not shown)")
                .and_then(|head| head.rsplit_once(" (").map(|(_, n)| n))
                .map_or(0, |n| n.parse().expect("a count"))
        })
        .collect()
}

/// The handshake-failure line is limited to one a second for each kind, and
/// the count of lines held back that each carries is its own kind's: plain
/// text on the TLS port is never counted on a protocol-version line.
#[test]
fn held_back_handshake_failures_are_counted_by_kind() {
    let pki = Pki::new(KeyKind::EcP256);
    let server = ServerProcess::with_pki(&pki, &[]);
    let tls = server.tls.unwrap();
    let old = openssl_client(SslVersion::TLS1_1, SslVersion::TLS1_1);
    let version = || assert!(old.connect("localhost", connect(tls)).is_err());
    let plain = || {
        let mut c = connect(tls);
        c.write_all(b"W0FAC0B1234\n").unwrap();
        read_to_close_lenient(&mut c);
    };
    let kinds: [(&str, &dyn Fn()); 2] = [("protocol version", &version), ("not TLS", &plain)];
    let mut driven = [0u64; 2];
    // A burst of both kinds, interleaved.
    let started = Instant::now();
    for i in 0..7 {
        let k = i % 2;
        kinds[k].1();
        driven[k] += 1;
    }
    let burst = started.elapsed();
    let lines = |k: usize| held_back_by_line(&server.log_text(), kinds[k].0);
    // Once the second has passed, one more of each kind is shown with its
    // count. (Tried again a second later should the machine be so slow that
    // the first try was held back.)
    for (k, (kind, drive)) in kinds.iter().enumerate() {
        let shown = lines(k).len();
        let new_line = (0..4).any(|_| {
            std::thread::sleep(Duration::from_millis(1100));
            drive();
            driven[k] += 1;
            eventually(Duration::from_secs(2), || lines(k).len() > shown)
        });
        assert!(new_line, "no new {kind} line:\n{}", server.log_text());
    }
    for (k, (kind, _)) in kinds.iter().enumerate() {
        let held = lines(k);
        // Every failure of the kind is on its lines: shown, or counted as
        // held back by the next line of its kind, and by no other's.
        let accounted: u64 = held.iter().map(|n| 1 + n).sum();
        assert_eq!(
            accounted,
            driven[k],
            "{kind}: {held:?} for {} failures\n{}",
            driven[k],
            server.log_text()
        );
        // A burst well within the second is one line, then one line
        // counting the rest of it.
        if burst < Duration::from_millis(500) {
            assert_eq!(held, [0, driven[k] - 2], "{kind} after a {burst:?} burst");
        }
    }
}

/// `SCHED_BATCH`, as `/proc/PID/task/TID/stat` shows a thread's policy.
const SCHED_BATCH: u32 = 3;

/// Each thread's name (as `/proc` shortens it) and scheduling policy.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut threads = Vec::new();
    for task in tasks {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // The fields after the name's closing parenthesis start at the
        // third (the state); the policy is the 41st.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        threads.push((name.trim().to_string(), policy));
    }
    threads
}

#[test]
fn the_tls_accept_thread_is_a_batch_thread_and_no_other_is() {
    let pki = Pki::new(KeyKind::EcP256);
    let server = ServerProcess::with_pki(&pki, &[]);
    // A thread names itself, and sets its policy, once it runs: give the
    // accept thread its moment.
    let pid = server.child.id();
    let until = Instant::now() + Duration::from_secs(5);
    let mut threads = thread_policies(pid);
    let batch_accept = |threads: &[(String, u32)]| {
        let batch = (String::from("wwep-accept-tls"), SCHED_BATCH);
        threads.contains(&batch)
    };
    while !batch_accept(&threads) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        threads = thread_policies(pid);
    }
    let policy_of = |name: &str| -> Vec<u32> {
        let of_name = threads.iter().filter(|(n, _)| n == name);
        of_name.map(|&(_, policy)| policy).collect()
    };
    assert_eq!(policy_of("wwep-accept-tls"), [SCHED_BATCH], "{threads:?}");
    // The plain port's accept thread serves connections itself.
    assert_eq!(policy_of("wwep-accept-pla"), [0], "{threads:?}");
    let workers = policy_of("wwep-worker");
    assert!(
        !workers.is_empty() && workers.iter().all(|&p| p == 0),
        "{threads:?}"
    );
    assert!(!server.log_text().contains("stays a normal thread"));
}
