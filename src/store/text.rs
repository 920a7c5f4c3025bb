//! Registers as text where they leave this process: a device's hash in
//! Valkey/Redis (field `0B`, value `1234`, under the key `PREFIX:0FAC`) and the
//! device in `/api/devices/0FAC`. One grammar for every path that reads them:
//! a fixed number of hex digits, either case. This server writes upper case;
//! anything else a hash holds is for the caller to call unreadable.

/// A device id: 4 hex digits.
pub fn device(text: &[u8]) -> Option<u16> {
    hex(text, 4).map(|n| n as u16)
}

/// A register (a hash field): 2 hex digits.
pub fn register(text: &[u8]) -> Option<u8> {
    hex(text, 2).map(|n| n as u8)
}

/// A stored value: 4 hex digits.
pub fn value(text: &[u8]) -> Option<u16> {
    hex(text, 4).map(|n| n as u16)
}

/// Exactly `digits` hex digits (at most 8), either case.
fn hex(text: &[u8], digits: usize) -> Option<u32> {
    if text.len() != digits {
        return None;
    }
    text.iter().try_fold(0u32, |n, &b| {
        let digit = char::from(b).to_digit(16)?;
        Some((n << 4) | digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_hex_in_either_case() {
        assert_eq!(device(b"0FAC"), Some(0x0FAC));
        assert_eq!(device(b"0fac"), Some(0x0FAC));
        assert_eq!(value(b"FFFF"), Some(0xFFFF));
        assert_eq!(value(b"0000"), Some(0));
        assert_eq!(register(b"0B"), Some(0x0B));
        assert_eq!(register(b"ff"), Some(0xFF));
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
        for bad in [&b""[..], b"B", b"0B0", b"+B", b"0G", b"\xff"] {
            assert_eq!(register(bad), None, "{bad:?}");
        }
    }
}
