//! Authorization: which client may read or write which registers (`--acl FILE`).
//!
//! A rule file is read line by line; the first rule that matches a request
//! decides it, and a request no rule matches is refused. Parsing and matching
//! do no I/O beyond [`Acl::load`] reading the file, and nothing here logs.
//!
//! ```text
//! # how `self` finds a board's device id in its certificate's CN (the default)
//! self-cn wwep-{DEVICE}
//! # action who              access      devices    registers (optional, default *)
//! allow    any-certificate  read,write  self       00-7F
//! allow    any-certificate  read        self
//! allow    cn:wwep-gateway  read        *
//! allow    from:10.0.0.0/8  read        0400-04FF
//! deny     anyone           write       *
//! ```
//!
//! - **who**: `anyone`; `any-certificate` (a verified client certificate, TLS
//!   port with `--client-ca`); `cn:NAME` or `san:NAME`, the certificate's
//!   subject CN or one of its DNS, IP, email or URI alternative names, exact or
//!   a glob with `*` and `?` (case-sensitive); `from:CIDR`, the client's
//!   address on either port.
//! - **access**: `read`, `write` or `read,write`.
//! - **devices** and **registers**: comma-separated hex ids and ranges
//!   (`04FB`, `0400-04FF`, `00-7F`), `*` for all; devices also take `self`,
//!   the device id in the client certificate's CN as `self-cn` describes it
//!   (4 hex digits where `{DEVICE}` stands, either case). `self` never matches
//!   a client without a certificate or whose CN does not fit the pattern.
//! - A certificate whose CN cannot be read as one name (two CNs in its
//!   subject, a CN that is not text or holds a control character) has no CN
//!   for the rules to grant by: no `allow` rule's `cn:` or `self` matches it,
//!   while `deny` rules try each of its CNs, so it escapes no refusal.
//!   `any-certificate`, `san:` and `from:` rules read it as any other.
//! - `#` starts a comment where a word would start.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::allow::Cidr;
use crate::input_file::InputFileError;
use crate::protocol::Request;

/// The pattern `self` uses when the file has no `self-cn` line.
pub const DEFAULT_SELF_CN: &str = "wwep-{DEVICE}";
/// The largest rule file read: far more rules than any deployment needs, and
/// a bound on what a wrong path (a device, a log) can make the server read.
pub const MAX_FILE_BYTES: u64 = crate::input_file::MAX_FILE_BYTES;
/// The byte-order mark some editors put at the start of a UTF-8 file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// Where the device id stands in a `self-cn` pattern.
const DEVICE_PLACEHOLDER: &str = "{DEVICE}";

/// The names a verified client certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Certificate {
    /// The subject's common name; `None` when it has none.
    pub cn: Option<CommonName>,
    /// Subject alternative names: DNS names, IP addresses, emails, URIs.
    pub sans: Vec<String>,
}

/// A certificate subject's common name, as the rules read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommonName {
    /// Exactly one CN, and plain text: the certificate's identity.
    One(String),
    /// No one identity can be read. Toolchains differ on which of two CNs is
    /// the name (OpenSSL's lookup finds the first; Go's `crypto/x509`, and
    /// the CA tools built on it, the last), so granting by either could grant
    /// what the CA never approved. `readings` holds each CN as far as it reads (bytes that are
    /// not UTF-8 replaced), for the log and for `deny` rules.
    Ambiguous {
        why: Ambiguity,
        readings: Vec<String>,
    },
}

/// Why a certificate's CN is not one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// The subject holds this many CNs (two or more).
    Several(usize),
    /// A CN that does not decode as the string type it declares.
    NotText,
    /// A CN holding a control character: C code reading it stops at a NUL,
    /// and a log shows it differently from what the rules matched.
    ControlCharacter,
}

impl CommonName {
    /// Reads a subject's CNs, given in order, each as text or, where it does
    /// not decode, as its raw bytes; `None` when there is no CN.
    pub fn read(entries: impl IntoIterator<Item = Result<String, Vec<u8>>>) -> Option<CommonName> {
        let mut why = None;
        let readings: Vec<String> = entries
            .into_iter()
            .map(|entry| match entry {
                Ok(text) => {
                    if text.chars().any(char::is_control) {
                        why.get_or_insert(Ambiguity::ControlCharacter);
                    }
                    text
                }
                Err(bytes) => {
                    why.get_or_insert(Ambiguity::NotText);
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            })
            .collect();
        if readings.len() > 1 {
            why = Some(Ambiguity::Several(readings.len()));
        }
        match why {
            Some(why) => Some(CommonName::Ambiguous { why, readings }),
            // No CN at all, or exactly one that reads as plain text.
            None => readings.into_iter().next().map(CommonName::One),
        }
    }

    /// The certificate's identity, when its CN is one name.
    pub fn one(&self) -> Option<&str> {
        match self {
            CommonName::One(cn) => Some(cn),
            CommonName::Ambiguous { .. } => None,
        }
    }

    /// Why the CN is not one name, if it is not.
    pub fn ambiguity(&self) -> Option<Ambiguity> {
        match self {
            CommonName::One(_) => None,
            CommonName::Ambiguous { why, .. } => Some(*why),
        }
    }

    /// The CNs a rule with `action` may take for the certificate's name: the
    /// one name, or for an ambiguous CN every reading to a `deny` rule (which
    /// must not be escaped) and none to an `allow` rule (which must not grant
    /// by a name the CA may not have approved).
    fn readings_for(&self, action: Action) -> &[String] {
        match (self, action) {
            (CommonName::One(cn), _) => std::slice::from_ref(cn),
            (CommonName::Ambiguous { readings, .. }, Action::Deny) => readings,
            (CommonName::Ambiguous { .. }, Action::Allow) => &[],
        }
    }
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ambiguity::Several(n) => write!(f, "its subject has {n} CNs"),
            Ambiguity::NotText => f.write_str("its CN is not text"),
            Ambiguity::ControlCharacter => f.write_str("its CN holds a control character"),
        }
    }
}

/// Who is asking: the client's address and, on the TLS port with
/// `--client-ca`, its certificate.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub addr: IpAddr,
    pub certificate: Option<&'a Certificate>,
}

/// Whether a rule lets a request through or refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// Whom a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Anyone,
    AnyCertificate,
    Cn(Glob),
    San(Glob),
    From(Cidr),
}

/// What a rule lets a client do (or refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// A set of device ids, one item of a rule's device list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Devices {
    /// `*`.
    All,
    /// `04FB` (first == last) or `0400-04FF`.
    Range(u16, u16),
    /// `self`: the device id in the client certificate's CN.
    Own,
}

/// Registers `first..=last` (`*` is `00-FF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registers {
    pub first: u8,
    pub last: u8,
}

/// A name pattern: exact, or with `*` (any run of characters) and `?` (one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

/// How `self` finds a device id in a CN: literal text around `{DEVICE}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfPattern {
    prefix: String,
    suffix: String,
}

/// One rule, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    pub action: Action,
    pub who: Who,
    pub access: Access,
    pub devices: Vec<Devices>,
    pub registers: Vec<Registers>,
}

/// A parsed rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    path: PathBuf,
    self_cn: SelfPattern,
    rules: Vec<Rule>,
}

/// The outcome of [`Acl::check`]: allowed or not, and by which rule (`None`:
/// no rule matched, so refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    pub rule: Option<&'a Rule>,
    /// Set when the client's certificate has no one CN, so no `allow` rule's
    /// `cn:` or `self` could grant it anything: part of the reason for a
    /// refusal.
    pub ambiguous_cn: Option<Ambiguity>,
}

/// A part of a rule that a line lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Who,
    Access,
    Devices,
    Pattern,
}

/// What is wrong with a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file cannot be read: missing, or not a regular file.
    Unreadable(InputFileError),
    /// The file is larger than [`MAX_FILE_BYTES`].
    TooLarge,
    /// The line is not UTF-8 text.
    NotText,
    /// The first word is not `allow`, `deny` or `self-cn`.
    UnknownKeyword(String),
    Missing(Field),
    /// A word after the last field a line can have.
    Extra(String),
    /// A who that is none of the forms.
    UnknownWho(String),
    /// `cn:` or `san:` with no name after it.
    EmptyName(String),
    /// `from:` with something that is not an address range (the reason).
    BadCidr(String),
    UnknownAccess(String),
    BadDevice(String),
    BadRegister(String),
    /// A range whose first id is after its last.
    BackwardsRange(String),
    /// A `self-cn` pattern without exactly one `{DEVICE}`.
    BadSelfPattern(String),
    /// A second `self-cn` line; the first is on `first`.
    SelfPatternTwice {
        first: usize,
    },
}

/// A rule file that cannot be used: the file, the line (none for the file as
/// a whole) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub problem: Problem,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Who => "who (anyone, any-certificate, cn:NAME, san:NAME or from:CIDR)",
            Field::Access => "access (read, write or read,write)",
            Field::Devices => "devices (self, *, 04FB, 0400-04FF, or a comma-separated list)",
            Field::Pattern => "a pattern such as wwep-{DEVICE}",
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable(e) => write!(f, "cannot read the rule file: {e}"),
            Problem::TooLarge => write!(
                f,
                "larger than {} KiB: not a rule file",
                MAX_FILE_BYTES / 1024
            ),
            Problem::NotText => f.write_str("not UTF-8 text"),
            Problem::UnknownKeyword(w) => {
                write!(f, "unknown rule '{w}' (expected allow, deny or self-cn)")
            }
            Problem::Missing(field) => write!(f, "missing {field}"),
            Problem::Extra(w) => write!(f, "unexpected '{w}' after the registers"),
            Problem::UnknownWho(w) => write!(f, "unknown who '{w}': expected {}", Field::Who),
            Problem::EmptyName(w) => write!(f, "'{w}' needs a name after the colon"),
            Problem::BadCidr(reason) => f.write_str(reason),
            Problem::UnknownAccess(w) => {
                write!(f, "unknown access '{w}': expected {}", Field::Access)
            }
            Problem::BadDevice(w) => write!(
                f,
                "bad devices '{w}': expected self, *, a 1-4 digit hex id or a range like 0400-04FF"
            ),
            Problem::BadRegister(w) => write!(
                f,
                "bad registers '{w}': expected *, a 1-2 digit hex register or a range like 00-7F"
            ),
            Problem::BackwardsRange(w) => write!(f, "range '{w}' ends before it starts"),
            Problem::BadSelfPattern(w) => write!(
                f,
                "self-cn pattern '{w}' must contain {DEVICE_PLACEHOLDER} exactly once"
            ),
            Problem::SelfPatternTwice { first } => {
                write!(f, "self-cn given twice (first on line {first})")
            }
        }
    }
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {line}: {}", self.path.display(), self.problem),
            None => write!(f, "{}: {}", self.path.display(), self.problem),
        }
    }
}

impl std::error::Error for AclError {}

/// Glob matching over bytes (ASCII) or characters: `*` any run, `?` one.
fn glob_matches<T: Copy + PartialEq>(pattern: &[T], text: &[T], star: T, one: T) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently covers up to.
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == one || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == star {
            last_star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = last_star {
            p = star_p + 1;
            t = star_t + 1;
            last_star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == star)
}

impl Glob {
    fn matches(&self, text: &str) -> bool {
        if self.0.is_ascii() && text.is_ascii() {
            return glob_matches(self.0.as_bytes(), text.as_bytes(), b'*', b'?');
        }
        let pattern: Vec<char> = self.0.chars().collect();
        let text: Vec<char> = text.chars().collect();
        glob_matches(&pattern, &text, '*', '?')
    }

    fn is_exact(&self) -> bool {
        !self.0.contains(['*', '?'])
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SelfPattern {
    fn parse(text: &str) -> Option<SelfPattern> {
        let (prefix, suffix) = text.split_once(DEVICE_PLACEHOLDER)?;
        if suffix.contains(DEVICE_PLACEHOLDER) {
            return None;
        }
        Some(SelfPattern {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The device id a CN carries: exactly 4 hex digits (either case) where
    /// `{DEVICE}` stands, the rest literal.
    pub fn device(&self, cn: &str) -> Option<u16> {
        let (cn, prefix, suffix) = (
            cn.as_bytes(),
            self.prefix.as_bytes(),
            self.suffix.as_bytes(),
        );
        if cn.len() != prefix.len() + 4 + suffix.len() {
            return None;
        }
        let (head, rest) = cn.split_at(prefix.len());
        let (digits, tail) = rest.split_at(4);
        // Byte by byte: these are a few bytes, fewer than a memcmp call costs.
        let same = |a: &[u8], b: &[u8]| a.iter().zip(b).all(|(x, y)| x == y);
        if !same(head, prefix) || !same(tail, suffix) {
            return None;
        }
        digits.iter().try_fold(0u16, |id, &b| {
            Some(id << 4 | char::from(b).to_digit(16)? as u16)
        })
    }
}

impl Default for SelfPattern {
    fn default() -> Self {
        SelfPattern {
            prefix: "wwep-".to_string(),
            suffix: String::new(),
        }
    }
}

impl fmt::Display for SelfPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{DEVICE_PLACEHOLDER}{}", self.prefix, self.suffix)
    }
}

impl Who {
    fn parse(word: &str) -> Result<Who, Problem> {
        match word {
            "anyone" => return Ok(Who::Anyone),
            "any-certificate" => return Ok(Who::AnyCertificate),
            _ => {}
        }
        let Some((kind, value)) = word.split_once(':') else {
            return Err(Problem::UnknownWho(word.to_string()));
        };
        match kind {
            "cn" | "san" if value.is_empty() => Err(Problem::EmptyName(word.to_string())),
            "cn" => Ok(Who::Cn(Glob(value.to_string()))),
            "san" => Ok(Who::San(Glob(value.to_string()))),
            "from" => value.parse().map(Who::From).map_err(Problem::BadCidr),
            _ => Err(Problem::UnknownWho(word.to_string())),
        }
    }

    /// Whether the rule is about this peer; `cns` are the certificate's CNs
    /// the rule may take for its name.
    fn matches(&self, peer: &Peer, cns: &[String]) -> bool {
        match self {
            Who::Anyone => true,
            Who::AnyCertificate => peer.certificate.is_some(),
            Who::Cn(glob) => cns.iter().any(|cn| glob.matches(cn)),
            Who::San(glob) => peer
                .certificate
                .is_some_and(|c| c.sans.iter().any(|san| glob.matches(san))),
            Who::From(cidr) => cidr.contains(peer.addr),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Anyone => f.write_str("anyone"),
            Who::AnyCertificate => f.write_str("any-certificate"),
            Who::Cn(glob) => write!(f, "cn:{glob}"),
            Who::San(glob) => write!(f, "san:{glob}"),
            Who::From(cidr) => write!(f, "from:{cidr}"),
        }
    }
}

impl Access {
    fn parse(word: &str) -> Result<Access, Problem> {
        match word {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "read,write" | "write,read" => Ok(Access::ReadWrite),
            _ => Err(Problem::UnknownAccess(word.to_string())),
        }
    }

    fn covers(self, request: &Request) -> bool {
        matches!(
            (self, request),
            (Access::ReadWrite, _)
                | (Access::Read, Request::Read { .. })
                | (Access::Write, Request::Write { .. })
        )
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read,write",
        })
    }
}

/// `first` or `first-last`, each 1 to `digits` hex digits.
fn parse_range(item: &str, digits: usize) -> Option<Result<(u16, u16), ()>> {
    let hex = |s: &str| {
        (!s.is_empty() && s.len() <= digits && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u16::from_str_radix(s, 16).ok())
            .flatten()
    };
    let (first, last) = match item.split_once('-') {
        Some((a, b)) => (hex(a)?, hex(b)?),
        None => {
            let id = hex(item)?;
            (id, id)
        }
    };
    Some(if first <= last {
        Ok((first, last))
    } else {
        Err(())
    })
}

fn parse_devices(word: &str) -> Result<Vec<Devices>, Problem> {
    word.split(',')
        .map(|item| match item {
            "*" => Ok(Devices::All),
            "self" => Ok(Devices::Own),
            _ => match parse_range(item, 4) {
                Some(Ok((first, last))) => Ok(Devices::Range(first, last)),
                Some(Err(())) => Err(Problem::BackwardsRange(item.to_string())),
                None => Err(Problem::BadDevice(word.to_string())),
            },
        })
        .collect()
}

fn parse_registers(word: &str) -> Result<Vec<Registers>, Problem> {
    word.split(',')
        .map(|item| match item {
            "*" => Ok(Registers::ALL),
            _ => match parse_range(item, 2) {
                // Two hex digits always fit a u8.
                Some(Ok((first, last))) => Ok(Registers {
                    first: first as u8,
                    last: last as u8,
                }),
                Some(Err(())) => Err(Problem::BackwardsRange(item.to_string())),
                None => Err(Problem::BadRegister(word.to_string())),
            },
        })
        .collect()
}

impl Devices {
    /// Whether the set holds `device`; `self` is matched against the
    /// certificate by the rule, so holds nothing here.
    fn contains(self, device: u16) -> bool {
        match self {
            Devices::All => true,
            Devices::Range(first, last) => (first..=last).contains(&device),
            Devices::Own => false,
        }
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Devices::All => f.write_str("*"),
            Devices::Own => f.write_str("self"),
            Devices::Range(a, b) if a == b => write!(f, "{a:04X}"),
            Devices::Range(a, b) => write!(f, "{a:04X}-{b:04X}"),
        }
    }
}

impl Registers {
    pub const ALL: Registers = Registers {
        first: 0,
        last: 0xFF,
    };

    fn contains(self, register: u8) -> bool {
        (self.first..=self.last).contains(&register)
    }
}

impl fmt::Display for Registers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Registers::ALL => f.write_str("*"),
            Registers { first, last } if first == last => write!(f, "{first:02X}"),
            Registers { first, last } => write!(f, "{first:02X}-{last:02X}"),
        }
    }
}

/// Items joined by commas, as the file writes them.
struct List<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            item.fmt(f)?;
        }
        Ok(())
    }
}

impl Rule {
    /// Whether the rule is about this request from this peer.
    fn matches(&self, peer: &Peer, request: &Request, self_cn: &SelfPattern) -> bool {
        let (device, register) = match *request {
            Request::Read { device, register }
            | Request::Write {
                device, register, ..
            } => (device, register),
        };
        let cns = peer
            .certificate
            .and_then(|c| c.cn.as_ref())
            .map_or(&[][..], |cn| cn.readings_for(self.action));
        if !self.access.covers(request) || !self.who.matches(peer, cns) {
            return false;
        }
        if !self.registers.iter().any(|r| r.contains(register)) {
            return false;
        }
        self.devices.iter().any(|d| match d {
            Devices::Own => cns.iter().any(|cn| self_cn.device(cn) == Some(device)),
            _ => d.contains(device),
        })
    }

    /// The rule in words, for `--check-acl`.
    pub fn explain(&self, self_cn: &SelfPattern) -> String {
        let who = match &self.who {
            Who::Anyone => "anyone".to_string(),
            Who::AnyCertificate => "any client certificate".to_string(),
            Who::Cn(g) if g.is_exact() => format!("a certificate with CN {g}"),
            Who::Cn(g) => format!("a certificate whose CN matches {g}"),
            Who::San(g) if g.is_exact() => format!("a certificate with the alternative name {g}"),
            Who::San(g) => format!("a certificate with an alternative name matching {g}"),
            Who::From(cidr) => format!("any client from {cidr}"),
        };
        let verb = match (self.action, self.access) {
            (Action::Allow, Access::Read) => "may read",
            (Action::Allow, Access::Write) => "may write",
            (Action::Allow, Access::ReadWrite) => "may read and write",
            (Action::Deny, Access::Read) => "may not read",
            (Action::Deny, Access::Write) => "may not write",
            (Action::Deny, Access::ReadWrite) => "may not read or write",
        };
        let registers = if self.registers.contains(&Registers::ALL) {
            "every register".to_string()
        } else {
            format!("registers {}", List(&self.registers))
        };
        let devices: Vec<String> = self
            .devices
            .iter()
            .map(|d| match d {
                Devices::All => "every device".to_string(),
                Devices::Own => format!("its own device (the id in a CN like {self_cn})"),
                Devices::Range(a, b) if a == b => format!("device {a:04X}"),
                Devices::Range(a, b) => format!("devices {a:04X}-{b:04X}"),
            })
            .collect();
        format!("{who} {verb} {registers} of {}", devices.join(", "))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        write!(
            f,
            "{action} {} {} {} {}",
            self.who,
            self.access,
            List(&self.devices),
            List(&self.registers)
        )
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            Some(rule) => write!(f, "rule on line {} ({rule})", rule.line)?,
            None => f.write_str("no rule allows it (default deny)")?,
        }
        match self.ambiguous_cn {
            Some(why) if !self.allowed => write!(
                f,
                "; no cn: or self rule grants anything to this certificate: {why}"
            ),
            _ => Ok(()),
        }
    }
}

impl Acl {
    /// Reads and parses a rule file; any error refuses the file as a whole.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let error = |problem| AclError {
            path: path.to_path_buf(),
            line: None,
            problem,
        };
        let bytes = crate::input_file::read(path, MAX_FILE_BYTES).map_err(|e| match e {
            InputFileError::TooLarge { .. } => error(Problem::TooLarge),
            e => error(Problem::Unreadable(e)),
        })?;
        Acl::parse(&bytes, path)
    }

    /// Parses the text of a rule file; `path` names it in errors.
    /// A UTF-8 byte-order mark at the start (what some Windows editors
    /// write) is skipped.
    pub fn parse(text: &[u8], path: &Path) -> Result<Acl, AclError> {
        let text = text.strip_prefix(UTF8_BOM).unwrap_or(text);
        let mut self_cn: Option<(usize, SelfPattern)> = None;
        let mut rules = Vec::new();
        for (index, line) in text.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            let error = |problem| AclError {
                path: path.to_path_buf(),
                line: Some(number),
                problem,
            };
            let line = std::str::from_utf8(line).map_err(|_| error(Problem::NotText))?;
            let mut words = line.split_whitespace().take_while(|w| !w.starts_with('#'));
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword {
                "self-cn" => {
                    let word = words
                        .next()
                        .ok_or(error(Problem::Missing(Field::Pattern)))?;
                    let pattern = SelfPattern::parse(word)
                        .ok_or_else(|| error(Problem::BadSelfPattern(word.to_string())))?;
                    if let Some(extra) = words.next() {
                        return Err(error(Problem::Extra(extra.to_string())));
                    }
                    if let Some((first, _)) = self_cn {
                        return Err(error(Problem::SelfPatternTwice { first }));
                    }
                    self_cn = Some((number, pattern));
                }
                "allow" | "deny" => {
                    let action = if keyword == "allow" {
                        Action::Allow
                    } else {
                        Action::Deny
                    };
                    let mut field = |field| words.next().ok_or(error(Problem::Missing(field)));
                    let who = Who::parse(field(Field::Who)?).map_err(error)?;
                    let access = Access::parse(field(Field::Access)?).map_err(error)?;
                    let devices = parse_devices(field(Field::Devices)?).map_err(error)?;
                    let registers = match words.next() {
                        Some(word) => parse_registers(word).map_err(error)?,
                        None => vec![Registers::ALL],
                    };
                    if let Some(extra) = words.next() {
                        return Err(error(Problem::Extra(extra.to_string())));
                    }
                    rules.push(Rule {
                        line: number,
                        action,
                        who,
                        access,
                        devices,
                        registers,
                    });
                }
                _ => return Err(error(Problem::UnknownKeyword(keyword.to_string()))),
            }
        }
        Ok(Acl {
            path: path.to_path_buf(),
            self_cn: self_cn.map(|(_, p)| p).unwrap_or_default(),
            rules,
        })
    }

    /// Decides a request: the first rule that matches, or refused.
    pub fn check<'a>(&'a self, peer: &Peer, request: &Request) -> Decision<'a> {
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.matches(peer, request, &self.self_cn));
        Decision {
            allowed: rule.is_some_and(|rule| rule.action == Action::Allow),
            rule,
            ambiguous_cn: peer
                .certificate
                .and_then(|c| c.cn.as_ref())
                .and_then(CommonName::ambiguity),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn self_cn(&self) -> &SelfPattern {
        &self.self_cn
    }

    /// Whether any rule names a certificate (and so needs `--client-ca`).
    pub fn names_certificates(&self) -> bool {
        self.rules.iter().any(|r| {
            matches!(r.who, Who::AnyCertificate | Who::Cn(_) | Who::San(_))
                || r.devices.contains(&Devices::Own)
        })
    }

    /// `boards.acl: 1 rule`, for the log.
    pub fn summary(&self) -> String {
        let n = self.rules.len();
        let s = if n == 1 { "" } else { "s" };
        format!("{}: {n} rule{s}", self.path.display())
    }

    /// What `--check-acl` prints: every rule as understood, in order.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{}, first match wins; a request no rule allows is refused\nself = the device id in a certificate CN like {}\n",
            self.summary(),
            self.self_cn
        );
        for rule in &self.rules {
            out.push_str(&format!(
                "line {}: {rule}\n    {}\n",
                rule.line,
                rule.explain(&self.self_cn)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Acl, AclError> {
        Acl::parse(text.as_bytes(), Path::new("test.acl"))
    }

    fn cert(cn: &str, sans: &[&str]) -> Certificate {
        Certificate {
            cn: Some(CommonName::One(cn.to_string())),
            sans: sans.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn read(device: u16, register: u8) -> Request {
        Request::Read { device, register }
    }

    fn write(device: u16, register: u8) -> Request {
        Request::Write {
            device,
            register,
            value: 1,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Whether `acl` allows `request` from `peer`, and the line that decided.
    fn decide(
        acl: &Acl,
        addr: &str,
        cert: Option<&Certificate>,
        request: Request,
    ) -> (bool, usize) {
        let peer = Peer {
            addr: ip(addr),
            certificate: cert,
        };
        let d = acl.check(&peer, &request);
        (d.allowed, d.rule.map_or(0, |r| r.line))
    }

    /// The error `parse` gives for `problem` on `line` of test.acl.
    fn error_at(line: usize, problem: Problem) -> Result<Acl, AclError> {
        Err(AclError {
            path: "test.acl".into(),
            line: Some(line),
            problem,
        })
    }

    #[test]
    fn every_refused_word_is_named_with_its_line() {
        use Problem::*;
        type Naming = fn(String) -> Problem;
        let cases: [(&str, Naming, &str); 19] = [
            ("alow anyone read *", UnknownKeyword, "alow"),
            ("allow anyone read * * x", Extra, "x"),
            ("self-cn wwep-{DEVICE} x", Extra, "x"),
            ("allow everyone read *", UnknownWho, "everyone"),
            ("allow ip:1.2.3.4 read *", UnknownWho, "ip:1.2.3.4"),
            ("allow cn: read *", EmptyName, "cn:"),
            ("allow san: read *", EmptyName, "san:"),
            ("allow anyone rw *", UnknownAccess, "rw"),
            ("allow anyone read,read *", UnknownAccess, "read,read"),
            ("allow anyone read 12345", BadDevice, "12345"),
            ("allow anyone read 04FB,", BadDevice, "04FB,"),
            ("allow anyone read 0x04", BadDevice, "0x04"),
            ("allow anyone read 04-", BadDevice, "04-"),
            ("allow anyone read 0500-0400", BackwardsRange, "0500-0400"),
            ("allow anyone read * 100", BadRegister, "100"),
            ("allow anyone read * self", BadRegister, "self"),
            ("allow anyone read * 80-7F", BackwardsRange, "80-7F"),
            ("self-cn wwep", BadSelfPattern, "wwep"),
            (
                "self-cn {DEVICE}-{DEVICE}",
                BadSelfPattern,
                "{DEVICE}-{DEVICE}",
            ),
        ];
        for (text, problem, word) in cases {
            assert_eq!(parse(text), error_at(1, problem(word.into())), "{text:?}");
        }
    }

    #[test]
    fn every_problem_names_file_line_and_problem() {
        let cases = [
            ("\n\nallow", 3, Problem::Missing(Field::Who)),
            ("allow anyone", 1, Problem::Missing(Field::Access)),
            ("allow anyone read", 1, Problem::Missing(Field::Devices)),
            ("self-cn", 1, Problem::Missing(Field::Pattern)),
            (
                "allow from:10.0.0.0/33 read *",
                1,
                Problem::BadCidr("'10.0.0.0/33': prefix length must be 0-32".into()),
            ),
            (
                "self-cn a{DEVICE}\n# again\nself-cn b{DEVICE}",
                3,
                Problem::SelfPatternTwice { first: 1 },
            ),
        ];
        for (text, line, problem) in cases {
            assert_eq!(parse(text), error_at(line, problem), "{text:?}");
        }
    }

    #[test]
    fn problems_of_the_whole_file_name_no_line() {
        assert_eq!(
            Acl::parse(b"allow anyone read *\n\xff\n", Path::new("x.acl")),
            Err(AclError {
                path: "x.acl".into(),
                line: Some(2),
                problem: Problem::NotText,
            })
        );
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.acl");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(
            Acl::load(&big),
            Err(AclError {
                path: big.clone(),
                line: None,
                problem: Problem::TooLarge,
            })
        );
        assert_eq!(
            Acl::load(&big).unwrap_err().to_string(),
            format!("{}: larger than 1024 KiB: not a rule file", big.display())
        );
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(Acl::load(&big).map(|acl| acl.rules().len()), Ok(0));
        let missing = Acl::load(Path::new("/nonexistent/wwep.acl")).unwrap_err();
        assert_eq!(missing.line, None);
        assert!(matches!(missing.problem, Problem::Unreadable(_)));
        assert!(
            missing
                .to_string()
                .starts_with("/nonexistent/wwep.acl: cannot read the rule file: "),
            "{missing}"
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_a_fifo_is_refused_unopened() {
        let acl = Acl::parse(b"\xEF\xBB\xBFallow anyone read *\n", Path::new("x.acl")).unwrap();
        assert_eq!(acl.rules().len(), 1);
        // Only at the very start: elsewhere it is still an unknown word.
        assert!(matches!(
            Acl::parse(b"\n\xEF\xBB\xBFallow anyone read *\n", Path::new("x.acl")),
            Err(AclError {
                line: Some(2),
                problem: Problem::UnknownKeyword(_),
                ..
            })
        ));
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("rules.acl");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo {}", fifo.display());
        assert_eq!(
            Acl::load(&fifo),
            Err(AclError {
                path: fifo.clone(),
                line: None,
                problem: Problem::Unreadable(InputFileError::NotRegular(
                    crate::input_file::FileKind::Fifo
                )),
            })
        );
    }

    #[test]
    fn errors_read_as_one_line() {
        let cases = [
            (
                "allow anyone reed *",
                "test.acl line 1: unknown access 'reed': expected access (read, write or read,write)",
            ),
            (
                "\n  deny cn:x write 0500-0400",
                "test.acl line 2: range '0500-0400' ends before it starts",
            ),
            (
                "allow anyone read * 05 06",
                "test.acl line 1: unexpected '06' after the registers",
            ),
            (
                "self-cn board",
                "test.acl line 1: self-cn pattern 'board' must contain {DEVICE} exactly once",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(parse(text).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let acl = parse(
            "# header\r\n\r\n   \n allow anyone read * # trailing\r\ndeny from:10.0.0.0/8 write 04FB 05 #x\n",
        )
        .unwrap();
        let lines: Vec<_> = acl
            .rules()
            .iter()
            .map(|r| (r.line, r.to_string()))
            .collect();
        assert_eq!(
            lines,
            [
                (4, "allow anyone read * *".to_string()),
                (5, "deny from:10.0.0.0/8 write 04FB 05".to_string()),
            ]
        );
        // A '#' inside a word is part of it.
        assert_eq!(
            parse("allow anyone read * 05#x").unwrap_err().problem,
            Problem::BadRegister("05#x".into())
        );
    }

    #[test]
    fn an_empty_file_refuses_everything() {
        let acl = parse("# nothing yet\n").unwrap();
        assert!(acl.rules().is_empty());
        assert_eq!(decide(&acl, "127.0.0.1", None, read(1, 1)), (false, 0));
    }

    #[test]
    fn boards_write_their_own_device_only() {
        let acl = parse("allow any-certificate read,write self\n").unwrap();
        let board = cert("wwep-04FB", &[]);
        let lower = cert("wwep-04fb", &[]);
        let odd = cert("wwep-4FB", &[]);
        let other = cert("gateway", &[]);
        let table: &[(Option<&Certificate>, Request, bool)] = &[
            (Some(&board), write(0x04FB, 5), true),
            (Some(&board), read(0x04FB, 0xFF), true),
            (Some(&lower), write(0x04FB, 5), true),
            (Some(&board), write(0x0500, 5), false),
            (Some(&board), read(0x0500, 5), false),
            (Some(&odd), write(0x04FB, 5), false),
            (Some(&other), write(0x04FB, 5), false),
            (None, write(0x04FB, 5), false),
        ];
        for (cert, request, allowed) in table {
            assert_eq!(
                decide(&acl, "127.0.0.1", *cert, *request).0,
                *allowed,
                "{cert:?} {request:?}"
            );
        }
    }

    #[test]
    fn self_pattern_is_configurable() {
        let acl = parse("allow anyone write self\nself-cn board-{DEVICE}.example\n").unwrap();
        assert_eq!(acl.self_cn().to_string(), "board-{DEVICE}.example");
        let pattern = acl.self_cn();
        let cases = [
            ("board-04FB.example", Some(0x04FB)),
            ("board-ffff.example", Some(0xFFFF)),
            ("board-04FB", None),
            ("wwep-04FB", None),
            ("board-+4FB.example", None),
            ("board-04FBB.example", None),
        ];
        for (cn, device) in cases {
            assert_eq!(pattern.device(cn), device, "{cn}");
        }
        let c = cert("board-04FB.example", &[]);
        assert_eq!(decide(&acl, "::1", Some(&c), write(0x04FB, 0)), (true, 1));
        assert_eq!(SelfPattern::default().to_string(), DEFAULT_SELF_CN);
    }

    #[test]
    fn register_ranges_and_first_match() {
        let acl = parse(
            "allow any-certificate read,write self 00-7F\n\
             allow any-certificate read self\n\
             deny cn:wwep-0001 read *\n\
             allow cn:wwep-* read 0000-00FF,0400-04FF\n",
        )
        .unwrap();
        let board = cert("wwep-04FB", &[]);
        let first = cert("wwep-0001", &[]);
        let table: &[(&Certificate, Request, (bool, usize))] = &[
            (&board, write(0x04FB, 0x05), (true, 1)),
            (&board, write(0x04FB, 0x7F), (true, 1)),
            (&board, write(0x04FB, 0x80), (false, 0)),
            (&board, read(0x04FB, 0x80), (true, 2)),
            (&board, read(0x0400, 0x80), (true, 4)),
            (&board, read(0x0500, 0x80), (false, 0)),
            (&first, read(0x0001, 0x05), (true, 1)),
            (&first, read(0x0400, 0x05), (false, 3)),
        ];
        for (cert, request, expected) in table {
            assert_eq!(
                decide(&acl, "127.0.0.1", Some(cert), *request),
                *expected,
                "{cert:?} {request:?}"
            );
        }
    }

    #[test]
    fn who_forms() {
        let acl = parse(
            "allow cn:gateway read,write 0001\n\
             allow san:*.boards.example read,write 0002\n\
             allow san:10.1.2.3 read,write 0003\n\
             allow from:192.168.0.0/16 read 0004\n\
             allow any-certificate read 0005\n\
             allow anyone read 0006\n",
        )
        .unwrap();
        let gateway = cert("gateway", &["gw.boards.example"]);
        let by_ip = cert("x", &["10.1.2.3"]);
        let no_cn = Certificate {
            cn: None,
            sans: vec![],
        };
        let table: &[(&str, Option<&Certificate>, u16, bool)] = &[
            ("127.0.0.1", Some(&gateway), 1, true),
            ("127.0.0.1", Some(&by_ip), 1, false),
            ("127.0.0.1", Some(&gateway), 2, true),
            ("127.0.0.1", Some(&by_ip), 2, false),
            ("127.0.0.1", Some(&by_ip), 3, true),
            ("127.0.0.1", None, 4, false),
            ("192.168.7.7", None, 4, true),
            ("::ffff:192.168.7.7", None, 4, true),
            ("192.168.7.7", None, 5, false),
            ("127.0.0.1", Some(&no_cn), 5, true),
            ("127.0.0.1", Some(&no_cn), 1, false),
            ("203.0.113.1", None, 6, true),
        ];
        for (addr, cert, device, allowed) in table {
            assert_eq!(
                decide(&acl, addr, *cert, read(*device, 0)).0,
                *allowed,
                "{addr} {cert:?} {device}"
            );
        }
        // Read-only rules leave writes to the default.
        assert_eq!(decide(&acl, "192.168.1.1", None, write(4, 0)), (false, 0));
    }

    #[test]
    fn globs() {
        let matching = [
            ("wwep-*", "wwep-04FB"),
            ("wwep-*", "wwep-"),
            ("*", ""),
            ("wwep-04??", "wwep-04FB"),
            ("*.example", "a.b.example"),
            ("a*b*c", "aXbYbZc"),
            ("ü?", "üß"),
        ];
        let not_matching = [
            ("wwep-*", "wwe"),
            ("?", ""),
            ("wwep-04??", "wwep-04FBB"),
            ("a*b*c", "aXbYbZ"),
            ("exact", "Exact"),
        ];
        let outcomes = [(true, &matching[..]), (false, &not_matching[..])];
        for (matches, cases) in outcomes {
            for (pattern, text) in cases {
                let glob = Glob(pattern.to_string());
                assert_eq!(glob.matches(text), matches, "{pattern} {text}");
            }
        }
    }

    #[test]
    fn rules_print_as_written_and_in_words() {
        let acl = parse(
            "self-cn wwep-{DEVICE}\n\
             allow any-certificate write,read self 00-7f\n\
             deny from:10.0.0.0/8 write 0400-04ff,0001 05,*\n\
             allow cn:wwep-0?0? read *\n",
        )
        .unwrap();
        let text: Vec<String> = acl.rules().iter().map(Rule::to_string).collect();
        assert_eq!(
            text,
            [
                "allow any-certificate read,write self 00-7F",
                "deny from:10.0.0.0/8 write 0400-04FF,0001 05,*",
                "allow cn:wwep-0?0? read * *",
            ]
        );
        // What is printed parses back to the same rules.
        let again = parse(&text.join("\n")).unwrap();
        assert_eq!(
            again
                .rules()
                .iter()
                .map(|r| (&r.who, r.access, &r.devices))
                .collect::<Vec<_>>(),
            acl.rules()
                .iter()
                .map(|r| (&r.who, r.access, &r.devices))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            acl.describe(),
            "test.acl: 3 rules, first match wins; a request no rule allows is refused\n\
             self = the device id in a certificate CN like wwep-{DEVICE}\n\
             line 2: allow any-certificate read,write self 00-7F\n    \
             any client certificate may read and write registers 00-7F of its own device (the id in a CN like wwep-{DEVICE})\n\
             line 3: deny from:10.0.0.0/8 write 0400-04FF,0001 05,*\n    \
             any client from 10.0.0.0/8 may not write every register of devices 0400-04FF, device 0001\n\
             line 4: allow cn:wwep-0?0? read * *\n    \
             a certificate whose CN matches wwep-0?0? may read every register of every device\n"
        );
        assert!(acl.names_certificates());
        assert!(
            !parse("allow from:10.0.0.0/8 read *")
                .unwrap()
                .names_certificates()
        );
    }

    #[test]
    fn decisions_name_their_rule() {
        let acl = parse("\ndeny anyone write 0001\n").unwrap();
        let peer = Peer {
            addr: ip("127.0.0.1"),
            certificate: None,
        };
        assert_eq!(
            acl.check(&peer, &write(1, 0)).to_string(),
            "rule on line 2 (deny anyone write 0001 *)"
        );
        assert_eq!(
            acl.check(&peer, &read(1, 0)).to_string(),
            "no rule allows it (default deny)"
        );
    }

    #[test]
    fn a_subject_cn_is_one_name_or_ambiguous() {
        use Ambiguity::*;
        let text = |s: &str| Ok::<String, Vec<u8>>(s.to_string());
        let ambiguous = |why, readings: &[&str]| {
            Some(CommonName::Ambiguous {
                why,
                readings: readings.iter().map(|s| s.to_string()).collect(),
            })
        };
        /// A subject's CNs as the TLS side gives them: text, or raw bytes.
        type Entries = Vec<Result<String, Vec<u8>>>;
        let cases: Vec<(Entries, Option<CommonName>)> = vec![
            (vec![], None),
            (
                vec![text("wwep-04FB")],
                Some(CommonName::One("wwep-04FB".to_string())),
            ),
            (
                vec![text("wwep-0500"), text("wwep-04FB")],
                ambiguous(Several(2), &["wwep-0500", "wwep-04FB"]),
            ),
            (
                vec![text("a"), text("a"), text("a")],
                ambiguous(Several(3), &["a", "a", "a"]),
            ),
            (
                vec![Err(b"wwep-\xff4FB".to_vec())],
                ambiguous(NotText, &["wwep-\u{FFFD}4FB"]),
            ),
            (
                vec![text("wwep-04FB\0.evil")],
                ambiguous(ControlCharacter, &["wwep-04FB\0.evil"]),
            ),
            (
                vec![text("wwep-04FB\n")],
                ambiguous(ControlCharacter, &["wwep-04FB\n"]),
            ),
            // Two CNs, one of them not text: the count is what is wrong first.
            (
                vec![text("wwep-0500"), Err(vec![0xC0])],
                ambiguous(Several(2), &["wwep-0500", "\u{FFFD}"]),
            ),
            // Text beyond ASCII is still one name.
            (
                vec![text("Gerät-04FB")],
                Some(CommonName::One("Gerät-04FB".to_string())),
            ),
        ];
        for (entries, expected) in cases {
            let shown = format!("{entries:?}");
            assert_eq!(CommonName::read(entries), expected, "{shown}");
        }
        assert_eq!(Several(2).to_string(), "its subject has 2 CNs");
        assert_eq!(NotText.to_string(), "its CN is not text");
    }

    #[test]
    fn an_ambiguous_cn_grants_nothing_by_name_and_escapes_no_deny() {
        let acl = parse(
            "deny cn:wwep-0BAD read,write *\n\
             deny any-certificate read,write self 80-FF\n\
             allow any-certificate read,write self\n\
             allow cn:wwep-0500 read,write 0600\n\
             allow san:gw.example read 0700\n\
             allow any-certificate read 0800\n",
        )
        .unwrap();
        let with_cns = |cns: &[&str], sans: &[&str]| Certificate {
            cn: CommonName::read(cns.iter().map(|s| Ok(s.to_string()))),
            sans: sans.iter().map(|s| s.to_string()).collect(),
        };
        let one = with_cns(&["wwep-0500"], &[]);
        let two = with_cns(&["wwep-0500", "wwep-04FB"], &["gw.example"]);
        let bad_first = with_cns(&["wwep-0BAD", "wwep-04FB"], &[]);
        let nul = with_cns(&["wwep-0500\0"], &[]);
        let table: &[(&Certificate, Request, (bool, usize))] = &[
            // One CN: `self` and `cn:` grant as they always did.
            (&one, write(0x0500, 0x05), (true, 3)),
            (&one, write(0x0600, 0x05), (true, 4)),
            // Two CNs: neither is `self`, nor the name a `cn:` rule grants to.
            (&two, write(0x0500, 0x05), (false, 0)),
            (&two, write(0x04FB, 0x05), (false, 0)),
            (&two, write(0x0600, 0x05), (false, 0)),
            // Rules that do not read the CN still apply.
            (&two, read(0x0700, 0x05), (true, 5)),
            (&two, read(0x0800, 0x05), (true, 6)),
            // A deny rule takes each CN: neither the first nor the last escapes it.
            (&bad_first, read(0x0800, 0x05), (false, 1)),
            (&two, write(0x0500, 0x80), (false, 2)),
            (&two, write(0x04FB, 0x80), (false, 2)),
            // A NUL in the CN: not the board whose name precedes it.
            (&nul, write(0x0500, 0x05), (false, 0)),
            (&nul, read(0x0800, 0x05), (true, 6)),
        ];
        for (cert, request, expected) in table {
            assert_eq!(
                decide(&acl, "127.0.0.1", Some(cert), *request),
                *expected,
                "{:?} {request:?}",
                cert.cn
            );
        }
    }

    #[test]
    fn a_refusal_says_when_the_cn_could_not_grant() {
        let acl = parse("allow any-certificate read,write self\nallow anyone read 0001\n").unwrap();
        let certificate = Certificate {
            cn: CommonName::read(["wwep-0500", "wwep-04FB"].map(|s| Ok(s.to_string()))),
            sans: vec![],
        };
        let peer = Peer {
            addr: ip("127.0.0.1"),
            certificate: Some(&certificate),
        };
        assert_eq!(
            acl.check(&peer, &write(0x0500, 5)).to_string(),
            "no rule allows it (default deny); no cn: or self rule grants anything to this certificate: its subject has 2 CNs"
        );
        let allowed = acl.check(&peer, &read(1, 0));
        assert!(allowed.allowed);
        assert_eq!(
            allowed.to_string(),
            "rule on line 2 (allow anyone read 0001 *)"
        );
    }
}
