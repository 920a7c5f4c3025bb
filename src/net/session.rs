//! The life of one connection, from accept to close: the balancer's PROXY
//! header, the TLS handshake, receive, transact, send, close.
//!
//! A [`Session`] owns its socket, its place in the connection table and its
//! [`Facts`]. A worker advances it as far as the socket allows without waiting;
//! when the next step would block, the session goes back to the waiting room
//! with the instant at which it must be looked at again (its deadline, or the
//! end of the gap after a started message). No worker ever waits on a client.
//! The session counts and logs nothing itself: when it ends, its facts go to
//! the [`Record`](crate::net::record::Record), once.

use rustix::net::SendFlags;
use std::io::{ErrorKind, Read};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use mio::{Interest, Token};

use crate::acl::{self, Certificate};
use crate::config::{PortAccess, ProxyProtocol};
use crate::connection::{self, Incoming, Policy, Received, Sent};
use crate::facts::{Ending, Facts, Refusal, TlsFacts, Verdict};
use crate::net::admission::Admission;
use crate::net::close::{self, Reach};
use crate::net::context::{Context, run_guarded};
use crate::net::proxy::{self, Header, Origin};
use crate::net::waiting_room::{Parking, Registration, Waiter, WaitingRoom, Wake};
use crate::protocol::{Terminator, Transport};
use crate::tls::server::{
    Acceptor, Handshake, HandshakeFailureKind, PendingHandshake, ServerStream,
};

/// The waiting room of WWEP connections.
pub(crate) type Room = WaitingRoom<Session>;

/// What the session needs next.
enum Step {
    /// Wait in the waiting room for the socket (or until the instant).
    Park(Interest, Instant),
    Done,
}

/// The socket, as far as the connection has got.
enum Stage {
    /// Waiting for the first bytes, which may be a balancer's PROXY header.
    AwaitingProxy(TcpStream),
    Plain(TcpStream),
    /// A TLS connection on which nothing has arrived yet.
    TlsFresh(TcpStream),
    Handshaking(PendingHandshake),
    Tls(ServerStream),
    Closed,
}

/// The reply (in the facts' verdict) being sent.
struct Sending {
    sent: usize,
    /// How the connection ends once the reply is out.
    then: Ending,
}

/// One connection.
pub(crate) struct Session {
    token: Token,
    stage: Stage,
    facts: Facts,
    deadline: Instant,
    incoming: Incoming,
    sending: Option<Sending>,
    admission: Admission,
    /// Where the socket stands with the waiting room's epoll set.
    registration: Registration,
}

impl Waiter for Session {
    type Served = Context;

    fn wake(self, wake: Wake, ctx: &Context, room: &Room) {
        run_guarded(|| self.run(wake, ctx, room));
    }

    /// The server stopped with the connection unfinished (past its deadline
    /// and gap: every connection before has been answered or closed): it ends
    /// through the one close and is recorded, as every connection is.
    fn end_now(mut self, ctx: &Context, room: &Room) {
        self.finish(Ending::Broken(ErrorKind::TimedOut), ctx, room);
    }

    fn token(&self) -> Token {
        self.token
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.tcp().map(|tcp| tcp.as_fd())
    }

    fn is_silent(&self) -> bool {
        match self.stage {
            Stage::Plain(_) => self.incoming.is_empty(),
            Stage::AwaitingProxy(_) | Stage::TlsFresh(_) => true,
            _ => false,
        }
    }

    fn registration(&mut self) -> &mut Registration {
        &mut self.registration
    }
}

impl Session {
    pub(crate) fn new(
        token: Token,
        stream: TcpStream,
        facts: Facts,
        admission: Admission,
        ctx: &Context,
    ) -> Session {
        let stage = match ctx.config.proxy {
            ProxyProtocol::From(_) => Stage::AwaitingProxy(stream),
            ProxyProtocol::Off => first_stage(facts.transport, stream),
        };
        Session {
            token,
            stage,
            deadline: ctx.policy.deadline_from(facts.accepted_at),
            facts,
            incoming: Incoming::default(),
            sending: None,
            admission,
            registration: Registration::default(),
        }
    }

    /// The socket, for the poller.
    fn tcp(&self) -> Option<&TcpStream> {
        match &self.stage {
            Stage::AwaitingProxy(s) | Stage::Plain(s) | Stage::TlsFresh(s) => Some(s),
            Stage::Handshaking(h) => h.tcp(),
            Stage::Tls(s) => s.tcp(),
            Stage::Closed => None,
        }
    }

    /// A new connection waits in the room for its first bytes (a worker takes
    /// it as soon as they are there, at once when they already are).
    pub(crate) fn wait_for_first_bytes(self, ctx: &Context, room: &Room) {
        let until = self.deadline;
        // No quick ACK yet: a client's first write leaves at once, Nagle or
        // not (nothing of its own is unacknowledged). Should a request come
        // in pieces, the wait after the first piece arms it, and arming it
        // sends the ACK that is pending.
        match room.park(self, Interest::READABLE, until) {
            Parking::Parked => {}
            // Its first bytes came the moment it was parked: a worker runs it.
            Parking::Again(session, wake) => room.hand_to_worker(session, wake),
            Parking::Refused(session) => session.end_now(ctx, room),
        }
    }

    /// Advances the session as far as it goes now, then parks it or ends it;
    /// runs it again at once when readiness came while it ran.
    fn run(mut self, mut wake: Wake, ctx: &Context, room: &Room) {
        loop {
            let Step::Park(interest, until) = self.advance(wake, ctx, room) else {
                return;
            };
            if interest.is_readable() {
                self.ack_at_once();
            }
            match room.park(self, interest, until) {
                Parking::Parked => return,
                Parking::Again(session, again) => (self, wake) = (session, again),
                Parking::Refused(session) => return session.end_now(ctx, room),
            }
        }
    }

    /// Makes the kernel acknowledge the client's next segment at once instead
    /// of delaying the ACK up to 40 ms. A client with Nagle's algorithm on (as
    /// embedded TLS stacks leave their sockets) sends its next small write only
    /// once the previous one is acknowledged, so without this each of its writes
    /// after the first would wait out the delayed ACK. Linux leaves quick-ACK
    /// mode by itself, so it is re-armed before every wait for the client.
    fn ack_at_once(&self) {
        use std::os::linux::net::TcpStreamExt;
        if let Some(tcp) = self.tcp() {
            let _ = tcp.set_quickack(true);
        }
    }

    fn advance(&mut self, wake: Wake, ctx: &Context, room: &Room) -> Step {
        let now = Instant::now();
        let expired = now >= self.deadline || wake == Wake::Shutdown;
        // The wake-up says a ClientHello's first bytes are waiting (not bytes
        // of a PROXY header that go first).
        let hello_waiting = wake == Wake::Bytes && matches!(self.stage, Stage::TlsFresh(_));
        loop {
            if self.sending.is_some() {
                return self.send(now, ctx, room);
            }
            let step = match self.stage {
                Stage::Closed => Some(Step::Done),
                Stage::AwaitingProxy(_) if expired => {
                    Some(self.finish(Ending::Broken(ErrorKind::TimedOut), ctx, room))
                }
                Stage::TlsFresh(_) | Stage::Handshaking(_) if expired => {
                    Some(self.handshake_failed(HandshakeFailureKind::Timeout, ctx, room))
                }
                Stage::AwaitingProxy(_) => self.proxy_header(ctx, room),
                Stage::TlsFresh(_) => self.hello(hello_waiting, ctx, room),
                Stage::Handshaking(_) => self.handshake(None, ctx, room),
                Stage::Plain(_) | Stage::Tls(_) => self.receive(now, expired, ctx, room),
            };
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// A TLS connection on which nothing had arrived: waits for the
    /// ClientHello without building any TLS state, then starts the handshake.
    /// (When the wake-up itself says bytes are waiting, the look would only
    /// cost a system call.)
    fn hello(&mut self, hello_waiting: bool, ctx: &Context, room: &Room) -> Option<Step> {
        if !hello_waiting && let Some(tcp) = self.tcp() {
            match tcp.peek(&mut [0u8; 1]) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Some(Step::Park(Interest::READABLE, self.deadline));
                }
                Ok(0) => return Some(self.finish(Ending::Empty, ctx, room)),
                Err(e) => return Some(self.finish(Ending::Broken(e.kind()), ctx, room)),
                Ok(_) => {}
            }
        }
        match ctx.acceptor() {
            Some(acceptor) => self.handshake(Some(&acceptor), ctx, room),
            None => Some(self.finish(Ending::Broken(ErrorKind::NotConnected), ctx, room)),
        }
    }

    /// One step of the TLS handshake: started with `acceptor` on a fresh
    /// connection, resumed on a pending one.
    fn handshake(
        &mut self,
        acceptor: Option<&Acceptor>,
        ctx: &Context,
        room: &Room,
    ) -> Option<Step> {
        let step = match (self.stage.take(), acceptor) {
            (Stage::TlsFresh(tcp), Some(acceptor)) => acceptor.start(tcp),
            (Stage::Handshaking(pending), _) => pending.resume(),
            (stage, _) => {
                // Any other stage has no handshake to step.
                self.stage = stage;
                return None;
            }
        };
        self.handshake_step(step, ctx, room)
    }

    /// Reads a balancer's PROXY header, where one is due, and takes the
    /// client's address from it. `None` when the connection goes on to its
    /// first real stage; a step when it must wait for more bytes or is over.
    fn proxy_header(&mut self, ctx: &Context, room: &Room) -> Option<Step> {
        let Stage::AwaitingProxy(tcp) = &self.stage else {
            return None;
        };
        let mut buf = [0u8; proxy::MAX_HEADER_BYTES];
        let n = match tcp.peek(&mut buf) {
            Ok(0) => return Some(self.finish(Ending::Empty, ctx, room)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Some(Step::Park(Interest::READABLE, self.deadline));
            }
            Err(e) => return Some(self.finish(Ending::Broken(e.kind()), ctx, room)),
        };
        let problem = if !proxy::from_balancer(&ctx.config.proxy, self.facts.peer.ip()) {
            if !proxy::looks_like_header(&buf[..n]) {
                self.enter_first_stage();
                return None;
            }
            "a PROXY header from an address not in --proxy-from".to_string()
        } else {
            match proxy::parse(&buf[..n]) {
                Ok(Header::Partial) if n < buf.len() => {
                    return Some(Step::Park(Interest::READABLE, self.deadline));
                }
                Ok(Header::Partial) => proxy::ProxyError::TooLong.to_string(),
                Ok(Header::Complete { origin, len }) => {
                    // The header's bytes are there (peeked): take exactly them.
                    if (&*tcp).read_exact(&mut buf[..len]).is_err() {
                        let broken = Ending::Broken(ErrorKind::InvalidData);
                        return Some(self.finish(broken, ctx, room));
                    }
                    if let Origin::Client { source, .. } = origin {
                        self.facts.balancer = Some(self.facts.peer);
                        self.facts.peer = source;
                    }
                    return self.address_known(ctx, room);
                }
                Err(e) => e.to_string(),
            }
        };
        Some(self.refuse(Refusal::ProxyHeader, Some(problem), ctx, room))
    }

    /// A trusted balancer's header said who the client is (or that the
    /// connection is the balancer's own): the one address check runs now, on
    /// that address, and `--max-per-ip` counts the connection against it.
    fn address_known(&mut self, ctx: &Context, room: &Room) -> Option<Step> {
        let ip = self.facts.peer.ip().to_canonical();
        let checked = ctx
            .policy
            .check_address(ip)
            .and_then(|()| self.admission.moved_to(ip));
        self.enter_first_stage();
        let refusal = checked.err()?;
        Some(self.refuse(refusal, None, ctx, room))
    }

    fn enter_first_stage(&mut self) {
        if let Stage::AwaitingProxy(tcp) = self.stage.take() {
            self.stage = first_stage(self.facts.transport, tcp);
        }
    }

    /// Turns the connection away (the one refusal: reply, close, record).
    fn refuse(
        &mut self,
        refusal: Refusal,
        problem: Option<String>,
        ctx: &Context,
        room: &Room,
    ) -> Step {
        room.forget(self);
        let reach = match self.stage {
            Stage::Plain(_) => Reach::Now,
            _ => Reach::NotYet,
        };
        let tcp = self.stage.take().into_tcp();
        close::refuse(tcp, reach, &mut self.facts, refusal, problem, ctx);
        Step::Done
    }

    /// Takes a handshake step's result into the stage; `Some` when the
    /// session is over (a failed handshake is closed here) or must wait.
    fn handshake_step(&mut self, step: Handshake, ctx: &Context, room: &Room) -> Option<Step> {
        match step {
            Handshake::Done(stream) => {
                self.facts.tls = Some(TlsFacts {
                    version: stream.version(),
                    resumed: stream.resumed(),
                });
                self.facts.certificate = if ctx.config.acl.is_some() {
                    stream.peer_names()
                } else {
                    stream.peer_common_name().map(|cn| Certificate {
                        cn: Some(cn),
                        sans: Vec::new(),
                    })
                };
                self.stage = Stage::Tls(stream);
                None
            }
            Handshake::Pending(pending) => {
                let interest = if pending.wants_write() {
                    Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                self.stage = Stage::Handshaking(pending);
                Some(Step::Park(interest, self.deadline))
            }
            Handshake::Failed(failure) => {
                if let Some(tcp) = failure.socket {
                    // The alert that says why goes out before the FIN.
                    self.close_gracefully(tcp, ctx, room);
                }
                let ending = Ending::HandshakeFailed {
                    kind: failure.kind,
                    detail: failure.detail,
                };
                Some(self.finish(ending, ctx, room))
            }
        }
    }

    fn handshake_failed(&mut self, kind: HandshakeFailureKind, ctx: &Context, room: &Room) -> Step {
        let ending = Ending::HandshakeFailed {
            kind,
            detail: String::new(),
        };
        self.finish(ending, ctx, room)
    }

    /// Reads what has arrived; returns a step when the session must wait or is
    /// done, `None` when a reply is ready to send.
    fn receive(&mut self, now: Instant, expired: bool, ctx: &Context, room: &Room) -> Option<Step> {
        let config = &ctx.config;
        let received = match &mut self.stage {
            Stage::Plain(tcp) => self.incoming.receive(tcp, now),
            Stage::Tls(stream) => self.incoming.receive(stream, now),
            _ => return Some(Step::Done),
        };
        let (verdict, then) = match received {
            Received::Message(message) => {
                self.admission.finished();
                let verdict = self.transact(message.len, message.terminator, ctx);
                (verdict, Ending::Answered)
            }
            Received::Waiting => {
                let gap_ends = self.incoming.gap_ends(config.gap);
                if !expired && gap_ends.is_none_or(|at| at > now) {
                    let until = gap_ends.map_or(self.deadline, |at| at.min(self.deadline));
                    return Some(Step::Park(Interest::READABLE, until));
                }
                if self.incoming.is_empty() {
                    (connection::timed_out(config.error_detail), Ending::TimedOut)
                } else {
                    self.admission.finished();
                    let message = self.incoming.judge();
                    let verdict = self.transact(message.len, message.terminator, ctx);
                    (verdict, Ending::Answered)
                }
            }
            // A client that only half-closed still reads: it gets its X, but
            // the connection counts as what it was, empty.
            Received::Closed => (connection::timed_out(config.error_detail), Ending::Empty),
            Received::Broken(kind) => return Some(self.finish(Ending::Broken(kind), ctx, room)),
        };
        self.facts.verdict = Some(verdict);
        self.sending = Some(Sending { sent: 0, then });
        None
    }

    /// The message's verdict, by the one transaction function.
    fn transact(&self, len: usize, terminator: Terminator, ctx: &Context) -> Verdict {
        let acl = ctx.acl();
        let client = acl::Peer {
            addr: self.facts.peer.ip(),
            certificate: self.facts.certificate.as_ref(),
        };
        let access = match self.facts.transport {
            Transport::Plain => ctx.config.plain_access,
            Transport::Tls => PortAccess::ReadWrite,
        };
        let policy = Policy {
            access,
            acl: acl.as_deref(),
            detail: ctx.config.error_detail,
        };
        connection::transact(
            &self.incoming.bytes()[..len],
            terminator,
            &client,
            &*ctx.backend,
            &policy,
        )
    }

    fn send(&mut self, now: Instant, ctx: &Context, room: &Room) -> Step {
        let (Some(sending), Some(verdict)) = (&mut self.sending, &self.facts.verdict) else {
            return Step::Done;
        };
        let reply = &verdict.encoded;
        let result = match &mut self.stage {
            Stage::Plain(tcp) => connection::send(&mut PlainWriter(tcp), reply, &mut sending.sent),
            Stage::Tls(stream) => connection::send(stream, reply, &mut sending.sent),
            _ => Sent::Broken(ErrorKind::NotConnected),
        };
        let late = self.deadline + ctx.config.gap;
        match result {
            Sent::All => {
                let then = std::mem::replace(&mut sending.then, Ending::Answered);
                self.finish(then, ctx, room)
            }
            // A client that does not read its reply gets one gap past its deadline.
            Sent::Partly if now < late => Step::Park(Interest::WRITABLE, late),
            Sent::Partly => self.finish(Ending::Broken(ErrorKind::TimedOut), ctx, room),
            Sent::Broken(kind) => self.finish(Ending::Broken(kind), ctx, room),
        }
    }

    /// Closes the connection (gracefully when a reply went out) and hands its
    /// facts to the record.
    fn finish(&mut self, ending: Ending, ctx: &Context, room: &Room) -> Step {
        self.facts.finished_at = Some(Instant::now());
        // A reply went out: the close must not destroy it.
        let replied = self.sending.is_some()
            && matches!(ending, Ending::Answered | Ending::TimedOut | Ending::Empty);
        match self.stage.take().into_tcp() {
            Some(tcp) if replied => self.close_gracefully(tcp, ctx, room),
            tcp => {
                room.closing(self);
                drop(tcp);
            }
        }
        ctx.record
            .finished(&self.facts, self.incoming.bytes(), &ending);
        Step::Done
    }

    /// The graceful close of [`close::gracefully`], its lingering held by the
    /// waiting room when the socket is in its epoll set (the client's close is
    /// then a readiness like any other), else by the lingerer.
    fn close_gracefully(&mut self, tcp: TcpStream, ctx: &Context, room: &Room) {
        if tcp.shutdown(Shutdown::Write).is_err() {
            // The client reset it already: nothing to protect.
            room.closing(self);
            return;
        }
        let until = Instant::now() + ctx.config.linger;
        if let Err(tcp) = room.linger(self, tcp, until) {
            ctx.lingerer.close(tcp, ctx.config.linger);
        }
    }

    /// Closes a silent connection to make room for a newcomer (accept thread;
    /// nothing here blocks).
    pub(crate) fn shed(mut self, ctx: &Context, room: &Room) {
        self.refuse(Refusal::Shed, None, ctx, room);
    }
}

impl Stage {
    /// The stage, taken out: the session holds [`Stage::Closed`] until the
    /// next stage is put in.
    fn take(&mut self) -> Stage {
        std::mem::replace(self, Stage::Closed)
    }

    /// The socket, for closing: a TLS stream sends its close_notify first,
    /// a handshake in progress is abandoned.
    fn into_tcp(self) -> Option<TcpStream> {
        match self {
            Stage::Plain(tcp) | Stage::AwaitingProxy(tcp) | Stage::TlsFresh(tcp) => Some(tcp),
            Stage::Tls(stream) => stream.close(),
            Stage::Handshaking(pending) => pending.abandon(),
            Stage::Closed => None,
        }
    }
}

/// Where a connection starts once any PROXY header is behind it.
fn first_stage(transport: Transport, tcp: TcpStream) -> Stage {
    match transport {
        Transport::Plain => Stage::Plain(tcp),
        Transport::Tls => Stage::TlsFresh(tcp),
    }
}

/// Writes on the open port: the reply is all the connection will send, so
/// MSG_MORE holds it for the FIN that follows at once and both leave in one
/// segment.
struct PlainWriter<'a>(&'a TcpStream);

impl std::io::Write for PlainWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        socket2::SockRef::from(self.0)
            .send_with_flags(buf, (SendFlags::MORE | SendFlags::DONTWAIT).bits() as i32)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
