//! `GET /api/events`: the writes this server acknowledges, as Server-Sent
//! Events, one the moment its `A` has been sent:
//!
//! ```text
//! id: 42
//! event: write
//! data: {"device":"0FAC","register":"0B","value":"1234","transport":"plain","time":"2026-12-06T23:59:59.123456Z"}
//!
//! ```
//!
//! `?device=0FAC` keeps one device's. A comment (`: keep-alive`) follows 15 s
//! of silence. A watcher is an HTTP connection like any other (it counts
//! against `--http-max-connections`) that never waits for anyone: it is
//! dropped when it falls more than [`CAPACITY`](crate::events::CAPACITY) writes behind, or when its
//! socket has taken nothing for [`STALL`] while it has something to send.
//! One behind is sent the rest of the event its socket had begun and a last
//! event saying why (`event: dropped`), never half an event; one stalled or
//! shed is told why only when no event is half-sent. The stream's bytes, with no I/O; the event loop
//! (`server.rs`) sends them.

use std::io::Write as _;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::message::Response;
use crate::civil_date::UtcTime;
use crate::events::{Behind, Feed, Watching, WriteEvent};

/// The stream's path.
pub(super) const PATH: &str = "/api/events";
/// Silence after which a comment is sent, so that proxies and clients know
/// the stream is alive.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a watcher's socket may take nothing while it has something to
/// send before the watcher is dropped.
pub(super) const STALL: Duration = Duration::from_secs(30);
/// Bytes of a watcher's stream held in the server, beyond what its socket
/// takes, before it stops reading from the feed (it then falls behind).
pub(super) const BUFFER_BYTES: usize = 64 * 1024;
/// The socket's own send buffer for a watcher (the kernel doubles it), so a
/// stuck watcher holds a bounded amount of memory there too.
pub(super) const SOCKET_BUFFER_BYTES: usize = 64 * 1024;
/// Watchers are fed at most this often: a write on a quiet server goes out
/// at once, and under a flood of writes each wake, and each write to a
/// watcher's socket, carries a batch (writers pay for one wake per feeding,
/// not one per write).
pub(super) const FEED_INTERVAL: Duration = Duration::from_millis(1);
/// Writes copied out of the feed at a time.
const BATCH: usize = 256;
/// What a browser waits before reconnecting a broken stream.
const RETRY_MS: u64 = 2000;

/// Why a watcher is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    /// It fell more than [`CAPACITY`](crate::events::CAPACITY) writes behind.
    Behind,
    /// Its socket took nothing for [`STALL`].
    Stalled,
    /// Shed to make room for a newcomer (`--http-max-connections`).
    Shed,
    /// The server is stopping.
    Stopping,
}

impl Dropped {
    fn name(self) -> &'static str {
        match self {
            Dropped::Behind => "behind",
            Dropped::Stalled => "stalled",
            Dropped::Shed => "shed",
            Dropped::Stopping => "stopping",
        }
    }
}

/// The one way a request's query can be wrong, as the 400's text.
const BAD_QUERY: &str =
    "the only parameter is a device id of 4 hex digits, e.g. /api/events?device=0FAC";

/// The device a watcher asks for (`None`: every device), from the query of
/// `/api/events?device=0FAC`; the 400's message when the query is anything
/// else.
pub(super) fn filter(query: Option<&str>) -> Result<Option<u16>, &'static str> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let id = query.strip_prefix("device=").ok_or(BAD_QUERY)?;
    if id.len() != 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BAD_QUERY);
    }
    u16::from_str_radix(id, 16).map(Some).map_err(|_| BAD_QUERY)
}

/// The answer to a `/api/events` request that does not open a stream: the
/// 400 for a bad query, or the stream's head alone for `HEAD`.
pub(super) fn refusal(message: &str) -> Response {
    let body = serde_json::json!({ "error": message });
    Response::from_string(format!("{body}\n"))
        .with_status_code(400)
        .with_header(("Content-Type", "application/json"))
        .with_header(("Cache-Control", "no-store"))
        .with_header(("X-Content-Type-Options", "nosniff"))
}

/// The stream's head (its end is the connection's close, so no length),
/// and the browser's reconnection delay; `head_only` for `HEAD`.
pub(super) fn stream_head(head_only: bool) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\n\
        Content-Type: text/event-stream\r\n\
        Cache-Control: no-store\r\n\
        X-Content-Type-Options: nosniff\r\n\
        X-Accel-Buffering: no\r\n\
        Connection: close\r\n\r\n"
        .to_vec();
    if !head_only {
        let _ = write!(out, "retry: {RETRY_MS}\n\n");
    }
    out
}

/// One write as its event. Written digit by digit: with many watchers the
/// event loop writes every write once for each, so this is its hot path.
pub(super) fn write_event(out: &mut Vec<u8>, e: &WriteEvent) {
    let t = UtcTime::at(UNIX_EPOCH + Duration::from_micros(e.at_us));
    out.extend_from_slice(b"id: ");
    decimal(out, e.n, 1);
    out.extend_from_slice(b"\nevent: write\ndata: {\"device\":\"");
    hex(out, u64::from(e.device), 4);
    out.extend_from_slice(b"\",\"register\":\"");
    hex(out, u64::from(e.register), 2);
    out.extend_from_slice(b"\",\"value\":\"");
    hex(out, u64::from(e.value), 4);
    out.extend_from_slice(b"\",\"transport\":\"");
    out.extend_from_slice(e.transport.name().as_bytes());
    out.extend_from_slice(b"\",\"time\":\"");
    decimal(out, u64::try_from(t.year).unwrap_or(0), 4);
    for (separator, n) in [
        (b'-', t.month),
        (b'-', t.day),
        (b'T', t.hour),
        (b':', t.minute),
        (b':', t.second),
    ] {
        out.push(separator);
        decimal(out, u64::from(n), 2);
    }
    out.push(b'.');
    decimal(out, u64::from(t.micros), 6);
    out.extend_from_slice(b"Z\"}\n\n");
}

/// `n` in decimal, at least `width` digits (zero-padded).
fn decimal(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while n > 0 || digits.len() - at < width {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[at..]);
}

/// The low `width` hex digits of `n`, upper case.
fn hex(out: &mut Vec<u8>, n: u64, width: u32) {
    for i in (0..width).rev() {
        out.push(b"0123456789ABCDEF"[((n >> (4 * i)) & 0xF) as usize]);
    }
}

/// The comment that keeps a silent stream alive.
pub(super) const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// The last event of a dropped watcher.
pub(super) fn dropped_event(why: Dropped) -> Vec<u8> {
    format!(
        "event: dropped\ndata: {{\"reason\":\"{}\"}}\n\n",
        why.name()
    )
    .into_bytes()
}

/// How many of `unsent`'s bytes finish the event (or the stream's head)
/// whose beginning went out before them, `sent_tail` being the last two
/// bytes that did: 0 when the stream sent so far ends between two events.
/// Every part of the stream ends with a blank line, and no part holds one
/// inside (a field is one line), so the first `\n\n` ends it; `None` when
/// `unsent` does not finish it.
fn event_end(unsent: &[u8], sent_tail: [u8; 2]) -> Option<usize> {
    if sent_tail == *b"\n\n" {
        return Some(0);
    }
    if sent_tail[1] == b'\n' && unsent.first() == Some(&b'\n') {
        return Some(1);
    }
    unsent
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|at| at + 2)
}

/// A connection following the stream.
pub(super) struct Watcher {
    /// Its next write in the feed.
    position: u64,
    device: Option<u16>,
    pub(super) started: Instant,
    /// When something (an event, a comment) was last queued for it.
    pub(super) last_queued: Instant,
    /// When its socket last took a byte.
    pub(super) last_progress: Instant,
    /// The last two bytes its socket took: whether the stream sent so far
    /// ends between two events.
    pub(super) tail: [u8; 2],
    /// Dropped for falling behind, and finishing its last words (the event
    /// its socket had begun, then `event: dropped`) before it is closed.
    pub(super) leaving: bool,
    /// Its share of the feed, let go when it is leaving.
    watching: Option<Watching>,
}

impl Watcher {
    pub(super) fn start(feed: &std::sync::Arc<Feed>, device: Option<u16>, now: Instant) -> Watcher {
        let (watching, position) = feed.watch();
        Watcher {
            position,
            device,
            started: now,
            last_queued: now,
            last_progress: now,
            tail: [0; 2],
            leaving: false,
            watching: Some(watching),
        }
    }

    /// Appends to `out` the events of the writes it has not seen, while
    /// `pending` (bytes not yet taken by its socket) stays under
    /// [`BUFFER_BYTES`]; how many it appended, or how far behind it is
    /// (checked even when its buffer is full: that is when it falls behind).
    pub(super) fn fill(
        &mut self,
        feed: &Feed,
        out: &mut Vec<u8>,
        mut pending: usize,
        now: Instant,
    ) -> Result<u64, Behind> {
        let mut batch = Vec::new();
        let mut queued = 0;
        loop {
            let room = if pending < BUFFER_BYTES { BATCH } else { 0 };
            batch.clear();
            self.position = feed.read(self.position, room, &mut batch)?;
            if batch.is_empty() {
                break;
            }
            let before = out.len();
            for e in batch
                .iter()
                .filter(|e| self.device.is_none_or(|d| d == e.device))
            {
                write_event(out, e);
                queued += 1;
            }
            pending += out.len() - before;
        }
        if queued > 0 {
            self.last_queued = now;
        }
        Ok(queued)
    }

    /// Its socket took `sent` more bytes.
    pub(super) fn took(&mut self, sent: &[u8], now: Instant) {
        self.last_progress = now;
        match sent {
            [] => {}
            [b] => self.tail = [self.tail[1], *b],
            [.., a, b] => self.tail = [*a, *b],
        }
    }

    /// Ends its stream for falling behind, never in the middle of an event:
    /// of `out`'s unsent bytes (from `written`) it keeps the rest of the
    /// event its socket has begun (the whole events queued after it are
    /// dropped: it is behind anyway), and `event: dropped` follows.
    pub(super) fn leave(&mut self, out: &mut Vec<u8>, written: usize) {
        self.leaving = true;
        self.watching = None;
        let end = event_end(&out[written..], self.tail).map_or(out.len(), |n| written + n);
        out.truncate(end);
        out.extend_from_slice(&dropped_event(Dropped::Behind));
    }

    /// When it next needs attention with nothing new: the keep-alive, or,
    /// while its socket takes nothing, the end of its patience.
    pub(super) fn deadline(&self, pending: bool) -> Instant {
        if pending {
            self.last_progress + STALL
        } else {
            self.last_queued + KEEP_ALIVE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CAPACITY;
    use crate::protocol::Transport;
    use std::sync::Arc;

    fn event(n: u64, device: u16) -> WriteEvent {
        WriteEvent {
            n,
            at_us: 1_796_601_599_123_456,
            device,
            register: 0x0B,
            value: 0x1234,
            transport: Transport::Tls,
        }
    }

    #[test]
    fn an_event_is_the_fixed_format() {
        let mut out = Vec::new();
        write_event(&mut out, &event(42, 0x0FAC));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id: 42\nevent: write\ndata: {\"device\":\"0FAC\",\"register\":\"0B\",\"value\":\"1234\",\"transport\":\"tls\",\"time\":\"2026-12-06T23:59:59.123456Z\"}\n\n"
        );
    }

    #[test]
    fn events_are_written_as_the_format_says_for_any_field() {
        let cases = [
            (0, 0, 0, 0, 0, Transport::Plain),
            (1, 999_999, 0xFFFF, 0xFF, 0xFFFF, Transport::Tls),
            (
                u64::MAX,
                253_402_300_799_999_999,
                0x0FAC,
                0x0B,
                0x1234,
                Transport::Plain,
            ),
            (
                10_000_000_000,
                951_782_400_000_001,
                0x00A0,
                0x0A,
                0x000A,
                Transport::Tls,
            ),
        ];
        for (n, at_us, device, register, value, transport) in cases {
            let e = WriteEvent {
                n,
                at_us,
                device,
                register,
                value,
                transport,
            };
            let time = UtcTime::at(UNIX_EPOCH + Duration::from_micros(at_us));
            let expected = format!(
                "id: {n}\nevent: write\ndata: {{\"device\":\"{device:04X}\",\"register\":\"{register:02X}\",\"value\":\"{value:04X}\",\"transport\":\"{}\",\"time\":\"{time}\"}}\n\n",
                transport.name()
            );
            let mut out = Vec::new();
            write_event(&mut out, &e);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn the_query_names_one_device_or_nothing() {
        let cases = [
            (None, Ok(None)),
            (Some(""), Ok(None)),
            (Some("device=0FAC"), Ok(Some(0x0FAC))),
            (Some("device=0fac"), Ok(Some(0x0FAC))),
            (Some("device=0FA"), Err(BAD_QUERY)),
            (Some("device=0FAC0"), Err(BAD_QUERY)),
            (Some("device=0FAG"), Err(BAD_QUERY)),
            (Some("device=+FAC"), Err(BAD_QUERY)),
            (Some("device="), Err(BAD_QUERY)),
            (Some("device=0FAC&x=1"), Err(BAD_QUERY)),
            (Some("dev=0FAC"), Err(BAD_QUERY)),
        ];
        for (query, expected) in cases {
            assert_eq!(filter(query), expected, "{query:?}");
        }
    }

    #[test]
    fn a_watcher_takes_its_device_only_and_stops_at_its_buffer() {
        let feed = Arc::new(Feed::new());
        let now = Instant::now();
        let mut all = Watcher::start(&feed, None, now);
        let mut one = Watcher::start(&feed, Some(0x0FAC), now);
        for n in 1..=4 {
            feed.publish(event(n, if n % 2 == 0 { 0x0FAC } else { 0x0001 }));
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(all.fill(&feed, &mut a, 0, now), Ok(4));
        assert_eq!(one.fill(&feed, &mut b, 0, now), Ok(2));
        let ids = |out: &[u8]| {
            String::from_utf8_lossy(out)
                .lines()
                .filter_map(|l| l.strip_prefix("id: ").map(str::to_string))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ["1", "2", "3", "4"]);
        assert_eq!(ids(&b), ["2", "4"]);
        feed.publish(event(5, 0x0FAC));
        let mut full = Vec::new();
        assert_eq!(all.fill(&feed, &mut full, BUFFER_BYTES, now), Ok(0));
        assert_eq!(all.fill(&feed, &mut full, 0, now), Ok(1), "kept its place");
        for n in 0..=CAPACITY as u64 {
            feed.publish(event(n, 1));
        }
        assert_eq!(
            all.fill(&feed, &mut full, BUFFER_BYTES, now),
            Err(Behind { missed: 1 }),
            "behind, though its buffer is full"
        );
    }

    #[test]
    fn a_watcher_needs_a_comment_after_silence_and_is_dropped_when_stuck() {
        let feed = Arc::new(Feed::new());
        let now = Instant::now();
        let mut w = Watcher::start(&feed, None, now);
        assert_eq!(w.deadline(false), now + KEEP_ALIVE);
        assert_eq!(w.deadline(true), now + STALL);
        let later = now + Duration::from_secs(3);
        feed.publish(event(1, 1));
        assert_eq!(w.fill(&feed, &mut Vec::new(), 0, later), Ok(1));
        assert_eq!(
            w.deadline(false),
            later + KEEP_ALIVE,
            "silence counts from the last event"
        );
        assert_eq!(
            w.deadline(true),
            now + STALL,
            "patience counts from the last byte taken"
        );
    }

    #[test]
    fn a_watcher_left_behind_finishes_the_event_it_began_and_no_more() {
        let feed = Arc::new(Feed::new());
        let now = Instant::now();
        let mut one = Vec::new();
        write_event(&mut one, &event(1, 1));
        let mut two = one.clone();
        write_event(&mut two, &event(2, 1));
        let dropped = dropped_event(Dropped::Behind);
        // (bytes of `two` its socket took) → what is left to send
        let len = one.len();
        let cases: [(usize, &[u8]); 5] = [
            (0, &one),
            (5, &one[5..]),
            (len - 1, b"\n"),
            (len, b""),
            (len + 3, &two[len + 3..]),
        ];
        for (sent, rest) in cases {
            let mut w = Watcher::start(&feed, None, now);
            w.took(&two[..sent], now);
            let mut out = two.clone();
            w.leave(&mut out, sent);
            assert_eq!(&out[..sent], &two[..sent], "{sent}");
            assert_eq!(
                String::from_utf8_lossy(&out[sent..]),
                String::from_utf8_lossy(&[rest, &dropped[..]].concat()),
                "{sent}"
            );
            assert!(w.leaving);
        }
        // What went out before a drain still counts: one byte at a time.
        let mut w = Watcher::start(&feed, None, now);
        for b in &one {
            w.took(std::slice::from_ref(b), now);
        }
        let mut out = two[len..].to_vec();
        w.leave(&mut out, 0);
        assert_eq!(out, dropped);
    }

    #[test]
    fn a_watcher_that_falls_behind_is_told_so() {
        let feed = Arc::new(Feed::new());
        let now = Instant::now();
        let mut slow = Watcher::start(&feed, None, now);
        for n in 0..=CAPACITY as u64 {
            feed.publish(event(n, 1));
        }
        assert_eq!(
            slow.fill(&feed, &mut Vec::new(), 0, now),
            Err(Behind { missed: 1 })
        );
        assert_eq!(
            String::from_utf8(dropped_event(Dropped::Behind)).unwrap(),
            "event: dropped\ndata: {\"reason\":\"behind\"}\n\n"
        );
    }
}
