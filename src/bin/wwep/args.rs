//! Parsers for what people type on the `wwep` command line: hex fields, MAC
//! addresses, `send` escapes and the benchmark's values. Only the binary uses them.

use std::net::IpAddr;

use wwep::bench::{self, Mix};
use wwep::protocol::{Reply, WRITE_LEN};

/// Parses a hex field as people type it (`0FAC`, `0x0fac`, `fac`), up to `max`:
/// at most the field's width in digits (4, or 2 for a field up to FF). A
/// digit too many is a typo, never read as another id: `0FAC0` is not
/// device 0FAC0's last four digits, FAC0.
pub fn parse_hex(text: &str, name: &str, max: u32) -> Result<u32, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let width = if max > 0xFF { 4 } else { 2 };
    let range = format!("{:0w$X}-{max:0w$X}", 0, w = width);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("invalid {name} '{text}': expected hex {range}"));
    }
    if digits.len() > width {
        return Err(format!(
            "invalid {name} '{text}': {} hex digits, expected at most {width} ({range})",
            digits.len()
        ));
    }
    match u32::from_str_radix(digits, 16) {
        Ok(v) if v <= max => Ok(v),
        _ => Err(format!(
            "{name} '{text}' is out of range: expected hex {range}"
        )),
    }
}

/// The course's device id: the 16-bit sum of the six bytes of a MAC address given
/// as `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabbccddeeff`.
pub fn device_id_from_mac(mac: &str) -> Result<u16, String> {
    let bad = || {
        format!(
            "invalid MAC address '{mac}': expected aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff"
        )
    };
    let parts: Vec<&str> = if mac.contains(':') {
        mac.split(':').collect()
    } else if mac.contains('-') {
        mac.split('-').collect()
    } else if mac.len() == 12 && mac.is_ascii() {
        (0..6).map(|i| &mac[2 * i..2 * i + 2]).collect()
    } else {
        return Err(bad());
    };
    if parts.len() != 6 {
        return Err(bad());
    }
    parts.iter().try_fold(0u16, |sum, part| {
        if part.len() != 2 {
            return Err(bad());
        }
        let byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        Ok(sum.wrapping_add(u16::from(byte)))
    })
}

/// Decodes the escapes `wwep send` takes: `\n`, `\r`, `\t`, `\\` and `\xNN`.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = text
                    .get(i + 2..i + 4)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        format!("invalid escape at byte {i} of '{text}': \\x needs two hex digits")
                    })?;
                out.push(hex);
                i += 4;
                continue;
            }
            _ => {
                return Err(format!(
                    "invalid escape at byte {i} of '{text}': use \\n, \\r, \\t, \\\\ or \\xNN"
                ));
            }
        }
        i += 2;
    }
    Ok(out)
}

/// `--mix`: `write`, `read`, or `R/W` percentages such as `80/20` (80 % reads).
pub fn mix(text: &str) -> Result<Mix, String> {
    match text {
        "write" => Ok(Mix::Write),
        "read" => Ok(Mix::Read),
        _ => {
            let bad = || {
                format!(
                    "invalid --mix '{text}': expected write, read or READ/WRITE percentages like 80/20"
                )
            };
            let (r, w) = text.split_once('/').ok_or_else(bad)?;
            let (r, w): (u8, u8) = (r.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?);
            if u16::from(r) + u16::from(w) != 100 {
                return Err(format!(
                    "invalid --mix '{text}': the percentages must add up to 100"
                ));
            }
            Ok(Mix::WritePercent(w))
        }
    }
}

/// The ranges of the numeric flags, each checked where the flag is parsed:
/// a value outside is one line naming the flag and its range (clap adds
/// the flag's name to the words here).
pub const MAX_SECONDS: f64 = 1_000_000.0;
pub const MIN_RATE: f64 = 0.001;
pub const MAX_RATE: f64 = 10_000_000.0;
pub const MAX_MILLISECONDS: u64 = 3_600_000;

/// A number from `min` to `max`, its range named in the error.
fn within(text: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// `--duration`: seconds to measure, more than zero.
pub fn duration(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= MAX_SECONDS => Ok(v),
        _ => Err(format!(
            "expected a number of seconds more than 0 and at most {MAX_SECONDS}"
        )),
    }
}

/// `--warmup`: seconds, zero or more.
pub fn warmup(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=MAX_SECONDS).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a number of seconds from 0 to {MAX_SECONDS}"
        )),
    }
}

/// `--rate`: transactions per second; the least keeps a worker's slot
/// spacing a time the clock can hold.
pub fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (MIN_RATE..=MAX_RATE).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected transactions per second from {MIN_RATE} to {MAX_RATE}"
        )),
    }
}

/// `--concurrency`: workers, one thread each.
pub fn concurrency(text: &str) -> Result<u64, String> {
    within(text, 1, bench::MAX_CONCURRENCY as u64)
}

/// `--requests`: at least one.
pub fn requests(text: &str) -> Result<u64, String> {
    within(text, 1, u64::MAX)
}

/// `--devices`: how many device ids, of the 65,536 there are.
pub fn devices(text: &str) -> Result<u32, String> {
    within(text, 1, u64::from(bench::MAX_DEVICES)).map(|n| n as u32)
}

/// `--idle`, `--slow`: abuse connections, none or more.
pub fn abuse_connections(text: &str) -> Result<usize, String> {
    within(text, 0, bench::MAX_ABUSE_CONNECTIONS as u64).map(|n| n as usize)
}

/// `--slow-interval-ms`, `--timeout-ms`: milliseconds, up to an hour.
pub fn milliseconds(text: &str) -> Result<u64, String> {
    within(text, 1, MAX_MILLISECONDS)
}

/// `--expect-reply`: an `A` reply, exactly as a server sends it.
pub fn accepted_reply(text: &str) -> Result<Reply, String> {
    match Reply::parse(text.as_bytes()) {
        Some(reply @ Reply::Accepted { .. }) if text.len() == WRITE_LEN => Ok(reply),
        _ => Err("expected an A reply such as A0FAC0B1234".into()),
    }
}

/// A source address for load and abuse connections: loopback only, so a
/// benchmark can never be pointed at someone else's network from here.
pub fn loopback(text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("'{text}' is not an IP address"))?;
    if ip.is_loopback() {
        Ok(ip)
    } else {
        Err(format!(
            "{ip} is not a loopback address (127.0.0.0/8 or ::1)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_fields_as_people_type_them() {
        assert_eq!(parse_hex("0FAC", "DEVICE", 0xFFFF), Ok(0x0FAC));
        assert_eq!(parse_hex("0x0fac", "DEVICE", 0xFFFF), Ok(0x0FAC));
        assert_eq!(parse_hex("fac", "DEVICE", 0xFFFF), Ok(0x0FAC));
        assert_eq!(parse_hex("FF", "REGISTER", 0xFF), Ok(0xFF));
        assert_eq!(parse_hex("0", "VALUE", 0xFFFF), Ok(0));
        assert_eq!(
            parse_hex("100", "REGISTER", 0xFF),
            Err("invalid REGISTER '100': 3 hex digits, expected at most 2 (00-FF)".to_string())
        );
        // A digit too many is refused, never read as another device.
        assert_eq!(
            parse_hex("0FAC0", "DEVICE", 0xFFFF),
            Err("invalid DEVICE '0FAC0': 5 hex digits, expected at most 4 (0000-FFFF)".to_string())
        );
        assert!(parse_hex("0x0FAC0", "DEVICE", 0xFFFF).is_err());
        assert!(parse_hex("00012", "VALUE", 0xFFFF).is_err());
        assert!(parse_hex("005", "REGISTER", 0xFF).is_err());
        for bad in ["", "0x", "xyz", "-1", "12 3", "0xfffffffff"] {
            let err = parse_hex(bad, "VALUE", 0xFFFF).unwrap_err();
            assert!(err.contains("VALUE"), "{err}");
        }
    }

    #[test]
    fn mac_device_id_is_the_byte_sum() {
        // 0xaa+0xbb+0xcc+0xdd+0xee+0xff = 0x04FB
        assert_eq!(device_id_from_mac("aa:bb:cc:dd:ee:ff"), Ok(0x04FB));
        assert_eq!(device_id_from_mac("AA-BB-CC-DD-EE-FF"), Ok(0x04FB));
        assert_eq!(device_id_from_mac("aabbccddeeff"), Ok(0x04FB));
        assert_eq!(device_id_from_mac("00:00:00:00:00:01"), Ok(1));
        assert_eq!(device_id_from_mac("ff:ff:ff:ff:ff:ff"), Ok(0x05FA));
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aabbccddeef",
            "aa:bb:cc:dd:ee:gg",
            "a:bb:cc:dd:ee:fff",
            "ééééééé",
        ] {
            assert!(device_id_from_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn send_escapes() {
        assert_eq!(unescape("W01234"), Ok(b"W01234".to_vec()));
        assert_eq!(unescape("R0FAC0B\\r\\n"), Ok(b"R0FAC0B\r\n".to_vec()));
        assert_eq!(unescape("\\x00\\xfF\\\\\\t"), Ok(b"\x00\xff\\\t".to_vec()));
        assert!(unescape("\\q").is_err());
        assert!(unescape("\\x1").is_err());
        assert!(unescape("\\").is_err());
    }

    #[test]
    fn mixes() {
        assert_eq!(mix("write"), Ok(Mix::Write));
        assert_eq!(mix("read"), Ok(Mix::Read));
        assert_eq!(mix("80/20"), Ok(Mix::WritePercent(20)));
        for bad in ["", "50/60", "a/b", "100", "-1/101"] {
            assert!(mix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bench_values() {
        assert_eq!(duration("1.5"), Ok(1.5));
        for bad in ["0", "-1", "NaN", "inf", "x", "", "1e7"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert_eq!(warmup("0"), Ok(0.0));
        for bad in ["-1", "NaN", "inf", "x", "", "1e7"] {
            assert!(warmup(bad).is_err(), "{bad}");
        }
        assert_eq!(rate("250"), Ok(250.0));
        assert_eq!(rate("0.5"), Ok(0.5));
        for bad in ["0", "-3", "NaN", "inf", "fast", "1e-300", "1e300"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        assert_eq!(concurrency("3"), Ok(3));
        assert_eq!(requests("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(devices("65536"), Ok(65536));
        assert_eq!(abuse_connections("0"), Ok(0));
        assert_eq!(milliseconds("1"), Ok(1));
        for bad in ["0", "-1", "1.5", ""] {
            assert!(concurrency(bad).is_err(), "{bad}");
            assert!(requests(bad).is_err(), "{bad}");
            assert!(devices(bad).is_err(), "{bad}");
            assert!(milliseconds(bad).is_err(), "{bad}");
        }
        assert_eq!(
            devices("65537"),
            Err("expected a whole number from 1 to 65536".to_string())
        );
        assert!(concurrency("10001").is_err());
        assert!(abuse_connections("10001").is_err());
        assert!(milliseconds("3600001").is_err());
        assert_eq!(
            accepted_reply("A0FAC0B1234"),
            Ok(Reply::Accepted {
                device: 0x0FAC,
                register: 0x0B,
                value: 0x1234
            })
        );
        for bad in ["X", "A0FAC0B1234\n", "W0FAC0B1234", "A0FAC0B12", ""] {
            assert!(accepted_reply(bad).is_err(), "{bad:?}");
        }
        assert_eq!(loopback("127.0.0.3"), Ok("127.0.0.3".parse().unwrap()));
        assert_eq!(loopback("::1"), Ok("::1".parse().unwrap()));
        assert_eq!(
            loopback("192.168.1.1"),
            Err("192.168.1.1 is not a loopback address (127.0.0.0/8 or ::1)".to_string())
        );
        assert!(loopback("localhost").is_err());
    }
}
