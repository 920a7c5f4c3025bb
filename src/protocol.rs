//! The WWEP wire grammar: framing, parsing and encoding, with no I/O.
//!
//! A connection carries one message. [`frame`] decides, from the bytes received so
//! far, whether the message is complete; [`frame_final`] judges what is there when no
//! more bytes will come (end of file, gap timer, deadline). [`Request::parse`] turns a
//! framed message into a request or a [`ProtocolError`], and [`Reply::encode`] writes
//! the answer into a fixed buffer.

use std::fmt;

/// The open (plain TCP) port of the protocol.
pub const DEFAULT_PLAIN_PORT: u16 = 27708;
/// The secure (TLS) port of the protocol.
pub const DEFAULT_TLS_PORT: u16 = 40508;

/// Which listener a connection arrived on: the open port or the TLS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Plain,
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Plain, Transport::Tls];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls => "tls",
        }
    }

    /// 0 for the open port, 1 for TLS: an index into per-port arrays.
    pub fn index(self) -> usize {
        match self {
            Transport::Plain => 0,
            Transport::Tls => 1,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The most bytes a connection's message may occupy before it is judged as it stands.
/// A valid request with its terminator is at most 13 bytes; the rest is slack for
/// humans, never a reason to buffer more.
pub const MAX_MESSAGE_BYTES: usize = 64;

/// Length of a read request: `R` + 4 hex device + 2 hex register.
pub const READ_LEN: usize = 7;
/// Length of a write request (and of an `A` reply): command + 4 + 2 + 4 hex.
pub const WRITE_LEN: usize = 11;

/// A well-formed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read {
        device: u16,
        register: u8,
    },
    Write {
        device: u16,
        register: u8,
        value: u16,
    },
}

/// Why a message is not a request. Each maps to one `X` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// The first byte is not an uppercase `R` or `W`.
    BadCommand,
    /// The command letter is right but the message has the wrong number of bytes.
    BadLength,
    /// A device, register or value field holds a byte that is not a hex digit.
    BadHex,
}

/// How the request ended; the reply ends the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminator {
    None,
    Lf,
    CrLf,
}

impl Terminator {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Terminator::None => b"",
            Terminator::Lf => b"\n",
            Terminator::CrLf => b"\r\n",
        }
    }
}

/// The verdict of [`frame`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// More bytes may still change the verdict.
    Partial,
    /// The message is `buf[..message_len]`; whatever follows the terminator is ignored.
    Complete {
        message_len: usize,
        terminator: Terminator,
    },
}

/// The length a command letter requires, or `None` for an illegal letter.
fn required_len(command: u8) -> Option<usize> {
    match command {
        b'R' => Some(READ_LEN),
        b'W' => Some(WRITE_LEN),
        _ => None,
    }
}

/// A message that ends at the `\n` at index `lf`, with an optional `\r` before it.
fn ended_at_lf(buf: &[u8], lf: usize) -> Frame {
    if lf > 0 && buf[lf - 1] == b'\r' {
        Frame::Complete {
            message_len: lf - 1,
            terminator: Terminator::CrLf,
        }
    } else {
        Frame::Complete {
            message_len: lf,
            terminator: Terminator::Lf,
        }
    }
}

fn find_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// Judges the bytes received so far on a connection that may still send more.
///
/// The message is complete at the first of: a `\n`; the length its command letter
/// needs (judging every byte already received, so an over-long message that arrives
/// in one piece is complete and wrong); or [`MAX_MESSAGE_BYTES`].
pub fn frame(buf: &[u8]) -> Frame {
    let Some(&command) = buf.first() else {
        return Frame::Partial;
    };
    let Some(need) = required_len(command) else {
        // The verdict is already X, so it is given at once instead of after
        // the gap: a board with a lowercase bug would pay the gap on every
        // message. A line received whole (what a terminal sends) has its end
        // echoed, so a person still gets the reply on its own line.
        return match find_lf(buf) {
            Some(lf) => ended_at_lf(buf, lf),
            // A `\r` last is the start of a line end, not part of the message.
            None => Frame::Complete {
                message_len: buf.len() - usize::from(buf.ends_with(b"\r")),
                terminator: Terminator::None,
            },
        };
    };
    if let Some(lf) = find_lf(&buf[..buf.len().min(need)]) {
        return ended_at_lf(buf, lf);
    }
    if buf.len() < need {
        return Frame::Partial;
    }
    match &buf[need..] {
        [] => Frame::Complete {
            message_len: need,
            terminator: Terminator::None,
        },
        [b'\n', ..] => Frame::Complete {
            message_len: need,
            terminator: Terminator::Lf,
        },
        [b'\r'] => Frame::Partial,
        [b'\r', b'\n', ..] => Frame::Complete {
            message_len: need,
            terminator: Terminator::CrLf,
        },
        _ => match find_lf(buf) {
            Some(lf) => ended_at_lf(buf, lf),
            None => Frame::Complete {
                message_len: buf.len(),
                terminator: Terminator::None,
            },
        },
    }
}

/// Judges the bytes received when no more will come (end of file, the gap timer, the
/// deadline or a full buffer). Returns the message length and terminator.
pub fn frame_final(buf: &[u8]) -> (usize, Terminator) {
    match frame(buf) {
        Frame::Complete {
            message_len,
            terminator,
        } => (message_len, terminator),
        // A lone `\r` after a full message is a terminator cut short; anything else
        // is judged as it stands.
        Frame::Partial => match buf {
            [rest @ .., b'\r'] => (rest.len(), Terminator::None),
            _ => (buf.len(), Terminator::None),
        },
    }
}

fn hex_nibble(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

fn hex_field(bytes: &[u8]) -> Result<u16, ProtocolError> {
    bytes.iter().try_fold(0u16, |acc, &b| {
        hex_nibble(b)
            .map(|n| (acc << 4) | n)
            .ok_or(ProtocolError::BadHex)
    })
}

impl Request {
    /// Parses one framed message (terminator already removed).
    pub fn parse(message: &[u8]) -> Result<Request, ProtocolError> {
        let Some(&command) = message.first() else {
            return Err(ProtocolError::BadLength);
        };
        let need = required_len(command).ok_or(ProtocolError::BadCommand)?;
        if message.len() != need {
            return Err(ProtocolError::BadLength);
        }
        let device = hex_field(&message[1..5])?;
        // Two hex digits never exceed 0xFF.
        let register = hex_field(&message[5..7])? as u8;
        Ok(match command {
            b'R' => Request::Read { device, register },
            _ => Request::Write {
                device,
                register,
                value: hex_field(&message[7..11])?,
            },
        })
    }

    /// The request as the spec formats it: 7 or 11 bytes, uppercase, no terminator.
    pub fn encode(&self) -> Encoded {
        let mut out = Encoded::new();
        match *self {
            Request::Read { device, register } => out.push_message(b'R', device, register, None),
            Request::Write {
                device,
                register,
                value,
            } => out.push_message(b'W', device, register, Some(value)),
        }
        out
    }
}

/// Why the server answered `X`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A read of a register that was never written.
    NotFound,
    /// The message was not a request.
    Protocol(ProtocolError),
    /// Nothing arrived before the timeout.
    Timeout,
    /// The server is at its connection limit.
    Busy,
    /// The write could not be made durable.
    Storage,
    /// The shared store (Redis) did not answer, or did not confirm the write.
    Unavailable,
    /// The register holds a value this server cannot read (a shared store's
    /// hash field that is not 4 hex digits, or a device key that is not a
    /// hash, which a write is refused for too).
    Unreadable,
    /// The request is not allowed on this listener.
    Forbidden,
    /// An `X` without a reason this crate knows: what a client sees of a bare `X`.
    /// The server never sends it.
    Unspecified,
}

impl Failure {
    /// The short reason `--explain-errors` appends after the `X`.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::NotFound => "not found",
            Failure::Protocol(ProtocolError::BadCommand) => "bad command",
            Failure::Protocol(ProtocolError::BadLength) => "bad length",
            Failure::Protocol(ProtocolError::BadHex) => "bad hex",
            Failure::Timeout => "timeout",
            Failure::Busy => "busy",
            Failure::Storage => "storage error",
            Failure::Unavailable => "store unavailable",
            Failure::Unreadable => "unreadable",
            Failure::Forbidden => "forbidden",
            Failure::Unspecified => "failed",
        }
    }
}

/// The server's answer to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Accepted {
        device: u16,
        register: u8,
        value: u16,
    },
    Failed(Failure),
}

/// Whether an `X` carries its reason, as the reference server sometimes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorDetail {
    /// A bare `X`, as the protocol text says.
    #[default]
    Bare,
    /// `X` followed by a space and [`Failure::reason`].
    Explained,
}

impl Reply {
    /// Encodes the reply, followed by `terminator`.
    pub fn encode(&self, detail: ErrorDetail, terminator: Terminator) -> Encoded {
        let mut out = Encoded::new();
        match *self {
            Reply::Accepted {
                device,
                register,
                value,
            } => out.push_message(b'A', device, register, Some(value)),
            Reply::Failed(failure) => {
                out.push(b'X');
                if detail == ErrorDetail::Explained {
                    out.push(b' ');
                    out.extend(failure.reason().as_bytes());
                }
            }
        }
        out.extend(terminator.as_bytes());
        out
    }

    /// Parses a reply as a client sees it: `A` + 10 hex digits (a terminator may
    /// follow), or anything starting with `X`. Returns `None` for anything else.
    pub fn parse(bytes: &[u8]) -> Option<Reply> {
        match bytes.first()? {
            b'X' => Some(Reply::Failed(
                Failure::from_reason(&bytes[1..]).unwrap_or(Failure::Unspecified),
            )),
            b'A' => {
                let body = bytes.get(..WRITE_LEN)?;
                let rest = &bytes[WRITE_LEN..];
                if !matches!(rest, b"" | b"\n" | b"\r\n") {
                    return None;
                }
                Some(Reply::Accepted {
                    device: hex_field(&body[1..5]).ok()?,
                    register: hex_field(&body[5..7]).ok()? as u8,
                    value: hex_field(&body[7..11]).ok()?,
                })
            }
            _ => None,
        }
    }
}

impl Failure {
    fn from_reason(after_x: &[u8]) -> Option<Failure> {
        let text = std::str::from_utf8(after_x).ok()?.trim();
        [
            Failure::NotFound,
            Failure::Protocol(ProtocolError::BadCommand),
            Failure::Protocol(ProtocolError::BadLength),
            Failure::Protocol(ProtocolError::BadHex),
            Failure::Timeout,
            Failure::Busy,
            Failure::Storage,
            Failure::Unavailable,
            Failure::Unreadable,
            Failure::Forbidden,
        ]
        .into_iter()
        .find(|f| f.reason() == text)
    }
}

/// A message as it goes on the wire (a reply, or a client's request), built
/// without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    buf: [u8; 32],
    len: usize,
}

impl Encoded {
    fn new() -> Self {
        Encoded {
            buf: [0; 32],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn extend(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
    }

    fn push_hex(&mut self, value: u32, digits: u32) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for i in (0..digits).rev() {
            self.push(HEX[((value >> (4 * i)) & 0xF) as usize]);
        }
    }

    /// `letter`, the device (4 hex digits), the register (2) and, for `W` and
    /// `A`, the value (4): the one layout of requests and accepting replies.
    fn push_message(&mut self, letter: u8, device: u16, register: u8, value: Option<u16>) {
        self.push(letter);
        self.push_hex(u32::from(device), 4);
        self.push_hex(u32::from(register), 2);
        if let Some(value) = value {
            self.push_hex(u32::from(value), 4);
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", Escaped(self.as_bytes()))
    }
}

/// Displays bytes a peer sent, printable ASCII as is and everything else escaped, so
/// a log line stays one line and cannot carry terminal control codes.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let safe = |b: u8| (0x20..=0x7e).contains(&b) && b != b'\\' && b != b'"';
        let mut rest = self.0;
        while !rest.is_empty() {
            // Runs of plain characters go out in one piece.
            let run = rest.iter().position(|&b| !safe(b)).unwrap_or(rest.len());
            if run > 0 {
                // Printable ASCII is valid UTF-8.
                f.write_str(std::str::from_utf8(&rest[..run]).map_err(|_| fmt::Error)?)?;
                rest = &rest[run..];
                continue;
            }
            match rest[0] {
                b'\n' => f.write_str("\\n")?,
                b'\r' => f.write_str("\\r")?,
                b'\\' => f.write_str("\\\\")?,
                b'"' => f.write_str("\\\"")?,
                b => write!(f, "\\x{b:02X}")?,
            }
            rest = &rest[1..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(message_len: usize, terminator: Terminator) -> Frame {
        Frame::Complete {
            message_len,
            terminator,
        }
    }

    #[test]
    fn spec_examples_parse() {
        assert_eq!(
            Request::parse(b"W0FAC0B1234"),
            Ok(Request::Write {
                device: 0x0FAC,
                register: 0x0B,
                value: 0x1234
            })
        );
        assert_eq!(
            Request::parse(b"R0FAC0B"),
            Ok(Request::Read {
                device: 0x0FAC,
                register: 0x0B
            })
        );
    }

    #[test]
    fn hex_in_either_case() {
        assert_eq!(
            Request::parse(b"Wabcdefaaff"),
            Ok(Request::Write {
                device: 0xABCD,
                register: 0xEF,
                value: 0xAAFF
            })
        );
        assert_eq!(Request::parse(b"RaBcDeF"), Request::parse(b"RABCDEF"));
    }

    #[test]
    fn illegal_messages_are_exact_errors() {
        use ProtocolError::*;
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"", BadLength),
            (b"W01234", BadLength),
            (b"W0FAC0B12345", BadLength),
            (b"W0FAC0B123", BadLength),
            (b"R0FAC0", BadLength),
            (b"R0FAC0B1", BadLength),
            (b"R0FAC0B1234", BadLength),
            (b"W0FAC0B", BadLength),
            (b"r0FAC0B", BadCommand),
            (b"w0FAC0B1234", BadCommand),
            (b"A0FAC0B1234", BadCommand),
            (b"X", BadCommand),
            (b" R0FAC0B", BadCommand),
            (b"\x16\x03\x01\x00", BadCommand),
            (b"R0FAG0B", BadHex),
            (b"R0FAC0g", BadHex),
            (b"W0FAC0B123Z", BadHex),
            (b"R 0FAC0B"[..7].as_ref(), BadHex),
            (b"W0FAC0B-123", BadHex),
            (b"R0x1234", BadHex),
            (b"R\xff\xff\xff\xff\xff\xff", BadHex),
        ];
        for (input, want) in cases {
            assert_eq!(
                Request::parse(input),
                Err(*want),
                "input {:?}",
                Escaped(input).to_string()
            );
        }
    }

    #[test]
    fn round_trip_at_zero_and_maxima() {
        for req in [
            Request::Read {
                device: 0,
                register: 0,
            },
            Request::Read {
                device: 0xFFFF,
                register: 0xFF,
            },
            Request::Write {
                device: 0,
                register: 0,
                value: 0,
            },
            Request::Write {
                device: 0xFFFF,
                register: 0xFF,
                value: 0xFFFF,
            },
            Request::Write {
                device: 0x0FAC,
                register: 0x0B,
                value: 0x1234,
            },
        ] {
            let wire = req.encode();
            assert_eq!(Request::parse(wire.as_bytes()), Ok(req));
            assert_eq!(
                frame(wire.as_bytes()),
                complete(wire.as_bytes().len(), Terminator::None)
            );
        }
    }

    #[test]
    fn replies_are_uppercase_and_zero_padded() {
        use ErrorDetail::{Bare, Explained};
        let accepted = |device, register, value| Reply::Accepted {
            device,
            register,
            value,
        };
        let fac = accepted(0xfac, 0xb, 0x1);
        let (max, zero) = (accepted(0xFFFF, 0xFF, 0xFFFF), accepted(0, 0, 0));
        let cases = [
            (fac, Bare, Terminator::None, &b"A0FAC0B0001"[..]),
            (fac, Bare, Terminator::CrLf, b"A0FAC0B0001\r\n"),
            (max, Explained, Terminator::Lf, b"AFFFFFFFFFF\n"),
            (zero, Bare, Terminator::None, b"A0000000000"),
        ];
        for (reply, detail, terminator, wire) in cases {
            let encoded = reply.encode(detail, terminator);
            assert_eq!(encoded.as_bytes(), wire, "{reply:?} {terminator:?}");
        }
        assert_eq!(Reply::parse(b"A0000000000"), Some(zero));
        assert_eq!(Reply::parse(b"AFFFFFFFFFF\r\n"), Some(max));
    }

    #[test]
    fn failures_are_bare_x_unless_explained() {
        let cases = [
            (Failure::NotFound, "X not found"),
            (Failure::Protocol(ProtocolError::BadLength), "X bad length"),
            (Failure::Protocol(ProtocolError::BadHex), "X bad hex"),
            (
                Failure::Protocol(ProtocolError::BadCommand),
                "X bad command",
            ),
            (Failure::Timeout, "X timeout"),
            (Failure::Busy, "X busy"),
            (Failure::Storage, "X storage error"),
            (Failure::Unavailable, "X store unavailable"),
            (Failure::Unreadable, "X unreadable"),
            (Failure::Forbidden, "X forbidden"),
        ];
        for (failure, text) in cases {
            let reply = Reply::Failed(failure);
            assert_eq!(
                reply.encode(ErrorDetail::Bare, Terminator::None).as_bytes(),
                b"X"
            );
            assert_eq!(
                reply
                    .encode(ErrorDetail::Explained, Terminator::None)
                    .as_bytes(),
                text.as_bytes()
            );
            assert_eq!(
                reply.encode(ErrorDetail::Bare, Terminator::Lf).as_bytes(),
                b"X\n"
            );
            assert_eq!(Reply::parse(text.as_bytes()), Some(reply));
        }
        assert_eq!(
            Reply::parse(b"X"),
            Some(Reply::Failed(Failure::Unspecified))
        );
        assert_eq!(Reply::parse(b"A0FAC0B12"), None);
        assert_eq!(Reply::parse(b"A0FAC0B1234junk"), None);
        assert_eq!(Reply::parse(b"Hello"), None);
        assert_eq!(Reply::parse(b""), None);
    }

    #[test]
    fn every_prefix_of_a_valid_request_is_partial() {
        for valid in [
            &b"W0FAC0B1234"[..],
            b"R0FAC0B",
            b"W0FAC0B1234\r\n",
            b"R0fac0b\r\n",
        ] {
            let body = valid.iter().take_while(|&&b| b != b'\r').count();
            for cut in 0..body {
                assert_eq!(frame(&valid[..cut]), Frame::Partial, "prefix {cut}");
            }
        }
        // A message followed by a lone CR waits for the LF.
        assert_eq!(frame(b"R0FAC0B\r"), Frame::Partial);
    }

    #[test]
    fn framing_rules() {
        use Terminator::*;
        let cases: &[(&[u8], Frame)] = &[
            (b"W0FAC0B1234", complete(11, None)),
            (b"W0FAC0B1234\n", complete(11, Lf)),
            (b"W0FAC0B1234\r\n", complete(11, CrLf)),
            (b"R0FAC0B", complete(7, None)),
            (b"R0FAC0B\n", complete(7, Lf)),
            (b"R0FAC0B\r\ntrailing", complete(7, CrLf)),
            (b"R0FAC0B\ngarbage", complete(7, Lf)),
            // Judged on every byte received: one byte too many is a bad message.
            (b"W0FAC0B12345", complete(12, None)),
            (b"W0FAC0B12345\n", complete(12, Lf)),
            (b"R0FAC0Bxyz", complete(10, None)),
            // A newline before the required length ends a short message.
            (b"W01234\n", complete(6, Lf)),
            (b"W01234\r\n", complete(6, CrLf)),
            (b"\n", complete(0, Lf)),
            (b"\r\n", complete(0, CrLf)),
            // An illegal command letter is judged at once, with what has come.
            (b"h", complete(1, None)),
            (b"hello", complete(5, None)),
            (b"hello\r", complete(5, None)),
            (b"hello\n", complete(5, Lf)),
            (b"w0fac0b1234", complete(11, None)),
            (b"\x16\x03\x01", complete(3, None)),
        ];
        for (input, want) in cases {
            assert_eq!(frame(input), *want, "input \"{}\"", Escaped(input));
        }
        let full = [b'Z'; MAX_MESSAGE_BYTES];
        assert_eq!(frame(&full), complete(MAX_MESSAGE_BYTES, None));
    }

    #[test]
    fn final_framing_judges_what_is_there() {
        use Terminator::*;
        assert_eq!(frame_final(b"W01234"), (6, None));
        assert_eq!(frame_final(b"R0FAC0B\r"), (7, None));
        assert_eq!(frame_final(b"R0F"), (3, None));
        assert_eq!(frame_final(b"hello\r"), (5, None));
        assert_eq!(frame_final(b"R0FAC0B\n"), (7, Lf));
        assert_eq!(frame_final(b""), (0, None));
    }

    #[test]
    fn escaped_keeps_log_lines_safe() {
        assert_eq!(
            Escaped(b"R0\r\n\x1b[2J\"\\\xff").to_string(),
            "R0\\r\\n\\x1B[2J\\\"\\\\\\xFF"
        );
    }
}
