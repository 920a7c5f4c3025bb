//! Registers in Valkey/Redis, shared by several front ends.
//!
//! One hash per device: `PREFIX:0FAC` holds field `0B` = `"1234"`, so
//! `redis-cli HGETALL wwep:0FAC` shows a board readably. `W` is `HSET` in a script
//! that refuses it after its deadline ([`FENCE_SCRIPT`]; then
//! `WAIT`/`WAITAOF` when asked for), `R` is `HGET`. Connections come from a
//! bounded pool; connecting (Sentinel's answer included) and every command
//! have a time limit; when Redis is down, each request fails at once (`X`)
//! while reconnection backs off, and service resumes by itself when Redis (or
//! the primary Sentinel names) answers again.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};
use redis::{
    Client, Connection, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError,
    RedisResult, Role, TlsCertificates,
};

use super::backend::{Backend, StoreError};
use crate::input_file::MAX_FILE_BYTES;
use crate::rate_limited::RateLimitedLog;

/// Where the registers live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreLocation {
    /// In this process (with `--data`, in its data file).
    #[default]
    Memory,
    /// One Redis/Valkey server: `redis://[user:pass@]host:port[/db]`, or
    /// `rediss://…` for TLS.
    Redis { url: String },
    /// The primary that Sentinel names:
    /// `redis+sentinel://[user:pass@]host:port[,host:port…]/PRIMARY[/db]`
    /// (`rediss+sentinel://` for TLS to the data nodes).
    Sentinel {
        sentinels: Vec<String>,
        primary: String,
        /// `redis://[user:pass@]host:port/db` with the credentials and database
        /// for the data nodes (the host is a placeholder).
        node: String,
        tls: bool,
    },
}

impl StoreLocation {
    pub fn is_memory(&self) -> bool {
        *self == StoreLocation::Memory
    }
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "'{}' is not a store: expected memory, redis://HOST:PORT[/DB], rediss://… or redis+sentinel://HOST:PORT[,HOST:PORT…]/PRIMARY[/DB]",
                without_credentials(text)
            )
        };
        if text == "memory" {
            return Ok(StoreLocation::Memory);
        }
        if text.starts_with("redis://") || text.starts_with("rediss://") {
            text.into_connection_info().map_err(|_| usage())?;
            return Ok(StoreLocation::Redis {
                url: text.to_string(),
            });
        }
        let (tls, rest) = if let Some(rest) = text.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Err(usage());
        };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((user, rest)) => (format!("{user}@"), rest),
            None => (String::new(), rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(usage)?;
        let (primary, db) = match path.split_once('/') {
            Some((primary, db)) => (primary, db.parse::<u32>().map_err(|_| usage())?),
            None => (path, 0),
        };
        if primary.is_empty() || hosts.is_empty() {
            return Err(usage());
        }
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(|host| format!("redis://{host}"))
            .collect();
        for sentinel in &sentinels {
            sentinel
                .as_str()
                .into_connection_info()
                .map_err(|_| usage())?;
        }
        Ok(StoreLocation::Sentinel {
            sentinels,
            primary: primary.to_string(),
            node: format!("redis://{userinfo}localhost/{db}"),
            tls,
        })
    }
}

/// `scheme://user:secret@rest` as `scheme://***@rest`, for messages.
fn without_credentials(text: &str) -> String {
    match (text.split_once("://"), text.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, rest))) => format!("{scheme}://***@{rest}"),
        _ => text.to_string(),
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Memory => f.write_str("memory"),
            // Credentials stay out of logs.
            StoreLocation::Redis { url } => match url.as_str().into_connection_info() {
                Ok(info) => write!(f, "redis {}", info.addr()),
                Err(_) => f.write_str("redis"),
            },
            StoreLocation::Sentinel {
                sentinels, primary, ..
            } => write!(
                f,
                "primary {primary} of sentinels {}",
                sentinels
                    .iter()
                    .map(|s| s.trim_start_matches("redis://"))
                    .map(|s| s.rsplit_once('@').map_or(s, |(_, host)| host))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// How a shared store is reached and what a write must wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub location: StoreLocation,
    /// Keys are `PREFIX:DEV`.
    pub prefix: String,
    /// CA certificates (PEM) that sign the Redis server's certificate, for
    /// `rediss://`; the system's roots otherwise.
    pub ca: Option<PathBuf>,
    /// A write is acknowledged only once this many replicas have it (`WAIT`).
    pub wait_replicas: u32,
    /// …and once it is in the append-only file of the primary (and of the
    /// replicas waited for) (`WAITAOF`, Redis/Valkey 7.2+).
    pub wait_aof: bool,
}

pub const DEFAULT_PREFIX: &str = "wwep";

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            location: StoreLocation::Memory,
            prefix: DEFAULT_PREFIX.to_string(),
            ca: None,
            wait_replicas: 0,
            wait_aof: false,
        }
    }
}

/// Why the shared store cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOpenError {
    /// The location or the CA file cannot be used.
    Setup(String),
    /// `--store-wait-aof` against a server without `WAITAOF`.
    NoWaitAof(String),
    /// `--store-wait-aof` needs to ask the server, which did not answer.
    Unreachable(String),
    /// The store's TLS certificate does not verify, at startup: a setting to
    /// fix (`--store-ca`, the name in the URL, the store's certificate), not an
    /// outage to wait out.
    Untrusted {
        store: String,
        /// The CA file it was checked against; None for the system's roots.
        ca: Option<PathBuf>,
        /// OpenSSL's reason, e.g. `hostname mismatch`.
        reason: String,
    },
}

impl fmt::Display for RedisOpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisOpenError::Setup(e) => write!(f, "--store: {e}"),
            RedisOpenError::NoWaitAof(server) => write!(
                f,
                "--store-wait-aof: {server} has no WAITAOF (it needs Redis or Valkey 7.2 or later)"
            ),
            RedisOpenError::Unreachable(e) => write!(
                f,
                "--store-wait-aof: cannot ask the store whether it has WAITAOF: {e}"
            ),
            RedisOpenError::Untrusted { store, ca, reason } => match ca {
                Some(ca) => write!(
                    f,
                    "--store: the certificate of {store} is not trusted (checked against --store-ca {}): {reason}",
                    ca.display()
                ),
                None => write!(
                    f,
                    "--store: the certificate of {store} is not trusted (checked against the system's roots; --store-ca names another CA): {reason}"
                ),
            },
        }
    }
}

impl std::error::Error for RedisOpenError {}

/// Where new connections come from.
enum Source {
    Direct(Client),
    Sentinel(SentinelSource),
}

impl Source {
    /// A new connection, trying to finish by `deadline`. The library cannot
    /// time out every step (a TLS handshake with a server that accepted the
    /// connection and went silent, a name lookup), so callers wait for this on
    /// another thread: see [`RedisStore::connect`].
    fn connect(&self, deadline: Instant) -> RedisResult<Connection> {
        match self {
            Source::Direct(client) => client.get_connection_with_timeout(time_left(deadline)?),
            Source::Sentinel(sentinel) => sentinel.connect(deadline),
        }
    }
}

impl Source {
    /// Bumped each time Sentinel names another primary; a connection made
    /// under an older one is never used again. Always 0 without Sentinel.
    fn epoch(&self) -> u64 {
        match self {
            Source::Direct(_) => 0,
            Source::Sentinel(sentinel) => sentinel.epoch.load(Ordering::Acquire),
        }
    }

    /// The data node a new connection would reach over TLS (`None` without TLS).
    fn tls_node(&self, deadline: Instant) -> Option<(String, u16)> {
        match self {
            Source::Direct(client) => match client.get_connection_info().addr() {
                ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
                _ => None,
            },
            Source::Sentinel(sentinel) if sentinel.tls => sentinel.named_primary(deadline).ok(),
            Source::Sentinel(_) => None,
        }
    }
}

/// The Sentinels, and how to reach the primary they name. Asked afresh for
/// each new connection, on a connection of its own with the time limit (the
/// redis crate's Sentinel client has none, so one Sentinel that stops
/// answering would hold every worker that needs a connection).
struct SentinelSource {
    sentinels: Vec<Client>,
    primary: String,
    /// Credentials and database for the data nodes; the address is replaced.
    node: ConnectionInfo,
    tls: bool,
    /// `--store-ca`, for TLS to the data nodes.
    root_cert: Option<Vec<u8>>,
    /// The Sentinel asked first: the one that answered last, or the one after
    /// the one that failed last.
    first: AtomicUsize,
    /// See [`Source::epoch`]; moved on by [`watch_sentinels`].
    epoch: AtomicU64,
    /// The primary the Sentinels named last, as the watcher heard it.
    named: Mutex<Option<(String, u16)>>,
    /// When a Sentinel last answered (the watcher or a lookup).
    heard: Mutex<Instant>,
    /// The Sentinels' `down-after-milliseconds` for the primary, as they
    /// report it: after this long without any Sentinel, pooled connections
    /// are not trusted.
    down_after: AtomicU64,
}

impl SentinelSource {
    fn connect(&self, deadline: Instant) -> RedisResult<Connection> {
        let (host, port) = self.named_primary(deadline)?;
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.clone(), port)
        };
        let info = aborting(self.node.clone().set_addr(addr));
        let client = match &self.root_cert {
            Some(root) if self.tls => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                },
            )?,
            _ => Client::open(info)?,
        };
        let mut connection = client.get_connection_with_timeout(time_left(deadline)?)?;
        let left = time_left(deadline)?;
        connection.set_read_timeout(Some(left))?;
        connection.set_write_timeout(Some(left))?;
        // A Sentinel's view can be behind (an old primary back before it is
        // made a replica): write only to a node that says it is the primary.
        match redis::cmd("ROLE").query::<Role>(&mut connection)? {
            Role::Primary { .. } => Ok(connection),
            _ => Err(RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "not a primary",
                format!(
                    "{host}:{port}, named by Sentinel as primary {}, is not one",
                    self.primary
                ),
            ))),
        }
    }

    /// The primary's address from the first Sentinel that knows it.
    fn named_primary(&self, deadline: Instant) -> RedisResult<(String, u16)> {
        let count = self.sentinels.len();
        let first = self.first.load(Ordering::Relaxed);
        let mut last_error = None;
        for k in 0..count {
            let index = (first + k) % count;
            match self.ask(&self.sentinels[index], deadline) {
                Ok(addr) => {
                    self.first.store(index, Ordering::Relaxed);
                    *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    return Ok(addr);
                }
                Err(e) => {
                    self.first.store((index + 1) % count, Ordering::Relaxed);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((ErrorKind::InvalidClientConfig, "no Sentinel given"))
        }))
    }

    fn ask(&self, sentinel: &Client, deadline: Instant) -> RedisResult<(String, u16)> {
        let mut connection = sentinel.get_connection_with_timeout(time_left(deadline)?)?;
        let left = time_left(deadline)?;
        connection.set_read_timeout(Some(left))?;
        connection.set_write_timeout(Some(left))?;
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.primary)
            .query(&mut connection)?;
        named.ok_or_else(|| {
            RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "unknown primary",
                format!(
                    "Sentinel {} knows no primary named {}",
                    sentinel.get_connection_info().addr(),
                    self.primary
                ),
            ))
        })
    }
}

impl SentinelSource {
    /// Records the primary a Sentinel names; a change moves the epoch on, so
    /// that every connection to the one before is closed before it is used.
    fn note(&self, now: (String, u16)) {
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        if named.as_ref() == Some(&now) {
            return;
        }
        if let Some((host, port)) = named.as_ref() {
            info!(
                "Sentinel names {}:{} as primary {} (was {host}:{port}); connections to {host}:{port} are closed",
                now.0, now.1, self.primary
            );
        }
        *named = Some(now);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Follows one Sentinel: subscribed to `+switch-master` (a failover is
    /// heard within milliseconds), and asking for the primary after
    /// subscribing and every [`WATCH_TICK`] (a switch announced while no
    /// subscription was up is not missed). Returns on the first error.
    fn watch(&self, sentinel: &Client, stop: &AtomicBool) -> RedisResult<()> {
        let mut connection = sentinel.get_connection_with_timeout(WATCH_TICK)?;
        connection.set_write_timeout(Some(WATCH_TICK))?;
        if let Some(ms) = self.ask_down_after(sentinel) {
            self.down_after.store(ms, Ordering::Release);
        }
        let mut pubsub = connection.as_pubsub();
        pubsub.subscribe("+switch-master")?;
        pubsub.set_read_timeout(Some(WATCH_TICK))?;
        while !stop.load(Ordering::Acquire) {
            self.note(self.ask(sentinel, Instant::now() + WATCH_TICK)?);
            *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(e),
            };
            // `NAME OLD-IP OLD-PORT NEW-IP NEW-PORT`
            let payload: String = message.get_payload()?;
            let words: Vec<&str> = payload.split(' ').collect();
            if let [name, _, _, host, port] = words[..]
                && name == self.primary
                && let Ok(port) = port.parse()
            {
                self.note((host.to_string(), port));
            }
        }
        Ok(())
    }
}

impl SentinelSource {
    /// `down-after-milliseconds` from `SENTINEL MASTER`, if it answers.
    fn ask_down_after(&self, sentinel: &Client) -> Option<u64> {
        let mut connection = sentinel.get_connection_with_timeout(WATCH_TICK).ok()?;
        connection.set_read_timeout(Some(WATCH_TICK)).ok()?;
        let fields: Vec<String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.primary)
            .query(&mut connection)
            .ok()?;
        let at = fields.iter().position(|f| f == "down-after-milliseconds")?;
        fields.get(at + 1)?.parse().ok()
    }

    /// No Sentinel has answered for longer than the down-after period: the
    /// primary may have been replaced without this front end hearing of it.
    fn blind(&self) -> Option<Duration> {
        let heard = *self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let silent = heard.elapsed();
        (silent > Duration::from_millis(self.down_after.load(Ordering::Acquire))).then_some(silent)
    }
}

/// Until a Sentinel reports its own: Sentinel's default.
const DEFAULT_DOWN_AFTER_MS: u64 = 30_000;

/// How often the watcher asks a Sentinel for the primary, and how long it
/// waits for one to answer.
const WATCH_TICK: Duration = Duration::from_millis(500);

/// Runs until `stop`: follows the Sentinels in turn, moving to the next one
/// when one stops answering.
fn watch_sentinels(source: Arc<Source>, stop: Arc<AtomicBool>) {
    let Source::Sentinel(sentinels) = &*source else {
        return;
    };
    let mut index = 0;
    while !stop.load(Ordering::Acquire) {
        let sentinel = &sentinels.sentinels[index % sentinels.sentinels.len()];
        if let Err(e) = sentinels.watch(sentinel, &stop) {
            log::debug!(
                "following Sentinel {}: {}",
                sentinel.get_connection_info().addr(),
                describe(&e)
            );
            index += 1;
            std::thread::sleep(FIRST_BACKOFF);
        }
    }
}

/// What is left until `deadline`, or a time-out error when nothing is.
fn time_left(deadline: Instant) -> RedisResult<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| timed_out("the time limit passed".to_string()))
}

fn timed_out(what: String) -> RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what).into()
}

/// One connection attempt, shared by the thread that makes it and the caller
/// that waits for it.
#[derive(Default)]
struct Attempt {
    result: Option<RedisResult<Connection>>,
    /// The caller stopped waiting; the thread drops what it gets.
    abandoned: bool,
}

/// While this many connection attempts that were given up on still wait for
/// an answer, no new one is started: a silent store costs a few threads, not
/// one per request.
const MAX_ABANDONED_ATTEMPTS: usize = 4;

/// A connection with the epoch it was made in.
struct Pooled {
    connection: Connection,
    epoch: u64,
    /// Redis's clock, sampled on this connection.
    clock: Clock,
    /// When it was last given back.
    idle_since: Instant,
}

/// One reading of Redis's clock (`TIME`), and the local instant just after
/// the answer came: at any later local instant `t`, Redis's clock reads at
/// least `redis_ms + (t - local)` (less the rounding down to milliseconds).
#[derive(Clone, Copy)]
struct Clock {
    redis_ms: u64,
    local: Instant,
}

impl Clock {
    fn sample(connection: &mut Connection) -> RedisResult<Clock> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(connection)?;
        Ok(Clock {
            redis_ms: secs * 1000 + micros / 1000,
            local: Instant::now(),
        })
    }

    /// The Redis time by which Redis's clock has certainly passed when the
    /// local clock reaches `at`, less [`FENCE_MARGIN`].
    fn deadline(&self, at: Instant) -> u64 {
        let ahead = at.saturating_duration_since(self.local).as_millis() as u64;
        (self.redis_ms + ahead).saturating_sub(FENCE_MARGIN.as_millis() as u64)
    }
}

/// Room for the two clocks drifting apart between samples.
const FENCE_MARGIN: Duration = Duration::from_millis(5);
/// A connection idle longer than this, or whose clock reading is older than
/// [`MAX_CLOCK_AGE`], reads Redis's clock again before it carries a write
/// (which also shows it still answers).
const IDLE_CHECK: Duration = Duration::from_secs(1);
const MAX_CLOCK_AGE: Duration = Duration::from_secs(10);

/// The fence: `HSET KEYS[1] ARGV[2] ARGV[3]` only if Redis's clock has not
/// passed `ARGV[1]` (milliseconds), the moment the front end answers `X` for
/// this write; 1 when written, 0 when refused. A write that reaches Redis
/// after its front end gave up on it is never applied, so it cannot land on
/// a newer acknowledged one.
const FENCE_SCRIPT: &str = "\
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
";

/// Reconnection pacing while Redis is down.
struct Backoff {
    /// The epoch of the failure: a new primary named since is tried at once.
    epoch: u64,
    /// No new connection is tried before this.
    until: Option<Instant>,
    step: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest one command may take, whatever `--timeout-ms` allows.
const MAX_COMMAND_TIME: Duration = Duration::from_secs(1);

pub struct RedisStore {
    source: Arc<Source>,
    /// Connection attempts given up on that have not finished yet.
    abandoned: Arc<AtomicUsize>,
    location: StoreLocation,
    prefix: String,
    wait_replicas: u32,
    wait_aof: bool,
    /// For connecting and for each command.
    timeout: Duration,
    idle: Mutex<Vec<Pooled>>,
    /// Ends the Sentinel watcher when the store is dropped.
    stop: Arc<AtomicBool>,
    returned: Condvar,
    /// Connections open (idle or lent out).
    open: AtomicUsize,
    capacity: usize,
    backoff: Mutex<Backoff>,
    /// The last command failed (cleared by the next one that works).
    failing: AtomicBool,
    failure_log: RateLimitedLog,
    /// The SHA1 of [`FENCE_SCRIPT`], for `EVALSHA`.
    fence_sha: String,
}

/// Connections to the data nodes close with a reset (`SO_LINGER` 0): a
/// connection is closed when a command's time limit passes, and a plain close
/// would leave the command in the kernel's send queue, retransmitted when the
/// network returns and applied after the board was told `X` (and possibly
/// after a newer write). A reset discards what is queued.
fn aborting(info: ConnectionInfo) -> ConnectionInfo {
    let tcp = info
        .tcp_settings()
        .clone()
        .set_nodelay(true)
        .set_linger_time(Duration::ZERO);
    info.set_tcp_settings(tcp)
}

/// What went wrong, in words: a read that timed out is "no answer", not the
/// system's `Resource temporarily unavailable`.
fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    if e.is_timeout() && text.contains("os error") {
        "no answer within the time limit".to_string()
    } else {
        text
    }
}

impl RedisStore {
    /// Sets up the pool (`capacity` connections at most, one per worker) and
    /// tries a first connection. A store that does not answer yet is not an
    /// error (service starts when it does), unless `--store-wait-aof` needs to
    /// ask it what it supports.
    pub fn open(
        settings: &RedisSettings,
        capacity: usize,
        timeout: Duration,
    ) -> Result<RedisStore, RedisOpenError> {
        let setup = |e: redis::RedisError| RedisOpenError::Setup(describe(&e));
        let root_cert = match &settings.ca {
            Some(path) => Some(crate::input_file::read(path, MAX_FILE_BYTES).map_err(|e| {
                RedisOpenError::Setup(format!("--store-ca {}: cannot read: {e}", path.display()))
            })?),
            None => None,
        };
        let source = match &settings.location {
            StoreLocation::Memory => {
                return Err(RedisOpenError::Setup("not a shared store".to_string()));
            }
            StoreLocation::Redis { url } => Source::Direct(match root_cert.clone() {
                Some(root) => Client::build_with_tls(
                    aborting(url.as_str().into_connection_info().map_err(setup)?),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
                .map_err(setup)?,
                None => Client::open(aborting(
                    url.as_str().into_connection_info().map_err(setup)?,
                ))
                .map_err(setup)?,
            }),
            StoreLocation::Sentinel {
                sentinels,
                primary,
                node,
                tls,
            } => {
                if !tls && root_cert.is_some() {
                    return Err(RedisOpenError::Setup(
                        "--store-ca is for TLS to the store: rediss://… or rediss+sentinel://…"
                            .to_string(),
                    ));
                }
                Source::Sentinel(SentinelSource {
                    sentinels: sentinels
                        .iter()
                        .map(|sentinel| Client::open(sentinel.as_str()))
                        .collect::<RedisResult<_>>()
                        .map_err(setup)?,
                    primary: primary.clone(),
                    node: node.as_str().into_connection_info().map_err(setup)?,
                    tls: *tls,
                    root_cert: root_cert.clone(),
                    first: AtomicUsize::new(0),
                    epoch: AtomicU64::new(0),
                    named: Mutex::new(None),
                    heard: Mutex::new(Instant::now()),
                    down_after: AtomicU64::new(DEFAULT_DOWN_AFTER_MS),
                })
            }
        };
        let store = RedisStore {
            source: Arc::new(source),
            abandoned: Arc::new(AtomicUsize::new(0)),
            location: settings.location.clone(),
            prefix: settings.prefix.clone(),
            wait_replicas: settings.wait_replicas,
            wait_aof: settings.wait_aof,
            timeout: timeout.min(MAX_COMMAND_TIME),
            idle: Mutex::new(Vec::new()),
            stop: Arc::new(AtomicBool::new(false)),
            returned: Condvar::new(),
            open: AtomicUsize::new(0),
            capacity: capacity.max(1),
            backoff: Mutex::new(Backoff {
                until: None,
                step: FIRST_BACKOFF,
                epoch: 0,
            }),
            failing: AtomicBool::new(false),
            failure_log: RateLimitedLog::new(log::Level::Warn, Duration::from_secs(1)),
            fence_sha: openssl::sha::sha1(FENCE_SCRIPT.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        if let Source::Sentinel(_) = &*store.source {
            let (source, stop) = (Arc::clone(&store.source), Arc::clone(&store.stop));
            std::thread::Builder::new()
                .name("wwep-sentinel-watch".to_string())
                .spawn(move || watch_sentinels(source, stop))
                .map_err(|e| RedisOpenError::Setup(format!("cannot start a thread: {e}")))?;
        }
        let epoch = store.source.epoch();
        match store.connect() {
            Ok(mut connection) => {
                if store.wait_aof && !has_waitaof(&mut connection) {
                    return Err(RedisOpenError::NoWaitAof(store.location.to_string()));
                }
                info!("registers are kept in {}", store.location);
                if let Ok(clock) = Clock::sample(&mut connection) {
                    store.open.fetch_add(1, Ordering::AcqRel);
                    store.give_back(Pooled {
                        connection,
                        epoch,
                        clock,
                        idle_since: Instant::now(),
                    });
                }
            }
            Err(e) if store.wait_aof => return Err(RedisOpenError::Unreachable(describe(&e))),
            Err(e) => {
                let deadline = Instant::now() + store.timeout;
                let untrusted = store.source.tls_node(deadline).and_then(|(host, port)| {
                    crate::tls::client::certificate_rejection(
                        &host,
                        port,
                        root_cert.as_deref(),
                        deadline,
                    )
                });
                if let Some(reason) = untrusted {
                    return Err(RedisOpenError::Untrusted {
                        store: store.location.to_string(),
                        ca: settings.ca.clone(),
                        reason,
                    });
                }
                warn!(
                    "{} does not answer yet ({}); requests get X until it does",
                    store.location,
                    describe(&e)
                )
            }
        }
        Ok(store)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Pooled>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection within the time limit. The attempt runs on a thread
    /// of its own, so that a step the library cannot time out (a TLS
    /// handshake with a Redis that accepted the connection and went silent)
    /// holds that thread, not the worker; the worker gets an error when the
    /// time is up.
    fn connect(&self) -> RedisResult<Connection> {
        let abandoned = self.abandoned.load(Ordering::Acquire);
        if abandoned >= MAX_ABANDONED_ATTEMPTS {
            return Err(timed_out(format!(
                "{abandoned} earlier connection attempts still wait for an answer"
            )));
        }
        let deadline = Instant::now() + self.timeout;
        let attempt = Arc::new((Mutex::new(Attempt::default()), Condvar::new()));
        {
            let (source, attempt, abandoned) = (
                Arc::clone(&self.source),
                Arc::clone(&attempt),
                Arc::clone(&self.abandoned),
            );
            std::thread::Builder::new()
                .name("wwep-store-connect".to_string())
                .spawn(move || {
                    let result = source.connect(deadline);
                    let (slot, done) = &*attempt;
                    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.abandoned {
                        abandoned.fetch_sub(1, Ordering::AcqRel);
                    } else {
                        slot.result = Some(result);
                        done.notify_one();
                    }
                })?;
        }
        let (slot, done) = &*attempt;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        let connection = loop {
            if let Some(result) = slot.result.take() {
                break result?;
            }
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
            else {
                slot.abandoned = true;
                self.abandoned.fetch_add(1, Ordering::AcqRel);
                return Err(timed_out(format!(
                    "no connection within {} ms",
                    self.timeout.as_millis()
                )));
            };
            slot = match done.wait_timeout(slot, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        };
        connection.set_read_timeout(Some(self.timeout))?;
        connection.set_write_timeout(Some(self.timeout))?;
        Ok(connection)
    }

    fn give_back(&self, mut pooled: Pooled) {
        pooled.idle_since = Instant::now();
        self.idle().push(pooled);
        self.returned.notify_one();
    }

    fn failed(&self, what: &str, e: &redis::RedisError) {
        self.failing.store(true, Ordering::Release);
        self.failure_log.log(format_args!(
            "{} {what}: {}; answering X until it recovers",
            self.location,
            self.describe(e)
        ));
    }

    /// [`describe`], with the time limit in milliseconds.
    fn describe(&self, e: &redis::RedisError) -> String {
        if e.is_timeout() && e.to_string().contains("os error") {
            format!("no answer within {} ms", self.timeout.as_millis())
        } else {
            describe(e)
        }
    }

    /// Lends a connection: an idle one, a new one while fewer than `capacity`
    /// are open (not during a back-off), or one given back within the time
    /// limit; with whether it had been used before (`true`) or is new.
    fn lend(&self) -> Result<(Pooled, bool), StoreError> {
        let deadline = Instant::now() + self.timeout;
        let mut idle = self.idle();
        loop {
            if let Source::Sentinel(sentinels) = &*self.source
                && let Some(silent) = sentinels.blind()
                && !idle.is_empty()
            {
                // The primary may have been replaced unheard: no pooled
                // connection is trusted; a new one asks a Sentinel first.
                let stale = std::mem::take(&mut *idle).len();
                self.open.fetch_sub(stale, Ordering::AcqRel);
                self.returned.notify_all();
                self.failing.store(true, Ordering::Release);
                self.failure_log.log(format_args!(
                    "{}: no Sentinel has answered for {} ms (longer than down-after {} ms); the primary is not known, answering X",
                    self.location,
                    silent.as_millis(),
                    sentinels.down_after.load(Ordering::Acquire)
                ));
            }
            if let Some(mut pooled) = idle.pop() {
                if pooled.epoch == self.source.epoch() {
                    if pooled.idle_since.elapsed() < IDLE_CHECK
                        && pooled.clock.local.elapsed() < MAX_CLOCK_AGE
                    {
                        return Ok((pooled, true));
                    }
                    drop(idle);
                    match Clock::sample(&mut pooled.connection) {
                        Ok(clock) if pooled.epoch == self.source.epoch() => {
                            pooled.clock = clock;
                            return Ok((pooled, true));
                        }
                        _ => {
                            // Gone stale while idle: closed, and another is
                            // tried (the others are checked in turn).
                            drop(pooled);
                            self.open.fetch_sub(1, Ordering::AcqRel);
                            self.returned.notify_one();
                            idle = self.idle();
                            continue;
                        }
                    }
                }
                // Sentinel named another primary since this connection was
                // made: it and every other idle one go, however long they lay
                // idle, and none of them carries another command.
                let stale = std::mem::take(&mut *idle).len() + 1;
                drop(pooled);
                self.open.fetch_sub(stale, Ordering::AcqRel);
                self.returned.notify_all();
                continue;
            }
            if self.open.load(Ordering::Acquire) < self.capacity {
                self.open.fetch_add(1, Ordering::AcqRel);
                drop(idle);
                return self
                    .open_new()
                    .map(|connection| (connection, false))
                    .inspect_err(|_| {
                        self.open.fetch_sub(1, Ordering::AcqRel);
                    });
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or(StoreError::Unavailable)?;
            idle = match self.returned.wait_timeout(idle, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn open_new(&self) -> Result<Pooled, StoreError> {
        let now = Instant::now();
        // Read before Sentinel is asked: a switch while connecting makes the
        // connection stale at once rather than trusted.
        let epoch = self.source.epoch();
        {
            let backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
            if backoff.epoch == epoch && backoff.until.is_some_and(|until| now < until) {
                return Err(StoreError::Unavailable);
            }
        }
        match self
            .connect()
            .and_then(|mut c| Clock::sample(&mut c).map(|clock| (c, clock)))
        {
            Ok((connection, clock)) => {
                let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
                if backoff.until.take().is_some() {
                    info!("{} answers again", self.location);
                }
                backoff.step = FIRST_BACKOFF;
                Ok(Pooled {
                    connection,
                    epoch,
                    clock,
                    idle_since: Instant::now(),
                })
            }
            Err(e) => {
                let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
                if backoff.epoch != epoch {
                    backoff.step = FIRST_BACKOFF;
                }
                backoff.epoch = epoch;
                backoff.until = Some(Instant::now() + backoff.step);
                backoff.step = (backoff.step * 2).min(MAX_BACKOFF);
                drop(backoff);
                self.failed("cannot be reached", &e);
                Err(StoreError::Unavailable)
            }
        }
    }

    /// Runs `command` on a pooled connection; a connection that failed is
    /// closed rather than given back.
    ///
    /// A connection that was lying idle and fails as a connection (closed,
    /// reset, or a primary turned replica) went stale when Redis restarted or
    /// failed over, and so did the other idle ones: they are all closed, and
    /// the command is run once more on a new connection (every command here can
    /// be repeated), so a board does not get an `X` per stale connection from
    /// a store that answers again. A command that timed out is not repeated.
    fn with_connection<T>(
        &self,
        command: impl Fn(&mut Connection, &Clock) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let (mut connection, mut pooled) = self.lend()?;
        loop {
            let e = match command(&mut connection.connection, &connection.clock) {
                Ok(_) if connection.epoch != self.source.epoch() => {
                    // The answer came from a node Sentinel replaced while the
                    // command ran: a write it took may be discarded when it
                    // is made a replica, so it is not acknowledged.
                    drop(connection);
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    self.returned.notify_one();
                    self.failure_log.log(format_args!(
                        "{}: the primary changed during a command; answered X",
                        self.location
                    ));
                    return Err(StoreError::Unavailable);
                }
                Ok(value) => {
                    self.give_back(connection);
                    self.failing.store(false, Ordering::Release);
                    return Ok(value);
                }
                Err(e) => e,
            };
            let broken = e.is_unrecoverable_error() || e.is_io_error() || e.is_timeout();
            let stale = (broken && !e.is_timeout())
                || e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
            if broken || stale {
                drop(connection);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.returned.notify_one();
            } else {
                self.give_back(connection);
            }
            if stale {
                self.close_idle();
            }
            if !(stale && pooled && started.elapsed() < self.timeout) {
                self.failed("failed", &e);
                return Err(StoreError::Unavailable);
            }
            (connection, pooled) = self.lend()?;
        }
    }

    /// Closes every idle connection.
    fn close_idle(&self) {
        let stale = std::mem::take(&mut *self.idle());
        self.open.fetch_sub(stale.len(), Ordering::AcqRel);
        self.returned.notify_all();
    }

    fn key(&self, device: u16) -> String {
        format!("{}:{device:04X}", self.prefix)
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// What became of a write that Redis answered.
enum Outcome {
    Done,
    /// The fence refused it: it arrived after its deadline.
    Late,
    /// Applied, but not confirmed by the replicas or the append-only file.
    Unconfirmed,
}

/// Whether the server knows `WAITAOF` (Redis/Valkey 7.2+).
fn has_waitaof(connection: &mut Connection) -> bool {
    let info: RedisResult<redis::Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("WAITAOF")
        .query(connection);
    matches!(info, Ok(redis::Value::Array(entries)) if entries.first().is_some_and(|e| *e != redis::Value::Nil))
}

/// Parses a stored value: 4 hex digits (what this server writes).
fn parse_value(text: &str) -> Option<u16> {
    if text.len() != 4 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

impl Backend for RedisStore {
    fn read(&self, device: u16, register: u8) -> Result<Option<u16>, StoreError> {
        let field = format!("{register:02X}");
        let value: Option<String> = self.with_connection(|c, _| {
            redis::cmd("HGET")
                .arg(self.key(device))
                .arg(&field)
                .query(c)
        })?;
        match value {
            None => Ok(None),
            Some(text) => match parse_value(&text) {
                Some(value) => Ok(Some(value)),
                None => {
                    self.failure_log.log(format_args!(
                        "{}: field {field} holds {text:?}, not 4 hex digits",
                        self.key(device)
                    ));
                    Err(StoreError::Unavailable)
                }
            },
        }
    }

    /// `HGETALL` of the device's hash, within the same time limit as `read`.
    /// A field or value this server would not have written is logged and left
    /// out, so one foreign field does not hide the device's other registers.
    fn device(&self, device: u16) -> Result<Vec<(u8, u16)>, StoreError> {
        let fields: std::collections::HashMap<String, String> =
            self.with_connection(|c, _| redis::cmd("HGETALL").arg(self.key(device)).query(c))?;
        let mut registers = Vec::with_capacity(fields.len());
        for (field, text) in fields {
            let register = (field.len() == 2 && field.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u8::from_str_radix(&field, 16).ok())
                .flatten();
            match (register, parse_value(&text)) {
                (Some(register), Some(value)) => registers.push((register, value)),
                _ => self.failure_log.log(format_args!(
                    "{}: field {field:?} holds {text:?}, not a register and 4 hex digits; left out",
                    self.key(device)
                )),
            }
        }
        registers.sort_unstable();
        Ok(registers)
    }

    fn write(&self, device: u16, register: u8, value: u16) -> Result<(), StoreError> {
        // WAIT (and WAITAOF) must answer well before the socket's read
        // timeout, so that "not confirmed" (an answer) and "no answer" are told
        // apart: they share half of the time limit.
        let waits = u64::from(self.wait_replicas > 0) + u64::from(self.wait_aof);
        let wait_ms = (self.timeout.as_millis() as u64 / 2 / waits.max(1)).max(1);
        let (replicas, aof) = (self.wait_replicas, self.wait_aof);
        let key = self.key(device);
        let (field, text) = (format!("{register:02X}"), format!("{value:04X}"));
        let outcome = self.with_connection(|c, clock| {
            // This write is answered X once the socket's time limit passes
            // from now at the earliest: the fence refuses it after that.
            let deadline = clock.deadline(Instant::now() + self.timeout);
            let pipe = |by_sha: bool| {
                let mut pipe = redis::pipe();
                if by_sha {
                    pipe.cmd("EVALSHA").arg(&self.fence_sha);
                } else {
                    pipe.cmd("EVAL").arg(FENCE_SCRIPT);
                }
                pipe.arg(1).arg(&key).arg(deadline).arg(&field).arg(&text);
                if replicas > 0 {
                    pipe.cmd("WAIT").arg(replicas).arg(wait_ms);
                }
                if aof {
                    pipe.cmd("WAITAOF").arg(1).arg(replicas).arg(wait_ms);
                }
                pipe
            };
            let answers: Vec<redis::Value> = match pipe(true).query(c) {
                Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // The first write on this server since it started (or
                    // since SCRIPT FLUSH): EVAL caches the script.
                    pipe(false).query(c)?
                }
                answers => answers?,
            };
            let mut answers = answers.into_iter();
            let applied: i64 =
                redis::from_redis_value(answers.next().unwrap_or(redis::Value::Nil)).unwrap_or(0);
            if applied != 1 {
                return Ok(Outcome::Late);
            }
            let mut ok = true;
            if replicas > 0 {
                let acked: i64 =
                    redis::from_redis_value(answers.next().unwrap_or(redis::Value::Nil))
                        .unwrap_or(0);
                ok &= acked >= i64::from(replicas);
            }
            if aof {
                let counts: Vec<i64> =
                    redis::from_redis_value(answers.next().unwrap_or(redis::Value::Nil))
                        .unwrap_or_default();
                ok &= counts.first().is_some_and(|local| *local >= 1)
                    && counts.get(1).is_some_and(|r| *r >= i64::from(replicas));
            }
            Ok(if ok {
                Outcome::Done
            } else {
                Outcome::Unconfirmed
            })
        })?;
        match outcome {
            Outcome::Done => Ok(()),
            Outcome::Late => {
                self.failure_log.log(format_args!(
                    "{}: a write reached Redis after its time limit of {} ms and was not applied; answered X",
                    self.location,
                    self.timeout.as_millis()
                ));
                Err(StoreError::Unavailable)
            }
            Outcome::Unconfirmed => {
                self.failure_log.log(format_args!(
                    "{}: a write was not confirmed by {replicas} replica(s){} in {wait_ms} ms; answered X",
                    self.location,
                    if aof { " and the append-only file" } else { "" }
                ));
                Err(StoreError::Unavailable)
            }
        }
    }

    /// Answers from the last command; after a failure, asks Redis (a `PING`,
    /// paced by the reconnection back-off).
    fn writable(&self) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return true;
        }
        self.with_connection(|c, _| redis::cmd("PING").query::<String>(c))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations() {
        assert_eq!("memory".parse(), Ok(StoreLocation::Memory));
        assert_eq!(
            "redis://127.0.0.1:6379/2".parse(),
            Ok(StoreLocation::Redis {
                url: "redis://127.0.0.1:6379/2".to_string()
            })
        );
        assert!(matches!(
            "rediss://user:pw@redis.example:6380".parse(),
            Ok(StoreLocation::Redis { .. })
        ));
        assert_eq!(
            "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/main/3".parse(),
            Ok(StoreLocation::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".to_string(),
                    "redis://10.0.0.2:26379".to_string()
                ],
                primary: "main".to_string(),
                node: "redis://:pw@localhost/3".to_string(),
                tls: false,
            })
        );
        for bad in [
            "",
            "redis",
            "http://x",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///main",
            "redis+sentinel://h:1/main/x",
        ] {
            let err = bad.parse::<StoreLocation>().unwrap_err();
            assert!(err.contains("not a store"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bad_location_is_refused_without_its_password() {
        let err = "redis://user:secret@host:notaport"
            .parse::<StoreLocation>()
            .unwrap_err();
        assert!(!err.contains("secret") && err.contains("***@host"), "{err}");
    }

    #[test]
    fn locations_print_without_credentials() {
        let redis: StoreLocation = "redis://user:secret@127.0.0.1:6379".parse().unwrap();
        assert!(!redis.to_string().contains("secret"), "{redis}");
        let sentinel: StoreLocation = "redis+sentinel://u:secret@h1:1,h2:2/main".parse().unwrap();
        assert_eq!(sentinel.to_string(), "primary main of sentinels h1:1,h2:2");
    }

    #[test]
    fn stored_values_are_four_hex_digits() {
        assert_eq!(parse_value("1234"), Some(0x1234));
        assert_eq!(parse_value("ffff"), Some(0xFFFF));
        for bad in ["", "123", "12345", "12G4", "+123"] {
            assert_eq!(parse_value(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_store_that_does_not_answer_fails_fast_and_backs_off() {
        // A port nothing listens on: bind, note, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = RedisSettings {
            location: format!("redis://127.0.0.1:{port}").parse().unwrap(),
            ..RedisSettings::default()
        };
        let store = RedisStore::open(&settings, 4, Duration::from_millis(200)).unwrap();
        let started = Instant::now();
        assert_eq!(store.write(1, 2, 3), Err(StoreError::Unavailable));
        assert_eq!(store.read(1, 2), Err(StoreError::Unavailable));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!store.writable(), "the last command failed");
        let wait_aof = RedisSettings {
            wait_aof: true,
            ..settings
        };
        assert!(matches!(
            RedisStore::open(&wait_aof, 4, Duration::from_millis(200)),
            Err(RedisOpenError::Unreachable(_))
        ));
    }

    #[test]
    fn a_store_or_sentinel_that_accepts_and_never_answers_fails_within_the_time_limit() {
        // The kernel completes the TCP handshakes; nothing ever answers: a hung
        // server. Neither a TLS handshake nor a Sentinel lookup may wait on it.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        for location in [
            format!("rediss://127.0.0.1:{port}"),
            format!("redis+sentinel://127.0.0.1:{port}/main"),
        ] {
            let settings = RedisSettings {
                location: location.parse().unwrap(),
                ..RedisSettings::default()
            };
            let started = Instant::now();
            let store = RedisStore::open(&settings, 4, Duration::from_millis(200)).unwrap();
            assert_eq!(store.read(1, 2), Err(StoreError::Unavailable), "{location}");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{location}: {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn an_untrusted_certificate_is_named_with_the_ca() {
        let error = RedisOpenError::Untrusted {
            store: "redis localhost:6380".to_string(),
            ca: Some(PathBuf::from("redis-ca.pem")),
            reason: "certificate has expired".to_string(),
        };
        assert_eq!(
            error.to_string(),
            "--store: the certificate of redis localhost:6380 is not trusted (checked against --store-ca redis-ca.pem): certificate has expired"
        );
    }
}
