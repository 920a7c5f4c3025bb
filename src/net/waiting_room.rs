//! The waiting room: connections that have nothing for a worker to do yet,
//! and the workers that take them out when they have.
//!
//! A connection waits here — costing a file descriptor and a few hundred bytes,
//! never a thread — until its socket is ready or its timer fires (the end of the
//! gap after a started message, or its deadline). Each waiting socket is armed
//! once (epoll's one-shot interest) in one epoll set that every worker waits on
//! itself: the kernel wakes one worker per ready socket, and that worker runs
//! the connection at once. There is no thread in between handing connections
//! over, so a TLS handshake's flights cost no wake-up but the worker's own (and
//! none at all when the worker is busy: it finds the next ready socket without
//! sleeping). Timers are the one thing epoll does not watch: a timer thread
//! sleeps until the earliest one and puts the connections whose time has come
//! in a queue that wakes a worker per entry through a counting eventfd. When
//! the connection table is full, the oldest connection that has sent nothing is
//! shed from here to make room for a newcomer.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, error};
use mio::{Interest, Token};
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};

/// The due queue's eventfd (a counting semaphore: one unit per queued entry).
const DUE: u64 = u64::MAX;
/// The stop eventfd (level-triggered and never read: once written, every
/// worker's wait returns at once).
const STOP: u64 = u64::MAX - 1;

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

/// Where a connection's socket stands with the room's epoll set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Registration {
    /// Not in the set.
    #[default]
    Off,
    /// In the set and armed: one readiness will be reported.
    Armed,
    /// In the set, its one readiness reported: nothing more will be until it
    /// is armed again, so closing the socket needs no removal (the kernel
    /// drops a closed socket from the set itself).
    Fired,
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
    /// Where its socket stands with the room's epoll set.
    fn registration(&mut self) -> &mut Registration;
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
    /// Connections taken out by their timer (or the stop), each waiting for a
    /// worker; one unit of the due eventfd per entry.
    due: VecDeque<(S, Wake)>,
    /// What the timer thread sleeps until now (`None`: no timer, or awake).
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
            due: VecDeque::new(),
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
    epoll: OwnedFd,
    /// Counts the entries of the due queue: each unit wakes one worker.
    due: OwnedFd,
    /// Written once at stop: every worker leaves.
    stop: OwnedFd,
    room: Mutex<Room<S>>,
    /// Wakes the timer thread when an earlier timer is set, or at stop.
    timer_changed: Condvar,
    stopped: AtomicBool,
}

fn one_shot(interest: Interest) -> EventFlags {
    let mut flags = EventFlags::ONESHOT;
    if interest.is_readable() {
        // A peer's close (or half-close) is a readiness too.
        flags |= EventFlags::IN | EventFlags::RDHUP;
    }
    if interest.is_writable() {
        flags |= EventFlags::OUT;
    }
    flags
}

impl<S: Waiter> WaitingRoom<S> {
    pub(crate) fn new() -> io::Result<WaitingRoom<S>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let due = eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE,
        )?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &due,
            EventData::new_u64(DUE),
            EventFlags::IN | EventFlags::ONESHOT,
        )?;
        epoll::add(&epoll, &stop, EventData::new_u64(STOP), EventFlags::IN)?;
        Ok(WaitingRoom {
            epoll,
            due,
            stop,
            room: Mutex::new(Room::default()),
            timer_changed: Condvar::new(),
            stopped: AtomicBool::new(false),
        })
    }

    /// A panic never leaves the room half-updated (each change is a few map
    /// operations that cannot panic), so a poisoned lock is safe to use.
    fn room(&self) -> MutexGuard<'_, Room<S>> {
        self.room.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks a session until its socket is ready for `interest` or `until`;
    /// hands it back when it cannot wait (the room has stopped, or its socket
    /// cannot be watched), for the caller to end it now.
    #[must_use = "a session handed back must be ended"]
    pub(crate) fn park(&self, mut session: S, interest: Interest, until: Instant) -> Option<S> {
        let token = session.token();
        let mut room = self.room();
        if room.stop {
            drop(room);
            self.forget(&mut session);
            return Some(session);
        }
        let registered = *session.registration() != Registration::Off;
        let event = EventData::new_u64(token.0 as u64);
        // Arming happens under the room's lock: a worker woken by it waits for
        // the lock, and by then the session is in the room. Arming after the read that would block is enough, since
        // epoll reports a socket that is already ready when it is armed.
        let armed = match session.fd() {
            None => return Some(session),
            Some(fd) if registered => epoll::modify(&self.epoll, fd, event, one_shot(interest)),
            Some(fd) => epoll::add(&self.epoll, fd, event, one_shot(interest)),
        };
        if let Err(e) = armed {
            drop(room);
            debug!("cannot wait on a connection: {e}");
            self.forget(&mut session);
            return Some(session);
        }
        *session.registration() = Registration::Armed;
        if session.is_silent() {
            room.silent.insert(token);
        }
        room.timers.push(Reverse((until, token)));
        room.parked.insert(token, Parked { session, until });
        if room.next_wake.is_some_and(|at| until < at) {
            room.next_wake = Some(until);
            drop(room);
            self.timer_changed.notify_one();
        } else if room.next_wake.is_none() {
            drop(room);
            self.timer_changed.notify_one();
        }
        None
    }

    /// Stops watching a session's socket for good (before it is closed or
    /// handed on to a lingering close).
    pub(crate) fn forget(&self, session: &mut S) {
        let registration = std::mem::take(session.registration());
        self.forget_fd(registration, session.fd());
    }

    /// [`forget`](WaitingRoom::forget) for a socket already taken out of its
    /// connection (a failed handshake hands it back on its own).
    pub(crate) fn forget_fd(&self, registration: Registration, fd: Option<BorrowedFd<'_>>) {
        // Only an armed socket can still be reported; one whose readiness
        // was reported stays silent until closed, so it costs no call.
        if registration == Registration::Armed
            && let Some(fd) = fd
        {
            let _ = epoll::delete(&self.epoll, fd);
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
        self.timer_changed.notify_one();
    }

    /// Ends the timer thread and the workers (each finishes the connection it
    /// is running); connections still waiting are closed.
    pub(crate) fn stop(&self) {
        self.room().stop = true;
        self.stopped.store(true, Ordering::Release);
        self.timer_changed.notify_one();
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }

    /// A worker's loop: waits in the shared epoll set and wakes each
    /// connection whose socket is ready, or whose timer fired, until the stop.
    /// Between connections, `between` finishes the worker's own lingering
    /// closes that are due and says when the next look is (`None`: it holds
    /// none). A worker holding closes looks whether a socket is ready without
    /// sleeping; only when none is, it hands its closes on (`idle`) and
    /// sleeps: so many workers sleeping with closes in hand never wake each
    /// millisecond to look at them.
    pub(crate) fn serve(
        &self,
        served: &S::Served,
        mut between: impl FnMut() -> Option<Duration>,
        mut idle: impl FnMut(),
    ) {
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 1];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while !self.stopped.load(Ordering::Acquire) {
            let holding = between().is_some();
            let mut ready = self.wait(&mut events, holding.then_some(&now));
            if holding && matches!(ready, Ok(None)) {
                idle();
                ready = self.wait(&mut events, None);
            }
            let (data, flags) = match ready {
                Ok(Some(ready)) => ready,
                Ok(None) | Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    error!("worker: waiting for sockets failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            match data {
                STOP => break,
                DUE => {
                    let taken = rustix::io::read(&self.due, &mut [0u8; 8]).is_ok();
                    // Re-armed at once: while units remain, another worker wakes.
                    let _ = epoll::modify(
                        &self.epoll,
                        &self.due,
                        EventData::new_u64(DUE),
                        EventFlags::IN | EventFlags::ONESHOT,
                    );
                    if !taken {
                        continue;
                    }
                    let next = self.room().due.pop_front();
                    if let Some((session, wake)) = next {
                        session.wake(wake, served, self);
                    }
                }
                token => {
                    let session = self.room().take(Token(token as usize));
                    // None: its timer took it first (or it was shed).
                    if let Some(mut session) = session {
                        *session.registration() = Registration::Fired;
                        let ended = EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR;
                        let wake = if flags.contains(EventFlags::IN) && !flags.intersects(ended) {
                            Wake::Bytes
                        } else {
                            Wake::Ready
                        };
                        session.wake(wake, served, self);
                    }
                }
            }
        }
        // Wake the next sleeping worker: each wake-up reaches only one.
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }

    /// One wait in the epoll set: the token of the socket (or eventfd) that is
    /// ready and what it is ready for, `None` when `timeout` passed first.
    fn wait(
        &self,
        events: &mut [MaybeUninit<epoll::Event>; 1],
        timeout: Option<&Timespec>,
    ) -> rustix::io::Result<Option<(u64, EventFlags)>> {
        let (ready, _) = epoll::wait(&self.epoll, events, timeout)?;
        Ok(ready.first().map(|event| {
            let (data, flags) = (event.data, event.flags);
            (data.u64(), flags)
        }))
    }

    /// The timer thread: queues each connection whose timer is due for the
    /// workers, until the stop; then ends what still waits.
    pub(crate) fn run_timers(&self, served: &S::Served) {
        let mut room = self.room();
        loop {
            if room.stop {
                let parked = room.parked.drain().map(|(_, p)| p.session);
                let mut left: Vec<S> = parked.collect();
                left.extend(room.due.drain(..).map(|(session, _)| session));
                room.silent.clear();
                drop(room);
                for mut session in left {
                    self.forget(&mut session);
                    session.end_now(served, self);
                }
                return;
            }
            let queued = room.due.len();
            let now = Instant::now();
            while let Some(&Reverse((at, token))) = room.timers.peek() {
                if at > now {
                    break;
                }
                room.timers.pop();
                if room.parked.get(&token).is_some_and(|p| p.until == at)
                    && let Some(session) = room.take(token)
                {
                    room.due.push_back((session, Wake::Timer));
                }
            }
            if std::mem::take(&mut room.flush_silent) {
                let silent: Vec<Token> = room.silent.iter().copied().collect();
                for token in silent {
                    if let Some(session) = room.take(token) {
                        room.due.push_back((session, Wake::Shutdown));
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
            let added = room.due.len() - queued;
            if added > 0 {
                drop(room);
                let _ = rustix::io::write(&self.due, &(added as u64).to_ne_bytes());
                room = self.room();
                continue;
            }
            let next = room.timers.peek().map(|Reverse((at, _))| *at);
            room.next_wake = next;
            room = match next {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    self.timer_changed
                        .wait_timeout(room, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self
                    .timer_changed
                    .wait(room)
                    .unwrap_or_else(|p| p.into_inner()),
            };
            room.next_wake = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::sync::mpsc::{self, Receiver, Sender};
    use std::thread::JoinHandle;

    const LONG: Duration = Duration::from_secs(30);
    const PATIENCE: Duration = Duration::from_secs(5);

    /// A connection as the room sees it, over one end of a socket pair; its
    /// wake-ups are reported to the test.
    struct Fake {
        token: Token,
        socket: UnixStream,
        silent: bool,
        registration: Registration,
    }

    impl Waiter for Fake {
        type Served = Sender<(usize, Wake)>;

        fn wake(self, wake: Wake, served: &Self::Served, _room: &WaitingRoom<Self>) {
            let _ = served.send((self.token.0, wake));
        }

        fn end_now(self, served: &Self::Served, _room: &WaitingRoom<Self>) {
            let _ = served.send((self.token.0, Wake::Shutdown));
            assert_eq!(self.registration, Registration::Off, "forgotten first");
        }

        fn token(&self) -> Token {
            self.token
        }

        fn fd(&self) -> Option<BorrowedFd<'_>> {
            Some(self.socket.as_fd())
        }

        fn is_silent(&self) -> bool {
            self.silent
        }

        fn registration(&mut self) -> &mut Registration {
            &mut self.registration
        }
    }

    /// A fake connection and the client's end of its socket.
    fn fake(token: usize, silent: bool) -> (Fake, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_read_timeout(Some(PATIENCE)).unwrap();
        let fake = Fake {
            token: Token(token),
            socket: ours,
            silent,
            registration: Registration::Off,
        };
        (fake, theirs)
    }

    /// Parks `fake` for `interest`, for `wait` from now at most: it must wait.
    fn park(room: &WaitingRoom<Fake>, fake: Fake, interest: Interest, wait: Duration) {
        let until = Instant::now() + wait;
        assert!(room.park(fake, interest, until).is_none(), "parked");
    }

    /// A room with its timer thread and one worker; stopped and joined on
    /// drop.
    struct Running {
        room: Arc<WaitingRoom<Fake>>,
        woken: Receiver<(usize, Wake)>,
        threads: Vec<JoinHandle<()>>,
    }

    impl Running {
        fn start() -> Running {
            let room = Arc::new(WaitingRoom::new().unwrap());
            let (tell, woken) = mpsc::channel();
            let timers = {
                let room = Arc::clone(&room);
                let tell = tell.clone();
                std::thread::spawn(move || room.run_timers(&tell))
            };
            let worker = {
                let room = Arc::clone(&room);
                std::thread::spawn(move || room.serve(&tell, || None, || {}))
            };
            Running {
                room,
                woken,
                threads: vec![timers, worker],
            }
        }

        fn next_wake(&self) -> (usize, Wake) {
            self.woken
                .recv_timeout(PATIENCE)
                .expect("a wake-up in time")
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
        let room = WaitingRoom::<Fake>::new().unwrap();
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
        park(
            &running.room,
            talking,
            Interest::WRITABLE | Interest::READABLE,
            LONG,
        );
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
        assert!(
            running
                .room
                .park(late, Interest::READABLE, Instant::now() + LONG)
                .is_some(),
            "handed back after the stop"
        );
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0, "closed");
    }
}
