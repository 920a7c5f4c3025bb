//! Server settings with their defaults; parsing argv is the binary's job.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::allow::Cidr;
use crate::protocol::ErrorDetail;
use crate::store::DataConfig;
use crate::store::redis::{DEFAULT_PREFIX, RedisSettings};
use crate::tls::{
    ClientAuth, IdentitySource, MAX_SESSION_LIFETIME_SECS, MAX_TLS_TICKETS, TlsSettings,
};
use std::path::PathBuf;

pub use crate::protocol::{DEFAULT_PLAIN_PORT, DEFAULT_TLS_PORT};

/// Worker threads where a transaction can wait (on the data file's fsync, or
/// on a shared store): enough to keep the cores busy while some wait; workers
/// never wait on clients.
pub const DEFAULT_WORKERS: usize = 64;
/// The most worker threads that make sense; more only cost memory.
pub const MAX_WORKERS: usize = 4096;
/// Open connections at once. A connection that waits costs a file descriptor
/// and a few hundred bytes, so the table is large; when it is full the oldest
/// silent connection is shed to make room.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// Unfinished connections (no complete message yet) from one address. A busy
/// client sends its message at once, so only abusers meet this; 1,024 lets a
/// whole classroom or a load balancer through while one address can hold at
/// most an eighth of the table.
pub const DEFAULT_MAX_PER_IP: usize = 1024;
/// How long a connection has to deliver its message, TLS handshake included.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// How long a started message may pause (the reference server's 100 ms).
pub const DEFAULT_GAP_MS: u64 = 100;
/// How long a close waits for the client's own close before giving up.
pub const DEFAULT_LINGER_MS: u64 = 250;

/// How one flag depends on another: the rule every flag of `wwep-server`
/// follows, from [`FLAG_RULES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagRule {
    /// Does nothing without the other flag.
    Needs(&'static str),
    /// Cannot be given with the other flag: one would undo the other.
    ConflictsWith(&'static str),
}

/// Every flag that needs another or conflicts with one, each rule once (the
/// same table is in docs/server.md). A flag given against its rule, on the
/// command line or in its environment variable, is a usage error naming both
/// (a switch set to false in its variable is not given). The ports are not
/// in it: `--plain-port` and `--tls-port` may stay set while their listener
/// is off, so an environment file can keep them.
pub const FLAG_RULES: &[(&str, FlagRule)] = &[
    ("--cert", FlagRule::Needs("--key")),
    ("--key", FlagRule::Needs("--cert")),
    ("--cert", FlagRule::ConflictsWith("--pkcs12")),
    ("--key", FlagRule::ConflictsWith("--pkcs12")),
    ("--cert", FlagRule::ConflictsWith("--no-tls")),
    ("--key", FlagRule::ConflictsWith("--no-tls")),
    ("--pkcs12", FlagRule::ConflictsWith("--no-tls")),
    ("--client-ca", FlagRule::ConflictsWith("--no-tls")),
    ("--client-crl", FlagRule::Needs("--client-ca")),
    ("--client-crl", FlagRule::ConflictsWith("--no-tls")),
    ("--tls-min", FlagRule::ConflictsWith("--no-tls")),
    ("--tls-ciphers", FlagRule::ConflictsWith("--no-tls")),
    ("--tls-ciphersuites", FlagRule::ConflictsWith("--no-tls")),
    ("--tls-session-cache", FlagRule::ConflictsWith("--no-tls")),
    (
        "--tls-session-lifetime",
        FlagRule::ConflictsWith("--no-tls"),
    ),
    ("--tls-tickets", FlagRule::ConflictsWith("--no-tls")),
    ("--plain-read-only", FlagRule::ConflictsWith("--no-plain")),
    ("--proxy-protocol", FlagRule::Needs("--proxy-from")),
    ("--proxy-from", FlagRule::Needs("--proxy-protocol")),
    ("--fsync", FlagRule::Needs("--data")),
    ("--repair", FlagRule::Needs("--data")),
    ("--compact-ratio", FlagRule::Needs("--data")),
    ("--compact-min-bytes", FlagRule::Needs("--data")),
    ("--store-prefix", FlagRule::Needs("--store")),
    ("--store-ca", FlagRule::Needs("--store")),
    ("--store-wait-replicas", FlagRule::Needs("--store")),
    ("--store-wait-aof", FlagRule::Needs("--store")),
    ("--http-allow", FlagRule::Needs("--http")),
    ("--http-max-connections", FlagRule::Needs("--http")),
];

/// Checks the flags given (`given("--data")`: whether the flag was given)
/// against [`FLAG_RULES`]: conflicts first (`--no-tls --cert C` is about
/// `--no-tls`, not the missing `--key`), then what is missing; the first
/// broken rule is the error.
pub fn check_flags(given: impl Fn(&'static str) -> bool) -> Result<(), ConfigError> {
    for &(flag, rule) in FLAG_RULES {
        if let FlagRule::ConflictsWith(with) = rule
            && given(flag)
            && given(with)
        {
            return Err(ConfigError::Conflict { flag, with });
        }
    }
    for &(flag, rule) in FLAG_RULES {
        if let FlagRule::Needs(needs) = rule
            && given(flag)
            && !given(needs)
        {
            return Err(ConfigError::Needs { flag, needs });
        }
    }
    Ok(())
}

/// A flag's environment variable: `--tls-min` is `WWEP_TLS_MIN`.
pub fn env_name(flag: &str) -> String {
    format!(
        "WWEP_{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_uppercase()
    )
}

/// Whether a port at `a` and one at `b` would be the same socket: the same
/// port, not 0 (a free one each), on addresses that overlap.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Whether connections may start with a load balancer's PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    #[default]
    Off,
    /// Connections from these ranges must start with a PROXY header (v1 or v2);
    /// from anywhere else, a header closes the connection.
    From(Vec<Cidr>),
}

/// What a listener lets its clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortAccess {
    #[default]
    ReadWrite,
    /// Writes are answered `X` (the open port, when writes need TLS).
    ReadOnly,
}

/// Where the HTTP side listens and who may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Client addresses allowed ([`HttpConfig::default_allow`]: loopback
    /// only). An empty list allows everyone, as `--allow` does.
    pub allow: Vec<Cidr>,
    /// Open HTTP connections at most (`--http-max-connections`); when full,
    /// one is shed by the connection policy's order (`crate::policy`).
    pub max_connections: usize,
}

/// `--http-max-connections` by default.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 256;
/// `--http-max-connections` at most.
pub const MAX_HTTP_MAX_CONNECTIONS: usize = 4096;

impl HttpConfig {
    pub fn new(addr: SocketAddr) -> HttpConfig {
        HttpConfig {
            addr,
            allow: HttpConfig::default_allow(),
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
        }
    }

    /// `127.0.0.0/8` and `::1`.
    pub fn default_allow() -> Vec<Cidr> {
        ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: IpAddr,
    /// `None` disables the open listener; `Some(0)` asks for an ephemeral port.
    pub plain_port: Option<u16>,
    /// `None` disables the TLS listener; `Some(0)` asks for an ephemeral port.
    pub tls_port: Option<u16>,
    /// Certificate and key for the TLS listener.
    pub identity: Option<IdentitySource>,
    /// A second pair served beside the first (an ECDSA certificate beside an
    /// RSA one): each client gets the one it can use.
    pub extra_identity: Option<IdentitySource>,
    /// Protocol versions, cipher suites, revocation and session resumption.
    pub tls: TlsSettings,
    /// Whether TLS clients must present a certificate.
    pub client_auth: ClientAuth,
    /// Worker threads; `None`: as many as the store needs (see
    /// [`ServerConfig::worker_threads`]).
    pub workers: Option<usize>,
    /// Connections queued or being served at once; more are refused at accept.
    pub max_connections: usize,
    /// How long a connection may take to deliver its message, TLS handshake included.
    pub timeout: Duration,
    /// How long a started message may pause before it is judged as it stands.
    pub gap: Duration,
    /// How long to read and discard what a client still sends after the reply, so
    /// unread bytes never turn the close into a reset that destroys the reply.
    pub linger: Duration,
    pub error_detail: ErrorDetail,
    /// The data file; `None` keeps registers in memory only.
    pub data: Option<DataConfig>,
    /// Client addresses that may connect; empty = everyone.
    pub allow: Vec<Cidr>,
    /// Connections queued or served at once for one client address.
    pub max_per_ip: usize,
    /// What the open port may do; the TLS port may always read and write.
    pub plain_access: PortAccess,
    /// PROXY protocol from load balancers, on both listeners.
    pub proxy: ProxyProtocol,
    /// Where registers live: this process (default) or Valkey/Redis.
    pub store: RedisSettings,
    /// The rule file of who may read or write which registers (`--acl`);
    /// `None` lets every client that gets in read and write everything.
    pub acl: Option<PathBuf>,
    /// The HTTP side (metrics, health, live page); `None` serves none.
    pub http: Option<HttpConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            plain_port: Some(DEFAULT_PLAIN_PORT),
            tls_port: Some(DEFAULT_TLS_PORT),
            identity: None,
            extra_identity: None,
            tls: TlsSettings::default(),
            client_auth: ClientAuth::Off,
            workers: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            gap: Duration::from_millis(DEFAULT_GAP_MS),
            linger: Duration::from_millis(DEFAULT_LINGER_MS),
            error_detail: ErrorDetail::Bare,
            data: None,
            allow: Vec::new(),
            max_per_ip: DEFAULT_MAX_PER_IP,
            plain_access: PortAccess::ReadWrite,
            proxy: ProxyProtocol::Off,
            store: RedisSettings::default(),
            acl: None,
            http: None,
        }
    }
}

/// A setting that cannot work, named by its command-line flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    NoListener,
    TlsWithoutIdentity,
    Zero(&'static str),
    /// A value outside what the flag can sensibly take.
    TooLarge {
        flag: &'static str,
        max: u64,
    },
    GapBeyondTimeout,
    ProxyWithoutSenders,
    /// A flag for the shared store given with `--store memory`.
    NeedsSharedStore(&'static str),
    DataWithSharedStore,
    CompactRatio,
    /// `--cert` and `--key` not given in pairs, or more than two pairs.
    UnpairedCertificates,
    /// A flag that does nothing without another ([`FLAG_RULES`]).
    Needs {
        flag: &'static str,
        needs: &'static str,
    },
    /// Two flags that cannot be given together ([`FLAG_RULES`]).
    Conflict {
        flag: &'static str,
        with: &'static str,
    },
    /// Two listeners given one port.
    SamePort {
        flag: &'static str,
        other: &'static str,
        port: u16,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoListener => {
                f.write_str("--no-plain and --no-tls together leave nothing to serve")
            }
            ConfigError::TlsWithoutIdentity => f.write_str(
                "the TLS listener needs --cert and --key (or --pkcs12); pass --no-tls to serve only the open port",
            ),
            ConfigError::Zero(flag) => write!(f, "{flag} must be greater than 0"),
            ConfigError::TooLarge { flag, max } => write!(f, "{flag} must be at most {max}"),
            ConfigError::GapBeyondTimeout => f.write_str("--gap-ms must not exceed --timeout-ms"),
            ConfigError::ProxyWithoutSenders => f.write_str(
                "--proxy-protocol needs --proxy-from with the balancers' addresses",
            ),
            ConfigError::NeedsSharedStore(flag) => write!(
                f,
                "{flag} applies to a shared store: give --store redis://HOST:PORT (or rediss://, redis+sentinel://)"
            ),
            ConfigError::DataWithSharedStore => f.write_str(
                "--data keeps registers in this process's file; with --store redis://… they live in Redis: give one or the other",
            ),
            ConfigError::CompactRatio => f.write_str("--compact-ratio must be at least 1"),
            ConfigError::UnpairedCertificates => f.write_str(
                "--cert and --key come in pairs, at most two (an RSA and an ECDSA certificate)",
            ),
            ConfigError::Needs { flag, needs } => write!(
                f,
                "{flag} ({}) does nothing without {needs} ({}): give both, or neither",
                env_name(flag),
                env_name(needs)
            ),
            ConfigError::Conflict { flag, with } => write!(
                f,
                "{flag} ({}) cannot be given with {with} ({}): give one or the other",
                env_name(flag),
                env_name(with)
            ),
            ConfigError::SamePort { flag, other, port } => write!(
                f,
                "{flag} and {other} are both {port}: each listener needs a port of its own (0 picks a free one)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ServerConfig {
    /// The worker threads to start: `--workers` when given; otherwise one per
    /// core when registers live in this process without a data file (nothing
    /// a worker does can wait then, so more threads than cores would only
    /// take turns on them, each turn a context switch and a cold cache), and
    /// [`DEFAULT_WORKERS`] when a transaction can wait on a disk or a shared
    /// store.
    pub fn worker_threads(&self) -> usize {
        if let Some(n) = self.workers {
            return n;
        }
        if self.store.location.is_memory() && self.data.is_none() {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            DEFAULT_WORKERS
        }
    }

    /// The waiting room's lanes (epoll sets, each served by its own
    /// workers): one per worker when nothing a worker does can wait, so that
    /// a connection stays with the worker that began it (its TLS state is
    /// allocated and freed by one thread, and its flights wake no other);
    /// one shared by every worker when a transaction can wait on a disk or a
    /// shared store, so that a waiting worker holds up no other connection.
    pub fn worker_lanes(&self) -> usize {
        if self.store.location.is_memory() && self.data.is_none() {
            self.worker_threads()
        } else {
            1
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_listeners()?;
        self.check_limits()?;
        self.check_ports_apart()?;
        self.check_http()?;
        self.check_tls_sessions()?;
        self.check_store()?;
        if self.proxy == ProxyProtocol::From(Vec::new()) {
            return Err(ConfigError::ProxyWithoutSenders);
        }
        if self.gap > self.timeout {
            return Err(ConfigError::GapBeyondTimeout);
        }
        Ok(())
    }

    /// At least one port, and a certificate for the TLS one.
    fn check_listeners(&self) -> Result<(), ConfigError> {
        if self.plain_port.is_none() && self.tls_port.is_none() {
            return Err(ConfigError::NoListener);
        }
        if self.tls_port.is_some() && self.identity.is_none() {
            return Err(ConfigError::TlsWithoutIdentity);
        }
        Ok(())
    }

    /// Counts and times that must be neither 0 nor past their maximum.
    fn check_limits(&self) -> Result<(), ConfigError> {
        for (value, flag) in [
            (self.workers.unwrap_or(1), "--workers"),
            (self.max_connections, "--max-connections"),
            (self.timeout.as_millis() as usize, "--timeout-ms"),
            (self.gap.as_millis() as usize, "--gap-ms"),
            (self.max_per_ip, "--max-per-ip"),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(flag));
            }
        }
        for (value, flag, max) in [
            (
                self.workers.unwrap_or(1) as u64,
                "--workers",
                MAX_WORKERS as u64,
            ),
            (
                self.max_connections as u64,
                "--max-connections",
                MAX_MAX_CONNECTIONS as u64,
            ),
            (
                self.max_per_ip as u64,
                "--max-per-ip",
                MAX_MAX_CONNECTIONS as u64,
            ),
            (
                self.timeout.as_millis() as u64,
                "--timeout-ms",
                MAX_TIMEOUT_MS,
            ),
        ] {
            if value > max {
                return Err(ConfigError::TooLarge { flag, max });
            }
        }
        Ok(())
    }

    /// No two listeners (open, TLS, `--http`) on one address and port.
    fn check_ports_apart(&self) -> Result<(), ConfigError> {
        let listeners = [
            ("--plain-port", self.plain_port),
            ("--tls-port", self.tls_port),
        ]
        .into_iter()
        .filter_map(|(flag, port)| Some((flag, SocketAddr::new(self.bind, port?))))
        .chain(self.http.as_ref().map(|h| ("--http", h.addr)))
        .collect::<Vec<_>>();
        for (i, &(flag, a)) in listeners.iter().enumerate() {
            for &(other, b) in &listeners[i + 1..] {
                if same_socket(a, b) {
                    return Err(ConfigError::SamePort {
                        flag,
                        other,
                        port: a.port(),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_http(&self) -> Result<(), ConfigError> {
        let Some(http) = &self.http else {
            return Ok(());
        };
        if http.max_connections == 0 {
            return Err(ConfigError::Zero("--http-max-connections"));
        }
        if http.max_connections > MAX_HTTP_MAX_CONNECTIONS {
            return Err(ConfigError::TooLarge {
                flag: "--http-max-connections",
                max: MAX_HTTP_MAX_CONNECTIONS as u64,
            });
        }
        Ok(())
    }

    fn check_tls_sessions(&self) -> Result<(), ConfigError> {
        let lifetime = self.tls.session_lifetime.as_secs();
        if lifetime == 0 {
            return Err(ConfigError::Zero("--tls-session-lifetime"));
        }
        if lifetime > MAX_SESSION_LIFETIME_SECS {
            return Err(ConfigError::TooLarge {
                flag: "--tls-session-lifetime",
                max: MAX_SESSION_LIFETIME_SECS,
            });
        }
        if self.tls.tickets > MAX_TLS_TICKETS {
            return Err(ConfigError::TooLarge {
                flag: "--tls-tickets",
                max: MAX_TLS_TICKETS as u64,
            });
        }
        Ok(())
    }

    /// The shared store's flags only with a shared store, never beside a
    /// data file; a data file's compaction ratio at least 1.
    fn check_store(&self) -> Result<(), ConfigError> {
        if self.store.location.is_memory() {
            for (set, flag) in [
                (self.store.ca.is_some(), "--store-ca"),
                (self.store.wait_replicas > 0, "--store-wait-replicas"),
                (self.store.wait_aof, "--store-wait-aof"),
                (self.store.prefix != DEFAULT_PREFIX, "--store-prefix"),
            ] {
                if set {
                    return Err(ConfigError::NeedsSharedStore(flag));
                }
            }
        } else if self.data.is_some() {
            return Err(ConfigError::DataWithSharedStore);
        }
        // Written so that a ratio that is not a number is refused too.
        let ratio_ok = |d: &DataConfig| d.compaction.ratio >= 1.0;
        if self.data.as_ref().is_some_and(|d| !ratio_ok(d)) {
            return Err(ConfigError::CompactRatio);
        }
        Ok(())
    }
}

/// The TLS port's identities from the flags: a PKCS#12 file, or up to two
/// `--cert`/`--key` pairs (an RSA and an ECDSA certificate), the first served
/// by default. Returns the first and the second.
pub fn identities(
    certs: Vec<PathBuf>,
    keys: Vec<PathBuf>,
    pkcs12: Option<(PathBuf, String)>,
) -> Result<(Option<IdentitySource>, Option<IdentitySource>), ConfigError> {
    if certs.len() != keys.len() || certs.len() > 2 {
        return Err(ConfigError::UnpairedCertificates);
    }
    if let Some((file, password)) = pkcs12 {
        return Ok((Some(IdentitySource::Pkcs12 { file, password }), None));
    }
    let mut pairs = certs
        .into_iter()
        .zip(keys)
        .map(|(cert, key)| IdentitySource::Pem { cert, key });
    Ok((pairs.next(), pairs.next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Option<IdentitySource> {
        Some(IdentitySource::Pem {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        })
    }

    #[test]
    fn defaults_need_an_identity_for_tls() {
        let config = ServerConfig::default();
        assert_eq!(config.validate(), Err(ConfigError::TlsWithoutIdentity));
        let config = ServerConfig {
            identity: identity(),
            ..ServerConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.plain_port, Some(27708));
        assert_eq!(config.tls_port, Some(40508));
    }

    #[test]
    fn http_max_connections_is_bounded() {
        let with = |n| ServerConfig {
            identity: identity(),
            http: Some(HttpConfig {
                max_connections: n,
                ..HttpConfig::new("127.0.0.1:0".parse().unwrap())
            }),
            ..ServerConfig::default()
        };
        assert_eq!(
            with(0).validate(),
            Err(ConfigError::Zero("--http-max-connections"))
        );
        assert_eq!(
            with(MAX_HTTP_MAX_CONNECTIONS + 1).validate(),
            Err(ConfigError::TooLarge {
                flag: "--http-max-connections",
                max: MAX_HTTP_MAX_CONNECTIONS as u64
            })
        );
        assert_eq!(with(DEFAULT_HTTP_MAX_CONNECTIONS).validate(), Ok(()));
    }

    #[test]
    fn invalid_settings_name_their_flag() {
        let base = ServerConfig {
            identity: identity(),
            ..ServerConfig::default()
        };
        let cases = [
            (
                ServerConfig {
                    plain_port: None,
                    tls_port: None,
                    ..base.clone()
                },
                ConfigError::NoListener,
            ),
            (
                ServerConfig {
                    workers: Some(0),
                    ..base.clone()
                },
                ConfigError::Zero("--workers"),
            ),
            (
                ServerConfig {
                    max_connections: 0,
                    ..base.clone()
                },
                ConfigError::Zero("--max-connections"),
            ),
            (
                ServerConfig {
                    timeout: Duration::ZERO,
                    ..base.clone()
                },
                ConfigError::Zero("--timeout-ms"),
            ),
            (
                ServerConfig {
                    gap: Duration::ZERO,
                    ..base.clone()
                },
                ConfigError::Zero("--gap-ms"),
            ),
            (
                ServerConfig {
                    workers: Some(100_000),
                    ..base.clone()
                },
                ConfigError::TooLarge {
                    flag: "--workers",
                    max: MAX_WORKERS as u64,
                },
            ),
            (
                ServerConfig {
                    max_connections: usize::MAX,
                    ..base.clone()
                },
                ConfigError::TooLarge {
                    flag: "--max-connections",
                    max: MAX_MAX_CONNECTIONS as u64,
                },
            ),
            (
                ServerConfig {
                    gap: Duration::from_secs(10),
                    ..base.clone()
                },
                ConfigError::GapBeyondTimeout,
            ),
            (
                ServerConfig {
                    tls: TlsSettings {
                        tickets: MAX_TLS_TICKETS + 1,
                        ..TlsSettings::default()
                    },
                    ..base.clone()
                },
                ConfigError::TooLarge {
                    flag: "--tls-tickets",
                    max: MAX_TLS_TICKETS as u64,
                },
            ),
        ];
        for (config, want) in cases {
            assert_eq!(config.validate(), Err(want.clone()));
            assert!(want.to_string().contains("--") || want == ConfigError::NoListener);
        }
    }

    #[test]
    fn flags_are_checked_against_the_one_table() {
        let with = |flags: &[&str]| check_flags(|f| flags.contains(&f));
        assert_eq!(with(&[]), Ok(()));
        assert_eq!(with(&["--data", "--fsync", "--repair"]), Ok(()));
        assert_eq!(
            with(&["--fsync"]),
            Err(ConfigError::Needs {
                flag: "--fsync",
                needs: "--data"
            })
        );
        assert_eq!(
            with(&["--no-tls", "--cert"]),
            Err(ConfigError::Conflict {
                flag: "--cert",
                with: "--no-tls"
            }),
            "a conflict is named before what is missing"
        );
        assert_eq!(
            with(&["--client-crl", "--client-ca"]),
            Ok(()),
            "TLS on by default"
        );
        // Every rule fires alone, naming both of its flags (no flag needs
        // two others).
        for &(flag, rule) in FLAG_RULES {
            let (given, want): (Vec<&str>, _) = match rule {
                FlagRule::Needs(needs) => (vec![flag], ConfigError::Needs { flag, needs }),
                FlagRule::ConflictsWith(with) => {
                    (vec![flag, with], ConfigError::Conflict { flag, with })
                }
            };
            let got = check_flags(|f| given.contains(&f));
            assert_eq!(got, Err(want.clone()), "{flag} {rule:?}");
            let text = want.to_string();
            assert!(
                text.contains(flag) && text.contains(&env_name(flag)),
                "{text}"
            );
        }
        assert_eq!(
            env_name("--tls-session-lifetime"),
            "WWEP_TLS_SESSION_LIFETIME"
        );
    }

    #[test]
    fn two_listeners_on_one_port_are_refused_unless_0_or_apart() {
        let base = ServerConfig {
            identity: identity(),
            ..ServerConfig::default()
        };
        let same = |plain, tls| ServerConfig {
            plain_port: plain,
            tls_port: tls,
            ..base.clone()
        };
        assert_eq!(
            same(Some(5000), Some(5000)).validate(),
            Err(ConfigError::SamePort {
                flag: "--plain-port",
                other: "--tls-port",
                port: 5000
            })
        );
        assert_eq!(same(Some(0), Some(0)).validate(), Ok(()));
        assert_eq!(same(Some(5000), None).validate(), Ok(()));
        let http = |bind: &str, addr: &str| ServerConfig {
            bind: bind.parse().unwrap(),
            http: Some(HttpConfig::new(addr.parse().unwrap())),
            ..base.clone()
        };
        assert_eq!(
            http("0.0.0.0", "127.0.0.1:40508").validate(),
            Err(ConfigError::SamePort {
                flag: "--tls-port",
                other: "--http",
                port: 40508
            })
        );
        assert_eq!(
            http("127.0.0.1", "10.0.0.1:27708").validate(),
            Ok(()),
            "two addresses"
        );
        assert_eq!(http("127.0.0.1", "127.0.0.1:9708").validate(), Ok(()));
    }

    #[test]
    fn certificates_and_keys_come_in_pairs_at_most_two() {
        let p = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            identities(p(&["a.pem"]), p(&[]), None).err(),
            Some(ConfigError::UnpairedCertificates)
        );
        assert_eq!(
            identities(p(&["a", "b", "c"]), p(&["a", "b", "c"]), None).err(),
            Some(ConfigError::UnpairedCertificates)
        );
        let (first, second) =
            identities(p(&["r.pem", "e.pem"]), p(&["r.key", "e.key"]), None).expect("two pairs");
        assert!(
            matches!(first, Some(IdentitySource::Pem { cert, .. }) if cert.as_os_str() == "r.pem")
        );
        assert!(
            matches!(second, Some(IdentitySource::Pem { cert, .. }) if cert.as_os_str() == "e.pem")
        );
        assert_eq!(
            identities(vec![], vec![], None)
                .ok()
                .map(|(a, b)| (a.is_none(), b.is_none())),
            Some((true, true))
        );
    }
}
