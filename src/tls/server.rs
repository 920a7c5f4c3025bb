//! The TLS port's side: the acceptor built from the loaded identities, the
//! non-blocking handshake a session steps through, the sorting of failed
//! handshakes by kind, and the dates of the certificates in service.

use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey};
use openssl::ssl::{
    ErrorCode, HandshakeError, MidHandshakeSslStream, Ssl, SslAcceptor, SslAcceptorBuilder,
    SslContext, SslFiletype, SslMethod, SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509VerifyResult};

use crate::acl::CommonName;
use crate::input_file::MAX_CRL_BYTES;

use super::codes::*;
use super::crl::{self, Revocations};
use super::{
    ClientAuth, DEFAULT_TLS12_CIPHERS, DEFAULT_TLS13_CIPHERSUITES, Identity, TlsError,
    TlsErrorKind, TlsSettings, TlsVersion, first_reason, load_certificates, looks_like_pem,
    read_file, unix_time,
};

/// The socket under a server-side TLS session. It is taken back out when the
/// session closes, so the close can linger on the plain socket.
struct TlsSocket(Option<TcpStream>);

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
    /// The client's certificate did not verify for any reason but those
    /// below: most often, it was not signed by a CA in `--client-ca`.
    UnknownCa,
    /// The client's certificate is listed in a `--client-crl`.
    Revoked,
    /// The client's certificate (or one in its chain) is past its notAfter.
    Expired,
    /// The client's certificate (or one in its chain) is before its
    /// notBefore by the server's clock: the server's clock is behind or the
    /// CA's was ahead; the board's clock plays no part.
    NotYetValid,
    /// The client's certificate could not be checked against a `--client-crl`:
    /// the CA's list is past its nextUpdate (or before its lastUpdate), none
    /// was given for the certificate's CA, or it cannot be used (bad
    /// signature, a CA not allowed to sign CRLs). The operator's list, not the
    /// client, is at fault, and every client of that CA is refused alike.
    Crl,
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
    /// Every kind, in the order the counters list them.
    pub const ALL: [HandshakeFailureKind; 12] = [
        Self::NoSharedCipher,
        Self::ProtocolVersion,
        Self::UnknownCa,
        Self::Revoked,
        Self::Expired,
        Self::NotYetValid,
        Self::Crl,
        Self::CertificateRequired,
        Self::NotTls,
        Self::Closed,
        Self::Timeout,
        Self::Other,
    ];

    /// A dense index (0..ALL.len()), in [`HandshakeFailureKind::ALL`] order,
    /// for per-kind tables.
    pub fn index(self) -> usize {
        match self {
            HandshakeFailureKind::NoSharedCipher => 0,
            HandshakeFailureKind::ProtocolVersion => 1,
            HandshakeFailureKind::UnknownCa => 2,
            HandshakeFailureKind::Revoked => 3,
            HandshakeFailureKind::Expired => 4,
            HandshakeFailureKind::NotYetValid => 5,
            HandshakeFailureKind::Crl => 6,
            HandshakeFailureKind::CertificateRequired => 7,
            HandshakeFailureKind::NotTls => 8,
            HandshakeFailureKind::Closed => 9,
            HandshakeFailureKind::Timeout => 10,
            HandshakeFailureKind::Other => 11,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HandshakeFailureKind::NoSharedCipher => "no shared cipher",
            HandshakeFailureKind::ProtocolVersion => "protocol version",
            HandshakeFailureKind::UnknownCa => "unknown CA",
            HandshakeFailureKind::Revoked => "certificate revoked",
            HandshakeFailureKind::Expired => "certificate expired",
            HandshakeFailureKind::NotYetValid => "certificate not yet valid",
            HandshakeFailureKind::Crl => "client CRL out of date or unusable",
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

/// Sorts a failed handshake by OpenSSL's verify result for the client's
/// certificate (its number, never its words), then the reason code it raised;
/// `closed` when the client hung up without a reason being raised.
fn failure_kind(verify: i32, reason: Option<i32>, closed: bool) -> HandshakeFailureKind {
    match (verify, reason) {
        (X509_V_ERR_CERT_REVOKED, _) => HandshakeFailureKind::Revoked,
        (X509_V_ERR_CERT_HAS_EXPIRED, _) => HandshakeFailureKind::Expired,
        (X509_V_ERR_CERT_NOT_YET_VALID, _) => HandshakeFailureKind::NotYetValid,
        (
            X509_V_ERR_UNABLE_TO_GET_CRL
            | X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE
            | X509_V_ERR_CRL_SIGNATURE_FAILURE
            | X509_V_ERR_CRL_NOT_YET_VALID
            | X509_V_ERR_CRL_HAS_EXPIRED
            | X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD
            | X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD
            | X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER
            | X509_V_ERR_KEYUSAGE_NO_CRL_SIGN
            | X509_V_ERR_UNHANDLED_CRITICAL_CRL_EXTENSION
            | X509_V_ERR_DIFFERENT_CRL_SCOPE
            | X509_V_ERR_CRL_PATH_VALIDATION_ERROR,
            _,
        ) => HandshakeFailureKind::Crl,
        (X509_V_OK, Some(SSL_R_NO_SHARED_CIPHER | SSL_R_NO_SHARED_GROUPS)) => {
            HandshakeFailureKind::NoSharedCipher
        }
        (
            X509_V_OK,
            Some(SSL_R_UNSUPPORTED_PROTOCOL | SSL_R_VERSION_TOO_LOW | SSL_R_NO_PROTOCOLS_AVAILABLE),
        ) => HandshakeFailureKind::ProtocolVersion,
        (X509_V_OK, Some(SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)) => {
            HandshakeFailureKind::CertificateRequired
        }
        (X509_V_OK, Some(SSL_R_CERTIFICATE_VERIFY_FAILED)) => HandshakeFailureKind::UnknownCa,
        (X509_V_OK, Some(SSL_R_WRONG_VERSION_NUMBER | SSL_R_HTTP_REQUEST)) => {
            HandshakeFailureKind::NotTls
        }
        (X509_V_OK, Some(SSL_R_UNEXPECTED_EOF_WHILE_READING)) => HandshakeFailureKind::Closed,
        (X509_V_OK, _) if closed => HandshakeFailureKind::Closed,
        (X509_V_OK, _) => HandshakeFailureKind::Other,
        // Any other verify result: the certificate's chain did not verify.
        _ => HandshakeFailureKind::UnknownCa,
    }
}

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
            // The peer hung up: a clean close, or EOF with no error underneath.
            let closed = error.code() == ErrorCode::ZERO_RETURN
                || (error.code() == ErrorCode::SYSCALL && error.io_error().is_none());
            let kind = failure_kind(verify.as_raw(), reason, closed);
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

/// Everything a server context is built from, loaded once: a renewal (fresh
/// session cache and ticket keys) rebuilds the context from it without reading
/// certificates again.
struct Material {
    identities: Vec<Identity>,
    client_auth: ClientAuth,
    client_cas: Vec<X509>,
    settings: TlsSettings,
    legacy: bool,
    /// When the first client CA's CRL goes stale, as Unix time.
    crl_next_update: Option<i64>,
}

impl Acceptor {
    /// Builds the server context from one or two identities (an RSA and an
    /// ECDSA certificate side by side: OpenSSL serves each client the one it
    /// can use): TLS 1.2 and 1.3, forward-secret AEAD suites, a session cache
    /// and session tickets, and for mutual TLS a required client certificate
    /// signed by a CA in the given file, checked against the CRLs.
    ///
    /// A CRL past its nextUpdate (or before its lastUpdate) makes OpenSSL
    /// refuse every client of its CA. It is still loaded, with a warning that
    /// names the file and the date, at start as at reload: refusing it would
    /// let a stale list take the whole port down at a restart, or keep a
    /// renewed certificate out at a reload.
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
        Identity::check_distinct_key_types(&identities)?;
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
        let revocations = Revocations::read(&settings.client_crls)?;
        for stale in revocations.stale_at(crl::now_unix()) {
            log::warn!("{stale}");
        }
        let material = Arc::new(Material {
            identities,
            client_auth: client_auth.clone(),
            client_cas,
            settings: settings.clone(),
            legacy,
            crl_next_update: revocations.next_update_unix(),
        });
        Self::build(material)
    }

    fn build(material: Arc<Material>) -> Result<Acceptor, TlsError> {
        let first = &material.identities[0];
        let cert_err = |e: ErrorStack| TlsError::refused(&first.cert_path, &e);
        let mut b =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(cert_err)?;
        set_versions_and_ciphers(&mut b, &material, cert_err)?;
        set_identities(&mut b, &material)?;
        // A client's flight (change-cipher-spec and Finished, then its request)
        // arrives as several records; reading ahead takes them in one read
        // instead of two per record. Safe here because a session only waits
        // for its socket after OpenSSL has asked for more bytes than it holds.
        b.set_read_ahead(true);
        set_session_cache(&mut b, &material.settings, cert_err)?;
        if let ClientAuth::Required { ca } = &material.client_auth {
            require_client_certificates(&mut b, &material, ca)?;
        }
        let renew_at = std::time::Instant::now() + material.settings.session_lifetime;
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

    /// The earliest expiry of the served leaf certificates, as Unix time (for
    /// `wwep_tls_certificate_not_after_seconds`); None if OpenSSL cannot say.
    pub fn earliest_not_after_unix(&self) -> Option<i64> {
        self.material
            .identities
            .iter()
            .filter_map(|identity| unix_time(identity.chain[0].not_after()))
            .min()
    }

    /// When the first client CA's `--client-crl` list passes its nextUpdate,
    /// as Unix time (for `wwep_tls_client_crl_next_update_seconds`): per CA
    /// the freshest list's, the earliest of those. None without lists that
    /// name one.
    pub fn client_crl_next_update_unix(&self) -> Option<i64> {
        self.material.crl_next_update
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

    /// The common name of the client's verified certificate (mutual TLS):
    /// every CN in its subject is read, so a second one, or one that is not
    /// text, makes it ambiguous rather than passing unseen.
    pub fn peer_common_name(&self) -> Option<CommonName> {
        let cert = self.ssl.ssl().peer_certificate()?;
        let entries = cert.subject_name().entries_by_nid(Nid::COMMONNAME);
        CommonName::read(entries.map(|entry| {
            let data = entry.data();
            data.to_string().map_err(|_| data.as_slice().to_vec())
        }))
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

/// The lowest version (and, for a legacy certificate, OpenSSL's security
/// level 0) and the cipher lists, each error naming its flag.
fn set_versions_and_ciphers(
    b: &mut SslAcceptorBuilder,
    material: &Material,
    cert_err: impl Fn(ErrorStack) -> TlsError,
) -> Result<(), TlsError> {
    let settings = &material.settings;
    if material.legacy {
        b.set_security_level(0);
    }
    let min = match settings.min {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
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
    Ok(())
}

/// Every certificate and key (one per key type), each checked against the
/// other, and each intermediate sent once.
fn set_identities(b: &mut SslAcceptorBuilder, material: &Material) -> Result<(), TlsError> {
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
    Ok(())
}

/// Sessions (with or without client certificates) resume only within a
/// context that names itself; the cache is off or sized as set; TLS 1.3
/// handshakes end with as many tickets as `--tls-tickets` says (OpenSSL sends
/// two unless told otherwise; each costs an encryption and a record).
fn set_session_cache(
    b: &mut SslAcceptorBuilder,
    settings: &TlsSettings,
    cert_err: impl Fn(ErrorStack) -> TlsError,
) -> Result<(), TlsError> {
    b.set_session_id_context(b"wwep").map_err(cert_err)?;
    if settings.session_cache == 0 {
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
    } else {
        b.set_session_cache_mode(SslSessionCacheMode::SERVER);
        b.set_session_cache_size(settings.session_cache.min(i32::MAX as usize) as i32);
    }
    b.set_num_tickets(settings.tickets)
        .map_err(|e| TlsError::refused(Path::new("--tls-tickets"), &e))?;
    Ok(())
}

/// Mutual TLS: the client CAs named in the handshake and trusted, the CRLs
/// checked, and a certificate required.
fn require_client_certificates(
    b: &mut SslAcceptorBuilder,
    material: &Material,
    ca: &Path,
) -> Result<(), TlsError> {
    let ca_err = |e: ErrorStack| TlsError::refused(ca, &e);
    let mut store = X509StoreBuilder::new().map_err(ca_err)?;
    for cert in &material.client_cas {
        b.add_client_ca(cert).map_err(ca_err)?;
        store.add_cert(cert.clone()).map_err(ca_err)?;
    }
    let crls = &material.settings.client_crls;
    if !crls.is_empty() {
        let lookup = store.add_lookup(X509Lookup::file()).map_err(ca_err)?;
        for crl in crls {
            let crl_err = |e: ErrorStack| TlsError::refused(crl, &e);
            let kind = if looks_like_pem(&read_file(crl, MAX_CRL_BYTES)?) {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::codes::seen_in_tests::*;

    #[test]
    fn failures_are_sorted_by_verify_result_then_reason() {
        use HandshakeFailureKind::*;
        // The certificate verified (or was not asked for) and the peer did
        // not close: the reason code decides.
        let by_reason = [
            (SSL_R_CERTIFICATE_VERIFY_FAILED, UnknownCa),
            (SSL_R_NO_SHARED_CIPHER, NoSharedCipher),
            (SSL_R_NO_SHARED_GROUPS, NoSharedCipher),
            (SSL_R_UNSUPPORTED_PROTOCOL, ProtocolVersion),
            (SSL_R_VERSION_TOO_LOW, ProtocolVersion),
            (SSL_R_NO_PROTOCOLS_AVAILABLE, ProtocolVersion),
            (SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE, CertificateRequired),
            (SSL_R_WRONG_VERSION_NUMBER, NotTls),
            (SSL_R_HTTP_REQUEST, NotTls),
            (SSL_R_UNEXPECTED_EOF_WHILE_READING, Closed),
            (SSL_R_SSLV3_ALERT_BAD_CERTIFICATE, Other),
        ];
        for (reason, expected) in by_reason {
            let kind = failure_kind(X509_V_OK, Some(reason), false);
            assert_eq!(kind, expected, "reason {reason}");
        }
        let cases = [
            (
                X509_V_ERR_CERT_REVOKED,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                false,
                Revoked,
            ),
            (
                X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                false,
                UnknownCa,
            ),
            (
                X509_V_ERR_CERT_HAS_EXPIRED,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                false,
                Expired,
            ),
            (
                X509_V_ERR_CERT_NOT_YET_VALID,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                false,
                NotYetValid,
            ),
            (X509_V_ERR_CERT_HAS_EXPIRED, None, true, Expired),
            (
                X509_V_ERR_CRL_HAS_EXPIRED,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                false,
                Crl,
            ),
            (X509_V_ERR_CRL_NOT_YET_VALID, None, true, Crl),
            (
                X509_V_ERR_UNABLE_TO_GET_CRL,
                Some(SSL_R_CERTIFICATE_VERIFY_FAILED),
                false,
                Crl,
            ),
            (X509_V_ERR_CRL_SIGNATURE_FAILURE, None, false, Crl),
            (
                X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
                None,
                false,
                UnknownCa,
            ),
            (X509_V_OK, None, true, Closed),
            (X509_V_OK, None, false, Other),
        ];
        for (verify, reason, closed, expected) in cases {
            assert_eq!(
                failure_kind(verify, reason, closed),
                expected,
                "{verify} {reason:?} {closed}"
            );
        }
    }

    #[test]
    fn kind_indexes_are_dense_and_in_order() {
        for (i, kind) in HandshakeFailureKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind}");
        }
    }

    #[test]
    fn kinds_have_distinct_names() {
        let all = HandshakeFailureKind::ALL;
        let names: std::collections::HashSet<_> = all.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn the_earliest_expiry_is_in_unix_time() {
        let (cert, key) = crate::tls::tests::self_signed("board", false);
        let identity = Identity {
            chain: vec![cert],
            key,
            cert_path: "board.pem".into(),
        };
        let acceptor =
            Acceptor::new(vec![identity], &ClientAuth::Off, &TlsSettings::default()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let not_after = acceptor.earliest_not_after_unix().unwrap();
        // The test certificate is valid for 365 days from now.
        assert!(
            (not_after - now - 365 * 86_400).abs() < 120,
            "{not_after} {now}"
        );
    }

    #[test]
    fn no_identity_names_the_flag() {
        let err = Acceptor::new(Vec::new(), &ClientAuth::Off, &TlsSettings::default())
            .err()
            .unwrap();
        assert_eq!(
            err,
            TlsError::new(Path::new("--cert"), TlsErrorKind::NoCertificateGiven)
        );
    }
}
