//! Abuse load to run beside a benchmark: connections that connect and send
//! nothing (`--idle`), and connections that trickle their message one byte at a
//! time (`--slow`). Each has its own thread, reconnects when the server closes
//! it, and stops when the benchmark does: every blocking call is bounded, and
//! stopping shuts the open sockets down so no thread waits out a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::{Domain, Socket, Type};

/// How many abuse connections one run may hold (one thread each).
pub const MAX_ABUSE_CONNECTIONS: usize = 10_000;
/// A connection the server closed sooner than this is reopened only after the
/// rest of this pause, so refusals do not turn into a connection flood.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest any read waits before checking whether the run is over (stopping
/// wakes it sooner by shutting the socket down).
const READ_SLICE: Duration = Duration::from_secs(5);
const STACK_BYTES: usize = 64 * 1024;

/// The request a slow connection trickles on the open port.
const SLOW_REQUEST: &[u8] = b"W0FAC0B1234";

/// A TLS 1.2 ClientHello (one cipher suite, no extensions) for slow connections
/// to the TLS port: the server cannot tell it from a slow board until the end.
const SLOW_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x2d, // handshake record, 45 bytes
    0x01, 0x00, 0x00, 0x29, // ClientHello, 41 bytes
    0x03, 0x03, // TLS 1.2
    0x57, 0x57, 0x45, 0x50, 0x57, 0x57, 0x45, 0x50, 0x57, 0x57, 0x45, 0x50, 0x57, 0x57, 0x45, 0x50,
    0x57, 0x57, 0x45, 0x50, 0x57, 0x57, 0x45, 0x50, 0x57, 0x57, 0x45, 0x50, 0x57, 0x57, 0x45,
    0x50, // random
    0x00, // no session id
    0x00, 0x02, 0xc0, 0x2f, // ECDHE-RSA-AES128-GCM-SHA256
    0x01, 0x00, // no compression
];

/// What the abuse threads do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseConfig {
    /// Connections that connect and send nothing.
    pub idle: usize,
    /// Connections that send their message one byte per `slow_interval`.
    pub slow: usize,
    pub slow_interval: Duration,
    /// Loopback source addresses to spread the connections over (the system's
    /// choice when empty).
    pub from: Vec<IpAddr>,
}

impl AbuseConfig {
    pub fn none() -> AbuseConfig {
        AbuseConfig {
            idle: 0,
            slow: 0,
            slow_interval: Duration::from_millis(super::DEFAULT_SLOW_INTERVAL_MS),
            from: Vec::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.idle + self.slow > 0
    }
}

/// What one kind of abuse connection went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AbuseCounts {
    /// Connections opened.
    pub opened: u64,
    /// Connections the server closed (with or without a reply first).
    pub closed_by_server: u64,
    /// Of those, how many got some reply before the close (an `X`, or for a
    /// slow connection that got its whole message through, the answer).
    pub answered: u64,
    /// Connection attempts that failed.
    pub connect_failed: u64,
}

/// Both kinds, as the report shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AbuseReport {
    pub idle: AbuseCounts,
    pub slow: AbuseCounts,
}

#[derive(Default)]
struct SharedCounts {
    opened: AtomicU64,
    closed_by_server: AtomicU64,
    answered: AtomicU64,
    connect_failed: AtomicU64,
}

impl SharedCounts {
    fn snapshot(&self) -> AbuseCounts {
        AbuseCounts {
            opened: self.opened.load(Ordering::Relaxed),
            closed_by_server: self.closed_by_server.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            connect_failed: self.connect_failed.load(Ordering::Relaxed),
        }
    }
}

/// The running abuse threads.
pub struct Abuse {
    stop: Arc<AtomicBool>,
    /// Each thread's open socket, so stopping can wake it.
    open: Arc<Vec<Mutex<Option<TcpStream>>>>,
    threads: Vec<JoinHandle<()>>,
    idle: Arc<SharedCounts>,
    slow: Arc<SharedCounts>,
}

#[derive(Clone, Copy)]
enum Kind {
    Idle,
    Slow { interval: Duration, tls: bool },
}

/// Starts the abuse connections against the first of `targets` that accepts.
pub fn start(targets: &[SocketAddr], tls: bool, config: &AbuseConfig) -> std::io::Result<Abuse> {
    let targets: Arc<[SocketAddr]> = targets.into();
    let total = config.idle + config.slow;
    let stop = Arc::new(AtomicBool::new(false));
    let open: Arc<Vec<Mutex<Option<TcpStream>>>> =
        Arc::new((0..total).map(|_| Mutex::new(None)).collect());
    let idle = Arc::new(SharedCounts::default());
    let slow = Arc::new(SharedCounts::default());
    let mut abuse = Abuse {
        stop,
        open,
        threads: Vec::with_capacity(total),
        idle,
        slow,
    };
    for slot in 0..total {
        let (kind, counts) = if slot < config.idle {
            (Kind::Idle, Arc::clone(&abuse.idle))
        } else {
            (
                Kind::Slow {
                    interval: config.slow_interval,
                    tls,
                },
                Arc::clone(&abuse.slow),
            )
        };
        let source = (!config.from.is_empty()).then(|| config.from[slot % config.from.len()]);
        let connection = Connection {
            targets: Arc::clone(&targets),
            source,
            slot,
            stop: Arc::clone(&abuse.stop),
            open: Arc::clone(&abuse.open),
            counts,
        };
        let spawned = std::thread::Builder::new()
            .name("wwep-abuse".into())
            .stack_size(STACK_BYTES)
            .spawn(move || connection.run(kind));
        match spawned {
            Ok(handle) => abuse.threads.push(handle),
            Err(e) => {
                abuse.finish();
                return Err(e);
            }
        }
    }
    Ok(abuse)
}

impl Abuse {
    /// Stops every abuse connection, waits for the threads and returns the counts.
    pub fn finish(mut self) -> AbuseReport {
        self.stop.store(true, Ordering::SeqCst);
        for slot in self.open.iter() {
            if let Some(stream) = &*slot.lock().unwrap_or_else(|p| p.into_inner()) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        AbuseReport {
            idle: self.idle.snapshot(),
            slow: self.slow.snapshot(),
        }
    }
}

struct Connection {
    targets: Arc<[SocketAddr]>,
    source: Option<IpAddr>,
    slot: usize,
    stop: Arc<AtomicBool>,
    open: Arc<Vec<Mutex<Option<TcpStream>>>>,
    counts: Arc<SharedCounts>,
}

/// How a wait on an abuse connection ended.
enum Wait {
    /// Nothing arrived in time; the connection is still open.
    Quiet,
    /// The server closed it, after sending some bytes or none.
    Closed { answered: bool },
    /// The run is over.
    Stopped,
}

impl Connection {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run(&self, kind: Kind) {
        while !self.stopped() {
            let opened = Instant::now();
            let Some(mut stream) = self.connect() else {
                if self.stopped() {
                    return;
                }
                self.counts.connect_failed.fetch_add(1, Ordering::Relaxed);
                self.pause_until(opened + RECONNECT_PAUSE);
                continue;
            };
            self.counts.opened.fetch_add(1, Ordering::Relaxed);
            let end = match kind {
                Kind::Idle => self.wait(&mut stream, None),
                Kind::Slow { interval, tls } => {
                    let message = if tls { SLOW_CLIENT_HELLO } else { SLOW_REQUEST };
                    self.trickle(&mut stream, message, interval)
                }
            };
            *self.open[self.slot]
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            match end {
                Wait::Closed { answered } => {
                    self.counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    if answered {
                        self.counts.answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Wait::Stopped => return,
                Wait::Quiet => {}
            }
            self.pause_until(opened + RECONNECT_PAUSE);
        }
    }

    /// Connects and registers the socket so that stopping can shut it down.
    fn connect(&self) -> Option<TcpStream> {
        let stream: TcpStream = self
            .targets
            .iter()
            .find_map(|&target| self.connect_to(target))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT)).ok()?;
        let mut slot = self.open[self.slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Checked under the lock that `finish` takes after setting the flag: either
        // this socket is registered before `finish` looks, or the flag is seen here.
        if self.stopped() {
            return None;
        }
        *slot = Some(stream.try_clone().ok()?);
        Some(stream)
    }

    fn connect_to(&self, target: SocketAddr) -> Option<TcpStream> {
        let socket = Socket::new(Domain::for_address(target), Type::STREAM, None).ok()?;
        if let Some(ip) = self.source {
            socket.bind(&SocketAddr::new(ip, 0).into()).ok()?;
        }
        socket
            .connect_timeout(&target.into(), CONNECT_TIMEOUT)
            .ok()?;
        Some(socket.into())
    }

    /// Sends `message` one byte at a time, `interval` apart, then waits for the
    /// answer; ends early when the server closes the connection.
    fn trickle(&self, stream: &mut TcpStream, message: &[u8], interval: Duration) -> Wait {
        for byte in message {
            if stream.write_all(std::slice::from_ref(byte)).is_err() {
                return if self.stopped() {
                    Wait::Stopped
                } else {
                    Wait::Closed { answered: false }
                };
            }
            match self.wait(stream, Some(interval)) {
                Wait::Quiet => {}
                end => return end,
            }
        }
        self.wait(stream, None)
    }

    /// Reads until the server closes the connection, `limit` passes (`Quiet`) or
    /// the run stops.
    fn wait(&self, stream: &mut TcpStream, limit: Option<Duration>) -> Wait {
        let until = limit.map(|l| Instant::now() + l);
        let mut answered = false;
        let mut buf = [0u8; 256];
        loop {
            if self.stopped() {
                return Wait::Stopped;
            }
            let slice = match until {
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Wait::Quiet;
                    }
                    left.min(READ_SLICE)
                }
                None => READ_SLICE,
            };
            if stream.set_read_timeout(Some(slice)).is_err() {
                return Wait::Closed { answered };
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => answered = true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if self.stopped() {
            Wait::Stopped
        } else {
            Wait::Closed { answered }
        }
    }

    /// Sleeps until `until` in short steps, returning early when the run stops.
    fn pause_until(&self, until: Instant) {
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slow_client_hello_is_one_well_formed_record() {
        let record_len = usize::from(u16::from_be_bytes([
            SLOW_CLIENT_HELLO[3],
            SLOW_CLIENT_HELLO[4],
        ]));
        assert_eq!(SLOW_CLIENT_HELLO.len(), 5 + record_len);
        let hello_len = usize::from(SLOW_CLIENT_HELLO[7]) << 8 | usize::from(SLOW_CLIENT_HELLO[8]);
        assert_eq!(record_len, 4 + hello_len);
    }

    #[test]
    fn abuse_against_a_listener_that_closes_everything() {
        // A listener that answers X and closes: every idle and slow connection is
        // closed by the server and reopened, and finish() returns promptly.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let until = Instant::now() + Duration::from_secs(10);
            let mut accepted = 0;
            while accepted < 6 && Instant::now() < until {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"X");
                        accepted += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            accepted
        });
        let config = AbuseConfig {
            idle: 2,
            slow: 1,
            slow_interval: Duration::from_millis(50),
            from: vec!["127.0.0.1".parse().unwrap()],
        };
        let abuse = start(&[target], false, &config).unwrap();
        assert_eq!(server.join().unwrap(), 6);
        let deadline = Instant::now() + Duration::from_secs(10);
        while abuse.idle.snapshot().closed_by_server + abuse.slow.snapshot().closed_by_server < 6
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stopping = Instant::now();
        let report = abuse.finish();
        assert!(stopping.elapsed() < Duration::from_secs(2));
        assert!(report.idle.closed_by_server >= 4, "{report:?}");
        assert!(report.slow.closed_by_server >= 2, "{report:?}");
        assert_eq!(
            report.idle.answered, report.idle.closed_by_server,
            "{report:?}"
        );
    }
}
