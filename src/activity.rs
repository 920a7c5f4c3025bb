//! What the live page shows: the last transactions, and for the devices
//! written most recently, each register's value, when it was written and over
//! which port.
//!
//! Memory is bounded whatever the clients do: [`RECENT`] transactions in a
//! ring, and registers of at most [`MAX_DEVICES`] devices (256 registers each);
//! writing a new device when the record is full forgets the device written
//! longest ago. The record is allocated up front (about 300 KB), so recording
//! never allocates, whatever the mix of devices.
//!
//! Each acknowledged write is also handed to the watchers of
//! `GET /api/events` as it is recorded ([`crate::events`]).
//!
//! Recording stays off the shared record: each worker thread appends to its
//! own small buffer (a lock only that thread and a reader take, so it stays
//! in the thread's core), and the buffer is merged into the record when it is
//! full or when the page asks. Merging orders by time, so buffers merged late
//! never replace a newer value with an older one.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::events::{Feed, WriteEvent};
use crate::json::{Hex, Text};
use crate::protocol::Transport;
use crate::protocol::{Escaped, Reply};
use crate::register_set::RegisterSet;

/// Transactions kept for the page.
pub const RECENT: usize = 50;
/// Devices whose registers the page shows.
pub const MAX_DEVICES: usize = 64;
/// Bytes of a request or reply kept (the longest valid request is 13 bytes).
const KEPT_BYTES: usize = 16;
/// Transactions a thread buffers before merging them into the record.
const BATCH: usize = 64;

#[derive(Clone, Copy)]
struct Bytes {
    buf: [u8; KEPT_BYTES],
    len: u8,
}

impl Bytes {
    fn new(bytes: &[u8]) -> Bytes {
        let len = bytes.len().min(KEPT_BYTES);
        let mut buf = [0; KEPT_BYTES];
        buf[..len].copy_from_slice(&bytes[..len]);
        Bytes {
            buf,
            len: len as u8,
        }
    }

    fn get(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// One transaction as recorded; `at_us` (wall clock) orders everything.
#[derive(Clone, Copy)]
struct Recent {
    n: u64,
    at_us: u64,
    port: Transport,
    peer: SocketAddr,
    request: Bytes,
    reply: Bytes,
    micros: u64,
    /// (device, register, value) when it stored a value.
    written: Option<(u16, u8, u16)>,
}

#[derive(Clone, Copy)]
struct Written {
    value: u16,
    at_us: u64,
    port: Transport,
}

const UNWRITTEN: Written = Written {
    value: 0,
    at_us: 0,
    port: Transport::Plain,
};

/// One device's registers; `present` says which of the 256 were written.
struct Slot {
    device: u16,
    /// The latest write to any of its registers.
    last_us: u64,
    present: RegisterSet,
    registers: [Written; 256],
}

impl Slot {
    fn new(device: u16) -> Slot {
        Slot {
            device,
            last_us: 0,
            present: RegisterSet::EMPTY,
            registers: [UNWRITTEN; 256],
        }
    }

    fn get(&self, register: u8) -> Option<&Written> {
        self.present
            .contains(register)
            .then(|| &self.registers[usize::from(register)])
    }

    fn set(&mut self, register: u8, written: Written) {
        self.present.insert(register);
        self.registers[usize::from(register)] = written;
    }

    fn written(&self) -> impl Iterator<Item = (u8, &Written)> {
        self.present
            .iter()
            .map(|r| (r, &self.registers[usize::from(r)]))
    }
}

struct Inner {
    /// Transactions merged so far (the page redraws its list when it moves).
    merged: u64,
    /// Oldest first.
    recent: VecDeque<Recent>,
    /// Device id → its slot.
    index: HashMap<u16, usize>,
    slots: Vec<Slot>,
}

impl Inner {
    fn merge(&mut self, r: &Recent) {
        self.merged += 1;
        // The ring stays in time order: a late entry goes where it belongs,
        // or nowhere if it is older than all 50 kept.
        let at = self.recent.partition_point(|e| e.at_us <= r.at_us);
        if self.recent.len() < RECENT {
            self.recent.insert(at, *r);
        } else if at > 0 {
            self.recent.pop_front();
            self.recent.insert(at - 1, *r);
        }
        if let Some((device, register, value)) = r.written {
            self.store(device, register, value, r.at_us, r.port);
        }
    }

    fn store(&mut self, device: u16, register: u8, value: u16, at_us: u64, port: Transport) {
        let slot = match self.index.get(&device) {
            Some(&slot) => slot,
            None if self.slots.len() < MAX_DEVICES => {
                self.slots.push(Slot::new(device));
                self.index.insert(device, self.slots.len() - 1);
                self.slots.len() - 1
            }
            None => {
                // The device written longest ago makes room, unless this
                // write (merged late) is older still.
                let Some(oldest) = (0..self.slots.len()).min_by_key(|&i| self.slots[i].last_us)
                else {
                    return;
                };
                if self.slots[oldest].last_us > at_us {
                    return;
                }
                let slot = &mut self.slots[oldest];
                self.index.remove(&slot.device);
                slot.device = device;
                slot.present = RegisterSet::EMPTY;
                slot.last_us = 0;
                self.index.insert(device, oldest);
                oldest
            }
        };
        let slot = &mut self.slots[slot];
        slot.last_us = slot.last_us.max(at_us);
        if slot.get(register).is_none_or(|w| w.at_us <= at_us) {
            slot.set(register, Written { value, at_us, port });
        }
    }
}

/// A thread's unmerged transactions.
type Buffer = Arc<Mutex<Vec<Recent>>>;

/// What the record's threads share.
struct Shared {
    inner: Mutex<Inner>,
    /// Every recording thread's buffer, for the reader to merge.
    buffers: Mutex<Vec<Buffer>>,
    /// Tells this record's buffers apart in a thread's list.
    id: usize,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's buffer for each record it has written to (one, but for
    /// tests that run several servers in one process).
    static BUFFERS: RefCell<Vec<(usize, Weak<Shared>, Buffer)>> = const { RefCell::new(Vec::new()) };
}

/// The record behind the live page.
pub struct Activity {
    shared: Arc<Shared>,
    /// The acknowledged writes, for the watchers of `/api/events`.
    feed: Arc<Feed>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    merged: 0,
                    recent: VecDeque::with_capacity(RECENT),
                    index: HashMap::with_capacity(MAX_DEVICES),
                    slots: Vec::with_capacity(MAX_DEVICES),
                }),
                buffers: Mutex::new(Vec::new()),
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            }),
            feed: Arc::new(Feed::new()),
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A poisoned lock holds consistent data: every update under these locks is
/// a push, a clear or a merge that cannot panic half-way.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One transaction, as [`Activity::record`] takes it.
#[derive(Clone, Copy)]
pub struct Transaction<'a> {
    pub n: u64,
    pub port: Transport,
    pub peer: SocketAddr,
    pub request: &'a [u8],
    pub reply: &'a [u8],
    pub verdict: Reply,
    pub micros: u64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity::default()
    }

    /// The acknowledged writes as they happen, for the watchers.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Runs `f` on this thread's buffer, registered with the record on first use.
    fn with_buffer<R>(&self, f: impl FnOnce(&Mutex<Vec<Recent>>) -> R) -> R {
        BUFFERS.with(|buffers| {
            let mut buffers = buffers.borrow_mut();
            let at = match buffers.iter().position(|(id, _, _)| *id == self.shared.id) {
                Some(at) => at,
                None => {
                    // Forget the buffers of records that no longer exist.
                    buffers.retain(|(_, record, _)| record.strong_count() > 0);
                    let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(BATCH)));
                    lock(&self.shared.buffers).push(Arc::clone(&buffer));
                    buffers.push((self.shared.id, Arc::downgrade(&self.shared), buffer));
                    buffers.len() - 1
                }
            };
            f(&buffers[at].2)
        })
    }

    pub fn record(&self, tx: &Transaction<'_>) {
        self.record_at(tx, now_us());
    }

    fn record_at(&self, tx: &Transaction<'_>, at_us: u64) {
        // An `A` to a write means its value is stored.
        let written = match tx.verdict {
            Reply::Accepted {
                device,
                register,
                value,
            } if tx.request.first() == Some(&b'W') => Some((device, register, value)),
            _ => None,
        };
        let recent = Recent {
            n: tx.n,
            at_us,
            port: tx.port,
            peer: tx.peer,
            request: Bytes::new(tx.request),
            reply: Bytes::new(tx.reply),
            micros: tx.micros,
            written,
        };
        self.with_buffer(|buffer| {
            let mut pending = lock(buffer);
            pending.push(recent);
            if pending.len() >= BATCH {
                let mut inner = lock(&self.shared.inner);
                for r in pending.iter() {
                    inner.merge(r);
                }
                pending.clear();
            }
        });
        // After the record: whoever reads `/api/state` once it has seen this
        // event finds the write there too.
        if let Some((device, register, value)) = written {
            self.feed.publish(WriteEvent {
                n: tx.n,
                at_us,
                device,
                register,
                value,
                transport: tx.port,
            });
        }
    }

    /// Merges every thread's buffer into the record.
    fn merge_all(&self) -> MutexGuard<'_, Inner> {
        let mut pending = Vec::new();
        for buffer in lock(&self.shared.buffers).iter() {
            pending.append(&mut lock(buffer));
        }
        pending.sort_by_key(|r| r.at_us);
        let mut inner = lock(&self.shared.inner);
        for r in &pending {
            inner.merge(r);
        }
        inner
    }

    /// The page's data as JSON: devices most recently written first, each
    /// register in order, and the recent transactions newest first.
    /// `registers` is `null` where the count is not known (a shared store).
    pub fn to_json(&self, transactions: u64, registers: Option<usize>) -> String {
        let inner = self.merge_all();
        let mut order: Vec<&Slot> = inner.slots.iter().collect();
        order.sort_by_key(|slot| std::cmp::Reverse(slot.last_us));
        let page = PageJson {
            seq: inner.merged,
            now: now_us() / 1000,
            transactions,
            registers,
            max_devices: MAX_DEVICES,
            devices: order.into_iter().map(DeviceJson::of).collect(),
            recent: inner.recent.iter().rev().map(RecentJson::of).collect(),
        };
        serde_json::to_string(&page).expect("every field of the page serializes")
    }
}

/// The page's data as the page reads it; times in milliseconds since the epoch.
#[derive(Serialize)]
struct PageJson<'a> {
    seq: u64,
    now: u64,
    transactions: u64,
    registers: Option<usize>,
    max_devices: usize,
    devices: Vec<DeviceJson<'a>>,
    recent: Vec<RecentJson<'a>>,
}

#[derive(Serialize)]
struct DeviceJson<'a> {
    device: Hex<u16>,
    last: u64,
    registers: RegistersJson<'a>,
}

impl DeviceJson<'_> {
    fn of(slot: &Slot) -> DeviceJson<'_> {
        DeviceJson {
            device: Hex(slot.device),
            last: slot.last_us / 1000,
            registers: RegistersJson(slot),
        }
    }
}

/// A device's written registers in order, each written as it is visited.
struct RegistersJson<'a>(&'a Slot);

impl Serialize for RegistersJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.written().map(|(register, w)| RegisterJson {
            register: Hex(register),
            value: Hex(w.value),
            time: w.at_us / 1000,
            port: Text(w.port),
        }))
    }
}

#[derive(Serialize)]
struct RegisterJson {
    register: Hex<u8>,
    value: Hex<u16>,
    time: u64,
    port: Text<Transport>,
}

/// A recent transaction; its bytes in their escaped form, as the log shows them.
#[derive(Serialize)]
struct RecentJson<'a> {
    n: u64,
    time: u64,
    port: Text<Transport>,
    peer: Text<SocketAddr>,
    us: u64,
    request: Text<Escaped<'a>>,
    reply: Text<Escaped<'a>>,
}

impl RecentJson<'_> {
    fn of(r: &Recent) -> RecentJson<'_> {
        RecentJson {
            n: r.n,
            time: r.at_us / 1000,
            port: Text(r.port),
            peer: Text(r.peer),
            us: r.micros,
            request: Text(Escaped(r.request.get())),
            reply: Text(Escaped(r.reply.get())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_tx(n: u64, device: u16, register: u8, value: u16) -> Transaction<'static> {
        Transaction {
            n,
            port: Transport::Plain,
            peer: "127.0.0.1:4000".parse().unwrap(),
            request: b"W0000000000",
            reply: b"A0000000000",
            verdict: Reply::Accepted {
                device,
                register,
                value,
            },
            micros: 5,
        }
    }

    /// A write at `at_us` (the tests give times, so order is exact).
    fn write(a: &Activity, at_us: u64, device: u16, register: u8, value: u16) {
        a.record_at(&write_tx(at_us, device, register, value), at_us);
    }

    fn value_of(inner: &Inner, device: u16, register: u8) -> Option<u16> {
        let slot = &inner.slots[*inner.index.get(&device)?];
        slot.get(register).map(|w| w.value)
    }

    #[test]
    fn keeps_the_last_transactions_and_devices_only() {
        let a = Activity::new();
        for t in 0..(MAX_DEVICES as u64 + 10) {
            write(&a, t, t as u16, 5, 1);
        }
        // Device 10 written again: now device 11 is the oldest.
        write(&a, 100, 10, 6, 2);
        write(&a, 101, 0xFFFF, 1, 1);
        let inner = a.merge_all();
        assert_eq!(inner.recent.len(), RECENT);
        assert_eq!(inner.recent.back().unwrap().n, 101);
        assert_eq!(inner.index.len(), MAX_DEVICES);
        assert_eq!(inner.slots.len(), MAX_DEVICES);
        for gone in 0..=9 {
            assert!(
                !inner.index.contains_key(&gone),
                "device {gone} was forgotten"
            );
        }
        assert!(!inner.index.contains_key(&11), "then the oldest, 11");
        assert_eq!(value_of(&inner, 10, 6), Some(2));
        let new = &inner.slots[inner.index[&0xFFFF]];
        assert_eq!(new.written().count(), 1, "a reused slot starts empty");
    }

    #[test]
    fn a_full_buffer_is_merged_without_a_reader() {
        let a = Activity::new();
        for t in 0..BATCH as u64 {
            write(&a, t, 1, t as u8, 7);
        }
        let inner = lock(&a.shared.inner);
        assert_eq!(inner.merged, BATCH as u64);
        assert_eq!(inner.slots[0].written().count(), BATCH);
    }

    #[test]
    fn a_late_merge_never_replaces_a_newer_value() {
        let a = Arc::new(Activity::new());
        // Another thread's older write sits in its buffer...
        let other = Arc::clone(&a);
        std::thread::spawn(move || write(&other, 10, 1, 5, 0xAAAA))
            .join()
            .unwrap();
        // ...while this thread's newer one is merged first.
        write(&a, 20, 1, 5, 0xBBBB);
        for t in 0..BATCH as u64 - 1 {
            write(&a, 30 + t, 2, 0, 0);
        }
        assert_eq!(value_of(&lock(&a.shared.inner), 1, 5), Some(0xBBBB));
        let inner = a.merge_all();
        assert_eq!(value_of(&inner, 1, 5), Some(0xBBBB));
        let times: Vec<u64> = inner.recent.iter().map(|r| r.at_us).collect();
        assert!(times.is_sorted(), "{times:?}");
        assert!(!times.contains(&10), "older than the 50 kept");
    }

    #[test]
    fn reads_and_failures_do_not_touch_the_registers() {
        let a = Activity::new();
        a.record(&Transaction {
            n: 1,
            port: Transport::Tls,
            peer: "[::1]:4000".parse().unwrap(),
            request: b"R0FAC0B\n\"\\",
            reply: b"X",
            verdict: Reply::Failed(crate::protocol::Failure::NotFound),
            micros: 5,
        });
        let json = a.to_json(1, Some(0));
        assert!(json.contains(r#""devices":[]"#), "{json}");
        assert!(json.contains(r#""request":"R0FAC0B\\n\\\"\\\\""#), "{json}");
        assert!(json.contains(r#""peer":"[::1]:4000""#), "{json}");
    }

    #[test]
    fn an_acknowledged_write_reaches_the_feed_and_nothing_else_does() {
        let a = Activity::new();
        let (_watching, from) = a.feed().watch();
        write(&a, 7, 0x0FAC, 0x0B, 0x1234);
        let read_back = Transaction {
            request: b"R0FAC0B",
            reply: b"A0FAC0B1234",
            ..write_tx(8, 0x0FAC, 0x0B, 0x1234)
        };
        a.record_at(&read_back, 8);
        let refused = Transaction {
            verdict: Reply::Failed(crate::protocol::Failure::Storage),
            ..write_tx(9, 0x0FAC, 0x0B, 0x1234)
        };
        a.record_at(&refused, 9);
        let mut got = Vec::new();
        assert_eq!(a.feed().read(from, 10, &mut got), Ok(from + 1));
        assert_eq!(
            got,
            [WriteEvent {
                n: 7,
                at_us: 7,
                device: 0x0FAC,
                register: 0x0B,
                value: 0x1234,
                transport: Transport::Plain,
            }]
        );
    }

    #[test]
    fn json_lists_devices_newest_first_with_hex_values() {
        let a = Activity::new();
        write(&a, 1_000, 0x0FAC, 0x0B, 0x1234);
        write(&a, 2_000, 0x0001, 0x05, 0x0001);
        write(&a, 3_000, 0x0FAC, 0x02, 0xBEEF);
        let json = a.to_json(3, Some(3));
        let fac = json.find("\"device\":\"0FAC\"").unwrap();
        let one = json.find("\"device\":\"0001\"").unwrap();
        assert!(fac < one, "{json}");
        assert!(
            json.contains(r#"{"register":"02","value":"BEEF","time":3,"port":"plain"}"#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"register":"0B","value":"1234""#),
            "{json}"
        );
    }
}
