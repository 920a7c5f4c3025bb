//! What JSON has no type for, written as strings by serde_json: the protocol's
//! hex numbers and anything with a `Display`, each written straight into the
//! output (no `String` in between). A leaf: it imports nothing of the crate.

use std::fmt;

use serde::{Serialize, Serializer};

/// A device, register or value as the protocol writes it: uppercase hex in its
/// full width, `"0FAC"` or `"0B"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex<T>(pub T);

impl Serialize for Hex<u16> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:04X}", self.0))
    }
}

impl Serialize for Hex<u8> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:02X}", self.0))
    }
}

/// Anything with a `Display` (an address, a port's name, escaped bytes), as the
/// JSON string of what it displays.
pub struct Text<T>(pub T);

impl<T: fmt::Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Escaped;

    #[test]
    fn hex_is_uppercase_in_full_width() {
        let json = serde_json::to_string(&(Hex(0x0FACu16), Hex(0x0Bu8), Hex(0u16), Hex(0xFFu8)));
        assert_eq!(json.unwrap(), r#"["0FAC","0B","0000","FF"]"#);
    }

    #[test]
    fn text_carries_the_escaped_form_of_client_bytes() {
        let json = serde_json::to_string(&Text(Escaped(b"R0FAC0B\n\"\\\x01")));
        assert_eq!(json.unwrap(), r#""R0FAC0B\\n\\\"\\\\\\x01""#);
    }
}
