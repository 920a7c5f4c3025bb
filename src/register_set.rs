//! Which of a device's 256 registers exist: one bit each, so a device's record
//! of its registers costs 32 bytes beside their values. The register table
//! ([`crate::store`]) and the live page's record ([`crate::activity`]) both
//! keep one per device. A leaf: it imports nothing of the crate.

/// A set of register numbers (0x00–0xFF).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterSet([u64; 4]);

impl RegisterSet {
    pub const EMPTY: RegisterSet = RegisterSet([0; 4]);

    pub fn contains(&self, register: u8) -> bool {
        let (word, bit) = Self::place(register);
        self.0[word] & bit != 0
    }

    /// Adds `register`; true if it was not in the set before.
    pub fn insert(&mut self, register: u8) -> bool {
        let (word, bit) = Self::place(register);
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }

    /// The registers in the set, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.iter().enumerate().flat_map(|(word, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let register = word * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    register as u8
                })
            })
        })
    }

    fn place(register: u8) -> (usize, u64) {
        let r = usize::from(register);
        (r / 64, 1 << (r % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_go_in_once_and_come_out_in_order() {
        let mut set = RegisterSet::EMPTY;
        assert_eq!(set.iter().next(), None);
        for (register, new) in [
            (0xFF, true),
            (0x00, true),
            (0x40, true),
            (0x3F, true),
            (0x40, false),
        ] {
            assert_eq!(set.insert(register), new, "{register:02X}");
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), [0x00, 0x3F, 0x40, 0xFF]);
        assert_eq!(set.iter().count(), 4);
        for register in 0..=255u8 {
            assert_eq!(
                set.contains(register),
                [0x00, 0x3F, 0x40, 0xFF].contains(&register),
                "{register:02X}"
            );
        }
    }

    #[test]
    fn every_register_fits() {
        let mut set = RegisterSet::default();
        for register in 0..=255u8 {
            assert!(set.insert(register));
        }
        assert_eq!(set.iter().count(), 256);
        assert!(set.iter().eq(0..=255u8));
    }
}
