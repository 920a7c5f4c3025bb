//! Mutual TLS: the TLS listener with `--client-ca` admits only clients whose
//! certificate was signed by that CA, and logs who they are.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use wwep::tls::ClientAuth;

fn mtls_server(pki: Arc<Pki>) -> TestServer {
    let ca = pki.path("ca.pem");
    TestServer::with_pki(pki, |c| c.client_auth = ClientAuth::Required { ca })
}

fn connector(pki: &Pki, client: Option<&Issued>, max_tls12: bool) -> native_tls::TlsConnector {
    let mut b = native_tls::TlsConnector::builder();
    b.add_root_certificate(
        native_tls::Certificate::from_pem(&pki.ca.cert.to_pem().unwrap()).unwrap(),
    )
    .disable_built_in_roots(true);
    if max_tls12 {
        b.max_protocol_version(Some(native_tls::Protocol::Tlsv12));
    }
    if let Some(client) = client {
        let identity = native_tls::Identity::from_pkcs8(
            &client.cert.to_pem().unwrap(),
            &client.key.private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        b.identity(identity);
    }
    b.build().unwrap()
}

/// Tries one write; returns the reply, or None when the server refused.
fn try_write(s: &TestServer, connector: &native_tls::TlsConnector) -> Option<Vec<u8>> {
    let mut tls = connector.connect("localhost", connect(s.tls())).ok()?;
    std::io::Write::write_all(&mut tls, b"W0FAC0B0001").ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match std::io::Read::read(&mut tls, &mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return if out.is_empty() { None } else { Some(out) },
        }
    }
}

#[test]
fn a_client_certificate_from_the_ca_is_admitted() {
    for kind in [KeyKind::EcP256, KeyKind::Rsa2048] {
        let pki = Arc::new(Pki::new(kind));
        let s = mtls_server(Arc::clone(&pki));
        for tls12 in [false, true] {
            assert_eq!(
                try_write(&s, &connector(&pki, Some(&pki.client), tls12)),
                Some(b"A0FAC0B0001".to_vec())
            );
        }
    }
}

#[test]
fn no_certificate_or_a_stranger_is_refused() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let stranger = Pki::new(KeyKind::EcP256);
    let s = mtls_server(Arc::clone(&pki));
    for tls12 in [false, true] {
        assert_eq!(
            try_write(&s, &connector(&pki, None, tls12)),
            None,
            "no certificate, tls12={tls12}"
        );
        assert_eq!(
            try_write(&s, &connector(&pki, Some(&stranger.client), tls12)),
            None,
            "foreign certificate, tls12={tls12}"
        );
    }
    assert_eq!(
        s.server().store().unwrap().read(0x0FAC, 0x0B),
        None,
        "nothing was written"
    );
    // The open port is unaffected.
    assert_eq!(s.plain_transact(b"R0FAC0B"), b"X");
}

#[test]
fn cli_client_certificate_and_logged_common_name() {
    let pki = Pki::new(KeyKind::EcP256);
    let ca = pki.path("ca.pem");
    let server = ServerProcess::with_pki(&pki, &["--client-ca", ca.to_str().unwrap()]);
    let srv = format!("localhost:{}", server.tls.unwrap().port());
    let wwep = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
        cmd.args(["--server", &srv, "--tls", "--ca", ca.to_str().unwrap()])
            .args(extra);
        let out = run_with_input(&mut cmd, b"");
        let text = describe(&cmd, &out);
        (out, text)
    };
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let (out, text) = wwep(&[&identity_args(&cert, &key)[..], &["write", "1", "2", "3"]].concat());
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(out.stdout, b"A0001020003\n", "{text}");
    // The same certificate from a PKCS#12 bundle.
    let p12 = pki.write("client.p12", &pkcs12(&pki.client, "client", "pw"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
    cmd.args([
        "--server",
        &srv,
        "--tls",
        "--ca",
        ca.to_str().unwrap(),
        "--pkcs12",
    ])
    .arg(&p12)
    .args(["read", "1", "2"])
    .env("WWEP_PKCS12_PASSWORD", "pw");
    let out = run_with_input(&mut cmd, b"");
    assert_eq!(out.stdout, b"A0001020003\n", "{}", describe(&cmd, &out));
    let (out, text) = wwep(&["read", "1", "2"]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{text}"
    );
    let within = std::time::Duration::from_secs(5);
    server.assert_logs_within("handshake failed: certificate required", within);
    server.assert_logs_within(
        "cn=\"test client\" \"W0001020003\" -> \"A0001020003\"",
        within,
    );
}

/// A client certificate from `pki`'s CA valid from `not_before` to
/// `not_after`, in seconds from now.
fn client_valid(pki: &Pki, not_before: i64, not_after: i64) -> Issued {
    let spec = CertSpec {
        sans: &[],
        client: true,
        not_before,
        not_after,
        ..CertSpec::server("wwep-04FB")
    };
    issue(&spec, Some(&pki.ca))
}

/// Sends `request` over TLS as `client`; the reply, or None when the server
/// refused the client.
fn exchange(
    pki: &Pki,
    tls: SocketAddr,
    client: &Issued,
    tls12: bool,
    request: &[u8],
) -> Option<Vec<u8>> {
    let connector = connector(pki, Some(client), tls12);
    let mut stream = connector.connect("localhost", connect(tls)).ok()?;
    // TLS 1.3: the server judges the certificate after the client's side of
    // the handshake is done, so a refusal shows on the first read.
    std::io::Write::write_all(&mut stream, request).ok()?;
    let mut buf = [0u8; 16];
    match std::io::Read::read(&mut stream, &mut buf) {
        Ok(n) if n > 0 => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// The value of the `wwep_tls_handshake_failures_total` series of `kind`.
fn failures_of_kind(metrics: &str, kind: &str) -> Option<u64> {
    let series = format!("wwep_tls_handshake_failures_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn expired_and_not_yet_valid_client_certificates_are_their_own_kinds() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let stranger = Pki::new(KeyKind::EcP256);
    let ca = pki.path("ca.pem");
    let server = ServerProcess::with_pki(
        &pki,
        &["--client-ca", ca.to_str().unwrap(), "--http", "127.0.0.1:0"],
    );
    let http = server.await_http_addr();
    let day = 86_400;
    let expired = client_valid(&pki, -30 * day, -day);
    let not_yet = client_valid(&pki, day, 30 * day);
    let tls = server.tls.unwrap();
    let try_as = |client: &Issued, tls12: bool| {
        let reply = exchange(&pki, tls, client, tls12, b"W04FB050001");
        assert_eq!(reply, None, "served anyway");
    };
    let expected = [
        ("expired", 2),
        ("not_yet_valid", 2),
        ("unknown_ca", 1),
        ("revoked", 0),
    ];
    for tls12 in [false, true] {
        try_as(&expired, tls12);
        try_as(&not_yet, tls12);
    }
    try_as(&stranger.client, false);
    let mut text = String::new();
    let counted = eventually(COUNTS_SETTLE, || {
        text = http_get(http, "/metrics").body;
        expected
            .iter()
            .all(|(kind, n)| failures_of_kind(&text, kind) == Some(*n))
    });
    assert!(counted, "{expected:?} in\n{text}");
    // Each kind has its own line (one a second per kind, so each is shown).
    let within = std::time::Duration::from_secs(5);
    server.assert_logs_within(
        "handshake failed: certificate expired (certificate has expired)",
        within,
    );
    server.assert_logs_within(
        "handshake failed: certificate not yet valid (certificate is not yet valid)",
        within,
    );
    server.assert_logs_within("handshake failed: unknown CA", within);
    let log = server.log_text();
    assert!(
        !log.contains("unknown CA (certificate has expired)"),
        "{log}"
    );
    // The store was never reached.
    assert_eq!(
        transact(&mut connect(server.plain.unwrap()), b"R04FB05"),
        b"X"
    );
}

/// An empty CRL of `pki`'s CA valid from `last_update` to `next_update`
/// (seconds from now), made with the openssl crate as a CA would sign it, as
/// PEM, with its nextUpdate as Unix time and in OpenSSL's words.
fn crl_of(pki: &Pki, last_update: i64, next_update: i64) -> (Vec<u8>, i64, String) {
    use openssl::asn1::{Asn1Object, Asn1OctetString, Asn1Time};
    use openssl::x509::extension::AuthorityKeyIdentifier;
    use openssl::x509::{X509Builder, X509CrlBuilder, X509Extension};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let next_unix = now + next_update;
    let next = Asn1Time::from_unix(next_unix).unwrap();
    let mut b = X509CrlBuilder::new().unwrap();
    b.set_issuer_name(pki.ca.cert.subject_name()).unwrap();
    b.set_last_update(&Asn1Time::from_unix(now + last_update).unwrap())
        .unwrap();
    b.set_next_update(&next).unwrap();
    let context = X509Builder::new().unwrap();
    let akid = AuthorityKeyIdentifier::new()
        .issuer(true)
        .build(&context.x509v3_context(Some(&pki.ca.cert), None))
        .unwrap();
    b.append_extension(akid).unwrap();
    // cRLNumber (2.5.29.20): INTEGER 1.
    let number = X509Extension::new_from_der(
        &Asn1Object::from_str("2.5.29.20").unwrap(),
        false,
        &Asn1OctetString::new_from_bytes(&[0x02, 0x01, 0x01]).unwrap(),
    )
    .unwrap();
    b.append_extension(number).unwrap();
    b.sign(&pki.ca.key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let pem = b.build().unwrap().to_pem().unwrap();
    (pem, next_unix, next.to_string())
}

/// The value of the gauge `name` (a series without labels).
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    let series = format!("{name} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn a_stale_client_crl_is_blamed_not_the_ca_and_said_at_start_and_reload() {
    const GAUGE: &str = "wwep_tls_client_crl_next_update_seconds";
    let day = 86_400;
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let (expired, expired_at, expired_text) = crl_of(&pki, -8 * day, -day);
    let crl_path = pki.write("clients.crl", &expired);
    let ca = pki.path("ca.pem");
    let server = ServerProcess::with_pki(
        &pki,
        &[
            "--client-ca",
            ca.to_str().unwrap(),
            "--client-crl",
            crl_path.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ],
    );
    let http = server.await_http_addr();
    let tls = server.tls.unwrap();
    let within = Duration::from_secs(5);
    // Start still succeeds (a stale list must not take the port down at a
    // restart), saying which file went stale and when.
    let ca_cn = pki.ca.cert.subject_name().entries().next().unwrap();
    let ca_cn = ca_cn.data().to_string().unwrap();
    server.assert_logs_within(
        &format!(
            "{}: the CRL of CN={ca_cn} passed its nextUpdate on {expired_text}",
            crl_path.display(),
        ),
        within,
    );
    // A client with a good certificate is refused, and the list is blamed.
    for tls12 in [false, true] {
        let reply = exchange(&pki, tls, &pki.client, tls12, b"W0FAC0B0001");
        assert_eq!(reply, None, "served with a stale CRL, tls12={tls12}");
    }
    let metrics_settle = |expected: &[(&str, u64)], next_update: i64| {
        let mut text = String::new();
        let settled = eventually(COUNTS_SETTLE, || {
            text = http_get(http, "/metrics").body;
            gauge(&text, GAUGE) == Some(next_update)
                && expected
                    .iter()
                    .all(|(kind, n)| failures_of_kind(&text, kind) == Some(*n))
        });
        assert!(settled, "{expected:?}, {GAUGE} {next_update} in\n{text}");
    };
    metrics_settle(&[("crl", 2), ("unknown_ca", 0)], expired_at);
    server.assert_logs_within(
        "handshake failed: client CRL out of date or unusable (CRL has expired)",
        within,
    );
    assert!(
        !server.log_text().contains("unknown CA"),
        "{}",
        server.log_text()
    );
    // The operator installs a fresh list and reloads: the client is served.
    let (fresh, fresh_at, _) = crl_of(&pki, -3600, 7 * day);
    pki.write("clients.crl", &fresh);
    server.signal("HUP");
    let reloads = |n: usize| {
        eventually(within, || {
            server
                .log_text()
                .matches("SIGHUP: reloaded the TLS")
                .count()
                == n
        })
    };
    assert!(reloads(1), "{}", server.log_text());
    assert_eq!(
        exchange(&pki, tls, &pki.client, false, b"W0FAC0B0002"),
        Some(b"A0FAC0B0002".to_vec())
    );
    metrics_settle(&[("crl", 2), ("unknown_ca", 0)], fresh_at);
    // A list dated tomorrow (this server's clock behind the CA's) is loaded
    // at reload with a warning, and refuses the client under the same kind.
    let (future, future_at, _) = crl_of(&pki, day, 8 * day);
    pki.write("clients.crl", &future);
    server.signal("HUP");
    assert!(reloads(2), "{}", server.log_text());
    server.assert_logs_within(
        &format!(
            "{}: the CRL of CN={ca_cn} is not valid before",
            crl_path.display()
        ),
        within,
    );
    // Its refusals are logged under the same kind: at most one line a
    // second per kind, so the client tries until one is shown.
    let line = "handshake failed: client CRL out of date or unusable (CRL is not yet valid)";
    let mut attempts = 0;
    let logged = patiently(within, || {
        attempts += 1;
        let reply = exchange(&pki, tls, &pki.client, false, b"W0FAC0B0003");
        assert_eq!(reply, None, "served with a CRL not valid yet");
        server.log_text().contains(line)
    });
    assert!(logged, "no {line:?} in\n{}", server.log_text());
    metrics_settle(&[("crl", 2 + attempts), ("unknown_ca", 0)], future_at);
    assert_eq!(
        transact(&mut connect(server.plain.unwrap()), b"R0FAC0B"),
        b"A0FAC0B0002",
        "only the write made with a fresh list was stored"
    );
}

#[test]
fn a_crl_from_another_ca_is_blamed_not_the_ca() {
    // The operator gives the CRL of another CA: OpenSSL finds no list for
    // the clients' CA and refuses every one of them.
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let other = Pki::new(KeyKind::EcP256);
    let (list, _, _) = crl_of(&other, -3600, 7 * 86_400);
    let crl_path = pki.write("other.crl", &list);
    let ca = pki.path("ca.pem");
    let server = ServerProcess::with_pki(
        &pki,
        &[
            "--client-ca",
            ca.to_str().unwrap(),
            "--client-crl",
            crl_path.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ],
    );
    let http = server.await_http_addr();
    let reply = exchange(
        &pki,
        server.tls.unwrap(),
        &pki.client,
        false,
        b"W0FAC0B0001",
    );
    assert_eq!(reply, None, "served without its CA's CRL");
    let mut text = String::new();
    let counted = eventually(COUNTS_SETTLE, || {
        text = http_get(http, "/metrics").body;
        failures_of_kind(&text, "crl") == Some(1)
            && failures_of_kind(&text, "unknown_ca") == Some(0)
    });
    assert!(counted, "{text}");
    server.assert_logs_within(
        "handshake failed: client CRL out of date or unusable (unable to get certificate CRL)",
        Duration::from_secs(5),
    );
}
