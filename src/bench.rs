//! A load generator in the manner of redis-benchmark: N concurrent workers doing
//! one-shot transactions, with the statistics as a pure, tested function.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::protocol::{Reply, Request};

/// Which requests the workers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    Write,
    Read,
    /// This percentage of writes, the rest reads.
    WritePercent(u8),
}

impl Mix {
    /// `write`, `read`, or `R/W` percentages such as `80/20` (80 % reads).
    pub fn parse(text: &str) -> Result<Mix, String> {
        match text {
            "write" => Ok(Mix::Write),
            "read" => Ok(Mix::Read),
            _ => {
                let bad = || {
                    format!(
                        "invalid --mix '{text}': expected write, read or READ/WRITE percentages like 80/20"
                    )
                };
                let (r, w) = text.split_once('/').ok_or_else(bad)?;
                let (r, w): (u8, u8) =
                    (r.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?);
                if u16::from(r) + u16::from(w) != 100 {
                    return Err(format!(
                        "invalid --mix '{text}': the percentages must add up to 100"
                    ));
                }
                Ok(Mix::WritePercent(w))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub concurrency: usize,
    /// Measure for this long…
    pub duration: Option<Duration>,
    /// …or until this many transactions have completed.
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub mix: Mix,
    /// Spread requests over this many device ids (all 65,536 when `None`).
    pub devices: Option<u32>,
    pub progress: bool,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub summary: Summary,
    /// Transactions that failed, by kind (connect, tls, timeout, io).
    pub errors: BTreeMap<&'static str, u64>,
    /// Replies that were not what the request called for.
    pub bad_replies: u64,
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
    /// Summarises latencies (in microseconds, any order) measured over `elapsed`.
    /// Percentiles are nearest-rank: the smallest value with at least p of the
    /// samples at or below it.
    pub fn from_latencies(mut micros: Vec<u32>, elapsed: Duration) -> Summary {
        micros.sort_unstable();
        let rank = |p: f64| -> Duration {
            if micros.is_empty() {
                return Duration::ZERO;
            }
            let index = ((p * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1;
            Duration::from_micros(u64::from(micros[index]))
        };
        let completed = micros.len() as u64;
        let secs = elapsed.as_secs_f64();
        Summary {
            completed,
            elapsed,
            per_second: if secs > 0.0 {
                completed as f64 / secs
            } else {
                0.0
            },
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: micros
                .last()
                .map(|&m| Duration::from_micros(u64::from(m)))
                .unwrap_or_default(),
        }
    }
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

/// Whether a reply is the right kind of answer to the request.
fn reply_fits(request: &Request, reply: &[u8]) -> bool {
    match (request, Reply::parse(reply)) {
        (Request::Write { .. }, Some(Reply::Accepted { .. })) => true,
        // A read of a register nobody wrote is rightly X.
        (Request::Read { .. }, Some(_)) => true,
        _ => false,
    }
}

struct Tally {
    latencies: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
    bad_replies: u64,
}

/// Runs the benchmark against `client` and returns what it measured.
pub fn run(client: &Client, config: &BenchConfig) -> Report {
    let recording = Arc::new(AtomicBool::new(config.warmup.is_zero()));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally {
        latencies: Vec::new(),
        errors: BTreeMap::new(),
        bad_replies: 0,
    }));
    let workers: Vec<_> = (0..config.concurrency.max(1))
        .map(|w| {
            let client = client.clone();
            let config = config.clone();
            let (recording, stop, completed, tally) = (
                Arc::clone(&recording),
                Arc::clone(&stop),
                Arc::clone(&completed),
                Arc::clone(&tally),
            );
            std::thread::spawn(move || {
                let mut rng = XorShift(
                    0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) << 32) ^ std::process::id() as u64,
                );
                let mut mine = Tally {
                    latencies: Vec::with_capacity(1 << 16),
                    errors: BTreeMap::new(),
                    bad_replies: 0,
                };
                while !stop.load(Ordering::Relaxed) {
                    let request = pick_request(&mut rng, &config);
                    let started = Instant::now();
                    let result = client.transact(request.encode().as_bytes());
                    let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    if !recording.load(Ordering::Relaxed) {
                        continue;
                    }
                    match result {
                        Ok(reply) => {
                            if !reply_fits(&request, &reply) {
                                mine.bad_replies += 1;
                            }
                            mine.latencies.push(micros);
                            let n = completed.fetch_add(1, Ordering::Relaxed) + 1;
                            if config.requests.is_some_and(|limit| n >= limit) {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => *mine.errors.entry(e.kind()).or_insert(0) += 1,
                    }
                }
                let mut all = tally.lock().unwrap_or_else(|p| p.into_inner());
                all.latencies.extend_from_slice(&mine.latencies);
                for (k, v) in mine.errors {
                    *all.errors.entry(k).or_insert(0) += v;
                }
                all.bad_replies += mine.bad_replies;
            })
        })
        .collect();

    std::thread::sleep(config.warmup);
    recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let show = config.progress && std::io::stderr().is_terminal();
    let mut last = (started, 0u64);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if stop.load(Ordering::Relaxed) || config.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if show && last.0.elapsed() >= Duration::from_secs(1) {
            let n = completed.load(Ordering::Relaxed);
            let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprint!(
                "\r{:>6.1} s  {n:>9} transactions  {rate:>9.0}/s ",
                started.elapsed().as_secs_f64()
            );
            last = (Instant::now(), n);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for w in workers {
        let _ = w.join();
    }
    if show {
        eprintln!();
    }
    let tally = std::mem::replace(
        &mut *tally.lock().unwrap_or_else(|p| p.into_inner()),
        Tally {
            latencies: Vec::new(),
            errors: BTreeMap::new(),
            bad_replies: 0,
        },
    );
    Report {
        summary: Summary::from_latencies(tally.latencies, elapsed),
        errors: tally.errors,
        bad_replies: tally.bad_replies,
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        let s = &self.summary;
        let us = |d: Duration| d.as_micros();
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!(
            "{{\"completed\":{},\"seconds\":{:.3},\"per_second\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"errors\":{{{}}},\"bad_replies\":{}}}",
            s.completed,
            s.elapsed.as_secs_f64(),
            s.per_second,
            us(s.p50),
            us(s.p90),
            us(s.p99),
            us(s.p999),
            us(s.max),
            errors.join(","),
            self.bad_replies
        )
    }

    pub fn to_text(&self) -> String {
        let s = &self.summary;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut out = format!(
            "{} transactions in {:.2} s: {:.0} transactions/s\nlatency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            s.completed,
            s.elapsed.as_secs_f64(),
            s.per_second,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.p999),
            ms(s.max)
        );
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
        out.push_str(&format!("bad replies: {}\n", self.bad_replies));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let micros: Vec<u32> = (1..=1000).rev().collect();
        let s = Summary::from_latencies(micros, Duration::from_secs(2));
        assert_eq!(s.completed, 1000);
        assert_eq!(s.per_second, 500.0);
        assert_eq!(s.p50, Duration::from_micros(500));
        assert_eq!(s.p90, Duration::from_micros(900));
        assert_eq!(s.p99, Duration::from_micros(990));
        assert_eq!(s.p999, Duration::from_micros(999));
        assert_eq!(s.max, Duration::from_micros(1000));
    }

    #[test]
    fn small_and_empty_samples() {
        let s = Summary::from_latencies(vec![7], Duration::from_millis(500));
        assert_eq!(
            (s.p50, s.p999, s.max),
            (
                Duration::from_micros(7),
                Duration::from_micros(7),
                Duration::from_micros(7)
            )
        );
        assert_eq!(s.per_second, 2.0);
        let s = Summary::from_latencies(vec![3, 1, 2, 100], Duration::from_secs(1));
        assert_eq!(s.p50, Duration::from_micros(2));
        assert_eq!(s.p90, Duration::from_micros(100));
        let e = Summary::from_latencies(Vec::new(), Duration::ZERO);
        assert_eq!((e.completed, e.per_second, e.max), (0, 0.0, Duration::ZERO));
    }

    #[test]
    fn mixes() {
        assert_eq!(Mix::parse("write"), Ok(Mix::Write));
        assert_eq!(Mix::parse("read"), Ok(Mix::Read));
        assert_eq!(Mix::parse("80/20"), Ok(Mix::WritePercent(20)));
        for bad in ["", "50/60", "a/b", "100", "-1/101"] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_follow_the_mix_and_device_count() {
        let config = BenchConfig {
            concurrency: 1,
            duration: None,
            requests: None,
            warmup: Duration::ZERO,
            mix: Mix::WritePercent(25),
            devices: Some(3),
            progress: false,
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
        assert!(reply_fits(&w, b"A0001020003"));
        assert!(!reply_fits(&w, b"X"));
        assert!(reply_fits(&r, b"X"));
        assert!(!reply_fits(&r, b"HTTP/1.1 400"));
    }

    #[test]
    fn report_formats() {
        let report = Report {
            summary: Summary::from_latencies(vec![1000, 2000], Duration::from_secs(1)),
            errors: BTreeMap::from([("connect", 2)]),
            bad_replies: 1,
        };
        let json = report.to_json();
        assert!(
            json.contains("\"completed\":2")
                && json.contains("\"errors\":{\"connect\":2}")
                && json.contains("\"p50_us\":1000"),
            "{json}"
        );
        let text = report.to_text();
        assert!(
            text.contains("2 transactions")
                && text.contains("errors: 2 (connect 2)")
                && text.contains("bad replies: 1"),
            "{text}"
        );
    }
}
