//! The writes acknowledged, as they happen, for the watchers of
//! `GET /api/events`: a bounded ring the worker threads append to the moment
//! a write's `A` has been sent (through the live page's record), and the HTTP
//! side reads from, each watcher at its own position.
//!
//! The WWEP path never waits for a watcher: appending takes one short lock
//! (held to copy an entry in, or a batch out) and, when the ring is full,
//! overwrites the oldest entry. A watcher whose next entry has been
//! overwritten has fallen [`CAPACITY`] writes behind; the HTTP side drops it.
//! Nothing is appended while nobody watches, and the ring is emptied when
//! the last watcher goes. No sockets here: the reader is woken through the
//! function it gave [`Feed::on_publish`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::protocol::Transport;

/// Writes a watcher may fall behind before it is dropped (24 bytes each:
/// 384 KiB when full).
pub const CAPACITY: usize = 16_384;

/// One acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteEvent {
    /// The transaction's number, as in its log line (`#n`) and on the page.
    pub n: u64,
    /// When it was recorded, in µs since the Unix epoch.
    pub at_us: u64,
    pub device: u16,
    pub register: u8,
    pub value: u16,
    pub transport: Transport,
}

/// A watcher's next entry is gone: it fell more than [`CAPACITY`] writes
/// behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    /// Writes it missed.
    pub missed: u64,
}

struct Ring {
    events: VecDeque<WriteEvent>,
    /// The position of `events[0]`; positions count every write appended
    /// since the server started.
    first: u64,
}

impl Ring {
    fn next(&self) -> u64 {
        self.first + self.events.len() as u64
    }
}

/// What the writers and the watchers share.
pub struct Feed {
    ring: Mutex<Ring>,
    watchers: AtomicUsize,
    wake: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// A wake has been sent and the reader has not yet taken it: later
    /// writes need none (one wake per batch, not per write).
    wake_due: AtomicBool,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                first: 0,
            }),
            watchers: AtomicUsize::new(0),
            wake: OnceLock::new(),
            wake_due: AtomicBool::new(false),
        }
    }
}

/// A poisoned lock holds a consistent ring: every update under it is a push,
/// a pop or a clear.
fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feed {
    pub fn new() -> Feed {
        Feed::default()
    }

    /// Sets what wakes the reader when writes arrive (once; later calls are
    /// ignored). It runs on the writing thread and must not block.
    pub fn on_publish(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.wake.set(wake);
    }

    /// Appends an acknowledged write, if anyone watches, and wakes the reader
    /// unless a wake is already due.
    pub fn publish(&self, event: WriteEvent) {
        if self.watchers.load(Ordering::Acquire) == 0 {
            return;
        }
        {
            let mut ring = lock(&self.ring);
            if ring.events.len() == CAPACITY {
                ring.events.pop_front();
                ring.first += 1;
            }
            ring.events.push_back(event);
        }
        // Paired with `woken`: either the reader's reset is seen here and
        // this wakes it, or the reader reads after this write was appended.
        if !self.wake_due.swap(true, Ordering::AcqRel)
            && let Some(wake) = self.wake.get()
        {
            wake();
        }
    }

    /// Whether a wake has been sent that the reader has not taken.
    pub fn is_due(&self) -> bool {
        self.wake_due.load(Ordering::Acquire)
    }

    /// Takes the due wake, before the reader reads: whatever is appended
    /// after this wakes it again (until then, no writer pays for a wake).
    pub fn woken(&self) -> bool {
        self.wake_due.swap(false, Ordering::AcqRel)
    }

    /// A new watcher, and the position of the next write (it sees writes
    /// acknowledged from now on).
    pub fn watch(self: &Arc<Self>) -> (Watching, u64) {
        self.watchers.fetch_add(1, Ordering::AcqRel);
        let next = lock(&self.ring).next();
        let watching = Watching {
            feed: Arc::clone(self),
        };
        (watching, next)
    }

    /// Watchers now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }

    /// Copies up to `max` writes from position `from` into `out`; the
    /// position after them, or how far behind `from` is.
    pub fn read(&self, from: u64, max: usize, out: &mut Vec<WriteEvent>) -> Result<u64, Behind> {
        let ring = lock(&self.ring);
        if from < ring.first {
            return Err(Behind {
                missed: ring.first - from,
            });
        }
        let start = usize::try_from(from - ring.first).unwrap_or(usize::MAX);
        let taken = ring.events.len().saturating_sub(start).min(max);
        out.extend(ring.events.range(start..start + taken));
        Ok(from.max(ring.first) + taken as u64)
    }
}

/// One watcher's share of the feed; the last to go empties the ring.
pub struct Watching {
    feed: Arc<Feed>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut ring = lock(&self.feed.ring);
        if self.feed.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
            ring.first = ring.next();
            ring.events = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn event(n: u64) -> WriteEvent {
        WriteEvent {
            n,
            at_us: n * 10,
            device: 0x0FAC,
            register: n as u8,
            value: n as u16,
            transport: Transport::Plain,
        }
    }

    fn read_all(feed: &Feed, from: u64) -> (Result<u64, Behind>, Vec<u64>) {
        let mut out = Vec::new();
        let next = feed.read(from, usize::MAX, &mut out);
        (next, out.iter().map(|e| e.n).collect())
    }

    #[test]
    fn nothing_is_kept_while_nobody_watches() {
        let feed = Arc::new(Feed::new());
        feed.publish(event(1));
        let (watching, at) = feed.watch();
        assert_eq!(at, 0, "the unwatched write took no position");
        feed.publish(event(2));
        feed.publish(event(3));
        assert_eq!(read_all(&feed, at), (Ok(2), vec![2, 3]));
        drop(watching);
        assert_eq!(feed.watchers(), 0);
        let (_again, at) = feed.watch();
        assert_eq!(at, 2, "positions go on; the ring was emptied");
        assert_eq!(read_all(&feed, at), (Ok(2), vec![]));
    }

    #[test]
    fn each_watcher_reads_from_its_own_position_in_batches() {
        let feed = Arc::new(Feed::new());
        let (_a, first) = feed.watch();
        feed.publish(event(1));
        let (_b, second) = feed.watch();
        feed.publish(event(2));
        feed.publish(event(3));
        assert_eq!(read_all(&feed, first), (Ok(3), vec![1, 2, 3]));
        assert_eq!(read_all(&feed, second), (Ok(3), vec![2, 3]));
        let mut out = Vec::new();
        assert_eq!(feed.read(first, 2, &mut out), Ok(2));
        assert_eq!(feed.read(2, 2, &mut out), Ok(3));
        assert_eq!(out.iter().map(|e| e.n).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_watcher_more_than_the_capacity_behind_is_told_how_far() {
        let feed = Arc::new(Feed::new());
        let (_slow, at) = feed.watch();
        for n in 0..CAPACITY as u64 {
            feed.publish(event(n));
        }
        let (next, events) = read_all(&feed, at);
        assert_eq!((next, events.len()), (Ok(CAPACITY as u64), CAPACITY));
        feed.publish(event(CAPACITY as u64));
        feed.publish(event(CAPACITY as u64 + 1));
        assert_eq!(read_all(&feed, at).0, Err(Behind { missed: 2 }));
        let (next, events) = read_all(&feed, 2);
        assert_eq!((next, events.len()), (Ok(CAPACITY as u64 + 2), CAPACITY));
    }

    #[test]
    fn one_wake_per_batch_until_the_reader_takes_it() {
        let feed = Arc::new(Feed::new());
        let wakes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&wakes);
        feed.on_publish(Box::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        feed.publish(event(1));
        assert_eq!(wakes.load(Ordering::Relaxed), 0, "nobody watches");
        let (_w, _) = feed.watch();
        feed.publish(event(2));
        feed.publish(event(3));
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        assert!(feed.woken());
        assert!(!feed.woken(), "taken once");
        feed.publish(event(4));
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
    }
}
