//! The waiting room: connections that have nothing for a worker to do yet,
//! and the workers that take them out when they have.
//!
//! A connection waits here — costing a file descriptor and a few hundred bytes,
//! never a thread — until its socket is ready or its timer fires (the end of the
//! gap after a started message, or its deadline). Its socket joins one epoll
//! set, a lane's, once for its whole life here, edge-triggered: no call
//! re-arms it after each flight. The workers of a lane wait on its set
//! themselves. A connection has one
//! owner at a time, kept in the room's map under its token: parked (the room
//! holds it), running (a thread runs it), or lingering (its reply is out; the
//! room holds its half-closed socket until the client closes). Readiness for a
//! parked connection makes the worker that sees it its owner, which runs it
//! until its socket would block and parks it again. Readiness that comes while
//! a connection runs is marked on its entry, and the owner, instead of parking
//! it, runs it again: an edge is never lost. There is no thread in between
//! handing connections over, so a TLS handshake's flights cost no wake-up but
//! the worker's own (and none at all when the worker is busy).
//!
//! Lanes: when nothing a worker does can wait (registers in memory), each
//! worker has a lane of its own, and a new connection joins the lane of a
//! worker that sleeps, else the next in turn; it stays there, so one thread
//! allocates and frees its TLS state (no allocator lock taken for another
//! thread's memory) and its flights wake no other worker. When a worker can
//! wait on a disk or a shared store, all share one lane, so that a waiting
//! worker holds up no connection ([`crate::config::ServerConfig::worker_lanes`]).
//!
//! A worker takes up to [`EVENTS_PER_WAIT`] ready sockets per wait, but only
//! one while another worker of its lane sleeps (the kernel then wakes the
//! sleeper for what is left ready), and it hands the ones it has not started
//! back to its lane, waking a sleeper, as soon as another of the lane's
//! workers falls asleep. With a lane per worker, as with nginx's worker
//! processes, a socket that becomes ready while its worker runs waits for
//! that worker (the flights it took in the same wait, [`EVENTS_PER_WAIT`] at
//! most) even if another worker idles: handing it over would cost more than
//! the wait saves (see [`WaitingRoom::run_batch`]). New connections and due
//! timers go to a sleeping worker first, which keeps the lanes' loads even.
//!
//! Timers are the one thing epoll does not watch: a timer thread sleeps until
//! the earliest one (or [`TIMER_NAP`], which bounds how late a lingering
//! close's end is noticed) and puts the connections whose time has come in
//! their lane's queue (another's when its worker sleeps and theirs does not),
//! which wakes a worker per entry through a counting eventfd. When the
//! connection table is full, the oldest connection that has sent nothing is
//! shed from here to make room for a newcomer.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, error};
use mio::{Interest, Token};
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, eventfd};

use crate::net::linger::{self, Drained, Holds};

/// The due queue's eventfd (a counting semaphore: one unit per queued entry).
const DUE: u64 = u64::MAX;
/// The stop eventfd (level-triggered and never read: once written, every
/// worker's wait returns at once).
const STOP: u64 = u64::MAX - 1;
/// Ready sockets a worker takes in one wait while no other worker sleeps.
/// Each costs at most one flight's work (a TLS 1.2 resumption's half, a full
/// handshake's server flight) before the next is started, and the ones not
/// started yet are handed back as soon as another worker sleeps.
const EVENTS_PER_WAIT: usize = 16;
/// Shards of the map of connections: a lookup locks one, so threads rarely
/// meet on a lock (and never wait on it in the kernel).
const SHARDS: usize = 64;
/// The longest the timer thread sleeps. Connection timers that fall due
/// sooner wake it when they are set; a lingering close's end does not (it may
/// be noticed up to this late: the socket is only held a little longer).
const TIMER_NAP: Duration = Duration::from_millis(100);

/// Why a waiting connection is handed back now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Just accepted (served on the accept thread).
    Accepted,
    /// Its socket became ready (writable, or a hang-up or error reported).
    Ready,
    /// Its socket has bytes waiting (readable, no hang-up or error reported).
    Bytes,
    /// Its timer (gap or deadline) fired.
    Timer,
    /// The server is stopping and the connection has sent nothing: answer now.
    Shutdown,
}

/// Where a connection stands with the room, kept by the connection (read and
/// changed only by its owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Registration {
    /// Its socket is in the epoll set (edge-triggered, until it is closed or
    /// forgotten).
    in_set: bool,
    /// Writability is watched too (asked for once, by a connection that
    /// could not send all it had).
    writable: bool,
    /// It has an entry in the room's map.
    in_map: bool,
    /// The lane whose epoll set its socket is in (chosen when it joins one).
    lane: usize,
    /// The instant of its entry in the timer book.
    timer: Option<Instant>,
    /// It is on the book's list of connections that had sent nothing.
    silent: bool,
}

/// What the room needs to know of a connection it holds.
pub(crate) trait Waiter: Send + Sized + 'static {
    /// What every connection is run with (the server's context).
    type Served: Sync;
    /// Runs the connection after `wake`, as far as it goes now; it comes back
    /// to `room` when it must wait again.
    fn wake(self, wake: Wake, served: &Self::Served, room: &WaitingRoom<Self>);
    /// Ends the connection now: the room has stopped (or cannot watch its
    /// socket), so it will not be woken again. The room no longer watches it.
    fn end_now(self, served: &Self::Served, room: &WaitingRoom<Self>);
    /// Its key in the room; never reused.
    fn token(&self) -> Token;
    /// The socket to watch (`None` once closed).
    fn fd(&self) -> Option<BorrowedFd<'_>>;
    /// Nothing has arrived on it yet: the first to go when the table is full.
    fn is_silent(&self) -> bool;
    /// Where it stands with the room.
    fn registration(&mut self) -> &mut Registration;
}

/// What became of a connection handed to [`WaitingRoom::park`].
#[must_use = "a connection handed back must be run or ended"]
pub(crate) enum Parking<S> {
    /// The room holds it until its socket is ready or its timer fires.
    Parked,
    /// Readiness (or its timer) came while it ran: run it again now, as the
    /// readiness would have.
    Again(S, Wake),
    /// The room cannot hold it (the room has stopped, or its socket cannot be
    /// watched): end it now.
    Refused(S),
}

/// A connection's entry in the room's map.
enum Entry<S> {
    /// Waiting for its socket or its timer.
    Parked(S),
    /// A thread runs it. `ready`: readiness came meanwhile; `timer`: its timer
    /// at that instant fired meanwhile (and left the book).
    Running { ready: bool, timer: Option<Instant> },
    /// Its reply is out and its sending side shut down: the room holds the
    /// socket until the client closes (the readiness that says so) or `until`.
    Lingering { stream: TcpStream, until: Instant },
}

impl<S> Entry<S> {
    fn running() -> Entry<S> {
        Entry::Running {
            ready: false,
            timer: None,
        }
    }
}

/// The timers and the list of connections that had sent nothing, under one
/// lock taken once or twice per connection.
#[derive(Default)]
struct Book {
    /// When each connection must be looked at (a lingering one: when its
    /// linger is up).
    timers: BTreeSet<(Instant, Token)>,
    /// Connections that had sent nothing when last parked, oldest (lowest
    /// token) first; a connection that has spoken since stays until it is
    /// looked at (when shedding) or leaves.
    silent: BTreeSet<Token>,
    /// What the timer thread sleeps until now (`None`: it is awake, and looks
    /// at the book before it sleeps again).
    next_wake: Option<Instant>,
    /// Answer every silent connection at once (the server is stopping).
    flush_silent: bool,
    stop: bool,
}

/// Work for a worker from outside its own wait.
enum Due<S> {
    /// A connection whose timer fired (or the stop came), or that found its
    /// first bytes the moment the accept thread parked it.
    Session(S, Wake),
    /// Ready sockets a busy worker handed back.
    Ready(Vec<(u64, EventFlags)>),
}

type Shard<S> = Mutex<HashMap<Token, Entry<S>>>;

/// One epoll set, the workers that wait on it, and their due queue.
struct Lane<S> {
    epoll: OwnedFd,
    /// Counts the entries of the due queue: each unit wakes one worker.
    due_fd: OwnedFd,
    due: Mutex<VecDeque<Due<S>>>,
    /// Workers of this lane in their wait now (or about to be).
    sleeping: AtomicUsize,
}

impl<S> Lane<S> {
    fn new(stop_fd: &OwnedFd) -> io::Result<Lane<S>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let due_fd = eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE,
        )?;
        epoll::add(
            &epoll,
            &due_fd,
            EventData::new_u64(DUE),
            EventFlags::IN | EventFlags::ONESHOT,
        )?;
        epoll::add(&epoll, stop_fd, EventData::new_u64(STOP), EventFlags::IN)?;
        Ok(Lane {
            epoll,
            due_fd,
            due: Mutex::new(VecDeque::new()),
            sleeping: AtomicUsize::new(0),
        })
    }

    fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::Relaxed) > 0
    }
}

pub(crate) struct WaitingRoom<S> {
    lanes: Box<[Lane<S>]>,
    /// The next lane a new connection joins, when no lane's worker sleeps.
    next_lane: AtomicUsize,
    /// Written once at stop (and in every lane's set, level-triggered):
    /// every worker leaves.
    stop_fd: OwnedFd,
    shards: Box<[Shard<S>]>,
    book: Mutex<Book>,
    /// Wakes the timer thread when an earlier timer is set, or at stop.
    timer_changed: Condvar,
    stopped: AtomicBool,
    /// Places among the lingering closes, shared with the lingerer.
    holds: Holds,
}

/// The interest a socket is registered with, once: bytes, the peer's close
/// (or half-close), and, once asked for, room to write; edge-triggered.
fn edges(writable: bool) -> EventFlags {
    let mut flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ET;
    if writable {
        flags |= EventFlags::OUT;
    }
    flags
}

/// What readiness says to the connection it wakes.
fn wake_for(flags: EventFlags) -> Wake {
    let ended = EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR;
    if flags.contains(EventFlags::IN) && !flags.intersects(ended) {
        Wake::Bytes
    } else {
        Wake::Ready
    }
}

impl<S: Waiter> WaitingRoom<S> {
    /// A room of `lanes` epoll sets (at least one): see [`Lanes`].
    pub(crate) fn new(holds: Holds, lanes: usize) -> io::Result<WaitingRoom<S>> {
        let stop_fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let lanes = (0..lanes.max(1))
            .map(|_| Lane::new(&stop_fd))
            .collect::<io::Result<_>>()?;
        Ok(WaitingRoom {
            lanes,
            next_lane: AtomicUsize::new(0),
            stop_fd,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            book: Mutex::new(Book::default()),
            timer_changed: Condvar::new(),
            stopped: AtomicBool::new(false),
            holds,
        })
    }

    /// The lane a new connection joins: one whose worker sleeps (it starts
    /// at once), else the next in turn.
    fn pick_lane(&self) -> usize {
        let n = self.lanes.len();
        if n == 1 {
            return 0;
        }
        let start = self.next_lane.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&lane| self.lanes[lane].is_sleeping())
            .unwrap_or(start)
    }

    /// A lane with a sleeping worker, `mine` first.
    fn sleeper(&self, mine: usize) -> Option<usize> {
        if self.lanes[mine].is_sleeping() {
            return Some(mine);
        }
        (0..self.lanes.len()).find(|&lane| self.lanes[lane].is_sleeping())
    }

    /// A panic never leaves the room's maps half-updated (each change is a few
    /// map operations that cannot panic), so a poisoned lock is safe to use.
    fn shard(&self, token: Token) -> MutexGuard<'_, HashMap<Token, Entry<S>>> {
        self.shards[token.0 % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Parks a session until its socket is ready for `interest` or `until`.
    /// The caller owns it (it is running, or new) and has read or written
    /// until its socket would block.
    pub(crate) fn park(&self, mut session: S, interest: Interest, until: Instant) -> Parking<S> {
        if self.is_stopped() {
            self.forget(&mut session);
            return Parking::Refused(session);
        }
        if let Err(e) = self.watch(&mut session, interest) {
            debug!("cannot wait on a connection: {e}");
            self.forget(&mut session);
            return Parking::Refused(session);
        }
        if until <= Instant::now() {
            return Parking::Again(session, Wake::Timer);
        }
        self.book_timer(&mut session, until);
        let token = session.token();
        let mut shard = self.shard(token);
        let (ready, fired) = match shard.get(&token) {
            Some(Entry::Running { ready, timer }) => (*ready, *timer),
            _ => (false, None),
        };
        if ready || fired.is_some() {
            shard.insert(token, Entry::running());
            drop(shard);
            let registration = session.registration();
            if fired.is_some() && registration.timer == fired {
                // The timer thread took its entry out of the book.
                registration.timer = None;
            }
            let wake = if ready { Wake::Ready } else { Wake::Timer };
            return Parking::Again(session, wake);
        }
        shard.insert(token, Entry::Parked(session));
        drop(shard);
        // A stop that came meanwhile may have swept the room before this
        // session was in it: take it back and end it, unless the sweep did.
        if self.is_stopped()
            && let Some(mut session) = self.take_parked(token)
        {
            self.forget(&mut session);
            return Parking::Refused(session);
        }
        Parking::Parked
    }

    /// Puts the session's socket in the epoll set (once; with writability
    /// from the first time it is asked for).
    fn watch(&self, session: &mut S, interest: Interest) -> rustix::io::Result<()> {
        let token = session.token();
        let registration = *session.registration();
        let writable = interest.is_writable() || registration.writable;
        if registration.in_set && writable == registration.writable {
            return Ok(());
        }
        let data = EventData::new_u64(token.0 as u64);
        if !registration.in_map {
            // In the map before the set: readiness reported at once finds it
            // running and is kept for its owner.
            self.shard(token).insert(token, Entry::running());
            session.registration().in_map = true;
        }
        let lane = if registration.in_set {
            registration.lane
        } else {
            self.pick_lane()
        };
        let epoll = &self.lanes[lane].epoll;
        match session.fd() {
            None => return Err(rustix::io::Errno::BADF),
            Some(fd) if registration.in_set => epoll::modify(epoll, fd, data, edges(true))?,
            Some(fd) => epoll::add(epoll, fd, data, edges(writable))?,
        }
        let registration = session.registration();
        registration.lane = lane;
        registration.in_set = true;
        registration.writable = writable;
        Ok(())
    }

    /// Books the session's timer at `until` (and puts it on the silent list if
    /// it has sent nothing), unless it is booked so already.
    fn book_timer(&self, session: &mut S, until: Instant) {
        let token = session.token();
        let silent = session.is_silent();
        let registration = session.registration();
        let add_silent = silent && !registration.silent;
        if registration.timer == Some(until) && !add_silent {
            return;
        }
        let mut book = self.book();
        if let Some(old) = registration.timer.replace(until) {
            book.timers.remove(&(old, token));
        }
        book.timers.insert((until, token));
        if add_silent {
            book.silent.insert(token);
            registration.silent = true;
        }
        let sooner = book.next_wake.is_some_and(|at| until < at);
        drop(book);
        if sooner {
            self.timer_changed.notify_one();
        }
    }

    /// Takes a session out of the map if it is parked there.
    fn take_parked(&self, token: Token) -> Option<S> {
        let mut shard = self.shard(token);
        if !matches!(shard.get(&token), Some(Entry::Parked(_))) {
            return None;
        }
        match shard.insert(token, Entry::running()) {
            Some(Entry::Parked(session)) => Some(session),
            _ => None,
        }
    }

    /// Takes the session's entries out of the map and the book.
    fn unbook(&self, session: &mut S) {
        let token = session.token();
        let registration = session.registration();
        if std::mem::take(&mut registration.in_map) {
            self.shard(token).remove(&token);
        }
        let timer = registration.timer.take();
        let silent = std::mem::take(&mut registration.silent);
        if timer.is_some() || silent {
            let mut book = self.book();
            if let Some(at) = timer {
                book.timers.remove(&(at, token));
            }
            if silent {
                book.silent.remove(&token);
            }
        }
    }

    /// The session leaves the room for good, and its socket stays open
    /// elsewhere (handed to the lingerer): the room stops watching it.
    pub(crate) fn forget(&self, session: &mut S) {
        self.unbook(session);
        let lane = session.registration().lane;
        if std::mem::take(&mut session.registration().in_set)
            && let Some(fd) = session.fd()
        {
            let _ = epoll::delete(&self.lanes[lane].epoll, fd);
        }
    }

    /// The session leaves the room for good and its socket is closed now
    /// (which takes it out of the epoll set without a call).
    pub(crate) fn closing(&self, session: &mut S) {
        self.unbook(session);
        session.registration().in_set = false;
    }

    /// The session's reply (or alert) is out and its sending side shut down:
    /// the room holds `stream`, still in the epoll set, until the client
    /// closes (the readiness that says so ends it) or `until`, so the close is
    /// never a reset. Hands the stream back when the room cannot hold it (it
    /// is not in the set, the room has stopped, or every lingering place is
    /// taken); the session has then left the room and no longer watches it.
    pub(crate) fn linger(
        &self,
        session: &mut S,
        stream: TcpStream,
        until: Instant,
    ) -> Result<(), TcpStream> {
        let in_set = session.registration().in_set;
        if !in_set || self.is_stopped() || !self.holds.take() {
            self.unbook(session);
            let lane = session.registration().lane;
            if std::mem::take(&mut session.registration().in_set) {
                let _ = epoll::delete(&self.lanes[lane].epoll, &stream);
            }
            return Err(stream);
        }
        let token = session.token();
        // The entry and its place in the book pass to the lingering socket.
        let registration = std::mem::take(session.registration());
        {
            let mut book = self.book();
            if let Some(at) = registration.timer {
                book.timers.remove(&(at, token));
            }
            if registration.silent {
                book.silent.remove(&token);
            }
            book.timers.insert((until, token));
        }
        self.settle_lingering(token, stream, until);
        Ok(())
    }

    /// Finishes a lingering close whose owner is the caller: the socket is
    /// closed once the client has closed (or its linger is up), else it
    /// waits in the map for its next readiness.
    fn settle_lingering(&self, token: Token, stream: TcpStream, until: Instant) {
        let mut readiness_seen = false;
        loop {
            let closed = readiness_seen && linger::drain_now(&stream) == Drained::Closed;
            let mut shard = self.shard(token);
            let (ready, fired) = match shard.get(&token) {
                Some(Entry::Running { ready, timer }) => (*ready, timer.is_some()),
                _ => (false, false),
            };
            if closed || fired || Instant::now() >= until {
                shard.remove(&token);
                drop(shard);
                if !fired {
                    self.book().timers.remove(&(until, token));
                }
                self.holds.give_back();
                return;
            }
            if ready {
                // The client wrote or closed meanwhile: look again.
                shard.insert(token, Entry::running());
                readiness_seen = true;
                continue;
            }
            shard.insert(token, Entry::Lingering { stream, until });
            return;
        }
    }

    /// Takes out the oldest connection that has sent nothing, if any.
    pub(crate) fn shed_oldest_silent(&self) -> Option<S> {
        let mut book = self.book();
        let mut gone = Vec::new();
        let mut shed = None;
        for &token in &book.silent {
            let mut shard = self.shard(token);
            match shard.get_mut(&token) {
                // Being served: it has sent something, or is about to.
                Some(Entry::Running { .. }) => {}
                Some(Entry::Parked(session)) if session.is_silent() => {
                    if let Some(Entry::Parked(mut session)) = shard.insert(token, Entry::running())
                    {
                        session.registration().silent = false;
                        shed = Some((token, session));
                    }
                    break;
                }
                Some(Entry::Parked(session)) => {
                    session.registration().silent = false;
                    gone.push(token);
                }
                _ => gone.push(token),
            }
        }
        for token in gone {
            book.silent.remove(&token);
        }
        let (token, session) = shed?;
        book.silent.remove(&token);
        Some(session)
    }

    /// Connections waiting now.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                let parked = shard.values().filter(|e| matches!(e, Entry::Parked(_)));
                parked.count()
            })
            .sum()
    }

    /// The server is stopping: every connection that has sent nothing is
    /// answered now rather than at its deadline.
    pub(crate) fn flush_silent(&self) {
        self.book().flush_silent = true;
        self.timer_changed.notify_one();
    }

    /// Ends the timer thread and the workers (each finishes the connection it
    /// is running); connections still waiting are closed.
    pub(crate) fn stop(&self) {
        self.book().stop = true;
        self.stopped.store(true, Ordering::Release);
        self.timer_changed.notify_one();
        let _ = rustix::io::write(&self.stop_fd, &1u64.to_ne_bytes());
    }

    /// Queues work for a lane's workers, one unit of its due eventfd per
    /// entry.
    fn queue(&self, lane: usize, work: impl IntoIterator<Item = Due<S>>) {
        let lane = &self.lanes[lane];
        let mut due = lane.due.lock().unwrap_or_else(|p| p.into_inner());
        let before = due.len();
        due.extend(work);
        let added = due.len() - before;
        drop(due);
        if added > 0 {
            let _ = rustix::io::write(&lane.due_fd, &(added as u64).to_ne_bytes());
        }
    }

    /// Has a worker run `session` after `wake` (its timer fired, or it found
    /// its first bytes the moment the accept thread parked it): one of its
    /// own lane when that one sleeps, else a sleeping one, else its own.
    pub(crate) fn hand_to_worker(&self, mut session: S, wake: Wake) {
        let mine = session.registration().lane;
        let lane = self.sleeper(mine).unwrap_or(mine);
        self.queue(lane, [Due::Session(session, wake)]);
    }

    /// A worker's loop: waits in its lane's epoll set (worker `worker` serves
    /// lane `worker` modulo the lanes) and runs each connection whose socket
    /// is ready, or whose timer fired, until the stop.
    pub(crate) fn serve(&self, worker: usize, served: &S::Served) {
        let mine = worker % self.lanes.len();
        let lane = &self.lanes[mine];
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); EVENTS_PER_WAIT];
        let mut batch = Vec::with_capacity(EVENTS_PER_WAIT);
        while !self.is_stopped() {
            // With another worker of this lane asleep, one ready socket is
            // this worker's share: the kernel wakes the sleeper for the rest.
            let take = if lane.is_sleeping() {
                1
            } else {
                EVENTS_PER_WAIT
            };
            lane.sleeping.fetch_add(1, Ordering::Relaxed);
            let waited = epoll::wait(&lane.epoll, &mut events[..take], None);
            lane.sleeping.fetch_sub(1, Ordering::Relaxed);
            batch.clear();
            match waited {
                Ok((ready, _)) => {
                    batch.extend(ready.iter().map(|event| {
                        let (data, flags) = (event.data, event.flags);
                        (data.u64(), flags)
                    }));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    error!("worker: waiting for sockets failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            self.run_batch(mine, &batch, served);
        }
        // Wake the next sleeping worker: each wake-up reaches only one.
        let _ = rustix::io::write(&self.stop_fd, &1u64.to_ne_bytes());
    }

    /// Runs what a wait in lane `mine` reported, in order; what is not
    /// started yet goes back to the lane as soon as another of its workers
    /// sleeps, so it does not wait behind this worker's work while that one
    /// idles. It never goes to another lane: a flight handed there costs a
    /// wake-up, a queue and a re-arm (1.6 more system calls per TLS 1.2 full
    /// handshake, 3-5 % of the rate) and moves the connection's memory to
    /// another thread.
    fn run_batch(&self, mine: usize, batch: &[(u64, EventFlags)], served: &S::Served) {
        for (i, &(data, flags)) in batch.iter().enumerate() {
            if self.is_stopped() {
                return;
            }
            if i > 0 && self.lanes[mine].is_sleeping() {
                self.hand_back(mine, &batch[i..]);
                return;
            }
            match data {
                STOP => return,
                DUE => self.run_due(mine, served),
                token => self.on_ready(Token(token as usize), flags, served),
            }
        }
    }

    /// Gives ready sockets of lane `mine` not started yet back to its
    /// workers. The due queue's own readiness (one-shot, so reported to this
    /// worker alone) is armed again instead of handed on; the stop's stays
    /// reported to every wait anyway.
    fn hand_back(&self, mine: usize, rest: &[(u64, EventFlags)]) {
        if rest.iter().any(|&(data, _)| data == DUE) {
            self.arm_due(mine);
        }
        let sockets: Vec<_> = rest
            .iter()
            .copied()
            .filter(|&(data, _)| data != DUE && data != STOP)
            .collect();
        if !sockets.is_empty() {
            self.queue(mine, [Due::Ready(sockets)]);
        }
    }

    /// Arms a lane's due queue's readiness again: while units remain, it
    /// wakes another of its workers.
    fn arm_due(&self, lane: usize) {
        let lane = &self.lanes[lane];
        let _ = epoll::modify(
            &lane.epoll,
            &lane.due_fd,
            EventData::new_u64(DUE),
            EventFlags::IN | EventFlags::ONESHOT,
        );
    }

    /// One unit of lane `mine`'s due queue: a connection to run, or ready
    /// sockets handed on.
    fn run_due(&self, mine: usize, served: &S::Served) {
        let lane = &self.lanes[mine];
        let taken = rustix::io::read(&lane.due_fd, &mut [0u8; 8]).is_ok();
        self.arm_due(mine);
        if !taken {
            return;
        }
        let next = lane
            .due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        match next {
            Some(Due::Session(session, wake)) => session.wake(wake, served, self),
            Some(Due::Ready(batch)) => self.run_batch(mine, &batch, served),
            None => {}
        }
    }

    /// Readiness of a connection's socket: its owner from now on runs it (or
    /// finishes its lingering close); if it runs already, the mark makes its
    /// owner run it again instead of parking it.
    fn on_ready(&self, token: Token, flags: EventFlags, served: &S::Served) {
        let mut shard = self.shard(token);
        let taken = match shard.get_mut(&token) {
            // Closed and gone: readiness reported before it left.
            None => return,
            Some(Entry::Running { ready, .. }) => {
                *ready = true;
                return;
            }
            Some(entry) => std::mem::replace(entry, Entry::running()),
        };
        drop(shard);
        match taken {
            Entry::Parked(session) => session.wake(wake_for(flags), served, self),
            Entry::Lingering { stream, until } => {
                if linger::drain_now(&stream) == Drained::Closed {
                    self.shard(token).remove(&token);
                    self.book().timers.remove(&(until, token));
                    self.holds.give_back();
                } else {
                    self.settle_lingering(token, stream, until);
                }
            }
            Entry::Running { .. } => {}
        }
    }

    /// The timer thread: queues each connection whose timer is due for the
    /// workers, and closes each lingering socket whose linger is up, until the
    /// stop; then ends what still waits.
    pub(crate) fn run_timers(&self, served: &S::Served) {
        let mut book = self.book();
        loop {
            if book.stop {
                drop(book);
                self.end_all(served);
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(&(at, token)) = book.timers.first() {
                if at > now {
                    break;
                }
                book.timers.pop_first();
                due.push((at, token));
            }
            let flush = std::mem::take(&mut book.flush_silent)
                .then(|| book.silent.iter().copied().collect::<Vec<_>>());
            if due.is_empty() && flush.is_none() {
                let nap_end = now + TIMER_NAP;
                let wake_at = book
                    .timers
                    .first()
                    .map_or(nap_end, |&(at, _)| at.min(nap_end));
                book.next_wake = Some(wake_at);
                book = self
                    .timer_changed
                    .wait_timeout(book, wake_at.saturating_duration_since(now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                book.next_wake = None;
                continue;
            }
            drop(book);
            let mut work = Vec::new();
            for (at, token) in due {
                self.timer_fired(at, token, &mut work);
            }
            for token in flush.into_iter().flatten() {
                if let Some(session) = self.take_silent(token) {
                    work.push((session, Wake::Shutdown));
                }
            }
            for (session, wake) in work {
                self.hand_to_worker(session, wake);
            }
            book = self.book();
        }
    }

    /// A timer at `at` fired for `token`: a parked connection is queued for a
    /// worker, a running one is marked for its owner, a lingering socket is
    /// closed.
    fn timer_fired(&self, at: Instant, token: Token, work: &mut Vec<(S, Wake)>) {
        let mut shard = self.shard(token);
        match shard.get_mut(&token) {
            Some(Entry::Running { timer, .. }) => *timer = Some(at),
            Some(Entry::Parked(session)) => {
                if session.registration().timer != Some(at) {
                    // An entry it no longer has (it was booked again since).
                    return;
                }
                session.registration().timer = None;
                if let Some(Entry::Parked(session)) = shard.insert(token, Entry::running()) {
                    work.push((session, Wake::Timer));
                }
            }
            Some(Entry::Lingering { until, .. }) if *until == at => {
                let lingering = shard.remove(&token);
                drop(shard);
                drop(lingering);
                self.holds.give_back();
            }
            _ => {}
        }
    }

    /// Takes a parked connection that still has sent nothing (the stop's
    /// flush).
    fn take_silent(&self, token: Token) -> Option<S> {
        let mut shard = self.shard(token);
        match shard.get(&token) {
            Some(Entry::Parked(session)) if session.is_silent() => {}
            _ => return None,
        }
        match shard.insert(token, Entry::running()) {
            Some(Entry::Parked(session)) => Some(session),
            _ => None,
        }
    }

    /// At the stop: ends every connection still waiting (or queued) and closes
    /// every lingering socket. A connection running now ends when its owner
    /// parks it.
    fn end_all(&self, served: &S::Served) {
        let mut left = Vec::new();
        let mut lingering = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (_, entry) in shard.drain() {
                match entry {
                    Entry::Parked(session) => left.push(session),
                    Entry::Lingering { .. } => lingering += 1,
                    Entry::Running { .. } => {}
                }
            }
        }
        for _ in 0..lingering {
            self.holds.give_back();
        }
        let queued: Vec<Due<S>> = self
            .lanes
            .iter()
            .flat_map(|lane| {
                let mut due = lane.due.lock().unwrap_or_else(|p| p.into_inner());
                due.drain(..).collect::<Vec<_>>()
            })
            .collect();
        left.extend(queued.into_iter().filter_map(|due| match due {
            Due::Session(session, _) => Some(session),
            Due::Ready(_) => None,
        }));
        *self.book() = Book {
            stop: true,
            ..Book::default()
        };
        for mut session in left {
            self.forget(&mut session);
            session.end_now(served, self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::os::fd::AsFd;
    use std::sync::Arc;
    use std::sync::mpsc::{self, Receiver, Sender};
    use std::thread::JoinHandle;

    use crate::net::linger::Lingerer;

    const LONG: Duration = Duration::from_secs(30);
    const PATIENCE: Duration = Duration::from_secs(5);

    /// What a fake connection does when it is woken, besides reporting it.
    enum Script {
        /// Nothing: it is dropped (its socket closed).
        Report,
        /// Reads what has arrived; then tells the test it runs and waits for
        /// its word, and parks again (run again at once if readiness came
        /// meanwhile).
        ReadPauseAndPark(Sender<()>, Receiver<()>),
        /// Reads what has arrived, tells the test which thread ran it, and
        /// parks again, for good.
        ReadAndParkAgain(Sender<(usize, String)>),
        /// Reads what has arrived, shuts its sending side down and leaves its
        /// socket to the room's lingering close, for this long at most.
        Linger(Duration),
    }

    /// A connection as the room sees it, over the server's end of a loopback
    /// TCP connection; its wake-ups are reported to the test.
    struct Fake {
        token: Token,
        socket: Option<TcpStream>,
        silent: bool,
        registration: Registration,
        script: Script,
    }

    impl Waiter for Fake {
        type Served = Sender<(usize, Wake)>;

        fn wake(mut self, wake: Wake, served: &Self::Served, room: &WaitingRoom<Self>) {
            let _ = served.send((self.token.0, wake));
            if let Some(socket) = &mut self.socket {
                let mut scratch = [0u8; 64];
                while matches!(socket.read(&mut scratch), Ok(n) if n > 0) {}
            }
            match std::mem::replace(&mut self.script, Script::Report) {
                Script::Report => {}
                Script::ReadPauseAndPark(running, go) => {
                    running.send(()).unwrap();
                    go.recv().unwrap();
                    match room.park(self, Interest::READABLE, Instant::now() + LONG) {
                        Parking::Again(fake, wake) => fake.wake(wake, served, room),
                        Parking::Parked => {}
                        Parking::Refused(_) => panic!("refused"),
                    }
                }
                Script::ReadAndParkAgain(seen) => {
                    let thread = std::thread::current().name().unwrap_or("").to_string();
                    seen.send((self.token.0, thread)).unwrap();
                    self.script = Script::ReadAndParkAgain(seen);
                    match room.park(self, Interest::READABLE, Instant::now() + LONG) {
                        Parking::Again(fake, wake) => fake.wake(wake, served, room),
                        Parking::Parked => {}
                        Parking::Refused(_) => panic!("refused"),
                    }
                }
                Script::Linger(linger) => {
                    let socket = self.socket.take().unwrap();
                    socket.shutdown(Shutdown::Write).unwrap();
                    let kept = room.linger(&mut self, socket, Instant::now() + linger);
                    assert!(kept.is_ok(), "the room holds the lingering close");
                }
            }
        }

        fn end_now(mut self, served: &Self::Served, _room: &WaitingRoom<Self>) {
            let _ = served.send((self.token.0, Wake::Shutdown));
            let registration = *self.registration();
            assert!(
                !registration.in_set && !registration.in_map && registration.timer.is_none(),
                "forgotten first"
            );
        }

        fn token(&self) -> Token {
            self.token
        }

        fn fd(&self) -> Option<BorrowedFd<'_>> {
            self.socket.as_ref().map(|s| s.as_fd())
        }

        fn is_silent(&self) -> bool {
            self.silent
        }

        fn registration(&mut self) -> &mut Registration {
            &mut self.registration
        }
    }

    /// A fake connection that reports its wake-ups and is dropped, and the
    /// client's end of its socket.
    fn fake(token: usize, silent: bool) -> (Fake, TcpStream) {
        scripted(token, silent, Script::Report)
    }

    fn scripted(token: usize, silent: bool, script: Script) -> (Fake, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_read_timeout(Some(PATIENCE)).unwrap();
        let fake = Fake {
            token: Token(token),
            socket: Some(ours),
            silent,
            registration: Registration::default(),
            script,
        };
        (fake, theirs)
    }

    /// Parks `fake` for `interest`, for `wait` from now at most: it must wait.
    fn park(room: &WaitingRoom<Fake>, fake: Fake, interest: Interest, wait: Duration) {
        let until = Instant::now() + wait;
        let parked = room.park(fake, interest, until);
        assert!(matches!(parked, Parking::Parked), "parked");
    }

    /// A room with its timer thread and `workers` workers; stopped and joined
    /// on drop.
    struct Running {
        room: Arc<WaitingRoom<Fake>>,
        lingerer: Lingerer,
        tell: Sender<(usize, Wake)>,
        woken: Receiver<(usize, Wake)>,
        threads: Vec<JoinHandle<()>>,
    }

    impl Running {
        fn start() -> Running {
            Self::with_workers(1)
        }

        fn with_workers(workers: usize) -> Running {
            Self::with_lanes(workers, 1)
        }

        /// `workers` workers on `lanes` lanes, each worker named `lane-N`
        /// after its lane.
        fn with_lanes(workers: usize, lanes: usize) -> Running {
            let lingerer = Lingerer::start(16).unwrap();
            let room = Arc::new(WaitingRoom::new(lingerer.holds(), lanes).unwrap());
            let (tell, woken) = mpsc::channel();
            let mut threads = Vec::new();
            let timers = {
                let room = Arc::clone(&room);
                let tell = tell.clone();
                std::thread::spawn(move || room.run_timers(&tell))
            };
            threads.push(timers);
            for worker in 0..workers {
                let room = Arc::clone(&room);
                let tell = tell.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("lane-{}", worker % lanes))
                    .spawn(move || room.serve(worker, &tell))
                    .unwrap();
                threads.push(thread);
            }
            Running {
                room,
                lingerer,
                tell,
                woken,
                threads,
            }
        }

        /// Parks `fake` as a worker would: run again at once when it was
        /// ready already (readiness came while the caller owned it).
        fn park(&self, fake: Fake, interest: Interest, wait: Duration) {
            match self.room.park(fake, interest, Instant::now() + wait) {
                Parking::Parked => {}
                Parking::Again(fake, wake) => fake.wake(wake, &self.tell, &self.room),
                Parking::Refused(_) => panic!("refused"),
            }
        }

        fn next_wake(&self) -> (usize, Wake) {
            self.woken
                .recv_timeout(PATIENCE)
                .expect("a wake-up in time")
        }

        /// Waits until the lingering closes held number `n`.
        fn held_becomes(&self, n: usize) -> bool {
            let until = Instant::now() + PATIENCE;
            while self.lingerer.held() != n && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.lingerer.held() == n
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.room.stop();
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
        }
    }

    #[test]
    fn a_connection_is_woken_once_by_its_bytes_and_a_hang_up_by_readiness() {
        let running = Running::start();
        let (talker, mut client) = fake(1, true);
        let (leaver, gone) = fake(2, true);
        park(&running.room, talker, Interest::READABLE, LONG);
        park(&running.room, leaver, Interest::READABLE, LONG);
        assert_eq!(running.room.len(), 2);
        client.write_all(b"R0FAC0B").unwrap();
        assert_eq!(running.next_wake(), (1, Wake::Bytes));
        drop(gone);
        assert_eq!(running.next_wake(), (2, Wake::Ready));
        assert_eq!(running.room.len(), 0, "a woken connection leaves the room");
        assert!(running.woken.try_recv().is_err(), "one wake-up each");
    }

    #[test]
    fn sockets_ready_together_are_each_woken_once_by_one_worker() {
        let running = Running::start();
        let mut clients = Vec::new();
        for token in 1..=40 {
            let (waiter, client) = fake(token, true);
            park(&running.room, waiter, Interest::READABLE, LONG);
            clients.push(client);
        }
        for client in &mut clients {
            client.write_all(b"R0FAC0B").unwrap();
        }
        let mut woken: Vec<usize> = (0..40).map(|_| running.next_wake().0).collect();
        woken.sort_unstable();
        assert_eq!(woken, (1..=40).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(50));
        assert!(running.woken.try_recv().is_err(), "one wake-up each");
    }

    #[test]
    fn readiness_that_comes_while_a_connection_runs_is_not_lost() {
        // Two workers: the readiness of the late bytes reaches the one that
        // does not run the connection.
        let running = Running::with_workers(2);
        let (to_test, runs) = mpsc::channel();
        let (go, to_fake) = mpsc::channel();
        let script = Script::ReadPauseAndPark(to_test, to_fake);
        let (waiter, mut client) = scripted(1, true, script);
        park(&running.room, waiter, Interest::READABLE, LONG);
        client.write_all(b"W0005").unwrap();
        assert_eq!(running.next_wake(), (1, Wake::Bytes));
        runs.recv_timeout(PATIENCE).expect("running");
        // The rest arrives while it runs, after it has read what was there;
        // the other worker sees its readiness while the first owns it.
        client.write_all(b"051234").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        go.send(()).unwrap();
        assert_eq!(
            running.next_wake(),
            (1, Wake::Ready),
            "run again rather than parked with bytes unread"
        );
    }

    #[test]
    fn what_a_busy_worker_hands_back_reaches_a_sleeping_one_due_queue_included() {
        let lingerer = Lingerer::start(16).unwrap();
        let room = Arc::new(WaitingRoom::<Fake>::new(lingerer.holds(), 1).unwrap());
        let (queued, _a) = fake(1, false);
        let (ready, mut client) = fake(2, true);
        park(&room, ready, Interest::READABLE, LONG);
        client.write_all(b"R0FAC0B").unwrap();
        room.hand_to_worker(queued, Wake::Timer);
        // One wait reports both the socket and the due queue (whose readiness
        // is one-shot: reported to this wait alone).
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 4];
        let mut batch = Vec::new();
        let until = Instant::now() + PATIENCE;
        while batch.len() < 2 && Instant::now() < until {
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            let (got, _) = epoll::wait(&room.lanes[0].epoll, &mut events, Some(&zero)).unwrap();
            batch.extend(got.iter().map(|e| (e.data.u64(), e.flags)));
        }
        let mut reported: Vec<u64> = batch.iter().map(|&(data, _)| data).collect();
        reported.sort_unstable();
        assert_eq!(reported, [2, DUE]);
        // Another worker sleeps: all of it goes back to the room at once.
        room.hand_back(0, &batch);
        // A worker that waits now is woken for both.
        let (tell, woken) = mpsc::channel();
        let worker = {
            let room = Arc::clone(&room);
            std::thread::spawn(move || room.serve(0, &tell))
        };
        let mut got: Vec<usize> = (0..2)
            .map(|_| woken.recv_timeout(PATIENCE).expect("a wake-up in time").0)
            .collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        room.stop();
        worker.join().unwrap();
    }

    #[test]
    fn with_a_lane_per_worker_a_connection_stays_with_one_worker_and_both_get_some() {
        let running = Running::with_lanes(2, 2);
        // Both workers in their wait first: a new connection joins a
        // sleeping worker's lane, in turn when both sleep.
        let until = Instant::now() + PATIENCE;
        while !running.room.lanes.iter().all(Lane::is_sleeping) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (seen, saw) = mpsc::channel();
        let mut clients = Vec::new();
        for token in 1..=4 {
            let script = Script::ReadAndParkAgain(seen.clone());
            let (fake, client) = scripted(token, false, script);
            running.park(fake, Interest::READABLE, LONG);
            clients.push(client);
        }
        let mut served_by: HashMap<usize, BTreeSet<String>> = HashMap::new();
        for _ in 0..3 {
            for client in &mut clients {
                client.write_all(b"R").unwrap();
                let (token, thread) = saw.recv_timeout(PATIENCE).expect("a wake-up in time");
                served_by.entry(token).or_default().insert(thread);
            }
        }
        assert_eq!(served_by.len(), 4, "every connection was woken");
        for (token, threads) in &served_by {
            assert_eq!(threads.len(), 1, "connection {token} ran on {threads:?}");
        }
        let lanes: BTreeSet<_> = served_by.values().flatten().collect();
        assert_eq!(lanes.len(), 2, "both lanes took connections: {served_by:?}");
    }

    #[test]
    fn a_batch_stays_in_its_lane_while_another_lane_sleeps() {
        let lingerer = Lingerer::start(16).unwrap();
        let room = Arc::new(WaitingRoom::<Fake>::new(lingerer.holds(), 2).unwrap());
        // Both connections join lane 0 (no worker sleeps: lanes in turn,
        // the turn set back to lane 0 for the second).
        let (seen, saw) = mpsc::channel();
        let (first, mut a) = scripted(1, false, Script::ReadAndParkAgain(seen.clone()));
        let (second, mut b) = scripted(2, false, Script::ReadAndParkAgain(seen));
        park(&room, first, Interest::READABLE, LONG);
        room.next_lane.store(0, Ordering::Relaxed);
        park(&room, second, Interest::READABLE, LONG);
        a.write_all(b"R").unwrap();
        b.write_all(b"R").unwrap();
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 4];
        let mut batch = Vec::new();
        let until = Instant::now() + PATIENCE;
        while batch.len() < 2 && Instant::now() < until {
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            let (got, _) = epoll::wait(&room.lanes[0].epoll, &mut events, Some(&zero)).unwrap();
            batch.extend(got.iter().map(|e| (e.data.u64(), e.flags)));
        }
        assert_eq!(batch.len(), 2, "both ready in lane 0");
        // Lane 1's worker sleeps; lane 0's (this thread) runs both.
        let (tell, _woken) = mpsc::channel();
        let worker = {
            let room = Arc::clone(&room);
            let tell = tell.clone();
            std::thread::Builder::new()
                .name("lane-1".to_string())
                .spawn(move || room.serve(1, &tell))
                .unwrap()
        };
        let until = Instant::now() + PATIENCE;
        while !room.lanes[1].is_sleeping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(room.lanes[1].is_sleeping());
        room.run_batch(0, &batch, &tell);
        let here = std::thread::current().name().unwrap_or("").to_string();
        let mut ran: Vec<(usize, String)> = (0..2)
            .map(|_| saw.recv_timeout(PATIENCE).expect("a wake-up in time"))
            .collect();
        ran.sort();
        assert_eq!(ran, [(1, here.clone()), (2, here)]);
        room.stop();
        worker.join().unwrap();
    }

    #[test]
    fn a_lingering_close_ends_when_the_client_closes_or_at_its_time() {
        let running = Running::start();
        let (closer, mut client) = scripted(1, true, Script::Linger(LONG));
        let (silent, mut stays) = scripted(2, true, Script::Linger(Duration::from_millis(50)));
        park(&running.room, closer, Interest::READABLE, LONG);
        park(&running.room, silent, Interest::READABLE, LONG);
        client.write_all(b"R0FAC0B").unwrap();
        assert_eq!(running.next_wake(), (1, Wake::Bytes));
        // The server's FIN arrives; the close is held until the client's.
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);
        assert!(running.held_becomes(1), "held until the client closes");
        drop(client);
        assert!(running.held_becomes(0), "released once the client closed");
        // A client that never closes: released when its linger is up, and
        // its close was a FIN, never a reset.
        stays.write_all(b"R0FAC0B").unwrap();
        assert_eq!(running.next_wake(), (2, Wake::Bytes));
        assert_eq!(stays.read(&mut [0u8; 8]).unwrap(), 0);
        assert!(running.held_becomes(0), "released at its time");
        assert!(stays.take_error().unwrap().is_none());
    }

    #[test]
    fn a_quiet_connection_is_woken_by_its_timer_the_earliest_first() {
        let running = Running::start();
        let (quiet, _client) = fake(1, false);
        let park_for = |waiter, ms| park(&running.room, waiter, Interest::READABLE, ms);
        let started = Instant::now();
        park_for(quiet, Duration::from_millis(20));
        assert_eq!(running.next_wake(), (1, Wake::Timer));
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "not before its time"
        );
        // A later timer and an earlier one: the earlier fires first, the
        // later one not yet.
        let (again, _client) = fake(2, false);
        park_for(again, LONG);
        let (soon, _other) = fake(3, false);
        park_for(soon, Duration::from_millis(10));
        assert_eq!(running.next_wake(), (3, Wake::Timer));
        assert_eq!(running.room.len(), 1);
    }

    #[test]
    fn shedding_takes_the_oldest_silent_connection_first_and_never_a_talking_one() {
        let lingerer = Lingerer::start(16).unwrap();
        let room = WaitingRoom::<Fake>::new(lingerer.holds(), 1).unwrap();
        let mut clients = Vec::new();
        for (token, silent) in [(3, true), (1, false), (2, true)] {
            let (waiter, client) = fake(token, silent);
            park(&room, waiter, Interest::READABLE, LONG);
            clients.push(client);
        }
        let shed: Vec<usize> = std::iter::from_fn(|| room.shed_oldest_silent())
            .map(|mut waiter| {
                room.forget(&mut waiter);
                waiter.token.0
            })
            .collect();
        assert_eq!(shed, [2, 3], "oldest (lowest token) first");
        assert_eq!(room.len(), 1, "the one that talked stays");
        room.stop();
        let (tell, ended) = mpsc::channel();
        room.run_timers(&tell);
        assert_eq!(
            ended.try_recv(),
            Ok((1, Wake::Shutdown)),
            "ended at the stop"
        );
    }

    #[test]
    fn at_stop_silent_connections_are_answered_at_once_and_the_rest_closed() {
        let running = Running::start();
        let (silent, _a) = fake(1, true);
        let (talking, _b) = fake(2, false);
        park(&running.room, silent, Interest::READABLE, LONG);
        running.park(talking, Interest::WRITABLE | Interest::READABLE, LONG);
        // The talking one is writable at once: woken by its readiness.
        assert_eq!(running.next_wake(), (2, Wake::Ready));
        let (talking, _b2) = fake(4, false);
        park(&running.room, talking, Interest::READABLE, LONG);
        running.room.flush_silent();
        assert_eq!(running.next_wake(), (1, Wake::Shutdown));
        assert_eq!(running.room.len(), 1, "only the silent ones are flushed");
        running.room.stop();
        assert_eq!(
            running.next_wake(),
            (4, Wake::Shutdown),
            "ended at the stop"
        );
        // Parking after the stop hands the connection back to be ended.
        let (late, mut client) = fake(5, true);
        let parked = running
            .room
            .park(late, Interest::READABLE, Instant::now() + LONG);
        assert!(
            matches!(parked, Parking::Refused(_)),
            "handed back after the stop"
        );
        drop(parked);
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0, "closed");
    }
}
