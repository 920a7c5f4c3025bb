//! The blocking client the CLI, the benchmark and the tests use: one connection per
//! message, as the device clients do.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use socket2::{Domain, Socket, Type};

use crate::protocol::{DEFAULT_PLAIN_PORT, DEFAULT_TLS_PORT};
use crate::protocol::{
    ErrorDetail, Escaped, MAX_MESSAGE_BYTES, Reply, Request, Terminator, WRITE_LEN,
};
use crate::tls::client::{
    ConnectError, Connector, ResumingConnector, alert_received, answers_tls, looks_like_tls,
};

/// Where a client connects: `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    pub host: String,
    pub port: Option<u16>,
}

/// Why a `--server` (or `wwep watch --http`) value is not an address; each
/// names the flag it was given to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// `[V6` with no closing bracket.
    MissingBracket {
        flag: &'static str,
        text: String,
    },
    /// What follows the host is not `:PORT` with a port from 0 to 65535;
    /// the port as given, without its colon (empty when there is none).
    BadPort {
        flag: &'static str,
        text: String,
        port: String,
    },
    MissingHost {
        flag: &'static str,
        text: String,
    },
    /// `::1:27708`: an IPv6 address and a port, which only brackets tell
    /// apart; what was probably meant is `[host]:port`.
    UnbracketedIpv6 {
        flag: &'static str,
        host: String,
        port: u16,
    },
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::MissingBracket { flag, text } => {
                write!(f, "missing ']' in {flag} '{text}'")
            }
            AddressError::BadPort { flag, text, port } if port.is_empty() => {
                write!(f, "missing port after ':' in {flag} '{text}'")
            }
            AddressError::BadPort { flag, text, port } => {
                write!(
                    f,
                    "invalid port '{port}' in {flag} '{text}' (expected 0-65535)"
                )
            }
            AddressError::MissingHost { flag, text } => {
                write!(f, "missing host in {flag} '{text}'")
            }
            AddressError::UnbracketedIpv6 { flag, host, port } => write!(
                f,
                "IPv6 addresses need brackets: {flag} [{host}]:{port}, not {host}:{port}"
            ),
        }
    }
}

impl std::error::Error for AddressError {}

impl ServerAddress {
    /// A `--server` value.
    pub fn parse(text: &str) -> Result<ServerAddress, AddressError> {
        ServerAddress::parse_flag(text, "--server")
    }

    /// An address given to `flag`, which its errors name.
    pub fn parse_flag(text: &str, flag: &'static str) -> Result<ServerAddress, AddressError> {
        // The port as typed, without the colon that introduces it, whichever
        // form the host has (`h:99999` and `[::1]:99999` both say '99999').
        let bad_port = |p: &str| AddressError::BadPort {
            flag,
            text: text.to_string(),
            port: p.strip_prefix(':').unwrap_or(p).to_string(),
        };
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) =
                rest.split_once(']')
                    .ok_or_else(|| AddressError::MissingBracket {
                        flag,
                        text: text.to_string(),
                    })?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(|| bad_port(p))?,
                ),
            };
            return Ok(ServerAddress {
                host: host.to_string(),
                port,
            });
        }
        match text.matches(':').count() {
            0 => Ok(ServerAddress {
                host: text.to_string(),
                port: None,
            }),
            1 => {
                let (host, port) = text.split_once(':').unwrap_or((text, ""));
                Ok(ServerAddress {
                    host: host.to_string(),
                    port: Some(port.parse().map_err(|_| bad_port(port))?),
                })
            }
            // Several colons and no brackets: an IPv6 address without a port,
            // unless it is not one but becomes one without its last `:PORT`.
            _ => match unbracketed_port(text) {
                Some((host, port)) => Err(AddressError::UnbracketedIpv6 {
                    flag,
                    host: host.to_string(),
                    port,
                }),
                None => Ok(ServerAddress {
                    host: text.to_string(),
                    port: None,
                }),
            },
        }
        .and_then(|a| {
            if a.host.is_empty() {
                Err(AddressError::MissingHost {
                    flag,
                    text: text.to_string(),
                })
            } else {
                Ok(a)
            }
        })
    }
}

impl ServerAddress {
    /// For a bare IPv6 address whose last group could be a port (`::1:8080`
    /// is an address, but `[::1]:8080` may have been meant): the address
    /// without it and the port. Ports of one digit are not guessed at.
    pub fn maybe_port(&self) -> Option<(&str, u16)> {
        if self.port.is_some() {
            return None;
        }
        self.host.parse::<std::net::Ipv6Addr>().ok()?;
        let (host, last) = self.host.rsplit_once(':')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        if last.len() < 2 || !last.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((host, last.parse().ok()?))
    }
}

/// `V6:PORT` split in two, when `text` is not an IPv6 address itself but is
/// one followed by `:` and a port (`::1:40508`; `::1:4050` is an address).
fn unbracketed_port(text: &str) -> Option<(&str, u16)> {
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return None;
    }
    let (host, port) = text.rsplit_once(':')?;
    host.parse::<std::net::Ipv6Addr>().ok()?;
    Some((host, port.parse().ok()?))
}

/// What a client connection goes through.
#[derive(Clone)]
pub enum Link {
    Plain,
    Tls {
        connector: Connector,
        /// The name the certificate is verified against (and sent as SNI).
        servername: String,
    },
    /// TLS that offers the session of an earlier connection, as a board does.
    TlsResuming {
        connector: ResumingConnector,
        /// Handshakes done, and how many of them resumed a session.
        handshakes: Arc<AtomicU64>,
        resumed: Arc<AtomicU64>,
    },
}

impl Link {
    /// A resuming TLS link, counting its handshakes.
    pub fn resuming(connector: ResumingConnector) -> Link {
        Link::TlsResuming {
            connector,
            handshakes: Arc::new(AtomicU64::new(0)),
            resumed: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// An `A` that answers another request than the one sent: another device or
/// register, or for a write another value. Taken for the request's own, it
/// would report a write that never happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub sent: Request,
    /// The fields of the `A` that came back.
    pub device: u16,
    pub register: u8,
    pub value: u16,
}

impl Mismatch {
    /// The mismatch, when `reply` is an `A` that does not answer `sent`. (An
    /// `X` answers any request.)
    pub fn between(sent: &Request, reply: &Reply) -> Option<Mismatch> {
        let Reply::Accepted {
            device,
            register,
            value,
        } = *reply
        else {
            return None;
        };
        let answers = match *sent {
            Request::Read {
                device: d,
                register: r,
            } => (d, r) == (device, register),
            Request::Write {
                device: d,
                register: r,
                value: v,
            } => (d, r, v) == (device, register, value),
        };
        (!answers).then_some(Mismatch {
            sent: *sent,
            device,
            register,
            value,
        })
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = Reply::Accepted {
            device: self.device,
            register: self.register,
            value: self.value,
        }
        .encode(ErrorDetail::Bare, Terminator::None);
        let (verb, what) = match self.sent {
            Request::Read { .. } => ("answered", "read"),
            Request::Write { .. } => ("acknowledged", "write"),
        };
        write!(
            f,
            "the server {verb} {}, not the {what} that was sent ({})",
            Escaped(got.as_bytes()),
            Escaped(self.sent.encode().as_bytes())
        )
    }
}

/// Where in a transaction a connection failed or ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connecting,
    SettingUp,
    Handshake,
    Sending,
    WaitingForReply,
    ReadingReply,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connecting => "connecting",
            Stage::SettingUp => "setting up",
            Stage::Handshake => "in the TLS handshake",
            Stage::Sending => "sending",
            Stage::WaitingForReply => "waiting for the reply",
            Stage::ReadingReply => "reading the reply",
        })
    }
}

/// Why a transaction did not produce a reply, or not one for its request.
#[derive(Debug)]
pub enum ClientError {
    Resolve {
        host: String,
        reason: String,
    },
    Refused {
        addr: SocketAddr,
    },
    Connect {
        addr: SocketAddr,
        source: io::Error,
    },
    TimedOut {
        stage: Stage,
        after: Duration,
    },
    NotTrusted {
        reason: String,
    },
    HostnameMismatch {
        name: String,
    },
    Handshake {
        reason: String,
    },
    Io {
        stage: Stage,
        source: io::Error,
    },
    NoReply,
    /// A plain connection the server closed without a reply, on a port where
    /// it answers a TLS ClientHello (found by [`Client::diagnose`]).
    NoReplyButTls,
    /// A plain connection answered with what starts like a TLS record (an
    /// alert): the port is probably a TLS one.
    TlsRecord,
    /// A plain connection answered with an HTTP response: the port is an
    /// HTTP one (`wwep-server --http`), not a WWEP port.
    HttpPort,
    /// A TLS connection answered in clear text; the first bytes that came.
    ClearText {
        first: Vec<u8>,
    },
    /// An `A` for another register, or another value, than the request's.
    Mismatch(Mismatch),
    /// A connection that failed to a bare IPv6 address that may have been
    /// meant as an address and a port (see [`ServerAddress::maybe_port`]).
    MaybePort {
        source: Box<ClientError>,
        host: String,
        port: u16,
    },
}

impl ClientError {
    /// A short name for the kind of error, for counting in the benchmark.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Resolve { .. } => "resolve",
            ClientError::Refused { .. } | ClientError::Connect { .. } => "connect",
            ClientError::TimedOut { .. } => "timeout",
            ClientError::NotTrusted { .. }
            | ClientError::HostnameMismatch { .. }
            | ClientError::Handshake { .. }
            | ClientError::TlsRecord
            | ClientError::ClearText { .. } => "tls",
            ClientError::Io { .. }
            | ClientError::NoReply
            | ClientError::NoReplyButTls
            | ClientError::HttpPort => "io",
            ClientError::Mismatch(_) => "mismatch",
            ClientError::MaybePort { source, .. } => source.kind(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Resolve { host, reason } => write!(f, "cannot resolve {host}: {reason}"),
            ClientError::Refused { addr } => write!(f, "connection refused by {addr}"),
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            ClientError::TimedOut { stage, after } => {
                write!(f, "timed out after {} ms {stage}", after.as_millis())
            }
            ClientError::NotTrusted { reason } => write!(f, "certificate not trusted: {reason}"),
            ClientError::HostnameMismatch { name } => write!(
                f,
                "hostname mismatch: the server's certificate is not valid for '{name}' (see --servername)"
            ),
            ClientError::Handshake { reason } => write!(f, "TLS handshake failed: {reason}"),
            ClientError::Io { stage, source } => write!(f, "connection failed {stage}: {source}"),
            ClientError::NoReply => f.write_str("the server closed the connection without a reply"),
            ClientError::NoReplyButTls => f.write_str(
                "the server closed without a WWEP reply, and it answers TLS on this port: try --tls",
            ),
            ClientError::TlsRecord => f.write_str(
                "the server answered with a TLS record, not WWEP: it may be a TLS port (try --tls)",
            ),
            ClientError::HttpPort => f.write_str(
                "the server answered in HTTP: this is an HTTP port (wwep-server --http), not a WWEP port",
            ),
            ClientError::ClearText { first } if first.starts_with(b"HTTP/") => write!(
                f,
                "the server answered in clear text HTTP (\"{}\") where TLS was expected: this is an HTTP port (wwep-server --http), not a WWEP port",
                Escaped(first)
            ),
            ClientError::ClearText { first } => write!(
                f,
                "the server answered in clear text (\"{}\") where TLS was expected: is this the plain port? (drop --tls)",
                Escaped(first)
            ),
            ClientError::Mismatch(m) => m.fmt(f),
            ClientError::MaybePort { source, host, port } => write!(
                f,
                "{source} ({host}:{port} is one IPv6 address; if {port} is the port: --server [{host}]:{port})"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// A failed handshake, as one of the few causes a person can act on.
    fn handshake(e: ConnectError, servername: &str, timeout: Duration) -> ClientError {
        match e {
            ConnectError::HostnameMismatch => ClientError::HostnameMismatch {
                name: servername.to_string(),
            },
            ConnectError::NotTrusted(reason) => ClientError::NotTrusted { reason },
            ConnectError::Alert(alert) => ClientError::Handshake {
                reason: format!("the server refused the connection ({alert})"),
            },
            ConnectError::TimedOut => ClientError::TimedOut {
                stage: Stage::Handshake,
                after: timeout,
            },
            ConnectError::Io(source) => ClientError::Io {
                stage: Stage::Handshake,
                source,
            },
            ConnectError::ClearText(first) => ClientError::ClearText { first },
            ConnectError::Other(reason) => ClientError::Handshake { reason },
        }
    }
}

/// How an HTTP response starts: a reply that does, on a WWEP connection,
/// came from an HTTP port.
const HTTP: &[u8] = b"HTTP/";

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A client bound to one server: addresses resolved once, TLS set up once.
#[derive(Clone)]
pub struct Client {
    addrs: Arc<[SocketAddr]>,
    /// The address that answered last, tried first (shared by clones): a name
    /// that resolves to `::1` and `127.0.0.1` for a server on one of them costs a
    /// refused connect once, not on every transaction.
    preferred: Arc<AtomicUsize>,
    link: Link,
    timeout: Duration,
    source_ip: Option<std::net::IpAddr>,
    /// The address and port a bare IPv6 `--server` may have meant.
    maybe_port: Option<(String, u16)>,
}

impl Client {
    /// Resolves `address`; the port defaults by link (27708 plain, 40508 TLS).
    pub fn new(
        address: &ServerAddress,
        link: Link,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let port = address.port.unwrap_or(match link {
            Link::Plain => DEFAULT_PLAIN_PORT,
            Link::Tls { .. } | Link::TlsResuming { .. } => DEFAULT_TLS_PORT,
        });
        let addrs: Vec<SocketAddr> = (address.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| ClientError::Resolve {
                host: address.host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Resolve {
                host: address.host.clone(),
                reason: "no addresses".to_string(),
            });
        }
        Ok(Client {
            addrs: addrs.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            link,
            timeout,
            source_ip: None,
            maybe_port: address
                .maybe_port()
                .map(|(host, port)| (host.to_string(), port)),
        })
    }

    /// The addresses the server's name resolved to, the one that answered last first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let first = self.preferred.load(Ordering::Relaxed);
        (0..self.addrs.len())
            .map(|i| self.addrs[(first + i) % self.addrs.len()])
            .collect()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.link, Link::Tls { .. } | Link::TlsResuming { .. })
    }

    /// Connects from this local address (the benchmark's `--source-ip`).
    pub fn with_source_ip(mut self, ip: std::net::IpAddr) -> Client {
        self.source_ip = Some(ip);
        self
    }

    /// Tries each resolved address in turn (the one that answered last first)
    /// until `attempt` connects to one, and remembers which.
    fn connect_any<T>(
        &self,
        mut attempt: impl FnMut(SocketAddr) -> io::Result<T>,
    ) -> Result<T, ClientError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.addrs.len() {
            let index = (first + i) % self.addrs.len();
            let addr = self.addrs[index];
            match attempt(addr) {
                Ok(connected) => {
                    if index != first {
                        self.preferred.store(index, Ordering::Relaxed);
                    }
                    return Ok(connected);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    last = Some(ClientError::Refused { addr })
                }
                // A blocking connect that runs out of SO_SNDTIMEO fails with EINPROGRESS.
                Err(e) if is_timeout(&e) || Errno::from_io_error(&e) == Some(Errno::INPROGRESS) => {
                    last = Some(ClientError::TimedOut {
                        stage: Stage::Connecting,
                        after: self.timeout,
                    })
                }
                Err(source) => last = Some(ClientError::Connect { addr, source }),
            }
        }
        Err(last.unwrap_or(ClientError::TimedOut {
            stage: Stage::Connecting,
            after: self.timeout,
        }))
    }

    /// Connects within `deadline`, for the TLS path.
    fn connect(&self, deadline: Instant) -> Result<TcpStream, ClientError> {
        self.connect_any(|addr| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(ErrorKind::TimedOut));
            }
            match self.source_ip {
                Some(ip) => connect_from(ip, addr, left),
                None => TcpStream::connect_timeout(&addr, left),
            }
        })
    }

    /// One transaction: connect, handshake, send `request` exactly, read the reply
    /// until the server closes (or, for a request with no terminator, until 11 bytes,
    /// as a device does). The timeout covers all of it.
    pub fn transact(&self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut reply = [0u8; MAX_MESSAGE_BYTES];
        let len = self.transact_into(request, &mut reply)?;
        Ok(reply[..len].to_vec())
    }

    /// [`transact`](Client::transact) into a caller's buffer, without allocating:
    /// returns the length of the reply. On the open port this is the load
    /// generator's hot path, so it makes as few system calls as it can: socket,
    /// send timeout, connect, receive timeout, send, one read (usually), close.
    pub fn transact_into(
        &self,
        request: &[u8],
        reply: &mut [u8; MAX_MESSAGE_BYTES],
    ) -> Result<usize, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let device_style = !request.ends_with(b"\n");
        match &self.link {
            Link::Plain => {
                let stream = self.connect_plain(deadline)?;
                let len = exchange(
                    &stream,
                    request,
                    reply,
                    deadline,
                    self.timeout,
                    device_style,
                )?;
                // A WWEP reply starts with `A` or `X`; a record header (two
                // bytes at least, to be sure) is a TLS server's alert.
                if len >= 2 && looks_like_tls(&reply[..len]) {
                    return Err(ClientError::TlsRecord);
                }
                if reply[..len].starts_with(HTTP) {
                    return Err(ClientError::HttpPort);
                }
                Ok(len)
            }
            Link::Tls {
                connector,
                servername,
            } => {
                let stream = self.tls_socket(deadline)?;
                let tls = connector
                    .connect(servername, stream)
                    .map_err(|e| ClientError::handshake(e, servername, self.timeout))?;
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                let _ = tls.tcp().set_read_timeout(Some(left));
                exchange(tls, request, reply, deadline, self.timeout, device_style)
            }
            Link::TlsResuming {
                connector,
                handshakes,
                resumed,
            } => {
                let stream = self.tls_socket(deadline)?;
                let tls = connector
                    .connect(stream)
                    .map_err(|e| ClientError::handshake(e, connector.servername(), self.timeout))?;
                handshakes.fetch_add(1, Ordering::Relaxed);
                if tls.resumed() {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
                exchange(tls, request, reply, deadline, self.timeout, device_style)
            }
        }
    }

    /// A connection for a TLS handshake: Nagle off (the handshake is several
    /// small writes) and every read and write bounded by what is left of the
    /// transaction's time.
    fn tls_socket(&self, deadline: Instant) -> Result<TcpStream, ClientError> {
        let stream = self.connect(deadline)?;
        let _ = stream.set_nodelay(true);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(|source| ClientError::Io {
                stage: Stage::SettingUp,
                source,
            })?;
        Ok(stream)
    }

    /// For a resuming TLS link: handshakes done so far, and how many resumed.
    pub fn resumption(&self) -> Option<(u64, u64)> {
        match &self.link {
            Link::TlsResuming {
                handshakes,
                resumed,
                ..
            } => Some((
                handshakes.load(Ordering::Relaxed),
                resumed.load(Ordering::Relaxed),
            )),
            _ => None,
        }
    }

    /// A plain connection in the fewest system calls: a blocking socket whose send
    /// timeout bounds the connect and whose receive timeout, set once connected,
    /// is what is left for the reply, instead of a non-blocking connect, a poll and
    /// three more `setsockopt`s.
    fn connect_plain(&self, deadline: Instant) -> Result<Socket, ClientError> {
        self.connect_any(|addr| self.try_connect_plain(addr, deadline))
    }

    fn try_connect_plain(&self, addr: SocketAddr, deadline: Instant) -> io::Result<Socket> {
        let left = |deadline: Instant| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(io::Error::from(ErrorKind::TimedOut))
            } else {
                Ok(left)
            }
        };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_write_timeout(Some(left(deadline)?))?;
        if let Some(ip) = self.source_ip {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        socket.connect(&addr.into())?;
        // The reply gets what the connect left of the deadline.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        socket.set_read_timeout(Some(left))?;
        Ok(socket)
    }

    /// Sends a request and parses the reply; an `A` for another request is
    /// [`ClientError::Mismatch`].
    pub fn request(&self, request: Request) -> Result<Reply, ClientError> {
        let bytes = self.transact(request.encode().as_bytes())?;
        let reply = Reply::parse(&bytes).ok_or(ClientError::NoReply)?;
        match Mismatch::between(&request, &reply) {
            Some(m) => Err(ClientError::Mismatch(m)),
            None => Ok(reply),
        }
    }

    /// [`transact`](Client::transact), with the reply judged against the
    /// message when the message is a request (with or without its line end):
    /// an `A` for another register or value is [`ClientError::Mismatch`].
    /// Other messages' replies are returned as they came.
    pub fn transact_checked(&self, message: &[u8]) -> Result<Vec<u8>, ClientError> {
        let reply = self.transact(message)?;
        let request = message
            .strip_suffix(b"\r\n")
            .or_else(|| message.strip_suffix(b"\n"))
            .unwrap_or(message);
        if let (Ok(sent), Some(answer)) = (Request::parse(request), Reply::parse(&reply))
            && let Some(m) = Mismatch::between(&sent, &answer)
        {
            return Err(ClientError::Mismatch(m));
        }
        Ok(reply)
    }

    /// What a failed transaction probably meant: a connection that failed to
    /// a bare IPv6 address ending in what may be a port says so, and where
    /// one more connection can tell, a plain connection the server closed
    /// without a reply is followed by a TLS ClientHello; if a TLS record comes
    /// back the error says to try `--tls`. For a person at the command line
    /// (the benchmark does not ask: it would double its connections to a
    /// wrong port).
    pub fn diagnose(&self, e: ClientError) -> ClientError {
        let connecting = matches!(
            e,
            ClientError::Refused { .. }
                | ClientError::Connect { .. }
                | ClientError::TimedOut {
                    stage: Stage::Connecting,
                    ..
                }
        );
        if connecting && let Some((host, port)) = &self.maybe_port {
            return ClientError::MaybePort {
                source: Box::new(e),
                host: host.clone(),
                port: *port,
            };
        }
        if !matches!(e, ClientError::NoReply) || self.is_tls() {
            return e;
        }
        let probed = self
            .connect(Instant::now() + self.timeout)
            .is_ok_and(|tcp| {
                let timeouts = tcp
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| tcp.set_write_timeout(Some(self.timeout)));
                timeouts.is_ok() && answers_tls(tcp)
            });
        if probed {
            ClientError::NoReplyButTls
        } else {
            e
        }
    }
}

fn connect_from(
    ip: std::net::IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

fn exchange<S: Read + Write>(
    mut stream: S,
    request: &[u8],
    buf: &mut [u8; MAX_MESSAGE_BYTES],
    deadline: Instant,
    timeout: Duration,
    device_style: bool,
) -> Result<usize, ClientError> {
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|source| {
            if is_timeout(&source) {
                ClientError::TimedOut {
                    stage: Stage::Sending,
                    after: timeout,
                }
            } else {
                ClientError::Io {
                    stage: Stage::Sending,
                    source,
                }
            }
        })?;
    let mut len = 0;
    while len < buf.len() {
        if device_style && len >= WRITE_LEN {
            break;
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A reset after a whole reply has arrived does not undo the reply.
            Err(_) if len > 0 && (buf[0] == b'X' || len >= WRITE_LEN) => break,
            // TLS 1.3 finishes the client's handshake before the server has judged
            // the client certificate; its refusal arrives as an alert here.
            Err(e) if let Some(alert) = alert_received(&e) => {
                return Err(ClientError::Handshake {
                    reason: format!("the server refused the connection ({alert})"),
                });
            }
            // An HTTP server answers a WWEP message with an error but keeps
            // the connection open: what came says which port this is.
            Err(e)
                if (is_timeout(&e) || Instant::now() >= deadline)
                    && buf[..len].starts_with(HTTP) =>
            {
                return Err(ClientError::HttpPort);
            }
            Err(e) if is_timeout(&e) || Instant::now() >= deadline => {
                return Err(ClientError::TimedOut {
                    stage: Stage::WaitingForReply,
                    after: timeout,
                });
            }
            Err(source) => {
                return Err(ClientError::Io {
                    stage: Stage::ReadingReply,
                    source,
                });
            }
        }
    }
    if len == 0 {
        return Err(ClientError::NoReply);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        let a = |host: &str, port: Option<u16>| {
            Ok(ServerAddress {
                host: host.to_string(),
                port,
            })
        };
        assert_eq!(ServerAddress::parse("localhost"), a("localhost", None));
        assert_eq!(ServerAddress::parse("h:1234"), a("h", Some(1234)));
        assert_eq!(ServerAddress::parse("[::1]:99"), a("::1", Some(99)));
        assert_eq!(ServerAddress::parse("[::1]"), a("::1", None));
        assert_eq!(ServerAddress::parse("::1"), a("::1", None));
        assert_eq!(
            ServerAddress::parse("fe80::1:4050"),
            a("fe80::1:4050", None)
        );
        assert!(ServerAddress::parse("h:port").is_err());
        assert!(ServerAddress::parse("h:70000").is_err());
        assert!(ServerAddress::parse(":1").is_err());
        assert!(ServerAddress::parse("[::1").is_err());
        // An IPv6 address and a port without brackets: what was meant, said.
        let unbracketed = |host: &str, port| {
            Err(AddressError::UnbracketedIpv6 {
                flag: "--server",
                host: host.to_string(),
                port,
            })
        };
        assert_eq!(ServerAddress::parse("::1:40508"), unbracketed("::1", 40508));
        assert_eq!(
            ServerAddress::parse("2001:db8::7:27708"),
            unbracketed("2001:db8::7", 27708)
        );
        assert_eq!(
            ServerAddress::parse("::1:40508").unwrap_err().to_string(),
            "IPv6 addresses need brackets: --server [::1]:40508, not ::1:40508"
        );
        // The port as typed, whichever form the host has; the flag named.
        assert_eq!(
            ServerAddress::parse("[::1]:99999").unwrap_err().to_string(),
            "invalid port '99999' in --server '[::1]:99999' (expected 0-65535)"
        );
        assert_eq!(
            ServerAddress::parse("127.0.0.1:99999")
                .unwrap_err()
                .to_string(),
            "invalid port '99999' in --server '127.0.0.1:99999' (expected 0-65535)"
        );
        assert_eq!(
            ServerAddress::parse_flag("h:", "--http")
                .unwrap_err()
                .to_string(),
            "missing port after ':' in --http 'h:'"
        );
        assert_eq!(
            ServerAddress::parse_flag(":80", "--http")
                .unwrap_err()
                .to_string(),
            "missing host in --http ':80'"
        );
        // Not an address either way: left to the resolver to refuse.
        assert_eq!(ServerAddress::parse("::1:70000"), a("::1:70000", None));
    }

    #[test]
    fn a_bare_ipv6_address_may_end_in_a_port() {
        let maybe = |text: &str| {
            ServerAddress::parse(text)
                .unwrap()
                .maybe_port()
                .map(|(h, p)| (h.to_string(), p))
        };
        assert_eq!(maybe("::1:8080"), Some(("::1".to_string(), 8080)));
        assert_eq!(maybe("fe80::1:80"), Some(("fe80::1".to_string(), 80)));
        for not in [
            "::1",
            "::1:1",
            "::1:abcd",
            "2001:db8::1",
            "[::1:8080]:99",
            "h:99",
        ] {
            assert_eq!(maybe(not), None, "{not}");
        }
    }

    #[test]
    fn an_accepting_reply_must_answer_its_request() {
        let write = Request::Write {
            device: 0x0FAC,
            register: 0x0B,
            value: 0x1234,
        };
        let read = Request::Read {
            device: 0x0FAC,
            register: 0x0B,
        };
        let a = |device, register, value| Reply::Accepted {
            device,
            register,
            value,
        };
        assert_eq!(Mismatch::between(&write, &a(0x0FAC, 0x0B, 0x1234)), None);
        assert_eq!(Mismatch::between(&read, &a(0x0FAC, 0x0B, 0x9999)), None);
        let x = Reply::Failed(crate::protocol::Failure::Unspecified);
        assert_eq!(Mismatch::between(&write, &x), None);
        for other in [
            a(0x1111, 0x0B, 0x1234),
            a(0x0FAC, 0x0C, 0x1234),
            a(0x0FAC, 0x0B, 0x1235),
        ] {
            assert!(Mismatch::between(&write, &other).is_some(), "{other:?}");
        }
        assert!(Mismatch::between(&read, &a(0x0FAC, 0x0C, 0)).is_some());
        let m = Mismatch::between(&write, &a(0x1111, 0x22, 0x9999)).unwrap();
        assert_eq!(
            ClientError::Mismatch(m).to_string(),
            "the server acknowledged A1111229999, not the write that was sent (W0FAC0B1234)"
        );
        assert_eq!(ClientError::Mismatch(m).kind(), "mismatch");
        let m = Mismatch::between(&read, &a(0x1111, 0x22, 0x9999)).unwrap();
        assert_eq!(
            m.to_string(),
            "the server answered A1111229999, not the read that was sent (R0FAC0B)"
        );
    }

    /// A server that answers every connection with `answer`, `times` times.
    fn answering(answer: &'static [u8], times: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..times {
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let _ = s.read(&mut [0u8; 64]);
                let _ = s.write_all(answer);
            }
        });
        (addr, server)
    }

    fn plain_client(addr: SocketAddr) -> Client {
        let address = ServerAddress {
            host: addr.ip().to_string(),
            port: Some(addr.port()),
        };
        Client::new(&address, Link::Plain, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn checked_transactions_refuse_an_a_for_another_register() {
        let (addr, server) = answering(b"A1111229999", 4);
        let client = plain_client(addr);
        for message in [&b"W0FAC0B1234"[..], b"W0FAC0B1234\r\n", b"R0FAC0B\n"] {
            let e = client.transact_checked(message).unwrap_err();
            assert!(matches!(e, ClientError::Mismatch(_)), "{e}");
        }
        // Not a request: nothing to judge the reply against.
        assert_eq!(client.transact_checked(b"hello\n").unwrap(), b"A1111229999");
        server.join().unwrap();
    }

    #[test]
    fn a_tls_alert_on_a_plain_connection_is_named() {
        let (addr, server) = answering(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46], 1);
        let e = plain_client(addr).transact(b"W0FAC0B1234").unwrap_err();
        assert!(matches!(e, ClientError::TlsRecord), "{e}");
        assert!(e.to_string().contains("try --tls"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn the_address_that_answered_is_tried_first() {
        // One address refuses (a port bound and released), the other answers.
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live_addr = live.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = live.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 11];
                s.read_exact(&mut buf).unwrap();
                s.write_all(b"A0001020003").unwrap();
            }
        });
        let client = Client {
            addrs: vec![refused, live_addr].into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            link: Link::Plain,
            timeout: Duration::from_secs(5),
            source_ip: None,
            maybe_port: None,
        };
        let clone = client.clone();
        assert_eq!(client.transact(b"W0001020003").unwrap(), b"A0001020003");
        // The clone shares what the first transaction learnt.
        assert_eq!(clone.addrs(), vec![live_addr, refused]);
        assert_eq!(clone.transact(b"W0001020003").unwrap(), b"A0001020003");
        server.join().unwrap();
    }

    #[test]
    fn handshake_failures_keep_their_kind() {
        let t = Duration::from_millis(300);
        let sorted = |e| ClientError::handshake(e, "wwep.test", t);
        assert!(matches!(
            sorted(ConnectError::HostnameMismatch),
            ClientError::HostnameMismatch { ref name } if name == "wwep.test"
        ));
        assert!(matches!(
            sorted(ConnectError::NotTrusted("self-signed certificate".into())),
            ClientError::NotTrusted { ref reason } if reason == "self-signed certificate"
        ));
        assert!(matches!(
            sorted(ConnectError::Alert("tlsv13 alert certificate required".into())),
            ClientError::Handshake { ref reason } if reason.contains("refused")
        ));
        assert!(matches!(
            sorted(ConnectError::TimedOut),
            ClientError::TimedOut { after, .. } if after == t
        ));
        assert_eq!(sorted(ConnectError::Other("eof".into())).kind(), "tls");
    }
}
