//! The watchers of `/api/events` under measurement (`make bench`, through
//! scripts/bench-events.sh), against a running `wwep-server --http`:
//!
//! - `latency --plain ADDR --http ADDR [--writes 1000] [--interval-ms 2]
//!   [--load N]`: a `curl -N`-like watcher (a socket reading the stream as
//!   it comes) and one writer making `--writes` writes, one every
//!   `--interval-ms` (or as soon as the previous one is answered, when that
//!   is later), each a new connection as a board makes it; for each write,
//!   the time from its `A`
//!   (read by the writer) to its event (read by the watcher). With `--load
//!   N`, N more writers keep the server busy meanwhile. Prints p50, p99 and
//!   the slowest, and `PASS` or `FAIL` against `--p99-ms` (default 50);
//!   exits 1 on `FAIL`.
//! - `stuck --http ADDR [--watchers 10] [--seconds S]`: holds that many
//!   watchers that never read (a small receive window; reopened whenever the
//!   server drops one), for S seconds; prints how many it reopened.
//! - `reading --http ADDR [--watchers 10] [--seconds S]`: as many watchers
//!   that read and discard what comes.
//!
//! `cargo run --release --example events_bench -- MODE [FLAGS]`

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);
/// The device the latency writer uses; the load writers use others.
const PROBE_DEVICE: u16 = 0xBE00;

struct Options {
    mode: String,
    plain: Option<SocketAddr>,
    http: Option<SocketAddr>,
    writes: u32,
    interval: Duration,
    load: u16,
    p99_ms: f64,
    watchers: usize,
    seconds: f64,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .ok_or("give a mode: latency, stuck or reading")?;
    let mut o = Options {
        mode,
        plain: None,
        http: None,
        writes: 1000,
        interval: Duration::from_millis(2),
        load: 0,
        p99_ms: 50.0,
        watchers: 10,
        seconds: 5.0,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--plain" => o.plain = Some(value.parse().map_err(|_| bad())?),
            "--http" => o.http = Some(value.parse().map_err(|_| bad())?),
            "--writes" => o.writes = value.parse().map_err(|_| bad())?,
            "--interval-ms" => {
                let ms: f64 = value.parse().map_err(|_| bad())?;
                if !(ms.is_finite() && ms >= 0.0) {
                    return Err(bad());
                }
                o.interval = Duration::from_secs_f64(ms / 1000.0);
            }
            "--load" => o.load = value.parse().map_err(|_| bad())?,
            "--p99-ms" => o.p99_ms = value.parse().map_err(|_| bad())?,
            "--watchers" => o.watchers = value.parse().map_err(|_| bad())?,
            "--seconds" => o.seconds = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.http.is_none() {
        return Err("--http ADDR is needed".into());
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if o.writes == 0 || !positive(o.seconds) {
        return Err("--writes and --seconds must be above 0".into());
    }
    Ok(o)
}

/// Opens `/api/events` and reads its head; the stream after it.
fn watch(http: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect_timeout(&http, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /api/events HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        if reader.read_line(&mut head)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(head));
    }
    Ok(reader)
}

/// One write on a new connection; when its `A` was read, or `None` when the
/// reply was anything else.
fn write(plain: SocketAddr, request: &str) -> Option<Instant> {
    let mut stream = TcpStream::connect_timeout(&plain, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 32];
    let mut at = None;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                at.get_or_insert_with(Instant::now);
                reply.extend_from_slice(&buf[..n]);
            }
            Err(_) => return None,
        }
    }
    (reply.first() == Some(&b'A') && reply[1..] == request.as_bytes()[1..]).then_some(at?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

fn latency(o: &Options) -> Result<ExitCode, String> {
    let plain = o.plain.ok_or("--plain ADDR is needed")?;
    let http = o.http.ok_or("--http ADDR is needed")?;
    let mut stream = watch(http).map_err(|e| format!("cannot watch {http}: {e}"))?;
    // The watcher notes when each of the probe's events arrives, keyed by
    // register and value (unique per write).
    let arrived: Arc<Mutex<HashMap<(u8, u16), Instant>>> = Arc::default();
    let watcher = {
        let arrived = Arc::clone(&arrived);
        let wanted = o.writes as usize;
        std::thread::spawn(move || {
            let probe = format!("\"device\":\"{PROBE_DEVICE:04X}\"");
            let mut line = String::new();
            let mut seen = 0;
            while seen < wanted {
                line.clear();
                match stream.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let now = Instant::now();
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                if !data.contains(&probe) {
                    continue;
                }
                let Ok(event) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                let hex = |name: &str| {
                    let text = event.get(name)?.as_str()?;
                    u16::from_str_radix(text, 16).ok()
                };
                let register = hex("register").and_then(|r| u8::try_from(r).ok());
                let value = hex("value");
                if let (Some(register), Some(value)) = (register, value) {
                    arrived
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((register, value), now);
                    seen += 1;
                }
            }
        })
    };
    // The load: writers to other devices, flat out, until the probe is done.
    let stop = Arc::new(AtomicBool::new(false));
    let loaded = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..o.load)
        .map(|t| {
            let (stop, loaded) = (Arc::clone(&stop), Arc::clone(&loaded));
            std::thread::spawn(move || {
                let mut i: u32 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let request = format!("W{:04X}{:02X}{:04X}", t, i % 256, i % 65536);
                    if write(plain, &request).is_some() {
                        loaded.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(if o.load > 0 { 500 } else { 0 }));
    let began = Instant::now();
    let mut acked: Vec<((u8, u16), Instant)> = Vec::with_capacity(o.writes as usize);
    for i in 0..o.writes {
        let slot = began + o.interval * i;
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let key = ((i % 256) as u8, (i / 256) as u16);
        let request = format!("W{PROBE_DEVICE:04X}{:02X}{:04X}", key.0, key.1);
        match write(plain, &request) {
            Some(at) => acked.push((key, at)),
            None => return Err(format!("{request} was not answered with its A")),
        }
    }
    let took = began.elapsed();
    // Every event is due by now; give a slow machine a moment.
    let until = Instant::now() + Duration::from_secs(5);
    while arrived.lock().unwrap_or_else(|p| p.into_inner()).len() < acked.len()
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.join();
    }
    let arrived = arrived.lock().unwrap_or_else(|p| p.into_inner()).clone();
    drop(watcher);
    let mut latencies = Vec::with_capacity(acked.len());
    let mut missing = 0;
    for (key, at) in &acked {
        match arrived.get(key) {
            // The event may be read before the writer's A: then it took 0.
            Some(seen) => latencies.push(seen.saturating_duration_since(*at)),
            None => missing += 1,
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99, max) = if latencies.is_empty() {
        (Duration::MAX, Duration::MAX, Duration::MAX)
    } else {
        (
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
        )
    };
    let pass = missing == 0 && ms(p99) < o.p99_ms;
    println!(
        "A to event, {} writes in {:.2} s (one every {} ms at most){}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {missing} events missing; p99 under {} ms: {}",
        acked.len(),
        took.as_secs_f64(),
        o.interval.as_secs_f64() * 1000.0,
        if o.load > 0 {
            format!(
                " beside {} writers ({} writes)",
                o.load,
                loaded.load(Ordering::Relaxed)
            )
        } else {
            String::new()
        },
        ms(p50),
        ms(p99),
        ms(max),
        o.p99_ms,
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Holds `--watchers` watchers for `--seconds`: `stuck` ones never read (a
/// 4 KiB receive window) and are reopened when dropped; `reading` ones read
/// and discard.
fn hold(o: &Options, reading: bool) -> Result<ExitCode, String> {
    let http = o.http.ok_or("--http ADDR is needed")?;
    let until = Instant::now() + Duration::from_secs_f64(o.seconds);
    let reopened = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..o.watchers)
        .map(|_| {
            let reopened = Arc::clone(&reopened);
            std::thread::spawn(move || {
                while Instant::now() < until {
                    let Ok(stream) = open(http, reading) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let mut stream = stream;
                    let mut buf = [0u8; 16 * 1024];
                    if reading {
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                        while Instant::now() < until {
                            match stream.read(&mut buf) {
                                Ok(0) => break,
                                Ok(_) => {}
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    } else {
                        // Never read; a write that fails says the server
                        // has let go.
                        while Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(100));
                            if stream.write(b"\n").is_err() {
                                break;
                            }
                        }
                    }
                    if Instant::now() < until {
                        reopened.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    println!(
        "{} {} watchers held for {:.1} s; reopened {} times",
        o.watchers,
        if reading { "reading" } else { "stuck" },
        o.seconds,
        reopened.load(Ordering::Relaxed)
    );
    Ok(ExitCode::SUCCESS)
}

/// A watcher's connection, its head sent; a stuck one with a small window.
fn open(http: SocketAddr, reading: bool) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(http), Type::STREAM, None)?;
    if !reading {
        socket.set_recv_buffer_size(4096)?;
    }
    socket.connect_timeout(&http.into(), TIMEOUT)?;
    let mut stream: TcpStream = socket.into();
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /api/events HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    Ok(stream)
}

fn main() -> ExitCode {
    let result = options().and_then(|o| match o.mode.as_str() {
        "latency" => latency(&o),
        "stuck" => hold(&o, false),
        "reading" => hold(&o, true),
        other => Err(format!("unknown mode {other}: latency, stuck or reading")),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("events_bench: {e}");
            ExitCode::from(2)
        }
    }
}
