//! Mutual TLS: the TLS listener with `--client-ca` admits only clients whose
//! certificate was signed by that CA, and logs who they are.

use std::process::Command;
use std::sync::Arc;

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
        let connector = connector(&pki, Some(client), tls12);
        let refused = match connector.connect("localhost", connect(tls)) {
            Err(_) => true,
            Ok(mut stream) => {
                // TLS 1.3: the server judges the certificate after the
                // client's side of the handshake is done.
                let _ = std::io::Write::write_all(&mut stream, b"W04FB050001");
                let mut buf = [0u8; 16];
                !matches!(std::io::Read::read(&mut stream, &mut buf), Ok(n) if n > 0)
            }
        };
        assert!(refused, "served anyway");
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
