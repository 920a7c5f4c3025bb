//! Sentinel: which node is the primary, asked of the Sentinels with a time
//! limit for each new connection, and followed between requests (subscribed to
//! `+switch-master`, and asked every [`WATCH_TICK`]) so that a failover closes
//! every connection to the node that was replaced.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::info;
use redis::{
    Client, Connection, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError,
    RedisResult, Role, TlsCertificates,
};

use super::connect::{aborting, describe, time_left};
use crate::protocol::Transport;

/// The Sentinels, and how to reach the primary they name. Asked afresh for
/// each new connection, on a connection of its own with the time limit (the
/// redis crate's Sentinel client has none, so one Sentinel that stops
/// answering would hold every worker that needs a connection).
pub(crate) struct SentinelSource {
    sentinels: Vec<Client>,
    primary: String,
    /// Credentials and database for the data nodes; the address is replaced.
    node: ConnectionInfo,
    /// Plain or TLS to the data nodes.
    transport: Transport,
    /// `--store-ca`, for TLS to the data nodes.
    root_cert: Option<Vec<u8>>,
    /// The Sentinel asked first: the one that answered last, or the one after
    /// the one that failed last.
    first: AtomicUsize,
    /// See [`SentinelSource::epoch`]; moved on by [`SentinelSource::follow`].
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
    /// The Sentinels at `sentinels` (`redis://host:port` each), for the
    /// primary named `primary`, reached with the credentials and database of
    /// `node`.
    pub(crate) fn new(
        sentinels: &[String],
        primary: &str,
        node: &str,
        transport: Transport,
        root_cert: Option<Vec<u8>>,
    ) -> RedisResult<SentinelSource> {
        Ok(SentinelSource {
            sentinels: sentinels
                .iter()
                .map(|sentinel| Client::open(sentinel.as_str()))
                .collect::<RedisResult<_>>()?,
            primary: primary.to_string(),
            node: node.into_connection_info()?,
            transport,
            root_cert,
            first: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            named: Mutex::new(None),
            heard: Mutex::new(Instant::now()),
            down_after: AtomicU64::new(DEFAULT_DOWN_AFTER_MS),
        })
    }

    /// Bumped each time Sentinel names another primary; a connection made
    /// under an older one is never used again.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the data nodes are reached over TLS.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// See [`SentinelSource::blind`].
    pub(crate) fn down_after_ms(&self) -> u64 {
        self.down_after.load(Ordering::Acquire)
    }

    pub(crate) fn connect(&self, deadline: Instant) -> RedisResult<Connection> {
        let (host, port) = self.named_primary(deadline)?;
        let addr = if self.transport == Transport::Tls {
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
            Some(root) if self.transport == Transport::Tls => Client::build_with_tls(
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
    pub(crate) fn named_primary(&self, deadline: Instant) -> RedisResult<(String, u16)> {
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
    pub(crate) fn blind(&self) -> Option<Duration> {
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

/// How long the watcher waits before it follows the next Sentinel.
const NEXT_SENTINEL_PAUSE: Duration = Duration::from_millis(100);

impl SentinelSource {
    /// Runs until `stop`: follows the Sentinels in turn, moving to the next one
    /// when one stops answering.
    pub(crate) fn follow(&self, stop: &AtomicBool) {
        let mut index = 0;
        while !stop.load(Ordering::Acquire) {
            let sentinel = &self.sentinels[index % self.sentinels.len()];
            if let Err(e) = self.watch(sentinel, stop) {
                log::debug!(
                    "following Sentinel {}: {}",
                    sentinel.get_connection_info().addr(),
                    describe(&e)
                );
                index += 1;
                std::thread::sleep(NEXT_SENTINEL_PAUSE);
            }
        }
    }
}
