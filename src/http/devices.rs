//! `GET /api/devices/{DEVICE}`: one device's written registers, read from the
//! store (memory, data file or Valkey/Redis), as JSON:
//! `{"device":"0FAC","registers":{"0B":"1234"}}`, and `"unreadable":["01"]`
//! for registers whose stored value cannot be read (what a WWEP read of
//! them answers `X` to). Read-only.

use serde::{Serialize, Serializer};

use super::Status;
use crate::json::Hex;
use crate::store::backend::{DeviceRegisters, StoreError};
use crate::store::text;

/// The path this module answers under.
pub(super) const PREFIX: &str = "/api/devices/";

const JSON: &str = "application/json";

fn error(status: u16, message: &str) -> (u16, &'static str, String) {
    let body = serde_json::json!({ "error": message });
    (status, JSON, format!("{body}\n"))
}

/// The device id of `/api/devices/0FAC`: exactly 4 hex digits, either case,
/// in the store's own text grammar.
fn parse(id: &str) -> Option<u16> {
    text::device(id.as_bytes())
}

/// The JSON of one device's registers (uppercase hex, sorted by register).
pub(super) fn to_json(device: u16, registers: &DeviceRegisters) -> String {
    let body = DeviceJson {
        device: Hex(device),
        registers: RegistersJson(&registers.values),
        unreadable: registers.unreadable.iter().map(|&r| Hex(r)).collect(),
    };
    let mut json = serde_json::to_string(&body).expect("hex strings serialize");
    json.push('\n');
    json
}

#[derive(Serialize)]
struct DeviceJson<'a> {
    device: Hex<u16>,
    registers: RegistersJson<'a>,
    /// Only when there are some, so a device whose values all read keeps
    /// the two fields it always had.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreadable: Vec<Hex<u8>>,
}

/// Registers as an object from register to value: `{"0B":"1234"}`.
struct RegistersJson<'a>(&'a [(u8, u16)]);

impl Serialize for RegistersJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|&(r, v)| (Hex(r), Hex(v))))
    }
}

/// Status, content type and body for `path` (which starts with [`PREFIX`]);
/// `server` is `None` until the WWEP side is up.
pub(super) fn answer(path: &str, server: Option<&dyn Status>) -> (u16, &'static str, String) {
    let id = path.strip_prefix(PREFIX).unwrap_or("");
    let Some(device) = parse(id) else {
        return error(400, "a device id is 4 hex digits, e.g. /api/devices/0FAC");
    };
    let Some(server) = server else {
        return error(503, "starting: the data file is being replayed");
    };
    match server.device(device) {
        Ok(registers) if registers.is_empty() => {
            error(404, "nothing has been written to this device")
        }
        Ok(registers) => (200, JSON, to_json(device, &registers)),
        Err(StoreError::Unavailable) => error(503, "the store is unavailable"),
        Err(StoreError::Storage) => error(503, "the data file cannot be read"),
        // Unreadable values are listed one by one above; a store that
        // called the whole device unreadable is answered as such.
        Err(StoreError::Unreadable) => error(502, "the stored values cannot be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_four_hex_digits_in_either_case() {
        assert_eq!(parse("0FAC"), Some(0x0FAC));
        assert_eq!(parse("0fac"), Some(0x0FAC));
        assert_eq!(parse("FFFF"), Some(0xFFFF));
        for bad in ["", "FAC", "0FAC0", "0FAG", "+FAC", "0FAC/", " FAC"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn registers_are_uppercase_hex_in_order() {
        let registers = DeviceRegisters {
            values: vec![(0x0B, 0x1234), (0xFF, 0xABCD)],
            unreadable: Vec::new(),
        };
        assert_eq!(
            to_json(0x0FAC, &registers),
            "{\"device\":\"0FAC\",\"registers\":{\"0B\":\"1234\",\"FF\":\"ABCD\"}}\n"
        );
    }

    #[test]
    fn unreadable_registers_are_listed_by_themselves() {
        let registers = DeviceRegisters {
            values: vec![(0x02, 0x1234)],
            unreadable: vec![0x01, 0x0A],
        };
        assert_eq!(
            to_json(0x0BB0, &registers),
            "{\"device\":\"0BB0\",\"registers\":{\"02\":\"1234\"},\"unreadable\":[\"01\",\"0A\"]}\n"
        );
    }

    #[test]
    fn errors_are_one_message() {
        assert_eq!(
            error(404, "nothing has been written to this device"),
            (
                404,
                JSON,
                "{\"error\":\"nothing has been written to this device\"}\n".to_string()
            )
        );
    }
}
