//! Authorization with `--acl`: boards with their own certificates write only
//! their own device; rules by address on the open port; first match wins and
//! anything no rule allows is refused; SIGHUP reloads the rules (and keeps them
//! when the new file is broken); `--check-acl`; README's example file and flow.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use wwep::acl::{Acl, Certificate, CommonName, Peer};
use wwep::protocol::{ErrorDetail, Request};
use wwep::tls::ClientAuth;

/// A board's client certificate: CN `wwep-<device>`, signed by the test CA.
fn board(pki: &Pki, device: &str) -> Issued {
    let cn = format!("wwep-{device}");
    issue(
        &CertSpec {
            sans: &[],
            client: true,
            ..CertSpec::server(&cn)
        },
        Some(&pki.ca),
    )
}

/// A client certificate with alternative names (and a CN that is no board's).
fn named(pki: &Pki, cn: &str, sans: &[&str]) -> Issued {
    issue(
        &CertSpec {
            sans,
            client: true,
            ..CertSpec::server(cn)
        },
        Some(&pki.ca),
    )
}

fn connector(pki: &Pki, client: Option<&Issued>) -> native_tls::TlsConnector {
    let mut b = native_tls::TlsConnector::builder();
    b.add_root_certificate(
        native_tls::Certificate::from_pem(&pki.ca.cert.to_pem().unwrap()).unwrap(),
    )
    .disable_built_in_roots(true);
    if let Some(client) = client {
        b.identity(
            native_tls::Identity::from_pkcs8(
                &client.cert.to_pem().unwrap(),
                &client.key.private_key_to_pem_pkcs8().unwrap(),
            )
            .unwrap(),
        );
    }
    b.build().unwrap()
}

/// One transaction on the TLS port as `client`.
fn tls_as(addr: SocketAddr, pki: &Pki, client: Option<&Issued>, request: &str) -> String {
    let mut tls = connector(pki, client)
        .connect("localhost", connect(addr))
        .expect("handshake");
    String::from_utf8(transact(&mut tls, request.as_bytes())).unwrap()
}
fn plain_from(source: &str, addr: SocketAddr, request: &str) -> String {
    String::from_utf8(transact(
        &mut connect_from(source, addr),
        request.as_bytes(),
    ))
    .unwrap()
}

/// A server with `rules` as its `--acl`, `X` explained, and client
/// certificates from the test CA required when `mutual`.
fn acl_server(pki: Arc<Pki>, rules: &str, mutual: bool) -> TestServer {
    let acl = pki.write("rules.acl", rules.as_bytes());
    let ca = pki.path("ca.pem");
    TestServer::with_pki(pki, |c| {
        c.acl = Some(acl);
        c.error_detail = ErrorDetail::Explained;
        if mutual {
            c.client_auth = ClientAuth::Required { ca };
        }
    })
}

const BOARDS: &str = "allow any-certificate read,write self\n";

#[test]
fn a_board_writes_its_own_device_and_is_refused_another() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let (a, b) = (board(&pki, "04FB"), board(&pki, "0500"));
    let s = acl_server(Arc::clone(&pki), BOARDS, true);
    let tls = s.tls();
    assert_eq!(tls_as(tls, &pki, Some(&a), "W04FB050001"), "A04FB050001");
    assert_eq!(tls_as(tls, &pki, Some(&a), "R04FB05"), "A04FB050001");
    assert_eq!(tls_as(tls, &pki, Some(&b), "W0500050001"), "A0500050001");
    // Another board's device: neither written nor read, and the store untouched.
    assert_eq!(tls_as(tls, &pki, Some(&a), "W0500050000"), "X forbidden");
    assert_eq!(tls_as(tls, &pki, Some(&a), "R050005"), "X forbidden");
    assert_eq!(tls_as(tls, &pki, Some(&b), "W04FB0500FF"), "X forbidden");
    assert_eq!(tls_as(tls, &pki, Some(&b), "R050005"), "A0500050001");
    assert_eq!(tls_as(tls, &pki, Some(&a), "R04FB05"), "A04FB050001");
    // A client certificate whose CN carries no device id has no `self`.
    let gateway = named(&pki, "gateway", &[]);
    assert_eq!(tls_as(tls, &pki, Some(&gateway), "R04FB05"), "X forbidden");
    // Lower-case hex, a line end: the same request, the same verdict.
    assert_eq!(
        tls_as(tls, &pki, Some(&a), "W04fb050002\n"),
        "A04FB050002\n"
    );
    assert_eq!(
        tls_as(tls, &pki, Some(&a), "W0500050002\n"),
        "X forbidden\n"
    );
    // Malformed requests are still judged as malformed, not as forbidden.
    assert_eq!(tls_as(tls, &pki, Some(&a), "W01234"), "X bad length");
    // The open port has no certificate, so no `self`: nothing is allowed there.
    assert_eq!(
        String::from_utf8(s.plain_transact(b"R04FB05")).unwrap(),
        "X forbidden"
    );
    assert_eq!(s.stats_when(|st| st.forbidden >= 6).forbidden, 6);
}

/// A client certificate from the test CA whose subject holds `cns`, in
/// order, each of ASN.1 string type `kind` (UTF8String when `None`).
fn with_cns(pki: &Pki, cns: &[&str], kind: Option<openssl::asn1::Asn1Type>) -> Issued {
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    for cn in cns {
        let nid = openssl::nid::Nid::COMMONNAME;
        match kind {
            None => name.append_entry_by_nid(nid, cn).unwrap(),
            Some(kind) => name.append_entry_by_nid_with_type(nid, cn, kind).unwrap(),
        }
    }
    let spec = CertSpec {
        sans: &[],
        client: true,
        ..CertSpec::server("unused")
    };
    issue_with_subject(&spec, name.build(), Some(&pki.ca))
}

/// The lines of `log` saying which rule refused a request.
fn forbidden_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("forbidden by")).collect()
}

#[test]
fn a_certificate_with_two_cns_is_no_one_for_self() {
    let pki = Pki::new(KeyKind::EcP256);
    let rules = "deny cn:wwep-0BAD read,write *\n\
                 allow any-certificate read,write self\n\
                 allow any-certificate read 0500\n";
    let acl = pki.write("rules.acl", rules.as_bytes());
    let ca = pki.path("ca.pem");
    let server = ServerProcess::with_pki(
        &pki,
        &[
            "--client-ca",
            ca.to_str().unwrap(),
            "--acl",
            acl.to_str().unwrap(),
            "--explain-errors",
        ],
    );
    let tls = server.tls.unwrap();
    let board = board(&pki, "0500");
    assert_eq!(
        tls_as(tls, &pki, Some(&board), "W0500050001"),
        "A0500050001"
    );
    // The subject CA front ends built on Go read as wwep-04FB and OpenSSL's
    // lookup as wwep-0500: `self` is neither.
    let two = with_cns(&pki, &["wwep-0500", "wwep-04FB"], None);
    assert_eq!(tls_as(tls, &pki, Some(&two), "W0500050002"), "X forbidden");
    let within = Duration::from_secs(5);
    server.assert_logs_within("forbidden by", within);
    let log = server.log_text();
    let line = forbidden_lines(&log)[0];
    assert!(
        line.contains(
            "cn=\"wwep-0500\" cn=\"wwep-04FB\" \"W0500050002\" (write of register 05 of device 0500): no rule allows it (default deny); no cn: or self rule grants anything to this certificate: its subject has 2 CNs"
        ),
        "{line}"
    );
    assert_eq!(tls_as(tls, &pki, Some(&two), "W04FB050002"), "X forbidden");
    // A rule that grants by other means still applies.
    assert_eq!(tls_as(tls, &pki, Some(&two), "R050005"), "A0500050001");
    // And a deny rule reads every CN: a second one does not escape it.
    let bad = with_cns(&pki, &["wwep-0BAD", "wwep-0500"], None);
    assert_eq!(tls_as(tls, &pki, Some(&bad), "R050005"), "X forbidden");
    // The refusals wrote nothing.
    assert_eq!(tls_as(tls, &pki, Some(&board), "R050005"), "A0500050001");
    assert!(
        !server.log_text().contains("\"A04FB05"),
        "{}",
        server.log_text()
    );
}

#[test]
fn a_certificate_whose_cn_is_not_text_is_no_one_for_self() {
    let pki = Pki::new(KeyKind::EcP256);
    let acl = pki.write("rules.acl", BOARDS.as_bytes());
    let ca = pki.path("ca.pem");
    let server = ServerProcess::with_pki(
        &pki,
        &[
            "--client-ca",
            ca.to_str().unwrap(),
            "--acl",
            acl.to_str().unwrap(),
        ],
    );
    let tls = server.tls.unwrap();
    // A CN stored as a BIT STRING (a type a name may hold): OpenSSL verifies the certificate but
    // cannot read the name as text.
    let octets = with_cns(
        &pki,
        &["wwep-04FB"],
        Some(openssl::asn1::Asn1Type::BIT_STRING),
    );
    assert_eq!(tls_as(tls, &pki, Some(&octets), "W04FB050001"), "X");
    server.assert_logs_within("forbidden by", Duration::from_secs(5));
    let log = server.log_text();
    let line = forbidden_lines(&log)[0];
    assert!(
        line.contains(
            "cn=\"wwep-04FB\" \"W04FB050001\" (write of register 05 of device 04FB): no rule allows it (default deny); no cn: or self rule grants anything to this certificate: its CN is not text"
        ),
        "{line}"
    );
    // The same name as text is the board.
    let board = board(&pki, "04FB");
    assert_eq!(
        tls_as(tls, &pki, Some(&board), "W04FB050001"),
        "A04FB050001"
    );
}

#[test]
fn read_only_register_ranges() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let a = board(&pki, "04FB");
    let rules = "# the test sets registers up from 127.0.0.2 on the open port\n\
                 allow from:127.0.0.2 write *\n\
                 # a board writes 00-7F of its own device and only reads the rest\n\
                 allow any-certificate read,write self 00-7F\n\
                 allow any-certificate read self\n";
    let s = acl_server(Arc::clone(&pki), rules, true);
    let tls = s.tls();
    assert_eq!(
        plain_from("127.0.0.2", s.plain(), "W04FB800007"),
        "A04FB800007"
    );
    for (request, want) in [
        ("W04FB000001", "A04FB000001"),
        ("W04FB7F0001", "A04FB7F0001"),
        ("W04FB800001", "X forbidden"),
        ("W04FBFF0001", "X forbidden"),
        ("R04FB80", "A04FB800007"),
        ("R04FBFF", "X not found"),
        ("R04FB80", "A04FB800007"),
    ] {
        assert_eq!(tls_as(tls, &pki, Some(&a), request), want, "{request}");
    }
}

#[test]
fn names_and_globs_from_the_certificate() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let rules = "allow from:127.0.0.2 write *\n\
                 allow cn:gateway-* read *\n\
                 allow san:*.boards.example read,write 0100-01FF\n\
                 allow san:10.9.8.7 read,write 0200\n";
    let s = acl_server(Arc::clone(&pki), rules, true);
    let tls = s.tls();
    let gateway = named(&pki, "gateway-1", &[]);
    let by_dns = named(&pki, "x", &["gw.boards.example"]);
    let by_ip = named(&pki, "y", &["10.9.8.7"]);
    assert_eq!(
        plain_from("127.0.0.2", s.plain(), "W0300010001"),
        "A0300010001"
    );
    for (client, request, want) in [
        (&gateway, "R030001", "A0300010001"),
        (&gateway, "W0300010002", "X forbidden"),
        (&by_dns, "W01FF010001", "A01FF010001"),
        (&by_dns, "W0200010001", "X forbidden"),
        (&by_ip, "W0200010001", "A0200010001"),
        (&by_ip, "W0100010001", "X forbidden"),
    ] {
        assert_eq!(tls_as(tls, &pki, Some(client), request), want, "{request}");
    }
}

#[test]
fn address_rules_on_the_open_port() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let rules = "allow from:127.0.0.2 read,write *\n\
                 allow from:127.0.0.0/8 read 0000-00FF\n";
    let s = acl_server(pki, rules, false);
    let plain = s.plain();
    assert_eq!(plain_from("127.0.0.2", plain, "W0001050001"), "A0001050001");
    assert_eq!(plain_from("127.0.0.3", plain, "R000105"), "A0001050001");
    assert_eq!(plain_from("127.0.0.3", plain, "W0001050002"), "X forbidden");
    assert_eq!(plain_from("127.0.0.3", plain, "R010005"), "X forbidden");
    assert_eq!(plain_from("127.0.0.2", plain, "W0100050003"), "A0100050003");
    // The same addresses on the TLS port (no client certificates here).
    assert_eq!(tls_as(s.tls(), &s.pki, None, "W0001050004"), "X forbidden");
    assert_eq!(tls_as(s.tls(), &s.pki, None, "R000105"), "A0001050001");
    assert_eq!(s.stats_when(|st| st.forbidden >= 3).forbidden, 3);
}

#[test]
fn anyone_and_the_first_match_wins() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let rules = "deny anyone write 0001\n\
                 allow anyone read,write *\n\
                 deny anyone read,write *\n";
    let s = acl_server(pki, rules, false);
    for request in ["W0001050001", "W0001FF0001"] {
        assert_eq!(
            String::from_utf8(s.plain_transact(request.as_bytes())).unwrap(),
            "X forbidden"
        );
        assert_eq!(tls_as(s.tls(), &s.pki, None, request), "X forbidden");
    }
    assert_eq!(
        String::from_utf8(s.plain_transact(b"W0002050001")).unwrap(),
        "A0002050001"
    );
    assert_eq!(tls_as(s.tls(), &s.pki, None, "R000205"), "A0002050001");
    assert_eq!(tls_as(s.tls(), &s.pki, None, "R000105"), "X not found");
}

#[test]
fn an_empty_rule_file_refuses_everything() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let a = board(&pki, "04FB");
    let s = acl_server(Arc::clone(&pki), "# no rules yet\n", true);
    assert_eq!(
        tls_as(s.tls(), &pki, Some(&a), "W04FB050001"),
        "X forbidden"
    );
    assert_eq!(tls_as(s.tls(), &pki, Some(&a), "R04FB05"), "X forbidden");
    assert_eq!(
        String::from_utf8(s.plain_transact(b"R04FB05\n")).unwrap(),
        "X forbidden\n"
    );
    assert_eq!(s.stats_when(|st| st.forbidden >= 3).forbidden, 3);
    // Nothing was written: once reads are allowed (a reload), there is nothing.
    s.pki.write("rules.acl", b"allow anyone read *\n");
    let reloaded = s.server().control().reload_acl().unwrap().unwrap();
    assert_eq!(reloaded.rules().len(), 1);
    assert_eq!(tls_as(s.tls(), &pki, Some(&a), "R04FB05"), "X not found");
}

#[test]
fn without_acl_everyone_may_do_everything() {
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let a = board(&pki, "04FB");
    let ca = pki.path("ca.pem");
    let s = TestServer::with_pki(Arc::clone(&pki), |c| {
        c.client_auth = ClientAuth::Required { ca }
    });
    assert_eq!(
        tls_as(s.tls(), &pki, Some(&a), "W0500050001"),
        "A0500050001"
    );
    assert_eq!(s.plain_transact(b"W0600050001"), b"A0600050001");
    assert_eq!(s.stats_when(|st| st.transactions >= 2).forbidden, 0);
}

#[test]
fn a_broken_file_stops_the_server_from_starting() {
    let pki = Pki::new(KeyKind::EcP256);
    let acl = pki.write(
        "broken.acl",
        b"allow anyone read *\nallow anyone write 0500-0400\n",
    );
    let mut cmd = server_cmd();
    cmd.args(["--no-tls", "--acl"]).arg(&acl);
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let said = format!(
        "wwep-server: {} line 2: range '0500-0400' ends before it starts",
        acl.display()
    );
    assert_eq!(the_error_line(&out.stderr, &text), said, "{text}");
}

#[test]
fn sighup_reloads_the_rules_and_keeps_them_when_the_file_is_broken() {
    let pki = Pki::new(KeyKind::EcP256);
    let a = board(&pki, "04FB");
    let acl = pki.write("rules.acl", BOARDS.as_bytes());
    let ca = pki.path("ca.pem");
    let server = ServerProcess::with_pki(
        &pki,
        &[
            "--client-ca",
            ca.to_str().unwrap(),
            "--acl",
            acl.to_str().unwrap(),
        ],
    );
    let tls = server.tls.unwrap();
    assert_eq!(tls_as(tls, &pki, Some(&a), "W04FB050001"), "A04FB050001");
    assert_eq!(tls_as(tls, &pki, Some(&a), "W0500050001"), "X");
    // The log names who, from where, what, and why.
    server.assert_logs_within(
        &format!("forbidden by {}: tls 127.0.0.1:", acl.display()),
        Duration::from_secs(5),
    );
    let log = server.log_text();
    let line = log.lines().find(|l| l.contains("forbidden by")).unwrap();
    assert!(
        line.contains(
            "cn=\"wwep-04FB\" \"W0500050001\" (write of register 05 of device 0500): no rule allows it (default deny)"
        ),
        "{line}"
    );
    // A valid new file: writes to the board's own device are now refused too.
    pki.write(
        "rules.acl",
        b"deny any-certificate write self\nallow any-certificate read self\n",
    );
    server.signal("HUP");
    let reloaded = format!("SIGHUP: reloaded the acl {}: 2 rules", acl.display());
    server.assert_logs_within(&reloaded, Duration::from_secs(5));
    assert_eq!(tls_as(tls, &pki, Some(&a), "W04FB050002"), "X");
    assert_eq!(tls_as(tls, &pki, Some(&a), "R04FB05"), "A04FB050001");
    // A broken file: refused as a whole, with one line naming file and line;
    // its first line would allow the write, but the old rules stay.
    pki.write(
        "rules.acl",
        b"allow anyone read,write *\nallow everyone read *\n",
    );
    server.signal("HUP");
    let refused = format!(
        "SIGHUP: keeping the old acl rules: {} line 2: unknown who 'everyone'",
        acl.display()
    );
    server.assert_logs_within(&refused, Duration::from_secs(5));
    assert_eq!(tls_as(tls, &pki, Some(&a), "W04FB050003"), "X");
    assert_eq!(tls_as(tls, &pki, Some(&a), "R04FB05"), "A04FB050001");
    // Every TLS transaction line shows the certificate's identity (a line is
    // written just after its reply, so the last may still be on its way).
    let transaction = |l: &&str| l.contains(" -> \"");
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_text()
            .lines()
            .filter(transaction)
            .count()
            == 6),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    let transactions: Vec<&str> = log.lines().filter(transaction).collect();
    assert!(
        transactions.iter().all(|l| l.contains("cn=\"wwep-04FB\"")),
        "{log}"
    );
}

fn check_acl(file: &Path) -> (std::process::Output, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep-server"));
    cmd.arg("--check-acl").arg(file);
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    (out, text)
}

#[test]
fn check_acl_prints_the_rules_or_the_line_that_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.acl");
    std::fs::write(
        &good,
        "# boards\nself-cn board-{DEVICE}\nallow any-certificate read,write self 00-7f\n\nallow from:10.0.0.0/8 read *\n",
    )
    .unwrap();
    let (out, text) = check_acl(&good);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{}: 2 rules, first match wins; a request no rule allows is refused\n\
             self = the device id in a certificate CN like board-{{DEVICE}}\n\
             line 3: allow any-certificate read,write self 00-7F\n    \
             any client certificate may read and write registers 00-7F of its own device (the id in a CN like board-{{DEVICE}})\n\
             line 5: allow from:10.0.0.0/8 read * *\n    \
             any client from 10.0.0.0/8 may read every register of every device\n",
            good.display()
        ),
        "{text}"
    );
    assert!(out.stderr.is_empty(), "{text}");

    let bad = dir.path().join("bad.acl");
    std::fs::write(&bad, "allow anyone read *\n\nallow anyone read * 100\n").unwrap();
    let (out, text) = check_acl(&bad);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(out.stdout.is_empty(), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "wwep-server: {} line 3: bad registers '100': expected *, a 1-2 digit hex register or a range like 00-7F\n",
            bad.display()
        ),
        "{text}"
    );

    let missing = dir.path().join("missing.acl");
    let (out, text) = check_acl(&missing);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "wwep-server: {}: cannot read the rule file: ",
            missing.display()
        )) && stderr.lines().count() == 1,
        "{text}"
    );
}

fn repo(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

/// The fenced blocks in the "Authorization" section of docs/authorization.md, in order.
fn readme_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo("docs/authorization.md")).unwrap();
    let section = readme
        .split("\n## Authorization\n")
        .nth(1)
        .expect("docs/authorization.md has an Authorization section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("\n```")
        .skip(1)
        .step_by(2)
        // Drop the info string after the opening fence.
        .map(|block| {
            block
                .split_once('\n')
                .map_or("", |(_, body)| body)
                .to_string()
                + "\n"
        })
        .collect()
}

/// The first of them: the example rule file.
fn readme_example() -> String {
    readme_blocks().into_iter().next().expect("a fenced block")
}

#[test]
fn readme_example_parses_and_gives_each_board_its_own_device() {
    let text = readme_example();
    let acl = Acl::parse(text.as_bytes(), Path::new("docs/authorization.md"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(repo("dist/boards.acl")).unwrap(),
        text,
        "dist/boards.acl is the README's example"
    );
    let rules: Vec<String> = acl.rules().iter().map(|r| r.to_string()).collect();
    assert_eq!(rules, ["allow any-certificate read,write self *"]);
    let board = Certificate {
        cn: Some(CommonName::One("wwep-04FB".to_string())),
        sans: vec![],
    };
    let as_board = Peer {
        addr: "127.0.0.1".parse().unwrap(),
        certificate: Some(&board),
    };
    let nobody = Peer {
        addr: "127.0.0.1".parse().unwrap(),
        certificate: None,
    };
    let write = |device| Request::Write {
        device,
        register: 5,
        value: 1,
    };
    let read = |device| Request::Read {
        device,
        register: 5,
    };
    assert!(acl.check(&as_board, &write(0x04FB)).allowed);
    assert!(acl.check(&as_board, &read(0x04FB)).allowed);
    assert!(!acl.check(&as_board, &write(0x0500)).allowed);
    assert!(!acl.check(&as_board, &read(0x0500)).allowed);
    assert!(!acl.check(&nobody, &read(0x04FB)).allowed);
}

/// README's flow as an operator runs it: `make certs DEVICE=04FB` (the script
/// it runs), the server with `--client-ca` and `--acl dist/boards.acl`, and
/// the `wwep` client with the board's certificate.
#[test]
fn readme_flow_with_certificates_from_the_script() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let make_certs = |device: &str| {
        let mut cmd = Command::new(repo("scripts/make-certs.sh"));
        cmd.arg(&certs).env("DEVICE", device).env("KEY", "ec");
        let out = run_with_input(&mut cmd, b"");
        (describe(&cmd, &out), out)
    };
    let (text, out) = make_certs("04FB");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("board-04FB.pem"), "{text}");
    let (text, out) = make_certs("0500");
    assert!(out.status.success(), "{text}");
    // Never overwritten; a device id that is not 4 hex digits is refused.
    let before = std::fs::read(certs.join("board-04FB.pem")).unwrap();
    let (text, out) = make_certs("04fb");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("kept existing"), "{text}");
    assert_eq!(std::fs::read(certs.join("board-04FB.pem")).unwrap(), before);
    let (text, out) = make_certs("4FB");
    assert_eq!(out.status.code(), Some(2), "{text}");

    let file = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let acl = repo("dist/boards.acl");
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let server = ServerProcess::with_identity(
        &cert,
        &key,
        &[
            "--client-ca",
            &file("ca.pem"),
            "--acl",
            acl.to_str().unwrap(),
        ],
    );
    let wwep = |board: &str, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
        cmd.args(["--server", &server.tls.unwrap().to_string(), "--tls"])
            .args(["--ca", &file("ca.pem"), "--servername", "localhost"])
            .args(["--cert", &file(&format!("board-{board}.pem"))])
            .args(["--key", &file(&format!("board-{board}.key"))])
            .args(args);
        let out = run_with_input(&mut cmd, b"");
        (describe(&cmd, &out), out)
    };
    let (text, out) = wwep("04FB", &["write", "04FB", "05", "0001"]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "A04FB050001",
        "{text}"
    );
    let (text, out) = wwep("04FB", &["write", "0500", "05", "0001"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "X", "{text}");
    let (text, out) = wwep("0500", &["write", "0500", "05", "0001"]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let (text, out) = wwep("0500", &["read", "04FB", "05"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
}

/// The longer example in README's rule-file section does what the text says.
#[test]
fn readme_rule_file_example_does_what_it_says() {
    let block = readme_blocks()
        .into_iter()
        .find(|b| b.contains("cn:wwep-gateway"))
        .expect("the rule-file example");
    let acl = Acl::parse(block.as_bytes(), Path::new("docs/authorization.md"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(acl.rules().len(), 5);
    let cert = |cn: &str| Certificate {
        cn: Some(CommonName::One(cn.to_string())),
        sans: vec![],
    };
    let (board, gateway) = (cert("wwep-04FB"), cert("wwep-gateway"));
    let check = |addr: &str, certificate: Option<&Certificate>, request: Request| {
        let peer = Peer {
            addr: addr.parse().unwrap(),
            certificate,
        };
        acl.check(&peer, &request).allowed
    };
    let write = |device, register| Request::Write {
        device,
        register,
        value: 1,
    };
    let read = |device, register| Request::Read { device, register };
    let table = [
        ("127.0.0.1", Some(&board), write(0x04FB, 0x7F), true),
        ("127.0.0.1", Some(&board), write(0x04FB, 0x80), false),
        ("127.0.0.1", Some(&board), read(0x04FB, 0x80), true),
        ("127.0.0.1", Some(&board), read(0x0500, 0x05), false),
        ("127.0.0.1", Some(&gateway), read(0x0500, 0x05), true),
        ("127.0.0.1", Some(&gateway), write(0x0500, 0x05), false),
        ("10.1.2.3", None, read(0x0400, 0x05), true),
        ("10.1.2.3", None, read(0x0500, 0x05), false),
        ("10.1.2.3", None, write(0x0400, 0x05), false),
    ];
    for (addr, certificate, request, allowed) in table {
        assert_eq!(
            check(addr, certificate, request),
            allowed,
            "{addr} {certificate:?} {request:?}"
        );
    }
}

/// A board that resumes its TLS session (by session id or ticket, as boards
/// do to save the handshake) is still known by its certificate.
#[test]
fn a_resumed_session_keeps_the_boards_identity() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Arc::new(Pki::new(KeyKind::EcP256));
    let a = board(&pki, "04FB");
    let cert = pki.write("board.pem", &a.cert.to_pem().unwrap());
    let key = pki.write("board.key", &a.key.private_key_to_pem_pkcs8().unwrap());
    let s = acl_server(Arc::clone(&pki), BOARDS, true);
    let s_client = |flags: &[&str], request: &str| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &s.tls().to_string()])
            .args([
                "-servername",
                "localhost",
                "-verify_return_error",
                "-ign_eof",
            ])
            .arg("-CAfile")
            .arg(pki.path("ca.pem"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(flags);
        let out = run_with_input(&mut cmd, request.as_bytes());
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            describe(&cmd, &out),
        )
    };
    let cases: [(&str, &[&str]); 3] = [
        ("tls12-id", &["-tls1_2", "-no_ticket"]),
        ("tls12-ticket", &["-tls1_2"]),
        ("tls13-ticket", &["-tls1_3"]),
    ];
    for (name, flags) in cases {
        let session = pki.path(&format!("session-{name}"));
        let session = session.to_str().unwrap();
        let first = [flags, &["-sess_out", session]].concat();
        let (out, text) = s_client(&first, "W04FB050001\n");
        assert!(
            out.contains("New, TLSv1.") && out.contains("A04FB050001"),
            "{name}: {text}"
        );
        let again = [flags, &["-sess_in", session]].concat();
        let (out, text) = s_client(&again, "W04FB050002\n");
        assert!(
            out.contains("Reused, TLSv1.") && out.contains("A04FB050002"),
            "{name}: {text}"
        );
        let (out, text) = s_client(&again, "W0500050002\n");
        assert!(
            out.contains("Reused, TLSv1.") && out.contains("X forbidden"),
            "{name}: {text}"
        );
    }
}

#[test]
fn help_lists_the_acl_flags() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep-server"));
    cmd.arg("--help");
    let out = run_with_input(&mut cmd, b"");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--acl <FILE>", "WWEP_ACL", "--check-acl <FILE>"] {
        assert!(
            help.contains(flag),
            "--help lacks {flag}: {}",
            describe(&cmd, &out)
        );
    }
}

#[test]
fn certificate_rules_without_client_ca_are_warned_about() {
    let acl = repo("dist/boards.acl");
    let server = ServerProcess::start(&["--no-tls", "--acl", acl.to_str().unwrap()]);
    let warning = format!(
        "acl {}: rules naming certificates never match without --client-ca",
        acl.display()
    );
    assert!(
        server.log_text().contains(&warning),
        "{}",
        server.log_text()
    );
    let reply = transact(&mut connect(server.plain.unwrap()), b"R04FB05");
    assert_eq!(reply, b"X");
}
