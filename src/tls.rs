//! Everything about certificates and keys: loading them from the files an operator
//! or course hands out, and building the acceptors and connectors on top of them.
//!
//! native-tls only takes PKCS#8 keys, so keys are read with the openssl crate it is
//! built on (PKCS#8, PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`, PEM or DER) and
//! handed over as PKCS#8. Every error names the file it is about.

use std::fmt;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

/// A certificate or key file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub path: PathBuf,
    pub problem: String,
}

impl TlsError {
    fn new(path: &Path, problem: impl Into<String>) -> Self {
        TlsError {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for TlsError {}

/// Where a certificate and its private key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A PEM certificate file (leaf first, then intermediates) and a key file.
    Pem { cert: PathBuf, key: PathBuf },
    /// A PKCS#12 bundle and its password.
    Pkcs12 { file: PathBuf, password: String },
}

/// A certificate chain with its private key, checked to belong together.
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// The file the leaf came from, for messages.
    pub cert_path: PathBuf,
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(path, format!("cannot read: {e}")))
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Reads every certificate in a file: PEM with any number of certificates and free
/// text between them, or a single DER certificate (`.cer`).
pub fn load_certificates(path: &Path) -> Result<Vec<X509>, TlsError> {
    let bytes = read_file(path)?;
    let certs =
        if looks_like_pem(&bytes) {
            X509::stack_from_pem(&bytes).map_err(|e| {
                TlsError::new(
                    path,
                    format!("not a valid PEM certificate file ({})", first_reason(&e)),
                )
            })?
        } else {
            vec![X509::from_der(&bytes).map_err(|_| {
                TlsError::new(path, "no certificate found (expected PEM or DER X.509)")
            })?]
        };
    if certs.is_empty() {
        return Err(TlsError::new(
            path,
            "no certificate found (expected PEM or DER X.509)",
        ));
    }
    Ok(certs)
}

/// Reads a private key in any form openssl writes: PKCS#8, PKCS#1 or SEC1, PEM or DER.
/// Encrypted keys are refused with a hint rather than prompting on a terminal.
pub fn load_private_key(path: &Path) -> Result<PKey<Private>, TlsError> {
    let bytes = read_file(path)?;
    if looks_like_pem(&bytes) {
        let text = String::from_utf8_lossy(&bytes);
        if text.contains("ENCRYPTED") {
            return Err(TlsError::new(
                path,
                "private key is encrypted; decrypt it with `openssl pkey -in KEY -out KEY.plain`",
            ));
        }
        if !text.contains("PRIVATE KEY-----") {
            return Err(TlsError::new(
                path,
                "no private key found (expected a PEM PRIVATE KEY block)",
            ));
        }
        // The callback refuses to supply a passphrase, so openssl never prompts.
        PKey::private_key_from_pem_callback(&bytes, |_| Ok(0)).map_err(|e| {
            TlsError::new(
                path,
                format!("not a valid private key ({})", first_reason(&e)),
            )
        })
    } else {
        PKey::private_key_from_der(&bytes)
            .map_err(|_| TlsError::new(path, "no private key found (expected PEM or DER)"))
    }
}

/// The most readable part of an openssl error stack.
fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|err| err.reason().map(str::to_string))
        .unwrap_or_else(|| "unrecognised data".to_string())
}

impl Identity {
    /// Loads and cross-checks a certificate chain and key.
    pub fn load(source: &IdentitySource) -> Result<Identity, TlsError> {
        match source {
            IdentitySource::Pem { cert, key } => {
                let chain = load_certificates(cert)?;
                let pkey = load_private_key(key)?;
                let identity = Identity {
                    chain,
                    key: pkey,
                    cert_path: cert.clone(),
                };
                if !identity.chain[0]
                    .public_key()
                    .is_ok_and(|pk| pk.public_eq(&identity.key))
                {
                    return Err(TlsError::new(
                        cert,
                        format!(
                            "certificate does not match the private key in {}",
                            key.display()
                        ),
                    ));
                }
                Ok(identity)
            }
            IdentitySource::Pkcs12 { file, password } => {
                let bytes = read_file(file)?;
                let parsed = Pkcs12::from_der(&bytes)
                    .map_err(|_| TlsError::new(file, "not a PKCS#12 file"))?
                    .parse2(password)
                    .map_err(|_| {
                        TlsError::new(
                            file,
                            "cannot open PKCS#12 file: wrong password or damaged file",
                        )
                    })?;
                let (Some(leaf), Some(key)) = (parsed.cert, parsed.pkey) else {
                    return Err(TlsError::new(
                        file,
                        "PKCS#12 file holds no certificate with a private key",
                    ));
                };
                let mut chain = vec![leaf];
                chain.extend(parsed.ca.into_iter().flatten());
                Ok(Identity {
                    chain,
                    key,
                    cert_path: file.clone(),
                })
            }
        }
    }

    /// The identity in the form native-tls takes: PEM chain and a PKCS#8 key.
    pub fn to_native(&self) -> Result<native_tls::Identity, TlsError> {
        let mut pem = Vec::new();
        for cert in &self.chain {
            pem.extend(cert.to_pem().map_err(|e| self.error(e))?);
        }
        let key = self
            .key
            .private_key_to_pem_pkcs8()
            .map_err(|e| self.error(e))?;
        native_tls::Identity::from_pkcs8(&pem, &key)
            .map_err(|e| TlsError::new(&self.cert_path, format!("unusable identity: {e}")))
    }

    fn error(&self, e: openssl::error::ErrorStack) -> TlsError {
        TlsError::new(&self.cert_path, first_reason(&e))
    }

    /// Warnings for certificates in the chain that have expired or expire within 30
    /// days. Old course certificates must still load, so these never fail.
    pub fn expiry_warnings(&self) -> Vec<String> {
        let Ok(now) = Asn1Time::days_from_now(0) else {
            return Vec::new();
        };
        let mut warnings = Vec::new();
        for cert in &self.chain {
            let not_after = cert.not_after();
            let Ok(diff) = now.diff(not_after) else {
                continue;
            };
            let subject = subject_name(cert);
            if diff.days < 0 || (diff.days == 0 && diff.secs < 0) {
                warnings.push(format!(
                    "{}: certificate {subject} expired on {not_after}",
                    self.cert_path.display()
                ));
            } else if diff.days < 30 {
                warnings.push(format!(
                    "{}: certificate {subject} expires on {not_after} ({} days left)",
                    self.cert_path.display(),
                    diff.days
                ));
            }
        }
        warnings
    }
}

/// `CN=…, O=…` of a certificate's subject.
pub fn subject_name(cert: &X509) -> String {
    let parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect();
    if parts.is_empty() {
        "(empty subject)".to_string()
    } else {
        parts.join(", ")
    }
}

/// Whether the TLS listener demands a certificate from its clients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    Off,
    /// Every client must present a certificate signed by a CA in this file.
    Required { ca: PathBuf },
}

/// The server's TLS acceptor, built once and shared by every worker.
///
/// native-tls serves the usual case; it cannot ask clients for certificates, so
/// mutual TLS is built on the openssl crate native-tls itself uses on Linux.
pub struct Acceptor(AcceptorImpl);

enum AcceptorImpl {
    Native(native_tls::TlsAcceptor),
    OpenSsl(openssl::ssl::SslAcceptor),
}

/// Why a handshake failed.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub reason: String,
    /// The client's certificate was missing or not trusted (mutual TLS only).
    pub client_refused: bool,
    /// The connection, where it can still be closed gracefully so the client
    /// receives the alert that says why.
    pub stream: Option<std::net::TcpStream>,
}

/// A server-side TLS stream from either acceptor.
pub struct ServerStream(StreamImpl);

enum StreamImpl {
    Native(native_tls::TlsStream<std::net::TcpStream>),
    OpenSsl(openssl::ssl::SslStream<std::net::TcpStream>),
}

impl Acceptor {
    /// Builds an acceptor that speaks TLS 1.2 and later.
    ///
    /// OpenSSL's default security level refuses what old course certificates
    /// have (RSA-1024 keys, SHA-1 signatures by a CA). Such an identity is still
    /// served, as the course's boards expect, at security level 0 and with a
    /// warning that names the file.
    pub fn new(identity: &Identity, client_auth: &ClientAuth) -> Result<Acceptor, TlsError> {
        let client_ca = match client_auth {
            ClientAuth::Off => None,
            ClientAuth::Required { ca } => Some(ca.as_path()),
        };
        let first = match client_ca {
            None => native_tls::TlsAcceptor::builder(identity.to_native()?)
                .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
                .build()
                .map(|inner| Acceptor(AcceptorImpl::Native(inner)))
                .map_err(|e| {
                    TlsError::new(&identity.cert_path, format!("cannot use certificate: {e}"))
                }),
            Some(ca) => openssl_acceptor(identity, Some(ca), false)
                .map(|a| Acceptor(AcceptorImpl::OpenSsl(a))),
        };
        match first {
            Err(e) if is_weak_certificate(&e.problem) => {
                let acceptor = openssl_acceptor(identity, client_ca, true)?;
                log::warn!(
                    "{}: {}; serving it at OpenSSL security level 0 as old boards need. Replace it with an RSA-2048 or ECDSA certificate",
                    identity.cert_path.display(),
                    weak_reason(&e.problem)
                );
                Ok(Acceptor(AcceptorImpl::OpenSsl(acceptor)))
            }
            other => other,
        }
    }

    /// Runs the server side of the handshake on a stream whose timeouts are set.
    pub fn accept(&self, stream: std::net::TcpStream) -> Result<ServerStream, HandshakeFailure> {
        match &self.0 {
            AcceptorImpl::Native(a) => a
                .accept(stream)
                .map(|s| ServerStream(StreamImpl::Native(s)))
                .map_err(|e| HandshakeFailure {
                    reason: match e {
                        native_tls::HandshakeError::Failure(e) => e.to_string(),
                        native_tls::HandshakeError::WouldBlock(_) => "timed out".to_string(),
                    },
                    client_refused: false,
                    stream: None,
                }),
            AcceptorImpl::OpenSsl(a) => a
                .accept(stream)
                .map(|s| ServerStream(StreamImpl::OpenSsl(s)))
                .map_err(|e| {
                    use openssl::ssl::HandshakeError;
                    match e {
                        HandshakeError::SetupFailure(e) => HandshakeFailure {
                            reason: first_reason(&e),
                            client_refused: false,
                            stream: None,
                        },
                        HandshakeError::Failure(mid) | HandshakeError::WouldBlock(mid) => {
                            let verify = mid.ssl().verify_result();
                            let error = mid.error();
                            let text = error
                                .ssl_error()
                                .and_then(|s| {
                                    s.errors()
                                        .first()
                                        .and_then(|e| e.reason().map(str::to_string))
                                })
                                .or_else(|| error.io_error().map(|e| e.to_string()))
                                .unwrap_or_else(|| error.to_string());
                            let (reason, client_refused) =
                                if verify != openssl::x509::X509VerifyResult::OK {
                                    (
                                        format!(
                                            "client certificate not trusted ({})",
                                            verify.error_string()
                                        ),
                                        true,
                                    )
                                } else if text.contains("peer did not return a certificate") {
                                    ("client presented no certificate".to_string(), true)
                                } else {
                                    (text, false)
                                };
                            HandshakeFailure {
                                reason,
                                client_refused,
                                stream: mid.get_ref().try_clone().ok(),
                            }
                        }
                    }
                }),
        }
    }
}

/// Whether OpenSSL refused a certificate only for its age: a short key or a weak
/// signature digest ("ee key too small", "ca md too weak", ...).
fn is_weak_certificate(problem: &str) -> bool {
    problem.contains("too small") || problem.contains("too weak")
}

fn weak_reason(problem: &str) -> &'static str {
    if problem.contains("too small") {
        "its key is shorter than OpenSSL accepts by default"
    } else {
        "its signature digest is weaker than OpenSSL accepts by default"
    }
}

/// An acceptor built on the openssl crate: for mutual TLS (`client_ca`), which
/// native-tls cannot ask for, and for old certificates (`legacy`: security level 0).
fn openssl_acceptor(
    identity: &Identity,
    client_ca: Option<&Path>,
    legacy: bool,
) -> Result<openssl::ssl::SslAcceptor, TlsError> {
    use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode, SslVersion};
    use openssl::x509::store::X509StoreBuilder;
    let cert_err =
        |e: openssl::error::ErrorStack| TlsError::new(&identity.cert_path, first_reason(&e));
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(cert_err)?;
    if legacy {
        b.set_security_level(0);
    }
    b.set_private_key(&identity.key).map_err(cert_err)?;
    b.set_certificate(&identity.chain[0]).map_err(cert_err)?;
    for extra in &identity.chain[1..] {
        b.add_extra_chain_cert(extra.clone()).map_err(cert_err)?;
    }
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(cert_err)?;
    if let Some(ca_path) = client_ca {
        let ca_err = |e: openssl::error::ErrorStack| TlsError::new(ca_path, first_reason(&e));
        let mut store = X509StoreBuilder::new().map_err(ca_err)?;
        for ca in load_certificates(ca_path)? {
            b.add_client_ca(&ca).map_err(ca_err)?;
            store.add_cert(ca).map_err(ca_err)?;
        }
        b.set_verify_cert_store(store.build()).map_err(ca_err)?;
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        // Session resumption with client certificates needs a context id.
        b.set_session_id_context(b"wwep").map_err(cert_err)?;
    }
    Ok(b.build())
}

impl ServerStream {
    pub fn tcp(&self) -> &std::net::TcpStream {
        match &self.0 {
            StreamImpl::Native(s) => s.get_ref(),
            StreamImpl::OpenSsl(s) => s.get_ref(),
        }
    }

    /// Sends close_notify.
    pub fn close_notify(&mut self) {
        match &mut self.0 {
            StreamImpl::Native(s) => {
                let _ = s.shutdown();
            }
            StreamImpl::OpenSsl(s) => {
                let _ = s.shutdown();
            }
        }
    }

    /// The common name of the client's verified certificate (mutual TLS).
    pub fn peer_common_name(&self) -> Option<String> {
        let StreamImpl::OpenSsl(s) = &self.0 else {
            return None;
        };
        let cert = s.ssl().peer_certificate()?;
        let cn = cert
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()?;
        cn.data().to_string().ok()
    }
}

impl std::io::Read for ServerStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            StreamImpl::Native(s) => s.read(buf),
            StreamImpl::OpenSsl(s) => s.read(buf),
        }
    }
}

impl std::io::Write for ServerStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            StreamImpl::Native(s) => s.write(buf),
            StreamImpl::OpenSsl(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            StreamImpl::Native(s) => s.flush(),
            StreamImpl::OpenSsl(s) => s.flush(),
        }
    }
}

/// How a client decides to trust a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's root certificates.
    System,
    /// Exactly the certificates in this file (PEM bundle or DER); system roots off.
    CaFile(PathBuf),
    /// No verification at all: encrypted, but open to a man in the middle.
    Insecure,
}

/// Builds a client connector (TLS 1.2 and later) with the given trust and, for
/// mutual TLS, a client certificate.
pub fn client_connector(
    trust: &Trust,
    identity: Option<&IdentitySource>,
    only_tls12: bool,
) -> Result<native_tls::TlsConnector, TlsError> {
    let mut builder = native_tls::TlsConnector::builder();
    builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if only_tls12 {
        builder.max_protocol_version(Some(native_tls::Protocol::Tlsv12));
    }
    let mut context = PathBuf::new();
    match trust {
        Trust::System => {}
        Trust::CaFile(path) => {
            context = path.clone();
            builder.disable_built_in_roots(true);
            for cert in load_certificates(path)? {
                let der = cert
                    .to_der()
                    .map_err(|e| TlsError::new(path, first_reason(&e)))?;
                let root = native_tls::Certificate::from_der(&der)
                    .map_err(|e| TlsError::new(path, format!("unusable CA certificate: {e}")))?;
                builder.add_root_certificate(root);
            }
        }
        Trust::Insecure => {
            builder.danger_accept_invalid_certs(true);
            builder.danger_accept_invalid_hostnames(true);
        }
    }
    if let Some(source) = identity {
        let identity = Identity::load(source)?;
        context = identity.cert_path.clone();
        builder.identity(identity.to_native()?);
    }
    builder
        .build()
        .map_err(|e| TlsError::new(&context, format!("cannot set up TLS: {e}")))
}
