//! Everything about certificates and keys: loading them from the files an operator
//! or course hands out, and building the acceptors and connectors on top of them.
//!
//! The server side is the openssl crate directly (TLS 1.3, client certificates,
//! session caches, non-blocking handshakes); the client keeps native-tls, which
//! only takes PKCS#8 keys, so keys are read here in every form openssl writes
//! (PKCS#8, PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`, PEM or DER) and
//! handed over as PKCS#8. Every error names the file it is about.

use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{Id, PKey, Private};
use openssl::ssl::{
    ErrorCode, HandshakeError, MidHandshakeSslStream, Ssl, SslAcceptor, SslContext, SslFiletype,
    SslMethod, SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509VerifyResult};
use std::sync::Arc;

/// A certificate, key or list file (or flag) that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The file, or the flag for a setting given on the command line.
    pub path: PathBuf,
    pub kind: TlsErrorKind,
}

/// What was wrong, by kind; the strings carried are the system's or OpenSSL's
/// own words, for people, never matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsErrorKind {
    Unreadable(String),
    NoCertificate,
    BadPem(String),
    /// No private key where one was expected (`pem`: the file was PEM).
    NoPrivateKey {
        pem: bool,
    },
    EncryptedKey,
    BadKey(String),
    KeyMismatch {
        key: PathBuf,
    },
    NotPkcs12,
    Pkcs12Locked,
    Pkcs12WithoutKey,
    Expired {
        not_after: String,
    },
    NotYetValid {
        not_before: String,
    },
    NoRevocationList,
    NonUtf8Name,
    BadCipherList(String),
    NoCertificateGiven,
    /// OpenSSL refused to use it, for this reason.
    Refused(String),
}

impl TlsError {
    fn new(path: &Path, kind: TlsErrorKind) -> Self {
        TlsError {
            path: path.to_path_buf(),
            kind,
        }
    }

    fn refused(path: &Path, e: &ErrorStack) -> Self {
        Self::new(path, TlsErrorKind::Refused(first_reason(e)))
    }
}

impl fmt::Display for TlsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsErrorKind::Unreadable(e) => write!(f, "cannot read: {e}"),
            TlsErrorKind::NoCertificate => {
                f.write_str("no certificate found (expected PEM or DER X.509)")
            }
            TlsErrorKind::BadPem(reason) => {
                write!(f, "not a valid PEM certificate file ({reason})")
            }
            TlsErrorKind::NoPrivateKey { pem: true } => {
                f.write_str("no private key found (expected a PEM PRIVATE KEY block)")
            }
            TlsErrorKind::NoPrivateKey { pem: false } => {
                f.write_str("no private key found (expected PEM or DER)")
            }
            TlsErrorKind::EncryptedKey => f.write_str(
                "private key is encrypted; decrypt it with `openssl pkey -in KEY -out KEY.plain`",
            ),
            TlsErrorKind::BadKey(reason) => write!(f, "not a valid private key ({reason})"),
            TlsErrorKind::KeyMismatch { key } => write!(
                f,
                "certificate does not match the private key in {}",
                key.display()
            ),
            TlsErrorKind::NotPkcs12 => f.write_str("not a PKCS#12 file"),
            TlsErrorKind::Pkcs12Locked => {
                f.write_str("cannot open PKCS#12 file: wrong password or damaged file")
            }
            TlsErrorKind::Pkcs12WithoutKey => {
                f.write_str("PKCS#12 file holds no certificate with a private key")
            }
            TlsErrorKind::Expired { not_after } => write!(f, "certificate expired on {not_after}"),
            TlsErrorKind::NotYetValid { not_before } => {
                write!(f, "certificate is not valid before {not_before}")
            }
            TlsErrorKind::NoRevocationList => {
                f.write_str("no certificate revocation list found (expected PEM or DER)")
            }
            TlsErrorKind::NonUtf8Name => f.write_str("the file name must be valid UTF-8"),
            TlsErrorKind::BadCipherList(reason) => write!(f, "not a usable list ({reason})"),
            TlsErrorKind::NoCertificateGiven => f.write_str("no certificate given"),
            TlsErrorKind::Refused(reason) => f.write_str(reason),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
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
    std::fs::read(path).map_err(|e| TlsError::new(path, TlsErrorKind::Unreadable(e.to_string())))
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Reads every certificate in a file: PEM with any number of certificates and free
/// text between them, or a single DER certificate (`.cer`).
pub fn load_certificates(path: &Path) -> Result<Vec<X509>, TlsError> {
    let bytes = read_file(path)?;
    let certs = if looks_like_pem(&bytes) {
        X509::stack_from_pem(&bytes)
            .map_err(|e| TlsError::new(path, TlsErrorKind::BadPem(first_reason(&e))))?
    } else {
        vec![X509::from_der(&bytes).map_err(|_| TlsError::new(path, TlsErrorKind::NoCertificate))?]
    };
    if certs.is_empty() {
        return Err(TlsError::new(path, TlsErrorKind::NoCertificate));
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
            return Err(TlsError::new(path, TlsErrorKind::EncryptedKey));
        }
        if !text.contains("PRIVATE KEY-----") {
            return Err(TlsError::new(
                path,
                TlsErrorKind::NoPrivateKey { pem: true },
            ));
        }
        // The callback refuses to supply a passphrase, so openssl never prompts.
        PKey::private_key_from_pem_callback(&bytes, |_| Ok(0))
            .map_err(|e| TlsError::new(path, TlsErrorKind::BadKey(first_reason(&e))))
    } else {
        PKey::private_key_from_der(&bytes)
            .map_err(|_| TlsError::new(path, TlsErrorKind::NoPrivateKey { pem: false }))
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
                        TlsErrorKind::KeyMismatch { key: key.clone() },
                    ));
                }
                Ok(identity)
            }
            IdentitySource::Pkcs12 { file, password } => {
                let bytes = read_file(file)?;
                let parsed = Pkcs12::from_der(&bytes)
                    .map_err(|_| TlsError::new(file, TlsErrorKind::NotPkcs12))?
                    .parse2(password)
                    .map_err(|_| TlsError::new(file, TlsErrorKind::Pkcs12Locked))?;
                let (Some(leaf), Some(key)) = (parsed.cert, parsed.pkey) else {
                    return Err(TlsError::new(file, TlsErrorKind::Pkcs12WithoutKey));
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
        native_tls::Identity::from_pkcs8(&pem, &key).map_err(|e| {
            TlsError::new(
                &self.cert_path,
                TlsErrorKind::Refused(format!("unusable identity: {e}")),
            )
        })
    }

    fn error(&self, e: openssl::error::ErrorStack) -> TlsError {
        TlsError::refused(&self.cert_path, &e)
    }

    /// Refuses a leaf certificate that is expired or not yet valid: what a
    /// reload checks before it replaces a certificate in service. (At startup old
    /// course certificates are served with a warning instead.)
    pub fn check_validity_now(&self) -> Result<(), TlsError> {
        let now = Asn1Time::days_from_now(0).map_err(|e| self.error(e))?;
        let leaf = &self.chain[0];
        if leaf.not_after() < now {
            return Err(TlsError::new(
                &self.cert_path,
                TlsErrorKind::Expired {
                    not_after: leaf.not_after().to_string(),
                },
            ));
        }
        if leaf.not_before() > now {
            return Err(TlsError::new(
                &self.cert_path,
                TlsErrorKind::NotYetValid {
                    not_before: leaf.not_before().to_string(),
                },
            ));
        }
        Ok(())
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

/// TLS 1.2 suites served by default: forward-secret AEAD only, AES-CCM and CCM-8
/// included for constrained devices. OpenSSL cipher-list syntax.
pub const DEFAULT_TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
ECDHE-ECDSA-AES128-CCM:ECDHE-ECDSA-AES256-CCM:ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES256-CCM8:\
DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305:\
DHE-RSA-AES128-CCM:DHE-RSA-AES256-CCM:DHE-RSA-AES128-CCM8:DHE-RSA-AES256-CCM8";

/// TLS 1.3 suites served by default (OpenSSL ciphersuites syntax).
pub const DEFAULT_TLS13_CIPHERSUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:\
TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256";

/// The socket under a server-side TLS session. It is taken back out when the
/// session closes, so the close can linger on the plain socket.
pub struct TlsSocket(Option<TcpStream>);

impl TlsSocket {
    fn tcp(&self) -> Option<&TcpStream> {
        self.0.as_ref()
    }
}

fn gone() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl Read for TlsSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.as_mut().ok_or_else(gone)?.read(buf)
    }
}

impl Write for TlsSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.as_mut().ok_or_else(gone)?.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The server's TLS context, built once (and again on reload) and shared by
/// every worker. One engine whatever the authentication mode: the openssl crate,
/// which can offer TLS 1.3, ask for client certificates and hold a session cache.
pub struct Acceptor {
    context: SslContext,
    material: Arc<Material>,
    renew_at: std::time::Instant,
}

/// Why a handshake failed, by kind, for the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailureKind {
    /// Client and server have no cipher suite (or key-exchange group) in common.
    NoSharedCipher,
    /// The client offered only protocol versions the server does not speak.
    ProtocolVersion,
    /// The client's certificate was not signed by a CA in `--client-ca`.
    UnknownCa,
    /// The client's certificate has been revoked.
    Revoked,
    /// The client presented no certificate where one is required.
    CertificateRequired,
    /// What arrived was not TLS (plain WWEP or HTTP on the TLS port).
    NotTls,
    /// The client went away mid-handshake.
    Closed,
    /// The handshake did not finish before the connection's deadline.
    Timeout,
    Other,
}

impl HandshakeFailureKind {
    pub fn name(self) -> &'static str {
        match self {
            HandshakeFailureKind::NoSharedCipher => "no shared cipher",
            HandshakeFailureKind::ProtocolVersion => "protocol version",
            HandshakeFailureKind::UnknownCa => "unknown CA",
            HandshakeFailureKind::Revoked => "certificate revoked",
            HandshakeFailureKind::CertificateRequired => "certificate required",
            HandshakeFailureKind::NotTls => "not TLS",
            HandshakeFailureKind::Closed => "closed by client",
            HandshakeFailureKind::Timeout => "timeout",
            HandshakeFailureKind::Other => "failed",
        }
    }
}

impl fmt::Display for HandshakeFailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A handshake that failed.
pub struct HandshakeFailure {
    pub kind: HandshakeFailureKind,
    /// OpenSSL's own words, for the debug log.
    pub detail: String,
    /// The connection, where it can still be closed gracefully so the client
    /// receives the alert that says why.
    pub socket: Option<TcpStream>,
}

/// Where a handshake stands after a step.
pub enum Handshake {
    Done(ServerStream),
    /// The client has not sent its next flight yet (or the socket cannot take
    /// ours): resume when the socket is ready.
    Pending(PendingHandshake),
    Failed(HandshakeFailure),
}

/// A handshake waiting for its socket.
pub struct PendingHandshake {
    mid: MidHandshakeSslStream<TlsSocket>,
}

impl PendingHandshake {
    /// Whether the handshake waits to write rather than to read.
    pub fn wants_write(&self) -> bool {
        self.mid.error().code() == ErrorCode::WANT_WRITE
    }

    pub fn tcp(&self) -> Option<&TcpStream> {
        self.mid.get_ref().tcp()
    }

    /// Continues the handshake with whatever the socket has now.
    pub fn resume(self) -> Handshake {
        classify(self.mid.handshake())
    }

    /// Gives up on the handshake (its deadline passed) and returns the socket.
    pub fn abandon(mut self) -> Option<TcpStream> {
        self.mid.get_mut().0.take()
    }
}

// OpenSSL's reason codes (ssl/sslerr.h), stable across 1.1 and 3.x.
const SSL_R_CERTIFICATE_VERIFY_FAILED: i32 = 134;
const SSL_R_HTTP_REQUEST: i32 = 156;
const SSL_R_NO_PROTOCOLS_AVAILABLE: i32 = 191;
const SSL_R_NO_SHARED_CIPHER: i32 = 193;
const SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: i32 = 199;
const SSL_R_UNSUPPORTED_PROTOCOL: i32 = 258;
const SSL_R_WRONG_VERSION_NUMBER: i32 = 267;
const SSL_R_UNEXPECTED_EOF_WHILE_READING: i32 = 294;
const SSL_R_VERSION_TOO_LOW: i32 = 396;
const SSL_R_NO_SHARED_GROUPS: i32 = 410;
// x509_vfy.h
const X509_V_ERR_CERT_REVOKED: i32 = 23;

fn classify(result: Result<SslStream<TlsSocket>, HandshakeError<TlsSocket>>) -> Handshake {
    match result {
        Ok(ssl) => Handshake::Done(ServerStream { ssl }),
        Err(HandshakeError::WouldBlock(mid)) => Handshake::Pending(PendingHandshake { mid }),
        Err(HandshakeError::SetupFailure(e)) => Handshake::Failed(HandshakeFailure {
            kind: HandshakeFailureKind::Other,
            detail: first_reason(&e),
            socket: None,
        }),
        Err(HandshakeError::Failure(mut mid)) => {
            let verify = mid.ssl().verify_result();
            let error = mid.error();
            let reason = error
                .ssl_error()
                .and_then(|stack| stack.errors().first())
                .map(|e| e.reason_code());
            let kind = if verify.as_raw() == X509_V_ERR_CERT_REVOKED {
                HandshakeFailureKind::Revoked
            } else if verify != X509VerifyResult::OK {
                HandshakeFailureKind::UnknownCa
            } else {
                match reason {
                    Some(SSL_R_NO_SHARED_CIPHER | SSL_R_NO_SHARED_GROUPS) => {
                        HandshakeFailureKind::NoSharedCipher
                    }
                    Some(
                        SSL_R_UNSUPPORTED_PROTOCOL
                        | SSL_R_VERSION_TOO_LOW
                        | SSL_R_NO_PROTOCOLS_AVAILABLE,
                    ) => HandshakeFailureKind::ProtocolVersion,
                    Some(SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) => {
                        HandshakeFailureKind::CertificateRequired
                    }
                    Some(SSL_R_CERTIFICATE_VERIFY_FAILED) => HandshakeFailureKind::UnknownCa,
                    Some(SSL_R_WRONG_VERSION_NUMBER | SSL_R_HTTP_REQUEST) => {
                        HandshakeFailureKind::NotTls
                    }
                    Some(SSL_R_UNEXPECTED_EOF_WHILE_READING) => HandshakeFailureKind::Closed,
                    _ if error.code() == ErrorCode::ZERO_RETURN
                        || (error.code() == ErrorCode::SYSCALL && error.io_error().is_none()) =>
                    {
                        HandshakeFailureKind::Closed
                    }
                    _ => HandshakeFailureKind::Other,
                }
            };
            let detail = if verify != X509VerifyResult::OK {
                verify.error_string().to_string()
            } else {
                error.to_string()
            };
            Handshake::Failed(HandshakeFailure {
                kind,
                detail,
                socket: mid.get_mut().0.take(),
            })
        }
    }
}

/// Whether OpenSSL's default security level would refuse this chain: an RSA or
/// DSA key shorter than 2048 bits, or a certificate signed with MD5 or SHA-1 by
/// a CA. Course material has such certificates and boards expect them served.
fn is_legacy(identity: &Identity) -> bool {
    let short_key = |key: &PKey<openssl::pkey::Public>| {
        matches!(key.id(), Id::RSA | Id::DSA) && key.bits() < 2048
    };
    let weak_digest = |cert: &X509| {
        let self_signed = cert.issued(cert) == X509VerifyResult::OK;
        !self_signed
            && matches!(
                cert.signature_algorithm().object().nid(),
                Nid::SHA1WITHRSAENCRYPTION
                    | Nid::MD5WITHRSAENCRYPTION
                    | Nid::ECDSA_WITH_SHA1
                    | Nid::DSAWITHSHA1
                    | Nid::SHA1WITHRSA
            )
    };
    identity
        .chain
        .iter()
        .any(|cert| cert.public_key().is_ok_and(|k| short_key(&k)) || weak_digest(cert))
}

/// The oldest protocol version the TLS port accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TlsMin {
    /// TLS 1.2 and 1.3: what embedded stacks of the boards' generation speak.
    #[default]
    #[value(name = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    Tls13,
}

/// How the TLS port negotiates, besides who it is and whom it asks for a
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub min: TlsMin,
    /// TLS 1.2 cipher list (OpenSSL syntax) instead of [`DEFAULT_TLS12_CIPHERS`].
    pub ciphers: Option<String>,
    /// TLS 1.3 suites instead of [`DEFAULT_TLS13_CIPHERSUITES`].
    pub ciphersuites: Option<String>,
    /// Certificate revocation lists for client certificates (PEM or DER).
    pub client_crls: Vec<PathBuf>,
    /// Sessions kept for TLS 1.2 session-ID resumption; 0 turns the cache off.
    pub session_cache: usize,
    /// How long a session (cached or in a ticket) may be resumed: the session
    /// cache and the ticket keys are renewed this often.
    pub session_lifetime: std::time::Duration,
}

/// Sessions kept by default: a board's session is ~200 bytes in OpenSSL's cache.
pub const DEFAULT_SESSION_CACHE: usize = 20_480;
/// OpenSSL's own session timeout, which no API here can raise.
pub const MAX_SESSION_LIFETIME_SECS: u64 = 300;

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            min: TlsMin::Tls12,
            ciphers: None,
            ciphersuites: None,
            client_crls: Vec::new(),
            session_cache: DEFAULT_SESSION_CACHE,
            session_lifetime: std::time::Duration::from_secs(MAX_SESSION_LIFETIME_SECS),
        }
    }
}

/// Everything a server context is built from, loaded once: a renewal (fresh
/// session cache and ticket keys) rebuilds the context from it without reading
/// certificates again.
struct Material {
    identities: Vec<Identity>,
    client_auth: ClientAuth,
    client_cas: Vec<X509>,
    settings: TlsSettings,
    legacy: bool,
}

/// Checks that a CRL file holds at least one CRL, PEM or DER.
fn check_crl_file(path: &Path) -> Result<(), TlsError> {
    let bytes = read_file(path)?;
    let parsed = if looks_like_pem(&bytes) {
        openssl::x509::X509Crl::from_pem(&bytes).map(|_| ())
    } else {
        openssl::x509::X509Crl::from_der(&bytes).map(|_| ())
    };
    parsed.map_err(|_| TlsError::new(path, TlsErrorKind::NoRevocationList))?;
    if path.to_str().is_none() {
        return Err(TlsError::new(path, TlsErrorKind::NonUtf8Name));
    }
    Ok(())
}

impl Acceptor {
    /// Builds the server context from one or two identities (an RSA and an
    /// ECDSA certificate side by side: OpenSSL serves each client the one it
    /// can use): TLS 1.2 and 1.3, forward-secret AEAD suites, a session cache
    /// and session tickets, and for mutual TLS a required client certificate
    /// signed by a CA in the given file, checked against the CRLs.
    ///
    /// OpenSSL's default security level refuses what old course certificates
    /// have (RSA-1024 keys, SHA-1 signatures by a CA). Such an identity is still
    /// served, as the course's boards expect, at security level 0 and with a
    /// warning that names the file.
    pub fn new(
        identities: Vec<Identity>,
        client_auth: &ClientAuth,
        settings: &TlsSettings,
    ) -> Result<Acceptor, TlsError> {
        let Some(first) = identities.first() else {
            return Err(TlsError::new(
                Path::new("--cert"),
                TlsErrorKind::NoCertificateGiven,
            ));
        };
        let legacy = identities.iter().any(is_legacy);
        if legacy {
            log::warn!(
                "{}: a certificate has a key shorter than 2048 bits or a SHA-1/MD5 signature; serving it at OpenSSL security level 0 as old boards need. Replace it with an RSA-2048 or ECDSA certificate",
                first.cert_path.display()
            );
        }
        if settings.ciphers.is_some() || settings.ciphersuites.is_some() {
            log::warn!(
                "--tls-ciphers/--tls-ciphersuites replace the default forward-secret AEAD suites; check that nothing weaker than the boards need is admitted"
            );
        }
        let client_cas = match client_auth {
            ClientAuth::Off => Vec::new(),
            ClientAuth::Required { ca } => load_certificates(ca)?,
        };
        for crl in &settings.client_crls {
            check_crl_file(crl)?;
        }
        let material = Arc::new(Material {
            identities,
            client_auth: client_auth.clone(),
            client_cas,
            settings: settings.clone(),
            legacy,
        });
        Self::build(material)
    }

    fn build(material: Arc<Material>) -> Result<Acceptor, TlsError> {
        let first = &material.identities[0];
        let cert_err = |e: ErrorStack| TlsError::refused(&first.cert_path, &e);
        let settings = &material.settings;
        let mut b =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(cert_err)?;
        if material.legacy {
            b.set_security_level(0);
        }
        let min = match settings.min {
            TlsMin::Tls12 => SslVersion::TLS1_2,
            TlsMin::Tls13 => SslVersion::TLS1_3,
        };
        b.set_min_proto_version(Some(min)).map_err(cert_err)?;
        let flag_err = |flag: &'static str| {
            move |e: ErrorStack| {
                TlsError::new(
                    Path::new(flag),
                    TlsErrorKind::BadCipherList(first_reason(&e)),
                )
            }
        };
        b.set_cipher_list(settings.ciphers.as_deref().unwrap_or(DEFAULT_TLS12_CIPHERS))
            .map_err(flag_err("--tls-ciphers"))?;
        b.set_ciphersuites(
            settings
                .ciphersuites
                .as_deref()
                .unwrap_or(DEFAULT_TLS13_CIPHERSUITES),
        )
        .map_err(flag_err("--tls-ciphersuites"))?;
        let mut chain_seen: Vec<Vec<u8>> = Vec::new();
        for identity in &material.identities {
            let err = |e: ErrorStack| TlsError::refused(&identity.cert_path, &e);
            b.set_certificate(&identity.chain[0]).map_err(err)?;
            b.set_private_key(&identity.key).map_err(err)?;
            b.check_private_key().map_err(err)?;
            for extra in &identity.chain[1..] {
                let der = extra.to_der().map_err(err)?;
                if !chain_seen.contains(&der) {
                    chain_seen.push(der);
                    b.add_extra_chain_cert(extra.clone()).map_err(err)?;
                }
            }
        }
        // A client's flight (change-cipher-spec and Finished, then its request)
        // arrives as several records; reading ahead takes them in one read
        // instead of two per record. Safe here because a session only waits
        // for its socket after OpenSSL has asked for more bytes than it holds.
        b.set_read_ahead(true);
        // Sessions (with or without client certificates) resume only within a
        // context that names itself.
        b.set_session_id_context(b"wwep").map_err(cert_err)?;
        if settings.session_cache == 0 {
            b.set_session_cache_mode(SslSessionCacheMode::OFF);
        } else {
            b.set_session_cache_mode(SslSessionCacheMode::SERVER);
            b.set_session_cache_size(settings.session_cache.min(i32::MAX as usize) as i32);
        }
        if let ClientAuth::Required { ca } = &material.client_auth {
            let ca_err = |e: ErrorStack| TlsError::refused(ca, &e);
            let mut store = X509StoreBuilder::new().map_err(ca_err)?;
            for cert in &material.client_cas {
                b.add_client_ca(cert).map_err(ca_err)?;
                store.add_cert(cert.clone()).map_err(ca_err)?;
            }
            if !settings.client_crls.is_empty() {
                let lookup = store.add_lookup(X509Lookup::file()).map_err(ca_err)?;
                for crl in &settings.client_crls {
                    let crl_err = |e: ErrorStack| TlsError::refused(crl, &e);
                    let kind = if looks_like_pem(&read_file(crl)?) {
                        SslFiletype::PEM
                    } else {
                        SslFiletype::ASN1
                    };
                    lookup.load_crl_file(crl, kind).map_err(crl_err)?;
                }
                store
                    .set_flags(X509VerifyFlags::CRL_CHECK)
                    .map_err(ca_err)?;
            }
            b.set_verify_cert_store(store.build()).map_err(ca_err)?;
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        let renew_at = std::time::Instant::now() + settings.session_lifetime;
        Ok(Acceptor {
            context: b.build().into_context(),
            material,
            renew_at,
        })
    }

    /// The same context with a fresh session cache and fresh ticket keys, so no
    /// session outlives the configured lifetime.
    pub fn renew(&self) -> Result<Acceptor, TlsError> {
        Self::build(Arc::clone(&self.material))
    }

    /// Whether the session lifetime has run out and [`Acceptor::renew`] is due.
    pub fn renewal_due(&self, now: std::time::Instant) -> bool {
        now >= self.renew_at
    }

    /// The not-after dates of the served certificates.
    /// The earliest expiry of the certificates served, as Unix time.
    pub fn earliest_not_after_unix(&self) -> Option<i64> {
        let epoch = Asn1Time::from_unix(0).ok()?;
        self.not_after()
            .into_iter()
            .filter_map(|t| epoch.diff(t).ok())
            .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs))
            .min()
    }

    fn not_after(&self) -> Vec<&openssl::asn1::Asn1TimeRef> {
        self.material
            .identities
            .iter()
            .map(|identity| identity.chain[0].not_after())
            .collect()
    }

    /// Starts the server side of a handshake on a non-blocking socket.
    pub fn start(&self, tcp: TcpStream) -> Handshake {
        let ssl = match Ssl::new(&self.context) {
            Ok(ssl) => ssl,
            Err(e) => {
                return Handshake::Failed(HandshakeFailure {
                    kind: HandshakeFailureKind::Other,
                    detail: first_reason(&e),
                    socket: Some(tcp),
                });
            }
        };
        classify(ssl.accept(TlsSocket(Some(tcp))))
    }
}

/// An established server-side TLS session.
pub struct ServerStream {
    ssl: SslStream<TlsSocket>,
}

impl ServerStream {
    pub fn tcp(&self) -> Option<&TcpStream> {
        self.ssl.get_ref().tcp()
    }

    /// The common name of the client's verified certificate (mutual TLS).
    pub fn peer_common_name(&self) -> Option<String> {
        let cert = self.ssl.ssl().peer_certificate()?;
        let cn = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
        cn.data().to_string().ok()
    }

    /// The names the client's verified certificate carries, for `--acl`: its
    /// common name and its DNS, IP, email and URI alternative names.
    pub fn peer_names(&self) -> Option<crate::acl::Certificate> {
        let cert = self.ssl.ssl().peer_certificate()?;
        let sans = cert.subject_alt_names().map_or_else(Vec::new, |names| {
            names
                .iter()
                .filter_map(|name| {
                    let ip = name.ipaddress().and_then(|b| match b.len() {
                        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    });
                    name.dnsname()
                        .or_else(|| name.email())
                        .or_else(|| name.uri())
                        .map(str::to_string)
                        .or_else(|| ip.map(|ip| ip.to_string()))
                })
                .collect()
        });
        Some(crate::acl::Certificate {
            cn: self.peer_common_name(),
            sans,
        })
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.ssl.ssl().session_reused()
    }

    /// `TLSv1.2`, `TLSv1.3`.
    pub fn version(&self) -> &'static str {
        self.ssl.ssl().version_str()
    }

    /// Sends close_notify (without waiting for the client's) and returns the
    /// socket for the rest of the close.
    pub fn close(mut self) -> Option<TcpStream> {
        let _ = self.ssl.shutdown();
        self.ssl.get_mut().0.take()
    }
}

impl Read for ServerStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.ssl.read(buf)
    }
}

impl Write for ServerStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.ssl.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.ssl.flush()
    }
}

/// A client configuration that resumes TLS sessions the way a board does:
/// TLS 1.2 by session ID or ticket, TLS 1.3 by ticket, from sessions kept in
/// memory and shared by every connection made with it. It trusts exactly the
/// certificates in `ca`. (rustls: native-tls and the openssl crate offer no safe
/// way for a client to offer a saved session.)
pub fn resuming_client_config(
    ca: &Path,
    identity: Option<&IdentitySource>,
    only_tls12: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let refused =
        |path: &Path, e: rustls::Error| TlsError::new(path, TlsErrorKind::Refused(e.to_string()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certificates(ca)? {
        let der = cert.to_der().map_err(|e| TlsError::refused(ca, &e))?;
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| refused(ca, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if only_tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| refused(ca, e))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(source) => {
            let identity = Identity::load(source)?;
            let chain = identity
                .chain
                .iter()
                .map(|c| c.to_der().map(CertificateDer::from))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| identity.error(e))?;
            let key = identity
                .key
                .private_key_to_pkcs8()
                .map_err(|e| identity.error(e))?;
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
                .map_err(|e| refused(&identity.cert_path, e))?
        }
    };
    Ok(Arc::new(config))
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
                let der = cert.to_der().map_err(|e| TlsError::refused(path, &e))?;
                let root = native_tls::Certificate::from_der(&der).map_err(|e| {
                    TlsError::new(
                        path,
                        TlsErrorKind::Refused(format!("unusable CA certificate: {e}")),
                    )
                })?;
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
    builder.build().map_err(|e| {
        TlsError::new(
            &context,
            TlsErrorKind::Refused(format!("cannot set up TLS: {e}")),
        )
    })
}
