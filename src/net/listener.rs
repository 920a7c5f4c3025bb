//! Listening sockets and the accept threads.
//!
//! Each port has its own accept thread, which never does I/O with a client: it
//! accepts every pending connection, checks `--allow`, takes a place in the
//! connection table (shedding the oldest silent connection when the table is
//! full) and hands the new session to the pool.

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
    while !shared.is_stopping() {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() != io::ErrorKind::Interrupted {
                debug!("{transport} accept poll failed: {e}");
            }
            continue;
        }
        // Edge-triggered: take every pending connection before waiting again.
        while !shared.is_stopping() {
            match listener.accept() {
                Ok((stream, peer)) => admit(TcpStream::from(stream), peer, transport, &shared),
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
    }
    debug!("{transport} accept loop stopped");
}

fn admit(stream: TcpStream, peer: SocketAddr, transport: Transport, shared: &Arc<Shared>) {
    let ip = peer.ip().to_canonical();
    if !allow::allowed(&shared.config.allow, ip) {
        shared.count_refusal(Refusal::NotAllowed);
        shared.refusal_log(Refusal::NotAllowed).log(format_args!(
            "closed {transport} connection from {peer}: address not in --allow"
        ));
        return;
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
        Err(refusal) => return refuse(stream, peer, transport, refusal, shared),
    };
    let session = Session::new(
        shared.next_token(),
        stream,
        peer,
        transport,
        admission,
        shared,
    );
    let for_job = Arc::clone(shared);
    shared.execute(move || session.run(Wake::Accepted, &for_job));
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
