//! The register store: every register of every device id, in memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Registers keyed by (device id, register). Nothing exists before its first write.
#[derive(Debug, Default)]
pub struct RegisterStore {
    registers: Mutex<HashMap<(u16, u8), u16>>,
}

impl RegisterStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A panic while the lock was held cannot leave the map half-updated (every
    /// critical section is one map call), so a poisoned lock is safe to keep using.
    fn map(&self) -> MutexGuard<'_, HashMap<(u16, u8), u16>> {
        self.registers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value of a register, or `None` if it was never written.
    pub fn read(&self, device: u16, register: u8) -> Option<u16> {
        self.map().get(&(device, register)).copied()
    }

    /// Stores a value, replacing any earlier one.
    pub fn write(&self, device: u16, register: u8, value: u16) {
        self.map().insert((device, register), value);
    }

    /// How many registers have been written.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn nothing_exists_before_the_first_write() {
        let store = RegisterStore::new();
        assert_eq!(store.read(0x0FAC, 0x0B), None);
        assert!(store.is_empty());
        store.write(0x0FAC, 0x0B, 0x1234);
        assert_eq!(store.read(0x0FAC, 0x0B), Some(0x1234));
        assert_eq!(store.read(0x0FAC, 0x0C), None);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn devices_have_separate_registers() {
        let store = RegisterStore::new();
        store.write(0x1234, 0x05, 1);
        store.write(0xABCD, 0x05, 2);
        assert_eq!(store.read(0x1234, 0x05), Some(1));
        assert_eq!(store.read(0xABCD, 0x05), Some(2));
    }

    #[test]
    fn later_write_wins_at_the_key_space_edges() {
        let store = RegisterStore::new();
        for (d, r) in [(0, 0), (0xFFFF, 0xFF), (0, 0xFF), (0xFFFF, 0)] {
            store.write(d, r, 0xFFFF);
            store.write(d, r, 0);
            assert_eq!(store.read(d, r), Some(0));
        }
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn a_poisoned_lock_keeps_serving() {
        let store = Arc::new(RegisterStore::new());
        store.write(1, 1, 7);
        let s = Arc::clone(&store);
        let _ = std::thread::spawn(move || {
            let _guard = s.map();
            panic!("poison the lock");
        })
        .join();
        assert!(store.registers.is_poisoned());
        assert_eq!(store.read(1, 1), Some(7));
        store.write(1, 2, 8);
        assert_eq!(store.read(1, 2), Some(8));
    }
}
