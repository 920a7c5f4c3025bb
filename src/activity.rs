//! What the live page shows: the last transactions, and for the devices
//! written most recently, each register's value, when it was written and over
//! which port.
//!
//! Memory is bounded whatever the clients do: [`RECENT`] transactions in a
//! ring, and registers of at most [`MAX_DEVICES`] devices (256 registers each);
//! writing a new device when the record is full forgets the device written
//! longest ago. The values live in the store; this only remembers who wrote.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

struct Device {
    last_ms: u64,
    /// Which write this was, to order devices written in the same millisecond.
    last_seq: u64,
    registers: BTreeMap<u8, Written>,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    recent: VecDeque<Recent>,
    devices: HashMap<u16, Device>,
}

/// The record behind the live page.
#[derive(Default)]
pub struct Activity {
    inner: Mutex<Inner>,
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
        if !inner.devices.contains_key(&device) && inner.devices.len() >= MAX_DEVICES {
            // Linear in MAX_DEVICES, and only when a new device pushes one out.
            if let Some(oldest) = inner
                .devices
                .iter()
                .min_by_key(|(_, d)| d.last_seq)
                .map(|(&id, _)| id)
            {
                inner.devices.remove(&oldest);
            }
        }
        let entry = inner.devices.entry(device).or_insert_with(|| Device {
            last_ms: at_ms,
            last_seq: seq,
            registers: BTreeMap::new(),
        });
        entry.last_ms = at_ms;
        entry.last_seq = seq;
        entry.registers.insert(
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
        let mut devices: Vec<(&u16, &Device)> = inner.devices.iter().collect();
        devices.sort_by_key(|(_, d)| std::cmp::Reverse(d.last_seq));
        let mut out = String::with_capacity(4096);
        let _ = write!(
            out,
            "{{\"seq\":{},\"now\":{},\"transactions\":{transactions},\"registers\":{registers},\"max_devices\":{MAX_DEVICES},\"devices\":[",
            inner.seq,
            now_ms()
        );
        for (i, (id, device)) in devices.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"device\":\"{id:04X}\",\"last\":{},\"registers\":[",
                device.last_ms
            );
            for (j, (register, w)) in device.registers.iter().enumerate() {
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
        let inner = a.inner();
        assert_eq!(inner.recent.len(), RECENT);
        assert_eq!(inner.recent.back().unwrap().n, MAX_DEVICES as u64 + 9);
        assert_eq!(inner.devices.len(), MAX_DEVICES);
        assert!(
            !inner.devices.contains_key(&0),
            "the oldest device was forgotten"
        );
        assert!(inner.devices.contains_key(&(MAX_DEVICES as u16 + 9)));
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
