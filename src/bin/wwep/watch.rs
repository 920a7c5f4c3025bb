//! `wwep watch [DEVICE]`: the writes a server acknowledges, one line each as
//! they happen, for scripts (`wwep watch 0FAC | while read device register
//! value transport time; do …; done`):
//!
//! ```text
//! 0FAC 0B 1234 plain 2026-12-06T23:59:59.123456Z
//! ```
//!
//! or, with `--json`, each event's JSON as the server sent it. It reads the
//! server's HTTP side (`wwep-server --http`), `GET /api/events`, a stream of
//! Server-Sent Events. Exit status: 0 when stopped (Ctrl-C, SIGTERM) or when
//! whoever reads its output stops reading; 1 when the stream breaks (the
//! server stopped, dropped this watcher, or fell silent); 2 when it cannot be
//! opened.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::args::parse_hex;
use crate::cli::ConnectionArgs;

/// The `--http` address when none is given: the port the documentation
/// uses for `wwep-server --http`, on this machine.
const DEFAULT_HTTP: &str = "127.0.0.1:9708";
/// The port of an `--http` address given without one.
const DEFAULT_HTTP_PORT: u16 = 9708;
/// The server sends a comment after 15 s of silence: three missed in a row
/// mean the stream is gone.
const SILENCE: Duration = Duration::from_secs(45);
/// The longest answer head read.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Only this device's writes (hex 0000-FFFF; or --device-from-mac).
    pub device: Option<String>,
    /// The server's HTTP side (its --http address) as HOST:PORT ([V6]:PORT for IPv6).
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_HTTP)]
    pub http: String,
}

/// One write, as the stream's `data:` line has it.
#[derive(Deserialize)]
struct WriteJson {
    device: String,
    register: String,
    value: String,
    transport: String,
    time: String,
}

/// Why the stream ended.
enum End {
    /// Whoever reads the output stopped reading.
    OutputClosed,
    /// The server ended it; the line saying how.
    Broken(String),
}

/// Runs `wwep watch`; `Err` is the one line of a stream that cannot be
/// opened (exit 2).
pub fn run(
    args: &WatchArgs,
    c: &ConnectionArgs,
    mac_device: Option<u16>,
    json: bool,
) -> Result<ExitCode, String> {
    if c.tls {
        return Err("watch reads the server's --http side, which is plain HTTP: drop --tls".into());
    }
    let timeout = Duration::from_millis(c.timeout_ms);
    let device = match (&args.device, mac_device) {
        (Some(_), Some(_)) => return Err("give DEVICE or --device-from-mac, not both".into()),
        (Some(d), None) => Some(parse_hex(d, "DEVICE", 0xFFFF)? as u16),
        (None, d) => d,
    };
    if timeout.is_zero() {
        return Err("--timeout-ms must be greater than 0".into());
    }
    let addr = resolve(&args.http)?;
    // Stopping it is its normal end: exit 0 at once, whatever it is doing.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            signal,
            0,
            Arc::new(AtomicBool::new(true)),
        )
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let stream = open(&args.http, addr, device, timeout)?;
    match follow(stream, json) {
        End::OutputClosed => Ok(ExitCode::SUCCESS),
        End::Broken(why) => {
            eprintln!("wwep: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The address of `--http`: HOST:PORT, HOST alone (port 9708), `[V6]:PORT`.
fn resolve(given: &str) -> Result<SocketAddr, String> {
    let with_port = if !given.contains(':') || (given.starts_with('[') && given.ends_with(']')) {
        format!("{given}:{DEFAULT_HTTP_PORT}")
    } else {
        given.to_string()
    };
    if with_port.matches(':').count() > 1 && !with_port.starts_with('[') {
        return Err(format!(
            "--http {given}: an IPv6 address goes in brackets, e.g. [::1]:{DEFAULT_HTTP_PORT}"
        ));
    }
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve --http {given}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve --http {given}: no address"))
}

/// Connects and asks for the stream; the connection positioned at the
/// stream's first byte.
fn open(
    given: &str,
    addr: SocketAddr,
    device: Option<u16>,
    timeout: Duration,
) -> Result<BufReader<TcpStream>, String> {
    let cannot =
        |what: &str, e: &dyn std::fmt::Display| format!("cannot watch --http {given}: {what}: {e}");
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| cannot("connect", &e))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| cannot("socket", &e))?;
    let query = device.map_or(String::new(), |d| format!("?device={d:04X}"));
    let request = format!(
        "GET /api/events{query} HTTP/1.1\r\nHost: {given}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| cannot("send", &e))?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") && !head.ends_with("\n\n") {
        let before = head.len();
        match reader.read_line(&mut head) {
            Ok(0) if head.is_empty() => {
                return Err(format!(
                    "cannot watch --http {given}: closed without an answer (is it the server's --http address, and is this address in its --http-allow?)"
                ));
            }
            Ok(0) => return Err(cannot("answer", &"cut short")),
            Ok(_) if head.len() > MAX_HEAD => return Err(cannot("answer", &"head too long")),
            Ok(_) => {}
            Err(e) if head.len() == before && e.kind() == io::ErrorKind::InvalidData => {
                return Err(cannot("answer", &"not HTTP"));
            }
            Err(e) => return Err(cannot("answer", &e)),
        }
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/"))
        .ok_or_else(|| cannot("answer", &"not HTTP"))?;
    if status != 200 {
        let mut body = Vec::new();
        let _ = reader.take(4096).read_to_end(&mut body);
        let body = String::from_utf8_lossy(&body);
        let said = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.lines().next().unwrap_or_default().to_string());
        return Err(format!("cannot watch --http {given}: {status}: {said}"));
    }
    let lower = head.to_ascii_lowercase();
    if !lower.contains("content-type: text/event-stream") {
        return Err(cannot("answer", &"not an event stream (an older server?)"));
    }
    reader
        .get_ref()
        .set_read_timeout(Some(SILENCE))
        .map_err(|e| cannot("socket", &e))?;
    Ok(reader)
}

/// Prints each write the stream carries until it ends.
fn follow(mut stream: BufReader<TcpStream>, json: bool) -> End {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut event = String::new();
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        match stream.read_line(&mut line) {
            Ok(0) => return End::Broken("the server ended the stream".into()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return End::Broken(format!(
                    "the stream fell silent for {} s",
                    SILENCE.as_secs()
                ));
            }
            Err(e) => return End::Broken(format!("the stream broke: {e}")),
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if !text.is_empty() {
            // A field; a comment (`: keep-alive`) and `retry:` change nothing.
            let (field, value) = text.split_once(':').unwrap_or((text, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_string(),
                "data" => data = value.to_string(),
                _ => {}
            }
            continue;
        }
        // A blank line ends the event.
        let kind = std::mem::take(&mut event);
        let body = std::mem::take(&mut data);
        match kind.as_str() {
            "write" => {
                let printed = if json {
                    writeln!(out, "{body}")
                } else {
                    match serde_json::from_str::<WriteJson>(&body) {
                        Ok(w) => writeln!(
                            out,
                            "{} {} {} {} {}",
                            w.device, w.register, w.value, w.transport, w.time
                        ),
                        Err(_) => return End::Broken(format!("not a write event: {body}")),
                    }
                };
                if printed.is_err() {
                    return End::OutputClosed;
                }
            }
            "dropped" => {
                let reason = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                    .unwrap_or(body);
                return End::Broken(match reason.as_str() {
                    "behind" => "the server dropped this watcher: it fell too far behind".into(),
                    "stalled" => "the server dropped this watcher: it stopped reading".into(),
                    "shed" => {
                        "the server dropped this watcher to make room (--http-max-connections)"
                            .into()
                    }
                    "stopping" => "the server is stopping".into(),
                    other => format!("the server dropped this watcher: {other}"),
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_address_takes_a_default_port_and_bracketed_ipv6() {
        assert_eq!(
            resolve("127.0.0.1:1234"),
            Ok("127.0.0.1:1234".parse().unwrap())
        );
        assert_eq!(resolve("127.0.0.1"), Ok("127.0.0.1:9708".parse().unwrap()));
        assert_eq!(resolve("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        assert_eq!(resolve("[::1]"), Ok("[::1]:9708".parse().unwrap()));
        let bare = resolve("::1:80").unwrap_err();
        assert!(bare.contains("in brackets, e.g. [::1]:9708"), "{bare}");
    }
}
