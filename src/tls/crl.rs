//! The dates of the client CRLs (`--client-crl`). OpenSSL refuses every
//! client of a CA whose list is past its nextUpdate, so the lists' dates are
//! read when they are loaded: a stale list is said at start and at reload,
//! naming its file, and when the next one goes stale is exported for an alert
//! to fire before it does.

use std::fmt;
use std::path::{Path, PathBuf};

use openssl::x509::X509Crl;

use crate::input_file::MAX_CRL_BYTES;

use super::{TlsError, TlsErrorKind, looks_like_pem, name_text, read_file, unix_time};

const PEM_CRL_BEGIN: &[u8] = b"-----BEGIN X509 CRL-----";

/// A date of a list: as Unix time, to compare, and in OpenSSL's words
/// (`Mar  7 12:00:00 2026 GMT`), for people.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Moment {
    unix: i64,
    text: String,
}

/// One CRL as read from a file: whose list it is and when it may be used.
#[derive(Debug, Clone)]
struct List {
    file: PathBuf,
    /// The issuer's name in DER: OpenSSL picks a certificate's list by it.
    issuer: Vec<u8>,
    issuer_text: String,
    /// thisUpdate (lastUpdate in OpenSSL's words); None if unreadable.
    last_update: Option<Moment>,
    /// None where the list names none (then it never goes stale).
    next_update: Option<Moment>,
}

impl List {
    fn read(file: &Path, crl: &X509Crl) -> List {
        let moment = |t: &openssl::asn1::Asn1TimeRef| {
            unix_time(t).map(|unix| Moment {
                unix,
                text: t.to_string(),
            })
        };
        List {
            file: file.to_path_buf(),
            issuer: crl.issuer_name().to_der().unwrap_or_default(),
            issuer_text: name_text(crl.issuer_name()),
            last_update: moment(crl.last_update()),
            next_update: crl.next_update().and_then(moment),
        }
    }

    /// Whether OpenSSL would use it at `now`.
    fn valid_at(&self, now: i64) -> bool {
        self.last_update.as_ref().is_none_or(|m| m.unix <= now)
            && self.next_update.as_ref().is_none_or(|m| m.unix >= now)
    }

    /// When it goes stale; `i64::MAX` for never.
    fn stale_from(&self) -> i64 {
        self.next_update.as_ref().map_or(i64::MAX, |m| m.unix)
    }
}

/// Why a client CA's lists cannot be used now, naming the file of its
/// freshest list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StaleCrl {
    pub file: PathBuf,
    pub issuer: String,
    pub state: Staleness,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Staleness {
    /// Past its nextUpdate, on this date.
    Expired { next_update: String },
    /// Before its lastUpdate (this date) by this server's clock.
    NotYetValid { last_update: String },
}

impl fmt::Display for StaleCrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        let issuer = &self.issuer;
        match &self.state {
            Staleness::Expired { next_update } => write!(
                f,
                "{file}: the CRL of {issuer} passed its nextUpdate on {next_update}; every client certificate of that CA is refused (handshake failure kind crl) until a fresh list is installed and the server reloaded (SIGHUP)"
            ),
            Staleness::NotYetValid { last_update } => write!(
                f,
                "{file}: the CRL of {issuer} is not valid before {last_update} by this server's clock (is it behind?); every client certificate of that CA is refused (handshake failure kind crl) until then"
            ),
        }
    }
}

/// Every CRL in the `--client-crl` files, with their dates.
#[derive(Debug, Clone, Default)]
pub(super) struct Revocations {
    lists: Vec<List>,
}

impl Revocations {
    /// Reads every file: PEM with one or more CRLs, or one DER CRL. A file
    /// holding none is refused, naming it.
    pub(super) fn read(files: &[PathBuf]) -> Result<Revocations, TlsError> {
        let mut lists = Vec::new();
        for file in files {
            let found = read_file_lists(file)?;
            if found.is_empty() {
                return Err(TlsError::new(file, TlsErrorKind::NoRevocationList));
            }
            if file.to_str().is_none() {
                return Err(TlsError::new(file, TlsErrorKind::NonUtf8Name));
            }
            lists.extend(found.iter().map(|crl| List::read(file, crl)));
        }
        Ok(Revocations { lists })
    }

    /// The lists grouped by issuer, in the order their issuers first appear.
    fn by_issuer(&self) -> Vec<Vec<&List>> {
        let mut groups: Vec<Vec<&List>> = Vec::new();
        for list in &self.lists {
            match groups.iter_mut().find(|g| g[0].issuer == list.issuer) {
                Some(group) => group.push(list),
                None => groups.push(vec![list]),
            }
        }
        groups
    }

    /// When the first client CA's clients start being refused for a stale
    /// list, as Unix time: per issuer the freshest list's nextUpdate (OpenSSL
    /// prefers a list in date when it holds several of one CA), the earliest
    /// of those. None when no list names a nextUpdate.
    pub(super) fn next_update_unix(&self) -> Option<i64> {
        self.by_issuer()
            .iter()
            .filter_map(|group| group.iter().map(|l| l.stale_from()).max())
            .filter(|&t| t != i64::MAX)
            .min()
    }

    /// Each client CA none of whose lists OpenSSL would use at `now`
    /// (Unix time), with why, naming its freshest list's file.
    pub(super) fn stale_at(&self, now: i64) -> Vec<StaleCrl> {
        self.by_issuer()
            .into_iter()
            .filter(|group| !group.iter().any(|l| l.valid_at(now)))
            .filter_map(|group| group.into_iter().max_by_key(|l| l.stale_from()))
            .map(|list| {
                let state = match (&list.next_update, &list.last_update) {
                    (Some(next), _) if next.unix < now => Staleness::Expired {
                        next_update: next.text.clone(),
                    },
                    (_, Some(last)) => Staleness::NotYetValid {
                        last_update: last.text.clone(),
                    },
                    // Not valid, yet neither date says why: cannot happen,
                    // as `valid_at` reads only these two dates.
                    (_, None) => Staleness::NotYetValid {
                        last_update: String::new(),
                    },
                };
                StaleCrl {
                    file: list.file.clone(),
                    issuer: list.issuer_text.clone(),
                    state,
                }
            })
            .collect()
    }
}

/// The CRLs a file holds: each PEM block, or the file as one DER list. A PEM
/// block that does not parse is left to OpenSSL's loader, which refuses the
/// file saying why.
fn read_file_lists(file: &Path) -> Result<Vec<X509Crl>, TlsError> {
    let bytes = read_file(file, MAX_CRL_BYTES)?;
    if !looks_like_pem(&bytes) {
        return Ok(X509Crl::from_der(&bytes).into_iter().collect());
    }
    let starts = bytes
        .windows(PEM_CRL_BEGIN.len())
        .enumerate()
        .filter(|(_, w)| *w == PEM_CRL_BEGIN)
        .map(|(at, _)| at);
    // Each slice begins with a block; the reader parses that one.
    Ok(starts
        .filter_map(|at| X509Crl::from_pem(&bytes[at..]).ok())
        .collect())
}

/// Now, as Unix time.
pub(super) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::{Asn1Object, Asn1OctetString, Asn1Time};
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::AuthorityKeyIdentifier;
    use openssl::x509::{X509, X509Builder, X509CrlBuilder, X509Extension};

    const DAY: i64 = 86_400;

    /// An empty CRL signed by `ca`, valid from `last` to `next` (Unix time).
    fn crl(ca: &X509, key: &PKey<Private>, last: i64, next: i64) -> X509Crl {
        let mut b = X509CrlBuilder::new().unwrap();
        b.set_issuer_name(ca.subject_name()).unwrap();
        b.set_last_update(&Asn1Time::from_unix(last).unwrap())
            .unwrap();
        b.set_next_update(&Asn1Time::from_unix(next).unwrap())
            .unwrap();
        let context = X509Builder::new().unwrap();
        let akid = AuthorityKeyIdentifier::new()
            .issuer(true)
            .build(&context.x509v3_context(Some(ca), None))
            .unwrap();
        b.append_extension(akid).unwrap();
        // cRLNumber (2.5.29.20): INTEGER 1.
        let number = X509Extension::new_from_der(
            &Asn1Object::from_str("2.5.29.20").unwrap(),
            false,
            &Asn1OctetString::new_from_bytes(&[0x02, 0x01, 0x01]).unwrap(),
        )
        .unwrap();
        b.append_extension(number).unwrap();
        b.sign(key, MessageDigest::sha256()).unwrap();
        b.build().unwrap()
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn every_list_of_a_pem_file_and_a_der_list_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_unix();
        let (a, a_key) = crate::tls::tests::self_signed("CA a", false);
        let (b, b_key) = crate::tls::tests::self_signed("CA b", false);
        let mut pem = b"# two CAs' lists\n".to_vec();
        pem.extend(crl(&a, &a_key, now - DAY, now + 7 * DAY).to_pem().unwrap());
        pem.extend(crl(&b, &b_key, now - DAY, now + 2 * DAY).to_pem().unwrap());
        let der = crl(&a, &a_key, now - DAY, now + 9 * DAY).to_der().unwrap();
        let files = [write(&dir, "both.pem", &pem), write(&dir, "a.crl", &der)];
        let lists = Revocations::read(&files).unwrap();
        assert_eq!(lists.lists.len(), 3);
        // CA a's freshest list runs 9 days, CA b's 2: b's goes stale first.
        let next = lists.next_update_unix().unwrap();
        assert!((next - (now + 2 * DAY)).abs() <= 1, "{next} {now}");
        assert_eq!(lists.stale_at(now), []);
    }

    #[test]
    fn a_file_without_a_list_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = crate::tls::tests::self_signed("CA", false);
        for (name, bytes) in [
            ("cert.pem", cert.to_pem().unwrap()),
            ("junk.crl", b"\x30\x03junk".to_vec()),
        ] {
            let path = write(&dir, name, &bytes);
            let err = Revocations::read(std::slice::from_ref(&path)).unwrap_err();
            assert_eq!(err, TlsError::new(&path, TlsErrorKind::NoRevocationList));
        }
    }

    #[test]
    fn a_ca_whose_lists_are_all_out_of_date_is_named_with_its_file_and_date() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_unix();
        let (a, a_key) = crate::tls::tests::self_signed("CA a", false);
        let (b, b_key) = crate::tls::tests::self_signed("CA b", false);
        let (c, c_key) = crate::tls::tests::self_signed("CA c", false);
        let expired = crl(&a, &a_key, now - 10 * DAY, now - 3 * DAY);
        let later_expired = crl(&a, &a_key, now - 9 * DAY, now - 2 * DAY);
        let future = crl(&b, &b_key, now + DAY, now + 8 * DAY);
        // CA c has a stale list beside a fresh one: OpenSSL uses the fresh one.
        let c_old = crl(&c, &c_key, now - 10 * DAY, now - 3 * DAY);
        let c_new = crl(&c, &c_key, now - DAY, now + 6 * DAY);
        let files = [
            write(&dir, "a-old.pem", &expired.to_pem().unwrap()),
            write(&dir, "a.pem", &later_expired.to_pem().unwrap()),
            write(&dir, "b.pem", &future.to_pem().unwrap()),
            write(&dir, "c-old.pem", &c_old.to_pem().unwrap()),
            write(&dir, "c.pem", &c_new.to_pem().unwrap()),
        ];
        let lists = Revocations::read(&files).unwrap();
        let stale = lists.stale_at(now);
        assert_eq!(
            stale,
            [
                StaleCrl {
                    file: files[1].clone(),
                    issuer: "CN=CA a".to_string(),
                    state: Staleness::Expired {
                        next_update: later_expired.next_update().unwrap().to_string()
                    },
                },
                StaleCrl {
                    file: files[2].clone(),
                    issuer: "CN=CA b".to_string(),
                    state: Staleness::NotYetValid {
                        last_update: future.last_update().to_string()
                    },
                },
            ]
        );
        let said = stale[0].to_string();
        assert!(said.starts_with(&files[1].display().to_string()), "{said}");
        assert!(said.contains("passed its nextUpdate on"), "{said}");
        // The earliest: CA a's freshest list went stale 2 days ago.
        let next = lists.next_update_unix().unwrap();
        assert!((next - (now - 2 * DAY)).abs() <= 1, "{next} {now}");
    }
}
