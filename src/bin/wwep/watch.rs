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
//! whoever reads its output stops reading (noticed at once, even with no
//! write to print); 1 when the stream breaks (the server stopped, dropped
//! this watcher, or fell silent); 2 when it cannot be opened.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;
use rustix::event::{PollFd, PollFlags, Timespec};
use serde::Deserialize;
use wwep::client::{AddressError, ServerAddress};
use wwep::protocol::Escaped;

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
    /// The server's HTTP side (its --http address) as HOST:PORT ([V6]:PORT for
    /// IPv6) or http://HOST:PORT/; port 9708 when none is given.
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
    let (bare, addrs) = resolve(&args.http)?;
    // Stopping it is its normal end: exit 0 at once, whatever it is doing.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            signal,
            0,
            Arc::new(AtomicBool::new(true)),
        )
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let stream = open(&args.http, bare, &addrs, device, timeout)?;
    match follow(stream, json) {
        End::OutputClosed => Ok(ExitCode::SUCCESS),
        End::Broken(why) => {
            eprintln!("wwep: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The address of `--http`, read as `--server` is (HOST:PORT, HOST alone
/// for port 9708, `[V6]:PORT`), also as the URL a browser shows for it
/// (`http://HOST:PORT/`): the address without scheme and slash, and where
/// the addresses it resolves to, tried in turn.
fn resolve(given: &str) -> Result<(&str, Vec<SocketAddr>), String> {
    let bare = http_address(given)?;
    let address = ServerAddress::parse_flag(bare, "--http").map_err(|e| e.to_string())?;
    // `::1:80` is one IPv6 address, but `[::1]:80` was more likely meant.
    if let Some((host, port)) = address.maybe_port() {
        return Err(AddressError::UnbracketedIpv6 {
            flag: "--http",
            host: host.to_string(),
            port,
        }
        .to_string());
    }
    let port = address.port.unwrap_or(DEFAULT_HTTP_PORT);
    let addrs: Vec<SocketAddr> = (address.host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve --http {given}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve --http {given}: no address"));
    }
    Ok((bare, addrs))
}

/// `--http` without an `http://` in front and a `/` behind; other schemes
/// and paths are refused.
fn http_address(given: &str) -> Result<&str, String> {
    let lower = given.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        return Err(format!(
            "--http '{given}': the server's HTTP side is plain HTTP, not HTTPS: give HOST:PORT or http://HOST:PORT"
        ));
    } else if lower.starts_with("http://") {
        &given["http://".len()..]
    } else if let Some((scheme, _)) = given.split_once("://") {
        return Err(format!(
            "--http '{given}': expected HOST:PORT or http://HOST:PORT, not a {scheme}:// address"
        ));
    } else {
        given
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!(
            "--http '{given}': expected HOST:PORT or http://HOST:PORT, without a path (watch asks for /api/events itself)"
        ));
    }
    Ok(rest)
}

/// Connects and asks for the stream; the connection positioned at the
/// stream's first byte. `host` is the address as the Host header has it.
fn open(
    given: &str,
    host: &str,
    addrs: &[SocketAddr],
    device: Option<u16>,
    timeout: Duration,
) -> Result<BufReader<TcpStream>, String> {
    let cannot =
        |what: &str, e: &dyn std::fmt::Display| format!("cannot watch --http {given}: {what}: {e}");
    // `localhost` may be ::1 and 127.0.0.1: the server listens on one.
    let mut connected = Err(io::Error::from(io::ErrorKind::AddrNotAvailable));
    for addr in addrs {
        connected = TcpStream::connect_timeout(addr, timeout);
        if connected.is_ok() {
            break;
        }
    }
    let mut stream = connected.map_err(|e| cannot("connect", &e))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| cannot("socket", &e))?;
    let query = device.map_or(String::new(), |d| format!("?device={d:04X}"));
    let request = format!(
        "GET /api/events{query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| cannot("send", &e))?;
    let mut reader = BufReader::new(stream);
    // Bytes, not text: what a port that is not HTTP sends need not be UTF-8.
    let mut head: Vec<u8> = Vec::new();
    let not_http = |head: &[u8]| {
        let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let first = first.strip_suffix(b"\r").unwrap_or(first);
        let first = &first[..first.len().min(40)];
        format!(
            "cannot watch --http {given}: it does not look like the server's HTTP port: it answered \"{}\", not HTTP (the HTTP port is the one given to wwep-server --http)",
            Escaped(first)
        )
    };
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        match reader.read_until(b'\n', &mut head) {
            Ok(0) if head.is_empty() => {
                return Err(format!(
                    "cannot watch --http {given}: closed without an answer (is it the server's --http address, and is this address in its --http-allow?)"
                ));
            }
            // A WWEP port answers `X` and closes; anything else that is not
            // the start of `HTTP/` is no HTTP server either.
            _ if !answers_http(&head) => return Err(not_http(&head)),
            Ok(0) => return Err(cannot("answer", &"cut short")),
            Ok(_) if head.len() > MAX_HEAD => return Err(cannot("answer", &"head too long")),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let waited = timeout.as_millis();
                return Err(if head.is_empty() {
                    format!(
                        "cannot watch --http {given}: no answer within {waited} ms (is it the server's --http address?)"
                    )
                } else {
                    cannot(
                        "answer",
                        &format!("cut short: nothing more within {waited} ms"),
                    )
                });
            }
            Err(e) => return Err(cannot("answer", &e)),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
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

/// Whether the bytes so far can be an HTTP answer: they begin `HTTP/`, or
/// are the start of it.
fn answers_http(head: &[u8]) -> bool {
    const HTTP: &[u8] = b"HTTP/";
    let n = head.len().min(HTTP.len());
    head[..n] == HTTP[..n]
}

/// What waiting for the stream's next bytes ended with.
enum Waited {
    /// The stream has something to read (or has ended: the read says).
    Readable,
    /// Nothing came for [`SILENCE`].
    Silent,
    /// The output's pipe is closed: whoever read it has gone.
    OutputClosed,
}

fn silent() -> End {
    End::Broken(format!(
        "the stream fell silent for {} s",
        SILENCE.as_secs()
    ))
}

/// Waits for the stream's next bytes, up to [`SILENCE`], watching the output
/// too: when whoever reads it goes away (`| head -1`), a pipe's write end
/// reports POLLERR at once, and the watcher ends then, not at the next write
/// it would fail to print, which on a quiet device may never come. `watch_out`
/// is cleared when the output cannot be polled (closed from the start).
fn wait(stream: &TcpStream, watch_out: &mut bool) -> Waited {
    let stdout = io::stdout();
    let silence = Timespec {
        tv_sec: SILENCE.as_secs() as _,
        tv_nsec: 0,
    };
    loop {
        // No events asked of the output: POLLERR, POLLHUP and POLLNVAL are
        // reported whatever is asked.
        let mut fds = [
            PollFd::new(stream, PollFlags::IN),
            PollFd::new(&stdout, PollFlags::empty()),
        ];
        let polled = if *watch_out {
            &mut fds[..]
        } else {
            &mut fds[..1]
        };
        match rustix::event::poll(polled, Some(&silence)) {
            Ok(0) => return Waited::Silent,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            // A poll that fails leaves the read to wait, as before.
            Err(_) => return Waited::Readable,
        }
        let out = fds[1].revents();
        if *watch_out && out.intersects(PollFlags::ERR | PollFlags::HUP) {
            return Waited::OutputClosed;
        }
        if *watch_out && out.contains(PollFlags::NVAL) {
            // No output to watch; a write to it fails and ends the watcher.
            *watch_out = false;
            if fds[0].revents().is_empty() {
                continue;
            }
        }
        return Waited::Readable;
    }
}

/// Prints each write the stream carries until it ends.
fn follow(mut stream: BufReader<TcpStream>, json: bool) -> End {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut event = String::new();
    let mut data = String::new();
    let mut line = String::new();
    let mut watch_out = true;
    loop {
        line.clear();
        // Only with nothing buffered: a line already read needs no wait.
        if stream.buffer().is_empty() {
            match wait(stream.get_ref(), &mut watch_out) {
                Waited::Readable => {}
                Waited::Silent => return silent(),
                Waited::OutputClosed => return End::OutputClosed,
            }
        }
        match stream.read_line(&mut line) {
            // The server drops a watcher with `event: dropped` and a reason;
            // a stream that ends without one was cut by something else (the
            // server killed, a proxy, a watcher dropped before its reason
            // could be sent), and the line does not guess which.
            Ok(0) => {
                return End::Broken(
                    "the stream ended without a reason (the server may have dropped this watcher for falling behind, or gone away)"
                        .into(),
                );
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return silent();
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
    fn the_http_address_is_read_as_server_is_or_as_its_url() {
        let ok = |given: &str| resolve(given).map(|(_, addrs)| addrs[0].to_string());
        assert_eq!(ok("127.0.0.1:1234"), Ok("127.0.0.1:1234".into()));
        assert_eq!(ok("127.0.0.1"), Ok("127.0.0.1:9708".into()));
        assert_eq!(ok("[::1]:80"), Ok("[::1]:80".into()));
        assert_eq!(ok("[::1]"), Ok("[::1]:9708".into()));
        // As a browser shows it: the scheme and the slash left out.
        assert_eq!(ok("http://127.0.0.1:37605"), Ok("127.0.0.1:37605".into()));
        assert_eq!(ok("HTTP://127.0.0.1:37605/"), Ok("127.0.0.1:37605".into()));
        assert_eq!(ok("127.0.0.1:37605/"), Ok("127.0.0.1:37605".into()));
        assert_eq!(ok("http://[::1]:80/"), Ok("[::1]:80".into()));
        assert_eq!(
            resolve("http://127.0.0.1:37605/").map(|(bare, _)| bare),
            Ok("127.0.0.1:37605")
        );
        // The same words as --server's, naming --http.
        let err = |given: &str| resolve(given).unwrap_err();
        assert_eq!(
            err("::1:80"),
            "IPv6 addresses need brackets: --http [::1]:80, not ::1:80"
        );
        assert_eq!(err(":37605"), "missing host in --http ':37605'");
        assert_eq!(err("host:"), "missing port after ':' in --http 'host:'");
        assert_eq!(
            err("[::1]:99999"),
            "invalid port '99999' in --http '[::1]:99999' (expected 0-65535)"
        );
        assert!(err("https://127.0.0.1:1").contains("plain HTTP, not HTTPS"));
        assert!(err("ftp://127.0.0.1:1").contains("not a ftp:// address"));
        assert!(err("http://127.0.0.1:1/api/events").contains("without a path"));
    }

    #[test]
    fn an_answer_is_http_while_it_can_still_begin_http() {
        for yes in [&b""[..], b"H", b"HTTP", b"HTTP/1.1 200 OK\r\n"] {
            assert!(answers_http(yes), "{yes:?}");
        }
        for no in [&b"X"[..], b"X\n", b"A0FAC0B1234", b"\x15\x03\x03", b"HTTX"] {
            assert!(!answers_http(no), "{no:?}");
        }
    }
}
