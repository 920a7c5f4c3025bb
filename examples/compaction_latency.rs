//! Write latency during compaction, with every register written (`make bench-data`).
//!
//! Builds a data file holding `--registers` live registers (default all
//! 16,777,216), opens it (timing the replay), then runs `--writers` threads writing
//! random registers: first for `--seconds` with no compaction, then while the file
//! is compacted back to back for as long. Prints p50/p99/p99.9/max write latency of
//! both phases and checks the targets: p99.9 during compaction within 2× of
//! outside, and no write over 20 ms.
//!
//! Writers pace themselves at `--rate` writes a second each (default 10,000, about
//! what the server serves over the network; 0 for flat out, which on a machine
//! with fewer cores than busy threads measures the scheduler more than the store).
//!
//! `cargo run --release --example compaction_latency -- [--registers N]
//! [--writers N] [--rate R] [--seconds S] [--fsync always|everysec|never] [--dir DIR]`

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wwep::store::RegisterStore;
use wwep::store::journal::{CompactionPolicy, Fsync, MAGIC, encode_record};

struct Options {
    registers: u32,
    writers: u16,
    seconds: f64,
    /// Writes per second per writer; 0 writes flat out.
    rate: u32,
    fsync: Fsync,
    dir: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        registers: 1 << 24,
        writers: 4,
        seconds: 5.0,
        rate: 10_000,
        fsync: Fsync::Never,
        dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--registers" => o.registers = value.parse().map_err(|_| bad.clone())?,
            "--writers" => o.writers = value.parse().map_err(|_| bad.clone())?,
            "--seconds" => o.seconds = value.parse().map_err(|_| bad.clone())?,
            "--rate" => o.rate = value.parse().map_err(|_| bad.clone())?,
            "--fsync" => o.fsync = Fsync::parse(&value).ok_or(format!("--fsync: {value:?}"))?,
            "--dir" => o.dir = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.registers == 0 || o.registers > 1 << 24 || o.writers == 0 {
        return Err("--registers must be 1..=16777216 and --writers at least 1".into());
    }
    Ok(o)
}

/// Oversleep (µs) of a thread sleeping 1 ms at a time: how long the machine
/// itself keeps a ready thread waiting, whatever the store does.
fn probe(stop: &AtomicBool) -> Vec<u64> {
    let mut late = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let began = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        late.push((began.elapsed().as_micros() as u64).saturating_sub(1000));
    }
    late
}

/// Per-write latencies (µs) of `writers` threads, each writing `rate` times a
/// second (like connection workers that wait for their clients; 0: flat out),
/// and the probe's oversleeps.
fn write_latencies(
    store: &RegisterStore,
    writers: u16,
    rate: u32,
    stop: &AtomicBool,
) -> (Vec<u64>, Vec<u64>) {
    let gap = (rate > 0).then(|| Duration::from_secs(1) / rate);
    std::thread::scope(|s| {
        let probe = s.spawn(|| probe(stop));
        let handles: Vec<_> = (0..writers)
            .map(|t| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(1 << 20);
                    let mut i = 0x9E37_79B9u32.wrapping_mul(t as u32 + 1);
                    let mut due = Instant::now();
                    while !stop.load(Ordering::Acquire) {
                        if let Some(gap) = gap {
                            due += gap;
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            } else if now - due > Duration::from_millis(100) {
                                due = now;
                            }
                        }
                        i ^= i << 13;
                        i ^= i >> 17;
                        i ^= i << 5;
                        let began = Instant::now();
                        if store.write((i >> 8) as u16, i as u8, i as u16).is_err() {
                            eprintln!("a write failed");
                        }
                        lat.push(began.elapsed().as_micros() as u64);
                    }
                    lat
                })
            })
            .collect();
        let lat = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        (lat, probe.join().unwrap_or_default())
    })
}

struct Summary {
    writes: usize,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

fn summary(mut lat: Vec<u64>) -> Summary {
    lat.sort_unstable();
    let q = |q: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    Summary {
        writes: lat.len(),
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: lat.last().copied().unwrap_or(0),
    }
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("compaction_latency: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = match &o.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    };
    let Ok(dir) = dir else {
        eprintln!("compaction_latency: cannot make a temporary directory");
        return ExitCode::from(2);
    };
    let path = dir.path().join("registers.wwep");
    let began = Instant::now();
    let written = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        out.write_all(MAGIC)?;
        for i in 0..o.registers {
            // Spread over every device id, all 256 registers each when full.
            let key = (i as u16, (i >> 16) as u8);
            out.write_all(&encode_record(key, i as u16))?;
        }
        out.flush()
    })();
    if let Err(e) = written {
        eprintln!("compaction_latency: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    println!(
        "data file: {} registers, {} bytes, written in {:.1} s",
        o.registers,
        8 + 9 * o.registers as u64,
        began.elapsed().as_secs_f64()
    );
    let policy = CompactionPolicy {
        ratio: f64::MAX,
        min_bytes: u64::MAX,
    };
    let began = Instant::now();
    let store = match RegisterStore::open(&path, o.fsync, policy, false) {
        Ok((store, _)) => Arc::new(store),
        Err(e) => {
            eprintln!("compaction_latency: {e}");
            return ExitCode::from(1);
        }
    };
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!(
        "replayed {} registers in {:.2} s; {}",
        store.len(),
        began.elapsed().as_secs_f64(),
        rss.split_whitespace().collect::<Vec<_>>().join(" ")
    );

    let stop = AtomicBool::new(false);
    let outside = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs_f64(o.seconds));
            stop.store(true, Ordering::Release);
        });
        write_latencies(&store, o.writers, o.rate, &stop)
    });
    let stop = AtomicBool::new(false);
    let compactions = AtomicUsize::new(0);
    let compaction_ms = std::sync::Mutex::new(Vec::new());
    let held_us = std::sync::Mutex::new(Vec::new());
    let during = std::thread::scope(|s| {
        s.spawn(|| {
            let until = Instant::now() + Duration::from_secs_f64(o.seconds);
            while Instant::now() < until || compactions.load(Ordering::Relaxed) == 0 {
                let began = Instant::now();
                match store.compact(true) {
                    Ok(report) => {
                        compactions.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut ms) = compaction_ms.lock() {
                            ms.push(began.elapsed().as_millis());
                        }
                        if let (Ok(mut us), Some(r)) = (held_us.lock(), report) {
                            us.push(r.held_batches.as_micros());
                        }
                    }
                    Err(e) => {
                        eprintln!("compaction failed: {e}");
                        break;
                    }
                }
            }
            stop.store(true, Ordering::Release);
        });
        write_latencies(&store, o.writers, o.rate, &stop)
    });
    let ((outside, outside_probe), (during, during_probe)) = (outside, during);
    let (outside, during) = (summary(outside), summary(during));
    let (outside_probe, during_probe) = (summary(outside_probe), summary(during_probe));
    println!(
        "{} writers at {}, fsync {}, {} compactions (ms each: {:?}), {} registers live",
        o.writers,
        if o.rate > 0 {
            format!("{} writes/s each", o.rate)
        } else {
            "full speed".to_string()
        },
        o.fsync.name(),
        compactions.load(Ordering::Relaxed),
        compaction_ms.lock().map(|v| v.clone()).unwrap_or_default(),
        store.len()
    );
    println!(
        "writes held back by each compaction's swap (µs): {:?}",
        held_us.lock().map(|v| v.clone()).unwrap_or_default()
    );
    println!("| phase | writes | p50 µs | p99 µs | p99.9 µs | max µs |");
    println!("|---|---|---|---|---|---|");
    for (name, s) in [
        ("outside compaction", &outside),
        ("during compaction", &during),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            s.writes, s.p50, s.p99, s.p999, s.max
        );
    }
    for (name, s) in [
        ("machine: 1 ms sleep overshoot, outside", &outside_probe),
        ("machine: 1 ms sleep overshoot, during", &during_probe),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            s.writes, s.p50, s.p99, s.p999, s.max
        );
    }
    let ratio_ok = during.p999 <= 2 * outside.p999.max(1);
    let stall_ok = during.max <= 20_000;
    println!(
        "p99.9 during/outside: {:.2} (target ≤ 2): {}; longest write {} µs (target ≤ 20,000): {}",
        during.p999 as f64 / outside.p999.max(1) as f64,
        if ratio_ok { "met" } else { "MISSED" },
        during.max,
        if stall_ok { "met" } else { "MISSED" }
    );
    if ratio_ok && stall_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
