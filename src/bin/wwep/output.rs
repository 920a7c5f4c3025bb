//! How the `wwep` binary prints replies: text or one JSON object, and the exit
//! status that goes with each.

use std::fmt;
use std::io;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::ser::Formatter;
use wwep::json::{Hex, Text};
use wwep::protocol::{Escaped, Reply};

/// Prints a reply and picks the exit status: 0 for A, 1 for X, 2 for anything
/// else. With `json`, stdout holds one JSON object exactly when the status is
/// 0 or 1; on 2 it is empty and stderr says why, as for every other error.
pub fn report(reply: &[u8], json: bool, state: Option<&str>) -> Result<ExitCode, String> {
    let parsed = Reply::parse(reply);
    let text = reply
        .strip_suffix(b"\r\n")
        .or_else(|| reply.strip_suffix(b"\n"))
        .unwrap_or(reply);
    let Some(parsed) = parsed else {
        if !json {
            println!("{}", Escaped(text));
        }
        eprintln!(
            "wwep: the server's reply is not WWEP: \"{}\"",
            Escaped(reply)
        );
        return Ok(ExitCode::from(2));
    };
    let accepted = match parsed {
        Reply::Accepted {
            device,
            register,
            value,
        } => Some((Hex(device), Hex(register), Hex(value))),
        Reply::Failed(_) => None,
    };
    if json {
        println!(
            "{}",
            to_json(&ReplyJson {
                reply: Text(Latin1(text)),
                accepted: accepted.is_some(),
                device: accepted.map(|a| a.0),
                register: accepted.map(|a| a.1),
                value: accepted.map(|a| a.2),
                state,
            })
        );
    } else {
        match state {
            Some(state) if accepted.is_some() => println!("{state}"),
            _ => println!("{}", Escaped(text)),
        }
    }
    Ok(if accepted.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A reply as `--json` prints it; `device`, `register` and `value` are `null`
/// unless it was an `A`.
#[derive(Serialize)]
struct ReplyJson<'a> {
    reply: Text<Latin1<'a>>,
    accepted: bool,
    device: Option<Hex<u16>>,
    register: Option<Hex<u8>>,
    value: Option<Hex<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
}

/// `wwep device-id --json`: the MAC as given and its device id.
pub fn device_id_json(mac: &str, device: u16) -> String {
    #[derive(Serialize)]
    struct DeviceIdJson<'a> {
        mac: &'a str,
        device: Hex<u16>,
    }
    to_json(&DeviceIdJson {
        mac,
        device: Hex(device),
    })
}

/// Bytes a server sent, each as the character of that code point, so any
/// byte survives into a JSON string.
struct Latin1<'a>(&'a [u8]);

impl fmt::Display for Latin1<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|&b| fmt::Write::write_char(f, char::from(b)))
    }
}

/// `value` as one line of JSON with everything outside printable ASCII
/// escaped, so what a server sent reaches the terminal as text, never as
/// control codes.
fn to_json(value: &impl Serialize) -> String {
    let mut out = Vec::new();
    value
        .serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, AsciiOnly,
        ))
        .expect("the CLI's JSON values serialize into memory");
    String::from_utf8(out).expect("escaped JSON is ASCII")
}

/// serde_json's compact output, with `\uXXXX` for every character of a string
/// outside printable ASCII (controls are escaped by serde_json itself).
struct AsciiOnly;

impl Formatter for AsciiOnly {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                writer.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_keep_every_byte_and_print_only_ascii() {
        let json = to_json(&Text(Latin1(b"A\"\\\n\x7f\x9b\xff")));
        assert_eq!(json, r#""A\"\\\n\u007f\u009b\u00ff""#);
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "A\"\\\n\u{7f}\u{9b}\u{ff}");
    }

    #[test]
    fn characters_beyond_the_first_plane_are_surrogate_pairs() {
        assert_eq!(to_json(&"é😀"), r#""\u00e9\ud83d\ude00""#);
    }
}
