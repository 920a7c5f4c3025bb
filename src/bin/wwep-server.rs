//! `wwep-server`: serves WWEP on an open and a TLS port at once.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use wwep::allow::Cidr;
use wwep::config::{ConfigError, HttpConfig, PortAccess, identities};
use wwep::config::{
    DEFAULT_GAP_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_IP, DEFAULT_PLAIN_PORT,
    DEFAULT_TIMEOUT_MS, DEFAULT_TLS_PORT, ProxyProtocol, ServerConfig,
};
use wwep::logging::LogFormat;
use wwep::protocol::ErrorDetail;
use wwep::service::Signal;
use wwep::store::DataConfig;

/// mimalloc, also in place of the C library's malloc (the `override`
/// feature), so OpenSSL allocates from it too: see README, "Dependencies".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use wwep::store::journal::{CompactionPolicy, Fsync};
use wwep::store::redis::{DEFAULT_PREFIX, RedisSettings, StoreLocation};
use wwep::tls::{
    ClientAuth, DEFAULT_SESSION_CACHE, DEFAULT_TLS_TICKETS, MAX_SESSION_LIFETIME_SECS, TlsSettings,
    TlsVersion,
};

/// WWEP register server: an open port and a TLS port served at once.
///
/// SIGTERM or SIGINT stops accepting, finishes the connections in flight, syncs
/// the data file and exits 0. SIGHUP reloads the TLS certificate and key and the
/// --acl rules.
#[derive(Parser, Debug)]
#[command(name = "wwep-server", version, about, long_about)]
struct Args {
    /// Address to listen on (`::` listens on IPv6 and, where the system allows, IPv4).
    #[arg(long, env = "WWEP_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Port of the open (plain TCP) listener; 0 picks a free port.
    #[arg(long, env = "WWEP_PLAIN_PORT", default_value_t = DEFAULT_PLAIN_PORT)]
    plain_port: u16,
    /// Port of the TLS listener; 0 picks a free port.
    #[arg(long, env = "WWEP_TLS_PORT", default_value_t = DEFAULT_TLS_PORT)]
    tls_port: u16,
    /// Do not serve the open port.
    #[arg(long, env = "WWEP_NO_PLAIN")]
    no_plain: bool,
    /// Do not serve the TLS port.
    #[arg(long, env = "WWEP_NO_TLS")]
    no_tls: bool,
    /// Server certificate, PEM: the leaf first, then any intermediates. Give it
    /// twice (with --key twice) to serve an RSA and an ECDSA certificate side by
    /// side; each client gets the one it can use.
    #[arg(long, env = "WWEP_CERT", value_delimiter = ',')]
    cert: Vec<PathBuf>,
    /// Private key for --cert: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), PEM or DER.
    #[arg(long, env = "WWEP_KEY", value_delimiter = ',')]
    key: Vec<PathBuf>,
    /// PKCS#12 bundle with certificate and key, instead of --cert/--key; its
    /// password is read from WWEP_PKCS12_PASSWORD (empty when unset).
    #[arg(long, env = "WWEP_PKCS12")]
    pkcs12: Option<PathBuf>,
    /// Require TLS clients to present a certificate signed by a CA in FILE (mutual TLS).
    #[arg(long, env = "WWEP_CLIENT_CA", value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Refuse client certificates revoked in FILE (a PEM file of CRLs, or one DER
    /// CRL; repeatable). Reloaded with SIGHUP. Past a list's nextUpdate every
    /// client of its CA is refused: install the CA's fresh list before then.
    #[arg(
        long,
        env = "WWEP_CLIENT_CRL",
        value_name = "FILE",
        value_delimiter = ','
    )]
    client_crl: Vec<PathBuf>,
    /// Oldest TLS version accepted.
    #[arg(long, env = "WWEP_TLS_MIN", value_enum, default_value_t = TlsVersion::Tls12)]
    tls_min: TlsVersion,
    /// TLS 1.2 cipher suites (OpenSSL cipher-list syntax) instead of the default
    /// forward-secret AEAD set, e.g. to admit an old board's CBC suite.
    #[arg(long, env = "WWEP_TLS_CIPHERS", value_name = "LIST")]
    tls_ciphers: Option<String>,
    /// TLS 1.3 cipher suites (OpenSSL syntax) instead of the default five.
    #[arg(long, env = "WWEP_TLS_CIPHERSUITES", value_name = "LIST")]
    tls_ciphersuites: Option<String>,
    /// TLS 1.2 sessions kept for session-ID resumption; 0 turns the cache off
    /// (session tickets still work).
    #[arg(long, env = "WWEP_TLS_SESSION_CACHE", default_value_t = DEFAULT_SESSION_CACHE)]
    tls_session_cache: usize,
    /// Seconds a TLS session may be resumed (at most 300, OpenSSL's default):
    /// the session cache and ticket keys are renewed this often.
    #[arg(long, env = "WWEP_TLS_SESSION_LIFETIME", default_value_t = MAX_SESSION_LIFETIME_SECS)]
    tls_session_lifetime: u64,
    /// Session tickets sent after each TLS 1.3 handshake (0–8; 0 sends none).
    /// A client that resumes once per connection needs one; browsers and
    /// clients that open several connections at once may want more.
    #[arg(long, env = "WWEP_TLS_TICKETS", value_name = "N", default_value_t = DEFAULT_TLS_TICKETS)]
    tls_tickets: usize,
    /// Accept connections only from these addresses or CIDR ranges (repeatable,
    /// or comma-separated); others are closed without a reply. Default: everyone.
    #[arg(long, env = "WWEP_ALLOW", value_name = "CIDR", value_delimiter = ',')]
    allow: Vec<Cidr>,
    /// Connections from one client address that may be open without a complete
    /// message yet (busy clients that send at once never meet this).
    #[arg(long, env = "WWEP_MAX_PER_IP", default_value_t = DEFAULT_MAX_PER_IP)]
    max_per_ip: usize,
    /// Expect a PROXY protocol header (v1 or v2) from the load balancers in
    /// --proxy-from, on both ports, and take the client's address from it.
    #[arg(long, env = "WWEP_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// Addresses or CIDR ranges of the balancers whose PROXY headers are
    /// believed (repeatable, or comma-separated); a header from anywhere else
    /// closes the connection.
    #[arg(
        long,
        env = "WWEP_PROXY_FROM",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    proxy_from: Vec<Cidr>,
    /// Serve only reads on the open port; writes there get X and need the TLS port.
    #[arg(long, env = "WWEP_PLAIN_READ_ONLY")]
    plain_read_only: bool,
    /// Rules of who may read or write which registers (by client certificate or
    /// address); first match wins, anything no rule allows gets X. Reloaded with
    /// SIGHUP. Without it, every client that gets in may read and write everything.
    #[arg(long, env = "WWEP_ACL", value_name = "FILE")]
    acl: Option<PathBuf>,
    /// Check an --acl rule file, print the rules as understood and exit: 0 when
    /// it is valid, 2 with the line that is not.
    #[arg(long, value_name = "FILE")]
    check_acl: Option<PathBuf>,
    /// Worker threads serving connections [default: one per core with registers
    /// in memory only; 64 with --data or --store]
    #[arg(long, env = "WWEP_WORKERS")]
    workers: Option<usize>,
    /// Connections open at once; when full, the oldest that has sent nothing is
    /// closed to make room, and only when none has is a newcomer refused.
    #[arg(long, env = "WWEP_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Milliseconds a connection has, from accept, to deliver its message (TLS
    /// handshake included); also the longest a stop waits for a slow client.
    #[arg(long, env = "WWEP_TIMEOUT_MS", default_value_t = DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// Milliseconds a started message may pause before it is judged as it stands.
    #[arg(long, env = "WWEP_GAP_MS", default_value_t = DEFAULT_GAP_MS)]
    gap_ms: u64,
    /// Append a short reason to each X (`X not found`, `X bad length`, ...).
    #[arg(long, env = "WWEP_EXPLAIN_ERRORS")]
    explain_errors: bool,
    /// Where registers live: `memory` (this process; with --data, its data file),
    /// `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS), or
    /// `redis+sentinel://host:port[,host:port…]/PRIMARY[/db]`. Several servers
    /// with the same Redis share one set of registers.
    #[arg(long, env = "WWEP_STORE", value_name = "URL", default_value = "memory")]
    store: StoreLocation,
    /// Redis keys are PREFIX:DEVICE (a hash of registers), so deployments can
    /// share one Redis.
    #[arg(long, env = "WWEP_STORE_PREFIX", default_value = DEFAULT_PREFIX)]
    store_prefix: String,
    /// CA certificates (PEM) that sign the Redis server's certificate (rediss://).
    #[arg(long, env = "WWEP_STORE_CA", value_name = "FILE")]
    store_ca: Option<PathBuf>,
    /// Acknowledge a write only once this many Redis replicas have it (WAIT).
    #[arg(
        long,
        env = "WWEP_STORE_WAIT_REPLICAS",
        value_name = "N",
        default_value_t = 0
    )]
    store_wait_replicas: u32,
    /// Acknowledge a write only once it is in Redis's append-only file (WAITAOF;
    /// Redis/Valkey 7.2 or later).
    #[arg(long, env = "WWEP_STORE_WAIT_AOF")]
    store_wait_aof: bool,
    /// Keep registers in this append-only data file, replayed at startup.
    #[arg(long, env = "WWEP_DATA", value_name = "FILE")]
    data: Option<PathBuf>,
    /// When writes reach the disk: always (before each A), everysec, or never (the OS decides).
    #[arg(long, env = "WWEP_FSYNC", value_enum, default_value_t = Fsync::default())]
    fsync: Fsync,
    /// Start from a damaged data file by keeping its valid records and dropping the rest.
    #[arg(long, env = "WWEP_REPAIR")]
    repair: bool,
    /// Rewrite the data file once it is this many times the size of the live registers.
    #[arg(long, env = "WWEP_COMPACT_RATIO", default_value_t = 4.0)]
    compact_ratio: f64,
    /// ...and at least this many bytes.
    #[arg(long, env = "WWEP_COMPACT_MIN_BYTES", default_value_t = 1 << 20)]
    compact_min_bytes: u64,
    /// Serve /metrics (Prometheus), /health, /ready, a live register page and
    /// /api/events (each write as it is acknowledged) over HTTP on ADDR, e.g.
    /// 127.0.0.1:9708 (port 0 picks a free port). Off by default.
    #[arg(long, env = "WWEP_HTTP", value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Addresses or CIDR ranges that may use --http (repeatable, or
    /// comma-separated); others get 403. Default: loopback only.
    #[arg(
        long,
        env = "WWEP_HTTP_ALLOW",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    http_allow: Vec<Cidr>,
    /// Open HTTP connections at most (watchers of /api/events included); when
    /// full, the oldest idle one is shed, else the oldest busy past its first second,
    /// else the youngest still sending its request head.
    #[arg(
        long,
        env = "WWEP_HTTP_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = wwep::config::DEFAULT_HTTP_MAX_CONNECTIONS
    )]
    http_max_connections: usize,
    /// Log lines as text (for people) or json (one object per line, for machines).
    #[arg(long, env = "WWEP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Args {
    fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let pkcs12 = self.pkcs12.map(|file| {
            let password = std::env::var("WWEP_PKCS12_PASSWORD").unwrap_or_default();
            (file, password)
        });
        let (identity, extra_identity) = identities(self.cert, self.key, pkcs12)?;
        Ok(ServerConfig {
            store: RedisSettings {
                location: self.store,
                prefix: self.store_prefix,
                ca: self.store_ca,
                wait_replicas: self.store_wait_replicas,
                wait_aof: self.store_wait_aof,
            },
            proxy: if self.proxy_protocol {
                ProxyProtocol::From(self.proxy_from)
            } else {
                ProxyProtocol::Off
            },
            extra_identity,
            tls: TlsSettings {
                min: self.tls_min,
                ciphers: self.tls_ciphers,
                ciphersuites: self.tls_ciphersuites,
                client_crls: self.client_crl,
                session_cache: self.tls_session_cache,
                session_lifetime: Duration::from_secs(self.tls_session_lifetime),
                tickets: self.tls_tickets,
            },
            bind: self.bind,
            plain_port: (!self.no_plain).then_some(self.plain_port),
            tls_port: (!self.no_tls).then_some(self.tls_port),
            identity,
            client_auth: match self.client_ca {
                Some(ca) => ClientAuth::Required { ca },
                None => ClientAuth::Off,
            },
            allow: self.allow,
            acl: self.acl,
            max_per_ip: self.max_per_ip,
            plain_access: if self.plain_read_only {
                PortAccess::ReadOnly
            } else {
                PortAccess::ReadWrite
            },
            workers: self.workers,
            max_connections: self.max_connections,
            timeout: Duration::from_millis(self.timeout_ms),
            gap: Duration::from_millis(self.gap_ms),
            error_detail: if self.explain_errors {
                ErrorDetail::Explained
            } else {
                ErrorDetail::Bare
            },
            http: self.http.map(|addr| HttpConfig {
                addr,
                allow: if self.http_allow.is_empty() {
                    HttpConfig::default_allow()
                } else {
                    self.http_allow
                },
                max_connections: self.http_max_connections,
            }),
            data: self.data.map(|path| DataConfig {
                path,
                // clap has checked the value against the same three names.
                fsync: self.fsync,
                compaction: CompactionPolicy {
                    ratio: self.compact_ratio,
                    min_bytes: self.compact_min_bytes,
                },
                repair: self.repair,
            }),
            ..ServerConfig::default()
        })
    }
}

/// Whether `flag` (`--data`) was given, on the command line or in its
/// environment variable; a switch counts only when on (`WWEP_NO_TLS=false`
/// is not given).
fn given(command: &clap::Command, matches: &ArgMatches, flag: &str) -> bool {
    let long = flag.trim_start_matches("--");
    let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(long)) else {
        return false;
    };
    let id = arg.get_id().as_str();
    match matches.value_source(id) {
        Some(ValueSource::CommandLine | ValueSource::EnvVariable) => {}
        _ => return false,
    }
    match arg.get_action() {
        ArgAction::SetTrue => matches.get_flag(id),
        _ => true,
    }
}

fn main() -> ExitCode {
    let command = Args::command();
    let matches = command.clone().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if let Err(e) = wwep::config::check_flags(|flag| given(&command, &matches, flag)) {
        eprintln!("wwep-server: {e}");
        return ExitCode::from(2);
    }
    if let Some(path) = &args.check_acl {
        return match wwep::acl::Acl::load(path) {
            Ok(acl) => {
                print!("{}", acl.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wwep-server: {e}");
                ExitCode::from(2)
            }
        };
    }
    wwep::logging::init(args.log_format);
    // A panic is logged as one line; the worker pool replaces the thread.
    std::panic::set_hook(Box::new(|info| log::error!("{info}")));
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wwep-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Signals are caught before anything starts, so a stop during a long replay
    // of the data file is obeyed, and none is lost at startup.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("wwep-server: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = signals.handle();
    let (requests, received) = std::sync::mpsc::channel();
    let forwarder = std::thread::spawn(move || {
        for signal in signals.forever() {
            let request = if signal == SIGHUP {
                Signal::Reload
            } else {
                Signal::Stop
            };
            if requests.send(request).is_err() {
                break;
            }
        }
    });
    let exit = wwep::service::run(config, received);
    handle.close();
    let _ = forwarder.join();
    exit
}
