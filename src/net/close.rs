//! How a connection is let go: the one refusal and the one graceful close.
//!
//! A connection turned away — at accept, after a balancer's PROXY header, or
//! shed to make room for a newcomer — goes through [`refuse`]: the busy `X`
//! where the refusal is for lack of room and a WWEP reply can reach the
//! client, then the same close as an answered connection, then its record
//! (the log line and the count), once. Every close that must not destroy what
//! was sent (a reply, a refusal's `X`, a TLS alert) is [`gracefully`]: the
//! sending side is shut down, so the FIN follows what was sent at once, and
//! the lingerer reads what the client still sends until it closes, so the
//! close is never a reset. (A session whose socket is in the waiting room's
//! epoll set closes the same way, its lingering held by the room: see
//! `Session::close_gracefully`.)

use rustix::net::SendFlags;
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use crate::facts::{Ending, Facts, Refusal, Verdict};
use crate::net::context::Context;
use crate::protocol::{ErrorDetail, Failure, Reply, Terminator};

/// Whether a WWEP reply can reach the client now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// The open port, with any PROXY header behind it.
    Now,
    /// A TLS connection before its handshake, or a PROXY header still due:
    /// anything sent would not be read as WWEP.
    NotYet,
}

/// The `X` a connection turned away for lack of room gets.
pub(crate) fn busy_reply(detail: ErrorDetail) -> Verdict {
    let reply = Reply::Failed(Failure::Busy);
    Verdict {
        reply,
        encoded: reply.encode(detail, Terminator::None),
        denial: None,
    }
}

/// The reply a refusal gets: the busy `X` for lack of room (the table full,
/// the address's limit reached, shed for a newcomer) where it can reach the
/// client; nothing to an address not allowed or after a bad PROXY header.
pub(crate) fn refusal_reply(
    refusal: Refusal,
    reach: Reach,
    detail: ErrorDetail,
) -> Option<Verdict> {
    let for_lack_of_room = matches!(refusal, Refusal::Full | Refusal::PerIp | Refusal::Shed);
    (for_lack_of_room && reach == Reach::Now).then(|| busy_reply(detail))
}

/// Turns a connection away: its reply if the refusal gets one (sent without
/// waiting: a fresh socket's buffer takes these few bytes), a graceful close,
/// and its record. `tcp` is `None` when the socket is already gone.
pub(crate) fn refuse(
    tcp: Option<TcpStream>,
    reach: Reach,
    facts: &mut Facts,
    refusal: Refusal,
    problem: Option<String>,
    ctx: &Context,
) {
    if let Some(tcp) = tcp {
        if let Some(busy) = refusal_reply(refusal, reach, ctx.config.error_detail) {
            let _ = send_now(&tcp, busy.encoded.as_bytes());
            facts.verdict = Some(busy);
        }
        gracefully(tcp, ctx);
    }
    facts.finished_at = Some(Instant::now());
    let ending = Ending::Refused { refusal, problem };
    ctx.record.finished(facts, b"", &ending);
}

/// The graceful close: shuts the sending side down and hands the socket to
/// the lingerer, which reads and discards what the client still sends until
/// it closes or `--linger-ms` is up. A socket that cannot be shut down (the
/// client already reset it) is closed at once.
pub(crate) fn gracefully(tcp: TcpStream, ctx: &Context) {
    if tcp.shutdown(Shutdown::Write).is_ok() {
        ctx.lingerer.close(tcp, ctx.config.linger);
    }
}

/// Writes what fits without waiting.
pub(crate) fn send_now(tcp: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    socket2::SockRef::from(tcp).send_with_flags(bytes, SendFlags::DONTWAIT.bits() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};
    use std::sync::Arc;
    use std::time::Duration;

    use crate::config::ServerConfig;
    use crate::metrics::Metrics;
    use crate::net::context::Parts;
    use crate::net::linger::Lingerer;
    use crate::net::record::{Limits, Record};
    use crate::protocol::Transport;
    use crate::store::RegisterStore;

    /// A context with registers in memory and the defaults of the settings,
    /// but a linger long enough that a slow test still sees the socket held.
    fn context() -> Context {
        let config = ServerConfig {
            linger: Duration::from_secs(30),
            ..ServerConfig::default()
        };
        let record = Record::new(
            Arc::new(Metrics::new()),
            None,
            Limits {
                max_connections: config.max_connections,
                max_per_ip: config.max_per_ip,
            },
        );
        let parts = Parts {
            config,
            backend: Arc::new(RegisterStore::new()),
            acceptor: None,
            acl: None,
            record,
        };
        Context::new(parts, Lingerer::start(16).unwrap())
    }

    /// A connected pair: the server's end and the client's (with a read
    /// timeout).
    fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (server, peer) = listener.accept().unwrap();
        (server, client, peer)
    }

    #[test]
    fn only_a_refusal_for_lack_of_room_that_can_reach_the_client_gets_the_busy_x() {
        use Reach::{NotYet, Now};
        let cases = [
            (Refusal::Full, Now, Some("X")),
            (Refusal::PerIp, Now, Some("X")),
            (Refusal::Shed, Now, Some("X")),
            (Refusal::NotAllowed, Now, None),
            (Refusal::ProxyHeader, Now, None),
            (Refusal::Full, NotYet, None),
            (Refusal::Shed, NotYet, None),
        ];
        for (refusal, reach, expected) in cases {
            let reply = refusal_reply(refusal, reach, ErrorDetail::Bare);
            assert_eq!(
                reply.as_ref().map(|v| v.encoded.as_bytes()),
                expected.map(str::as_bytes),
                "{refusal} {reach:?}"
            );
        }
        let explained = refusal_reply(Refusal::Full, Now, ErrorDetail::Explained).unwrap();
        assert_eq!(explained.encoded.as_bytes(), b"X busy");
        assert_eq!(explained.reply, Reply::Failed(Failure::Busy));
    }

    #[test]
    fn a_refused_client_reads_its_x_then_a_clean_close_and_the_refusal_is_counted_once() {
        let ctx = context();
        let (server, mut client, peer) = pair();
        let mut facts = Facts::new(Transport::Plain, peer, Instant::now());
        refuse(
            Some(server),
            Reach::Now,
            &mut facts,
            Refusal::Full,
            None,
            &ctx,
        );
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"X");
        assert!(client.take_error().unwrap().is_none(), "a FIN, not a reset");
        assert!(facts.verdict.is_some() && facts.finished_at.is_some());
        let metrics = ctx.record.metrics();
        assert_eq!(metrics.refusals_total(Refusal::Full), 1);
        assert_eq!(metrics.answered_total(), 0, "a refusal is no transaction");
        assert_eq!(
            ctx.lingerer.held(),
            1,
            "the close lingers until the client's"
        );
    }

    #[test]
    fn a_refusal_without_a_reply_closes_with_a_fin_and_sends_nothing() {
        let ctx = context();
        for (transport, refusal) in [
            (Transport::Plain, Refusal::NotAllowed),
            (Transport::Tls, Refusal::Full),
        ] {
            let (server, mut client, peer) = pair();
            let mut facts = Facts::new(transport, peer, Instant::now());
            let reach = match transport {
                Transport::Plain => Reach::Now,
                Transport::Tls => Reach::NotYet,
            };
            refuse(Some(server), reach, &mut facts, refusal, None, &ctx);
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"", "{transport} {refusal}");
            assert!(facts.verdict.is_none());
            assert_eq!(ctx.record.metrics().refusals_total(refusal), 1);
        }
    }

    #[test]
    fn a_refusal_whose_socket_is_gone_is_still_recorded() {
        let ctx = context();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut facts = Facts::new(Transport::Plain, peer, Instant::now());
        let problem = Some("a PROXY header from an address not in --proxy-from".to_string());
        refuse(
            None,
            Reach::Now,
            &mut facts,
            Refusal::ProxyHeader,
            problem,
            &ctx,
        );
        assert_eq!(ctx.record.metrics().refusals_total(Refusal::ProxyHeader), 1);
        assert_eq!(ctx.lingerer.held(), 0);
    }
}
