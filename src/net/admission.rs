//! Who gets a place in the connection table.
//!
//! Every accepted connection holds an [`Admission`] until it is closed: one slot
//! of `--max-connections`, and, until its message is complete, one of its
//! address's `--max-per-ip`. The per-address limit counts what hurts — connections
//! held open without a complete message — so a busy client that sends its message
//! at once never meets it, however many of them share one address (a classroom
//! behind NAT, a load balancer), while one address cannot fill the table with
//! silent or trickling connections.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::facts::Refusal;

/// The connection table: how many are open, and how many of each address are
/// still unfinished.
pub struct AdmissionTable {
    max_connections: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    unfinished: Mutex<HashMap<IpAddr, usize>>,
    /// Signalled when the table becomes empty while someone waits for that (a
    /// stopping server); a signal nobody waits for would cost a system call per
    /// connection whenever the server goes idle.
    emptied: Condvar,
    awaited: AtomicBool,
    empty_lock: Mutex<()>,
}

impl AdmissionTable {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Arc<AdmissionTable> {
        Arc::new(AdmissionTable {
            max_connections,
            max_per_ip,
            open: AtomicUsize::new(0),
            unfinished: Mutex::new(HashMap::new()),
            emptied: Condvar::new(),
            awaited: AtomicBool::new(false),
            empty_lock: Mutex::new(()),
        })
    }

    /// A poisoned lock still holds consistent counts: each critical section is
    /// one map update.
    fn unfinished(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.unfinished.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `ip`, or says why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_connections {
            self.release_open();
            return Err(Refusal::Full);
        }
        let mut unfinished = self.unfinished();
        let count = unfinished.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            drop(unfinished);
            self.release_open();
            return Err(Refusal::PerIp);
        }
        *count += 1;
        Ok(Admission {
            table: Arc::clone(self),
            ip,
            unfinished: true,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Unfinished connections from `ip` now.
    #[cfg(test)]
    fn unfinished_from(&self, ip: IpAddr) -> usize {
        self.unfinished().get(&ip).copied().unwrap_or(0)
    }

    fn release_open(&self) {
        // SeqCst pairs with `wait_empty`: either the waiter's flag is seen here,
        // or the waiter sees the count this leaves.
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 && self.awaited.load(Ordering::SeqCst) {
            let _guard = self.empty_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.emptied.notify_all();
        }
    }

    /// Waits until no connection is open or `until` passes; true when empty.
    pub fn wait_empty(&self, until: Instant) -> bool {
        self.awaited.store(true, Ordering::SeqCst);
        let mut guard = self.empty_lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.open.load(Ordering::SeqCst) == 0 {
                return true;
            }
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            guard = match self.emptied.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// One connection's place in the table; released on drop, even by a panic.
pub struct Admission {
    table: Arc<AdmissionTable>,
    ip: IpAddr,
    unfinished: bool,
}

impl Admission {
    /// The connection has its complete message: it no longer counts against its
    /// address.
    pub fn finished(&mut self) {
        if !std::mem::replace(&mut self.unfinished, false) {
            return;
        }
        let mut unfinished = self.table.unfinished();
        if let Some(count) = unfinished.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                unfinished.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// The connection turned out to come from `ip` (a balancer's PROXY header
    /// said so): it counts against that address from now on.
    pub fn moved_to(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if !self.unfinished || ip == self.ip {
            self.ip = ip;
            return Ok(());
        }
        self.finished();
        let mut unfinished = self.table.unfinished();
        let count = unfinished.entry(ip).or_insert(0);
        if *count >= self.table.max_per_ip {
            if *count == 0 {
                unfinished.remove(&ip);
            }
            return Err(Refusal::PerIp);
        }
        *count += 1;
        self.ip = ip;
        self.unfinished = true;
        Ok(())
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.finished();
        self.table.release_open();
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Admission({}, unfinished: {})", self.ip, self.unfinished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_table_bound_holds_and_frees_on_drop() {
        let table = AdmissionTable::new(2, 10);
        let a = table.admit(ip(1)).unwrap();
        let _b = table.admit(ip(2)).unwrap();
        assert_eq!(table.admit(ip(3)).unwrap_err(), Refusal::Full);
        assert_eq!(table.open(), 2);
        drop(a);
        assert_eq!(table.open(), 1);
        assert!(table.admit(ip(3)).is_ok());
    }

    #[test]
    fn only_unfinished_connections_count_against_an_address() {
        let table = AdmissionTable::new(100, 2);
        let mut a = table.admit(ip(1)).unwrap();
        let _b = table.admit(ip(1)).unwrap();
        assert_eq!(table.admit(ip(1)).unwrap_err(), Refusal::PerIp);
        assert!(table.admit(ip(2)).is_ok(), "other addresses are spared");
        a.finished();
        assert_eq!(table.unfinished_from(ip(1)), 1);
        let _c = table.admit(ip(1)).unwrap();
        assert_eq!(
            table.open(),
            3,
            "a finished connection still holds its slot"
        );
        a.finished();
        drop(a);
        assert_eq!(
            table.unfinished_from(ip(1)),
            2,
            "finishing twice counts once"
        );
    }

    #[test]
    fn a_proxied_connection_counts_against_the_client_not_the_balancer() {
        let table = AdmissionTable::new(100, 1);
        let mut first = table.admit(ip(9)).unwrap();
        first.moved_to(ip(1)).unwrap();
        assert_eq!(
            (table.unfinished_from(ip(9)), table.unfinished_from(ip(1))),
            (0, 1)
        );
        let mut second = table.admit(ip(9)).unwrap();
        assert_eq!(second.moved_to(ip(1)), Err(Refusal::PerIp));
        assert_eq!(
            table.unfinished_from(ip(9)),
            0,
            "the balancer's slot was given back"
        );
        drop(second);
        first.finished();
        drop(first);
        assert_eq!((table.open(), table.unfinished_from(ip(1))), (0, 0));
    }

    #[test]
    fn a_refusal_leaves_no_trace() {
        let table = AdmissionTable::new(1, 1);
        let held = table.admit(ip(1)).unwrap();
        assert_eq!(table.admit(ip(1)).unwrap_err(), Refusal::Full);
        assert_eq!(table.open(), 1);
        assert_eq!(table.unfinished_from(ip(1)), 1);
        drop(held);
        assert_eq!(table.open(), 0);
        assert_eq!(table.unfinished_from(ip(1)), 0);
    }

    #[test]
    fn wait_empty_wakes_when_the_last_connection_goes() {
        let table = AdmissionTable::new(4, 4);
        assert!(table.wait_empty(Instant::now()));
        let held = table.admit(ip(1)).unwrap();
        assert!(!table.wait_empty(Instant::now() + Duration::from_millis(10)));
        let waiter = {
            let table = Arc::clone(&table);
            std::thread::spawn(move || table.wait_empty(Instant::now() + Duration::from_secs(10)))
        };
        drop(held);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn refusal_indexes_are_dense_and_distinct() {
        let all = [
            Refusal::Full,
            Refusal::PerIp,
            Refusal::NotAllowed,
            Refusal::Shed,
            Refusal::ProxyHeader,
        ];
        let mut seen: Vec<usize> = all.iter().map(|r| r.index()).collect();
        seen.sort();
        assert_eq!(seen, (0..Refusal::KINDS).collect::<Vec<_>>());
    }

    #[test]
    fn refusals_have_names() {
        for (r, name) in [
            (Refusal::Full, "full"),
            (Refusal::PerIp, "per-address limit"),
            (Refusal::NotAllowed, "not allowed"),
            (Refusal::Shed, "shed"),
            (Refusal::ProxyHeader, "proxy header"),
        ] {
            assert_eq!(r.to_string(), name);
        }
    }
}
