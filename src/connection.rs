//! One transaction over any stream: read one message, apply it, reply, close.
//!
//! Plain TCP and TLS both come here through [`Conn`], so framing, timeouts and the
//! graceful close are written once. Nothing here logs; the caller gets a
//! [`Transaction`] describing what happened.

use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::protocol::{
    Encoded, ErrorDetail, Failure, Frame, MAX_MESSAGE_BYTES, Reply, Request, Terminator, frame,
    frame_final,
};
use crate::store::RegisterStore;

/// A byte stream with the socket controls a transaction needs.
pub trait Conn: Read + Write {
    /// Sets how long the next reads may block. Never called with zero.
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()>;
    /// Ends the sending side (TLS: close_notify first), then reads and discards what
    /// the peer still sends for at most `linger`, so the close is never a reset.
    fn close_gracefully(self, linger: Duration)
    where
        Self: Sized;
}

/// The time limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// When the message must have arrived, counted from accept.
    pub deadline: Instant,
    /// The longest a started message may pause; also the stream's read timeout
    /// when [`serve`] is called.
    pub gap: Duration,
    pub linger: Duration,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A message was judged and its reply sent.
    Served,
    /// Nothing arrived before the deadline; `X` was sent.
    TimedOut,
    /// The stream failed; the reply, if any, may not have arrived.
    Failed(ErrorKind),
}

/// What one connection carried, for the transaction log.
#[derive(Clone)]
pub struct Transaction {
    request: [u8; MAX_MESSAGE_BYTES],
    request_len: usize,
    pub reply: Option<Encoded>,
    pub outcome: Outcome,
    /// When the reply was handed to the stream.
    pub replied_at: Option<Instant>,
}

impl Transaction {
    /// The bytes the client sent (the whole message, terminator included).
    pub fn request(&self) -> &[u8] {
        &self.request[..self.request_len]
    }
}

/// Reads `buf.len()` bytes at most, ignoring interrupts.
fn read_some<C: Conn>(conn: &mut C, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match conn.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// What remains until `deadline`, or `None` when too little is left to wait on.
fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (left >= Duration::from_millis(1)).then_some(left)
}

/// What a listener lets its clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    #[default]
    ReadWrite,
    /// Writes are answered `X` (the open port, when writes need TLS).
    ReadOnly,
}

/// Applies a request to the store and says what to answer.
pub fn apply(request: Request, store: &RegisterStore, access: Access) -> Reply {
    match request {
        Request::Write { .. } if access == Access::ReadOnly => Reply::Failed(Failure::Forbidden),
        Request::Read { device, register } => match store.read(device, register) {
            Some(value) => Reply::Accepted {
                device,
                register,
                value,
            },
            None => Reply::Failed(Failure::NotFound),
        },
        Request::Write {
            device,
            register,
            value,
        } => match store.write(device, register, value) {
            Ok(()) => Reply::Accepted {
                device,
                register,
                value,
            },
            Err(_) => Reply::Failed(Failure::Storage),
        },
    }
}

enum Received {
    Message(usize, Terminator),
    Nothing,
    Broken(ErrorKind),
}

/// Reads until the framing rules say the message is complete. The stream's read
/// timeout is expected to be `timing.gap` on entry: silence before the first byte
/// is waited out in gap-long steps until the deadline, so the common case (a
/// whole message in one read) costs no timeout changes at all.
fn receive<C: Conn>(
    conn: &mut C,
    buf: &mut [u8; MAX_MESSAGE_BYTES],
    len: &mut usize,
    timing: &Timing,
) -> Received {
    let mut current = timing.gap;
    // Never wait past the deadline: shorten the timeout only when it would.
    let mut fit_to_deadline = |conn: &mut C| -> Result<bool, ErrorKind> {
        let Some(left) = remaining(timing.deadline) else {
            return Ok(false);
        };
        let wanted = timing.gap.min(left);
        if wanted != current {
            conn.set_read_timeout(wanted).map_err(|e| e.kind())?;
            current = wanted;
        }
        Ok(true)
    };
    loop {
        match read_some(conn, &mut buf[*len..]) {
            Ok(0) if *len == 0 => return Received::Nothing,
            Ok(0) => break,
            Ok(n) => {
                *len += n;
                if let Frame::Complete {
                    message_len,
                    terminator,
                } = frame(&buf[..*len])
                {
                    return Received::Message(message_len, terminator);
                }
                // Started but unfinished: wait at most the gap for the next byte.
                match fit_to_deadline(conn) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(kind) => return Received::Broken(kind),
                }
            }
            Err(e) if is_timeout(&e) => {
                if *len > 0 {
                    break;
                }
                match fit_to_deadline(conn) {
                    Ok(true) => {}
                    Ok(false) => return Received::Nothing,
                    Err(kind) => return Received::Broken(kind),
                }
            }
            Err(e) => return Received::Broken(e.kind()),
        }
    }
    let (message_len, terminator) = frame_final(&buf[..*len]);
    Received::Message(message_len, terminator)
}

/// Serves one connection: one message in, one reply out. When the reply went out
/// ([`Outcome::Served`] or [`Outcome::TimedOut`]) the caller closes the stream with
/// [`Conn::close_gracefully`], which may be what sends it (the plain listener
/// holds the reply back to send it with the FIN).
pub fn serve<C: Conn>(
    conn: &mut C,
    store: &RegisterStore,
    access: Access,
    detail: ErrorDetail,
    timing: &Timing,
    before_reply: &mut dyn FnMut(),
) -> Transaction {
    let mut buf = [0u8; MAX_MESSAGE_BYTES];
    let mut len = 0;
    let (reply, outcome) = match receive(conn, &mut buf, &mut len, timing) {
        Received::Message(message_len, terminator) => {
            let reply = match Request::parse(&buf[..message_len]) {
                Ok(request) => apply(request, store, access),
                Err(e) => Reply::Failed(Failure::Protocol(e)),
            };
            (reply.encode(detail, terminator), Outcome::Served)
        }
        Received::Nothing => (
            Reply::Failed(Failure::Timeout).encode(detail, Terminator::None),
            Outcome::TimedOut,
        ),
        Received::Broken(kind) => {
            return Transaction {
                request: buf,
                request_len: len,
                reply: None,
                outcome: Outcome::Failed(kind),
                replied_at: None,
            };
        }
    };
    before_reply();
    let outcome = match conn.write_all(reply.as_bytes()).and_then(|()| conn.flush()) {
        Ok(()) => outcome,
        Err(e) => Outcome::Failed(e.kind()),
    };
    Transaction {
        request: buf,
        request_len: len,
        reply: Some(reply),
        outcome,
        replied_at: Some(Instant::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// What a scripted peer does on the next read.
    enum Step {
        Bytes(&'static [u8]),
        Timeout,
        Eof,
        Reset,
    }

    /// An in-memory peer: reads follow the script, writes are collected.
    struct Script {
        steps: VecDeque<Step>,
        written: Vec<u8>,
        timeouts: Vec<Duration>,
        fail_writes: bool,
    }

    impl Script {
        fn new(steps: Vec<Step>) -> Self {
            Script {
                steps: steps.into(),
                written: Vec::new(),
                timeouts: Vec::new(),
                fail_writes: false,
            }
        }
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.steps.pop_front() {
                Some(Step::Bytes(b)) => {
                    let n = b.len().min(buf.len());
                    buf[..n].copy_from_slice(&b[..n]);
                    if n < b.len() {
                        self.steps.push_front(Step::Bytes(&b[n..]));
                    }
                    Ok(n)
                }
                Some(Step::Timeout) => Err(ErrorKind::WouldBlock.into()),
                Some(Step::Reset) => Err(ErrorKind::ConnectionReset.into()),
                Some(Step::Eof) | None => Ok(0),
            }
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail_writes {
                return Err(ErrorKind::BrokenPipe.into());
            }
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Conn for Script {
        fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
            assert!(!timeout.is_zero());
            self.timeouts.push(timeout);
            Ok(())
        }
        fn close_gracefully(self, _linger: Duration) {}
    }

    fn timing() -> Timing {
        Timing {
            deadline: Instant::now() + Duration::from_secs(5),
            gap: Duration::from_millis(100),
            linger: Duration::from_millis(10),
        }
    }

    fn run(steps: Vec<Step>, store: &RegisterStore, detail: ErrorDetail) -> (Script, Transaction) {
        run_with(steps, store, Access::ReadWrite, detail, &timing())
    }

    fn run_with(
        steps: Vec<Step>,
        store: &RegisterStore,
        access: Access,
        detail: ErrorDetail,
        timing: &Timing,
    ) -> (Script, Transaction) {
        let mut script = Script::new(steps);
        let t = serve(&mut script, store, access, detail, timing, &mut || {});
        (script, t)
    }

    #[test]
    fn write_then_read_in_one_segment_each() {
        let store = RegisterStore::new();
        let (s, t) = run(vec![Step::Bytes(b"W0FAC0B1234")], &store, ErrorDetail::Bare);
        assert_eq!(s.written, b"A0FAC0B1234");
        assert_eq!(t.outcome, Outcome::Served);
        assert_eq!(t.request(), b"W0FAC0B1234");
        // No gap timer was needed for a whole message.
        assert!(s.timeouts.is_empty());
        let (s, _) = run(vec![Step::Bytes(b"r0fac0b\r\n")], &store, ErrorDetail::Bare);
        assert_eq!(s.written, b"X\r\n", "lowercase command is illegal");
        let (s, _) = run(vec![Step::Bytes(b"R0fac0b\r\n")], &store, ErrorDetail::Bare);
        assert_eq!(s.written, b"A0FAC0B1234\r\n");
    }

    #[test]
    fn unknown_register_is_x() {
        let store = RegisterStore::new();
        let (s, _) = run(
            vec![Step::Bytes(b"R0FAC0B\n")],
            &store,
            ErrorDetail::Explained,
        );
        assert_eq!(s.written, b"X not found\n");
    }

    #[test]
    fn split_message_is_joined() {
        let store = RegisterStore::new();
        let (s, t) = run(
            vec![
                Step::Bytes(b"W0FA"),
                Step::Bytes(b"C0B12"),
                Step::Bytes(b"34\n"),
            ],
            &store,
            ErrorDetail::Bare,
        );
        assert_eq!(s.written, b"A0FAC0B1234\n");
        assert_eq!(t.request(), b"W0FAC0B1234\n");
        assert!(s.timeouts.is_empty(), "the gap timeout is already in place");
    }

    #[test]
    fn short_message_is_judged_after_the_gap() {
        let store = RegisterStore::new();
        let (s, t) = run(
            vec![Step::Bytes(b"W01234"), Step::Timeout],
            &store,
            ErrorDetail::Explained,
        );
        assert_eq!(s.written, b"X bad length");
        assert_eq!(t.outcome, Outcome::Served);
    }

    #[test]
    fn half_close_ends_the_message() {
        let store = RegisterStore::new();
        store.write(1, 2, 3).unwrap();
        let (s, _) = run(
            vec![Step::Bytes(b"R000102"), Step::Eof],
            &store,
            ErrorDetail::Bare,
        );
        assert_eq!(s.written, b"A0001020003");
        let (s, _) = run(
            vec![Step::Bytes(b"R0001"), Step::Eof],
            &store,
            ErrorDetail::Explained,
        );
        assert_eq!(s.written, b"X bad length");
    }

    #[test]
    fn nothing_before_the_deadline_gets_x() {
        let store = RegisterStore::new();
        let timing = Timing {
            deadline: Instant::now(),
            ..timing()
        };
        let (script, t) = run_with(
            vec![Step::Timeout],
            &store,
            Access::ReadWrite,
            ErrorDetail::Explained,
            &timing,
        );
        assert_eq!(script.written, b"X timeout");
        assert_eq!(t.outcome, Outcome::TimedOut);
        let (s, t) = run(vec![Step::Eof], &store, ErrorDetail::Bare);
        assert_eq!(s.written, b"X");
        assert_eq!(t.outcome, Outcome::TimedOut);
    }

    #[test]
    fn an_early_socket_timeout_waits_out_the_deadline() {
        let store = RegisterStore::new();
        let (s, _) = run(
            vec![Step::Timeout, Step::Bytes(b"W000000FFFF")],
            &store,
            ErrorDetail::Bare,
        );
        assert_eq!(s.written, b"A000000FFFF");
        assert!(s.timeouts.is_empty());
    }

    #[test]
    fn the_timeout_shrinks_only_near_the_deadline() {
        let store = RegisterStore::new();
        let timing = Timing {
            deadline: Instant::now() + Duration::from_millis(50),
            ..timing()
        };
        let (script, _) = run_with(
            vec![Step::Timeout, Step::Bytes(b"R0"), Step::Timeout],
            &store,
            Access::ReadWrite,
            ErrorDetail::Explained,
            &timing,
        );
        assert_eq!(script.written, b"X bad length");
        assert!(
            !script.timeouts.is_empty()
                && script
                    .timeouts
                    .iter()
                    .all(|t| *t <= Duration::from_millis(50))
        );
    }

    #[test]
    fn reset_sends_nothing() {
        let store = RegisterStore::new();
        let (s, t) = run(
            vec![Step::Bytes(b"W0F"), Step::Reset],
            &store,
            ErrorDetail::Bare,
        );
        assert!(s.written.is_empty());
        assert_eq!(t.outcome, Outcome::Failed(ErrorKind::ConnectionReset));
        assert!(t.reply.is_none());
    }

    #[test]
    fn failed_write_is_reported() {
        let store = RegisterStore::new();
        let mut script = Script::new(vec![Step::Bytes(b"W0FAC0B1234")]);
        script.fail_writes = true;
        let t = serve(
            &mut script,
            &store,
            Access::ReadWrite,
            ErrorDetail::Bare,
            &timing(),
            &mut || {},
        );
        assert_eq!(t.outcome, Outcome::Failed(ErrorKind::BrokenPipe));
        // The write was applied before the reply was lost.
        assert_eq!(store.read(0x0FAC, 0x0B), Some(0x1234));
    }

    #[test]
    fn oversize_input_is_bounded() {
        let store = RegisterStore::new();
        let junk: &'static [u8] = &[b'Z'; 1000];
        let (s, t) = run(vec![Step::Bytes(junk)], &store, ErrorDetail::Explained);
        assert_eq!(s.written, b"X bad command");
        assert_eq!(t.request().len(), MAX_MESSAGE_BYTES);
        let (s, _) = run(
            vec![Step::Bytes(b"W0FAC0B12345678")],
            &store,
            ErrorDetail::Explained,
        );
        assert_eq!(s.written, b"X bad length");
        assert_eq!(store.read(0x0FAC, 0x0B), None);
    }

    #[test]
    fn read_only_refuses_writes_and_serves_reads() {
        let store = RegisterStore::new();
        store.write(1, 1, 1).unwrap();
        let (script, _) = run_with(
            vec![Step::Bytes(b"W0001010002\n")],
            &store,
            Access::ReadOnly,
            ErrorDetail::Explained,
            &timing(),
        );
        assert_eq!(script.written, b"X forbidden\n");
        assert_eq!(store.read(1, 1), Some(1));
        let (script, _) = run_with(
            vec![Step::Bytes(b"R000101")],
            &store,
            Access::ReadOnly,
            ErrorDetail::Bare,
            &timing(),
        );
        assert_eq!(script.written, b"A0001010001");
    }
}
