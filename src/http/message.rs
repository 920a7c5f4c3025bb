//! The HTTP message grammar this side speaks, with no I/O: a request head
//! parsed by `httparse` into what the routes need (method, path, keep-alive,
//! whether a body follows), and an answer written as bytes. The event loop
//! (`server.rs`) and the routes (`routes.rs`) both stand on it.

/// The largest request head (request line and headers).
pub const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;

/// An answer: status, headers and body.
pub struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    pub fn from_string(body: String) -> Response {
        Response {
            status: 200,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    pub fn with_status_code(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    pub fn with_header(mut self, header: (&'static str, &str)) -> Response {
        self.headers.push((header.0, header.1.to_string()));
        self
    }

    /// The bytes on the wire; `head_only` for HEAD.
    pub fn to_bytes(&self, head_only: bool, keep_alive: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A request head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub keep_alive: bool,
    pub has_body: bool,
}

/// What the bytes so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head of this many bytes.
    Complete(Head, usize),
    /// Not yet a whole head.
    Partial,
    /// An answer to send before closing: 400 or 431.
    Refuse(u16),
}

/// Parses a request head from the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => {
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
            };
            let connection = header("connection").unwrap_or_default();
            let keep_alive = match request.version {
                Some(1) => !connection.split(',').any(|t| t.trim() == "close"),
                _ => connection.split(',').any(|t| t.trim() == "keep-alive"),
            };
            let has_body = header("transfer-encoding").is_some()
                || header("content-length").is_some_and(|v| v != "0");
            Parsed::Complete(
                Head {
                    method: request.method.unwrap_or("").to_string(),
                    path: request.path.unwrap_or("").to_string(),
                    keep_alive,
                    has_body,
                },
                n,
            )
        }
        Ok(httparse::Status::Complete(_)) => Parsed::Refuse(431),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Parsed::Refuse(431),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Refuse(431),
        Err(_) => Parsed::Refuse(400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn every_prefix_of_a_request_is_partial() {
        for i in 0..GET.len() {
            assert_eq!(parse(&GET[..i]), Parsed::Partial, "prefix {i}");
        }
        match parse(GET) {
            Parsed::Complete(head, n) => {
                assert_eq!(n, GET.len());
                assert_eq!(head.method, "GET");
                assert_eq!(head.path, "/health");
                assert!(head.keep_alive);
                assert!(!head.has_body);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let head = |raw: &[u8]| match parse(raw) {
            Parsed::Complete(head, _) => head,
            other => panic!("{other:?}"),
        };
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").has_body);
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse(&big), Parsed::Refuse(431));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Parsed::Refuse(431));
        assert_eq!(parse(b"GET\x01 / HTTP/1.1\r\n\r\n"), Parsed::Refuse(400));
    }
}
