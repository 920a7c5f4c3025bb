//! The one place a finished connection is recorded: its transaction line,
//! its counts and its entry on the live page, all read from the connection's
//! [`Facts`] once, when it ends. Nothing on the connection's path counts or
//! logs a client's doings itself.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info};

use crate::acl::CommonName;
use crate::activity::{Activity, Transaction};
use crate::facts::{Ending, Facts, Refusal};
use crate::metrics::Metrics;
use crate::protocol::{Escaped, Request};
use crate::rate_limited::RateLimitedLog;
use crate::tls::server::HandshakeFailureKind;

/// Client-caused log lines: at most one a second of each kind.
const CLIENT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The limits a refusal's log line names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_per_ip: usize,
}

/// Whether a reply ends a message (and so is a numbered transaction).
#[derive(Clone, Copy)]
enum Counted {
    Transaction,
    ReplyOnly,
}

/// Owns every count of the connection path (through [`Metrics`], which the
/// internal stats and `/metrics` both read) and the client log lines.
pub(crate) struct Record {
    metrics: Arc<Metrics>,
    /// The live page's record; `None` without `--http`.
    activity: Option<Arc<Activity>>,
    limits: Limits,
    /// Refusals and failed handshakes: one rate limit and one count of
    /// lines held back per kind, so a flood of one kind neither hides another
    /// nor is counted as another.
    refusal_log: RateLimitedLog,
    handshake_log: RateLimitedLog,
    forbidden_log: RateLimitedLog,
}

impl Record {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        activity: Option<Arc<Activity>>,
        limits: Limits,
    ) -> Record {
        let per_kind = |level, kinds| RateLimitedLog::per_kind(level, CLIENT_LOG_INTERVAL, kinds);
        Record {
            metrics,
            activity,
            limits,
            refusal_log: per_kind(log::Level::Warn, Refusal::KINDS),
            handshake_log: per_kind(log::Level::Info, HandshakeFailureKind::ALL.len()),
            forbidden_log: RateLimitedLog::new(log::Level::Warn, CLIENT_LOG_INTERVAL),
        }
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A connection has ended: `request` is every byte it sent.
    pub(crate) fn finished(&self, facts: &Facts, request: &[u8], ending: &Ending) {
        if let Some(tls) = facts.tls {
            self.metrics.handshake(tls.version, tls.resumed);
        }
        let micros = facts.micros();
        match ending {
            Ending::Answered => self.answered(facts, request, micros),
            Ending::TimedOut => {
                self.replied(facts, request, micros, Counted::ReplyOnly);
                debug!(
                    "{} {}: nothing received in time; sent \"{}\"",
                    facts.transport,
                    facts.peer,
                    Escaped(self.reply_bytes(facts))
                );
            }
            Ending::Empty => {
                self.metrics.closed_empty();
                debug!(
                    "{} {}: closed without sending anything",
                    facts.transport, facts.peer
                );
            }
            Ending::Refused { refusal, problem } => {
                self.metrics.refusal(*refusal);
                if facts.verdict.is_some() {
                    self.replied(facts, request, micros, Counted::ReplyOnly);
                }
                self.refusal_log.log_kind(
                    refusal.index(),
                    format_args!("{}", self.refusal_line(facts, *refusal, problem)),
                );
            }
            Ending::HandshakeFailed { kind, detail } => {
                self.metrics.handshake_failure(*kind);
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                };
                self.handshake_log.log_kind(
                    kind.index(),
                    format_args!("tls {}: handshake failed: {kind}{detail}", facts.peer),
                );
            }
            Ending::Broken(kind) => debug!(
                "{} {}: connection failed ({kind}) after \"{}\"",
                facts.transport,
                facts.peer,
                Escaped(request)
            ),
        }
    }

    fn reply_bytes<'a>(&self, facts: &'a Facts) -> &'a [u8] {
        facts
            .verdict
            .as_ref()
            .map(|v| v.encoded.as_bytes())
            .unwrap_or_default()
    }

    /// Counts a reply and puts it on the live page. A reply to a message
    /// (`Counted::Transaction`) gets the next transaction number, returned;
    /// any other reply (a timeout's or a refusal's `X`) gets 0.
    fn replied(&self, facts: &Facts, request: &[u8], micros: u64, counted: Counted) -> u64 {
        let Some(verdict) = &facts.verdict else {
            return 0;
        };
        let took = Duration::from_micros(micros);
        let (port, reply) = (facts.transport, &verdict.reply);
        let n = match counted {
            Counted::Transaction => self.metrics.answered(port, request, reply, took),
            Counted::ReplyOnly => {
                self.metrics.replied(port, request, reply, took);
                0
            }
        };
        if let Some(activity) = &self.activity {
            activity.record(&Transaction {
                n,
                port: facts.transport,
                peer: facts.peer,
                request,
                reply: verdict.encoded.as_bytes(),
                verdict: verdict.reply,
                micros,
            });
        }
        n
    }

    /// A message judged and its reply sent: the console's transaction line.
    fn answered(&self, facts: &Facts, request: &[u8], micros: u64) {
        let n = self.replied(facts, request, micros, Counted::Transaction);
        let Some(verdict) = &facts.verdict else {
            return;
        };
        if verdict.denial.is_some() {
            self.metrics.acl_denial();
            self.forbidden(facts, request);
        }
        let transport = facts.transport;
        let peer = facts.peer;
        let port = transport.name();
        let (request, reply, us) = (
            Escaped(request),
            Escaped(verdict.encoded.as_bytes()),
            micros,
        );
        let tls = facts.tls.map(|t| format!(" {t}")).unwrap_or_default();
        let tls_kv = tls.trim_start();
        match facts.common_name() {
            Some(cn) => info!(
                event = "transaction", n, port, peer:%, tls = tls_kv, cn, request:%, reply:%, us;
                "#{n} {transport} {peer}{tls} cn=\"{}\" \"{request}\" -> \"{reply}\" {micros}us",
                Escaped(cn.as_bytes()),
            ),
            None => info!(
                event = "transaction", n, port, peer:%, tls = tls_kv, request:%, reply:%, us;
                "#{n} {transport} {peer}{tls} \"{request}\" -> \"{reply}\" {micros}us",
            ),
        }
    }

    /// The line saying which rule refused a request (rate-limited).
    fn forbidden(&self, facts: &Facts, request: &[u8]) {
        let Some(denial) = facts.verdict.as_ref().and_then(|v| v.denial.as_ref()) else {
            return;
        };
        let quoted = |cn: &String| format!("cn=\"{}\"", Escaped(cn.as_bytes()));
        let who = match facts.certificate.as_ref().map(|c| c.cn.as_ref()) {
            Some(Some(CommonName::One(cn))) => quoted(cn),
            // Every CN, so the line shows what the reason speaks of.
            Some(Some(CommonName::Ambiguous { readings, .. })) => {
                readings.iter().map(quoted).collect::<Vec<_>>().join(" ")
            }
            Some(None) => "a certificate without CN".to_string(),
            None => "no certificate".to_string(),
        };
        let mut what = String::new();
        let message = request
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map_or(request, |end| &request[..end]);
        if let Ok(parsed) = Request::parse(message) {
            let (verb, device, register) = match parsed {
                Request::Read { device, register } => ("read", device, register),
                Request::Write {
                    device, register, ..
                } => ("write", device, register),
            };
            let _ = write!(
                what,
                " ({verb} of register {register:02X} of device {device:04X})"
            );
        }
        self.forbidden_log.log(format_args!(
            "forbidden by {}: {} {} {who} \"{}\"{what}: {}",
            denial.file,
            facts.transport,
            facts.peer,
            Escaped(request),
            denial.reason,
        ));
    }

    fn refusal_line(&self, facts: &Facts, refusal: Refusal, problem: &Option<String>) -> String {
        let (transport, peer) = (facts.transport, facts.peer);
        let limits = self.limits;
        if let Some(balancer) = facts.balancer {
            return format!(
                "closed {transport} connection from {peer} (through {balancer}): {refusal}"
            );
        }
        match refusal {
            Refusal::NotAllowed => {
                format!("closed {transport} connection from {peer}: address not in --allow")
            }
            Refusal::PerIp => format!(
                "refusing {transport} connection from {peer}: {} connections from that address are unfinished (--max-per-ip)",
                limits.max_per_ip
            ),
            Refusal::Full => format!(
                "refusing {transport} connection from {peer}: {} connections open and none silent to shed (--max-connections)",
                limits.max_connections
            ),
            Refusal::Shed => format!(
                "closed silent {transport} connection from {peer} after {} ms: the connection table is full (--max-connections {})",
                facts.micros() / 1000,
                limits.max_connections
            ),
            Refusal::ProxyHeader => format!(
                "closed {transport} connection from {peer}: {}",
                problem.as_deref().unwrap_or("a bad PROXY header")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Instant;

    use crate::facts::{Denial, TlsFacts, Verdict};
    use crate::protocol::{ErrorDetail, Failure, Reply, Terminator, Transport};

    fn record() -> Record {
        let limits = Limits {
            max_connections: 64,
            max_per_ip: 8,
        };
        Record::new(Arc::new(Metrics::new()), None, limits)
    }

    fn peer() -> SocketAddr {
        "192.0.2.7:40000".parse().unwrap()
    }

    fn facts_with(reply: Option<Reply>) -> Facts {
        let mut facts = Facts::new(Transport::Plain, peer(), Instant::now());
        facts.verdict = reply.map(|reply| Verdict {
            reply,
            encoded: reply.encode(ErrorDetail::Bare, Terminator::None),
            denial: None,
        });
        facts.finished_at = Some(Instant::now());
        facts
    }

    fn accepted() -> Option<Reply> {
        Some(Reply::Accepted {
            device: 0x0FAC,
            register: 0x0B,
            value: 0x1234,
        })
    }

    /// (answered, refused as full, handshake failures, acl denials)
    fn counts(record: &Record) -> (u64, u64, u64, u64) {
        let m = record.metrics();
        (
            m.answered_total(),
            m.refusals_total(Refusal::Full),
            m.handshake_failures_total(),
            m.acl_denials_total(),
        )
    }

    #[test]
    fn each_ending_is_counted_once_and_only_an_answer_is_a_transaction() {
        let denied = {
            let mut facts = facts_with(Some(Reply::Failed(Failure::Forbidden)));
            if let Some(verdict) = facts.verdict.as_mut() {
                verdict.denial = Some(Denial {
                    file: "acl.rules".to_string(),
                    reason: "no rule allows it (default deny)".to_string(),
                });
            }
            facts
        };
        let cases = [
            (facts_with(accepted()), Ending::Answered, (1, 0, 0, 0)),
            (denied, Ending::Answered, (1, 0, 0, 1)),
            (
                facts_with(Some(Reply::Failed(Failure::Timeout))),
                Ending::TimedOut,
                (0, 0, 0, 0),
            ),
            (facts_with(None), Ending::Empty, (0, 0, 0, 0)),
            (
                facts_with(Some(Reply::Failed(Failure::Busy))),
                Ending::Refused {
                    refusal: Refusal::Full,
                    problem: None,
                },
                (0, 1, 0, 0),
            ),
            (
                facts_with(None),
                Ending::HandshakeFailed {
                    kind: HandshakeFailureKind::Timeout,
                    detail: String::new(),
                },
                (0, 0, 1, 0),
            ),
            (
                facts_with(None),
                Ending::Broken(std::io::ErrorKind::ConnectionReset),
                (0, 0, 0, 0),
            ),
        ];
        for (facts, ending, expected) in cases {
            let record = record();
            record.finished(&facts, b"W0FAC0B1234", &ending);
            assert_eq!(counts(&record), expected, "{ending:?}");
        }
    }

    #[test]
    fn transactions_are_numbered_in_the_order_they_end() {
        let record = record();
        for n in 1..=3 {
            record.finished(&facts_with(accepted()), b"W0FAC0B1234", &Ending::Answered);
            assert_eq!(record.metrics().answered_total(), n);
        }
        // A refusal's X between them takes no number.
        let busy = facts_with(Some(Reply::Failed(Failure::Busy)));
        let shed = Ending::Refused {
            refusal: Refusal::Shed,
            problem: None,
        };
        record.finished(&busy, b"", &shed);
        assert_eq!(record.metrics().answered_total(), 3);
        assert_eq!(record.metrics().refusals_total(Refusal::Shed), 1);
    }

    #[test]
    fn a_completed_handshake_is_counted_whatever_the_ending() {
        let record = record();
        let mut facts = facts_with(None);
        facts.tls = Some(TlsFacts {
            version: "TLSv1.3",
            resumed: true,
        });
        record.finished(&facts, b"", &Ending::Empty);
        let text = record.metrics().encode(&Default::default());
        let counted = |outcome: &str, n: &str| {
            text.lines().any(|line| {
                line.contains("tls_handshakes")
                    && line.contains("\"TLSv1.3\"")
                    && line.contains(outcome)
                    && line.ends_with(n)
            })
        };
        assert!(counted("\"resumed\"", " 1"), "{text}");
        assert!(counted("\"full\"", " 0"), "{text}");
    }

    #[test]
    fn each_refusal_has_its_own_line_naming_the_limit() {
        let record = record();
        let facts = facts_with(None);
        let cases = [
            (Refusal::NotAllowed, None, "address not in --allow"),
            (
                Refusal::PerIp,
                None,
                "8 connections from that address are unfinished (--max-per-ip)",
            ),
            (
                Refusal::Full,
                None,
                "64 connections open and none silent to shed (--max-connections)",
            ),
            (
                Refusal::Shed,
                None,
                "the connection table is full (--max-connections 64)",
            ),
            (Refusal::ProxyHeader, None, "a bad PROXY header"),
            (
                Refusal::ProxyHeader,
                Some("a PROXY header from an address not in --proxy-from".to_string()),
                "not in --proxy-from",
            ),
        ];
        for (refusal, problem, expected) in cases {
            let line = record.refusal_line(&facts, refusal, &problem);
            assert!(line.contains("192.0.2.7:40000"), "{line}");
            assert!(line.contains(expected), "{refusal}: {line}");
        }
        let mut proxied = facts_with(None);
        proxied.balancer = Some("10.0.0.1:5000".parse().unwrap());
        let line = record.refusal_line(&proxied, Refusal::PerIp, &None);
        assert_eq!(
            line,
            "closed plain connection from 192.0.2.7:40000 (through 10.0.0.1:5000): per-address limit"
        );
    }
}
