//! The HTTP side's event loop: one thread, one `mio` poll, every connection
//! held to the same [`ConnectionPolicy`] as the WWEP ports. The allow-list is
//! applied at accept, before a byte is read; open connections are capped (when
//! full, one is shed by the policy's order: the oldest idle, then, past its
//! first second, the oldest still sending its head, being answered, or
//! watching, then, when every connection is within its first second, the
//! youngest still sending its head, the oldest silent, the youngest
//! watcher); a new connection is read the moment it is accepted; what a
//! client sends that is only discarded is read up to [`DISCARD_LIMIT`]; a
//! request has an absolute deadline from
//! its first byte to the last byte of its answer, and an idle keep-alive
//! connection is closed after [`IDLE_DEADLINE`]. `httparse` parses request heads; a request never
//! has a body (this side is read-only), so one with a body is refused (413).
//! A `GET /api/events` turns its connection into a watcher ([`super::events`]),
//! fed from the acknowledged writes whenever the feed wakes the loop and
//! whenever its socket takes more.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::debug;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::State;
use super::events::{self, Dropped, Watcher};
use super::message::{Head, MAX_HEAD, Parsed, Response, parse};
use crate::facts::Refusal;
use crate::metrics::HttpCounts;
use crate::policy::{Busy, ConnectionPolicy, Places, SHED_GRACE};
use crate::rate_limited::RateLimitedLog;

pub(super) const LISTENER: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// From a request's first byte to the last byte of its answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// A keep-alive connection with no request in progress.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a refused connection is kept to read what the client sent, so
/// that the `403` is not lost to a reset.
const REFUSED_LINGER: Duration = Duration::from_secs(1);
/// What a connection may send that is read only to be discarded (a watcher
/// past its request, whose input only tells of a hang-up; one refused or
/// closing after its answer): past this, a watcher is closed and the others
/// are no longer read, so a flood of bytes costs the loop nothing.
const DISCARD_LIMIT: usize = 4096;

/// Counters for `/metrics`.
#[derive(Default)]
pub(super) struct Counters {
    pub refused_address: AtomicU64,
    pub shed_full: AtomicU64,
    pub shed_deadline: AtomicU64,
    pub open: AtomicU64,
    pub watchers: AtomicU64,
    pub watcher_events: AtomicU64,
    pub watchers_dropped_behind: AtomicU64,
    pub watchers_dropped_stalled: AtomicU64,
}

impl Counters {
    /// What `/metrics` shows of them, read now.
    pub(super) fn counts(&self) -> HttpCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpCounts {
            refused_address: get(&self.refused_address),
            shed_full: get(&self.shed_full),
            shed_deadline: get(&self.shed_deadline),
            open: get(&self.open),
            watchers: get(&self.watchers),
            watcher_events: get(&self.watcher_events),
            watchers_dropped_behind: get(&self.watchers_dropped_behind),
            watchers_dropped_stalled: get(&self.watchers_dropped_stalled),
        }
    }
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    /// When it was accepted.
    opened: Instant,
    /// It has sent at least a byte.
    heard: bool,
    /// Bytes read and discarded (see [`DISCARD_LIMIT`]).
    discarded: usize,
    /// It sent more than [`DISCARD_LIMIT`] to be discarded (not yet logged).
    flooded: bool,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// When the request in progress began (first byte read).
    request_since: Option<Instant>,
    idle_since: Instant,
    /// Close once the output is written.
    closing: bool,
    /// Refused at accept: only discard what arrives until `REFUSED_LINGER`.
    refused_at: Option<Instant>,
    /// Reading stopped: the output ended the exchange.
    read_done: bool,
    /// Its answer is being computed on the lookup thread.
    waiting: bool,
    /// Following `/api/events`: no more requests are read.
    watch: Option<Watcher>,
}

impl Connection {
    fn is_idle(&self) -> bool {
        self.request_since.is_none()
            && self.output.is_empty()
            && self.refused_at.is_none()
            && !self.waiting
            && self.watch.is_none()
    }

    /// Idle, and shed as idle for a newcomer: one that has sent nothing yet
    /// is given its first second to send its request (a newcomer does not
    /// shed a probe accepted a moment before it).
    fn is_idle_to_shed(&self, now: Instant) -> bool {
        self.is_idle() && (self.heard || self.opened + SHED_GRACE <= now)
    }

    /// Bytes queued that its socket has not taken yet.
    fn pending(&self) -> usize {
        self.output.len() - self.written
    }

    /// What it is busy with and since when, as the shed rule ranks it;
    /// `None` when it is idle or lingering after a refusal.
    fn busy(&self) -> Option<(Busy, Instant)> {
        if let Some(watch) = &self.watch {
            return Some((Busy::Stream, watch.started));
        }
        if self.refused_at.is_some() {
            return None;
        }
        let since = self.request_since?;
        if self.waiting || !self.output.is_empty() {
            Some((Busy::Answer, since))
        } else {
            Some((Busy::Request, since))
        }
    }

    fn deadline(&self, policy: &ConnectionPolicy) -> Instant {
        if let Some(at) = self.refused_at {
            at + REFUSED_LINGER
        } else if let Some(watch) = &self.watch {
            watch.deadline(self.pending() > 0)
        } else if let Some(at) = self.request_since {
            policy.deadline_from(at)
        } else {
            self.idle_since + IDLE_DEADLINE
        }
    }
}

/// Why a connection is driven.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Its socket is ready, or its answer is: everything that can be done.
    Ready,
    /// The feed has new writes for a watcher: no read (its socket said
    /// nothing), only writing.
    Fed,
}

/// What became of a connection after it was driven.
enum Fate {
    Open,
    Close,
    /// A watcher let go, saying why when it can.
    Drop(Dropped),
    /// It sent more than [`DISCARD_LIMIT`] to be discarded: a watcher is
    /// closed, another is no longer read.
    Flooded,
}

/// The kinds of line the HTTP side logs about its clients, each limited and
/// counted apart (a flood of one kind never hides another, and a line's
/// "more like this" count is its own kind's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// `accept(2)` failed (e.g. out of file descriptors).
    Accept,
    /// An address outside `--http-allow`.
    RefusedAddress,
    /// A newcomer turned away: the table full of busy connections.
    ShedNewcomer,
    /// The oldest idle connection shed for a newcomer.
    ShedIdle,
    /// A connection busy past its first second shed for a newcomer.
    ShedBusy,
    /// A connection within its first second shed for a newcomer: every
    /// connection was.
    ShedYoung,
    /// A connection that sent more than [`DISCARD_LIMIT`] it was not asked
    /// for.
    Flood,
    /// A request not done within the request deadline.
    Deadline,
    /// A watcher too many writes behind.
    WatcherBehind,
    /// A watcher whose socket took nothing for too long.
    WatcherStalled,
}

impl Line {
    const COUNT: usize = 10;
}

pub(super) struct EventLoop {
    pub poll: Poll,
    pub listener: TcpListener,
    pub state: Arc<State>,
    connections: HashMap<usize, Connection>,
    next: usize,
    log: RateLimitedLog,
    lookups: Lookups,
    /// The connections following `/api/events`.
    watchers: BTreeSet<usize>,
    /// When the watchers were last fed, and when they will be next (a wake
    /// from the feed is due).
    last_feed: Instant,
    feed_at: Option<Instant>,
}

/// Answers that read the store run on one thread of their own: a device
/// lookup may wait for Valkey/Redis up to the store's time limit, and
/// `/health` and `/metrics` must never wait behind it.
struct Lookups {
    jobs: Option<Sender<(usize, Head)>>,
    done: Arc<Mutex<Vec<(usize, Head, Response)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Lookups {
    fn start(state: Arc<State>, waker: Arc<Waker>) -> io::Result<Lookups> {
        let (jobs, queue) = mpsc::channel::<(usize, Head)>();
        let done = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::clone(&done);
        let thread = thread::Builder::new()
            .name("wwep-http-lookup".to_string())
            .spawn(move || {
                for (id, head) in queue {
                    let response = super::routes::answer(&head, &state);
                    answers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((id, head, response));
                    let _ = waker.wake();
                }
            })?;
        Ok(Lookups {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Hands a request to the lookup thread; false if it has stopped.
    fn ask(&self, id: usize, head: Head) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send((id, head)).is_ok())
    }

    fn answered(&self) -> Vec<(usize, Head, Response)> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EventLoop {
    pub fn new(
        poll: Poll,
        listener: TcpListener,
        state: Arc<State>,
        waker: Arc<Waker>,
    ) -> io::Result<Self> {
        let lookups = Lookups::start(Arc::clone(&state), Arc::clone(&waker))?;
        // A write acknowledged while someone watches wakes the loop (once
        // until the loop has read the feed).
        state.activity.feed().on_publish(Box::new(move || {
            let _ = waker.wake();
        }));
        Ok(EventLoop {
            poll,
            listener,
            state,
            connections: HashMap::new(),
            next: FIRST_CONNECTION,
            log: RateLimitedLog::per_kind(log::Level::Warn, Duration::from_secs(10), Line::COUNT),
            lookups,
            watchers: BTreeSet::new(),
            last_feed: Instant::now(),
            feed_at: None,
        })
    }

    pub fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        while !self.state.stopping.load(Ordering::Acquire) {
            let policy = &self.state.policy;
            let timeout = self
                .connections
                .values()
                .map(|c| c.deadline(policy))
                .chain(self.feed_at)
                .min()
                .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    debug!("http: poll: {e}");
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {
                        self.deliver_lookups();
                        self.schedule_feed();
                    }
                    Token(id) => self.drive_one(id),
                }
            }
            if self.feed_at.is_some_and(|at| at <= Instant::now()) {
                self.feed_at = None;
                if self.state.activity.feed().woken() {
                    self.last_feed = Instant::now();
                    self.feed_watchers();
                }
            }
            self.expire();
        }
        for id in std::mem::take(&mut self.watchers) {
            if let Some(conn) = self.connections.get_mut(&id) {
                farewell(conn, Dropped::Stopping);
            }
        }
        self.lookups.stop();
    }

    /// Reads, answers and writes what connection `id` can now, and closes it
    /// when it is done.
    fn drive_one(&mut self, id: usize) {
        self.drive_for(id, Wake::Ready);
    }

    fn drive_for(&mut self, id: usize, wake: Wake) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        match drive(id, conn, &self.state, &self.lookups, wake) {
            Fate::Open => {
                if conn.watch.as_ref().is_some_and(|w| !w.leaving) {
                    self.watchers.insert(id);
                }
            }
            Fate::Close => self.close(id),
            Fate::Drop(why) => self.drop_watcher(id, why),
            Fate::Flooded => {
                conn.flooded = false;
                let peer = conn.peer;
                let watching = conn.watch.is_some();
                let what = if watching {
                    "watcher closed"
                } else {
                    "no longer read"
                };
                self.log.log_kind(
                    Line::Flood as usize,
                    format_args!(
                        "http: {peer} {what}: sent more than {DISCARD_LIMIT} bytes it was not asked for"
                    ),
                );
                if watching {
                    self.close(id);
                }
            }
        }
    }

    /// New writes are waiting: the watchers are fed now, or a feeding
    /// interval after the last time.
    fn schedule_feed(&mut self) {
        if self.feed_at.is_none() && self.state.activity.feed().is_due() {
            let next = self.last_feed + events::FEED_INTERVAL;
            self.feed_at = Some(next.max(Instant::now()));
        }
    }

    /// Hands every watcher the writes it has not seen. One whose socket
    /// takes nothing now is only checked for falling behind: it is driven
    /// again when its socket is writable, so a stuck watcher costs no system
    /// call per feeding.
    fn feed_watchers(&mut self) {
        let ids: Vec<usize> = self.watchers.iter().copied().collect();
        let now = Instant::now();
        for id in ids {
            let Some(conn) = self.connections.get_mut(&id) else {
                continue;
            };
            let pending = conn.pending();
            if pending < events::BUFFER_BYTES {
                self.drive_for(id, Wake::Fed);
                continue;
            }
            let feed = self.state.activity.feed();
            if let Some(watch) = conn.watch.as_mut()
                && !watch.leaving
                && watch.fill(feed, &mut conn.output, pending, now).is_err()
            {
                self.drop_watcher(id, Dropped::Behind);
            }
        }
    }

    /// Lets a watcher go: its last event says why where it can, the drop is
    /// counted and logged (rate-limited). One behind finishes the event its
    /// socket has begun and is told why, as long as its socket takes
    /// something within [`events::STALL`]; it is closed once that is out.
    fn drop_watcher(&mut self, id: usize, why: Dropped) {
        let mut stays = false;
        if let Some(conn) = self.connections.get_mut(&id) {
            if why == Dropped::Behind {
                stays = last_words(conn);
                // No longer a watcher, at most its last words.
                self.watchers.remove(&id);
                let watchers = &self.state.counters.watchers;
                watchers.fetch_sub(1, Ordering::Relaxed);
            } else {
                farewell(conn, why);
            }
            let peer = conn.peer;
            let counters = &self.state.counters;
            match why {
                Dropped::Behind => self.count(
                    &counters.watchers_dropped_behind,
                    Line::WatcherBehind,
                    format_args!(
                        "http: watcher {peer} dropped: more than {} writes behind",
                        crate::events::CAPACITY
                    ),
                ),
                Dropped::Stalled => self.count(
                    &counters.watchers_dropped_stalled,
                    Line::WatcherStalled,
                    format_args!(
                        "http: watcher {peer} dropped: its socket took nothing for {} s",
                        events::STALL.as_secs()
                    ),
                ),
                // Counted where they happen: a shed with the others, a stop
                // not at all.
                Dropped::Shed | Dropped::Stopping => {}
            }
        }
        if !stays {
            self.close(id);
        }
    }

    /// Sends the answers the lookup thread has finished (a connection closed
    /// meanwhile, by its deadline or its peer, is gone and its answer dropped).
    fn deliver_lookups(&mut self) {
        for (id, head, response) in self.lookups.answered() {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.waiting = false;
                set_answer(conn, &head, response, &self.state);
                self.drive_one(id);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.log
                        .log_kind(Line::Accept as usize, format_args!("http: accept: {e}"));
                    return;
                }
            };
            self.admit(stream, peer);
        }
    }

    /// Gives a new connection its place: a refused address gets its 403 and
    /// keeps a place while it lingers; when every place is taken, the oldest
    /// idle connection is shed, and without one the newcomer goes.
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let now = Instant::now();
        let state = Arc::clone(&self.state);
        let ip = peer.ip().to_canonical();
        let refused = state.policy.check_address(ip).is_err();
        if refused {
            self.count(
                &state.counters.refused_address,
                Line::RefusedAddress,
                format_args!("http: refused {peer}: not in --http-allow"),
            );
            let answer = super::routes::forbidden().to_bytes(false, false);
            // A fresh socket's send buffer takes these few bytes at once.
            let _ = stream.write(&answer);
            let _ = stream.shutdown(Shutdown::Write);
        }
        if state.policy.make_room(self, ip).is_err() {
            // Full of busy connections: this one goes (a refused one has
            // had its 403).
            state.counters.shed_full.fetch_add(1, Ordering::Relaxed);
            if !refused {
                self.log.log_kind(
                    Line::ShedNewcomer as usize,
                    format_args!(
                        "http: {peer} shed: --http-max-connections {} reached",
                        state.policy.max_connections()
                    ),
                );
            }
            return;
        }
        let id = self.next;
        self.next += 1;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            debug!("http: register {peer}: {e}");
            return;
        }
        state.counters.open.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            stream,
            peer,
            opened: now,
            heard: false,
            discarded: 0,
            flooded: false,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            request_since: None,
            idle_since: now,
            closing: refused,
            refused_at: refused.then_some(now),
            read_done: false,
            waiting: false,
            watch: None,
        };
        self.connections.insert(id, connection);
        // Read at once: a request already here (a health probe's) is
        // answered before the next newcomer is admitted, and one that has
        // sent nothing yet has had its read (a newcomer sheds such a
        // connection only after every other it may shed, and oldest first).
        self.drive_one(id);
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let policy = &self.state.policy;
        let due: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline(policy) <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(c) = self.connections.get_mut(&id)
                && let Some(watch) = &c.watch
            {
                if watch.leaving {
                    // Its last words not taken within the stall limit:
                    // counted when it was dropped.
                    self.close(id);
                } else if c.pending() > 0 {
                    self.drop_watcher(id, Dropped::Stalled);
                } else {
                    // Silent for KEEP_ALIVE: a comment, so that proxies and
                    // clients know the stream is alive.
                    c.output.clear();
                    c.written = 0;
                    c.output.extend_from_slice(events::KEEP_ALIVE_COMMENT);
                    if let Some(watch) = c.watch.as_mut() {
                        watch.last_queued = now;
                    }
                    self.drive_one(id);
                }
                continue;
            }
            if let Some(c) = self.connections.get(&id)
                && c.refused_at.is_none()
                && c.request_since.is_some()
            {
                self.count(
                    &self.state.counters.shed_deadline,
                    Line::Deadline,
                    format_args!(
                        "http: {} shed: request not done within {}s",
                        c.peer,
                        self.state.policy.request_deadline().as_secs()
                    ),
                );
            }
            self.close(id);
        }
    }

    /// Counts a connection refused or shed, and logs why (rate-limited).
    fn count(&self, counter: &AtomicU64, line: Line, why: std::fmt::Arguments<'_>) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.log.log_kind(line as usize, why);
    }

    fn close(&mut self, id: usize) {
        if let Some(mut c) = self.connections.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.state.counters.open.fetch_sub(1, Ordering::Relaxed);
            // One leaving was counted out when it began to leave.
            if c.watch.as_ref().is_some_and(|w| !w.leaving) {
                self.watchers.remove(&id);
                self.state.counters.watchers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The open connections, as the connection policy sees them: a place is
/// room in the table, nothing more.
impl Places for EventLoop {
    type Place = ();

    fn take(&mut self, _ip: IpAddr) -> Result<(), Refusal> {
        if self.state.policy.is_full(self.connections.len()) {
            Err(Refusal::Full)
        } else {
            Ok(())
        }
    }

    /// Sheds the idle connection idle the longest (or a refused one that is
    /// lingering); false if every connection is busy.
    fn shed_oldest_idle(&mut self) -> bool {
        let victim = self
            .connections
            .iter()
            .filter(|(_, c)| c.refused_at.is_some())
            .map(|(id, _)| *id)
            .next()
            .or_else(|| {
                let now = Instant::now();
                self.connections
                    .iter()
                    .filter(|(_, c)| c.is_idle_to_shed(now))
                    .min_by_key(|(_, c)| c.idle_since)
                    .map(|(id, _)| *id)
            });
        let Some(id) = victim else {
            return false;
        };
        if self
            .connections
            .get(&id)
            .is_some_and(|c| c.refused_at.is_none())
        {
            self.count(
                &self.state.counters.shed_full,
                Line::ShedIdle,
                format_args!(
                    "http: oldest idle connection shed: --http-max-connections {} reached",
                    self.state.policy.max_connections()
                ),
            );
        }
        self.close(id);
        true
    }

    /// Sheds the connection busy the longest with `busy`, if it began before
    /// `began_before` (a watcher is told why when it can be).
    fn shed_oldest_busy(&mut self, busy: Busy, began_before: Instant) -> bool {
        let victim = self
            .connections
            .iter()
            .filter_map(|(id, c)| match c.busy() {
                Some((b, since)) if b == busy && since < began_before => Some((since, *id)),
                _ => None,
            })
            .min();
        let Some((since, id)) = victim else {
            return false;
        };
        let what = match busy {
            Busy::Request => "still sending its request",
            Busy::Answer => "being answered",
            Busy::Stream => "watching /api/events",
        };
        if let Some(conn) = self.connections.get_mut(&id) {
            if busy == Busy::Stream {
                farewell(conn, Dropped::Shed);
            }
            let peer = conn.peer;
            self.count(
                &self.state.counters.shed_full,
                Line::ShedBusy,
                format_args!(
                    "http: {peer} shed after {} ms {what}: --http-max-connections {} reached",
                    since.elapsed().as_millis(),
                    self.state.policy.max_connections()
                ),
            );
        }
        self.close(id);
        true
    }

    /// Every connection is within its first second (a crowd that reconnects
    /// before its connections are a second old): the newcomer takes the
    /// place of the youngest still sending its request head (it has invested
    /// least; a slow head is what such a crowd holds the table with), else
    /// of the oldest that has sent nothing yet (each has had its read; the
    /// oldest has had the longest to send), else of the youngest watcher
    /// (told why; it reconnects by itself). One whose request has arrived
    /// and is being answered is never shed in its first second.
    fn shed_young(&mut self) -> bool {
        let now = Instant::now();
        let youngest = |busy: Busy| {
            self.connections
                .iter()
                .filter_map(|(id, c)| match c.busy() {
                    Some((b, since)) if b == busy => Some((since, *id)),
                    _ => None,
                })
                .max()
        };
        let silent = || {
            self.connections
                .iter()
                .filter(|(_, c)| c.is_idle() && !c.heard)
                .map(|(id, c)| (c.opened, *id))
                .min()
        };
        let (victim, what) = if let Some((since, id)) = youngest(Busy::Request) {
            ((since, id), "still sending its request")
        } else if let Some((opened, id)) = silent() {
            ((opened, id), "having sent nothing")
        } else if let Some((since, id)) = youngest(Busy::Stream) {
            ((since, id), "watching /api/events")
        } else {
            return false;
        };
        let (since, id) = victim;
        if let Some(conn) = self.connections.get_mut(&id) {
            if conn.watch.is_some() {
                farewell(conn, Dropped::Shed);
            }
            let peer = conn.peer;
            self.count(
                &self.state.counters.shed_full,
                Line::ShedYoung,
                format_args!(
                    "http: {peer} shed after {} ms {what}, every connection within its first second: --http-max-connections {} reached",
                    now.saturating_duration_since(since).as_millis(),
                    self.state.policy.max_connections()
                ),
            );
        }
        self.close(id);
        true
    }
}

/// A watcher dropped for falling behind: its stream ends with the rest of
/// the event its socket had begun and `event: dropped` (the events queued
/// after that one are dropped), written as far as its socket takes it now;
/// true when some is left, for its socket to take within the stall limit.
fn last_words(conn: &mut Connection) -> bool {
    let Some(watch) = conn.watch.as_mut() else {
        return false;
    };
    watch.leave(&mut conn.output, conn.written);
    write_pending(conn).is_some() && conn.pending() > 0
}

/// A dropped watcher's last event, when nothing else is half-sent before it
/// and its socket takes it now (one dropped for falling behind has
/// [`last_words`] instead).
fn farewell(conn: &mut Connection, why: Dropped) {
    if conn.pending() == 0 {
        let _ = conn.stream.write(&events::dropped_event(why));
    }
}

/// Reads, answers and writes what can be done now without blocking.
fn drive(id: usize, conn: &mut Connection, state: &State, lookups: &Lookups, wake: Wake) -> Fate {
    loop {
        let mut progress = match write_pending(conn) {
            Some(progress) => progress,
            None => return Fate::Close,
        };
        // A watcher dropped for falling behind goes once its last words are
        // out.
        if let Some(watch) = &conn.watch
            && watch.leaving
        {
            return if conn.pending() == 0 {
                Fate::Close
            } else {
                Fate::Open
            };
        }
        // Read, up to one head's worth beyond what is buffered.
        if wake == Wake::Ready && !conn.read_done && conn.input.len() <= MAX_HEAD {
            match read_more(conn) {
                Some(_) if conn.flooded => return Fate::Flooded,
                Some(read) => progress |= read,
                None => return Fate::Close,
            }
        }
        // Answer the next request once the previous answer is out.
        if conn.output.is_empty()
            && !conn.closing
            && !conn.waiting
            && conn.watch.is_none()
            && !conn.input.is_empty()
        {
            match answer_next(id, conn, state, lookups) {
                Some(answered) => progress |= answered,
                None => return Fate::Close,
            }
        }
        // A watcher takes the writes it has not seen, as far as its buffer
        // allows.
        if let Some(watch) = conn.watch.as_mut() {
            let pending = conn.output.len() - conn.written;
            if pending < events::BUFFER_BYTES {
                conn.output.drain(..conn.written);
                conn.written = 0;
            }
            // Even with its buffer full: that is when it falls behind.
            let feed = state.activity.feed();
            match watch.fill(feed, &mut conn.output, pending, Instant::now()) {
                Ok(0) => {}
                Ok(n) => {
                    let events = &state.counters.watcher_events;
                    events.fetch_add(n, Ordering::Relaxed);
                    progress = true;
                }
                Err(_) => return Fate::Drop(Dropped::Behind),
            }
        }
        if !progress {
            return Fate::Open;
        }
    }
}

/// Writes what is pending; once an answer is out, the connection is idle
/// again (or half-closed, when it was its last). Whether anything was
/// written; `None` when the connection must close.
fn write_pending(conn: &mut Connection) -> Option<bool> {
    let mut progress = false;
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => return None,
            Ok(n) => {
                if let Some(watch) = conn.watch.as_mut() {
                    watch.took(&conn.output[conn.written..][..n], Instant::now());
                }
                conn.written += n;
                progress = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    if !conn.output.is_empty() && conn.written == conn.output.len() {
        conn.output.clear();
        conn.written = 0;
        if conn.watch.is_some() {
            return Some(progress);
        }
        // A pipelined request already begun is timed from now.
        conn.request_since = (!conn.input.is_empty()).then(Instant::now);
        conn.idle_since = Instant::now();
        if conn.closing && conn.refused_at.is_none() {
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.refused_at = Some(Instant::now());
        }
    }
    Some(progress)
}

/// Reads what has arrived (discarded once the connection is ending). Whether
/// anything was read; `None` when the connection must close.
fn read_more(conn: &mut Connection) -> Option<bool> {
    let mut chunk = [0u8; 4096];
    match conn.stream.read(&mut chunk) {
        // A watcher that closes is gone (nobody half-closes a stream it
        // still reads).
        Ok(0) if conn.watch.is_some() => None,
        Ok(0) => {
            conn.read_done = true;
            let nothing_owed = conn.output.is_empty() && !conn.waiting;
            if nothing_owed && (conn.input.is_empty() || conn.closing) {
                return None;
            }
            Some(false)
        }
        Ok(n) => {
            conn.heard = true;
            // Refused, ending or watching: what the client sends is discarded,
            // up to a limit.
            if conn.closing || conn.watch.is_some() {
                conn.discarded += n;
                if conn.discarded > DISCARD_LIMIT {
                    conn.read_done = true;
                    conn.flooded = true;
                }
            } else {
                if conn.input.is_empty() && conn.request_since.is_none() {
                    conn.request_since = Some(Instant::now());
                }
                conn.input.extend_from_slice(&chunk[..n]);
            }
            Some(true)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(true),
        Err(_) => None,
    }
}

/// Parses the next request and answers it, here or (when the answer reads
/// the store) on the lookup thread. Whether a request was taken; `None` when
/// the connection must close (it ended in the middle of a head).
fn answer_next(id: usize, conn: &mut Connection, state: &State, lookups: &Lookups) -> Option<bool> {
    let (head, n) = match parse(&conn.input) {
        Parsed::Partial if conn.read_done => return None,
        Parsed::Partial => return Some(false),
        Parsed::Refuse(status) => {
            conn.output = super::routes::refusal(status).to_bytes(false, false);
            conn.closing = true;
            conn.input.clear();
            return Some(true);
        }
        Parsed::Complete(head, n) => (head, n),
    };
    conn.input.drain(..n);
    if conn.request_since.is_none() {
        conn.request_since = Some(Instant::now());
    }
    if head.has_body {
        let mut head = head;
        head.keep_alive = false;
        set_answer(conn, &head, super::routes::refusal(413), state);
    } else if let Some(asked) = super::routes::watch(&head) {
        match asked {
            Err(response) => set_answer(conn, &head, response, state),
            Ok(_) if head.method == "HEAD" => {
                conn.output = events::stream_head(true);
                conn.closing = true;
            }
            Ok(device) => start_watching(conn, device, state),
        }
    } else if !super::routes::reads_store(&head) {
        let response = super::routes::answer(&head, state);
        set_answer(conn, &head, response, state);
    } else {
        conn.waiting = true;
        if !lookups.ask(id, head) {
            conn.waiting = false;
            let head = Head {
                method: "GET".to_string(),
                path: String::new(),
                keep_alive: false,
                has_body: false,
            };
            set_answer(conn, &head, super::routes::refusal(503), state);
        }
    }
    Some(true)
}

/// Turns the connection into a watcher: the stream's head goes out, and
/// the writes acknowledged from now on follow it. Requests sent after this
/// one are never answered.
fn start_watching(conn: &mut Connection, device: Option<u16>, state: &State) {
    let now = Instant::now();
    conn.output = events::stream_head(false);
    conn.written = 0;
    conn.input.clear();
    conn.closing = false;
    conn.request_since = None;
    let _ = socket2::SockRef::from(&conn.stream).set_send_buffer_size(events::SOCKET_BUFFER_BYTES);
    conn.watch = Some(Watcher::start(state.activity.feed(), device, now));
    state.counters.watchers.fetch_add(1, Ordering::Relaxed);
}

/// Puts a request's answer in the connection's output.
fn set_answer(conn: &mut Connection, head: &Head, response: Response, state: &State) {
    let keep_alive = head.keep_alive && !state.stopping.load(Ordering::Acquire);
    conn.output = response.to_bytes(head.method == "HEAD", keep_alive);
    conn.closing = !keep_alive;
}

/// Wakes the event loop to stop.
pub(super) fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKER)
}
