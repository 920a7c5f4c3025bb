//! The server's counters, in the shape Prometheus scrapes.
//!
//! Every label set is resolved once, when [`Metrics`] is built, into a plain
//! handle kept in an array indexed by (port, command, result): counting on the
//! connection path is one atomic add, with no map lookup, lock or allocation.
//! Values that already live elsewhere (connections open, registers stored, the
//! data file's size) are read when `/metrics` is scraped, into a [`Registry`]
//! built for that scrape; `prometheus-client` does the text encoding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};

use crate::facts::Refusal;
use crate::io_cause::IoCause;
use crate::protocol::{Failure, ProtocolError, Reply, Transport};
use crate::tls::server::HandshakeFailureKind;
use described::*;

/// The version and commit the binary was built from (`unknown` without git).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_HASH: &str = env!("WWEP_GIT_HASH");

const PORTS: [Transport; 2] = Transport::ALL;

/// The request's command as far as it could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    /// Not a request at all (or nothing arrived).
    None,
}

impl Command {
    const ALL: [Command; 3] = [Command::Read, Command::Write, Command::None];

    /// From the first byte received: the protocol knows only uppercase `R`/`W`.
    pub fn of(request: &[u8]) -> Command {
        match request.first() {
            Some(b'R') => Command::Read,
            Some(b'W') => Command::Write,
            _ => Command::None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Command::Read => "R",
            Command::Write => "W",
            Command::None => "none",
        }
    }
}

/// The `result` label values, in index order.
const RESULTS: [(&str, &str); 11] = [
    ("A", "ok"),
    ("X", "bad_length"),
    ("X", "bad_hex"),
    ("X", "bad_command"),
    ("X", "not_found"),
    ("X", "busy"),
    ("X", "forbidden"),
    ("X", "store_failure"),
    ("X", "timeout"),
    ("X", "other"),
    ("X", "unreadable"),
];

fn result_index(reply: &Reply) -> usize {
    match reply {
        Reply::Accepted { .. } => 0,
        Reply::Failed(failure) => match failure {
            Failure::Protocol(ProtocolError::BadLength) => 1,
            Failure::Protocol(ProtocolError::BadHex) => 2,
            Failure::Protocol(ProtocolError::BadCommand) => 3,
            Failure::NotFound => 4,
            Failure::Busy => 5,
            Failure::Forbidden => 6,
            // The data file or the shared store failed.
            Failure::Storage | Failure::Unavailable => 7,
            Failure::Timeout => 8,
            Failure::Unspecified => 9,
            // The store answered, but what it holds is not a value.
            Failure::Unreadable => 10,
        },
    }
}

fn port_index(port: Transport) -> usize {
    port.index()
}

fn handshake_failure_label(kind: HandshakeFailureKind) -> &'static str {
    match kind {
        HandshakeFailureKind::NoSharedCipher => "no_shared_cipher",
        HandshakeFailureKind::ProtocolVersion => "protocol_version",
        HandshakeFailureKind::UnknownCa => "unknown_ca",
        HandshakeFailureKind::Revoked => "revoked",
        HandshakeFailureKind::Expired => "expired",
        HandshakeFailureKind::NotYetValid => "not_yet_valid",
        HandshakeFailureKind::Crl => "crl",
        HandshakeFailureKind::CertificateRequired => "certificate_required",
        HandshakeFailureKind::NotTls => "not_tls",
        HandshakeFailureKind::Closed => "closed",
        HandshakeFailureKind::Timeout => "timeout",
        HandshakeFailureKind::Other => "other",
    }
}

const TLS_VERSIONS: [&str; 3] = ["TLSv1.2", "TLSv1.3", "other"];

fn tls_version_index(version: &str) -> usize {
    match version {
        "TLSv1.2" => 0,
        "TLSv1.3" => 1,
        _ => 2,
    }
}

const REFUSALS: [Refusal; Refusal::KINDS] = Refusal::ALL;

fn refusal_label(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Full => "full",
        Refusal::PerIp => "per_address",
        Refusal::NotAllowed => "not_allowed",
        Refusal::Shed => "shed",
        Refusal::ProxyHeader => "proxy_header",
    }
}

/// A histogram whose buckets are plain atomics (`prometheus-client`'s own
/// takes a mutex per observation). Values are kept in microseconds and
/// reported in seconds.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in microseconds, ascending.
    bounds_us: &'static [u64],
    /// One count per bound, then the overflow bucket (+Inf).
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

/// 50 µs to 5 s: a plain transaction takes tens of microseconds, a TLS
/// handshake a few milliseconds, a slow client up to `--timeout-ms`.
const LATENCY_BOUNDS_US: [u64; 15] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// 100 µs to 1 s for an fsync.
const FSYNC_BOUNDS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];

impl AtomicHistogram {
    fn new(bounds_us: &'static [u64]) -> Self {
        AtomicHistogram {
            inner: Arc::new(HistogramInner {
                bounds_us,
                counts: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_us: AtomicU64::new(0),
            }),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let inner = &self.inner;
        let bucket = inner.bounds_us.partition_point(|&bound| bound < us);
        inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        inner.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        // Per-bucket counts: the encoder accumulates them.
        let mut total = 0;
        let mut buckets = Vec::with_capacity(inner.counts.len());
        for (i, count) in inner.counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let bound = inner
                .bounds_us
                .get(i)
                .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            buckets.push((bound, count));
        }
        let sum = inner.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What the data file reports: the store calls these as things happen.
#[derive(Debug)]
pub struct DataFileMetrics {
    fsyncs: Counter,
    fsync_latency: AtomicHistogram,
    compactions: Counter,
    /// Failed compactions by [`IoCause`], in [`IoCause::ALL`]'s order.
    compaction_failures_family: Family<Labels1, Counter>,
    compaction_failures: [Counter; IoCause::ALL.len()],
    /// Compactions failed since the last that worked.
    compaction_failures_in_a_row: AtomicU64,
    write_errors: Counter,
    /// Set by the store when it knows the size better than a scrape can ask.
    bytes: AtomicU64,
}

impl DataFileMetrics {
    fn new() -> Self {
        let compaction_failures_family = Family::default();
        let compaction_failures = IoCause::ALL.map(|cause| {
            compaction_failures_family.get_or_create_owned(&[("cause", cause.label())])
        });
        DataFileMetrics {
            fsyncs: Counter::default(),
            fsync_latency: AtomicHistogram::new(&FSYNC_BOUNDS_US),
            compactions: Counter::default(),
            compaction_failures_family,
            compaction_failures,
            compaction_failures_in_a_row: AtomicU64::new(0),
            write_errors: Counter::default(),
            bytes: AtomicU64::new(0),
        }
    }

    /// An fsync of the data file finished, taking `took`.
    pub fn fsync(&self, took: Duration) {
        self.fsyncs.inc();
        self.fsync_latency.observe(took);
    }

    /// The file was rewritten as a snapshot.
    pub fn compaction(&self) {
        self.compactions.inc();
        self.compaction_failures_in_a_row
            .store(0, Ordering::Relaxed);
    }

    /// A compaction failed, for `cause`: `in_a_row` since the last that worked.
    pub fn compaction_failed(&self, cause: IoCause, in_a_row: u32) {
        let index = IoCause::ALL.iter().position(|&c| c == cause).unwrap_or(0);
        self.compaction_failures[index].inc();
        self.compaction_failures_in_a_row
            .store(u64::from(in_a_row), Ordering::Relaxed);
    }

    /// A write could not be made durable.
    pub fn write_error(&self) {
        self.write_errors.inc();
    }

    /// The file's size, for stores that track it themselves.
    pub fn set_bytes(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// The data file's size (what the store reported, if it does; else
    /// `scraped_bytes`), fsyncs, compactions and write errors.
    fn register(&self, registry: &mut Registry, scraped_bytes: u64) {
        let bytes = match self.bytes.load(Ordering::Relaxed) {
            0 => scraped_bytes,
            reported => reported,
        };
        put(registry, DATA_FILE_BYTES, gauge(bytes));
        put(registry, DATA_FILE_FSYNCS, self.fsyncs.clone());
        put(
            registry,
            DATA_FILE_FSYNC_SECONDS,
            self.fsync_latency.clone(),
        );
        put(registry, DATA_FILE_COMPACTIONS, self.compactions.clone());
        let failures = self.compaction_failures_family.clone();
        put(registry, DATA_FILE_COMPACTION_FAILURES, failures);
        let in_a_row = self.compaction_failures_in_a_row.load(Ordering::Relaxed);
        put(
            registry,
            DATA_FILE_COMPACTION_FAILURES_IN_A_ROW,
            gauge(in_a_row),
        );
        put(registry, DATA_FILE_WRITE_ERRORS, self.write_errors.clone());
    }
}

/// Values read at scrape time from where they already live.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub connections_open: usize,
    pub connections_waiting: usize,
    /// `None` where this process cannot count them cheaply (a shared store).
    pub registers: Option<usize>,
    /// `None` without a data file.
    pub data_file_bytes: Option<u64>,
    /// The earliest not-after of the served certificates, as Unix time.
    pub certificate_not_after: Option<i64>,
    /// When the first client CA's CRL passes its nextUpdate, as Unix time;
    /// `None` without `--client-crl` (or with lists that name no nextUpdate).
    pub client_crl_next_update: Option<i64>,
    /// The HTTP side's own connection counts, when it serves `/metrics`.
    pub http: Option<HttpCounts>,
}

/// The HTTP side's connections: refused at accept for their address, shed
/// (the table full, or a request past its deadline), and open now; and the
/// watchers of `/api/events`: open now, the events queued for them, and
/// those dropped for falling behind or for not reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpCounts {
    pub refused_address: u64,
    pub shed_full: u64,
    pub shed_deadline: u64,
    pub open: u64,
    pub watchers: u64,
    pub watcher_events: u64,
    pub watchers_dropped_behind: u64,
    pub watchers_dropped_stalled: u64,
}

/// Label sets of one, two and four labels.
type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Labels4 = [(&'static str, &'static str); 4];

/// Every counter the server keeps for `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    transactions_family: Family<Labels4, Counter>,
    /// [port][command][result]
    transactions: [[[Counter; RESULTS.len()]; 3]; 2],
    latency_family: Family<Labels1, AtomicHistogram, fn() -> AtomicHistogram>,
    latency: [AtomicHistogram; 2],
    handshakes_family: Family<Labels2, Counter>,
    /// [version][full, resumed]
    handshakes: [[Counter; 2]; TLS_VERSIONS.len()],
    handshake_failures_family: Family<Labels1, Counter>,
    handshake_failures: [Counter; HandshakeFailureKind::ALL.len()],
    refusals_family: Family<Labels1, Counter>,
    refusals: [Counter; REFUSALS.len()],
    /// Connections that closed without sending a byte.
    closed_empty: Counter,
    /// Requests the `--acl` rules refused.
    acl_denials: Counter,
    /// Transactions answered: the running count of the transaction line.
    answered: AtomicU64,
    data_file: Arc<DataFileMetrics>,
    /// Whether each port's accept thread is running.
    listening: [AtomicBool; 2],
}

fn new_latency() -> AtomicHistogram {
    AtomicHistogram::new(&LATENCY_BOUNDS_US)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let transactions_family = Family::default();
        let transactions = PORTS.map(|port| {
            Command::ALL.map(|command| {
                RESULTS.map(|(reply, result)| {
                    transactions_family.get_or_create_owned(&[
                        ("port", port.name()),
                        ("command", command.label()),
                        ("reply", reply),
                        ("result", result),
                    ])
                })
            })
        });
        let latency_family: Family<_, _, fn() -> AtomicHistogram> =
            Family::new_with_constructor(new_latency);
        let latency =
            PORTS.map(|port| latency_family.get_or_create_owned(&[("port", port.name())]));
        let handshakes_family = Family::default();
        let handshakes = TLS_VERSIONS.map(|version| {
            ["full", "resumed"].map(|kind| {
                handshakes_family.get_or_create_owned(&[("version", version), ("outcome", kind)])
            })
        });
        let handshake_failures_family = Family::default();
        let handshake_failures = HandshakeFailureKind::ALL.map(|kind| {
            handshake_failures_family
                .get_or_create_owned(&[("kind", handshake_failure_label(kind))])
        });
        let refusals_family = Family::default();
        let refusals =
            REFUSALS.map(|r| refusals_family.get_or_create_owned(&[("reason", refusal_label(r))]));
        Metrics {
            transactions_family,
            transactions,
            latency_family,
            latency,
            handshakes_family,
            handshakes,
            handshake_failures_family,
            handshake_failures,
            refusals_family,
            refusals,
            closed_empty: Counter::default(),
            acl_denials: Counter::default(),
            answered: AtomicU64::new(0),
            data_file: Arc::new(DataFileMetrics::new()),
            listening: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// A transaction answered on `port`: `request` is what arrived, `reply`
    /// what was answered, `took` from accept to reply.
    /// An answered message; returns its running number (1 for the first).
    pub fn answered(&self, port: Transport, request: &[u8], reply: &Reply, took: Duration) -> u64 {
        self.replied(port, request, reply, took);
        self.answered.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A reply that ends no message: the `X` of a connection that sent nothing
    /// before its deadline.
    pub fn replied(&self, port: Transport, request: &[u8], reply: &Reply, took: Duration) {
        let p = port_index(port);
        let command = Command::of(request) as usize;
        self.transactions[p][command][result_index(reply)].inc();
        self.latency[p].observe(took);
    }

    /// A connection closed without sending a byte.
    pub fn closed_empty(&self) {
        self.closed_empty.inc();
    }

    /// A request the `--acl` rules refused.
    pub fn acl_denial(&self) {
        self.acl_denials.inc();
    }

    /// Messages answered so far.
    pub fn answered_total(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn refusals_total(&self, refusal: Refusal) -> u64 {
        self.refusals[refusal.index()].get()
    }

    pub fn handshake_failures_total(&self) -> u64 {
        self.handshake_failures.iter().map(Counter::get).sum()
    }

    pub fn acl_denials_total(&self) -> u64 {
        self.acl_denials.get()
    }

    /// An `X` sent at once to a connection refused for lack of room (nothing
    /// was read, so no command; not in the latency histogram).
    pub fn busy(&self, port: Transport) {
        self.transactions[port_index(port)][Command::None as usize][5].inc();
    }

    /// A TLS handshake finished.
    pub fn handshake(&self, version: &str, resumed: bool) {
        self.handshakes[tls_version_index(version)][usize::from(resumed)].inc();
    }

    pub fn handshake_failure(&self, kind: HandshakeFailureKind) {
        let i = HandshakeFailureKind::ALL
            .iter()
            .position(|&k| k == kind)
            .unwrap_or(HandshakeFailureKind::ALL.len() - 1);
        self.handshake_failures[i].inc();
    }

    pub fn refusal(&self, refusal: Refusal) {
        self.refusals[refusal.index()].inc();
    }

    /// The handle the data file reports through.
    pub fn data_file(&self) -> &Arc<DataFileMetrics> {
        &self.data_file
    }

    /// Marks a port's accept thread as running until the guard is dropped
    /// (also when the thread ends by a panic).
    pub fn listening(self: &Arc<Self>, port: Transport) -> ListeningGuard {
        self.listening[port_index(port)].store(true, Ordering::Release);
        ListeningGuard {
            metrics: Arc::clone(self),
            port,
        }
    }

    pub fn is_listening(&self, port: Transport) -> bool {
        self.listening[port_index(port)].load(Ordering::Acquire)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("wwep");
        let build = Info::new([("version", VERSION), ("commit", GIT_HASH)]);
        put(&mut registry, BUILD, build);
        self.register_exchanges(&mut registry);
        self.register_connections(&mut registry, snapshot);
        if let Some(bytes) = snapshot.data_file_bytes {
            self.data_file.register(&mut registry, bytes);
        }
        if let Some(not_after) = snapshot.certificate_not_after {
            put(&mut registry, CERTIFICATE_NOT_AFTER, gauge(not_after));
        }
        if let Some(next_update) = snapshot.client_crl_next_update {
            put(&mut registry, CLIENT_CRL_NEXT_UPDATE, gauge(next_update));
        }
        if let Some(http) = snapshot.http {
            register_http(&mut registry, http);
        }
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    /// Transactions, their latency, TLS handshakes and refusals.
    fn register_exchanges(&self, registry: &mut Registry) {
        put(registry, TRANSACTIONS, self.transactions_family.clone());
        put(registry, TRANSACTION_SECONDS, self.latency_family.clone());
        put(registry, TLS_HANDSHAKES, self.handshakes_family.clone());
        let failures = self.handshake_failures_family.clone();
        put(registry, TLS_HANDSHAKE_FAILURES, failures);
        put(registry, CONNECTIONS_REFUSED, self.refusals_family.clone());
    }

    /// Connections open and waiting now, how connections ended, ACL denials,
    /// the registers stored and which listeners run.
    fn register_connections(&self, registry: &mut Registry, snapshot: &Snapshot) {
        put(registry, CONNECTIONS_OPEN, gauge(snapshot.connections_open));
        put(
            registry,
            CONNECTIONS_WAITING,
            gauge(snapshot.connections_waiting),
        );
        put(
            registry,
            CONNECTIONS_CLOSED,
            closed_family(&self.closed_empty),
        );
        put(registry, ACL_DENIALS, self.acl_denials.clone());
        if let Some(registers) = snapshot.registers {
            put(registry, REGISTERS, gauge(registers));
        }
        let listening: Family<Labels1, Gauge> = Family::default();
        for port in PORTS {
            listening
                .get_or_create(&[("port", port.name())])
                .set(i64::from(self.is_listening(port)));
        }
        put(registry, LISTENER_UP, listening);
    }
}

/// A metric's name (after the `wwep_` prefix) and help text.
type Described = (&'static str, &'static str);

/// Every metric's name and help text, one a line.
#[rustfmt::skip]
mod described {
    use super::Described;

    pub const BUILD: Described = ("build", "Version and git commit the server was built from");
    pub const TRANSACTIONS: Described = ("transactions", "Transactions answered, by port, command (R, W, none), reply (A, X) and result (X reason)");
    pub const TRANSACTION_SECONDS: Described = ("transaction_duration_seconds", "Time from accept to reply, by port");
    pub const TLS_HANDSHAKES: Described = ("tls_handshakes", "TLS handshakes completed, by protocol version and outcome (full, resumed)");
    pub const TLS_HANDSHAKE_FAILURES: Described = ("tls_handshake_failures", "TLS handshakes that failed, by kind");
    pub const CONNECTIONS_REFUSED: Described = ("connections_refused", "Connections turned away or closed early, by reason (full, per_address, not_allowed, shed)");
    pub const CONNECTIONS_OPEN: Described = ("connections_open", "Connections open now (waiting, queued or being served)");
    pub const CONNECTIONS_WAITING: Described = ("connections_waiting", "Connections in the waiting room now (waiting for their client)");
    pub const CONNECTIONS_CLOSED: Described = ("connections_closed", "Connections that ended without a message, by reason (empty: closed without sending a byte)");
    pub const ACL_DENIALS: Described = ("acl_denials", "Requests the --acl rules refused (answered X)");
    pub const REGISTERS: Described = ("registers", "Registers stored");
    pub const LISTENER_UP: Described = ("listener_up", "1 while the port's accept thread runs");
    pub const DATA_FILE_BYTES: Described = ("data_file_bytes", "Size of the data file");
    pub const DATA_FILE_FSYNCS: Described = ("data_file_fsyncs", "fsyncs of the data file");
    pub const DATA_FILE_FSYNC_SECONDS: Described = ("data_file_fsync_duration_seconds", "Time each fsync of the data file took");
    pub const DATA_FILE_COMPACTIONS: Described = ("data_file_compactions", "Rewrites of the data file as a snapshot");
    pub const DATA_FILE_COMPACTION_FAILURES: Described = ("data_file_compaction_failures", "Compactions of the data file that failed, by cause (permission, space, io)");
    pub const DATA_FILE_COMPACTION_FAILURES_IN_A_ROW: Described = ("data_file_compaction_failures_in_a_row", "Compactions of the data file failed since the last that worked");
    pub const DATA_FILE_WRITE_ERRORS: Described = ("data_file_write_errors", "Writes that could not be made durable (answered X)");
    pub const HTTP_CONNECTIONS_REFUSED: Described = ("http_connections_refused", "HTTP connections refused at accept, by reason");
    pub const HTTP_CONNECTIONS_SHED: Described = ("http_connections_shed", "HTTP connections closed by the server, by reason");
    pub const HTTP_CONNECTIONS_OPEN: Described = ("http_connections_open", "HTTP connections open now");
    pub const HTTP_WATCHERS: Described = ("http_watchers", "Watchers of /api/events now (of the HTTP connections open)");
    pub const HTTP_WATCHER_EVENTS: Described = ("http_watcher_events", "Write events queued for watchers of /api/events (one per write per watcher)");
    pub const HTTP_WATCHERS_DROPPED: Described = ("http_watchers_dropped", "Watchers of /api/events dropped, by reason (behind: too many writes behind; stalled: not reading)");
    pub const CERTIFICATE_NOT_AFTER: Described = ("tls_certificate_not_after_seconds", "Expiry of the served certificate (the earliest, when two are served), as Unix time");
    pub const CLIENT_CRL_NEXT_UPDATE: Described = ("tls_client_crl_next_update_seconds", "When a --client-crl list goes stale (per client CA the freshest list's nextUpdate, the earliest of those), as Unix time; past it, that CA's clients are refused");
}

fn put(registry: &mut Registry, (name, help): Described, metric: impl Metric) {
    registry.register(name, help, metric);
}

/// The HTTP side's counts, read at scrape time from its own atomics.
fn register_http(registry: &mut Registry, http: HttpCounts) {
    let by_reason = |counts: &[(&'static str, u64)]| {
        let family: Family<Labels1, Counter> = Family::default();
        for &(reason, n) in counts {
            family.get_or_create(&[("reason", reason)]).inc_by(n);
        }
        family
    };
    let refused = by_reason(&[("address", http.refused_address)]);
    put(registry, HTTP_CONNECTIONS_REFUSED, refused);
    let shed = by_reason(&[("full", http.shed_full), ("deadline", http.shed_deadline)]);
    put(registry, HTTP_CONNECTIONS_SHED, shed);
    put(registry, HTTP_CONNECTIONS_OPEN, gauge(http.open));
    put(registry, HTTP_WATCHERS, gauge(http.watchers));
    let events: Counter = Counter::default();
    events.inc_by(http.watcher_events);
    put(registry, HTTP_WATCHER_EVENTS, events);
    let dropped = by_reason(&[
        ("behind", http.watchers_dropped_behind),
        ("stalled", http.watchers_dropped_stalled),
    ]);
    put(registry, HTTP_WATCHERS_DROPPED, dropped);
}

/// A gauge reading `value` (the largest gauge value if it does not fit).
fn gauge(value: impl TryInto<i64>) -> Gauge {
    let g: Gauge = Gauge::default();
    g.set(value.try_into().unwrap_or(i64::MAX));
    g
}

/// `connections_closed{reason=...}`, with the one reason counted today.
fn closed_family(empty: &Counter) -> Family<Labels1, Counter> {
    let family: Family<Labels1, Counter> = Family::default();
    family
        .get_or_create(&[("reason", "empty")])
        .inc_by(empty.get());
    family
}

/// Clears a port's `listener_up` when its accept thread ends.
pub struct ListeningGuard {
    metrics: Arc<Metrics>,
    port: Transport,
}

impl Drop for ListeningGuard {
    fn drop(&mut self) {
        self.metrics.listening[port_index(self.port)].store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPTED: Reply = Reply::Accepted {
        device: 1,
        register: 2,
        value: 3,
    };

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn transactions_are_counted_by_port_command_and_result() {
        let m = Metrics::new();
        let ok = ACCEPTED;
        m.answered(
            Transport::Plain,
            b"W0001020003",
            &ok,
            Duration::from_micros(70),
        );
        m.answered(
            Transport::Plain,
            b"W0001020003",
            &ok,
            Duration::from_micros(70),
        );
        m.answered(
            Transport::Tls,
            b"R0001ZZ",
            &Reply::Failed(Failure::Protocol(ProtocolError::BadHex)),
            Duration::from_millis(3),
        );
        m.answered(
            Transport::Plain,
            b"",
            &Reply::Failed(Failure::Timeout),
            Duration::from_secs(5),
        );
        let text = m.encode(&Snapshot::default());
        assert_eq!(
            line(
                &text,
                r#"wwep_transactions_total{port="plain",command="W",reply="A",result="ok"}"#
            ),
            Some(r#"wwep_transactions_total{port="plain",command="W",reply="A",result="ok"} 2"#)
        );
        assert!(text.contains(
            r#"wwep_transactions_total{port="tls",command="R",reply="X",result="bad_hex"} 1"#
        ));
        assert!(text.contains(
            r#"wwep_transactions_total{port="plain",command="none",reply="X",result="timeout"} 1"#
        ));
        assert!(
            text.contains(
                r#"wwep_transaction_duration_seconds_bucket{port="plain",le="0.0001"} 2"#
            )
        );
        assert!(text.contains(r#"wwep_transaction_duration_seconds_count{port="plain"} 3"#));
        assert!(text.contains("# TYPE wwep_transactions_total counter"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_in_seconds() {
        let h = AtomicHistogram::new(&LATENCY_BOUNDS_US);
        for us in [10, 50, 51, 2_000_000, 9_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut registry = Registry::default();
        registry.register("h", "h", h);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("h_bucket{le=\"5e-05\"} 2"), "{out}");
        assert!(out.contains("h_bucket{le=\"5\"} 4"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 5"), "{out}");
        assert!(out.contains("h_count 5"), "{out}");
    }

    #[test]
    fn answered_messages_are_numbered_and_empty_connections_are_not_transactions() {
        let m = Metrics::new();
        let ok = ACCEPTED;
        assert_eq!(
            m.answered(Transport::Plain, b"R000102", &ok, Duration::ZERO),
            1
        );
        m.closed_empty();
        m.closed_empty();
        assert_eq!(
            m.answered(Transport::Tls, b"R000102", &ok, Duration::ZERO),
            2
        );
        assert_eq!(m.answered_total(), 2);
        let text = m.encode(&Snapshot::default());
        assert!(
            text.contains(r#"wwep_connections_closed_total{reason="empty"} 2"#),
            "{text}"
        );
        assert!(!text.contains("result=\"timeout\"} 1"), "{text}");
        assert!(
            !text.contains("wwep_registers"),
            "unknown counts are absent: {text}"
        );
        let text = m.encode(&Snapshot {
            registers: Some(3),
            ..Snapshot::default()
        });
        assert!(text.contains("wwep_registers 3"), "{text}");
    }

    #[test]
    fn a_stale_client_crl_has_its_own_kind_and_the_next_update_its_gauge() {
        let m = Metrics::new();
        let text = m.encode(&Snapshot::default());
        assert!(!text.contains("crl_next_update"), "{text}");
        m.handshake_failure(HandshakeFailureKind::Crl);
        let text = m.encode(&Snapshot {
            client_crl_next_update: Some(1_800_000_000),
            ..Snapshot::default()
        });
        assert!(
            text.contains("wwep_tls_handshake_failures_total{kind=\"crl\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wwep_tls_handshake_failures_total{kind=\"unknown_ca\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("wwep_tls_client_crl_next_update_seconds 1800000000"),
            "{text}"
        );
    }
}
