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
use crate::protocol::{MAX_MESSAGE_BYTES, Reply, Request, WRITE_LEN};
use crate::tls::client::{ConnectError, Connector, ResumingConnector, alert_received};

/// Where a client connects: `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    pub host: String,
    pub port: Option<u16>,
}

impl ServerAddress {
    pub fn parse(text: &str) -> Result<ServerAddress, String> {
        let bad_port = |p: &str| format!("invalid port '{p}' in --server '{text}'");
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("missing ']' in --server '{text}'"))?;
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
            // Several colons and no brackets: an IPv6 address without a port.
            _ => Ok(ServerAddress {
                host: text.to_string(),
                port: None,
            }),
        }
        .and_then(|a| {
            if a.host.is_empty() {
                Err(format!("missing host in --server '{text}'"))
            } else {
                Ok(a)
            }
        })
    }
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

/// Why a transaction did not produce a reply.
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
        stage: &'static str,
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
        stage: &'static str,
        source: io::Error,
    },
    NoReply,
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
            | ClientError::Handshake { .. } => "tls",
            ClientError::Io { .. } | ClientError::NoReply => "io",
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
                stage: "in the TLS handshake",
                after: timeout,
            },
            ConnectError::Io(source) => ClientError::Io {
                stage: "in the TLS handshake",
                source,
            },
            ConnectError::Other(reason) => ClientError::Handshake { reason },
        }
    }
}

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
                        stage: "connecting",
                        after: self.timeout,
                    })
                }
                Err(source) => last = Some(ClientError::Connect { addr, source }),
            }
        }
        Err(last.unwrap_or(ClientError::TimedOut {
            stage: "connecting",
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
                exchange(
                    &stream,
                    request,
                    reply,
                    deadline,
                    self.timeout,
                    device_style,
                )
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
                stage: "setting up",
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

    /// Sends a request and parses the reply.
    pub fn request(&self, request: Request) -> Result<Reply, ClientError> {
        let bytes = self.transact(request.encode().as_bytes())?;
        Reply::parse(&bytes).ok_or(ClientError::NoReply)
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
                    stage: "sending",
                    after: timeout,
                }
            } else {
                ClientError::Io {
                    stage: "sending",
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
            Err(e) if is_timeout(&e) || Instant::now() >= deadline => {
                return Err(ClientError::TimedOut {
                    stage: "waiting for the reply",
                    after: timeout,
                });
            }
            Err(source) => {
                return Err(ClientError::Io {
                    stage: "reading the reply",
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
        assert!(ServerAddress::parse("h:port").is_err());
        assert!(ServerAddress::parse("h:70000").is_err());
        assert!(ServerAddress::parse(":1").is_err());
        assert!(ServerAddress::parse("[::1").is_err());
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
