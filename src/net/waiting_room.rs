//! The waiting room: connections that have nothing for a worker to do yet.
//!
//! A connection waits here — costing a file descriptor and a few hundred bytes,
//! never a thread — until its socket is ready or its timer fires (the end of the
//! gap after a started message, or its deadline), then goes to the pool. One
//! thread runs a readiness poller (mio: epoll on Linux) over every waiting
//! socket. When the connection table is full, the oldest connection that has
//! sent nothing is shed from here to make room for a newcomer.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use log::{debug, error};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

const WAKER: Token = Token(0);

/// Why a waiting connection is handed back now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Just accepted.
    Accepted,
    /// Its socket became ready.
    Ready,
    /// Its timer (gap or deadline) fired.
    Timer,
    /// The server is stopping and the connection has sent nothing: answer now.
    Shutdown,
}

/// What the room needs to know of a connection it holds.
pub(crate) trait Waiter: Send + 'static {
    /// Its key in the room; never reused.
    fn token(&self) -> Token;
    /// The socket to watch (`None` once closed).
    fn fd(&self) -> Option<RawFd>;
    /// Nothing has arrived on it yet: the first to go when the table is full.
    fn is_silent(&self) -> bool;
    /// Whether its socket is registered with the room's poller now.
    fn registered(&mut self) -> &mut bool;
}

struct Parked<S> {
    session: S,
    until: Instant,
}

struct Room<S> {
    parked: HashMap<Token, Parked<S>>,
    /// Parked connections that have sent nothing, oldest (lowest token) first.
    silent: BTreeSet<Token>,
    /// When each parked connection must be looked at; entries whose instant no
    /// longer matches the parked connection's are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, Token)>>,
    /// What the poller sleeps until now (`None`: no timer).
    next_wake: Option<Instant>,
    /// Answer every silent connection at once (the server is stopping).
    flush_silent: bool,
    stop: bool,
}

impl<S> Default for Room<S> {
    fn default() -> Self {
        Room {
            parked: HashMap::new(),
            silent: BTreeSet::new(),
            timers: BinaryHeap::new(),
            next_wake: None,
            flush_silent: false,
            stop: false,
        }
    }
}

impl<S> Room<S> {
    fn take(&mut self, token: Token) -> Option<S> {
        let parked = self.parked.remove(&token)?;
        self.silent.remove(&token);
        Some(parked.session)
    }
}

pub(crate) struct WaitingRoom<S> {
    registry: Registry,
    waker: Waker,
    room: Mutex<Room<S>>,
}

impl<S: Waiter> WaitingRoom<S> {
    /// The room and the poller its thread will run.
    pub(crate) fn new() -> io::Result<(WaitingRoom<S>, Poll)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok((
            WaitingRoom {
                registry,
                waker,
                room: Mutex::new(Room::default()),
            },
            poll,
        ))
    }

    /// A panic never leaves the room half-updated (each change is a few map
    /// operations that cannot panic), so a poisoned lock is safe to use.
    fn room(&self) -> MutexGuard<'_, Room<S>> {
        self.room.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks a session until its socket is ready for `interest` or `until`.
    pub(crate) fn park(&self, mut session: S, interest: Interest, until: Instant) {
        let Some(fd) = session.fd() else {
            return;
        };
        let token = session.token();
        let mut room = self.room();
        // Registration happens after the read that would block, and epoll reports
        // a socket that is already ready when it is (re)registered: no wake-up is
        // lost in between.
        let registered = if *session.registered() {
            self.registry
                .reregister(&mut SourceFd(&fd), token, interest)
        } else {
            self.registry.register(&mut SourceFd(&fd), token, interest)
        };
        if let Err(e) = registered {
            drop(room);
            debug!("cannot wait on a connection: {e}");
            return;
        }
        *session.registered() = true;
        if session.is_silent() {
            room.silent.insert(token);
        }
        room.timers.push(Reverse((until, token)));
        room.parked.insert(token, Parked { session, until });
        let wake = room.next_wake.is_none_or(|at| until < at);
        if wake {
            room.next_wake = Some(until);
        }
        drop(room);
        if wake {
            let _ = self.waker.wake();
        }
    }

    /// Stops watching a session's socket (before it is closed or handed on).
    pub(crate) fn forget(&self, session: &mut S) {
        let fd = session.fd();
        self.forget_fd(session.registered(), fd);
    }

    /// [`forget`](WaitingRoom::forget) for a socket already taken out of its
    /// connection (a failed handshake hands it back on its own).
    pub(crate) fn forget_fd(&self, registered: &mut bool, fd: Option<RawFd>) {
        if std::mem::replace(registered, false)
            && let Some(fd) = fd
        {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
    }

    /// Takes out the oldest connection that has sent nothing, if any.
    pub(crate) fn shed_oldest_silent(&self) -> Option<S> {
        let mut room = self.room();
        let token = room.silent.first().copied()?;
        room.take(token)
    }

    /// Connections waiting now.
    pub(crate) fn len(&self) -> usize {
        self.room().parked.len()
    }

    /// The server is stopping: every connection that has sent nothing is
    /// answered now rather than at its deadline.
    pub(crate) fn flush_silent(&self) {
        self.room().flush_silent = true;
        let _ = self.waker.wake();
    }

    /// Ends the poller thread; connections still parked are closed.
    pub(crate) fn stop(&self) {
        self.room().stop = true;
        let _ = self.waker.wake();
    }

    /// The poller thread: hands each connection whose socket or timer is due to
    /// `dispatch` (the pool).
    pub(crate) fn run(&self, mut poll: Poll, mut dispatch: impl FnMut(S, Wake)) {
        let mut events = Events::with_capacity(1024);
        let mut due: Vec<(S, Wake)> = Vec::new();
        loop {
            let timeout = {
                let mut room = self.room();
                if room.stop {
                    let parked: Vec<Parked<S>> = room.parked.drain().map(|(_, p)| p).collect();
                    room.silent.clear();
                    drop(room);
                    for mut p in parked {
                        self.forget(&mut p.session);
                    }
                    return;
                }
                let next = room.timers.peek().map(|Reverse((at, _))| *at);
                room.next_wake = next;
                next.map(|at| at.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!("waiting room: poll failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                continue;
            }
            {
                let mut room = self.room();
                for event in events.iter() {
                    let token = event.token();
                    if token == WAKER {
                        continue;
                    }
                    if let Some(session) = room.take(token) {
                        due.push((session, Wake::Ready));
                    }
                }
                let now = Instant::now();
                while let Some(&Reverse((at, token))) = room.timers.peek() {
                    if at > now {
                        break;
                    }
                    room.timers.pop();
                    if room.parked.get(&token).is_some_and(|p| p.until == at)
                        && let Some(session) = room.take(token)
                    {
                        due.push((session, Wake::Timer));
                    }
                }
                if std::mem::take(&mut room.flush_silent) {
                    let silent: Vec<Token> = room.silent.iter().copied().collect();
                    for token in silent {
                        if let Some(session) = room.take(token) {
                            due.push((session, Wake::Shutdown));
                        }
                    }
                }
                if room.timers.len() > 4 * room.parked.len() + 1024 {
                    // Drop stale timers so re-parking cannot grow the heap without bound.
                    let live: Vec<_> = room
                        .parked
                        .iter()
                        .map(|(token, p)| Reverse((p.until, *token)))
                        .collect();
                    room.timers = live.into();
                }
            }
            for (session, wake) in due.drain(..) {
                dispatch(session, wake);
            }
        }
    }
}
