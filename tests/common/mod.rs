//! Shared helpers for the integration tests: certificates made for the test, a
//! server on ephemeral loopback ports, and clients that never wait forever.
#![allow(dead_code)]

pub mod c_build;
mod http_client;
mod redis_server;
#[allow(unused_imports)] // only the HTTP tests use it
pub use http_client::{HttpAnswer, http_get, http_get_from};
#[allow(unused_imports)] // not every test binary starts a Redis
pub use redis_server::{RedisServer, free_port};

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509Name, X509NameBuilder};
use wwep::config::ServerConfig;
use wwep::net::server::{RunningServer, Stats};
use wwep::tls::IdentitySource;

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long counts may take to settle after the connection that made them closed.
pub const COUNTS_SETTLE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa2048,
    EcP256,
    /// What old course material used; refused by OpenSSL's default security level.
    Rsa1024,
}

pub fn new_key(kind: KeyKind) -> PKey<Private> {
    match kind {
        KeyKind::Rsa2048 => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
        KeyKind::Rsa1024 => PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap(),
        KeyKind::EcP256 => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
        }
    }
}

/// A certificate with its key.
pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
}

/// How a test certificate is made.
pub struct CertSpec<'a> {
    pub cn: &'a str,
    pub sans: &'a [&'a str],
    pub kind: KeyKind,
    pub digest: MessageDigest,
    /// Validity as seconds relative to now.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub client: bool,
}

impl<'a> CertSpec<'a> {
    pub fn server(cn: &'a str) -> Self {
        CertSpec {
            cn,
            sans: &["localhost", "127.0.0.1"],
            kind: KeyKind::EcP256,
            digest: MessageDigest::sha256(),
            not_before: -3600,
            not_after: 30 * 86400 * 12,
            is_ca: false,
            client: false,
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Makes a certificate signed by `issuer`, or self-signed when `issuer` is None.
pub fn issue(spec: &CertSpec, issuer: Option<&Issued>) -> Issued {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, spec.cn).unwrap();
    issue_with_subject(spec, name.build(), issuer)
}

/// [`issue`] with a subject made by the test (`spec.cn` unused): several
/// CNs, or one of an odd string type.
pub fn issue_with_subject(spec: &CertSpec, name: X509Name, issuer: Option<&Issued>) -> Issued {
    let key = new_key(spec.kind);
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand_u32()).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now_unix() + spec.not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now_unix() + spec.not_after).unwrap())
        .unwrap();
    if spec.is_ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
    } else {
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        let eku = if spec.client {
            ExtendedKeyUsage::new().client_auth().build().unwrap()
        } else {
            ExtendedKeyUsage::new().server_auth().build().unwrap()
        };
        b.append_extension(eku).unwrap();
    }
    if !spec.sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in spec.sans {
            if s.parse::<std::net::IpAddr>().is_ok() {
                san.ip(s);
            } else {
                san.dns(s);
            }
        }
        let ctx = match issuer {
            Some(i) => b.x509v3_context(Some(&i.cert), None),
            None => b.x509v3_context(None, None),
        };
        let ext = san.build(&ctx).unwrap();
        b.append_extension(ext).unwrap();
    }
    match issuer {
        Some(i) => {
            b.set_issuer_name(i.cert.subject_name()).unwrap();
            b.sign(&i.key, spec.digest).unwrap();
        }
        None => {
            b.set_issuer_name(&name).unwrap();
            b.sign(&key, spec.digest).unwrap();
        }
    }
    Issued {
        cert: b.build(),
        key,
    }
}

/// A TLS client that accepts any certificate, as course boards that knew
/// their server's was old did.
pub fn unverifying_connector() -> native_tls::TlsConnector {
    let mut builder = native_tls::TlsConnector::builder();
    builder.danger_accept_invalid_certs(true);
    builder.build().unwrap()
}

/// What old course material shipped: a self-signed RSA certificate signed
/// with SHA-1 that expired two years ago, for "old course server".
pub fn old_course_certificate() -> Issued {
    let years = |n: i64| n * 365 * 86400;
    let spec = CertSpec {
        kind: KeyKind::Rsa2048,
        digest: MessageDigest::sha1(),
        ..CertSpec::server("old course server")
    };
    let expired = CertSpec {
        not_before: -years(3),
        not_after: -years(2),
        ..spec
    };
    issue(&expired, None)
}

fn rand_u32() -> u32 {
    let mut buf = [0u8; 4];
    openssl::rand::rand_bytes(&mut buf).unwrap();
    u32::from_le_bytes(buf) >> 1
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate,
/// written as PEM files into a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Issued,
    pub server: Issued,
    pub client: Issued,
}

impl Pki {
    pub fn new(kind: KeyKind) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        // Each test CA has its own name, as real CAs do; OpenSSL finds issuers by name.
        let ca_name = format!("wwep test CA {:08x}", rand_u32());
        let ca = issue(
            &CertSpec {
                is_ca: true,
                sans: &[],
                kind,
                ..CertSpec::server(&ca_name)
            },
            None,
        );
        let server = issue(
            &CertSpec {
                kind,
                ..CertSpec::server("localhost")
            },
            Some(&ca),
        );
        let client = issue(
            &CertSpec {
                kind,
                sans: &[],
                client: true,
                ..CertSpec::server("test client")
            },
            Some(&ca),
        );
        let pki = Pki {
            dir,
            ca,
            server,
            client,
        };
        pki.write("ca.pem", &pki.ca.cert.to_pem().unwrap());
        pki.write("server.pem", &pki.server.cert.to_pem().unwrap());
        pki.write(
            "server.key",
            &pki.server.key.private_key_to_pem_pkcs8().unwrap(),
        );
        pki.write("client.pem", &pki.client.cert.to_pem().unwrap());
        pki.write(
            "client.key",
            &pki.client.key.private_key_to_pem_pkcs8().unwrap(),
        );
        pki
    }

    /// A server certificate from this CA for `name` alone (its CN and only SAN).
    pub fn issue_for(&self, name: &str) -> Issued {
        issue(
            &CertSpec {
                sans: &[name],
                ..CertSpec::server(name)
            },
            Some(&self.ca),
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes `issued` as `<stem>.pem` and its key as `<stem>.key` (PKCS#8).
    pub fn write_issued(&self, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.write(&format!("{stem}.pem"), &issued.cert.to_pem().unwrap());
        let key = self.write(
            &format!("{stem}.key"),
            &issued.key.private_key_to_pem_pkcs8().unwrap(),
        );
        (cert, key)
    }

    pub fn identity(&self) -> IdentitySource {
        IdentitySource::Pem {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
        }
    }

    pub fn connector(&self) -> native_tls::TlsConnector {
        native_tls::TlsConnector::builder()
            .add_root_certificate(
                native_tls::Certificate::from_pem(&self.ca.cert.to_pem().unwrap()).unwrap(),
            )
            .disable_built_in_roots(true)
            .build()
            .unwrap()
    }
}

/// A server on 127.0.0.1 with both listeners on ephemeral ports; shut down and
/// joined on drop.
pub struct TestServer {
    server: Option<RunningServer>,
    pub pki: Arc<Pki>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::with(|_| {})
    }

    pub fn with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::with_pki(Arc::new(Pki::new(KeyKind::EcP256)), adjust)
    }

    pub fn with_pki(pki: Arc<Pki>, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let _ = env_logger::builder().is_test(true).try_init();
        let mut config = ServerConfig {
            bind: "127.0.0.1".parse().unwrap(),
            plain_port: Some(0),
            tls_port: Some(0),
            identity: Some(pki.identity()),
            ..ServerConfig::default()
        };
        adjust(&mut config);
        let server = wwep::net::server::start(config).expect("server starts");
        TestServer {
            server: Some(server),
            pki,
        }
    }

    /// A server serving `identity`, with `pki` for its clients to trust.
    pub fn serving(pki: Pki, identity: IdentitySource) -> TestServer {
        Self::with_pki(Arc::new(pki), |c| c.identity = Some(identity))
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn plain(&self) -> SocketAddr {
        self.server().plain_addr().unwrap()
    }

    /// Waits until exactly `n` connections are in flight; false after `limit`.
    pub fn in_flight_becomes(&self, n: usize, limit: Duration) -> bool {
        eventually(limit, || self.server().stats().in_flight == n)
    }

    /// The counters once `settled` holds (a transaction is counted when it is
    /// recorded, just after its connection has closed), or as they are after
    /// `COUNTS_SETTLE` for the caller's assertion to report.
    pub fn stats_when(&self, settled: impl Fn(&Stats) -> bool) -> Stats {
        let mut last = self.server().stats();
        eventually(COUNTS_SETTLE, || {
            last = self.server().stats();
            settled(&last)
        });
        last
    }

    /// Asserts the reply to each request, in order, one connection each, on
    /// the open port.
    pub fn plain_replies(&self, script: &[(&[u8], &[u8])]) {
        assert_replies(|request| self.plain_transact(request), script);
    }

    /// [`TestServer::plain_replies`] on the TLS port.
    pub fn tls_replies(&self, script: &[(&[u8], &[u8])]) {
        assert_replies(|request| self.tls_transact(request), script);
    }

    pub fn tls(&self) -> SocketAddr {
        self.server().tls_addr().unwrap()
    }

    /// One transaction on the open port: send, half-close nothing, read to EOF.
    pub fn plain_transact(&self, request: &[u8]) -> Vec<u8> {
        transact(&mut connect(self.plain()), request)
    }

    /// One transaction on the TLS port, verifying the server against the test CA.
    pub fn tls_transact(&self, request: &[u8]) -> Vec<u8> {
        let tcp = connect(self.tls());
        let mut tls = self
            .pki
            .connector()
            .connect("localhost", tcp)
            .expect("handshake");
        transact(&mut tls, request)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown();
        }
    }
}

fn assert_replies(transact: impl Fn(&[u8]) -> Vec<u8>, script: &[(&[u8], &[u8])]) {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    for (request, want) in script {
        let got = transact(request);
        assert!(
            got == *want,
            "the reply to {:?} is {:?}, not {:?}",
            text(request),
            text(&got),
            text(want)
        );
    }
}

/// A connection from a chosen loopback source address (127.0.0.x), with read and
/// write timeouts.
pub fn try_connect_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    let source: std::net::IpAddr = source.parse().expect("a source address");
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// [`try_connect_from`], which must succeed.
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    try_connect_from(source, addr)
        .unwrap_or_else(|e| panic!("connect from {source} to {addr}: {e}"))
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Writes `request` and reads until the server closes.
pub fn transact(stream: &mut (impl Read + Write), request: &[u8]) -> Vec<u8> {
    stream.write_all(request).expect("write request");
    read_to_close(stream)
}

pub fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read failed after {:?}: {e}", String::from_utf8_lossy(&out)),
        }
    }
}

/// Reads exactly `n` bytes the way a device client does: within `within`,
/// without closing its side.
pub fn read_exact_within(stream: &mut TcpStream, n: usize, within: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut out[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => panic!("no reply within {within:?} (had {got} bytes): {e}"),
        }
    }
    out.truncate(got);
    out
}

pub fn half_close(stream: &TcpStream) {
    stream.shutdown(Shutdown::Write).unwrap();
}

/// Polls `check` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`eventually`] for checks that cost a round trip to another process (a
/// transaction through a store, a Redis command): polled every 100 ms.
pub fn patiently(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    eventually(limit, || {
        check() || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    })
}

/// Whether an external tool is on PATH. A missing tool skips the test (see
/// [`skip`]), unless WWEP_REQUIRE_TOOLS=1, where it fails it.
pub fn have_tool(name: &str) -> bool {
    let found = on_path(name);
    if !found {
        if std::env::var("WWEP_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{name} is required (WWEP_REQUIRE_TOOLS=1) but not installed");
        }
        skip(&format!("{name} is not installed"));
    }
    found
}

/// Whether `name` is an executable file in a folder on PATH (nothing recorded).
pub fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(name))))
}

/// Whether the file or folder at `path` was last modified more than `age` ago
/// (false when that cannot be told).
pub fn older_than(path: &Path, age: Duration) -> bool {
    let modified = std::fs::metadata(path).and_then(|m| m.modified());
    modified.is_ok_and(|t| t.elapsed().is_ok_and(|elapsed| elapsed > age))
}

/// One TCP connection as the kernel reports it (`ss -tin`).
#[derive(Debug)]
pub struct TcpQueue {
    /// The other end's address.
    pub peer: SocketAddr,
    /// Bytes that arrived on this side.
    pub received: u64,
    /// Bytes that arrived but the owner of the socket has not read yet.
    pub unread: u64,
}

/// The established TCP connections whose local port is `port`, from the
/// kernel (iproute2's `ss`; check [`have_tool`]`("ss")` first): a signal from
/// outside a process of what it has read, when it says nothing itself.
pub fn tcp_queues(port: u16) -> Vec<TcpQueue> {
    let filter = format!("sport = :{port}");
    let out = Command::new("ss")
        .args(["-Htin", "state", "established", &filter])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut queues: Vec<TcpQueue> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) {
            // Recv-Q, Send-Q, the local address, the peer's.
            let unread = fields[0].parse().expect("Recv-Q");
            let peer = fields[3].parse().expect("the peer's address");
            queues.push(TcpQueue {
                peer,
                received: 0,
                unread,
            });
        } else if let Some(last) = queues.last_mut() {
            // The details: bytes_received:N is left out while it is 0.
            let received = fields
                .iter()
                .find_map(|f| f.strip_prefix("bytes_received:"));
            last.received = received.map_or(0, |n| n.parse().expect("bytes_received"));
        }
    }
    queues
}

/// Says that the running test returns without testing, and why. libtest can
/// only report it as passed, so the test and the reason are also appended to
/// the file named by WWEP_SKIP_FILE (set by `make test`), from which
/// scripts/test-summary.sh counts it as skipped instead.
pub fn skip(reason: &str) {
    eprintln!("skipping: {reason}");
    let Some(file) = std::env::var_os("WWEP_SKIP_FILE") else {
        return;
    };
    // The test binary's name without cargo's hash, then libtest's name for the
    // thread running the test: unique across the whole run.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| {
            s.rsplit_once('-')
                .map_or(s.clone(), |(name, _)| name.to_string())
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unknown");
    let line = format!("{binary}::{test}\t{reason}\n");
    // One short write to a file opened for appending lands whole even when
    // tests in parallel skip at once.
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = appended {
        panic!(
            "cannot record the skip in {}: {e}",
            Path::new(&file).display()
        );
    }
}

/// Server flags for loopback and ephemeral ports, as every test server uses.
pub const LOOPBACK_EPHEMERAL: [&str; 6] = [
    "--bind",
    "127.0.0.1",
    "--plain-port",
    "0",
    "--tls-port",
    "0",
];

/// `wwep-server` with [`LOOPBACK_EPHEMERAL`], not started.
pub fn server_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep-server"));
    cmd.args(LOOPBACK_EPHEMERAL);
    cmd
}

/// `--cert` and `--key` naming `cert` and `key`, as the server and the client take them.
pub fn identity_args<'a>(cert: &'a Path, key: &'a Path) -> [&'a str; 4] {
    let text = |p: &'a Path| p.to_str().expect("a UTF-8 path");
    ["--cert", text(cert), "--key", text(key)]
}

/// A PKCS#12 bundle of a certificate and its key, as DER.
pub fn pkcs12(issued: &Issued, name: &str, password: &str) -> Vec<u8> {
    openssl::pkcs12::Pkcs12::builder()
        .name(name)
        .pkey(&issued.key)
        .cert(&issued.cert)
        .build2(password)
        .unwrap()
        .to_der()
        .unwrap()
}

/// A `wwep-server` process on ephemeral loopback ports, killed by PID on drop.
pub struct ServerProcess {
    pub child: Child,
    pub plain: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_env(args, &[])
    }

    /// [`ServerProcess::start`] serving the test PKI's server certificate and key.
    pub fn with_pki(pki: &Pki, args: &[&str]) -> ServerProcess {
        Self::with_identity(&pki.path("server.pem"), &pki.path("server.key"), args)
    }

    /// [`ServerProcess::start`] serving the certificate file `cert` with `key`.
    pub fn with_identity(cert: &Path, key: &Path, args: &[&str]) -> ServerProcess {
        let mut full = identity_args(cert, key).to_vec();
        full.extend_from_slice(args);
        Self::start(&full)
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut full = LOOPBACK_EPHEMERAL.to_vec();
        full.extend_from_slice(args);
        Self::spawn(&full, env)
    }

    /// Starts the server with exactly `args` and waits for its listeners.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep-server"));
        cmd.args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn wwep-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
            });
        }
        let wants_plain = !args.contains(&"--no-plain");
        let wants_tls =
            !args.contains(&"--no-tls") && !env.iter().any(|(k, _)| *k == "WWEP_NO_TLS");
        let until = Instant::now() + Duration::from_secs(20);
        let mut proc = ServerProcess {
            plain: None,
            tls: None,
            child,
            log,
        };
        while (wants_plain && proc.plain.is_none()) || (wants_tls && proc.tls.is_none()) {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let addr = line.rsplit(' ').next().and_then(|a| a.parse().ok());
                    if line.contains("plain listener on") {
                        proc.plain = addr;
                    } else if line.contains("tls listener on") {
                        proc.tls = addr;
                    }
                }
                Err(_) => panic!(
                    "wwep-server did not report its listeners: {:?}",
                    proc.log.lock().unwrap()
                ),
            }
        }
        proc
    }

    /// Whether `request` on the open port is answered `want` within `limit`,
    /// asked again every 100 ms or so (a store may still be coming back).
    pub fn answers_within(&self, request: &[u8], want: &[u8], limit: Duration) -> bool {
        let plain = self.plain.expect("the open port");
        patiently(limit, || transact(&mut connect(plain), request) == want)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The HTTP side's address, waiting up to 10 s for the server to log it.
    pub fn await_http_addr(&self) -> SocketAddr {
        let mut addr = None;
        assert!(
            eventually(Duration::from_secs(10), || {
                addr = self.http_addr();
                addr.is_some()
            }),
            "no HTTP address logged:\n{}",
            self.log_text()
        );
        addr.expect("set when eventually succeeded")
    }

    /// Fails the test, showing the log, unless a line containing `needle`
    /// is logged within `limit`.
    pub fn assert_logs_within(&self, needle: &str, limit: Duration) {
        assert!(
            eventually(limit, || self.log_text().contains(needle)),
            "no log line with {needle:?} within {limit:?}:\n{}",
            self.log_text()
        );
    }

    /// The HTTP side's address, from the line the server logs when its HTTP
    /// listener is up (`--http 127.0.0.1:0`); `None` before that line.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.log_text()
            .lines()
            .find_map(|l| l.split("http listener on ").nth(1))
            .and_then(|a| a.split(['"', ' ']).next())
            .and_then(|a| a.trim().parse().ok())
    }

    /// Sends a signal by name (`TERM`, `HUP`, `KILL`) to the server's PID.
    pub fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {}", self.child.id()))
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = &mut self.child;
        let mut status = None;
        let exited = eventually(limit, || {
            status = child.try_wait().unwrap_or(None);
            status.is_some()
        });
        status.filter(|_| exited)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command with stdin from `input`; kills it by PID if it has not finished
/// within 20 seconds.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    std::process::Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// The one `wwep-server:` line a refusal prints on stderr; fails the test,
/// showing `text`, when there is none or more than one.
pub fn the_error_line(stderr: &[u8], text: &str) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let mut errors = stderr.lines().filter(|l| l.starts_with("wwep-server:"));
    match (errors.next(), errors.next()) {
        (Some(line), None) => line.to_string(),
        _ => panic!("not one error line: {text}"),
    }
}

pub fn describe(cmd: &Command, out: &std::process::Output) -> String {
    format!(
        "command: {cmd:?}\nstatus: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn file_exists(p: &Path) -> bool {
    p.exists()
}

/// A PKCS#12 file of `cert` and `key` made by `openssl pkcs12 -export -legacy`
/// (the contents under RC2-40 and 3DES, as OpenSSL 1.x and older tools write
/// them), checked to really be RC2; `None` (the test skipped) without the
/// openssl command.
pub fn legacy_pkcs12(cert: &Path, key: &Path, out: &Path, password: &str) -> Option<PathBuf> {
    if !have_tool("openssl") {
        return None;
    }
    let pass = format!("pass:{password}");
    let mut cmd = Command::new("openssl");
    cmd.args(["pkcs12", "-export", "-legacy", "-in"])
        .arg(cert)
        .arg("-inkey")
        .arg(key)
        .arg("-out")
        .arg(out)
        .args(["-passout", &pass]);
    let made = run_with_input(&mut cmd, b"");
    assert!(made.status.success(), "{}", describe(&cmd, &made));
    let mut cmd = Command::new("openssl");
    cmd.args(["pkcs12", "-info", "-noout", "-legacy", "-in"])
        .arg(out)
        .args(["-passin", &pass]);
    let info = run_with_input(&mut cmd, b"");
    assert!(
        String::from_utf8_lossy(&info.stderr).contains("40BitRC2"),
        "{}",
        describe(&cmd, &info)
    );
    Some(out.to_path_buf())
}

/// The long flags a `--help` output lists (`--help` and `--version` left
/// out), each with its block of text (description, `[env: …]`, `[default: …]`).
pub fn help_flags(help: &str) -> Vec<(String, String)> {
    let mut flags: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let flag_line = line.starts_with("  ")
            && (trimmed.starts_with("--")
                || trimmed.starts_with('-') && trimmed.get(2..4) == Some(", "));
        let long = trimmed.split_whitespace().find(|w| w.starts_with("--"));
        match (flag_line, long) {
            (true, Some(long)) => {
                let name = long.trim_end_matches(',').to_string();
                flags.push((name, String::new()));
            }
            _ => {
                if let Some((_, block)) = flags.last_mut() {
                    block.push_str(trimmed);
                    block.push(' ');
                }
            }
        }
    }
    flags.retain(|(f, _)| f != "--help" && f != "--version");
    flags
}

/// Whether `text` mentions `flag` as a whole word (`--resume` is not found
/// in `--resume-with`).
pub fn mentions_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        !text[at + flag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}
