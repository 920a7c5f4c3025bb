//! The client's side: a connector that verifies a server with OpenSSL (the
//! CLI's and the benchmark's TLS), one that resumes sessions the way a board
//! does (rustls), the stream either hands back, and the sorting of a failed
//! handshake by kind, read from the libraries' codes rather than their words.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;

use super::codes::*;
use super::{Identity, IdentitySource, TlsError, TlsErrorKind, TlsVersion, load_certificates};

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

/// Why a client's handshake failed, by kind.
#[derive(Debug)]
pub enum ConnectError {
    /// The server's certificate verifies, but not for the name asked for.
    HostnameMismatch,
    /// The server's certificate does not verify; the verifier's words why.
    NotTrusted(String),
    /// The server ended the handshake with an alert (it refused us); its name.
    Alert(String),
    /// The socket's time ran out before the handshake finished.
    TimedOut,
    /// The socket failed under the handshake.
    Io(io::Error),
    /// The server answered in clear text where a TLS record was due (a plain
    /// WWEP port answers a ClientHello with `X`); the first bytes it sent.
    ClearText(Vec<u8>),
    /// Anything else, in the TLS library's words.
    Other(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::HostnameMismatch => {
                f.write_str("the certificate is not valid for the server's name")
            }
            ConnectError::NotTrusted(reason) => write!(f, "certificate not trusted: {reason}"),
            ConnectError::Alert(alert) => write!(f, "the server refused the connection ({alert})"),
            ConnectError::TimedOut => f.write_str("timed out"),
            ConnectError::Io(e) => e.fmt(f),
            ConnectError::ClearText(first) => write!(
                f,
                "the server answered in clear text (\"{}\"), not TLS",
                crate::protocol::Escaped(first)
            ),
            ConnectError::Other(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for ConnectError {}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Whether `bytes` can be the start of a TLS record: a content type from
/// change_cipher_spec (0x14) to heartbeat (0x18), then major version 3. An
/// empty slice is not.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    match bytes {
        [] => false,
        [kind] => (0x14..=0x18).contains(kind),
        [kind, major, ..] => (0x14..=0x18).contains(kind) && *major == 3,
    }
}

/// How many of the first bytes a server sends are kept to judge a failed
/// handshake: a record header's type and version are the first three.
const SNIFFED: usize = 8;

/// A socket under a TLS client that keeps the first bytes the server sent, so
/// that a failed handshake can tell a server answering in clear text from a
/// TLS one. After that it only passes reads and writes through.
struct Sniffing<S> {
    inner: S,
    first: [u8; SNIFFED],
    kept: usize,
    /// Reads fail once this many bytes have arrived (a probe that needs no
    /// more than a record header); `usize::MAX` for a real connection.
    stop_after: usize,
}

impl<S> Sniffing<S> {
    fn new(inner: S) -> Sniffing<S> {
        Sniffing {
            inner,
            first: [0; SNIFFED],
            kept: 0,
            stop_after: usize::MAX,
        }
    }

    /// The first bytes the server sent (up to [`SNIFFED`]).
    fn first(&self) -> &[u8] {
        &self.first[..self.kept]
    }

    /// The verdict on a failed handshake when the server sent something that
    /// is not TLS: that, not the TLS library's words, is what went wrong.
    fn clear_text(&self) -> Option<ConnectError> {
        let first = self.first();
        (!first.is_empty() && !looks_like_tls(first))
            .then(|| ConnectError::ClearText(first.to_vec()))
    }
}

impl<S: Read> Read for Sniffing<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.kept >= self.stop_after {
            return Err(io::Error::other("enough bytes to judge the server"));
        }
        let n = self.inner.read(buf)?;
        if self.kept < SNIFFED {
            let take = n.min(SNIFFED - self.kept);
            self.first[self.kept..self.kept + take].copy_from_slice(&buf[..take]);
            self.kept += take;
        }
        Ok(n)
    }
}

impl<S: Write> Write for Sniffing<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a failed OpenSSL client handshake was, from its numbers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    HostnameMismatch,
    NotTrusted,
    Alert,
    Other,
}

fn is_alert(reason: i32) -> bool {
    (SSL_AD_REASON_OFFSET..SSL_AD_REASON_OFFSET + 256).contains(&reason)
}

/// Sorts a failure by OpenSSL's verify result and the reason code of the
/// error it raised. The verify result alone is not enough: with verification
/// off (`--insecure`) it still records what was wrong with the certificate,
/// while the handshake fails for another reason.
fn verdict(verify: i32, reason: Option<i32>) -> Verdict {
    match reason {
        Some(SSL_R_CERTIFICATE_VERIFY_FAILED) => match verify {
            X509_V_ERR_HOSTNAME_MISMATCH | X509_V_ERR_IP_ADDRESS_MISMATCH => {
                Verdict::HostnameMismatch
            }
            _ => Verdict::NotTrusted,
        },
        Some(code) if is_alert(code) => Verdict::Alert,
        // Verification failed without OpenSSL raising its own reason (a
        // verify callback's refusal): still a certificate not trusted.
        _ if verify != X509_V_OK => Verdict::NotTrusted,
        _ => Verdict::Other,
    }
}

/// The first reason code OpenSSL raised, with its words.
fn first_error(stack: Option<&openssl::error::ErrorStack>) -> Option<(i32, &'static str)> {
    let error = stack?.errors().first()?;
    Some((error.reason_code(), error.reason().unwrap_or("alert")))
}

/// Builds a server-verifying connector (TLS 1.2 up to `newest`) with the given
/// trust and, for mutual TLS, a client certificate. Configured as native-tls
/// configures OpenSSL (system roots, SNI, host name verification), but kept as
/// OpenSSL so a failed handshake can be judged by its verify result.
#[derive(Clone)]
pub struct Connector {
    ssl: SslConnector,
    insecure: bool,
}

impl Connector {
    pub fn new(
        trust: &Trust,
        identity: Option<&IdentitySource>,
        newest: TlsVersion,
    ) -> Result<Connector, TlsError> {
        let setup = |context: &Path, e: openssl::error::ErrorStack| {
            TlsError::new(
                context,
                TlsErrorKind::Refused(format!("cannot set up TLS: {}", super::first_reason(&e))),
            )
        };
        // Before any file is read, a failure is the flag's.
        let flag = Path::new("--tls");
        // The builder loads the system's roots and asks for verification.
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| setup(flag, e))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| setup(flag, e))?;
        if newest == TlsVersion::Tls12 {
            b.set_max_proto_version(Some(SslVersion::TLS1_2))
                .map_err(|e| setup(flag, e))?;
        }
        match trust {
            Trust::System | Trust::Insecure => {}
            Trust::CaFile(path) => {
                let mut store = X509StoreBuilder::new().map_err(|e| setup(path, e))?;
                for cert in load_certificates(path)? {
                    store.add_cert(cert).map_err(|e| setup(path, e))?;
                }
                b.set_cert_store(store.build());
            }
        }
        if let Some(source) = identity {
            let identity = Identity::load(source)?;
            let err = |e| setup(&identity.cert_path, e);
            b.set_certificate(&identity.chain[0]).map_err(err)?;
            b.set_private_key(&identity.key).map_err(err)?;
            for extra in &identity.chain[1..] {
                b.add_extra_chain_cert(extra.clone()).map_err(err)?;
            }
        }
        Ok(Connector {
            ssl: b.build(),
            insecure: *trust == Trust::Insecure,
        })
    }

    /// A blocking handshake over `tcp` (whose timeouts bound it), verifying
    /// the certificate against `servername` (also sent as SNI unless an IP).
    pub fn connect(&self, servername: &str, tcp: TcpStream) -> Result<ClientStream, ConnectError> {
        let mut config = self
            .ssl
            .configure()
            .map_err(|e| ConnectError::Other(super::first_reason(&e)))?
            .verify_hostname(!self.insecure);
        if self.insecure {
            config.set_verify(SslVerifyMode::NONE);
        }
        match config.connect(servername, Sniffing::new(tcp)) {
            Ok(ssl) => Ok(ClientStream(Inner::OpenSsl(ssl))),
            Err(HandshakeError::SetupFailure(e)) => {
                Err(ConnectError::Other(super::first_reason(&e)))
            }
            // A blocking socket whose timeout ran out (after clear text, that
            // is the better answer: the server was never going to speak TLS).
            Err(HandshakeError::WouldBlock(mid)) => {
                Err(mid.get_ref().clear_text().unwrap_or(ConnectError::TimedOut))
            }
            Err(HandshakeError::Failure(mid)) => {
                if let Some(clear) = mid.get_ref().clear_text() {
                    return Err(clear);
                }
                let verify = mid.ssl().verify_result();
                let error = mid.error();
                let first = first_error(error.ssl_error());
                Err(
                    match verdict(verify.as_raw(), first.map(|(code, _)| code)) {
                        Verdict::HostnameMismatch => ConnectError::HostnameMismatch,
                        Verdict::NotTrusted => {
                            ConnectError::NotTrusted(verify.error_string().to_string())
                        }
                        Verdict::Alert => ConnectError::Alert(
                            first.map_or_else(String::new, |(_, words)| words.to_string()),
                        ),
                        Verdict::Other => match error.io_error() {
                            Some(e) if is_timeout(e) => ConnectError::TimedOut,
                            _ => ConnectError::Other(error.to_string()),
                        },
                    },
                )
            }
        }
    }
}

/// How a resuming client offers to resume a TLS 1.2 session (TLS 1.3 always
/// resumes by ticket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ResumeWith {
    /// Asks for a ticket and offers it, or the session ID when it has no ticket.
    #[default]
    Ticket,
    /// Offers only the session ID, asking for no ticket: the server's session
    /// cache does the work.
    SessionId,
}

/// A client configuration that resumes TLS sessions the way a board does:
/// TLS 1.2 by session ID or ticket, TLS 1.3 by ticket, from sessions kept in
/// memory and shared by every connection made with it (and its clones). It
/// trusts exactly the certificates in `ca`. (rustls: native-tls and the
/// openssl crate offer no safe way for a client to offer a saved session.)
#[derive(Clone)]
pub struct ResumingConnector {
    config: Arc<rustls::ClientConfig>,
    servername: rustls::pki_types::ServerName<'static>,
    /// The same name, as given, for messages.
    name: String,
}

impl ResumingConnector {
    /// Verifies the server as `servername` (the `--servername` flag, or the host);
    /// resumes TLS 1.2 sessions as `tls12` says.
    pub fn new(
        ca: &Path,
        identity: Option<&IdentitySource>,
        newest: TlsVersion,
        tls12: ResumeWith,
        servername: &str,
    ) -> Result<ResumingConnector, TlsError> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let refused = |path: &Path, e: rustls::Error| {
            TlsError::new(path, TlsErrorKind::Refused(e.to_string()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certificates(ca)? {
            let der = cert.to_der().map_err(|e| TlsError::refused(ca, &e))?;
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| refused(ca, e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match newest {
            TlsVersion::Tls12 => &[&rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| refused(ca, e))?
            .with_root_certificates(roots);
        let mut config = match identity {
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
                    .with_client_auth_cert(
                        chain,
                        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                    )
                    .map_err(|e| refused(&identity.cert_path, e))?
            }
        };
        config.resumption = rustls::client::Resumption::default().tls12_resumption(match tls12 {
            ResumeWith::Ticket => rustls::client::Tls12Resumption::SessionIdOrTickets,
            ResumeWith::SessionId => rustls::client::Tls12Resumption::SessionIdOnly,
        });
        let name =
            rustls::pki_types::ServerName::try_from(servername.to_string()).map_err(|_| {
                TlsError::new(
                    Path::new("--servername"),
                    TlsErrorKind::NotAServerName {
                        name: servername.to_string(),
                    },
                )
            })?;
        Ok(ResumingConnector {
            config: Arc::new(config),
            servername: name,
            name: servername.to_string(),
        })
    }

    /// The name the server's certificate is verified against.
    pub fn servername(&self) -> &str {
        &self.name
    }

    /// A blocking handshake over `tcp` (whose timeouts bound it), offering a
    /// session saved from an earlier one when there is one.
    pub fn connect(&self, tcp: TcpStream) -> Result<ClientStream, ConnectError> {
        let connection =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.servername.clone())
                .map_err(sort_rustls)?;
        let mut tls = rustls::StreamOwned::new(connection, Sniffing::new(tcp));
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                if let Some(clear) = tls.sock.clear_text() {
                    return Err(clear);
                }
                return Err(
                    match e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    {
                        Some(inner) => sort_rustls(inner.clone()),
                        None if is_timeout(&e) => ConnectError::TimedOut,
                        None => ConnectError::Io(e),
                    },
                );
            }
        }
        Ok(ClientStream(Inner::Rustls(Box::new(tls))))
    }
}

/// Sorts a rustls handshake failure by its kind.
fn sort_rustls(e: rustls::Error) -> ConnectError {
    use rustls::CertificateError;
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => ConnectError::HostnameMismatch,
        rustls::Error::InvalidCertificate(reason) => {
            ConnectError::NotTrusted(format!("{reason:?}"))
        }
        rustls::Error::AlertReceived(alert) => ConnectError::Alert(format!("{alert:?}")),
        other => ConnectError::Other(other.to_string()),
    }
}

/// An established client-side TLS session, from either connector.
pub struct ClientStream(Inner);

enum Inner {
    OpenSsl(SslStream<Sniffing<TcpStream>>),
    // Boxed: rustls keeps its buffers inline, ten times OpenSSL's handle.
    Rustls(Box<rustls::StreamOwned<rustls::ClientConnection, Sniffing<TcpStream>>>),
}

impl ClientStream {
    /// The socket under the session (for its timeouts).
    pub fn tcp(&self) -> &TcpStream {
        match &self.0 {
            Inner::OpenSsl(ssl) => &ssl.get_ref().inner,
            Inner::Rustls(tls) => &tls.sock.inner,
        }
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        match &self.0 {
            Inner::OpenSsl(ssl) => ssl.ssl().session_reused(),
            Inner::Rustls(tls) => tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Inner::OpenSsl(ssl) => ssl.read(buf),
            Inner::Rustls(tls) => tls.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Inner::OpenSsl(ssl) => ssl.write(buf),
            Inner::Rustls(tls) => tls.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Inner::OpenSsl(ssl) => ssl.flush(),
            Inner::Rustls(tls) => tls.flush(),
        }
    }
}

/// The alert a server sent in place of a reply, if that is why a read from a
/// [`ClientStream`] failed: TLS 1.3 finishes the client's handshake before the
/// server has judged the client's certificate, so its refusal arrives on the
/// first read rather than in the handshake.
pub fn alert_received(e: &io::Error) -> Option<String> {
    let inner = e.get_ref()?;
    if let Some(ssl) = inner.downcast_ref::<openssl::ssl::Error>() {
        return first_error(ssl.ssl_error())
            .filter(|(code, _)| is_alert(*code))
            .map(|(_, words)| words.to_string());
    }
    match inner.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::AlertReceived(alert)) => Some(format!("{alert:?}")),
        _ => None,
    }
}

/// Whether the server at the other end of `tcp` (connected, its timeouts
/// set) speaks TLS: sends a ClientHello and judges the first bytes of the
/// answer, a TLS record or not, without finishing the handshake. For a plain
/// client whose server closed without a reply, to say whether `--tls` was
/// meant.
pub fn answers_tls(tcp: TcpStream) -> bool {
    let Ok(mut builder) = SslConnector::builder(SslMethod::tls_client()) else {
        return false;
    };
    // Nothing is trusted or sent on this connection: only its first bytes count.
    builder.set_verify(SslVerifyMode::NONE);
    let Ok(config) = builder.build().configure() else {
        return false;
    };
    let config = config
        .verify_hostname(false)
        .use_server_name_indication(false);
    let mut socket = Sniffing::new(tcp);
    // A record header is enough to judge.
    socket.stop_after = 5;
    match config.connect("", socket) {
        Ok(_) => true,
        Err(HandshakeError::Failure(mid) | HandshakeError::WouldBlock(mid)) => {
            looks_like_tls(mid.get_ref().first())
        }
        Err(HandshakeError::SetupFailure(_)) => false,
    }
}

/// Why a TLS server's certificate does not verify, if that is why a handshake
/// with it fails: OpenSSL's verify result (`hostname mismatch`, `self-signed
/// certificate in certificate chain`, ...), with the system's roots plus the
/// PEM certificates in `ca_pem` trusted, as native-tls does. `None` when the
/// handshake succeeds, or fails for another reason (the server is down, or
/// not TLS): that may mend by itself, a distrusted certificate does not. For
/// a client whose own TLS library passes errors on only as text (the Redis
/// store's); connecting and the handshake end by `deadline`.
pub fn certificate_rejection(
    host: &str,
    port: u16,
    ca_pem: Option<&[u8]>,
    deadline: std::time::Instant,
) -> Option<String> {
    use std::net::ToSocketAddrs;
    let left = || {
        Some(deadline.saturating_duration_since(std::time::Instant::now()))
            .filter(|left| !left.is_zero())
    };
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let tcp = TcpStream::connect_timeout(&addr, left()?).ok()?;
    let left = left()?;
    tcp.set_read_timeout(Some(left)).ok()?;
    tcp.set_write_timeout(Some(left)).ok()?;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).ok()?;
    if let Some(pem) = ca_pem {
        for cert in openssl::x509::X509::stack_from_pem(pem).ok()? {
            builder.cert_store_mut().add_cert(cert).ok()?;
        }
    }
    match builder.build().connect(host, tcp) {
        Err(HandshakeError::Failure(failed)) => {
            let result = failed.ssl().verify_result();
            (result.as_raw() != X509_V_OK).then(|| result.error_string().to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::codes::seen_in_tests::*;

    #[test]
    fn openssl_failures_are_sorted_by_their_codes() {
        let cases = [
            (
                X509_V_ERR_HOSTNAME_MISMATCH,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                Verdict::HostnameMismatch,
            ),
            (
                X509_V_ERR_IP_ADDRESS_MISMATCH,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                Verdict::HostnameMismatch,
            ),
            (
                X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                Verdict::NotTrusted,
            ),
            (
                X509_V_ERR_CERT_HAS_EXPIRED,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                Verdict::NotTrusted,
            ),
            (
                X509_V_OK,
                Some(SSL_R_TLSV1_ALERT_PROTOCOL_VERSION),
                Verdict::Alert,
            ),
            (
                X509_V_OK,
                Some(SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE),
                Verdict::Alert,
            ),
            (
                X509_V_OK,
                Some(SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED),
                Verdict::Alert,
            ),
            // --insecure: the result is recorded, but the alert is the cause.
            (
                X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
                Some(SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE),
                Verdict::Alert,
            ),
            (
                X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
                None,
                Verdict::NotTrusted,
            ),
            (
                X509_V_OK,
                Some(SSL_R_UNEXPECTED_EOF_WHILE_READING),
                Verdict::Other,
            ),
            (X509_V_OK, None, Verdict::Other),
        ];
        for (verify, reason, expected) in cases {
            assert_eq!(verdict(verify, reason), expected, "{verify} {reason:?}");
        }
    }

    #[test]
    fn rustls_failures_are_sorted_by_kind() {
        use rustls::{AlertDescription, CertificateError, Error};
        let sorted = |e| match sort_rustls(e) {
            ConnectError::HostnameMismatch => "hostname",
            ConnectError::NotTrusted(_) => "not trusted",
            ConnectError::Alert(_) => "alert",
            ConnectError::Other(_) => "other",
            ConnectError::TimedOut | ConnectError::Io(_) => "io",
            ConnectError::ClearText(_) => "clear text",
        };
        let cases = [
            (
                Error::InvalidCertificate(CertificateError::NotValidForName),
                "hostname",
            ),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "not trusted",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "not trusted",
            ),
            (
                Error::AlertReceived(AlertDescription::CertificateRequired),
                "alert",
            ),
            (Error::HandshakeNotComplete, "other"),
        ];
        for (error, expected) in cases {
            let shown = format!("{error:?}");
            assert_eq!(sorted(error), expected, "{shown}");
        }
    }

    #[test]
    fn tls_records_are_told_from_clear_text() {
        for tls in [
            &[0x16, 0x03, 0x03, 0x00, 0x7a][..],
            &[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46],
            &[0x16],
        ] {
            assert!(looks_like_tls(tls), "{tls:?}");
        }
        for clear in [
            &b""[..],
            b"X",
            b"X\n",
            b"A0FAC0B1234",
            b"HTTP/1.1 400",
            &[0x16, 0x30],
        ] {
            assert!(!looks_like_tls(clear), "{clear:?}");
        }
    }

    /// A server on `listener` that reads a little, answers `answer` and closes.
    fn answering(
        listener: std::net::TcpListener,
        answer: &'static [u8],
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = s.read(&mut [0u8; 512]);
            let _ = s.write_all(answer);
        })
    }

    fn connected(listener: &std::net::TcpListener) -> TcpStream {
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        tcp
    }

    #[test]
    fn a_clear_text_answer_to_a_client_hello_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = connected(&listener);
        let server = answering(listener, b"X\n");
        let connector = Connector::new(&Trust::Insecure, None, TlsVersion::Tls13).unwrap();
        match connector.connect("localhost", tcp) {
            Err(ConnectError::ClearText(first)) => assert_eq!(first, b"X\n"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a handshake with a clear-text server"),
        }
        server.join().unwrap();
        // A server that closes without a byte gives no such evidence.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = connected(&listener);
        let server = answering(listener, b"");
        let err = connector.connect("localhost", tcp).err().unwrap();
        assert!(!matches!(err, ConnectError::ClearText(_)), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_probe_tells_a_tls_server_from_a_plain_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = connected(&listener);
        // The start of a ServerHello record, then the close.
        let server = answering(listener, &[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02]);
        assert!(answers_tls(tcp));
        server.join().unwrap();
        for answer in [&b"X"[..], b""] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let tcp = connected(&listener);
            let server = answering(listener, answer);
            assert!(!answers_tls(tcp), "{answer:?}");
            server.join().unwrap();
        }
    }

    #[test]
    fn an_alert_is_found_under_a_read_error() {
        let rustls_alert = io::Error::new(
            ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        assert_eq!(
            alert_received(&rustls_alert).as_deref(),
            Some("CertificateRequired")
        );
        let other = io::Error::new(ErrorKind::InvalidData, rustls::Error::HandshakeNotComplete);
        assert_eq!(alert_received(&other), None);
        assert_eq!(
            alert_received(&io::Error::from(ErrorKind::ConnectionReset)),
            None
        );
    }

    #[test]
    fn a_bad_server_name_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let (cert, _) = super::super::tests::self_signed("ca", false);
        std::fs::write(&ca, cert.to_pem().unwrap()).unwrap();
        let err = ResumingConnector::new(
            &ca,
            None,
            TlsVersion::Tls13,
            ResumeWith::Ticket,
            "not a name!",
        )
        .err()
        .unwrap();
        assert_eq!(err.path, Path::new("--servername"));
        assert_eq!(
            err.kind,
            TlsErrorKind::NotAServerName {
                name: "not a name!".into()
            }
        );
        assert!(
            ResumingConnector::new(
                &ca,
                None,
                TlsVersion::Tls12,
                ResumeWith::SessionId,
                "wwep.test"
            )
            .is_ok()
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let missing = Path::new("no/such/ca.pem");
        let err = Connector::new(&Trust::CaFile(missing.into()), None, TlsVersion::Tls13)
            .err()
            .unwrap();
        assert_eq!(err.path, missing);
        assert!(matches!(err.kind, TlsErrorKind::Unreadable(_)), "{err}");
    }

    #[test]
    fn only_a_failed_verification_counts_as_a_rejection() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        // Nobody listening: the server may come later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert_eq!(
            certificate_rejection("127.0.0.1", port, None, deadline),
            None
        );
        // Not TLS at all (it closes at once): not a certificate problem either.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let closer = std::thread::spawn(move || drop(listener.accept()));
        assert_eq!(
            certificate_rejection("127.0.0.1", port, None, deadline),
            None
        );
        closer.join().unwrap();
    }
}
