//! How the `wwep` binary prints replies: text or one JSON object, and the exit
//! status that goes with each.

use std::process::ExitCode;

use wwep::protocol::{Escaped, Reply};

/// Prints a reply and picks the exit status: 0 for A, 1 for X, 2 for anything else.
pub fn report(reply: &[u8], json: bool, state: Option<&str>) -> Result<ExitCode, String> {
    let parsed = Reply::parse(reply);
    let text = reply
        .strip_suffix(b"\r\n")
        .or_else(|| reply.strip_suffix(b"\n"))
        .unwrap_or(reply);
    if json {
        let (accepted, device, register, value) = match parsed {
            Some(Reply::Accepted {
                device,
                register,
                value,
            }) => (
                "true",
                format!("\"{device:04X}\""),
                format!("\"{register:02X}\""),
                format!("\"{value:04X}\""),
            ),
            _ => ("false", "null".into(), "null".into(), "null".into()),
        };
        let state = state
            .map(|s| format!(",\"state\":\"{s}\""))
            .unwrap_or_default();
        println!(
            "{{\"reply\":{},\"accepted\":{accepted},\"device\":{device},\"register\":{register},\"value\":{value}{state}}}",
            json_string(text)
        );
    } else {
        match state {
            Some(state) if matches!(parsed, Some(Reply::Accepted { .. })) => println!("{state}"),
            _ => println!("{}", Escaped(text)),
        }
    }
    Ok(match parsed {
        Some(Reply::Accepted { .. }) => ExitCode::SUCCESS,
        Some(Reply::Failed(_)) => ExitCode::from(1),
        None => {
            eprintln!(
                "wwep: the server's reply is not WWEP: \"{}\"",
                Escaped(reply)
            );
            ExitCode::from(2)
        }
    })
}

/// A JSON string literal for bytes a server sent.
pub fn json_string(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\u{:04x}", b)),
        }
    }
    out.push('"');
    out
}
