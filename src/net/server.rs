//! Starting, running and stopping the server: the listeners and their accept
//! threads, the waiting room's thread, the worker pool and the counters they
//! share.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use log::{info, warn};
use mio::{Poll, Waker};

use crate::acl::{Acl, AclError};
use crate::activity::Activity;
use crate::config::{ConfigError, ServerConfig};
use crate::facts::Refusal;
use crate::http::{Health, HttpServer, Status};
use crate::metrics::{Metrics, Snapshot};
use crate::net::context::{Context, Parts};
use crate::net::linger::Lingerer;
use crate::net::listener::{self, Stopper};
use crate::net::record::{Limits, Record};
use crate::net::session::Room;
use crate::protocol::Transport;
use crate::store::backend::{Backend, DeviceRegisters, StoreError};
use crate::store::journal::JournalError;
use crate::store::redis::{RedisOpenError, RedisStore};
use crate::store::{RegisterStore, open_logged};
use crate::tls::server::Acceptor;
use crate::tls::{ClientAuth, Identity, Loading, TlsError};

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

/// A running server. Dropping it does not stop it: call [`RunningServer::shutdown`],
/// or [`ServerControl::shutdown`] from another thread and then [`RunningServer::wait`].
pub struct RunningServer {
    ctx: Arc<Context>,
    room: Arc<Room>,
    /// The in-process store, when registers live here (its maintenance
    /// thread and the tests' look inside); the connections see only the
    /// context's backend.
    memory: Option<Arc<RegisterStore>>,
    wakers: Arc<Mutex<Vec<Stopper>>>,
    plain_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    accept_threads: Vec<JoinHandle<()>>,
    /// The waiting room's timer thread and its workers.
    room_threads: Vec<JoinHandle<()>>,
    maintenance: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    http: Option<HttpServer>,
}

/// Stops or reconfigures a running server from another thread (a signal handler).
#[derive(Clone)]
pub struct ServerControl {
    ctx: Arc<Context>,
    /// Wake the accept threads on shutdown.
    wakers: Arc<Mutex<Vec<Stopper>>>,
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
    let metrics = Arc::new(Metrics::new());
    let activity = config.http.as_ref().map(|_| Arc::new(Activity::new()));
    // The HTTP side first, so /ready can say the data file is being replayed.
    let http = start_http(&config, &metrics, activity.as_ref())?;
    let (backend, memory) = open_store(&config, &metrics, cancel)?;
    let record = Record::new(
        metrics,
        activity,
        Limits {
            max_connections: config.max_connections,
            max_per_ip: config.max_per_ip,
        },
    );
    let in_memory = memory.is_some() && config.data.is_none();
    let parts = Parts {
        config,
        backend,
        acceptor,
        acl,
        record,
    };
    let server = launch(parts, memory, http)?;
    if in_memory {
        info!("no --data file: registers are kept in memory only and lost when the server stops");
    }
    Ok(server)
}

fn start_http(
    config: &ServerConfig,
    metrics: &Arc<Metrics>,
    activity: Option<&Arc<Activity>>,
) -> Result<Option<HttpServer>, ServerError> {
    let (Some(http), Some(activity)) = (&config.http, activity) else {
        return Ok(None);
    };
    HttpServer::start(http, Arc::clone(metrics), Arc::clone(activity))
        .map(Some)
        .map_err(|source| ServerError::Bind {
            addr: http.addr,
            source,
        })
}

/// The store transactions go to, and the same store again as this process's own
/// when it is one (its compaction and data file are the server's to run).
type OpenedStore = (Arc<dyn Backend>, Option<Arc<RegisterStore>>);

/// Where registers live: Valkey/Redis, or this process (rebuilt from the data
/// file, if any, whose counts go to `metrics`).
fn open_store(
    config: &ServerConfig,
    metrics: &Metrics,
    cancel: &AtomicBool,
) -> Result<OpenedStore, ServerError> {
    if !config.store.location.is_memory() {
        let shared = RedisStore::open(&config.store, config.worker_threads(), config.timeout)
            .map_err(ServerError::Store)?;
        return Ok((Arc::new(shared), None));
    }
    let store = Arc::new(match &config.data {
        None => RegisterStore::new(),
        Some(data) => open_logged(data, cancel).map_err(ServerError::Data)?,
    });
    store.report_to(Arc::clone(metrics.data_file()));
    Ok((store.clone(), Some(store)))
}

/// Loads the certificates and keys the TLS port serves, judging their dates
/// the same way at start and at reload (and warning of those that expire soon).
fn load_identities(config: &ServerConfig, loading: Loading) -> Result<Vec<Identity>, TlsError> {
    let identities = config
        .identity
        .iter()
        .chain(&config.extra_identity)
        .map(Identity::load)
        .collect::<Result<Vec<_>, _>>()?;
    for identity in &identities {
        for warning in identity.judge_dates(loading)? {
            warn!("{warning}");
        }
    }
    Ok(identities)
}

fn load_acceptor(config: &ServerConfig) -> Result<Option<Acceptor>, TlsError> {
    if config.tls_port.is_none() || config.identity.is_none() {
        return Ok(None);
    }
    let identities = load_identities(config, Loading::Start)?;
    Acceptor::new(identities, &config.client_auth, &config.tls).map(Some)
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
/// The HTTP side's connections (`--http-max-connections`) are counted too.
fn fit_open_files(config: &mut ServerConfig) {
    let http = config.http.as_ref().map_or(0, |h| h.max_connections as u64);
    let wanted = 2 * config.max_connections as u64 + http + SPARE_FDS;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got >= wanted => {}
        Ok(got) => {
            let fits = (got.saturating_sub(SPARE_FDS + http) / 2).max(1) as usize;
            warn!(
                "open-file limit is {got} (hard limit), below the {wanted} that --max-connections {} needs; serving at most {fits} connections at once (raise LimitNOFILE to allow more)",
                config.max_connections
            );
            config.max_connections = fits;
        }
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
}

/// A bound listener and its address.
type Bound = Option<(std::net::TcpListener, SocketAddr)>;

fn bind_port(
    config: &ServerConfig,
    port: Option<u16>,
    transport: Transport,
) -> Result<Bound, ServerError> {
    let Some(port) = port else { return Ok(None) };
    let addr = SocketAddr::new(config.bind, port);
    let listener = listener::bind(addr, config.max_connections, transport)
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(Some((listener, bound)))
}

/// Binds both ports, then starts the waiting room's thread and an accept
/// thread per port; on any failure, what started is stopped again.
fn launch(
    mut parts: Parts,
    memory: Option<Arc<RegisterStore>>,
    http: Option<HttpServer>,
) -> Result<RunningServer, ServerError> {
    fit_open_files(&mut parts.config);
    let plain = bind_port(&parts.config, parts.config.plain_port, Transport::Plain)?;
    let secure = bind_port(&parts.config, parts.config.tls_port, Transport::Tls)?;
    let lingerer = Lingerer::start(parts.config.max_connections).map_err(ServerError::Thread)?;
    let lanes = parts.config.worker_lanes();
    let room = Room::new(lingerer.holds(), lanes).map_err(ServerError::Thread)?;
    let ctx = Arc::new(Context::new(parts, lingerer));
    let stop_maintenance = Arc::new(AtomicBool::new(false));
    let mut server = RunningServer {
        ctx: Arc::clone(&ctx),
        room: Arc::new(room),
        maintenance: memory
            .as_ref()
            .and_then(|store| store.spawn_maintenance(Arc::clone(&stop_maintenance)))
            .map(|handle| (stop_maintenance, handle)),
        memory,
        wakers: Arc::new(Mutex::new(Vec::new())),
        plain_addr: plain.as_ref().map(|(_, a)| *a),
        tls_addr: secure.as_ref().map(|(_, a)| *a),
        accept_threads: Vec::new(),
        room_threads: Vec::new(),
        http,
    };
    let started = server
        .start_room()
        .and_then(|()| server.start_accepting(plain, Transport::Plain))
        .and_then(|()| server.start_accepting(secure, Transport::Tls));
    if let Err(e) = started {
        server.control().shutdown();
        let _ = server.wait();
        return Err(ServerError::Thread(e));
    }
    if let Some(http) = &server.http {
        http.attach(Arc::new(ServerStatus {
            ctx: Arc::clone(&server.ctx),
            room: Arc::clone(&server.room),
        }));
    }
    Ok(server)
}

/// What `/health`, `/ready` and `/metrics` read of the server.
struct ServerStatus {
    ctx: Arc<Context>,
    room: Arc<Room>,
}

impl Status for ServerStatus {
    fn snapshot(&self) -> Snapshot {
        let ctx = &self.ctx;
        let acceptor = ctx.current_acceptor();
        Snapshot {
            connections_open: ctx.table.open(),
            connections_waiting: self.room.len(),
            registers: ctx.backend.registers(),
            data_file_bytes: ctx.backend.data_file_bytes(),
            certificate_not_after: acceptor.as_ref().and_then(|a| a.earliest_not_after_unix()),
            client_crl_next_update: acceptor
                .as_ref()
                .and_then(|a| a.client_crl_next_update_unix()),
            // Filled in by the HTTP side, which keeps them.
            http: None,
        }
    }

    /// Healthy: not stopping, every enabled port accepting, and the store
    /// taking writes (the data file's last write went through; a shared
    /// store answers). Degraded while the data file's compactions fail:
    /// writes are still stored.
    fn health(&self) -> Health {
        match self.failing() {
            Err(reason) => Health::Failing(reason),
            Ok(()) => match self.ctx.backend.compaction_failing() {
                Some(failing) => Health::Degraded(failing.to_string()),
                None => Health::Ok,
            },
        }
    }

    fn is_stopping(&self) -> bool {
        self.ctx.is_stopping()
    }

    fn device(&self, device: u16) -> Result<DeviceRegisters, StoreError> {
        self.ctx.backend.device(device)
    }
}

impl ServerStatus {
    /// Why the server cannot do its work, if it cannot.
    fn failing(&self) -> Result<(), String> {
        let ctx = &self.ctx;
        if ctx.is_stopping() {
            return Err("stopping".to_string());
        }
        let metrics = ctx.record.metrics();
        for (port, enabled) in [
            (Transport::Plain, ctx.config.plain_port.is_some()),
            (Transport::Tls, ctx.config.tls_port.is_some()),
        ] {
            if enabled && !metrics.is_listening(port) {
                return Err(format!("the {port} listener is not accepting"));
            }
        }
        if ctx.backend.writable() {
            return Ok(());
        }
        Err(match ctx.config.data {
            Some(_) => "the data file is failing: the last write could not be stored".to_string(),
            None => format!("the store ({}) does not answer", ctx.config.store.location),
        })
    }
}

impl RunningServer {
    /// The waiting room's timer thread and the workers, each waiting on the
    /// room's sockets itself.
    fn start_room(&mut self) -> io::Result<()> {
        let (ctx, room) = (Arc::clone(&self.ctx), Arc::clone(&self.room));
        let timers = thread::Builder::new()
            .name("wwep-timers".to_string())
            .spawn(move || room.run_timers(&ctx))?;
        self.room_threads.push(timers);
        for worker in 0..self.ctx.config.worker_threads() {
            let (ctx, room) = (Arc::clone(&self.ctx), Arc::clone(&self.room));
            let worker = thread::Builder::new()
                .name("wwep-worker".to_string())
                // The lingering closes of what a worker served are the
                // room's: the client's close is a readiness like any other.
                .spawn(move || room.serve(worker, &ctx))?;
            self.room_threads.push(worker);
        }
        Ok(())
    }

    /// A port's accept thread, woken by the stop through its own waker.
    fn start_accepting(&mut self, bound: Bound, transport: Transport) -> io::Result<()> {
        let Some((listener, addr)) = bound else {
            return Ok(());
        };
        let (ctx, room) = (Arc::clone(&self.ctx), Arc::clone(&self.room));
        // A thread that serves connections itself waits in a poll, which
        // also times the lingering closes it owes; one that hands every
        // connection on blocks in accept.
        let (stopper, body): (Stopper, Box<dyn FnOnce() + Send>) =
            if listener::serves_here(transport, &ctx) {
                let poll = Poll::new()?;
                let waker = Waker::new(poll.registry(), listener::STOP)?;
                let body = move || listener::accept_loop(listener, poll, transport, ctx, room);
                (Stopper::Poll(waker), Box::new(body))
            } else {
                listener.set_nonblocking(false)?;
                let stopper = Stopper::Accept(listener.try_clone()?);
                let body = move || listener::accept_blocking(listener, transport, ctx, room);
                (stopper, Box::new(body))
            };
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stopper);
        let up = self.ctx.record.metrics().listening(transport);
        let handle = thread::Builder::new()
            .name(format!("wwep-accept-{transport}"))
            .spawn(move || {
                let _up = up;
                body()
            })?;
        info!("{transport} listener on {addr}");
        self.accept_threads.push(handle);
        Ok(())
    }

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
        self.memory.as_ref()
    }

    /// The counters, read from the same place `/metrics` reads them.
    pub fn stats(&self) -> Stats {
        let metrics = self.ctx.record.metrics();
        Stats {
            transactions: metrics.answered_total(),
            rejected: metrics.refusals_total(Refusal::Full)
                + metrics.refusals_total(Refusal::PerIp),
            denied: metrics.refusals_total(Refusal::NotAllowed),
            shed: metrics.refusals_total(Refusal::Shed),
            in_flight: self.ctx.table.open(),
            waiting: self.room.len(),
            handshake_failures: metrics.handshake_failures_total(),
            forbidden: metrics.acl_denials_total(),
        }
    }

    pub fn control(&self) -> ServerControl {
        ServerControl {
            ctx: Arc::clone(&self.ctx),
            wakers: Arc::clone(&self.wakers),
        }
    }

    /// Blocks until a shutdown is requested, then lets the open connections
    /// finish — each within its own deadline, so within `--timeout-ms` — and
    /// forces the data file to disk.
    pub fn wait(mut self) -> io::Result<()> {
        for handle in self.accept_threads.drain(..) {
            let _ = handle.join();
        }
        let ctx = &self.ctx;
        // Connections that have sent nothing get their X now; the rest have
        // until their deadlines, which the waiting room enforces.
        self.room.flush_silent();
        let until = Instant::now() + ctx.config.timeout + ctx.config.gap;
        if !ctx.table.wait_empty(until) {
            warn!("stopping with {} connections still open", ctx.table.open());
        }
        self.room.stop();
        for handle in self.room_threads.drain(..) {
            let _ = handle.join();
        }
        ctx.lingerer.stop();
        if let Some((stop, handle)) = self.maintenance.take() {
            stop.store(true, Ordering::Release);
            let _ = handle.join();
        }
        let synced = ctx.backend.sync();
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
        if !self.ctx.stop() {
            return;
        }
        for stopper in self.wakers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            stopper.wake();
        }
    }

    /// Loads the certificate and key again from the configured files and serves
    /// new connections with them. A pair that cannot serve verifying clients (a
    /// certificate expired or not yet valid, or not matching its key) is refused
    /// and the old pair stays in service.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let config = &self.ctx.config;
        if config.tls_port.is_none() || config.identity.is_none() {
            return Ok(());
        }
        let identities = load_identities(config, Loading::Reload)?;
        let acceptor = Acceptor::new(identities, &config.client_auth, &config.tls)?;
        self.ctx.replace_acceptor(acceptor);
        Ok(())
    }

    /// Reads the `--acl` rule file again and applies it to new requests. A
    /// file with an error is refused as a whole and the old rules stay in
    /// force. Returns the new rules (`None` without `--acl`).
    pub fn reload_acl(&self) -> Result<Option<Arc<Acl>>, AclError> {
        let Some(path) = &self.ctx.config.acl else {
            return Ok(None);
        };
        let acl = Arc::new(Acl::load(path)?);
        Ok(self.ctx.replace_acl(Arc::clone(&acl)).then_some(acl))
    }
}
