//! Listening sockets and the accept threads.
//!
//! Each port has its own accept thread. It accepts every pending connection,
//! checks `--allow` (unless a trusted balancer's PROXY header must first name
//! the client), takes a place in the connection table (shedding the oldest
//! silent connection when the table is full) and puts the new session in the
//! waiting room, where the workers take it up once its first bytes are there,
//! except the first few of a batch on the open port, which it serves itself
//! when nothing in that can wait (see `serves_here`). A thread that serves
//! nothing itself blocks in `accept` ([`accept_blocking`]); one that does
//! waits in a poll, which also times the lingering closes it finishes
//! ([`accept_loop`]). It never waits on a client.

use rustix::io::Errno;
use rustix::net::SocketFlags;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::facts::{Facts, Refusal};
use crate::net::admission::Admission;
use crate::net::close::{self, Reach};
use crate::net::context::Context;
use crate::net::linger;
use crate::net::proxy;
use crate::net::session::{Room, Session};
use crate::net::waiting_room::{Waiter, Wake};
use crate::policy;
use crate::protocol::Transport;

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const STOP: Token = Token(1);

/// How many connections of one accept batch the open port's accept thread
/// serves itself (see [`serves_here`]); the rest of a longer batch go to the
/// pool as they are accepted, so a load one thread cannot carry spreads over
/// the workers. With workers that wait on the sockets themselves (one per core
/// with registers in memory), 64 served here cost 24 µs of server CPU per
/// transaction at concurrency 32 on two cores against 34 µs with 16, at the
/// same rate (a connection handed on costs its arming and a worker's wake-up).
/// With the earlier pool behind a poller thread, 8–16 had been best.
const SERVED_HERE_PER_BATCH: usize = 64;

/// Binds a non-blocking listener whose backlog can hold a burst as large as the
/// connection table (std's fixed 128 would drop SYNs and cost clients a
/// one-second retry).
pub(crate) fn bind(
    addr: SocketAddr,
    backlog: usize,
    transport: Transport,
) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restart must not wait for the old connections' TIME_WAIT to expire.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `::` serves IPv4 too where the system allows it.
        let _ = socket.set_only_v6(false);
    }
    if transport == Transport::Tls {
        // A handshake is several small writes; Nagle would delay each. Set on
        // the listener, it is inherited by every accepted socket: no call per
        // connection.
        socket.set_tcp_nodelay(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.clamp(128, 65535) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    // EMFILE and ENFILE: the process or the system is out of file descriptors.
    let errno = e.raw_os_error().map(Errno::from_raw_os_error);
    matches!(errno, Some(Errno::MFILE | Errno::NFILE))
}

/// The accept thread's body: runs until the server stops.
pub(crate) fn accept_loop(
    listener: std::net::TcpListener,
    mut poll: Poll,
    transport: Transport,
    ctx: Arc<Context>,
    room: Arc<Room>,
) {
    let mut listener = TcpListener::from_std(listener);
    if let Err(e) = poll
        .registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
    {
        log::error!("{transport} listener cannot be watched: {e}");
        return;
    }
    let mut events = Events::with_capacity(8);
    let serves_here = serves_here(transport, &ctx);
    if serves_here {
        linger::finish_own_closes();
    }
    let here_per_batch = if serves_here {
        SERVED_HERE_PER_BATCH
    } else {
        0
    };
    let mut here: Vec<Session> = Vec::with_capacity(here_per_batch);
    // Until the next look at the closes this thread finishes itself.
    let mut sweep_in = None;
    while !ctx.is_stopping() {
        if let Err(e) = poll.poll(&mut events, sweep_in) {
            if e.kind() != io::ErrorKind::Interrupted {
                debug!("{transport} accept poll failed: {e}");
            }
            continue;
        }
        // Edge-triggered: take every pending connection before waiting again.
        // The first is served at once (alone, its client should not wait for
        // the accept that finds the queue empty); the next ones here once the
        // batch is in, the rest by the pool.
        let mut served = 0;
        while !ctx.is_stopping() {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let Some(session) =
                        admit(TcpStream::from(stream), peer, transport, &ctx, &room)
                    else {
                        continue;
                    };
                    if served + here.len() >= here_per_batch {
                        session.wait_for_first_bytes(&ctx, &room);
                    } else if served == 0 && here.is_empty() {
                        served += 1;
                        session.wake(Wake::Accepted, &ctx, &room);
                    } else {
                        here.push(session);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    ctx.trouble_log.log(format_args!(
                        "{transport} listener cannot accept: {e}; backing off"
                    ));
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => debug!("{transport} accept failed: {e}"),
            }
        }
        for session in here.drain(..) {
            if ctx.is_stopping() {
                session.wait_for_first_bytes(&ctx, &room);
            } else {
                session.wake(Wake::Accepted, &ctx, &room);
            }
        }
        sweep_in = linger::sweep_own_closes(&ctx.lingerer);
    }
    linger::hand_over_own_closes(&ctx.lingerer);
    debug!("{transport} accept loop stopped");
}

/// The accept thread of a port whose connections all go to the pool (see
/// [`serves_here`]): it blocks in `accept` itself, as the design card draws
/// it, so each connection costs one call, with no wait in a poll before it
/// and no accept that finds the queue empty after it. The stop wakes it by
/// shutting the listener's receiving side down ([`Stopper::Accept`]).
pub(crate) fn accept_blocking(
    listener: std::net::TcpListener,
    transport: Transport,
    ctx: Arc<Context>,
    room: Arc<Room>,
) {
    if let Err(why) = run_as_batch() {
        debug!("{transport} accept thread stays a normal thread: {why}");
    }
    // The new socket non-blocking from the start: no call to make it so.
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    while !ctx.is_stopping() {
        match rustix::net::acceptfrom_with(&listener, flags) {
            Ok((fd, Some(addr))) => {
                let Ok(peer) = SocketAddr::try_from(addr) else {
                    continue;
                };
                if let Some(session) = admit(TcpStream::from(fd), peer, transport, &ctx, &room) {
                    session.wait_for_first_bytes(&ctx, &room);
                }
            }
            // No address: not a TCP peer; dropping it closes it.
            Ok((_, None)) => {}
            Err(Errno::INTR | Errno::AGAIN) => {}
            // The stop shut the listener down.
            Err(Errno::INVAL) => break,
            Err(e @ (Errno::MFILE | Errno::NFILE)) => {
                ctx.trouble_log.log(format_args!(
                    "{transport} listener cannot accept: {}; backing off",
                    io::Error::from(e)
                ));
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => debug!("{transport} accept failed: {}", io::Error::from(e)),
        }
    }
    debug!("{transport} accept loop stopped");
}

/// Makes the calling thread a batch thread (`SCHED_BATCH`, its nice value
/// kept). An accept thread that hands every connection on is woken once per
/// connection; as a normal thread, having slept, it preempts the worker on
/// its core at once, in the middle of a flight, and the worker pays a switch
/// out and back. A batch thread woken does not preempt: it runs when the
/// core is next free (within a scheduler tick), and accepts every connection
/// that came meanwhile in one go. Measured on the TLS port (docs/
/// performance.md): context switches per TLS 1.2 resumption 1.85 to 1.25,
/// the accept thread's CPU per connection 13.6 to 5.2 µs.
fn run_as_batch() -> Result<(), String> {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
    };
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    // The crate sets a nice value with the policy; the thread's own is put
    // back after it (the crate's 48 of 99 is nice 0).
    let nice = rustix::process::getpriority_process(None).map_err(|e| e.to_string())?;
    let priority = ThreadPriorityValue::try_from(48u8).map_err(|e| e.to_string())?;
    let set = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(priority),
        batch,
    );
    let _ = rustix::process::setpriority_process(None, nice);
    match thread_schedule_policy() {
        Ok(policy) if policy == batch => Ok(()),
        _ => Err(match set {
            Err(e) => format!("{e:?}"),
            Ok(()) => "the policy did not change".to_string(),
        }),
    }
}

/// What wakes an accept thread for the stop.
pub(crate) enum Stopper {
    /// The thread waits in this poll.
    Poll(mio::Waker),
    /// The thread blocks in `accept` on this listener (a second handle to
    /// it): shutting its receiving side down makes that `accept` fail.
    Accept(std::net::TcpListener),
}

impl Stopper {
    pub(crate) fn wake(&self) {
        match self {
            Stopper::Poll(waker) => {
                let _ = waker.wake();
            }
            Stopper::Accept(listener) => {
                let _ = rustix::net::shutdown(listener, rustix::net::Shutdown::Read);
            }
        }
    }
}

/// Whether the accept thread serves connections itself: only where nothing can
/// make it wait. On the open port, with registers in memory, a one-shot
/// request has usually arrived with its connection, and answering it on the
/// thread that accepted it saves waking a worker, which is most of a
/// transaction's cost. A connection without a complete message goes to the
/// waiting room like any other. TLS handshakes, data files and shared stores
/// always go to the pool.
pub(crate) fn serves_here(transport: Transport, ctx: &Context) -> bool {
    transport == Transport::Plain && ctx.backend.answers_from_memory()
}

/// Gives a new connection its place, or turns it away. The address check runs
/// here when the peer's address is the client's; behind a trusted balancer it
/// runs once the PROXY header has named the client (in the session).
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    ctx: &Context,
    room: &Room,
) -> Option<Session> {
    let mut facts = Facts::new(transport, peer, Instant::now());
    let ip = peer.ip().to_canonical();
    let checked = if proxy::from_balancer(&ctx.config.proxy, ip) {
        Ok(())
    } else {
        ctx.policy.check_address(ip)
    };
    let admitted = checked.and_then(|()| ctx.policy.make_room(&mut Places { ctx, room }, ip));
    match admitted {
        Ok(admission) => Some(Session::new(
            ctx.next_token(),
            stream,
            facts,
            admission,
            ctx,
        )),
        Err(refusal) => {
            let reach = match transport {
                Transport::Plain => Reach::Now,
                Transport::Tls => Reach::NotYet,
            };
            close::refuse(Some(stream), reach, &mut facts, refusal, None, ctx);
            None
        }
    }
}

/// The connection table and the waiting room, as the connection policy sees
/// them: a place is a slot of the table; the idle connection to shed is the
/// oldest one in the room that has sent nothing.
struct Places<'a> {
    ctx: &'a Context,
    room: &'a Room,
}

impl policy::Places for Places<'_> {
    type Place = Admission;

    fn take(&mut self, ip: IpAddr) -> Result<Admission, Refusal> {
        self.ctx.table.admit(ip)
    }

    fn shed_oldest_idle(&mut self) -> bool {
        match self.room.shed_oldest_silent() {
            Some(victim) => {
                victim.shed(self.ctx, self.room);
                true
            }
            None => false,
        }
    }
}
