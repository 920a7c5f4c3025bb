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

/// The server's TLS acceptor, built once and shared by every worker.
pub struct Acceptor {
    inner: native_tls::TlsAcceptor,
}

pub type ServerStream = native_tls::TlsStream<std::net::TcpStream>;

impl Acceptor {
    /// Builds an acceptor that speaks TLS 1.2 and later.
    pub fn new(identity: &Identity) -> Result<Acceptor, TlsError> {
        let inner = native_tls::TlsAcceptor::builder(identity.to_native()?)
            .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
            .build()
            .map_err(|e| {
                TlsError::new(&identity.cert_path, format!("cannot use certificate: {e}"))
            })?;
        Ok(Acceptor { inner })
    }

    /// Runs the server side of the handshake on a stream whose timeouts are set.
    pub fn accept(&self, stream: std::net::TcpStream) -> Result<ServerStream, String> {
        self.inner.accept(stream).map_err(|e| match e {
            native_tls::HandshakeError::Failure(e) => e.to_string(),
            native_tls::HandshakeError::WouldBlock(_) => "handshake timed out".to_string(),
        })
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
) -> Result<native_tls::TlsConnector, TlsError> {
    let mut builder = native_tls::TlsConnector::builder();
    builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
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
