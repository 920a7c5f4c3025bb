//! The pool: connections to the data node, `capacity` at most (one per
//! worker), each made within the time limit and carrying the Sentinel epoch it
//! was made in and a reading of Redis's clock. A connection that fails is
//! closed, not given back; while Redis cannot be reached, new connections are
//! tried only after a back-off, and every request fails at once (`X`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::info;
use redis::{Client, Connection, ConnectionAddr, ErrorKind, RedisResult};

use super::connect::{Attempts, describe, time_left};
use super::fence::Clock;
use super::location::StoreLocation;
use super::sentinel::SentinelSource;
use super::warnings::{Warning, Warnings};
use crate::protocol::Transport;
use crate::store::backend::StoreError;

/// Where new connections come from.
pub(crate) enum Source {
    Direct(Client),
    Sentinel(SentinelSource),
}

impl Source {
    /// A new connection, trying to finish by `deadline`. The library cannot
    /// time out every step, so callers wait for this on another thread: see
    /// [`Attempts::run`].
    fn connect(&self, deadline: Instant) -> RedisResult<Connection> {
        match self {
            Source::Direct(client) => client.get_connection_with_timeout(time_left(deadline)?),
            Source::Sentinel(sentinel) => sentinel.connect(deadline),
        }
    }

    /// Bumped each time Sentinel names another primary; a connection made
    /// under an older one is never used again. Always 0 without Sentinel.
    pub(crate) fn epoch(&self) -> u64 {
        match self {
            Source::Direct(_) => 0,
            Source::Sentinel(sentinel) => sentinel.epoch(),
        }
    }

    /// The data node a new connection would reach over TLS (`None` without TLS).
    pub(crate) fn tls_node(&self, deadline: Instant) -> Option<(String, u16)> {
        match self {
            Source::Direct(client) => match client.get_connection_info().addr() {
                ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
                _ => None,
            },
            Source::Sentinel(sentinel) if sentinel.transport() == Transport::Tls => {
                sentinel.named_primary(deadline).ok()
            }
            Source::Sentinel(_) => None,
        }
    }
}

/// A connection with the epoch it was made in.
pub(crate) struct Pooled {
    pub(crate) connection: Connection,
    epoch: u64,
    /// Redis's clock, sampled on this connection.
    clock: Clock,
    /// When it was last given back.
    idle_since: Instant,
}

/// Whether a lent connection lay idle in the pool or was just made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Idle,
    New,
}

/// A connection idle longer than this, or whose clock reading is not
/// [`Clock::is_recent`], reads Redis's clock again before it carries a write
/// (which also shows it still answers).
const IDLE_CHECK: Duration = Duration::from_secs(1);

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

pub(crate) struct Pool {
    pub(crate) source: Arc<Source>,
    attempts: Attempts,
    pub(crate) location: StoreLocation,
    /// For connecting and for each command.
    pub(crate) timeout: Duration,
    idle: Mutex<Vec<Pooled>>,
    returned: Condvar,
    /// Connections open (idle or lent out).
    open: AtomicUsize,
    capacity: usize,
    backoff: Mutex<Backoff>,
    /// The last command failed (cleared by the next one that works).
    failing: AtomicBool,
    /// Every warning the store logs, limited and counted by kind.
    pub(crate) warnings: Warnings,
}

impl Pool {
    pub(crate) fn new(
        source: Source,
        location: StoreLocation,
        capacity: usize,
        timeout: Duration,
    ) -> Pool {
        Pool {
            source: Arc::new(source),
            attempts: Attempts::default(),
            location,
            timeout,
            idle: Mutex::new(Vec::new()),
            returned: Condvar::new(),
            open: AtomicUsize::new(0),
            capacity: capacity.max(1),
            backoff: Mutex::new(Backoff {
                until: None,
                step: FIRST_BACKOFF,
                epoch: 0,
            }),
            failing: AtomicBool::new(false),
            warnings: Warnings::new(),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Pooled>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the last command failed.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// A new connection within the time limit, made on a thread of its own
    /// (see [`Attempts::run`]), with the time limit on every command.
    pub(crate) fn connect(&self) -> RedisResult<Connection> {
        let source = Arc::clone(&self.source);
        let connection = self
            .attempts
            .run(self.timeout, move |deadline| source.connect(deadline))?;
        connection.set_read_timeout(Some(self.timeout))?;
        connection.set_write_timeout(Some(self.timeout))?;
        Ok(connection)
    }

    /// Adds the first connection, made at startup in `epoch`, to the pool.
    pub(crate) fn adopt(&self, mut connection: Connection, epoch: u64) {
        if let Ok(clock) = Clock::sample(&mut connection) {
            self.open.fetch_add(1, Ordering::AcqRel);
            self.give_back(Pooled {
                connection,
                epoch,
                clock,
                idle_since: Instant::now(),
            });
        }
    }

    fn give_back(&self, mut pooled: Pooled) {
        pooled.idle_since = Instant::now();
        self.idle().push(pooled);
        self.returned.notify_one();
    }

    /// Closes a lent connection instead of giving it back.
    fn discard(&self, pooled: Pooled) {
        drop(pooled);
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.returned.notify_one();
    }

    /// Closes every idle connection.
    fn discard_idle(&self, idle: &mut Vec<Pooled>) {
        let stale = std::mem::take(idle).len();
        self.open.fetch_sub(stale, Ordering::AcqRel);
        self.returned.notify_all();
    }

    /// A failure of the store: logged under its kind, and the pool is
    /// failing (health checks ask Redis) until a command works again.
    fn failed(&self, kind: Warning, what: &str, e: &redis::RedisError) {
        self.failing.store(true, Ordering::Release);
        self.warnings.log(
            kind,
            format_args!(
                "{} {what}: {}; answering X until it recovers",
                self.location,
                self.describe(e)
            ),
        );
    }

    /// [`describe`], with the time limit in milliseconds.
    pub(crate) fn describe(&self, e: &redis::RedisError) -> String {
        if e.is_timeout() && e.to_string().contains("os error") {
            format!("no answer within {} ms", self.timeout.as_millis())
        } else {
            describe(e)
        }
    }

    /// Lends a connection: an idle one, a new one while fewer than `capacity`
    /// are open (not during a back-off), or one given back within the time
    /// limit.
    fn lend(&self) -> Result<(Pooled, Origin), StoreError> {
        let deadline = Instant::now() + self.timeout;
        let mut idle = self.idle();
        loop {
            self.distrust_if_blind(&mut idle);
            if let Some(pooled) = idle.pop() {
                if pooled.epoch != self.source.epoch() {
                    // Sentinel named another primary since this connection
                    // was made: it and every other idle one go, however long
                    // they lay idle, and none of them carries another command.
                    self.discard(pooled);
                    self.discard_idle(&mut idle);
                    continue;
                }
                if pooled.idle_since.elapsed() < IDLE_CHECK && pooled.clock.is_recent() {
                    return Ok((pooled, Origin::Idle));
                }
                drop(idle);
                if let Some(pooled) = self.recheck(pooled) {
                    return Ok((pooled, Origin::Idle));
                }
                idle = self.idle();
                continue;
            }
            if self.open.load(Ordering::Acquire) < self.capacity {
                self.open.fetch_add(1, Ordering::AcqRel);
                drop(idle);
                return self
                    .open_new()
                    .map(|connection| (connection, Origin::New))
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

    /// No Sentinel has answered for longer than its down-after period: the
    /// primary may have been replaced unheard, so no idle connection is
    /// trusted; a new one asks a Sentinel first.
    fn distrust_if_blind(&self, idle: &mut Vec<Pooled>) {
        if let Source::Sentinel(sentinels) = &*self.source
            && let Some(silent) = sentinels.blind()
            && !idle.is_empty()
        {
            self.discard_idle(idle);
            self.failing.store(true, Ordering::Release);
            self.warnings.log(Warning::SentinelsSilent, format_args!(
                "{}: no Sentinel has answered for {} ms (longer than down-after {} ms); the primary is not known, answering X",
                self.location,
                silent.as_millis(),
                sentinels.down_after_ms()
            ));
        }
    }

    /// Reads Redis's clock again on a connection that lay idle: it comes back
    /// ready, or, gone stale while idle, is closed (and the caller tries
    /// another, checking the others in turn).
    fn recheck(&self, mut pooled: Pooled) -> Option<Pooled> {
        match Clock::sample(&mut pooled.connection) {
            Ok(clock) if pooled.epoch == self.source.epoch() => {
                pooled.clock = clock;
                Some(pooled)
            }
            _ => {
                self.discard(pooled);
                None
            }
        }
    }

    /// A new connection, unless a back-off since the last failure forbids it.
    fn open_new(&self) -> Result<Pooled, StoreError> {
        // Read before Sentinel is asked: a switch while connecting makes the
        // connection stale at once rather than trusted.
        let epoch = self.source.epoch();
        if self.backing_off(epoch) {
            return Err(StoreError::Unavailable);
        }
        match self
            .connect()
            .and_then(|mut c| Clock::sample(&mut c).map(|clock| (c, clock)))
        {
            Ok((connection, clock)) => {
                self.recovered();
                Ok(Pooled {
                    connection,
                    epoch,
                    clock,
                    idle_since: Instant::now(),
                })
            }
            Err(e) => {
                self.back_off(epoch);
                self.failed(Warning::connecting(&e), "cannot be reached", &e);
                Err(StoreError::Unavailable)
            }
        }
    }

    fn backoff(&self) -> MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection failed in `epoch` too recently to try again.
    fn backing_off(&self, epoch: u64) -> bool {
        let now = Instant::now();
        let backoff = self.backoff();
        backoff.epoch == epoch && backoff.until.is_some_and(|until| now < until)
    }

    fn recovered(&self) {
        let mut backoff = self.backoff();
        if backoff.until.take().is_some() {
            info!("{} answers again", self.location);
        }
        backoff.step = FIRST_BACKOFF;
    }

    /// Doubles the pause before the next attempt (from the first step again
    /// when Sentinel named another primary since the last failure).
    fn back_off(&self, epoch: u64) {
        let mut backoff = self.backoff();
        if backoff.epoch != epoch {
            backoff.step = FIRST_BACKOFF;
        }
        backoff.epoch = epoch;
        backoff.until = Some(Instant::now() + backoff.step);
        backoff.step = (backoff.step * 2).min(MAX_BACKOFF);
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
    pub(crate) fn with_connection<T>(
        &self,
        command: impl Fn(&mut Connection, &Clock) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let (mut connection, mut origin) = self.lend()?;
        loop {
            let e = match command(&mut connection.connection, &connection.clock) {
                Ok(_) if connection.epoch != self.source.epoch() => {
                    // The answer came from a node Sentinel replaced while the
                    // command ran: a write it took may be discarded when it
                    // is made a replica, so it is not acknowledged.
                    self.discard(connection);
                    self.warnings.log(
                        Warning::PrimaryChanged,
                        format_args!(
                            "{}: the primary changed during a command; answered X",
                            self.location
                        ),
                    );
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
                self.discard(connection);
            } else {
                self.give_back(connection);
            }
            if stale {
                self.discard_idle(&mut self.idle());
            }
            if !(stale && origin == Origin::Idle && started.elapsed() < self.timeout) {
                self.failed(Warning::command(&e), "failed", &e);
                return Err(StoreError::Unavailable);
            }
            (connection, origin) = self.lend()?;
        }
    }
}
