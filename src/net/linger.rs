//! Lingering closes without holding a worker.
//!
//! After its reply the server half-closes and must keep reading (and discarding)
//! what the client still sends until the client closes, or the close would turn
//! into a reset that can destroy the reply. Most clients close within a
//! millisecond; a worker blocked on that read costs a sleep and a wake-up per
//! connection. Instead one thread holds the half-closed sockets and polls them
//! with non-blocking reads every millisecond until each client has closed
//! or its linger time is up.
//!
//! A socket in the waiting room's epoll set lingers there instead: the
//! client's close is a readiness like any other, and the worker that sees it
//! finishes the close (see `waiting_room`); its place is counted here
//! ([`Holds`]), so all lingering closes together stay within one capacity.
//! What never joined that set — the connections the open port's accept thread
//! serves itself, refusals at accept — lingers here.
//!
//! An accept thread that serves connections itself finishes their closes
//! itself too ([`finish_own_closes`]): it looks at them between its other
//! work, when the clients have usually closed, which spares the hand-over (a
//! wake-up of the lingering thread per close) and that thread's bursts of
//! closes landing on a core someone is waiting for. The lingering thread takes
//! what a thread holds beyond its share, and what it still holds when it
//! stops.

use rustix::net::RecvFlags;
use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often held sockets are polled: short, so each round is small and does not
/// hold up the transactions around it (5 ms rounds raised p99 at concurrency 1
/// from about 0.2 to 0.3 ms here).
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Reads per socket per poll, so one client streaming garbage cannot stall the rest.
const READS_PER_POLL: usize = 8;

/// What a non-blocking drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The client closed (or the connection failed): nothing left to protect.
    Closed,
    /// The client is still connected and quiet.
    Open,
}

/// Reads and discards whatever has arrived, without waiting.
pub(crate) fn drain_now(stream: &TcpStream) -> Drained {
    let socket = socket2::SockRef::from(stream);
    let mut scratch = [MaybeUninit::<u8>::uninit(); 1024];
    for _ in 0..READS_PER_POLL {
        match socket.recv_with_flags(&mut scratch, RecvFlags::DONTWAIT.bits() as i32) {
            Ok(0) => return Drained::Closed,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Drained::Closed,
        }
    }
    Drained::Open
}

struct Queue {
    incoming: Vec<(TcpStream, Instant)>,
    /// The thread is waiting for work (not polling).
    idle: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
    stop: AtomicBool,
    held: AtomicUsize,
    capacity: usize,
}

impl Inner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The thread that finishes lingering closes.
pub struct Lingerer {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Lingerer {
    /// Starts the thread; at most `capacity` sockets are held at once.
    pub fn start(capacity: usize) -> io::Result<Lingerer> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                incoming: Vec::new(),
                idle: true,
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            capacity,
        });
        let for_thread = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("wwep-linger".to_string())
            .spawn(move || run(&for_thread))?;
        Ok(Lingerer {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Finishes the close of a stream whose sending side is already shut down,
    /// on the linger thread. When that holds `capacity` sockets already, the
    /// stream is closed now: a worker never waits on a client.
    ///
    /// The caller does not look first whether the client has closed: it almost
    /// never has, this soon after its reply left (113 of 60,000 connections at
    /// concurrency 1 on the open port), so the look cost a system call per
    /// connection for nothing.
    pub fn close(&self, stream: TcpStream, linger: Duration) {
        let until = Instant::now() + linger;
        if !self.inner.stop.load(Ordering::Acquire)
            && self.inner.held.fetch_add(1, Ordering::AcqRel) < self.inner.capacity
        {
            let Some((stream, until)) = OWN.with_borrow_mut(|own| match own {
                Some(own) if own.len() < OWN_CAPACITY => {
                    own.push(OwnClose {
                        stream,
                        until,
                        next_look: until - linger + FIRST_LOOK,
                    });
                    None
                }
                _ => Some((stream, until)),
            }) else {
                return;
            };
            let mut queue = self.inner.queue();
            queue.incoming.push((stream, until));
            if queue.idle {
                queue.idle = false;
                self.inner.wake.notify_one();
            }
            return;
        }
        self.inner.held.fetch_sub(1, Ordering::AcqRel);
    }

    /// Sockets held now (the waiting room's lingering ones included).
    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::Acquire)
    }

    /// The count of held sockets, for the waiting room, which holds the
    /// lingering closes of the sockets in its epoll set itself, within the
    /// same capacity.
    pub(crate) fn holds(&self) -> Holds {
        Holds(Arc::clone(&self.inner))
    }

    /// Closes every held socket and ends the thread.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Lingerer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A place among the lingering closes, taken by whoever holds a close outside
/// the lingerer (the waiting room), so that all of them together stay within
/// the capacity the open-file limit was raised for.
#[derive(Clone)]
pub(crate) struct Holds(Arc<Inner>);

impl Holds {
    /// Takes a place; false when every place is taken (or the lingerer has
    /// stopped): the socket is then closed at once.
    pub(crate) fn take(&self) -> bool {
        let inner = &self.0;
        if inner.stop.load(Ordering::Acquire) {
            return false;
        }
        if inner.held.fetch_add(1, Ordering::AcqRel) < inner.capacity {
            return true;
        }
        inner.held.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Gives a place back (its socket is closed).
    pub(crate) fn give_back(&self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The most sockets one accept thread finishes itself; more go to the lingering
/// thread.
const OWN_CAPACITY: usize = 256;

/// How long after its reply an accept thread first looks whether a client has
/// closed: most have by then, and a look before costs a read for nothing.
const FIRST_LOOK: Duration = Duration::from_millis(1);

/// A socket whose close a thread finishes itself.
struct OwnClose {
    stream: TcpStream,
    until: Instant,
    next_look: Instant,
}

thread_local! {
    static OWN: RefCell<Option<Vec<OwnClose>>> = const { RefCell::new(None) };
}

/// From now on, the lingering closes this thread starts are finished by this
/// thread, in [`sweep_own_closes`].
pub(crate) fn finish_own_closes() {
    OWN.with_borrow_mut(|own| *own = Some(Vec::new()));
}

/// Looks at the sockets this thread holds whose look is due (0.25 ms after the
/// reply, then every millisecond) and closes those whose client has closed or
/// whose linger is up. Returns how long the thread may wait before the next
/// look is due (`None`: nothing held).
pub(crate) fn sweep_own_closes(lingerer: &Lingerer) -> Option<Duration> {
    OWN.with_borrow_mut(|own| {
        let own = own.as_mut()?;
        let now = Instant::now();
        let before = own.len();
        let mut next = None::<Instant>;
        own.retain_mut(|held| {
            if held.next_look > now {
                next = Some(next.map_or(held.next_look, |n| n.min(held.next_look)));
                return true;
            }
            let open = now < held.until && drain_now(&held.stream) == Drained::Open;
            if open {
                held.next_look = now + POLL_INTERVAL;
                next = Some(next.map_or(held.next_look, |n| n.min(held.next_look)));
            }
            open
        });
        lingerer
            .inner
            .held
            .fetch_sub(before - own.len(), Ordering::AcqRel);
        next.map(|at| at.saturating_duration_since(now))
    })
}

/// Gives this thread's held sockets to the lingering thread (the thread is
/// ending).
pub(crate) fn hand_over_own_closes(lingerer: &Lingerer) {
    let held = OWN.with_borrow_mut(|own| own.take().unwrap_or_default());
    give(lingerer, held);
}

fn give(lingerer: &Lingerer, held: Vec<OwnClose>) {
    if held.is_empty() {
        return;
    }
    let mut queue = lingerer.inner.queue();
    queue
        .incoming
        .extend(held.into_iter().map(|held| (held.stream, held.until)));
    if queue.idle {
        queue.idle = false;
        lingerer.inner.wake.notify_one();
    }
}

fn run(inner: &Inner) {
    let mut held: Vec<(TcpStream, Instant)> = Vec::new();
    loop {
        {
            let mut queue = inner.queue();
            while held.is_empty()
                && queue.incoming.is_empty()
                && !inner.stop.load(Ordering::Acquire)
            {
                queue.idle = true;
                queue = inner.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            held.append(&mut queue.incoming);
        }
        if inner.stop.load(Ordering::Acquire) {
            let n = held.len();
            held.clear();
            inner.held.fetch_sub(n, Ordering::AcqRel);
            let mut queue = inner.queue();
            let late = queue.incoming.len();
            queue.incoming.clear();
            inner.held.fetch_sub(late, Ordering::AcqRel);
            return;
        }
        let now = Instant::now();
        let before = held.len();
        held.retain(|(stream, until)| now < *until && drain_now(stream) == Drained::Open);
        inner.held.fetch_sub(before - held.len(), Ordering::AcqRel);
        if !held.is_empty() {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    #[test]
    fn late_bytes_are_read_so_the_reply_survives() {
        let lingerer = Lingerer::start(16).unwrap();
        let (server, mut client) = pair();
        (&server).write_all(b"A0FAC0B1234").unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        lingerer.close(server, Duration::from_secs(2));
        assert_eq!(lingerer.held(), 1, "the client has not closed yet");
        // The client sends more after the reply, then reads it: no reset.
        client.write_all(b"\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"A0FAC0B1234");
        assert!(client.take_error().unwrap().is_none());
        drop(client);
        assert!(
            wait_released(&lingerer, Duration::from_secs(2)),
            "released once the client closed"
        );
    }

    fn wait_released(lingerer: &Lingerer, within: Duration) -> bool {
        let until = Instant::now() + within;
        while lingerer.held() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        lingerer.held() == 0
    }

    #[test]
    fn a_closed_client_is_finished_at_the_next_poll_and_a_silent_one_at_the_linger() {
        let lingerer = Lingerer::start(16).unwrap();
        let (server, client) = pair();
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
        server.shutdown(Shutdown::Write).unwrap();
        lingerer.close(server, Duration::from_secs(5));
        assert!(
            wait_released(&lingerer, Duration::from_secs(2)),
            "released long before its linger of 5 s"
        );
        let (server, _client) = pair();
        server.shutdown(Shutdown::Write).unwrap();
        lingerer.close(server, Duration::from_millis(30));
        assert_eq!(lingerer.held(), 1);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(lingerer.held(), 0, "dropped when the linger ran out");
    }

    #[test]
    fn a_thread_that_finishes_its_own_closes_reads_late_bytes_and_releases_the_socket() {
        let lingerer = Lingerer::start(16).unwrap();
        let (server, mut client) = pair();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                finish_own_closes();
                (&server).write_all(b"A0FAC0B1234").unwrap();
                server.shutdown(Shutdown::Write).unwrap();
                lingerer.close(server, Duration::from_secs(5));
                assert_eq!(lingerer.held(), 1);
                assert_eq!(
                    lingerer.inner.queue().incoming.len(),
                    0,
                    "kept by this thread, not handed over"
                );
                // Bytes after the reply, then the client's close: both read
                // by the sweeps, so the close is a FIN and the socket goes.
                client.write_all(b"\r\n").unwrap();
                let mut reply = Vec::new();
                client.read_to_end(&mut reply).unwrap();
                assert_eq!(reply, b"A0FAC0B1234");
                assert!(client.take_error().unwrap().is_none());
                drop(client);
                let until = Instant::now() + Duration::from_secs(2);
                while let Some(wait) = sweep_own_closes(&lingerer) {
                    assert!(Instant::now() < until, "still held after 2 s");
                    assert!(wait <= POLL_INTERVAL);
                    std::thread::sleep(wait);
                }
                assert_eq!(lingerer.held(), 0);
            });
        });
    }

    #[test]
    fn a_thread_that_ends_hands_its_closes_to_the_lingering_thread() {
        let lingerer = Lingerer::start(16).unwrap();
        let (server, client) = pair();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                finish_own_closes();
                server.shutdown(Shutdown::Write).unwrap();
                lingerer.close(server, Duration::from_secs(5));
                hand_over_own_closes(&lingerer);
            });
        });
        assert_eq!(lingerer.held(), 1);
        drop(client);
        assert!(wait_released(&lingerer, Duration::from_secs(2)));
    }

    #[test]
    fn when_full_the_caller_closes_at_once_and_stop_releases_everything() {
        let lingerer = Lingerer::start(1).unwrap();
        let (a, _ca) = pair();
        let (b, _cb) = pair();
        lingerer.close(a, Duration::from_secs(10));
        let started = Instant::now();
        lingerer.close(b, Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the caller did not linger"
        );
        assert_eq!(lingerer.held(), 1);
        lingerer.stop();
        assert_eq!(lingerer.held(), 0);
    }
}
