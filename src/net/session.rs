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

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Instant;

use mio::{Interest, Token};

use crate::acl::{self, Certificate};
use crate::allow;
use crate::config::{PortAccess, ProxyProtocol};
use crate::connection::{self, Incoming, Policy, Received, Sent};
use crate::facts::{Ending, Facts, Refusal, TlsFacts, Verdict};
use crate::net::admission::Admission;
use crate::net::context::Context;
use crate::net::linger::{self, Drained};
use crate::net::proxy::{self, Header, Origin};
use crate::net::waiting_room::{Registration, Waiter, WaitingRoom, Wake};
use crate::protocol::{Failure, Reply, Terminator, Transport};
use crate::tls::server::{Handshake, HandshakeFailureKind, PendingHandshake, ServerStream};

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
            deadline: facts.accepted_at + ctx.config.timeout,
            facts,
            incoming: Incoming::default(),
            sending: None,
            admission,
            registration: Registration::Off,
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
    pub(crate) fn wait_for_first_bytes(self, room: &Room) {
        let until = self.deadline;
        // No quick ACK yet: a client's first write leaves at once, Nagle or
        // not (nothing of its own is unacknowledged). Should a request come
        // in pieces, the wait after the first piece arms it, and arming it
        // sends the ACK that is pending.
        room.park(self, Interest::READABLE, until);
    }

    /// Advances the session as far as it goes now, then parks it or ends it.
    pub(crate) fn run(mut self, wake: Wake, ctx: &Arc<Context>, room: &Arc<Room>) {
        match self.advance(wake, ctx, room) {
            Step::Park(interest, until) => {
                if interest.is_readable() {
                    self.ack_at_once();
                }
                room.park(self, interest, until)
            }
            Step::Done => {}
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
            match std::mem::replace(&mut self.stage, Stage::Closed) {
                Stage::AwaitingProxy(tcp) => {
                    self.stage = Stage::AwaitingProxy(tcp);
                    if expired {
                        return self.finish(Ending::Broken(ErrorKind::TimedOut), ctx, room);
                    }
                    if let Some(step) = self.proxy_header(ctx, room) {
                        return step;
                    }
                }
                Stage::TlsFresh(tcp) => {
                    self.stage = Stage::TlsFresh(tcp);
                    if expired {
                        return self.handshake_failed(HandshakeFailureKind::Timeout, ctx, room);
                    }
                    let Stage::TlsFresh(tcp) = &self.stage else {
                        return Step::Done;
                    };
                    // Nothing arrived yet: wait without building any TLS state.
                    // (When the wake-up itself says bytes are waiting, the look
                    // would only cost a system call.)
                    if !hello_waiting {
                        match tcp.peek(&mut [0u8; 1]) {
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                return Step::Park(Interest::READABLE, self.deadline);
                            }
                            Ok(0) => return self.finish(Ending::Empty, ctx, room),
                            Err(e) => return self.finish(Ending::Broken(e.kind()), ctx, room),
                            Ok(_) => {}
                        }
                    }
                    let Some(acceptor) = ctx.acceptor() else {
                        return self.finish(Ending::Broken(ErrorKind::NotConnected), ctx, room);
                    };
                    let Stage::TlsFresh(tcp) = std::mem::replace(&mut self.stage, Stage::Closed)
                    else {
                        return Step::Done;
                    };
                    if let Some(step) = self.handshake_step(acceptor.start(tcp), ctx, room) {
                        return step;
                    }
                }
                Stage::Handshaking(pending) => {
                    if expired {
                        self.stage = Stage::Handshaking(pending);
                        return self.handshake_failed(HandshakeFailureKind::Timeout, ctx, room);
                    }
                    if let Some(step) = self.handshake_step(pending.resume(), ctx, room) {
                        return step;
                    }
                }
                Stage::Closed => return Step::Done,
                stage @ (Stage::Plain(_) | Stage::Tls(_)) => {
                    self.stage = stage;
                    if let Some(step) = self.receive(now, expired, ctx, room) {
                        return step;
                    }
                }
            }
        }
    }

    /// Reads a balancer's PROXY header, where one is due, and takes the
    /// client's address from it. `None` when the connection goes on to its
    /// first real stage; a step when it must wait for more bytes or is over.
    fn proxy_header(&mut self, ctx: &Context, room: &Room) -> Option<Step> {
        let Stage::AwaitingProxy(tcp) = &self.stage else {
            return None;
        };
        let ProxyProtocol::From(balancers) = &ctx.config.proxy else {
            self.enter_first_stage();
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
        let trusted = balancers
            .iter()
            .any(|range| range.contains(self.facts.peer.ip()));
        let problem = if !trusted {
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
                        return Some(self.finish(
                            Ending::Broken(ErrorKind::InvalidData),
                            ctx,
                            room,
                        ));
                    }
                    if let Origin::Client { source, .. } = origin {
                        return self.behind_balancer(source, ctx, room);
                    }
                    self.enter_first_stage();
                    return None;
                }
                Err(e) => e.to_string(),
            }
        };
        let refused = Ending::Refused {
            refusal: Refusal::ProxyHeader,
            problem: Some(problem),
        };
        Some(self.turn_away(refused, ctx, room))
    }

    /// A trusted balancer named the client: the client's address is checked
    /// against `--allow` and `--max-per-ip` as if it had connected itself.
    fn behind_balancer(&mut self, source: SocketAddr, ctx: &Context, room: &Room) -> Option<Step> {
        self.facts.balancer = Some(self.facts.peer);
        self.facts.peer = source;
        let ip = source.ip().to_canonical();
        let refusal = if !allow::allowed(&ctx.config.allow, ip) {
            Some(Refusal::NotAllowed)
        } else {
            self.admission.moved_to(ip).err()
        };
        self.enter_first_stage();
        let refusal = refusal?;
        if refusal == Refusal::PerIp
            && let Stage::Plain(tcp) = &self.stage
        {
            let busy = busy_reply(ctx);
            let _ = PlainWriter(tcp).write_now(busy.encoded.as_bytes());
            self.facts.verdict = Some(busy);
        }
        let refused = Ending::Refused {
            refusal,
            problem: None,
        };
        Some(self.turn_away(refused, ctx, room))
    }

    fn enter_first_stage(&mut self) {
        if let Stage::AwaitingProxy(tcp) = std::mem::replace(&mut self.stage, Stage::Closed) {
            self.stage = first_stage(self.facts.transport, tcp);
        }
    }

    /// Closes a connection that will get no (further) reply with a FIN
    /// (reading what it still sends for a moment), not a reset.
    fn turn_away(&mut self, ending: Ending, ctx: &Context, room: &Room) -> Step {
        room.forget(self);
        if let Stage::AwaitingProxy(tcp) | Stage::Plain(tcp) | Stage::TlsFresh(tcp) =
            std::mem::replace(&mut self.stage, Stage::Closed)
            && tcp.shutdown(Shutdown::Write).is_ok()
        {
            ctx.lingerer.close(tcp, ctx.config.linger);
        }
        self.finish(ending, ctx, room)
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
                    room.forget_fd(std::mem::take(&mut self.registration), Some(tcp.as_fd()));
                    // The alert that says why goes out before the FIN.
                    if tcp.shutdown(Shutdown::Write).is_ok() {
                        ctx.lingerer.close(tcp, ctx.config.linger);
                    }
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
        room.forget(self);
        self.facts.finished_at = Some(Instant::now());
        // A reply went out: the close must not destroy it.
        let replied = self.sending.is_some()
            && matches!(ending, Ending::Answered | Ending::TimedOut | Ending::Empty);
        let tcp = match std::mem::replace(&mut self.stage, Stage::Closed) {
            Stage::Plain(tcp) | Stage::AwaitingProxy(tcp) | Stage::TlsFresh(tcp) => Some(tcp),
            Stage::Tls(stream) => stream.close(),
            Stage::Handshaking(pending) => pending.abandon(),
            Stage::Closed => None,
        };
        if let Some(tcp) = tcp
            && replied
            && tcp.shutdown(Shutdown::Write).is_ok()
        {
            ctx.lingerer.close(tcp, ctx.config.linger);
        }
        ctx.record
            .finished(&self.facts, self.incoming.bytes(), &ending);
        Step::Done
    }

    /// Closes a silent connection to make room for a newcomer (accept thread;
    /// nothing here blocks).
    pub(crate) fn shed(mut self, ctx: &Context, room: &Room) {
        room.forget(&mut self);
        if let Stage::Plain(tcp) = &self.stage {
            let busy = busy_reply(ctx);
            let _ = PlainWriter(tcp).write_now(busy.encoded.as_bytes());
            let _ = tcp.shutdown(Shutdown::Write);
            let _ = linger::drain_now(tcp) == Drained::Closed;
            self.facts.verdict = Some(busy);
        }
        self.facts.finished_at = Some(Instant::now());
        let ending = Ending::Refused {
            refusal: Refusal::Shed,
            problem: None,
        };
        ctx.record.finished(&self.facts, b"", &ending);
    }
}

/// The `X` a connection turned away for lack of room gets.
pub(crate) fn busy_reply(ctx: &Context) -> Verdict {
    let reply = Reply::Failed(Failure::Busy);
    Verdict {
        reply,
        encoded: reply.encode(ctx.config.error_detail, Terminator::None),
        denial: None,
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

impl PlainWriter<'_> {
    fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        socket2::SockRef::from(self.0).send_with_flags(bytes, libc::MSG_DONTWAIT)
    }
}

impl std::io::Write for PlainWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        socket2::SockRef::from(self.0).send_with_flags(buf, libc::MSG_MORE | libc::MSG_DONTWAIT)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
