//! A load generator in the manner of redis-benchmark: N concurrent workers doing
//! one-shot transactions, closed loop (as fast as the server answers) or open
//! loop (`--rate`, on a schedule, timed from the scheduled send), optionally
//! beside abuse connections ([`abuse`]). Each worker keeps its own latency
//! [`Histogram`] and counts; the statistics are pure, tested functions.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Client, Mismatch};
use crate::protocol::{MAX_MESSAGE_BYTES, Reply, Request};

pub mod abuse;
mod histogram;

pub use abuse::{AbuseConfig, AbuseCounts, AbuseReport, MAX_ABUSE_CONNECTIONS, RECONNECT_PAUSE};
pub use histogram::Histogram;

/// Which requests the workers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    Write,
    Read,
    /// This percentage of writes, the rest reads.
    WritePercent(u8),
}

/// Defaults of `wwep bench`, written once: the flags read them.
pub const DEFAULT_CONCURRENCY: usize = 32;
pub const DEFAULT_DURATION_SECS: f64 = 10.0;
pub const DEFAULT_WARMUP_SECS: f64 = 1.0;
pub const DEFAULT_SLOW_INTERVAL_MS: u64 = 2000;
/// Workers at most, a thread each.
pub const MAX_CONCURRENCY: usize = 10_000;
/// Every device id there is: the most `--devices` can spread over.
pub const MAX_DEVICES: u32 = 1 << 16;
/// In an open-loop run, a transaction that starts later than this after its
/// scheduled time counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(1);

/// How the workers pace their transactions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Closed loop: each worker starts its next transaction as soon as the last
    /// one ends, so the rate is whatever the server sustains.
    Closed,
    /// Open loop: this many transactions per second in total, each worker on a
    /// fixed schedule; latency is measured from the scheduled time, so a stall
    /// shows in the latencies of every transaction it delayed.
    Open { per_second: f64 },
}

/// When the measurement ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Elapsed(Duration),
    /// Exactly `count` completed transactions (those that complete after the
    /// last of them are not counted), or fewer if `within` runs out first: a
    /// server that never completes one would otherwise keep the run going.
    Completed {
        count: u64,
        within: Option<Duration>,
    },
}

impl Until {
    /// The most the measurement lasts, if anything bounds it in time.
    fn time_limit(self) -> Option<Duration> {
        match self {
            Until::Elapsed(d) => Some(d),
            Until::Completed { within, .. } => within,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub concurrency: usize,
    pub until: Until,
    pub warmup: Duration,
    pub load: Load,
    pub mix: Mix,
    /// Spread requests over this many device ids (all 65,536 when `None`).
    pub devices: Option<u32>,
    /// The `A` every transaction expects instead of the one for its request,
    /// for a stand-in server that answers a constant (`--expect-reply`).
    pub expected_reply: Option<Reply>,
    pub abuse: AbuseConfig,
    pub progress: bool,
}

impl BenchConfig {
    /// A closed-loop run of `concurrency` workers for `until`, writes only.
    pub fn new(concurrency: usize, until: Until) -> BenchConfig {
        BenchConfig {
            concurrency,
            until,
            warmup: Duration::ZERO,
            load: Load::Closed,
            mix: Mix::Write,
            devices: None,
            expected_reply: None,
            abuse: AbuseConfig::none(),
            progress: false,
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!("--concurrency must be from 1 to {MAX_CONCURRENCY}"));
        }
        if let Load::Open { per_second } = self.load
            && !(per_second.is_finite() && per_second > 0.0)
        {
            return Err(format!(
                "--rate must be a positive number of transactions per second, not {per_second}"
            ));
        }
        if self
            .devices
            .is_some_and(|n| !(1..=MAX_DEVICES).contains(&n))
        {
            return Err(format!("--devices must be from 1 to {MAX_DEVICES}"));
        }
        if self.until.time_limit().is_some_and(|d| d.is_zero()) {
            return Err("--duration must be more than 0 seconds".into());
        }
        if let Until::Completed { count: 0, .. } = self.until {
            return Err("--requests must be at least 1".into());
        }
        if self.abuse.idle + self.abuse.slow > MAX_ABUSE_CONNECTIONS {
            return Err(format!(
                "--idle and --slow may hold at most {MAX_ABUSE_CONNECTIONS} connections together"
            ));
        }
        if self.abuse.slow_interval.is_zero() {
            return Err("--slow-interval-ms must be greater than 0".into());
        }
        if let Some(ip) = self.abuse.from.iter().find(|ip| !ip.is_loopback()) {
            return Err(format!(
                "--idle-from {ip}: abuse connections come only from loopback addresses (127.0.0.0/8, ::1)"
            ));
        }
        Ok(())
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub summary: Summary,
    /// Transactions that failed, by kind (connect, tls, timeout, io).
    pub errors: BTreeMap<&'static str, u64>,
    /// With `--requests`: how many were asked for (the summary says how many
    /// completed; fewer only when `--duration` ran out first).
    pub requested: Option<u64>,
    /// `X` replies to writes: the server answered that it failed. Completed
    /// transactions (the protocol's answer), counted among them too.
    pub refused: u64,
    /// Replies that are not WWEP at all; not counted as completed.
    pub bad_replies: u64,
    /// `A` replies for another register or value than the request's; not
    /// counted as completed.
    pub mismatched: u64,
    /// How well an open-loop run kept to its schedule.
    pub schedule: Option<Schedule>,
    /// What the abuse connections went through, when there were any.
    pub abuse: Option<AbuseReport>,
    /// With `--resume`: TLS handshakes done (warm-up included) and how many
    /// resumed a session.
    pub resumption: Option<(u64, u64)>,
}

/// An open-loop run against its schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The rate asked for.
    pub per_second: f64,
    /// Transactions due while measuring.
    pub scheduled: u64,
    /// Of the transactions started while measuring (completed or failed), those
    /// that started more than [`LATE_AFTER`] after their scheduled time.
    pub late: u64,
    /// Transactions due before the end that never started.
    pub missed: u64,
}

/// Throughput and latency percentiles of completed transactions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub completed: u64,
    pub elapsed: Duration,
    pub per_second: f64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarises the latencies in `histogram`, measured over `elapsed`.
    /// Percentiles are nearest-rank, to the histogram's precision.
    pub fn from_histogram(histogram: &Histogram, elapsed: Duration) -> Summary {
        let completed = histogram.len();
        let secs = elapsed.as_secs_f64();
        Summary {
            completed,
            elapsed,
            per_second: if secs > 0.0 {
                completed as f64 / secs
            } else {
                0.0
            },
            p50: histogram.percentile(0.50),
            p90: histogram.percentile(0.90),
            p99: histogram.percentile(0.99),
            p999: histogram.percentile(0.999),
            max: histogram.max(),
        }
    }
}

/// Transactions due in `[from, to)` on a schedule whose next unstarted slot is
/// `next`, one every `interval`: what a worker still owed when the run ended.
pub fn missed_slots(next: Instant, interval: Duration, from: Instant, to: Instant) -> u64 {
    let first = next.max(from);
    if first >= to || interval.is_zero() {
        return 0;
    }
    ((to - first).as_secs_f64() / interval.as_secs_f64()).ceil() as u64
}

/// A small, fast generator; one per worker so they never contend.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn pick_request(rng: &mut XorShift, config: &BenchConfig) -> Request {
    let r = rng.next();
    let device = match config.devices {
        Some(n) => (r % u64::from(n.max(1))) as u16,
        None => r as u16,
    };
    let register = (r >> 16) as u8;
    let value = (r >> 24) as u16;
    let write = match config.mix {
        Mix::Write => true,
        Mix::Read => false,
        Mix::WritePercent(p) => (r >> 40) % 100 < u64::from(p),
    };
    if write {
        Request::Write {
            device,
            register,
            value,
        }
    } else {
        Request::Read { device, register }
    }
}

/// What a reply says of the transaction that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    /// The right kind of answer to the request.
    Fits,
    /// An `X` to a write: the server's answer that it failed, which the
    /// protocol allows (a full store); still a completed transaction.
    Refused,
    /// Not WWEP at all (an HTTP error page, an echo): no answer, so no
    /// completed transaction.
    NotWwep,
    /// An `A` for another register or value than the request's: the server
    /// did not do what it says, so it is no completed transaction.
    Mismatched,
}

impl Judged {
    /// Whether the transaction counts as completed (in the rate and latencies).
    fn completes(self) -> bool {
        matches!(self, Judged::Fits | Judged::Refused)
    }
}

fn judge(request: &Request, reply: &[u8], expected: Option<&Reply>) -> Judged {
    let parsed = Reply::parse(reply);
    let mismatched = match (expected, &parsed) {
        (Some(expected), Some(got @ Reply::Accepted { .. })) => got != expected,
        (None, Some(got)) => Mismatch::between(request, got).is_some(),
        _ => false,
    };
    if mismatched {
        return Judged::Mismatched;
    }
    match (request, parsed) {
        (_, None) => Judged::NotWwep,
        (Request::Write { .. }, Some(Reply::Accepted { .. })) => Judged::Fits,
        (Request::Write { .. }, Some(Reply::Failed(_))) => Judged::Refused,
        // A read of a register nobody wrote is rightly X.
        (Request::Read { .. }, Some(_)) => Judged::Fits,
    }
}

/// What one worker measured; merged at the end, so workers share nothing but
/// two flags and a counter while they run.
struct Tally {
    latencies: Histogram,
    errors: BTreeMap<&'static str, u64>,
    refused: u64,
    bad_replies: u64,
    mismatched: u64,
    late: u64,
    /// Open loop: the worker's next unstarted slot and the spacing of its slots.
    owed: Option<(Instant, Duration)>,
    /// When the last transaction counted as completed ended: with
    /// `--requests`, the measurement ends at the latest of these.
    last_completed: Option<Instant>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: Histogram::new(),
            errors: BTreeMap::new(),
            refused: 0,
            bad_replies: 0,
            mismatched: 0,
            late: 0,
            owed: None,
            last_completed: None,
        }
    }
}

struct Shared {
    recording: AtomicBool,
    stop: AtomicBool,
    /// With `Until::Completed`: completions claimed so far, the ones past the
    /// count included; a transaction counts only if its claim is under it.
    completed: AtomicU64,
    /// The thread waiting for the end, woken by the claim that reaches the count.
    waiting: std::thread::Thread,
    /// Each worker's recorded transactions, for the progress line; a line each
    /// so that workers on different cores do not contend.
    progress: Vec<PerWorker>,
}

#[repr(align(128))]
#[derive(Default)]
struct PerWorker(AtomicU64);

/// Sleeps until `until`, in steps short enough to notice `stop`.
fn sleep_until(until: Instant, stop: &AtomicBool) {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Open loop: worker `w` sends at `epoch + (k * workers + w) / rate`; its
/// first slot and the spacing of its slots. None in a closed loop.
fn first_slot(worker: usize, config: &BenchConfig, epoch: Instant) -> Option<(Instant, Duration)> {
    match config.load {
        Load::Closed => None,
        Load::Open { per_second } => {
            let workers = config.concurrency as f64;
            Some((
                epoch + Duration::from_secs_f64(worker as f64 / per_second),
                Duration::from_secs_f64(workers / per_second),
            ))
        }
    }
}

fn work(
    worker: usize,
    client: &Client,
    config: &BenchConfig,
    shared: &Shared,
    epoch: Instant,
) -> Tally {
    let mut rng = XorShift(
        0x9E37_79B9_7F4A_7C15 ^ ((worker as u64 + 1) << 32) ^ u64::from(std::process::id()),
    );
    let mut mine = Tally::new();
    let mut reply = [0u8; MAX_MESSAGE_BYTES];
    let mut schedule = first_slot(worker, config, epoch);
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some((due, _)) = schedule {
            sleep_until(due, &shared.stop);
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let request = pick_request(&mut rng, config);
        let encoded = request.encode();
        let started = Instant::now();
        let result = client.transact_into(encoded.as_bytes(), &mut reply);
        let ended = Instant::now();
        let (measured_from, late) = match &mut schedule {
            None => (started, false),
            Some((due, interval)) => {
                let slot = *due;
                *due += *interval;
                (slot, started.saturating_duration_since(slot) > LATE_AFTER)
            }
        };
        if !shared.recording.load(Ordering::Relaxed) {
            continue;
        }
        let outcome = result
            .map(|len| judge(&request, &reply[..len], config.expected_reply.as_ref()))
            .map_err(|e| e.kind());
        let counted = match outcome {
            Ok(verdict) if verdict.completes() => shared.claim(config.until),
            _ => shared.still_counting(config.until),
        };
        if !counted {
            continue;
        }
        mine.late += u64::from(late);
        match outcome {
            Ok(Judged::Mismatched) => mine.mismatched += 1,
            Ok(Judged::NotWwep) => mine.bad_replies += 1,
            Ok(verdict) => {
                mine.refused += u64::from(verdict == Judged::Refused);
                mine.latencies.record(ended - measured_from);
                mine.last_completed = Some(ended);
                shared.progress[worker]
                    .0
                    .store(mine.latencies.len(), Ordering::Relaxed);
            }
            Err(kind) => *mine.errors.entry(kind).or_insert(0) += 1,
        }
    }
    mine.owed = schedule;
    mine
}

/// Runs the benchmark against `client` (and the abuse connections beside it)
/// and returns what it measured.
pub fn run(client: &Client, config: &BenchConfig) -> Result<Report, String> {
    config.validate()?;
    let abuse = if config.abuse.is_active() {
        Some(
            abuse::start(&client.addrs(), client.is_tls(), &config.abuse)
                .map_err(|e| format!("cannot start the abuse connections: {e}"))?,
        )
    } else {
        None
    };
    let shared = Arc::new(Shared::new(config));
    // Without a warm-up the workers record from their first transaction, so
    // the measurement starts before the first of them does.
    let epoch = Instant::now();
    let workers = start_workers(client, config, &shared, epoch);
    let started = if config.warmup.is_zero() {
        epoch
    } else {
        std::thread::sleep(config.warmup);
        // Taken before recording starts, so every recorded transaction ends
        // inside the measurement.
        let started = Instant::now();
        shared.recording.store(true, Ordering::Relaxed);
        started
    };
    let progress = if config.progress && std::io::stderr().is_terminal() {
        Progress::OnTerminal
    } else {
        Progress::Quiet
    };
    wait_for_the_end(config, &shared, started, progress);
    shared.recording.store(false, Ordering::Relaxed);
    shared.stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let tallies = join(workers);
    // With --requests reached, the measurement ends when the last counted
    // transaction did, not when this thread noticed.
    let ended = match config.until {
        Until::Completed { count, .. } if shared.completed.load(Ordering::Relaxed) >= count => {
            tallies
                .iter()
                .filter_map(|t| t.last_completed)
                .max()
                .unwrap_or(stopped)
        }
        _ => stopped,
    };
    let (all, missed) = gather(tallies, started, ended);
    if progress == Progress::OnTerminal {
        eprintln!();
    }
    let elapsed = ended.saturating_duration_since(started);
    let schedule = match config.load {
        Load::Closed => None,
        Load::Open { per_second } => Some(Schedule {
            per_second,
            scheduled: (per_second * elapsed.as_secs_f64()).round() as u64,
            late: all.late,
            missed,
        }),
    };
    Ok(Report {
        summary: Summary::from_histogram(&all.latencies, elapsed),
        errors: all.errors,
        requested: match config.until {
            Until::Completed { count, .. } => Some(count),
            Until::Elapsed(_) => None,
        },
        refused: all.refused,
        bad_replies: all.bad_replies,
        mismatched: all.mismatched,
        schedule,
        abuse: abuse.map(|a| a.finish()),
        resumption: client.resumption(),
    })
}

impl Shared {
    fn new(config: &BenchConfig) -> Shared {
        Shared {
            recording: AtomicBool::new(config.warmup.is_zero()),
            stop: AtomicBool::new(false),
            completed: AtomicU64::new(0),
            waiting: std::thread::current(),
            progress: (0..config.concurrency)
                .map(|_| PerWorker::default())
                .collect(),
        }
    }

    /// A transaction completed: whether it counts. With `--requests` it
    /// claims a place under the count; the claim that takes the last place
    /// stops the run, and any after it do not count.
    fn claim(&self, until: Until) -> bool {
        let Until::Completed { count, .. } = until else {
            return true;
        };
        let before = self.completed.fetch_add(1, Ordering::Relaxed);
        if before + 1 == count {
            self.recording.store(false, Ordering::Relaxed);
            self.stop.store(true, Ordering::Relaxed);
            self.waiting.unpark();
        }
        before < count
    }

    /// Whether a transaction that did not complete (failed, mismatched, not
    /// WWEP) still falls inside the measurement: with `--requests`, only
    /// until the last one counted.
    fn still_counting(&self, until: Until) -> bool {
        match until {
            Until::Elapsed(_) => true,
            Until::Completed { count, .. } => self.completed.load(Ordering::Relaxed) < count,
        }
    }

    /// Transactions recorded so far, by all workers.
    fn recorded(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Whether a run shows its progress while it measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Quiet,
    /// A line on the terminal (stderr) every second.
    OnTerminal,
}

/// One thread per worker, each with its own clone of the client; the open
/// loop's schedules all start now.
fn start_workers(
    client: &Client,
    config: &BenchConfig,
    shared: &Arc<Shared>,
    epoch: Instant,
) -> Vec<JoinHandle<Tally>> {
    (0..config.concurrency)
        .map(|w| {
            let client = client.clone();
            let config = config.clone();
            let shared = Arc::clone(shared);
            std::thread::spawn(move || work(w, &client, &config, &shared, epoch))
        })
        .collect()
}

/// Waits, from `started`, until the time is up or a worker counted the last
/// transaction (it wakes this thread); a progress line on the terminal every
/// second if asked.
fn wait_for_the_end(config: &BenchConfig, shared: &Shared, started: Instant, progress: Progress) {
    let mut last = (started, 0u64);
    let limit = config.until.time_limit();
    loop {
        let tick = Duration::from_millis(100);
        let wait = limit.map_or(tick, |d| d.saturating_sub(started.elapsed()).min(tick));
        std::thread::park_timeout(wait);
        if shared.stop.load(Ordering::Relaxed) || limit.is_some_and(|d| started.elapsed() >= d) {
            return;
        }
        if progress == Progress::OnTerminal && last.0.elapsed() >= Duration::from_secs(1) {
            let n = shared.recorded();
            let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprint!(
                "\r{:>6.1} s  {n:>9} transactions  {rate:>9.0}/s ",
                started.elapsed().as_secs_f64()
            );
            last = (Instant::now(), n);
        }
    }
}

/// Every worker's tally, once each has finished its last transaction.
fn join(workers: Vec<JoinHandle<Tally>>) -> Vec<Tally> {
    // A worker that panicked has lost its tally; the others still count.
    workers.into_iter().filter_map(|w| w.join().ok()).collect()
}

/// The tallies merged, and the open-loop slots they still owed between
/// `started` and `ended`.
fn gather(tallies: Vec<Tally>, started: Instant, ended: Instant) -> (Tally, u64) {
    let mut all = Tally::new();
    let mut missed = 0;
    for mine in tallies {
        all.latencies.merge(&mine.latencies);
        for (k, v) in mine.errors {
            *all.errors.entry(k).or_insert(0) += v;
        }
        all.refused += mine.refused;
        all.bad_replies += mine.bad_replies;
        all.mismatched += mine.mismatched;
        all.late += mine.late;
        if let Some((next, interval)) = mine.owed {
            missed += missed_slots(next, interval, started, ended);
        }
    }
    (all, missed)
}

/// The report as `--json` prints it; the optional parts only when they apply.
#[derive(Serialize)]
struct ReportJson<'a> {
    completed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested: Option<u64>,
    seconds: f64,
    per_second: f64,
    p50_us: u128,
    p90_us: u128,
    p99_us: u128,
    p999_us: u128,
    max_us: u128,
    errors: &'a BTreeMap<&'static str, u64>,
    refused: u64,
    bad_replies: u64,
    mismatched: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<ScheduleJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    abuse: Option<&'a AbuseReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshakes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<u64>,
}

#[derive(Serialize)]
struct ScheduleJson {
    rate: f64,
    scheduled: u64,
    late: u64,
    missed: u64,
}

/// `x` to `decimals` places (JSON then shows no more of them).
fn rounded(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

impl Report {
    /// `wwep bench --json`: latencies in microseconds, seconds to the
    /// microsecond (a `--requests` run may last a few milliseconds) and
    /// rates to a tenth.
    pub fn to_json(&self) -> String {
        let s = &self.summary;
        let us = |d: Duration| d.as_micros();
        let json = ReportJson {
            completed: s.completed,
            requested: self.requested,
            seconds: rounded(s.elapsed.as_secs_f64(), 6),
            per_second: rounded(s.per_second, 1),
            p50_us: us(s.p50),
            p90_us: us(s.p90),
            p99_us: us(s.p99),
            p999_us: us(s.p999),
            max_us: us(s.max),
            errors: &self.errors,
            refused: self.refused,
            bad_replies: self.bad_replies,
            mismatched: self.mismatched,
            schedule: self.schedule.map(|p| ScheduleJson {
                rate: rounded(p.per_second, 1),
                scheduled: p.scheduled,
                late: p.late,
                missed: p.missed,
            }),
            abuse: self.abuse.as_ref(),
            handshakes: self.resumption.map(|(handshakes, _)| handshakes),
            resumed: self.resumption.map(|(_, resumed)| resumed),
        };
        serde_json::to_string(&json).expect("the report's fields serialize")
    }

    pub fn to_text(&self) -> String {
        let s = &self.summary;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut out = format!(
            "{} transactions in {:.3} s: {:.0} transactions/s\n",
            s.completed,
            s.elapsed.as_secs_f64(),
            s.per_second,
        );
        if let Some(n) = self.requested.filter(|&n| n > s.completed) {
            out.push_str(&format!(
                "--duration ran out before the {n} transactions asked for completed\n"
            ));
        }
        if let Some(p) = &self.schedule {
            out.push_str(&format!(
                "open loop at {:.0}/s: {} scheduled, {} late (started over {} ms after their time), {} missed\n",
                p.per_second,
                p.scheduled,
                p.late,
                LATE_AFTER.as_millis(),
                p.missed
            ));
        }
        out.push_str(&format!(
            "latency ms{}: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            if self.schedule.is_some() {
                " (from the scheduled time)"
            } else {
                ""
            },
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.p999),
            ms(s.max)
        ));
        let errors: u64 = self.errors.values().sum();
        if errors == 0 {
            out.push_str("errors: none\n");
        } else {
            let parts: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            out.push_str(&format!("errors: {errors} ({})\n", parts.join(", ")));
        }
        out.push_str(&format!(
            "writes refused (X, counted as completed): {}\n",
            self.refused
        ));
        out.push_str(&format!(
            "bad replies (not WWEP, not completed): {}\n",
            self.bad_replies
        ));
        out.push_str(&format!(
            "mismatched replies (an A for another register or value): {}\n",
            self.mismatched
        ));
        if let Some((handshakes, resumed)) = self.resumption {
            out.push_str(&format!(
                "TLS handshakes: {handshakes} (warm-up included), {resumed} resumed a session\n"
            ));
        }
        if let Some(a) = &self.abuse {
            for (name, c) in [("idle", &a.idle), ("slow", &a.slow)] {
                if c.opened + c.connect_failed == 0 {
                    continue;
                }
                out.push_str(&format!(
                    "abuse {name}: {} opened, {} closed by the server ({} after a reply), {} failed to connect\n",
                    c.opened, c.closed_by_server, c.answered, c.connect_failed
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(micros: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        for &m in micros {
            h.record_micros(m);
        }
        h
    }

    #[test]
    fn summary_of_a_histogram() {
        let micros: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::from_histogram(&histogram(&micros), Duration::from_secs(2));
        assert_eq!(s.completed, 100);
        assert_eq!(s.per_second, 50.0);
        assert_eq!(s.p50, Duration::from_micros(50));
        assert_eq!(s.p90, Duration::from_micros(90));
        assert_eq!(s.p99, Duration::from_micros(99));
        assert_eq!(s.p999, Duration::from_micros(100));
        assert_eq!(s.max, Duration::from_micros(100));
    }

    #[test]
    fn small_and_empty_samples() {
        let s = Summary::from_histogram(&histogram(&[7]), Duration::from_millis(500));
        assert_eq!(
            (s.p50, s.p999, s.max),
            (
                Duration::from_micros(7),
                Duration::from_micros(7),
                Duration::from_micros(7)
            )
        );
        assert_eq!(s.per_second, 2.0);
        let s = Summary::from_histogram(&histogram(&[3, 1, 2, 100]), Duration::from_secs(1));
        assert_eq!(s.p50, Duration::from_micros(2));
        assert_eq!(s.p90, Duration::from_micros(100));
        let e = Summary::from_histogram(&Histogram::new(), Duration::ZERO);
        assert_eq!((e.completed, e.per_second, e.max), (0, 0.0, Duration::ZERO));
    }

    #[test]
    fn missed_slots_count_what_was_due_before_the_end() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let every = ms(10);
        // On time: nothing owed.
        assert_eq!(missed_slots(t0 + ms(100), every, t0, t0 + ms(100)), 0);
        assert_eq!(missed_slots(t0 + ms(105), every, t0, t0 + ms(100)), 0);
        // Behind by 25 ms: slots at 75, 85, 95 were never started.
        assert_eq!(missed_slots(t0 + ms(75), every, t0, t0 + ms(100)), 3);
        // Behind since before measuring began: only slots inside the window count.
        assert_eq!(missed_slots(t0, every, t0 + ms(50), t0 + ms(100)), 5);
        assert_eq!(missed_slots(t0, Duration::ZERO, t0, t0 + ms(100)), 0);
    }

    #[test]
    fn configs_are_validated() {
        let ok = BenchConfig::new(4, Until::Elapsed(Duration::from_secs(1)));
        assert_eq!(ok.validate(), Ok(()));
        let bad = |adjust: fn(&mut BenchConfig)| {
            let mut c = ok.clone();
            adjust(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.concurrency = 0).contains("--concurrency"));
        assert!(bad(|c| c.concurrency = MAX_CONCURRENCY + 1).contains("--concurrency"));
        assert!(bad(|c| c.load = Load::Open { per_second: 0.0 }).contains("--rate"));
        assert!(
            bad(|c| c.load = Load::Open {
                per_second: f64::NAN
            })
            .contains("--rate")
        );
        assert!(
            bad(|c| c.until = Until::Completed {
                count: 0,
                within: None
            })
            .contains("--requests")
        );
        assert!(
            bad(|c| c.until = Until::Completed {
                count: 5,
                within: Some(Duration::ZERO)
            })
            .contains("--duration")
        );
        assert!(bad(|c| c.until = Until::Elapsed(Duration::ZERO)).contains("--duration"));
        assert!(bad(|c| c.devices = Some(0)).contains("--devices"));
        assert!(bad(|c| c.devices = Some(MAX_DEVICES + 1)).contains("--devices"));
        assert!(bad(|c| c.abuse.idle = MAX_ABUSE_CONNECTIONS + 1).contains("at most"));
        assert!(bad(|c| c.abuse.slow_interval = Duration::ZERO).contains("--slow-interval-ms"));
        assert!(bad(|c| c.abuse.from = vec!["10.0.0.1".parse().unwrap()]).contains("loopback"));
        let mut c = ok.clone();
        c.abuse.from = vec!["127.0.0.3".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn requests_follow_the_mix_and_device_count() {
        let config = BenchConfig {
            mix: Mix::WritePercent(25),
            devices: Some(3),
            ..BenchConfig::new(
                1,
                Until::Completed {
                    count: 1,
                    within: None,
                },
            )
        };
        let mut rng = XorShift(42);
        let picks: Vec<Request> = (0..4000).map(|_| pick_request(&mut rng, &config)).collect();
        let writes = picks
            .iter()
            .filter(|r| matches!(r, Request::Write { .. }))
            .count();
        assert!((800..1200).contains(&writes), "{writes} writes of 4000");
        assert!(picks.iter().all(|r| match r {
            Request::Read { device, .. } | Request::Write { device, .. } => *device < 3,
        }));
    }

    #[test]
    fn replies_are_judged_against_their_request() {
        let w = Request::Write {
            device: 1,
            register: 2,
            value: 3,
        };
        let r = Request::Read {
            device: 1,
            register: 2,
        };
        assert_eq!(judge(&w, b"A0001020003", None), Judged::Fits);
        assert_eq!(judge(&w, b"X", None), Judged::Refused);
        // Not WWEP: an echo of the request, an HTTP answer.
        assert_eq!(judge(&w, b"W0001020003", None), Judged::NotWwep);
        assert_eq!(judge(&r, b"X", None), Judged::Fits);
        assert_eq!(judge(&r, b"A0001027777", None), Judged::Fits);
        assert_eq!(judge(&r, b"HTTP/1.1 400", None), Judged::NotWwep);
        assert_eq!(judge(&r, b"R000102", None), Judged::NotWwep);
        // An A for another device, register or value is no answer at all.
        for other in [b"A1111020003", b"A0001030003", b"A0001020004"] {
            assert_eq!(judge(&w, other, None), Judged::Mismatched, "{other:?}");
        }
        assert_eq!(judge(&r, b"A0001030003", None), Judged::Mismatched);
        // A stand-in server's constant, when it is the one expected.
        let constant = Reply::parse(b"A0FAC0B1234");
        assert_eq!(judge(&w, b"A0FAC0B1234", constant.as_ref()), Judged::Fits);
        assert_eq!(
            judge(&w, b"A0001020003", constant.as_ref()),
            Judged::Mismatched
        );
        assert_eq!(judge(&w, b"X", constant.as_ref()), Judged::Refused);
        assert_eq!(judge(&w, b"", constant.as_ref()), Judged::NotWwep);
    }

    /// `text` holds every one of `present` and none of `absent`.
    fn assert_holds(text: &str, present: &[&str], absent: &[&str]) {
        for part in present {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        for part in absent {
            assert!(!text.contains(part), "{part:?} in {text}");
        }
    }

    #[test]
    fn report_formats() {
        let mut report = Report {
            summary: Summary::from_histogram(&histogram(&[100, 120]), Duration::from_secs(1)),
            errors: BTreeMap::from([("connect", 2)]),
            requested: Some(5),
            refused: 4,
            bad_replies: 1,
            mismatched: 3,
            schedule: None,
            abuse: None,
            resumption: None,
        };
        assert_holds(
            &report.to_json(),
            &[
                "\"completed\":2,\"requested\":5,",
                "\"errors\":{\"connect\":2},\"refused\":4,",
                "\"p50_us\":100",
            ],
            &[],
        );
        assert!(
            report
                .to_json()
                .ends_with("\"bad_replies\":1,\"mismatched\":3}")
        );
        assert_holds(
            &report.to_text(),
            &[
                "2 transactions",
                "errors: 2 (connect 2)",
                "writes refused (X, counted as completed): 4",
                "bad replies (not WWEP, not completed): 1",
                "ran out before the 5 transactions asked for",
                "mismatched replies (an A for another register or value): 3",
            ],
            &["open loop", "abuse"],
        );
        report.requested = None;
        assert!(!report.to_json().contains("requested"));
        assert!(!report.to_text().contains("ran out"));
        report.schedule = Some(Schedule {
            per_second: 500.0,
            scheduled: 500,
            late: 3,
            missed: 1,
        });
        report.abuse = Some(AbuseReport {
            idle: AbuseCounts {
                opened: 10,
                closed_by_server: 8,
                answered: 8,
                connect_failed: 0,
            },
            slow: AbuseCounts::default(),
        });
        assert_holds(
            &report.to_json(),
            &[
                "\"schedule\":{\"rate\":500.0,\"scheduled\":500,\"late\":3,\"missed\":1}",
                "\"idle\":{\"opened\":10,\"closed_by_server\":8,\"answered\":8,\"connect_failed\":0}",
            ],
            &[],
        );
        assert!(report.to_json().ends_with("}}}"));
        assert_holds(
            &report.to_text(),
            &[
                "open loop at 500/s: 500 scheduled, 3 late",
                "1 missed",
                "latency ms (from the scheduled time)",
                "abuse idle: 10 opened, 8 closed by the server",
            ],
            &["abuse slow"],
        );
    }
}
