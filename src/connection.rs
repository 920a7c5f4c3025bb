//! One transaction's logic, with no sockets: receive → transact → send.
//!
//! [`Incoming`] gathers the message from whatever a stream has ready (it never
//! waits: a stream that would block is handed back to the caller, which parks the
//! connection until more bytes arrive); [`transact`] parses, authorizes, applies
//! and encodes — the one function from a message to its reply, which the server,
//! the micro-benchmark and the tests all call; [`send`] writes what it can of
//! the reply. Timers are the caller's: when the gap or the deadline passes,
//! [`Incoming::judge`] decides on the bytes already there. Nothing here logs or
//! counts.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::acl::{self, Acl};
use crate::config::PortAccess;
use crate::facts::{Denial, Verdict};
use crate::protocol::{
    Encoded, ErrorDetail, Failure, Frame, MAX_MESSAGE_BYTES, Reply, Request, Terminator, frame,
    frame_final,
};
use crate::store::backend::{Backend, StoreError};

/// A complete message: `len` bytes of the buffer, then `terminator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub len: usize,
    pub terminator: Terminator,
}

/// What [`Incoming::receive`] found on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The message is complete.
    Message(Message),
    /// No more bytes for now; the message is not complete yet.
    Waiting,
    /// The client closed before sending anything.
    Closed,
    /// The stream failed.
    Broken(ErrorKind),
}

/// The bytes of the one message a connection carries, as they arrive.
#[derive(Clone)]
pub struct Incoming {
    buf: [u8; MAX_MESSAGE_BYTES],
    len: usize,
    last_byte_at: Option<Instant>,
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming {
            buf: [0; MAX_MESSAGE_BYTES],
            len: 0,
            last_byte_at: None,
        }
    }
}

impl Incoming {
    /// Reads what `stream` has ready until the message is complete or the stream
    /// would block. Never more than [`MAX_MESSAGE_BYTES`] are kept.
    pub fn receive<R: Read>(&mut self, stream: &mut R, now: Instant) -> Received {
        loop {
            if self.len == MAX_MESSAGE_BYTES {
                return Received::Message(self.judge());
            }
            match stream.read(&mut self.buf[self.len..]) {
                Ok(0) if self.len == 0 => return Received::Closed,
                Ok(0) => return Received::Message(self.judge()),
                Ok(n) => {
                    self.len += n;
                    self.last_byte_at = Some(now);
                    if let Frame::Complete {
                        message_len,
                        terminator,
                    } = frame(&self.buf[..self.len])
                    {
                        return Received::Message(Message {
                            len: message_len,
                            terminator,
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Received::Waiting,
                Err(e) => return Received::Broken(e.kind()),
            }
        }
    }

    /// The message as it stands, when no more bytes will be waited for.
    pub fn judge(&self) -> Message {
        let (len, terminator) = frame_final(&self.buf[..self.len]);
        Message { len, terminator }
    }

    /// Every byte received so far (terminator and anything after it included).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When a started message stops being waited for: `gap` after its last byte.
    pub fn gap_ends(&self, gap: Duration) -> Option<Instant> {
        self.last_byte_at.map(|at| at + gap)
    }
}

/// What a message is judged by, besides the store.
#[derive(Clone, Copy)]
pub struct Policy<'a> {
    /// What the listener lets its clients do.
    pub access: PortAccess,
    /// The `--acl` rules; `None` lets every request through.
    pub acl: Option<&'a Acl>,
    pub detail: ErrorDetail,
}

impl Policy<'_> {
    /// Every request allowed, replies bare: the reference server's rules.
    pub const OPEN: Policy<'static> = Policy {
        access: PortAccess::ReadWrite,
        acl: None,
        detail: ErrorDetail::Bare,
    };
}

/// The one transaction: parses a complete message, checks it against the
/// policy (who is asking, from `client`), applies it to the store and encodes
/// the reply, ended the way the request was.
pub fn transact(
    message: &[u8],
    terminator: Terminator,
    client: &acl::Peer<'_>,
    store: &dyn Backend,
    policy: &Policy<'_>,
) -> Verdict {
    let mut denial = None;
    let reply = match Request::parse(message) {
        Ok(request) => match policy.acl.map(|acl| (acl, acl.check(client, &request))) {
            Some((acl, decision)) if !decision.allowed => {
                denial = Some(Denial {
                    file: acl.path().display().to_string(),
                    reason: decision.to_string(),
                });
                Reply::Failed(Failure::Forbidden)
            }
            _ => apply(request, store, policy.access),
        },
        Err(e) => Reply::Failed(Failure::Protocol(e)),
    };
    Verdict {
        reply,
        encoded: reply.encode(policy.detail, terminator),
        denial,
    }
}

/// Applies a parsed request to the store and says what to answer.
fn apply(request: Request, store: &dyn Backend, access: PortAccess) -> Reply {
    match request {
        Request::Write { .. } if access == PortAccess::ReadOnly => {
            Reply::Failed(Failure::Forbidden)
        }
        Request::Read { device, register } => match store.read(device, register) {
            Ok(Some(value)) => Reply::Accepted {
                device,
                register,
                value,
            },
            Ok(None) => Reply::Failed(Failure::NotFound),
            Err(e) => Reply::Failed(failure(e)),
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
            Err(e) => Reply::Failed(failure(e)),
        },
    }
}

fn failure(e: StoreError) -> Failure {
    match e {
        StoreError::Storage => Failure::Storage,
        StoreError::Unavailable => Failure::Unavailable,
        StoreError::Unreadable => Failure::Unreadable,
    }
}

/// The reply to a connection that sent nothing in time.
pub fn timed_out(detail: ErrorDetail) -> Verdict {
    let reply = Reply::Failed(Failure::Timeout);
    Verdict {
        reply,
        encoded: reply.encode(detail, Terminator::None),
        denial: None,
    }
}

/// What [`send`] managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Every byte of the reply was handed to the stream.
    All,
    /// The stream would block; `sent` bytes are out so far.
    Partly,
    Broken(ErrorKind),
}

/// Writes the rest of `reply` (from `*sent` on) without waiting.
pub fn send<W: Write>(stream: &mut W, reply: &Encoded, sent: &mut usize) -> Sent {
    let bytes = reply.as_bytes();
    while *sent < bytes.len() {
        match stream.write(&bytes[*sent..]) {
            Ok(0) => return Sent::Broken(ErrorKind::WriteZero),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Sent::Partly,
            Err(e) => return Sent::Broken(e.kind()),
        }
    }
    match stream.flush() {
        Ok(()) => Sent::All,
        Err(e) if e.kind() == ErrorKind::WouldBlock => Sent::Partly,
        Err(e) => Sent::Broken(e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RegisterStore;
    use std::collections::VecDeque;
    use std::io;

    /// What a scripted peer does on the next read.
    #[derive(Debug)]
    enum Step {
        Bytes(&'static [u8]),
        /// Nothing has arrived yet: the read would block.
        Block,
        Eof,
        Reset,
    }

    /// An in-memory peer: reads follow the script, writes are collected.
    struct Script {
        steps: VecDeque<Step>,
        written: Vec<u8>,
        /// Bytes each write accepts before it would block (`None`: all).
        write_room: Option<usize>,
        fail_writes: bool,
    }

    impl Script {
        fn new(steps: Vec<Step>) -> Self {
            Script {
                steps: steps.into(),
                written: Vec::new(),
                write_room: None,
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
                Some(Step::Block) | None => Err(ErrorKind::WouldBlock.into()),
                Some(Step::Reset) => Err(ErrorKind::ConnectionReset.into()),
                Some(Step::Eof) => Ok(0),
            }
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail_writes {
                return Err(ErrorKind::BrokenPipe.into());
            }
            let n = match &mut self.write_room {
                Some(0) => return Err(ErrorKind::WouldBlock.into()),
                Some(room) => {
                    let n = (*room).min(buf.len());
                    *room -= n;
                    n
                }
                None => buf.len(),
            };
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn respond(
        incoming: &Incoming,
        message: Message,
        store: &RegisterStore,
        access: PortAccess,
        detail: ErrorDetail,
    ) -> Encoded {
        let client = acl::Peer {
            addr: std::net::Ipv4Addr::LOCALHOST.into(),
            certificate: None,
        };
        let policy = Policy {
            access,
            acl: None,
            detail,
        };
        transact(
            &incoming.bytes()[..message.len],
            message.terminator,
            &client,
            store,
            &policy,
        )
        .encoded
    }

    /// Receives until the script blocks, then judges what is there, as the
    /// server does when the gap timer fires; replies and returns what was read.
    fn exchange(
        script: &mut Script,
        store: &RegisterStore,
        access: PortAccess,
        detail: ErrorDetail,
    ) -> (Incoming, Option<Encoded>) {
        let mut incoming = Incoming::default();
        let now = Instant::now();
        let reply = loop {
            match incoming.receive(script, now) {
                Received::Message(m) => break Some(respond(&incoming, m, store, access, detail)),
                Received::Waiting if incoming.is_empty() => {
                    // The deadline passed with nothing received.
                    if script.steps.is_empty() {
                        break Some(timed_out(detail).encoded);
                    }
                }
                Received::Waiting => {
                    if script.steps.is_empty() {
                        break Some(respond(&incoming, incoming.judge(), store, access, detail));
                    }
                }
                Received::Closed => break Some(timed_out(detail).encoded),
                Received::Broken(_) => break None,
            }
        };
        if let Some(reply) = &reply {
            let mut sent = 0;
            let _ = send(script, reply, &mut sent);
        }
        (incoming, reply)
    }

    /// One exchange on the read-write port: the script (with what was written)
    /// and what was received.
    fn run(steps: Vec<Step>, store: &RegisterStore, detail: ErrorDetail) -> (Script, Incoming) {
        let mut script = Script::new(steps);
        let (incoming, _) = exchange(&mut script, store, PortAccess::ReadWrite, detail);
        (script, incoming)
    }

    #[test]
    fn each_script_gets_its_reply_and_leaves_the_store_as_it_was() {
        use ErrorDetail::{Bare, Explained};
        use PortAccess::{ReadOnly, ReadWrite};
        use Step::{Block, Bytes, Eof};
        let groups = [
            (
                ReadWrite,
                Explained,
                vec![
                    (vec![Bytes(b"R0FAC0B\n")], "X not found\n"),
                    (vec![Bytes(b"W01234"), Block], "X bad length"),
                    (vec![Bytes(b"R0001"), Eof], "X bad length"),
                    (vec![Block], "X timeout"),
                    (vec![Bytes(b"W0FAC0B12345678")], "X bad length"),
                ],
            ),
            (
                ReadWrite,
                Bare,
                vec![
                    (vec![Bytes(b"r0fac0b\r\n")], "X\r\n"),
                    (vec![Bytes(b"R000102"), Eof], "A0001020003"),
                ],
            ),
            (
                ReadOnly,
                Explained,
                vec![(vec![Bytes(b"W0001010002\n")], "X forbidden\n")],
            ),
            (
                ReadOnly,
                Bare,
                vec![(vec![Bytes(b"R000101")], "A0001010001")],
            ),
        ];
        for (access, detail, cases) in groups {
            for (steps, reply) in cases {
                let what = format!("{access:?} {detail:?} {steps:?}");
                let store = RegisterStore::new();
                store.write(1, 1, 1).unwrap();
                store.write(1, 2, 3).unwrap();
                let mut script = Script::new(steps);
                exchange(&mut script, &store, access, detail);
                assert_eq!(script.written, reply.as_bytes(), "{what}");
                let after = (store.read(1, 1), store.read(0x0FAC, 0x0B));
                assert_eq!(after, (Some(1), None), "{what}: the store is unchanged");
            }
        }
    }

    #[test]
    fn write_then_read_in_one_segment_each() {
        let store = RegisterStore::new();
        let (s, incoming) = run(vec![Step::Bytes(b"W0FAC0B1234")], &store, ErrorDetail::Bare);
        assert_eq!(s.written, b"A0FAC0B1234");
        assert_eq!(incoming.bytes(), b"W0FAC0B1234");
        let (s, _) = run(vec![Step::Bytes(b"R0fac0b\r\n")], &store, ErrorDetail::Bare);
        assert_eq!(s.written, b"A0FAC0B1234\r\n");
    }

    #[test]
    fn a_whole_message_never_waits() {
        let mut incoming = Incoming::default();
        let mut script = Script::new(vec![Step::Bytes(b"R0FAC0B"), Step::Block]);
        let got = incoming.receive(&mut script, Instant::now());
        assert_eq!(
            got,
            Received::Message(Message {
                len: 7,
                terminator: Terminator::None
            })
        );
        assert_eq!(script.steps.len(), 1, "nothing read past the message");
    }

    #[test]
    fn split_message_is_joined_across_waits() {
        let store = RegisterStore::new();
        let steps = vec![
            Step::Bytes(b"W0FA"),
            Step::Block,
            Step::Bytes(b"C0B12"),
            Step::Block,
            Step::Bytes(b"34\n"),
        ];
        let (s, incoming) = run(steps, &store, ErrorDetail::Bare);
        assert_eq!(s.written, b"A0FAC0B1234\n");
        assert_eq!(incoming.bytes(), b"W0FAC0B1234\n");
    }

    #[test]
    fn waiting_reports_when_the_gap_ends() {
        let mut incoming = Incoming::default();
        assert_eq!(incoming.gap_ends(Duration::from_millis(100)), None);
        let now = Instant::now();
        let mut script = Script::new(vec![Step::Bytes(b"W01"), Step::Block]);
        assert_eq!(incoming.receive(&mut script, now), Received::Waiting);
        assert_eq!(
            incoming.gap_ends(Duration::from_millis(100)),
            Some(now + Duration::from_millis(100))
        );
    }

    #[test]
    fn a_close_before_any_byte_is_closed() {
        let mut incoming = Incoming::default();
        let mut script = Script::new(vec![Step::Eof]);
        assert_eq!(
            incoming.receive(&mut script, Instant::now()),
            Received::Closed
        );
    }

    #[test]
    fn reset_sends_nothing() {
        let mut incoming = Incoming::default();
        let mut script = Script::new(vec![Step::Bytes(b"W0F"), Step::Reset]);
        assert_eq!(
            incoming.receive(&mut script, Instant::now()),
            Received::Broken(ErrorKind::ConnectionReset)
        );
        assert!(script.written.is_empty());
    }

    #[test]
    fn failed_write_is_reported_after_the_store_changed() {
        let store = RegisterStore::new();
        let mut script = Script::new(vec![Step::Bytes(b"W0FAC0B1234")]);
        script.fail_writes = true;
        let mut incoming = Incoming::default();
        let Received::Message(m) = incoming.receive(&mut script, Instant::now()) else {
            panic!("a whole message was scripted");
        };
        let reply = respond(
            &incoming,
            m,
            &store,
            PortAccess::ReadWrite,
            ErrorDetail::Bare,
        );
        let mut sent = 0;
        assert_eq!(
            send(&mut script, &reply, &mut sent),
            Sent::Broken(ErrorKind::BrokenPipe)
        );
        assert_eq!(store.read(0x0FAC, 0x0B), Some(0x1234));
    }

    #[test]
    fn a_blocked_send_resumes_where_it_stopped() {
        let reply = Reply::Accepted {
            device: 1,
            register: 2,
            value: 3,
        }
        .encode(ErrorDetail::Bare, Terminator::Lf);
        let mut script = Script::new(vec![]);
        script.write_room = Some(4);
        let mut sent = 0;
        assert_eq!(send(&mut script, &reply, &mut sent), Sent::Partly);
        assert_eq!(sent, 4);
        assert_eq!(send(&mut script, &reply, &mut sent), Sent::Partly);
        assert_eq!(sent, 4);
        script.write_room = None;
        assert_eq!(send(&mut script, &reply, &mut sent), Sent::All);
        assert_eq!(script.written, b"A0001020003\n");
    }

    #[test]
    fn oversize_input_is_bounded() {
        let store = RegisterStore::new();
        let junk: &'static [u8] = &[b'Z'; 1000];
        let (s, incoming) = run(vec![Step::Bytes(junk)], &store, ErrorDetail::Explained);
        assert_eq!(s.written, b"X bad command");
        assert_eq!(incoming.bytes().len(), MAX_MESSAGE_BYTES);
    }
}
