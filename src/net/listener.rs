//! Listening sockets and the accept threads.
//!
//! Each port has its own accept thread. It accepts every pending connection,
//! checks `--allow`, takes a place in the connection table (shedding the oldest
//! silent connection when the table is full) and hands the new session to the
//! pool, except the first few of a batch on the open port, which it serves
//! itself when nothing in that can wait (see `serves_here`). It never waits on a
//! client.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::config::Transport;
use crate::net::admission::Refusal;
use crate::net::allow;
use crate::net::linger;
use crate::net::server::Shared;
use crate::net::session::{Session, Wake};
use crate::protocol::{Failure, Reply, Terminator};

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const STOP: Token = Token(1);

/// How many connections of one accept batch the open port's accept thread
/// serves itself (see [`serves_here`]); the rest of a longer batch go to the
/// pool as they are accepted, so a load one thread cannot carry spreads over
/// the workers. At concurrency 32 on two cores, 8–16 served here gave 0.85–0.95×
/// nginx's rate; 1 gave 0.75×, and 64 left a core idle 10 % of the time while
/// clients queued behind the one thread.
const SERVED_HERE_PER_BATCH: usize = 16;

/// Binds a non-blocking listener whose backlog can hold a burst as large as the
/// connection table (std's fixed 128 would drop SYNs and cost clients a
/// one-second retry).
pub(crate) fn bind(addr: SocketAddr, backlog: usize) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restart must not wait for the old connections' TIME_WAIT to expire.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `::` serves IPv4 too where the system allows it.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.clamp(128, 65535) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    // EMFILE and ENFILE: the process or the system is out of file descriptors.
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// The accept thread's body: runs until the server stops.
pub(crate) fn accept_loop(
    listener: std::net::TcpListener,
    mut poll: Poll,
    transport: Transport,
    shared: Arc<Shared>,
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
    let serves_here = serves_here(transport, &shared);
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
    while !shared.is_stopping() {
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
        while !shared.is_stopping() {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let Some(session) = admit(TcpStream::from(stream), peer, transport, &shared)
                    else {
                        continue;
                    };
                    if served + here.len() >= here_per_batch {
                        hand_to_pool(session, &shared);
                    } else if served == 0 && here.is_empty() {
                        served += 1;
                        shared.run_guarded(|| session.run(Wake::Accepted, &shared));
                    } else {
                        here.push(session);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    shared.accept_log.log(format_args!(
                        "{transport} listener cannot accept: {e}; backing off"
                    ));
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => debug!("{transport} accept failed: {e}"),
            }
        }
        for session in here.drain(..) {
            if shared.is_stopping() {
                hand_to_pool(session, &shared);
            } else {
                shared.run_guarded(|| session.run(Wake::Accepted, &shared));
            }
        }
        sweep_in = linger::sweep_own_closes(&shared.lingerer);
    }
    linger::hand_over_own_closes(&shared.lingerer);
    debug!("{transport} accept loop stopped");
}

/// Whether the accept thread serves connections itself: only where nothing can
/// make it wait. On the open port, with registers in memory, a one-shot
/// request has usually arrived with its connection, and answering it on the
/// thread that accepted it saves waking a worker, which is most of a
/// transaction's cost. A connection without a complete message goes to the
/// waiting room like any other. TLS handshakes, data files and shared stores
/// always go to the pool.
fn serves_here(transport: Transport, shared: &Shared) -> bool {
    transport == Transport::Plain && shared.backend.answers_from_memory()
}

fn hand_to_pool(session: Session, shared: &Arc<Shared>) {
    let for_job = Arc::clone(shared);
    shared.execute(move || session.run(Wake::Accepted, &for_job));
}

/// Gives a new connection its place, or turns it away.
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    shared: &Arc<Shared>,
) -> Option<Session> {
    let ip = peer.ip().to_canonical();
    if !allow::allowed(&shared.config.allow, ip) {
        shared.count_refusal(Refusal::NotAllowed);
        shared.refusal_log(Refusal::NotAllowed).log(format_args!(
            "closed {transport} connection from {peer}: address not in --allow"
        ));
        return None;
    }
    let admitted = match shared.table.admit(ip) {
        Err(Refusal::Full) => match shared.room.shed_oldest_silent() {
            Some(victim) => {
                victim.shed(shared);
                shared.table.admit(ip)
            }
            None => Err(Refusal::Full),
        },
        other => other,
    };
    let admission = match admitted {
        Ok(admission) => admission,
        Err(refusal) => {
            refuse(stream, peer, transport, refusal, shared);
            return None;
        }
    };
    Some(Session::new(
        shared.next_token(),
        stream,
        peer,
        transport,
        admission,
        shared,
    ))
}

/// Turns a connection away without blocking: an `X` on the open port, nothing
/// on the TLS port, where no handshake has happened.
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    refusal: Refusal,
    shared: &Shared,
) {
    shared.count_refusal(refusal);
    let config = &shared.config;
    match refusal {
        Refusal::PerIp => shared.refusal_log(refusal).log(format_args!(
            "refusing {transport} connection from {peer}: {} connections from that address are unfinished (--max-per-ip)",
            config.max_per_ip
        )),
        _ => shared.refusal_log(refusal).log(format_args!(
            "refusing {transport} connection from {peer}: {} connections open and none silent to shed (--max-connections)",
            config.max_connections
        )),
    }
    if transport == Transport::Plain {
        shared.count_busy_reply(transport);
        let reply = Reply::Failed(Failure::Busy).encode(config.error_detail, Terminator::None);
        let _ =
            socket2::SockRef::from(&stream).send_with_flags(reply.as_bytes(), libc::MSG_DONTWAIT);
        let _ = stream.shutdown(Shutdown::Write);
        // Whatever already arrived is read so the close is a FIN, not a reset.
        linger::drain_now(&stream);
    }
}
