//! `GET /api/devices/{DEVICE}`: one device's written registers, read from the
//! store (memory, data file or Valkey/Redis), as JSON:
//! `{"device":"0FAC","registers":{"0B":"1234"}}`. Read-only.

use serde::{Serialize, Serializer};

use super::Status;
use crate::json::Hex;
use crate::store::backend::StoreError;

/// The path this module answers under.
pub(super) const PREFIX: &str = "/api/devices/";

const JSON: &str = "application/json";

fn error(status: u16, message: &str) -> (u16, &'static str, String) {
    let body = serde_json::json!({ "error": message });
    (status, JSON, format!("{body}\n"))
}

/// The device id of `/api/devices/0FAC`: exactly 4 hex digits, either case.
fn parse(id: &str) -> Option<u16> {
    if id.len() != 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(id, 16).ok()
}

/// The JSON of one device's registers (uppercase hex, sorted by register).
pub(super) fn to_json(device: u16, registers: &[(u8, u16)]) -> String {
    let body = DeviceJson {
        device: Hex(device),
        registers: RegistersJson(registers),
    };
    let mut json = serde_json::to_string(&body).expect("hex strings serialize");
    json.push('\n');
    json
}

#[derive(Serialize)]
struct DeviceJson<'a> {
    device: Hex<u16>,
    registers: RegistersJson<'a>,
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
        assert_eq!(
            to_json(0x0FAC, &[(0x0B, 0x1234), (0xFF, 0xABCD)]),
            "{\"device\":\"0FAC\",\"registers\":{\"0B\":\"1234\",\"FF\":\"ABCD\"}}\n"
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
