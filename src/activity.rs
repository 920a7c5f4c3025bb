//! What the live page shows: the last transactions, and for the devices
//! written most recently, each register's value, when it was written and over
//! which port.
//!
//! Memory is bounded whatever the clients do: [`RECENT`] transactions in a
//! ring, and registers of at most [`MAX_DEVICES`] devices (256 registers each);
//! writing a new device when the record is full forgets the device written
//! longest ago. Everything is allocated up front (about 300 KB), so recording
//! a transaction never allocates, whatever the mix of devices.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Transport;
use crate::logging::push_json_str;
use crate::protocol::{Escaped, Reply};

/// Transactions kept for the page.
pub const RECENT: usize = 50;
/// Devices whose registers the page shows.
pub const MAX_DEVICES: usize = 64;
/// Bytes of a request or reply kept (the longest valid request is 13 bytes).
const KEPT_BYTES: usize = 16;

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

#[derive(Clone, Copy)]
struct Recent {
    n: u64,
    at_ms: u64,
    port: Transport,
    peer: SocketAddr,
    request: Bytes,
    reply: Bytes,
    micros: u64,
}

#[derive(Clone, Copy)]
struct Written {
    value: u16,
    at_ms: u64,
    port: Transport,
}

const UNWRITTEN: Written = Written {
    value: 0,
    at_ms: 0,
    port: Transport::Plain,
};

/// One device's registers; `present` says which of the 256 were written.
struct Slot {
    device: u16,
    last_ms: u64,
    present: [u64; 4],
    registers: [Written; 256],
}

impl Slot {
    fn new(device: u16) -> Slot {
        Slot {
            device,
            last_ms: 0,
            present: [0; 4],
            registers: [UNWRITTEN; 256],
        }
    }

    fn set(&mut self, register: u8, written: Written) {
        let r = usize::from(register);
        self.present[r / 64] |= 1 << (r % 64);
        self.registers[r] = written;
    }

    fn written(&self) -> impl Iterator<Item = (u8, &Written)> {
        (0..=255u8).filter_map(|r| {
            let i = usize::from(r);
            (self.present[i / 64] & (1 << (i % 64)) != 0).then(|| (r, &self.registers[i]))
        })
    }
}

struct Inner {
    seq: u64,
    recent: VecDeque<Recent>,
    /// Device id → its slot.
    index: HashMap<u16, usize>,
    slots: Vec<Slot>,
    /// Each slot's last write, by sequence number (apart from the slots, so
    /// finding the oldest reads 512 bytes).
    last_seq: Vec<u64>,
}

/// The record behind the live page.
pub struct Activity {
    inner: Mutex<Inner>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            inner: Mutex::new(Inner {
                seq: 0,
                recent: VecDeque::with_capacity(RECENT),
                index: HashMap::with_capacity(MAX_DEVICES),
                slots: Vec::with_capacity(MAX_DEVICES),
                last_seq: Vec::with_capacity(MAX_DEVICES),
            }),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One transaction, as [`Activity::record`] takes it.
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

    /// A poisoned lock holds a consistent record: each update is small and
    /// cannot panic half-way.
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, tx: &Transaction<'_>) {
        let at_ms = now_ms();
        let recent = Recent {
            n: tx.n,
            at_ms,
            port: tx.port,
            peer: tx.peer,
            request: Bytes::new(tx.request),
            reply: Bytes::new(tx.reply),
            micros: tx.micros,
        };
        // An `A` to a write means its value is stored.
        let written = match tx.verdict {
            Reply::Accepted {
                device,
                register,
                value,
            } if tx.request.first() == Some(&b'W') => Some((device, register, value)),
            _ => None,
        };
        let mut inner = self.inner();
        inner.seq += 1;
        let seq = inner.seq;
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(recent);
        let Some((device, register, value)) = written else {
            return;
        };
        let inner = &mut *inner;
        let slot = match inner.index.get(&device) {
            Some(&slot) => slot,
            None if inner.slots.len() < MAX_DEVICES => {
                inner.slots.push(Slot::new(device));
                inner.last_seq.push(seq);
                inner.index.insert(device, inner.slots.len() - 1);
                inner.slots.len() - 1
            }
            None => {
                // The device written longest ago makes room: a scan of 64 numbers.
                let oldest = (0..inner.last_seq.len())
                    .min_by_key(|&i| inner.last_seq[i])
                    .unwrap_or(0);
                let slot = &mut inner.slots[oldest];
                inner.index.remove(&slot.device);
                slot.device = device;
                slot.present = [0; 4];
                inner.index.insert(device, oldest);
                oldest
            }
        };
        inner.last_seq[slot] = seq;
        let slot = &mut inner.slots[slot];
        slot.last_ms = at_ms;
        slot.set(
            register,
            Written {
                value,
                at_ms,
                port: tx.port,
            },
        );
    }

    /// The page's data as JSON: devices most recently written first, each
    /// register in order, and the recent transactions newest first.
    pub fn to_json(&self, transactions: u64, registers: usize) -> String {
        let inner = self.inner();
        let mut order: Vec<usize> = (0..inner.slots.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inner.last_seq[i]));
        let mut out = String::with_capacity(4096);
        let _ = write!(
            out,
            "{{\"seq\":{},\"now\":{},\"transactions\":{transactions},\"registers\":{registers},\"max_devices\":{MAX_DEVICES},\"devices\":[",
            inner.seq,
            now_ms()
        );
        for (i, slot) in order.iter().map(|&i| &inner.slots[i]).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"device\":\"{:04X}\",\"last\":{},\"registers\":[",
                slot.device, slot.last_ms
            );
            for (j, (register, w)) in slot.written().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"register\":\"{register:02X}\",\"value\":\"{:04X}\",\"time\":{},\"port\":\"{}\"}}",
                    w.value, w.at_ms, w.port
                );
            }
            out.push_str("]}");
        }
        out.push_str("],\"recent\":[");
        for (i, r) in inner.recent.iter().rev().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"n\":{},\"time\":{},\"port\":\"{}\",\"peer\":\"{}\",\"us\":{},\"request\":",
                r.n, r.at_ms, r.port, r.peer, r.micros
            );
            push_json_str(&mut out, &Escaped(r.request.get()).to_string());
            out.push_str(",\"reply\":");
            push_json_str(&mut out, &Escaped(r.reply.get()).to_string());
            out.push('}');
        }
        out.push_str("]}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(activity: &Activity, n: u64, device: u16, register: u8, value: u16) {
        activity.record(&Transaction {
            n,
            port: Transport::Plain,
            peer: "127.0.0.1:4000".parse().unwrap(),
            request: b"W0000000000",
            reply: b"A...",
            verdict: Reply::Accepted {
                device,
                register,
                value,
            },
            micros: 5,
        });
    }

    #[test]
    fn keeps_the_last_transactions_and_devices_only() {
        let a = Activity::new();
        for n in 0..(MAX_DEVICES as u64 + 10) {
            write(&a, n, n as u16, 5, 1);
        }
        // Device 10 written again: now device 11 is the oldest.
        write(&a, 100, 10, 6, 2);
        write(&a, 101, 0xFFFF, 1, 1);
        let inner = a.inner();
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
        assert!(inner.index.contains_key(&10));
        assert!(inner.index.contains_key(&0xFFFF));
        let new = &inner.slots[inner.index[&0xFFFF]];
        assert_eq!(new.written().count(), 1, "a reused slot starts empty");
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
        let json = a.to_json(1, 0);
        assert!(json.contains(r#""devices":[]"#), "{json}");
        assert!(json.contains(r#""request":"R0FAC0B\\n\\\"\\\\""#), "{json}");
        assert!(json.contains(r#""peer":"[::1]:4000""#), "{json}");
    }

    #[test]
    fn json_lists_devices_newest_first_with_hex_values() {
        let a = Activity::new();
        write(&a, 1, 0x0FAC, 0x0B, 0x1234);
        write(&a, 2, 0x0001, 0x05, 0x0001);
        write(&a, 3, 0x0FAC, 0x02, 0xBEEF);
        let json = a.to_json(3, 3);
        let fac = json.find("\"device\":\"0FAC\"").unwrap();
        let one = json.find("\"device\":\"0001\"").unwrap();
        assert!(fac < one, "{json}");
        assert!(
            json.contains(r#"{"register":"02","value":"BEEF""#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"register":"0B","value":"1234""#),
            "{json}"
        );
    }
}
