//! What is known about one connection: filled in as the connection goes
//! (peer, balancer, TLS, client certificate, request, reply) and read once,
//! when it ends, by the one place that writes the transaction line, counts the
//! metrics and feeds the live page (`net::record`). Nothing here does I/O.

use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Instant;

use crate::acl::Certificate;
use crate::protocol::{Encoded, Reply, Transport};
use crate::tls::server::HandshakeFailureKind;

/// Why a connection was turned away or closed before its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The connection table was full and nobody could be shed.
    Full,
    /// Its address already holds `--max-per-ip` unfinished connections.
    PerIp,
    /// Its address is not in `--allow`.
    NotAllowed,
    /// It had sent nothing and was the oldest such when the table was full.
    Shed,
    /// A PROXY header that was malformed, or came from an address not in
    /// `--proxy-from`.
    ProxyHeader,
}

impl Refusal {
    /// Every kind, in [`Refusal::index`] order.
    pub const ALL: [Refusal; 5] = [
        Refusal::Full,
        Refusal::PerIp,
        Refusal::NotAllowed,
        Refusal::Shed,
        Refusal::ProxyHeader,
    ];
    /// How many kinds there are.
    pub const KINDS: usize = Refusal::ALL.len();

    /// A dense index (0..KINDS), for per-kind tables.
    pub fn index(self) -> usize {
        match self {
            Refusal::Full => 0,
            Refusal::PerIp => 1,
            Refusal::NotAllowed => 2,
            Refusal::Shed => 3,
            Refusal::ProxyHeader => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::PerIp => "per-address limit",
            Refusal::NotAllowed => "not allowed",
            Refusal::Shed => "shed",
            Refusal::ProxyHeader => "proxy header",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A message was judged and its reply sent: a transaction.
    Answered,
    /// The client stayed connected and sent nothing before its deadline; `X`
    /// was sent.
    TimedOut,
    /// The client closed without sending a byte (a TCP health check, a port
    /// scan, a service manager probing the port): nothing to answer.
    Empty,
    /// Turned away before its message (an `X` went out on the open port where
    /// the refusal says so, and `verdict` holds it); `problem` says what was
    /// wrong with a PROXY header.
    Refused {
        refusal: Refusal,
        problem: Option<String>,
    },
    /// The TLS handshake failed; `detail` is the library's reason, for the log.
    HandshakeFailed {
        kind: HandshakeFailureKind,
        detail: String,
    },
    /// The stream failed; a reply, if one was being sent, may not have arrived.
    Broken(ErrorKind),
}

/// A completed TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFacts {
    /// `TLSv1.2`, `TLSv1.3`.
    pub version: &'static str,
    pub resumed: bool,
}

impl fmt::Display for TlsFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.resumed { "resumed" } else { "full" };
        write!(f, "{} {kind}", self.version)
    }
}

/// A request the `--acl` rules refused: which file and rule said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The rule file.
    pub file: String,
    /// `rule on line N (...)` or `no rule allows it (default deny)`.
    pub reason: String,
}

/// The reply a connection got (or is being sent).
#[derive(Debug, Clone)]
pub struct Verdict {
    pub reply: Reply,
    pub encoded: Encoded,
    /// Set when the `--acl` rules refused the request.
    pub denial: Option<Denial>,
}

/// One connection's facts, from accept to close.
#[derive(Debug, Clone)]
pub struct Facts {
    pub transport: Transport,
    /// The client: the socket's peer, or the address a trusted balancer's
    /// PROXY header named.
    pub peer: SocketAddr,
    /// The balancer the connection came through, when a PROXY header named
    /// another client.
    pub balancer: Option<SocketAddr>,
    pub accepted_at: Instant,
    /// Set once the TLS handshake completes.
    pub tls: Option<TlsFacts>,
    /// The client certificate's names (mutual TLS).
    pub certificate: Option<Certificate>,
    /// Set once a message (or the lack of one) is judged.
    pub verdict: Option<Verdict>,
    /// When the reply was fully handed to the socket (or the connection ended).
    pub finished_at: Option<Instant>,
}

impl Facts {
    pub fn new(transport: Transport, peer: SocketAddr, accepted_at: Instant) -> Facts {
        Facts {
            transport,
            peer,
            balancer: None,
            accepted_at,
            tls: None,
            certificate: None,
            verdict: None,
            finished_at: None,
        }
    }

    /// The client certificate's common name, if it has exactly one that
    /// reads as text.
    pub fn common_name(&self) -> Option<&str> {
        self.certificate
            .as_ref()
            .and_then(|c| c.cn.as_ref())
            .and_then(|cn| cn.one())
    }

    /// From accept to the end of the reply (or of the connection), in µs.
    pub fn micros(&self) -> u64 {
        let end = self.finished_at.unwrap_or_else(Instant::now);
        u64::try_from(end.saturating_duration_since(self.accepted_at).as_micros())
            .unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_indexes_are_dense_and_in_order() {
        for (i, refusal) in Refusal::ALL.iter().enumerate() {
            assert_eq!(refusal.index(), i);
        }
    }

    #[test]
    fn tls_facts_read_as_the_transaction_line_says() {
        let full = TlsFacts {
            version: "TLSv1.2",
            resumed: false,
        };
        assert_eq!(full.to_string(), "TLSv1.2 full");
        let resumed = TlsFacts {
            version: "TLSv1.3",
            resumed: true,
        };
        assert_eq!(resumed.to_string(), "TLSv1.3 resumed");
    }
}
