//! Everything about certificates and keys: loading them from the files an operator
//! or course hands out, the errors that name those files, and the settings the
//! server and client sides are built from.
//!
//! [`server`] holds the TLS port's acceptor and its non-blocking handshake,
//! [`client`] the connectors the blocking client uses. Both are the openssl
//! crate, except the client that resumes sessions as a board does, which is
//! rustls. Keys are read here in every form openssl writes (PKCS#8, PKCS#1
//! `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`, PEM or DER). Nothing outside this
//! folder names a type of a TLS crate: what the rest of the server needs is
//! said in this crate's own types. Every error names the file it is about.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::error::ErrorStack;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{Id, PKey, Private};
use openssl::provider::Provider;
use openssl::x509::{X509, X509NameRef};

use crate::input_file::{InputFileError, MAX_FILE_BYTES};

pub mod client;
mod codes;
mod crl;
pub mod server;

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
    /// Missing, not a regular file, or too large.
    Unreadable(InputFileError),
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
    /// A second certificate whose key is of the same type as the first's
    /// (`other`): it would replace the first for every client.
    SameKeyType {
        key_type: &'static str,
        other: PathBuf,
    },
    NotPkcs12,
    Pkcs12Locked,
    /// Encrypted with RC2 or DES, and OpenSSL's legacy provider is not installed.
    Pkcs12NeedsLegacy,
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
    /// A server name a certificate cannot be checked against.
    NotAServerName {
        name: String,
    },
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
            TlsErrorKind::SameKeyType { key_type, other } => write!(
                f,
                "holds a {key_type} key, as {} does; two certificates are served side by side only when one is RSA and the other ECDSA",
                other.display()
            ),
            TlsErrorKind::NotPkcs12 => f.write_str("not a PKCS#12 file"),
            TlsErrorKind::Pkcs12Locked => {
                f.write_str("cannot open PKCS#12 file: wrong password or damaged file")
            }
            TlsErrorKind::Pkcs12NeedsLegacy => f.write_str(
                "PKCS#12 file is encrypted with RC2 or DES, which needs OpenSSL's legacy provider (ossl-modules/legacy.so), not found; re-export it with `openssl pkcs12 -legacy -in FILE -nodes | openssl pkcs12 -export`",
            ),
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
            TlsErrorKind::NotAServerName { name } => {
                write!(f, "'{name}' is not a valid server name")
            }
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

/// A certificate that expires within this many days is warned about, at
/// start and at every reload.
pub const EXPIRY_WARNING_DAYS: i32 = 30;

/// When certificates are loaded, for how their dates are judged
/// ([`Identity::judge_dates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loading {
    /// At startup: nothing else is being served.
    Start,
    /// On SIGHUP: the certificate in service stays if the new one is refused.
    Reload,
}

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
    chain: Vec<X509>,
    key: PKey<Private>,
    /// The file the leaf came from, for messages.
    cert_path: PathBuf,
}

/// Reads a certificate, key, CA or PKCS#12 file of at most `max_bytes`
/// ([`MAX_FILE_BYTES`] but for CRLs): a regular file, never a FIFO or device.
fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, TlsError> {
    crate::input_file::read(path, max_bytes)
        .map_err(|e| TlsError::new(path, TlsErrorKind::Unreadable(e)))
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Reads every certificate in a file: PEM with any number of certificates and free
/// text between them, or a single DER certificate (`.cer`).
fn load_certificates(path: &Path) -> Result<Vec<X509>, TlsError> {
    let bytes = read_file(path, MAX_FILE_BYTES)?;
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
fn load_private_key(path: &Path) -> Result<PKey<Private>, TlsError> {
    let bytes = read_file(path, MAX_FILE_BYTES)?;
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

// OpenSSL 3's numbers (include/openssl/err.h): an algorithm no loaded
// provider implements is reported by the EVP library as ERR_R_UNSUPPORTED.
const ERR_LIB_EVP: i32 = 6;
const ERR_R_UNSUPPORTED: i32 = 0x8010C;

/// Whether an error stack says an algorithm is not available: what OpenSSL 3
/// reports for RC2 and single DES until its legacy provider is loaded.
fn needs_legacy_provider(e: &ErrorStack) -> bool {
    e.errors()
        .iter()
        .any(|e| e.library_code() == ERR_LIB_EVP && e.reason_code() == ERR_R_UNSUPPORTED)
}

/// Loads OpenSSL 3's legacy provider the first time a file needs it and keeps
/// it for the life of the process, the default provider staying available
/// beside it. False where it is not installed.
fn legacy_provider_loaded() -> bool {
    static LEGACY: OnceLock<Option<Provider>> = OnceLock::new();
    LEGACY
        .get_or_init(|| match Provider::try_load(None, "legacy", true) {
            Ok(provider) => {
                log::info!(
                    "loaded OpenSSL's legacy provider for a PKCS#12 file encrypted with RC2 or DES"
                );
                Some(provider)
            }
            Err(e) => {
                log::warn!(
                    "a PKCS#12 file needs OpenSSL's legacy provider, which cannot be loaded: {}",
                    first_reason(&e)
                );
                None
            }
        })
        .is_some()
}

/// The most readable part of an openssl error stack.
fn first_reason(e: &ErrorStack) -> String {
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
                let bytes = read_file(file, MAX_FILE_BYTES)?;
                let pkcs12 = Pkcs12::from_der(&bytes)
                    .map_err(|_| TlsError::new(file, TlsErrorKind::NotPkcs12))?;
                let locked = |_| TlsError::new(file, TlsErrorKind::Pkcs12Locked);
                let parsed = match pkcs12.parse2(password) {
                    Ok(parsed) => parsed,
                    // The password was right (the MAC verified) but the
                    // contents are encrypted with an algorithm of OpenSSL 3's
                    // legacy provider: RC2-40, what `openssl pkcs12 -export
                    // -legacy` and OpenSSL 1.x write.
                    Err(e) if needs_legacy_provider(&e) => match legacy_provider_loaded() {
                        true => pkcs12.parse2(password).map_err(locked)?,
                        false => {
                            return Err(TlsError::new(file, TlsErrorKind::Pkcs12NeedsLegacy));
                        }
                    },
                    Err(e) => return Err(locked(e)),
                };
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

    /// The name of the key's type, for messages.
    fn key_type(&self) -> &'static str {
        match self.key.id() {
            Id::RSA => "RSA",
            Id::EC => "ECDSA",
            Id::ED25519 => "Ed25519",
            Id::ED448 => "Ed448",
            Id::DSA => "DSA",
            _ => "non-RSA, non-ECDSA",
        }
    }

    /// Refuses a second identity with a key of the first's type: OpenSSL
    /// keeps one certificate per key type, so the second would silently
    /// replace the first.
    pub fn check_distinct_key_types(identities: &[Identity]) -> Result<(), TlsError> {
        if let [first, second] = identities
            && first.key.id() == second.key.id()
        {
            return Err(TlsError::new(
                &second.cert_path,
                TlsErrorKind::SameKeyType {
                    key_type: second.key_type(),
                    other: first.cert_path.clone(),
                },
            ));
        }
        Ok(())
    }

    /// Judges the certificate's dates the same way at start and at reload: one
    /// not valid yet is refused; one that expires within
    /// [`EXPIRY_WARNING_DAYS`] gives a warning (returned). An expired leaf is
    /// refused on reload (the one in service stays) but served with a warning
    /// at start, as the course's long-expired certificates must be.
    pub fn judge_dates(&self, loading: Loading) -> Result<Vec<String>, TlsError> {
        match self.check_validity_now() {
            Err(TlsError {
                kind: TlsErrorKind::Expired { .. },
                ..
            }) if loading == Loading::Start => {}
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        Ok(self.expiry_warnings())
    }

    fn error(&self, e: ErrorStack) -> TlsError {
        TlsError::refused(&self.cert_path, &e)
    }

    /// Refuses a leaf certificate that is expired or not yet valid (see
    /// [`Identity::judge_dates`] for how start and reload use it).
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

    /// Warnings for certificates in the chain that have expired or expire within
    /// [`EXPIRY_WARNING_DAYS`] days.
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
            } else if diff.days < EXPIRY_WARNING_DAYS {
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
fn subject_name(cert: &X509) -> String {
    name_text(cert.subject_name())
}

/// `CN=…, O=…` of a certificate's or CRL's name.
fn name_text(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
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

/// A certificate's or CRL's date as Unix time; None if OpenSSL cannot say.
fn unix_time(t: &Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
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

/// A TLS protocol version: the oldest the TLS port accepts (`--tls-min`), or
/// the newest a client offers (`bench --tls12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum TlsVersion {
    /// What embedded stacks of the boards' generation speak.
    #[value(name = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    Tls13,
}

/// How the TLS port negotiates, besides who it is and whom it asks for a
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The oldest version accepted: 1.2 by default.
    pub min: TlsVersion,
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
    /// Session tickets sent after each TLS 1.3 handshake (0 sends none).
    pub tickets: usize,
}

/// Sessions kept by default: a board's session is ~200 bytes in OpenSSL's cache.
pub const DEFAULT_SESSION_CACHE: usize = 20_480;
/// OpenSSL's default session timeout; the openssl crate has no call to set
/// another, so sessions cannot live longer.
pub const MAX_SESSION_LIFETIME_SECS: u64 = 300;
/// Session tickets sent after a TLS 1.3 handshake by default: a board that
/// connects once per message resumes with one, and makes one connection at a
/// time (OpenSSL's own default is 2, the second for a client that opens two
/// connections at once).
pub const DEFAULT_TLS_TICKETS: usize = 1;
/// The most tickets `--tls-tickets` may ask for: each costs the server an
/// encryption and a record on every full handshake.
pub const MAX_TLS_TICKETS: usize = 8;

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            min: TlsVersion::Tls12,
            ciphers: None,
            ciphersuites: None,
            client_crls: Vec::new(),
            session_cache: DEFAULT_SESSION_CACHE,
            session_lifetime: std::time::Duration::from_secs(MAX_SESSION_LIFETIME_SECS),
            tickets: DEFAULT_TLS_TICKETS,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::x509::{X509Builder, X509NameBuilder};

    /// A self-signed certificate for `cn` with an EC P-256 key, or RSA-2048.
    pub(crate) fn self_signed(cn: &str, rsa: bool) -> (X509, PKey<Private>) {
        let key = if rsa {
            PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
        } else {
            let group =
                openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
            PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap()
        };
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(365).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn common_name(cert: &X509) -> String {
        subject_name(cert)
    }

    #[test]
    fn a_pem_bundle_with_text_between_certificates_loads_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (leaf, _) = self_signed("leaf", false);
        let (ca, _) = self_signed("ca", false);
        let mut bundle = b"# issued for the course, do not share\n".to_vec();
        bundle.extend(leaf.to_pem().unwrap());
        bundle.extend(b"\nsubject=CN = ca\nissuer=CN = ca\n\n");
        bundle.extend(ca.to_pem().unwrap());
        bundle.extend(b"trailing words\n");
        let path = write(&dir, "bundle.pem", &bundle);
        let certs = load_certificates(&path).unwrap();
        let names: Vec<String> = certs.iter().map(common_name).collect();
        assert_eq!(names, ["CN=leaf", "CN=ca"]);
    }

    #[test]
    fn a_der_certificate_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed("board", false);
        let path = write(&dir, "board.cer", &cert.to_der().unwrap());
        let certs = load_certificates(&path).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].to_der().unwrap(), cert.to_der().unwrap());
    }

    #[test]
    fn certificate_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_certificates(&missing).unwrap_err();
        assert_eq!(err.path, missing);
        assert!(matches!(err.kind, TlsErrorKind::Unreadable(_)), "{err}");
        assert!(err.to_string().starts_with(&missing.display().to_string()));

        let garbage = write(&dir, "garbage.cer", b"\x30\x03not a certificate");
        let err = load_certificates(&garbage).unwrap_err();
        assert_eq!(err, TlsError::new(&garbage, TlsErrorKind::NoCertificate));

        let key_only = write(
            &dir,
            "key.pem",
            &self_signed("x", false)
                .1
                .private_key_to_pem_pkcs8()
                .unwrap(),
        );
        let err = load_certificates(&key_only).unwrap_err();
        assert_eq!(err.path, key_only);
        assert!(
            matches!(
                err.kind,
                TlsErrorKind::BadPem(_) | TlsErrorKind::NoCertificate
            ),
            "{err}"
        );
    }

    #[test]
    fn every_key_form_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (_, rsa) = self_signed("rsa", true);
        let (_, ec) = self_signed("ec", false);
        let traditional = rsa.rsa().unwrap().private_key_to_pem().unwrap();
        assert!(String::from_utf8_lossy(&traditional).contains("BEGIN RSA PRIVATE KEY"));
        let forms: [(&str, Vec<u8>, &PKey<Private>); 5] = [
            ("rsa.key", traditional, &rsa),
            ("rsa8.key", rsa.private_key_to_pem_pkcs8().unwrap(), &rsa),
            ("rsa.der", rsa.private_key_to_der().unwrap(), &rsa),
            (
                "ec.key",
                ec.ec_key().unwrap().private_key_to_pem().unwrap(),
                &ec,
            ),
            ("ec8.key", ec.private_key_to_pem_pkcs8().unwrap(), &ec),
        ];
        for (name, bytes, expected) in forms {
            let path = write(&dir, name, &bytes);
            let key = load_private_key(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(key.public_eq(expected), "{name}");
        }
    }

    #[test]
    fn key_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("x", false);
        let encrypted = key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pw")
            .unwrap();
        let cases = [
            ("locked.key", encrypted, TlsErrorKind::EncryptedKey),
            (
                "cert.pem",
                cert.to_pem().unwrap(),
                TlsErrorKind::NoPrivateKey { pem: true },
            ),
            (
                "junk.der",
                b"junk".to_vec(),
                TlsErrorKind::NoPrivateKey { pem: false },
            ),
        ];
        for (name, bytes, kind) in cases {
            let path = write(&dir, name, &bytes);
            assert_eq!(
                load_private_key(&path).err(),
                Some(TlsError::new(&path, kind)),
                "{name}"
            );
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed("a", false);
        let (_, other_key) = self_signed("b", false);
        let cert = write(&dir, "a.pem", &cert.to_pem().unwrap());
        let key = write(
            &dir,
            "b.key",
            &other_key.private_key_to_pem_pkcs8().unwrap(),
        );
        let err = Identity::load(&IdentitySource::Pem {
            cert: cert.clone(),
            key: key.clone(),
        })
        .err()
        .unwrap();
        assert_eq!(
            err,
            TlsError::new(&cert, TlsErrorKind::KeyMismatch { key: key.clone() })
        );
        assert!(
            err.to_string().contains(&key.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_fresh_identity_is_valid_and_not_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("fresh", false);
        let identity = Identity::load(&IdentitySource::Pem {
            cert: write(&dir, "c.pem", &cert.to_pem().unwrap()),
            key: write(&dir, "c.key", &key.private_key_to_pem_pkcs8().unwrap()),
        })
        .unwrap();
        assert_eq!(identity.check_validity_now(), Ok(()));
        assert!(identity.expiry_warnings().is_empty());
    }
}
