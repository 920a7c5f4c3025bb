//! Registers as text where they leave this process: a device's hash in
//! Valkey/Redis (field `0B`, value `1234`, under the key `PREFIX:0FAC`) and the
//! device in `/api/devices/0FAC`. One grammar for every path that reads them:
//! a fixed number of hex digits. This server writes upper case. A value or a
//! device id may be in either case; a register (a hash field) only in upper
//! case, the one spelling a read asks `HGET` for, so a field no read can find
//! is never listed as a register either, and no two fields are one register.
//! Anything else a hash holds is for the caller to call unreadable.

/// A device id: 4 hex digits, either case.
pub fn device(text: &[u8]) -> Option<u16> {
    hex(text, 4, Case::Either).map(|n| n as u16)
}

/// A register (a hash field): 2 upper-case hex digits, as a write stores it
/// and a read asks for it. `0b` is not register 0B: `HGET` of `0B` never
/// finds it, so no other path may call it one.
pub fn register(text: &[u8]) -> Option<u8> {
    hex(text, 2, Case::Upper).map(|n| n as u8)
}

/// A stored value: 4 hex digits, either case (a read and a listing take
/// the same verdict from here).
pub fn value(text: &[u8]) -> Option<u16> {
    hex(text, 4, Case::Either).map(|n| n as u16)
}

/// Which letters a hex digit may be.
#[derive(Clone, Copy)]
enum Case {
    /// `A`–`F` only.
    Upper,
    /// `A`–`F` or `a`–`f`.
    Either,
}

/// Exactly `digits` hex digits (at most 8) in `case`.
fn hex(text: &[u8], digits: usize, case: Case) -> Option<u32> {
    if text.len() != digits {
        return None;
    }
    text.iter().try_fold(0u32, |n, &b| {
        if matches!(case, Case::Upper) && b.is_ascii_lowercase() {
            return None;
        }
        let digit = char::from(b).to_digit(16)?;
        Some((n << 4) | digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_hex_values_and_devices_in_either_case() {
        assert_eq!(device(b"0FAC"), Some(0x0FAC));
        assert_eq!(device(b"0fac"), Some(0x0FAC));
        assert_eq!(value(b"FFFF"), Some(0xFFFF));
        assert_eq!(value(b"00ab"), Some(0x00AB));
        assert_eq!(value(b"0000"), Some(0));
        for bad in [
            &b""[..],
            b"FAC",
            b"0FAC0",
            b"0FAG",
            b"+FAC",
            b"0FAC/",
            b" FAC",
            b"ff",
            b"\xff\xff\xff\xff",
            "0F\u{A0}".as_bytes(),
        ] {
            assert_eq!(device(bad), None, "{bad:?}");
            assert_eq!(value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn registers_are_two_upper_case_hex_digits() {
        assert_eq!(register(b"0B"), Some(0x0B));
        assert_eq!(register(b"FF"), Some(0xFF));
        assert_eq!(register(b"00"), Some(0));
        assert_eq!(register(b"9A"), Some(0x9A));
        // What a read asks for is the only spelling of a register.
        for r in 0..=u8::MAX {
            assert_eq!(register(format!("{r:02X}").as_bytes()), Some(r));
        }
        for bad in [
            &b""[..],
            b"B",
            b"0B0",
            b"+B",
            b"0G",
            b"\xff",
            b"0b",
            b"ff",
            b"fF",
            b"aB",
            b" B",
        ] {
            assert_eq!(register(bad), None, "{bad:?}");
        }
    }
}
