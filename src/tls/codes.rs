//! OpenSSL's numbers for what went wrong in a handshake (ssl/sslerr.h, ssl/ssl.h,
//! x509_vfy.h), stable across 1.1 and 3.x: one list for the server and client sides.

// Reason codes (ssl/sslerr.h).
pub(super) const SSL_R_CERTIFICATE_VERIFY_FAILED: i32 = 134;
pub(super) const SSL_R_HTTP_REQUEST: i32 = 156;
pub(super) const SSL_R_NO_PROTOCOLS_AVAILABLE: i32 = 191;
pub(super) const SSL_R_NO_SHARED_CIPHER: i32 = 193;
pub(super) const SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: i32 = 199;
pub(super) const SSL_R_UNSUPPORTED_PROTOCOL: i32 = 258;
pub(super) const SSL_R_WRONG_VERSION_NUMBER: i32 = 267;
pub(super) const SSL_R_UNEXPECTED_EOF_WHILE_READING: i32 = 294;
pub(super) const SSL_R_VERSION_TOO_LOW: i32 = 396;
pub(super) const SSL_R_NO_SHARED_GROUPS: i32 = 410;
/// A received alert is reported as this plus the alert's number (0–255).
pub(super) const SSL_AD_REASON_OFFSET: i32 = 1000;

// Verify results (x509_vfy.h).
pub(super) const X509_V_OK: i32 = 0;
pub(super) const X509_V_ERR_UNABLE_TO_GET_CRL: i32 = 3;
pub(super) const X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE: i32 = 5;
pub(super) const X509_V_ERR_CRL_SIGNATURE_FAILURE: i32 = 8;
pub(super) const X509_V_ERR_CERT_NOT_YET_VALID: i32 = 9;
pub(super) const X509_V_ERR_CERT_HAS_EXPIRED: i32 = 10;
pub(super) const X509_V_ERR_CRL_NOT_YET_VALID: i32 = 11;
pub(super) const X509_V_ERR_CRL_HAS_EXPIRED: i32 = 12;
pub(super) const X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD: i32 = 15;
pub(super) const X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD: i32 = 16;
pub(super) const X509_V_ERR_CERT_REVOKED: i32 = 23;
pub(super) const X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER: i32 = 33;
pub(super) const X509_V_ERR_KEYUSAGE_NO_CRL_SIGN: i32 = 35;
pub(super) const X509_V_ERR_UNHANDLED_CRITICAL_CRL_EXTENSION: i32 = 36;
pub(super) const X509_V_ERR_DIFFERENT_CRL_SCOPE: i32 = 44;
pub(super) const X509_V_ERR_CRL_PATH_VALIDATION_ERROR: i32 = 54;
pub(super) const X509_V_ERR_HOSTNAME_MISMATCH: i32 = 62;
pub(super) const X509_V_ERR_IP_ADDRESS_MISMATCH: i32 = 64;

/// Numbers only the tests produce by hand.
#[cfg(test)]
pub(super) mod seen_in_tests {
    pub(in crate::tls) const SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE: i32 = 1040;
    pub(in crate::tls) const SSL_R_SSLV3_ALERT_BAD_CERTIFICATE: i32 = 1042;
    pub(in crate::tls) const SSL_R_TLSV1_ALERT_PROTOCOL_VERSION: i32 = 1070;
    pub(in crate::tls) const SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED: i32 = 1116;
    pub(in crate::tls) const X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: i32 = 18;
    pub(in crate::tls) const X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: i32 = 20;
}
