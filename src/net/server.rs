//! Starting, running and stopping the server: the listeners and their accept
//! threads, the waiting room's thread, the worker pool and the counters they
//! share.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::{Poll, Token, Waker};
use threadpool::ThreadPool;

use crate::acl::{Acl, AclError};
use crate::activity::Transaction;
use crate::config::{ConfigError, ServerConfig, Transport};
use crate::http::{HttpServer, Observer};
use crate::journal::JournalError;
use crate::net::admission::{AdmissionTable, Refusal};
use crate::net::linger::Lingerer;
use crate::net::listener;
use crate::net::rate_limited::RateLimitedLog;
use crate::net::waiting_room::WaitingRoom;
use crate::store::backend::Backend;
use crate::store::redis::{RedisOpenError, RedisStore};
use crate::store::{RegisterStore, open_logged};
use crate::tls::server::{Acceptor, HandshakeFailureKind};
use crate::tls::{ClientAuth, Identity, TlsError};

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    Config(ConfigError),
    Tls(TlsError),
    Bind { addr: SocketAddr, source: io::Error },
    Data(JournalError),
    Store(RedisOpenError),
    Thread(io::Error),
    Acl(AclError),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Config(e) => e.fmt(f),
            ServerError::Tls(e) => e.fmt(f),
            ServerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::Data(e) => e.fmt(f),
            ServerError::Store(e) => e.fmt(f),
            ServerError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            ServerError::Acl(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<ConfigError> for ServerError {
    fn from(e: ConfigError) -> Self {
        ServerError::Config(e)
    }
}

impl From<AclError> for ServerError {
    fn from(e: AclError) -> Self {
        ServerError::Acl(e)
    }
}

impl From<TlsError> for ServerError {
    fn from(e: TlsError) -> Self {
        ServerError::Tls(e)
    }
}

fn run_guarded(job: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(job)).is_err() {
        error!("a connection was abandoned after a panic while it was served");
    }
}

/// Counters an operator or a test can read while the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Messages judged and answered.
    pub transactions: u64,
    /// Connections refused because the table was full (and nobody silent could be
    /// shed) or their address held too many unfinished connections.
    pub rejected: u64,
    /// Connections closed because the client's address is not allowed.
    pub denied: u64,
    /// Silent connections closed to make room for newcomers.
    pub shed: u64,
    /// Connections open now (waiting, queued or being served).
    pub in_flight: usize,
    /// Connections in the waiting room now.
    pub waiting: usize,
    /// TLS handshakes that failed (any kind, timeouts included).
    pub handshake_failures: u64,
    /// Requests the `--acl` rules refused (answered `X`).
    pub forbidden: u64,
}

/// What every thread of the server shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    /// Where registers are read and written.
    pub(crate) backend: Arc<dyn Backend>,
    /// The in-process store, when that is the backend.
    pub(crate) memory: Option<Arc<RegisterStore>>,
    /// Swapped whole on SIGHUP; a handshake holds its own `Arc`.
    acceptor: RwLock<Option<Arc<Acceptor>>>,
    /// The `--acl` rules, swapped whole on SIGHUP; `None` without `--acl`.
    acl: Option<RwLock<Arc<Acl>>>,
    pub(crate) table: Arc<AdmissionTable>,
    pub(crate) room: WaitingRoom,
    pub(crate) lingerer: Lingerer,
    pool: ThreadPool,
    next_token: AtomicUsize,
    stopping: AtomicBool,
    /// Wake the accept threads' pollers on shutdown.
    accept_wakers: Mutex<Vec<Waker>>,
    transactions: AtomicU64,
    refusals: Mutex<HashMap<Refusal, u64>>,
    handshake_failures: Mutex<HashMap<HandshakeFailureKind, u64>>,
    forbidden: AtomicU64,
    /// One rate limit per kind of refusal, so a flood of one kind cannot hide
    /// another.
    refusal_logs: [RateLimitedLog; Refusal::KINDS],
    pub(crate) accept_log: RateLimitedLog,
    pub(crate) handshake_log: RateLimitedLog,
    pub(crate) forbidden_log: RateLimitedLog,
    /// Counters and the activity record for `--http`; `None` without it.
    pub(crate) observer: Option<Arc<Observer>>,
}

impl Shared {
    /// The TLS context for a new handshake; renewed (fresh session cache and
    /// ticket keys) once the session lifetime has run out.
    pub(crate) fn acceptor(&self) -> Option<Arc<Acceptor>> {
        let current = self
            .acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let now = Instant::now();
        if !current.renewal_due(now) {
            return Some(current);
        }
        let mut slot = self.acceptor.write().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(latest) if latest.renewal_due(now) => match latest.renew() {
                Ok(renewed) => *slot = Some(Arc::new(renewed)),
                Err(e) => self
                    .accept_log
                    .log(format_args!("cannot renew the TLS session keys: {e}")),
            },
            _ => {}
        }
        slot.clone()
    }

    /// The `--acl` rules in force now; `None` when every request may pass.
    pub(crate) fn acl(&self) -> Option<Arc<Acl>> {
        self.acl
            .as_ref()
            .map(|acl| Arc::clone(&acl.read().unwrap_or_else(|p| p.into_inner())))
    }

    pub(crate) fn count_forbidden(&self) {
        self.forbidden.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn next_token(&self) -> Token {
        // Token 0 is the waiting room's waker; tokens are never reused.
        Token(self.next_token.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Runs a job on the pool; a panic in it is logged and costs only that
    /// connection (dropping the session releases its place and closes it).
    pub(crate) fn execute(&self, job: impl FnOnce() + Send + 'static) {
        self.pool.execute(move || run_guarded(job));
    }

    /// Runs a connection's step on this thread, with the same guard as the pool.
    pub(crate) fn run_guarded(&self, job: impl FnOnce()) {
        run_guarded(job)
    }

    /// Registers stored, where this process holds them (0 with a shared store,
    /// which other front ends write to as well).
    pub(crate) fn registers(&self) -> usize {
        self.memory.as_ref().map_or(0, |m| m.len())
    }

    pub(crate) fn count_transaction(&self) -> u64 {
        self.transactions.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn refusal_log(&self, refusal: Refusal) -> &RateLimitedLog {
        &self.refusal_logs[refusal.index()]
    }

    pub(crate) fn count_refusal(&self, refusal: Refusal) {
        if let Some(observer) = &self.observer {
            observer.metrics.refusal(refusal);
        }
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(refusal)
            .or_insert(0) += 1;
    }

    /// An answered transaction, for the metrics and the live page.
    pub(crate) fn observe(&self, tx: &Transaction<'_>) {
        if let Some(observer) = &self.observer {
            observer.transaction(tx);
        }
    }

    /// A TLS handshake that completed.
    pub(crate) fn count_handshake(&self, version: &str, resumed: bool) {
        if let Some(observer) = &self.observer {
            observer.metrics.handshake(version, resumed);
        }
    }

    /// An `X` sent to a connection turned away for lack of room.
    pub(crate) fn count_busy_reply(&self, transport: Transport) {
        if let Some(observer) = &self.observer {
            observer.metrics.busy(transport);
        }
    }

    pub(crate) fn count_handshake_failure(&self, kind: HandshakeFailureKind) {
        if let Some(observer) = &self.observer {
            observer.metrics.handshake_failure(kind);
        }
        *self
            .handshake_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_insert(0) += 1;
    }

    pub(crate) fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// The earliest expiry of the certificates served now, as Unix time.
    pub(crate) fn certificate_not_after(&self) -> Option<i64> {
        let acceptor = self
            .acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        acceptor.earliest_not_after_unix()
    }

    fn refusals(&self, refusal: Refusal) -> u64 {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&refusal)
            .copied()
            .unwrap_or(0)
    }
}

/// A running server. Dropping it does not stop it: call [`RunningServer::shutdown`],
/// or [`ServerControl::shutdown`] from another thread and then [`RunningServer::wait`].
pub struct RunningServer {
    shared: Arc<Shared>,
    plain_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    accept_threads: Vec<JoinHandle<()>>,
    room_thread: Option<JoinHandle<()>>,
    maintenance: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    http: Option<HttpServer>,
}

/// Stops or reconfigures a running server from another thread (a signal handler).
#[derive(Clone)]
pub struct ServerControl {
    shared: Arc<Shared>,
}

/// Starts a server; with `config.data`, the store is first rebuilt from the data
/// file, before any listener binds.
pub fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    start_unless(config, &AtomicBool::new(false))
}

/// [`start`], giving up (with [`JournalError::Cancelled`]) as soon as `cancel`
/// is set while the data file is replayed: a stop asked for during a long replay
/// is obeyed at once.
pub fn start_unless(
    config: ServerConfig,
    cancel: &AtomicBool,
) -> Result<RunningServer, ServerError> {
    config.validate()?;
    // Certificates and rules first: a bad one fails fast, before any file is touched.
    let acceptor = load_acceptor(&config)?;
    let acl = load_acl(&config)?;
    // The HTTP side first, so /ready can say the data file is being replayed.
    let http = start_http(&config)?;
    if !config.store.location.is_memory() {
        let shared = RedisStore::open(&config.store, config.workers, config.timeout)
            .map_err(ServerError::Store)?;
        return launch(config, Arc::new(shared), None, acceptor, acl, http);
    }
    let store = Arc::new(match &config.data {
        None => RegisterStore::new(),
        Some(data) => open_logged(data, cancel).map_err(ServerError::Data)?,
    });
    let in_memory = config.data.is_none();
    let server = launch(config, store.clone(), Some(store), acceptor, acl, http)?;
    if in_memory {
        info!("no --data file: registers are kept in memory only and lost when the server stops");
    }
    Ok(server)
}

fn start_http(config: &ServerConfig) -> Result<Option<HttpServer>, ServerError> {
    config
        .http
        .as_ref()
        .map(|http| {
            HttpServer::start(http).map_err(|source| ServerError::Bind {
                addr: http.addr,
                source,
            })
        })
        .transpose()
}

/// Loads the certificates and keys the TLS port serves.
fn load_identities(config: &ServerConfig) -> Result<Vec<Identity>, TlsError> {
    config
        .identity
        .iter()
        .chain(&config.extra_identity)
        .map(Identity::load)
        .collect()
}

fn load_acceptor(config: &ServerConfig) -> Result<Option<Acceptor>, TlsError> {
    if config.tls_port.is_none() || config.identity.is_none() {
        return Ok(None);
    }
    let identities = load_identities(config)?;
    for warning in identities.iter().flat_map(Identity::expiry_warnings) {
        warn!("{warning}");
    }
    Acceptor::new(identities, &config.client_auth, &config.tls).map(Some)
}

/// Starts a server over an existing store: loads the TLS identity, binds both
/// listeners and spawns their threads.
pub fn start_with_store(
    config: ServerConfig,
    store: Arc<RegisterStore>,
) -> Result<RunningServer, ServerError> {
    config.validate()?;
    let acceptor = load_acceptor(&config)?;
    let acl = load_acl(&config)?;
    let http = start_http(&config)?;
    launch(config, store.clone(), Some(store), acceptor, acl, http)
}

/// Reads the `--acl` rule file, saying what it holds.
fn load_acl(config: &ServerConfig) -> Result<Option<Acl>, AclError> {
    let Some(path) = &config.acl else {
        return Ok(None);
    };
    let acl = Acl::load(path)?;
    info!("acl {}; a request no rule allows gets X", acl.summary());
    let tls_clients_named = config.tls_port.is_some() && config.client_auth != ClientAuth::Off;
    if acl.names_certificates() && !tls_clients_named {
        warn!(
            "acl {}: rules naming certificates never match without --client-ca",
            path.display()
        );
    }
    Ok(Some(acl))
}

/// File descriptors the server needs beyond its connections: listeners,
/// pollers, the data file, logs.
const SPARE_FDS: u64 = 64;

/// Raises the soft limit on open files to what the connection table needs (each
/// connection may also hold a lingering close), as Redis does for `maxclients`;
/// where the hard limit is lower, the table shrinks to fit, with a warning.
fn fit_open_files(config: &mut ServerConfig) {
    let wanted = 2 * config.max_connections as u64 + SPARE_FDS;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got >= wanted => {}
        Ok(got) => {
            let fits = (got.saturating_sub(SPARE_FDS) / 2).max(1) as usize;
            warn!(
                "open-file limit is {got} (hard limit), below the {wanted} that --max-connections {} needs; serving at most {fits} connections at once (raise LimitNOFILE to allow more)",
                config.max_connections
            );
            config.max_connections = fits;
        }
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
}

fn launch(
    mut config: ServerConfig,
    backend: Arc<dyn Backend>,
    memory: Option<Arc<RegisterStore>>,
    acceptor: Option<Acceptor>,
    acl: Option<Acl>,
    http: Option<HttpServer>,
) -> Result<RunningServer, ServerError> {
    fit_open_files(&mut config);
    let bind =
        |port: Option<u16>| -> Result<Option<(std::net::TcpListener, SocketAddr)>, ServerError> {
            let Some(port) = port else { return Ok(None) };
            let addr = SocketAddr::new(config.bind, port);
            let listener = listener::bind(addr, config.max_connections)
                .map_err(|source| ServerError::Bind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServerError::Bind { addr, source })?;
            Ok(Some((listener, bound)))
        };
    let plain = bind(config.plain_port)?;
    let secure = bind(config.tls_port)?;
    let pool = threadpool::Builder::new()
        .num_threads(config.workers)
        .thread_name("wwep-worker".to_string())
        .build();
    let lingerer = Lingerer::start(config.max_connections).map_err(ServerError::Thread)?;
    let (room, room_poll) = WaitingRoom::new().map_err(ServerError::Thread)?;
    let plain_addr = plain.as_ref().map(|(_, a)| *a);
    let tls_addr = secure.as_ref().map(|(_, a)| *a);
    let table = AdmissionTable::new(config.max_connections, config.max_per_ip);
    let client_log_interval = Duration::from_secs(1);
    let shared = Arc::new(Shared {
        config,
        backend,
        memory: memory.clone(),
        acceptor: RwLock::new(acceptor.map(Arc::new)),
        acl: acl.map(|acl| RwLock::new(Arc::new(acl))),
        table,
        room,
        lingerer,
        pool,
        next_token: AtomicUsize::new(1),
        stopping: AtomicBool::new(false),
        accept_wakers: Mutex::new(Vec::new()),
        transactions: AtomicU64::new(0),
        refusals: Mutex::new(HashMap::new()),
        handshake_failures: Mutex::new(HashMap::new()),
        forbidden: AtomicU64::new(0),
        refusal_logs: std::array::from_fn(|_| {
            RateLimitedLog::new(log::Level::Warn, client_log_interval)
        }),
        accept_log: RateLimitedLog::new(log::Level::Warn, client_log_interval),
        handshake_log: RateLimitedLog::new(log::Level::Info, client_log_interval),
        forbidden_log: RateLimitedLog::new(log::Level::Warn, client_log_interval),
        observer: http.as_ref().map(HttpServer::observer),
    });
    if let (Some(observer), Some(store)) = (&shared.observer, &shared.memory) {
        store.report_to(Arc::clone(observer.metrics.data_file()));
    }
    let stop_maintenance = Arc::new(AtomicBool::new(false));
    let mut server = RunningServer {
        shared: Arc::clone(&shared),
        plain_addr,
        tls_addr,
        accept_threads: Vec::new(),
        room_thread: None,
        maintenance: memory
            .and_then(|store| store.spawn_maintenance(Arc::clone(&stop_maintenance)))
            .map(|handle| (stop_maintenance, handle)),
        http,
    };
    let for_room = Arc::clone(&shared);
    match thread::Builder::new()
        .name("wwep-waiting-room".to_string())
        .spawn(move || WaitingRoom::run(room_poll, for_room))
    {
        Ok(handle) => server.room_thread = Some(handle),
        Err(e) => {
            server.control().shutdown();
            let _ = server.wait();
            return Err(ServerError::Thread(e));
        }
    }
    for (listener, transport) in [(plain, Transport::Plain), (secure, Transport::Tls)] {
        let Some((listener, addr)) = listener else {
            continue;
        };
        let started = Poll::new().and_then(|poll| {
            let waker = Waker::new(poll.registry(), listener::STOP)?;
            shared
                .accept_wakers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(waker);
            let shared = Arc::clone(&shared);
            let up = shared
                .observer
                .as_ref()
                .map(|o| o.metrics.listening(transport));
            thread::Builder::new()
                .name(format!("wwep-accept-{transport}"))
                .spawn(move || {
                    let _up = up;
                    listener::accept_loop(listener, poll, transport, shared)
                })
        });
        match started {
            Ok(handle) => {
                info!("{transport} listener on {addr}");
                server.accept_threads.push(handle);
            }
            Err(e) => {
                server.control().shutdown();
                let _ = server.wait();
                return Err(ServerError::Thread(e));
            }
        }
    }
    if let Some(http) = &server.http {
        http.attach(Arc::clone(&shared));
    }
    Ok(server)
}

impl RunningServer {
    /// The HTTP side's address (`--http`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The in-process store (absent when registers live in Redis).
    pub fn store(&self) -> Option<&Arc<RegisterStore>> {
        self.shared.memory.as_ref()
    }

    pub fn stats(&self) -> Stats {
        let shared = &self.shared;
        Stats {
            transactions: shared.transactions.load(Ordering::Relaxed),
            rejected: shared.refusals(Refusal::Full) + shared.refusals(Refusal::PerIp),
            denied: shared.refusals(Refusal::NotAllowed),
            shed: shared.refusals(Refusal::Shed),
            in_flight: shared.table.open(),
            waiting: shared.room.len(),
            handshake_failures: shared
                .handshake_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .sum(),
            forbidden: shared.forbidden.load(Ordering::Relaxed),
        }
    }

    pub fn control(&self) -> ServerControl {
        ServerControl {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Blocks until a shutdown is requested, then lets the open connections
    /// finish — each within its own deadline, so within `--timeout-ms` — and
    /// forces the data file to disk.
    pub fn wait(mut self) -> io::Result<()> {
        for handle in self.accept_threads.drain(..) {
            let _ = handle.join();
        }
        let shared = &self.shared;
        // Connections that have sent nothing get their X now; the rest have
        // until their deadlines, which the waiting room enforces.
        shared.room.flush_silent();
        let until = Instant::now() + shared.config.timeout + shared.config.gap;
        if !shared.table.wait_empty(until) {
            warn!(
                "stopping with {} connections still open",
                shared.table.open()
            );
        }
        shared.room.stop();
        if let Some(handle) = self.room_thread.take() {
            let _ = handle.join();
        }
        shared.pool.join();
        shared.lingerer.stop();
        if let Some((stop, handle)) = self.maintenance.take() {
            stop.store(true, Ordering::Release);
            let _ = handle.join();
        }
        let synced = shared.backend.sync();
        if let Some(http) = self.http.take() {
            http.stop();
        }
        synced
    }

    /// Stops accepting, finishes open connections and syncs the data file.
    pub fn shutdown(self) -> io::Result<()> {
        self.control().shutdown();
        self.wait()
    }
}

impl ServerControl {
    /// Stops the accept loops; [`RunningServer::wait`] then drains and returns.
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        for waker in self
            .shared
            .accept_wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = waker.wake();
        }
    }

    /// Loads the certificate and key again from the configured files and serves
    /// new connections with them. A pair that cannot serve verifying clients (a
    /// certificate expired or not yet valid, or not matching its key) is refused
    /// and the old pair stays in service.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let config = &self.shared.config;
        if config.tls_port.is_none() || config.identity.is_none() {
            return Ok(());
        }
        let identities = load_identities(config)?;
        for identity in &identities {
            identity.check_validity_now()?;
        }
        let acceptor = Acceptor::new(identities, &config.client_auth, &config.tls)?;
        *self
            .shared
            .acceptor
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(acceptor));
        Ok(())
    }

    /// Reads the `--acl` rule file again and applies it to new requests. A
    /// file with an error is refused as a whole and the old rules stay in
    /// force. Returns the new rules (`None` without `--acl`).
    pub fn reload_acl(&self) -> Result<Option<Arc<Acl>>, AclError> {
        let (Some(path), Some(slot)) = (&self.shared.config.acl, &self.shared.acl) else {
            return Ok(None);
        };
        let acl = Arc::new(Acl::load(path)?);
        *slot.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&acl);
        Ok(Some(acl))
    }
}
