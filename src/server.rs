//! Listeners, admission, the worker pool and shutdown.
//!
//! Each listener has its own accept thread, which never does I/O with a client: it
//! admits the connection (or refuses it at once when the server is full) and hands
//! it to the pool, where the TLS handshake, the read and the reply happen.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use threadpool::ThreadPool;

use crate::access;
use crate::config::{ConfigError, ServerConfig, Transport};
use crate::connection::{self, Access, Conn, Outcome, Timing, Transaction};
use crate::journal::JournalError;
use crate::linger::{self, Lingerer};
use crate::protocol::{Escaped, Failure, Reply, Terminator};
use crate::store::RegisterStore;
use crate::tls::{self, Acceptor, Identity, TlsError};

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    Config(ConfigError),
    Tls(TlsError),
    Bind { addr: SocketAddr, source: io::Error },
    Data(JournalError),
    Thread(io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Config(e) => e.fmt(f),
            ServerError::Tls(e) => e.fmt(f),
            ServerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::Data(e) => e.fmt(f),
            ServerError::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<ConfigError> for ServerError {
    fn from(e: ConfigError) -> Self {
        ServerError::Config(e)
    }
}

impl From<TlsError> for ServerError {
    fn from(e: TlsError) -> Self {
        ServerError::Tls(e)
    }
}

/// Logs a warning at most once per interval and says how many were held back.
struct RateLimitedWarning {
    interval_ms: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last warning logged, plus one (0 = never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarning {
    fn new(interval: Duration) -> Self {
        RateLimitedWarning {
            interval_ms: interval.as_millis() as u64,
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn warn(&self, message: fmt::Arguments<'_>) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let held = self.suppressed.swap(0, Ordering::Relaxed);
            if held > 0 {
                warn!("{message} ({held} more like this not shown)");
            } else {
                warn!("{message}");
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counters an operator or a test can read while the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Messages judged and answered.
    pub transactions: u64,
    /// Connections refused because the server, or the client's address, was at
    /// its limit.
    pub rejected: u64,
    /// Connections closed because the client's address is not allowed.
    pub denied: u64,
    /// Connections queued or being served now.
    pub in_flight: usize,
}

struct Shared {
    config: ServerConfig,
    store: Arc<RegisterStore>,
    /// Swapped whole on SIGHUP; a handshake holds its own `Arc`.
    acceptor: RwLock<Option<Arc<Acceptor>>>,
    /// The bound listener addresses, to wake blocked accepts on shutdown.
    addrs: Vec<SocketAddr>,
    in_flight: AtomicUsize,
    transactions: AtomicU64,
    rejected: AtomicU64,
    denied: AtomicU64,
    /// In-flight connections per client address, for `--max-per-ip`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    shutting_down: AtomicBool,
    full_warning: RateLimitedWarning,
    denied_warning: RateLimitedWarning,
    accept_warning: RateLimitedWarning,
    handshake_warning: RateLimitedWarning,
    lingerer: Lingerer,
}

impl Shared {
    fn per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acceptor(&self) -> Option<Arc<Acceptor>> {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Holds one in-flight slot, overall and for the client's address; taken on the
/// accept thread before the job is queued (so queued connections count) and
/// released when the job ends, even by panic.
struct Admission {
    shared: Arc<Shared>,
    ip: IpAddr,
    holds_ip_slot: bool,
}

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Full,
    PerIp,
}

impl Admission {
    fn try_new(shared: &Arc<Shared>, ip: IpAddr) -> Result<Admission, Refusal> {
        let before = shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= shared.config.max_connections {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        let mut per_ip = shared.per_ip();
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= shared.config.max_per_ip {
            drop(per_ip);
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        }
        *count += 1;
        Ok(Admission {
            shared: Arc::clone(shared),
            ip,
            holds_ip_slot: true,
        })
    }

    /// Gives back the address's slot once the connection is answered: what the
    /// per-address limit bounds is connections still waiting for their reply. A
    /// client that opens its next connection on receiving a reply never finds its
    /// previous one still counted, so N sequential clients fit a limit of N.
    fn release_ip_slot(&mut self) {
        if !std::mem::replace(&mut self.holds_ip_slot, false) {
            return;
        }
        let mut per_ip = self.shared.per_ip();
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release_ip_slot();
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running server. Dropping it does not stop it: call [`RunningServer::shutdown`],
/// or [`ServerControl::shutdown`] from another thread and then [`RunningServer::wait`].
pub struct RunningServer {
    shared: Arc<Shared>,
    plain_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    accept_threads: Vec<JoinHandle<()>>,
    pool: ThreadPool,
    maintenance: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

/// Stops or reconfigures a running server from another thread (a signal handler).
#[derive(Clone)]
pub struct ServerControl {
    shared: Arc<Shared>,
}

/// Starts a server; with `config.data`, the store is first rebuilt from the data
/// file, before any listener binds.
pub fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    config.validate()?;
    // Certificates first: a bad one fails fast, before any file is touched.
    let acceptor = load_acceptor(&config)?;
    let store = match &config.data {
        None => {
            let server = launch(config, Arc::new(RegisterStore::new()), acceptor)?;
            info!(
                "no --data file: registers are kept in memory only and lost when the server stops"
            );
            return Ok(server);
        }
        Some(data) => {
            let (store, report) =
                RegisterStore::open(&data.path, data.fsync, data.compaction, data.repair)
                    .map_err(ServerError::Data)?;
            let path = data.path.display();
            if report.created {
                info!("data file {path} created (fsync {})", data.fsync.name());
            } else {
                info!(
                    "data file {path}: {} records replayed, {} registers (fsync {})",
                    report.records,
                    store.len(),
                    data.fsync.name()
                );
            }
            if report.torn_bytes > 0 {
                warn!(
                    "data file {path}: dropped {} bytes of a record cut short by a crash; every complete record was kept",
                    report.torn_bytes
                );
            }
            if report.repaired_bytes > 0 {
                warn!(
                    "data file {path}: --repair dropped {} bytes from the first damaged record on",
                    report.repaired_bytes
                );
            }
            store
        }
    };
    launch(config, Arc::new(store), acceptor)
}

fn load_acceptor(config: &ServerConfig) -> Result<Option<Acceptor>, TlsError> {
    let (Some(_), Some(source)) = (&config.tls_port, &config.identity) else {
        return Ok(None);
    };
    let identity = Identity::load(source)?;
    for warning in identity.expiry_warnings() {
        warn!("{warning}");
    }
    Acceptor::new(&identity, &config.client_auth).map(Some)
}

/// Starts a server over an existing store: loads the TLS identity, binds both
/// listeners and spawns their accept threads.
pub fn start_with_store(
    config: ServerConfig,
    store: Arc<RegisterStore>,
) -> Result<RunningServer, ServerError> {
    config.validate()?;
    let acceptor = load_acceptor(&config)?;
    launch(config, store, acceptor)
}

fn launch(
    config: ServerConfig,
    store: Arc<RegisterStore>,
    acceptor: Option<Acceptor>,
) -> Result<RunningServer, ServerError> {
    let bind = |port: Option<u16>| -> Result<Option<(TcpListener, SocketAddr)>, ServerError> {
        let Some(port) = port else { return Ok(None) };
        let addr = SocketAddr::new(config.bind, port);
        let listener = listen(addr, config.max_connections)
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
    // Lingering closes are bounded like connections are.
    let lingerer =
        Lingerer::start(config.max_connections.saturating_mul(4)).map_err(ServerError::Thread)?;
    let plain_addr = plain.as_ref().map(|(_, a)| *a);
    let tls_addr = secure.as_ref().map(|(_, a)| *a);
    let shared = Arc::new(Shared {
        config,
        store: Arc::clone(&store),
        acceptor: RwLock::new(acceptor.map(Arc::new)),
        addrs: plain_addr.into_iter().chain(tls_addr).collect(),
        in_flight: AtomicUsize::new(0),
        transactions: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        denied: AtomicU64::new(0),
        per_ip: Mutex::new(HashMap::new()),
        shutting_down: AtomicBool::new(false),
        full_warning: RateLimitedWarning::new(Duration::from_secs(1)),
        denied_warning: RateLimitedWarning::new(Duration::from_secs(1)),
        accept_warning: RateLimitedWarning::new(Duration::from_secs(1)),
        handshake_warning: RateLimitedWarning::new(Duration::from_secs(1)),
        lingerer,
    });
    let stop_maintenance = Arc::new(AtomicBool::new(false));
    let mut server = RunningServer {
        shared: Arc::clone(&shared),
        plain_addr,
        tls_addr,
        accept_threads: Vec::new(),
        pool: pool.clone(),
        maintenance: store
            .spawn_maintenance(Arc::clone(&stop_maintenance))
            .map(|handle| (stop_maintenance, handle)),
    };
    for (listener, transport) in [(plain, Transport::Plain), (secure, Transport::Tls)] {
        let Some((listener, addr)) = listener else {
            continue;
        };
        info!("{transport} listener on {addr}");
        let shared = Arc::clone(&shared);
        let pool = pool.clone();
        let spawned = thread::Builder::new()
            .name(format!("wwep-accept-{transport}"))
            .spawn(move || accept_loop(listener, transport, shared, pool));
        match spawned {
            Ok(handle) => server.accept_threads.push(handle),
            Err(e) => {
                server.control().shutdown();
                let _ = server.wait();
                return Err(ServerError::Thread(e));
            }
        }
    }
    Ok(server)
}

impl RunningServer {
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn store(&self) -> &Arc<RegisterStore> {
        &self.shared.store
    }

    pub fn stats(&self) -> Stats {
        Stats {
            transactions: self.shared.transactions.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            denied: self.shared.denied.load(Ordering::Relaxed),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
        }
    }

    pub fn control(&self) -> ServerControl {
        ServerControl {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Blocks until a shutdown is requested, lets in-flight connections finish
    /// (each bounded by the timeout), then forces the data file to disk.
    pub fn wait(mut self) -> io::Result<()> {
        for handle in self.accept_threads.drain(..) {
            let _ = handle.join();
        }
        self.pool.join();
        self.shared.lingerer.stop();
        if let Some((stop, handle)) = self.maintenance.take() {
            stop.store(true, Ordering::Release);
            let _ = handle.join();
        }
        self.shared.store.sync()
    }

    /// Stops accepting, finishes in-flight connections and syncs the data file.
    pub fn shutdown(self) -> io::Result<()> {
        self.control().shutdown();
        self.wait()
    }
}

impl ServerControl {
    /// Stops the accept loops; [`RunningServer::wait`] then drains and returns.
    pub fn shutdown(&self) {
        if self.shared.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        // A blocked accept() only returns for a connection: make one to each listener.
        for addr in &self.shared.addrs {
            let _ = TcpStream::connect_timeout(&wake_address(*addr), Duration::from_secs(1));
        }
    }

    /// Loads the certificate and key again from the configured files and serves
    /// new connections with them; on any error the old pair stays in service.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let acceptor = load_acceptor(&self.shared.config)?;
        let mut slot = self
            .shared
            .acceptor
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if acceptor.is_some() {
            *slot = acceptor.map(Arc::new);
        }
        Ok(())
    }
}

/// Binds a listener whose backlog can hold a burst as large as the admission limit
/// (std's fixed 128 would drop SYNs and cost clients a one-second retry).
fn listen(addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restart must not wait for the old connections' TIME_WAIT to expire.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `::` serves IPv4 too where the system allows it.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.clamp(128, 65535) as i32)?;
    Ok(socket.into())
}

/// Where to connect to reach a listener bound to `addr`.
fn wake_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    // EMFILE and ENFILE: the process or the system is out of file descriptors.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

fn accept_loop(listener: TcpListener, transport: Transport, shared: Arc<Shared>, pool: ThreadPool) {
    loop {
        let accepted = listener.accept();
        if shared.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_fd_exhaustion(&e) => {
                shared.accept_warning.warn(format_args!(
                    "{transport} listener cannot accept: {e}; backing off"
                ));
                thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                debug!("{transport} accept failed: {e}");
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        if !access::allowed(&shared.config.allow, ip) {
            shared.denied.fetch_add(1, Ordering::Relaxed);
            shared.denied_warning.warn(format_args!(
                "closed {transport} connection from {peer}: address not in --allow"
            ));
            continue;
        }
        let admission = match Admission::try_new(&shared, ip) {
            Ok(admission) => admission,
            Err(refusal) => {
                refuse(stream, peer, transport, refusal, &shared);
                continue;
            }
        };
        let accepted_at = Instant::now();
        pool.execute(move || {
            let mut admission = admission;
            let served = catch_unwind(AssertUnwindSafe(|| {
                handle(stream, peer, transport, accepted_at, &mut admission)
            }));
            if served.is_err() {
                error!("connection from {peer} abandoned after a panic in its worker");
            }
        });
    }
    debug!("{transport} accept loop stopped");
}

/// Turns a connection away without blocking the accept thread (every call here is
/// non-blocking): an `X` on the open port, nothing on the TLS port, where no
/// handshake has happened.
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    refusal: Refusal,
    shared: &Shared,
) {
    shared.rejected.fetch_add(1, Ordering::Relaxed);
    match refusal {
        Refusal::Full => shared.full_warning.warn(format_args!(
            "refusing {transport} connection from {peer}: {} connections in flight (--max-connections)",
            shared.config.max_connections
        )),
        Refusal::PerIp => shared.full_warning.warn(format_args!(
            "refusing {transport} connection from {peer}: {} connections from that address in flight (--max-per-ip)",
            shared.config.max_per_ip
        )),
    }
    if transport == Transport::Plain {
        let reply =
            Reply::Failed(Failure::Busy).encode(shared.config.error_detail, Terminator::None);
        let _ =
            socket2::SockRef::from(&stream).send_with_flags(reply.as_bytes(), libc::MSG_DONTWAIT);
        let _ = stream.shutdown(Shutdown::Write);
        // Whatever already arrived is read so the close is a FIN, not a reset.
        linger::drain_now(&stream);
    }
}

struct PlainConn<'a> {
    stream: TcpStream,
    lingerer: &'a Lingerer,
}

impl Read for PlainConn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for PlainConn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The reply is all this connection will send: MSG_MORE holds it for the
        // FIN that `close_gracefully` adds at once, so both leave in one segment.
        socket2::SockRef::from(&self.stream).send_with_flags(buf, libc::MSG_MORE)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for PlainConn<'_> {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }
    fn close_gracefully(self, linger: Duration) {
        if self.stream.shutdown(Shutdown::Write).is_ok() {
            self.lingerer.close(self.stream, linger);
        }
    }
}

struct TlsConn<'a> {
    stream: tls::ServerStream,
    lingerer: &'a Lingerer,
}

impl Read for TlsConn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for TlsConn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Conn for TlsConn<'_> {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.stream.tcp().set_read_timeout(Some(timeout))
    }
    fn close_gracefully(mut self, linger: Duration) {
        self.stream.close_notify();
        close_tcp(self.stream.tcp(), self.lingerer, linger);
    }
}

/// Half-closes a stream that something else owns and lingers on a duplicate of
/// its socket, which stays open until the lingering is done.
fn close_tcp(stream: &TcpStream, lingerer: &Lingerer, linger: Duration) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    if let Ok(dup) = stream.try_clone() {
        lingerer.close(dup, linger);
    }
}

fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    accepted_at: Instant,
    admission: &mut Admission,
) {
    let shared = Arc::clone(&admission.shared);
    let shared = &*shared;
    let config = &shared.config;
    let mut timing = Timing {
        deadline: accepted_at + config.timeout,
        gap: config.gap,
        linger: config.linger,
    };
    match transport {
        Transport::Plain => {
            // One timeout serves the whole connection (see `connection::serve`).
            // No write timeout: the reply is a few bytes into an empty send buffer.
            if let Err(e) = stream.set_read_timeout(Some(config.gap)) {
                debug!("{transport} {peer}: cannot set timeouts: {e}");
                return;
            }
            let conn = PlainConn {
                stream,
                lingerer: &shared.lingerer,
            };
            let session = Session {
                peer,
                transport,
                accepted_at,
                client: None,
            };
            serve_and_close(conn, &session, &timing, admission);
        }
        Transport::Tls => {
            let Some(acceptor) = shared.acceptor() else {
                return;
            };
            // An embedded client may take seconds between handshake messages.
            if let Err(e) = stream
                .set_read_timeout(Some(config.timeout))
                .and_then(|()| stream.set_write_timeout(Some(config.timeout)))
            {
                debug!("{transport} {peer}: cannot set timeouts: {e}");
                return;
            }
            // The handshake is several small writes; Nagle would delay each.
            let _ = stream.set_nodelay(true);
            let stream = match acceptor.accept(stream) {
                Ok(s) => s,
                Err(failure) => {
                    if failure.client_refused {
                        shared
                            .handshake_warning
                            .warn(format_args!("tls {peer}: refused: {}", failure.reason));
                    } else {
                        debug!("tls {peer}: handshake failed: {}", failure.reason);
                    }
                    if let Some(stream) = failure.stream {
                        close_tcp(&stream, &shared.lingerer, config.linger);
                    }
                    return;
                }
            };
            let client = stream.peer_common_name();
            let mut conn = TlsConn {
                stream,
                lingerer: &shared.lingerer,
            };
            // The handshake spent part of the time the message has.
            let Some(left) = timing
                .deadline
                .checked_duration_since(Instant::now())
                .filter(|left| *left >= Duration::from_millis(1))
            else {
                debug!("tls {peer}: handshake used up the timeout");
                return;
            };
            timing.deadline = Instant::now() + left;
            if conn.set_read_timeout(config.gap.min(left)).is_err() {
                return;
            }
            let session = Session {
                peer,
                transport,
                accepted_at,
                client: client.as_deref(),
            };
            serve_and_close(conn, &session, &timing, admission);
        }
    }
}

/// Who a connection is, for its transaction line.
struct Session<'a> {
    peer: SocketAddr,
    transport: Transport,
    accepted_at: Instant,
    /// The client certificate's common name (mutual TLS).
    client: Option<&'a str>,
}

fn serve_and_close<C: Conn>(
    mut conn: C,
    session: &Session<'_>,
    timing: &Timing,
    admission: &mut Admission,
) {
    let shared = Arc::clone(&admission.shared);
    let access = match session.transport {
        Transport::Plain => shared.config.plain_access,
        Transport::Tls => Access::ReadWrite,
    };
    let transaction = connection::serve(
        &mut conn,
        &shared.store,
        access,
        shared.config.error_detail,
        timing,
        &mut || admission.release_ip_slot(),
    );
    // Close first: the reply leaves with the FIN, and the log line is not on the
    // client's critical path.
    if transaction.replied_at.is_some() && !matches!(transaction.outcome, Outcome::Failed(_)) {
        conn.close_gracefully(timing.linger);
    }
    log_transaction(&transaction, session, &shared);
}

fn log_transaction(t: &Transaction, session: &Session<'_>, shared: &Shared) {
    let Session {
        peer,
        transport,
        accepted_at,
        client,
    } = *session;
    let micros = t
        .replied_at
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(accepted_at)
        .as_micros();
    let reply = t.reply.as_ref().map(|r| r.as_bytes()).unwrap_or_default();
    match t.outcome {
        Outcome::Served => {
            let n = shared.transactions.fetch_add(1, Ordering::Relaxed) + 1;
            match client {
                Some(cn) => info!(
                    "#{n} {transport} {peer} cn=\"{}\" \"{}\" -> \"{}\" {micros}us",
                    Escaped(cn.as_bytes()),
                    Escaped(t.request()),
                    Escaped(reply)
                ),
                None => info!(
                    "#{n} {transport} {peer} \"{}\" -> \"{}\" {micros}us",
                    Escaped(t.request()),
                    Escaped(reply)
                ),
            }
        }
        Outcome::TimedOut => debug!(
            "{transport} {peer}: nothing received in time; sent \"{}\"",
            Escaped(reply)
        ),
        Outcome::Failed(kind) => debug!(
            "{transport} {peer}: connection failed ({kind}) after \"{}\"",
            Escaped(t.request())
        ),
    }
}
