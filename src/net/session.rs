//! The life of one connection, from accept to close: handshake (TLS), receive,
//! respond, send, close, log.
//!
//! A [`Session`] owns its socket and its place in the connection table. A worker
//! advances it as far as the socket allows without waiting; when the next step
//! would block, the session goes back to the waiting room with the instant at
//! which it must be looked at again (its deadline, or the end of the gap after a
//! started message). No worker ever waits on a client.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info};
use mio::{Interest, Token};

use std::io::Read;

use crate::acl::{self, Certificate};
use crate::activity::Transaction;
use crate::config::{ProxyProtocol, Transport};
use crate::connection::{self, Access, Incoming, Message, Outcome, Received, Sent};
use crate::net::admission::{Admission, Refusal};
use crate::net::allow;
use crate::net::linger::{self, Drained};
use crate::net::proxy::{self, Header, Origin};
use crate::net::server::Shared;
use crate::protocol::{Encoded, Escaped, Failure, Reply, Request, Terminator};
use crate::tls::server::{Handshake, HandshakeFailureKind, PendingHandshake, ServerStream};

/// Why a worker is looking at a session now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Just accepted.
    Accepted,
    /// Its socket became ready.
    Ready,
    /// Its timer (gap or deadline) fired.
    Timer,
    /// The server is stopping and the session has sent nothing: answer now.
    Shutdown,
}

/// What the session needs next.
pub(crate) enum Step {
    /// Wait in the waiting room for the socket (or until the instant).
    Park(Interest, Instant),
    Done,
}

/// The socket, as far as the connection has got.
enum Link {
    /// Waiting for the first bytes, which may be a balancer's PROXY header.
    AwaitingProxy(TcpStream),
    Plain(TcpStream),
    /// A TLS connection on which nothing has arrived yet.
    TlsFresh(TcpStream),
    Handshaking(PendingHandshake),
    Tls(ServerStream),
    Closed,
}

/// The reply being sent.
struct Sending {
    reply: Encoded,
    sent: usize,
    outcome: Outcome,
    /// The reply before encoding, for the counters.
    verdict: Reply,
}

/// One connection.
pub(crate) struct Session {
    token: Token,
    link: Link,
    peer: SocketAddr,
    transport: Transport,
    accepted_at: Instant,
    deadline: Instant,
    incoming: Incoming,
    sending: Option<Sending>,
    admission: Admission,
    /// The client certificate's common name (mutual TLS).
    client: Option<String>,
    /// The client certificate's names, when `--acl` needs them.
    certificate: Option<Certificate>,
    /// `TLSv1.3 resumed` and the like, for the transaction line.
    tls_summary: Option<String>,
    /// Whether the socket is registered with the waiting room's poller.
    pub(crate) registered: bool,
}

impl Session {
    pub(crate) fn new(
        token: Token,
        stream: TcpStream,
        peer: SocketAddr,
        transport: Transport,
        admission: Admission,
        shared: &Shared,
    ) -> Session {
        let accepted_at = Instant::now();
        if transport == Transport::Tls {
            // The handshake is several small writes; Nagle would delay each.
            let _ = stream.set_nodelay(true);
        }
        let link = match shared.config.proxy {
            ProxyProtocol::From(_) => Link::AwaitingProxy(stream),
            ProxyProtocol::Off => first_link(transport, stream),
        };
        Session {
            token,
            link,
            peer,
            transport,
            accepted_at,
            deadline: accepted_at + shared.config.timeout,
            incoming: Incoming::default(),
            sending: None,
            admission,
            client: None,
            certificate: None,
            tls_summary: None,
            registered: false,
        }
    }

    pub(crate) fn token(&self) -> Token {
        self.token
    }

    /// The socket, for the poller.
    pub(crate) fn tcp(&self) -> Option<&TcpStream> {
        match &self.link {
            Link::AwaitingProxy(s) | Link::Plain(s) | Link::TlsFresh(s) => Some(s),
            Link::Handshaking(h) => h.tcp(),
            Link::Tls(s) => s.tcp(),
            Link::Closed => None,
        }
    }

    /// Nothing has arrived on it yet: the first to go when the table is full.
    pub(crate) fn is_silent(&self) -> bool {
        match self.link {
            Link::Plain(_) => self.incoming.is_empty(),
            Link::AwaitingProxy(_) | Link::TlsFresh(_) => true,
            _ => false,
        }
    }

    /// Advances the session as far as it goes now, then parks it or ends it.
    pub(crate) fn run(mut self, wake: Wake, shared: &Arc<Shared>) {
        match self.advance(wake, shared) {
            Step::Park(interest, until) => {
                if interest.is_readable() {
                    self.ack_at_once();
                }
                shared.room.park(self, interest, until)
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

    fn advance(&mut self, wake: Wake, shared: &Shared) -> Step {
        let now = Instant::now();
        let expired = now >= self.deadline || wake == Wake::Shutdown;
        loop {
            if self.sending.is_some() {
                return self.send(now, shared);
            }
            match std::mem::replace(&mut self.link, Link::Closed) {
                Link::AwaitingProxy(tcp) => {
                    if expired {
                        self.link = Link::AwaitingProxy(tcp);
                        return self.finish(Outcome::Failed(ErrorKind::TimedOut), shared);
                    }
                    match self.proxy_header(tcp, shared) {
                        Ok(link) => self.link = link,
                        Err(step) => return step,
                    }
                }
                Link::TlsFresh(tcp) => {
                    if expired {
                        self.link = Link::TlsFresh(tcp);
                        return self.handshake_failed(HandshakeFailureKind::Timeout, "", shared);
                    }
                    // Nothing arrived yet: wait without building any TLS state.
                    match tcp.peek(&mut [0u8; 1]) {
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            self.link = Link::TlsFresh(tcp);
                            return Step::Park(Interest::READABLE, self.deadline);
                        }
                        Ok(0) | Err(_) => {
                            self.link = Link::TlsFresh(tcp);
                            return self.finish(Outcome::Failed(ErrorKind::UnexpectedEof), shared);
                        }
                        Ok(_) => {}
                    }
                    let Some(acceptor) = shared.acceptor() else {
                        self.link = Link::TlsFresh(tcp);
                        return self.finish(Outcome::Failed(ErrorKind::NotConnected), shared);
                    };
                    self.link = self.handshake_step(acceptor.start(tcp), shared);
                }
                Link::Handshaking(pending) => {
                    if expired {
                        self.link = Link::Handshaking(pending);
                        return self.handshake_failed(HandshakeFailureKind::Timeout, "", shared);
                    }
                    self.link = self.handshake_step(pending.resume(), shared);
                }
                Link::Closed => return Step::Done,
                link @ (Link::Plain(_) | Link::Tls(_)) => {
                    self.link = link;
                    if let Some(step) = self.receive(now, expired, shared) {
                        return step;
                    }
                }
            }
            match &self.link {
                Link::Handshaking(pending) => {
                    let interest = if pending.wants_write() {
                        Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    return Step::Park(interest, self.deadline);
                }
                Link::Closed => return Step::Done,
                _ => {}
            }
        }
    }

    /// Reads a balancer's PROXY header, where one is due, and takes the client's
    /// address from it. Returns the next link, or the step when the session must
    /// wait for more bytes or is over.
    fn proxy_header(&mut self, tcp: TcpStream, shared: &Shared) -> Result<Link, Step> {
        let ProxyProtocol::From(balancers) = &shared.config.proxy else {
            return Ok(first_link(self.transport, tcp));
        };
        let mut buf = [0u8; proxy::MAX_HEADER_BYTES];
        let n = match tcp.peek(&mut buf) {
            Ok(0) => {
                self.link = Link::AwaitingProxy(tcp);
                return Err(self.finish(Outcome::Failed(ErrorKind::UnexpectedEof), shared));
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.link = Link::AwaitingProxy(tcp);
                return Err(Step::Park(Interest::READABLE, self.deadline));
            }
            Err(e) => {
                self.link = Link::AwaitingProxy(tcp);
                return Err(self.finish(Outcome::Failed(e.kind()), shared));
            }
        };
        let trusted = balancers.iter().any(|range| range.contains(self.peer.ip()));
        let problem = if !trusted {
            if !proxy::looks_like_header(&buf[..n]) {
                return Ok(first_link(self.transport, tcp));
            }
            "a PROXY header from an address not in --proxy-from".to_string()
        } else {
            match proxy::parse(&buf[..n]) {
                Ok(Header::Partial) if n < buf.len() => {
                    self.link = Link::AwaitingProxy(tcp);
                    return Err(Step::Park(Interest::READABLE, self.deadline));
                }
                Ok(Header::Partial) => proxy::ProxyError::TooLong.to_string(),
                Ok(Header::Complete { origin, len }) => {
                    // The header's bytes are there (peeked): take exactly them.
                    if (&tcp).read_exact(&mut buf[..len]).is_err() {
                        self.link = Link::AwaitingProxy(tcp);
                        return Err(self.finish(Outcome::Failed(ErrorKind::InvalidData), shared));
                    }
                    if let Origin::Client { source, .. } = origin {
                        let balancer = self.peer;
                        self.peer = source;
                        let ip = source.ip().to_canonical();
                        let refusal = if !allow::allowed(&shared.config.allow, ip) {
                            Some(Refusal::NotAllowed)
                        } else {
                            self.admission.moved_to(ip).err()
                        };
                        if let Some(refusal) = refusal {
                            shared.count_refusal(refusal);
                            shared.refusal_log(refusal).log(format_args!(
                                "closed {} connection from {source} (through {balancer}): {refusal}",
                                self.transport
                            ));
                            self.link = first_link(self.transport, tcp);
                            if refusal == Refusal::PerIp
                                && let Link::Plain(tcp) = &self.link
                            {
                                let reply = Reply::Failed(Failure::Busy)
                                    .encode(shared.config.error_detail, Terminator::None);
                                let _ = PlainWriter(tcp).write_now(reply.as_bytes());
                            }
                            return Err(self.turn_away(ErrorKind::PermissionDenied, shared));
                        }
                    }
                    return Ok(first_link(self.transport, tcp));
                }
                Err(e) => e.to_string(),
            }
        };
        shared.count_refusal(Refusal::ProxyHeader);
        shared.refusal_log(Refusal::ProxyHeader).log(format_args!(
            "closed {} connection from {}: {problem}",
            self.transport, self.peer
        ));
        self.link = Link::AwaitingProxy(tcp);
        Err(self.turn_away(ErrorKind::InvalidData, shared))
    }

    /// Closes a connection that will get no reply with a FIN (reading what it
    /// still sends for a moment), not a reset.
    fn turn_away(&mut self, why: ErrorKind, shared: &Shared) -> Step {
        shared.room.forget(self);
        if let Link::AwaitingProxy(tcp) | Link::Plain(tcp) | Link::TlsFresh(tcp) =
            std::mem::replace(&mut self.link, Link::Closed)
            && tcp.shutdown(Shutdown::Write).is_ok()
        {
            shared.lingerer.close(tcp, shared.config.linger);
        }
        self.finish(Outcome::Failed(why), shared)
    }

    /// Takes a handshake step's result into the link (failures are closed and
    /// logged here and leave [`Link::Closed`]).
    fn handshake_step(&mut self, step: Handshake, shared: &Shared) -> Link {
        match step {
            Handshake::Done(stream) => {
                self.client = stream.peer_common_name();
                if shared.config.acl.is_some() {
                    self.certificate = stream.peer_names();
                }
                let kind = if stream.resumed() { "resumed" } else { "full" };
                shared.count_handshake(stream.version(), stream.resumed());
                self.tls_summary = Some(format!("{} {kind}", stream.version()));
                Link::Tls(stream)
            }
            Handshake::Pending(pending) => Link::Handshaking(pending),
            Handshake::Failed(failure) => {
                shared.count_handshake_failure(failure.kind);
                shared.handshake_log.log(format_args!(
                    "tls {}: handshake failed: {} ({})",
                    self.peer, failure.kind, failure.detail
                ));
                if let Some(tcp) = failure.socket {
                    shared.room.forget_socket(&mut self.registered, &tcp);
                    // The alert that says why goes out before the FIN.
                    if tcp.shutdown(Shutdown::Write).is_ok() {
                        shared.lingerer.close(tcp, shared.config.linger);
                    }
                }
                Link::Closed
            }
        }
    }

    fn handshake_failed(
        &mut self,
        kind: HandshakeFailureKind,
        detail: &str,
        shared: &Shared,
    ) -> Step {
        shared.count_handshake_failure(kind);
        shared.handshake_log.log(format_args!(
            "tls {}: handshake failed: {kind}{}{detail}",
            self.peer,
            if detail.is_empty() { "" } else { ": " }
        ));
        self.finish(Outcome::Failed(ErrorKind::TimedOut), shared)
    }

    /// Reads what has arrived; returns a step when the session must wait or is
    /// done, `None` when a reply is ready to send.
    fn receive(&mut self, now: Instant, expired: bool, shared: &Shared) -> Option<Step> {
        let config = &shared.config;
        let received = match &mut self.link {
            Link::Plain(tcp) => self.incoming.receive(tcp, now),
            Link::Tls(stream) => self.incoming.receive(stream, now),
            _ => return Some(Step::Done),
        };
        let access = match self.transport {
            Transport::Plain => config.plain_access,
            Transport::Tls => connection::Access::ReadWrite,
        };
        let timed_out = || {
            (
                (
                    connection::timed_out(config.error_detail),
                    Reply::Failed(Failure::Timeout),
                ),
                Outcome::TimedOut,
            )
        };
        let ((reply, verdict), outcome) = match received {
            Received::Message(message) => {
                self.admission.finished();
                (self.respond(message, access, shared), Outcome::Served)
            }
            Received::Waiting => {
                let gap_ends = self.incoming.gap_ends(config.gap);
                if expired || gap_ends.is_some_and(|at| at <= now) {
                    if self.incoming.is_empty() {
                        timed_out()
                    } else {
                        self.admission.finished();
                        let message = self.incoming.judge();
                        (self.respond(message, access, shared), Outcome::Served)
                    }
                } else {
                    let until = gap_ends.map_or(self.deadline, |at| at.min(self.deadline));
                    return Some(Step::Park(Interest::READABLE, until));
                }
            }
            Received::Closed => timed_out(),
            Received::Broken(kind) => return Some(self.finish(Outcome::Failed(kind), shared)),
        };
        self.sending = Some(Sending {
            reply,
            sent: 0,
            outcome,
            verdict,
        });
        None
    }

    /// Parses a complete message, checks it against the `--acl` rules and
    /// applies it; the reply ends the way the request did.
    fn respond(&self, message: Message, access: Access, shared: &Shared) -> (Encoded, Reply) {
        let reply = match Request::parse(&self.incoming.bytes()[..message.len]) {
            Ok(request) if !self.authorized(&request, shared) => Reply::Failed(Failure::Forbidden),
            Ok(request) => connection::apply(request, &*shared.backend, access),
            Err(e) => Reply::Failed(Failure::Protocol(e)),
        };
        (
            reply.encode(shared.config.error_detail, message.terminator),
            reply,
        )
    }

    /// Whether the rules let this client make this request (always, without
    /// `--acl`); a refusal is counted and logged, rate-limited.
    fn authorized(&self, request: &Request, shared: &Shared) -> bool {
        let Some(acl) = shared.acl() else {
            return true;
        };
        let peer = acl::Peer {
            addr: self.peer.ip(),
            certificate: self.certificate.as_ref(),
        };
        let decision = acl.check(&peer, request);
        if !decision.allowed {
            shared.count_forbidden();
            let who = match self.certificate.as_ref().and_then(|c| c.cn.as_deref()) {
                Some(cn) => format!("cn=\"{}\"", Escaped(cn.as_bytes())),
                None if self.certificate.is_some() => "a certificate without CN".to_string(),
                None => "no certificate".to_string(),
            };
            let (verb, device, register) = match *request {
                Request::Read { device, register } => ("read", device, register),
                Request::Write {
                    device, register, ..
                } => ("write", device, register),
            };
            shared.forbidden_log.log(format_args!(
                "forbidden by {}: {} {} {who} \"{}\" ({verb} of register {register:02X} of device {device:04X}): {decision}",
                acl.path().display(),
                self.transport,
                self.peer,
                Escaped(self.incoming.bytes()),
            ));
        }
        decision.allowed
    }

    fn send(&mut self, now: Instant, shared: &Shared) -> Step {
        let Some(sending) = &mut self.sending else {
            return Step::Done;
        };
        let result = match &mut self.link {
            Link::Plain(tcp) => {
                connection::send(&mut PlainWriter(tcp), &sending.reply, &mut sending.sent)
            }
            Link::Tls(stream) => connection::send(stream, &sending.reply, &mut sending.sent),
            _ => Sent::Broken(ErrorKind::NotConnected),
        };
        match result {
            Sent::All => {
                let outcome = sending.outcome;
                self.finish(outcome, shared)
            }
            // A client that does not read its reply gets one gap past its deadline.
            Sent::Partly if now < self.deadline + shared.config.gap => {
                Step::Park(Interest::WRITABLE, self.deadline + shared.config.gap)
            }
            Sent::Partly => self.finish(Outcome::Failed(ErrorKind::TimedOut), shared),
            Sent::Broken(kind) => self.finish(Outcome::Failed(kind), shared),
        }
    }

    /// Closes the connection (gracefully when a reply went out) and logs it.
    fn finish(&mut self, outcome: Outcome, shared: &Shared) -> Step {
        shared.room.forget(self);
        let replied = !matches!(outcome, Outcome::Failed(_));
        let replied_at = Instant::now();
        let tcp = match std::mem::replace(&mut self.link, Link::Closed) {
            Link::Plain(tcp) | Link::AwaitingProxy(tcp) => Some(tcp),
            Link::Tls(stream) => stream.close(),
            Link::TlsFresh(tcp) => Some(tcp),
            Link::Handshaking(pending) => pending.abandon(),
            Link::Closed => None,
        };
        if let Some(tcp) = tcp
            && replied
            && tcp.shutdown(Shutdown::Write).is_ok()
        {
            shared.lingerer.close(tcp, shared.config.linger);
        }
        self.log(outcome, replied_at, shared);
        Step::Done
    }

    /// Closes a silent connection to make room for a newcomer (accept thread;
    /// nothing here blocks).
    pub(crate) fn shed(mut self, shared: &Shared) {
        shared.room.forget(&mut self);
        if let Link::Plain(tcp) = &self.link {
            shared.count_busy_reply(self.transport);
            let reply =
                Reply::Failed(Failure::Busy).encode(shared.config.error_detail, Terminator::None);
            let _ = PlainWriter(tcp).write_now(reply.as_bytes());
            let _ = tcp.shutdown(Shutdown::Write);
            let _ = linger::drain_now(tcp) == Drained::Closed;
        }
        shared.count_refusal(Refusal::Shed);
        shared.refusal_log(Refusal::Shed).log(format_args!(
            "closed silent {} connection from {} after {} ms: the connection table is full (--max-connections {})",
            self.transport,
            self.peer,
            self.accepted_at.elapsed().as_millis(),
            shared.config.max_connections
        ));
    }

    fn log(&self, outcome: Outcome, replied_at: Instant, shared: &Shared) {
        let micros = replied_at
            .saturating_duration_since(self.accepted_at)
            .as_micros();
        let (peer, transport) = (self.peer, self.transport);
        let reply = self
            .sending
            .as_ref()
            .map(|s| s.reply.as_bytes())
            .unwrap_or_default();
        let n = match outcome {
            Outcome::Served => shared.count_transaction(),
            _ => 0,
        };
        if let (Some(sending), Outcome::Served | Outcome::TimedOut) = (&self.sending, outcome) {
            shared.observe(&Transaction {
                n,
                port: transport,
                peer,
                request: self.incoming.bytes(),
                reply,
                verdict: sending.verdict,
                micros: micros as u64,
            });
        }
        match outcome {
            Outcome::Served => {
                let tls = self
                    .tls_summary
                    .as_deref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                let (request, reply, us) = (
                    Escaped(self.incoming.bytes()),
                    Escaped(reply),
                    micros as u64,
                );
                let port = transport.name();
                let tls_kv = self.tls_summary.as_deref().unwrap_or("");
                match &self.client {
                    Some(cn) => info!(
                        event = "transaction", n, port, peer:%, tls = tls_kv, cn = cn.as_str(), request:%, reply:%, us;
                        "#{n} {transport} {peer}{tls} cn=\"{}\" \"{request}\" -> \"{reply}\" {micros}us",
                        Escaped(cn.as_bytes()),
                    ),
                    None => info!(
                        event = "transaction", n, port, peer:%, tls = tls_kv, request:%, reply:%, us;
                        "#{n} {transport} {peer}{tls} \"{request}\" -> \"{reply}\" {micros}us",
                    ),
                }
            }
            Outcome::TimedOut => debug!(
                "{transport} {peer}: nothing received in time; sent \"{}\"",
                Escaped(reply)
            ),
            Outcome::Failed(kind) => debug!(
                "{transport} {peer}: connection failed ({kind}) after \"{}\"",
                Escaped(self.incoming.bytes())
            ),
        }
    }
}

/// Where a connection starts once any PROXY header is behind it.
fn first_link(transport: Transport, tcp: TcpStream) -> Link {
    match transport {
        Transport::Plain => Link::Plain(tcp),
        Transport::Tls => Link::TlsFresh(tcp),
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
