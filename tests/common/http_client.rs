//! The HTTP side as a test sees it: a `GET` on a fresh connection, read to the
//! close, every step under a time limit.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::IO_TIMEOUT;

/// An HTTP answer: the status, the head in lowercase (for header look-ups),
/// and the body.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// `GET path` over HTTP/1.0 from `from` (a source address on this machine,
/// such as `127.0.0.2`, or any), read to the close. A connection refused or
/// cut, or an answer that is not HTTP, is an error.
pub fn http_get_from(from: Option<&str>, addr: SocketAddr, path: &str) -> io::Result<HttpAnswer> {
    let mut stream = match from {
        None => TcpStream::connect_timeout(&addr, IO_TIMEOUT)?,
        Some(ip) => super::try_connect_from(ip, addr)?,
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {raw:?}"));
    let raw = String::from_utf8(raw.clone()).map_err(|_| bad("not UTF-8"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(HttpAnswer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// `GET path`; the test fails if there is no HTTP answer.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpAnswer {
    http_get_from(None, addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}
