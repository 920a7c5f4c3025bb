//! The PROXY protocol (versions 1 and 2) a load balancer puts before a
//! connection's own bytes to say whom it is forwarding. Parsing only, no I/O:
//! bytes in, a verdict out, every prefix of a valid header `Partial`; and who
//! must send one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::ProxyProtocol;

/// Whether a connection from `peer` comes from a balancer in `--proxy-from`:
/// its client's real address is known only once the header is read.
pub fn from_balancer(proxy: &ProxyProtocol, peer: IpAddr) -> bool {
    match proxy {
        ProxyProtocol::From(balancers) => balancers.iter().any(|range| range.contains(peer)),
        ProxyProtocol::Off => false,
    }
}

/// The 12 bytes that open a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// What opens a version 1 header.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 header, CRLF included (the specification's limit).
pub const V1_MAX_BYTES: usize = 107;
/// The longest version 2 header accepted: addresses for IPv6 plus room for the
/// usual TLVs (HAProxy's own recommendation for a receive buffer).
pub const V2_MAX_BYTES: usize = 536;
/// Enough to hold any header this module accepts.
pub const MAX_HEADER_BYTES: usize = V2_MAX_BYTES;

/// Who the balancer says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client's address and the address it connected to.
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer speaks for itself (a health check: v2 `LOCAL`, v1 `UNKNOWN`):
    /// keep the connection's own address.
    Balancer,
}

/// The verdict on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// More bytes are needed.
    Partial,
    /// The header takes the first `len` bytes; the connection's own bytes follow.
    Complete { origin: Origin, len: usize },
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither signature.
    NotProxy,
    /// Longer than the limit without an end.
    TooLong,
    /// A version 1 line that does not parse (protocol, address or port).
    BadV1Line,
    /// Version 2 with a version other than 2 or a command other than LOCAL/PROXY.
    BadV2Version,
    /// Version 2 with an address block too short for its family.
    BadV2Addresses,
    /// A transport other than TCP over IPv4 or IPv6 (UDP, Unix sockets).
    UnsupportedFamily,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyError::NotProxy => "no PROXY protocol header",
            ProxyError::TooLong => "PROXY header too long",
            ProxyError::BadV1Line => "malformed PROXY v1 line",
            ProxyError::BadV2Version => "PROXY v2 header with an unknown version or command",
            ProxyError::BadV2Addresses => "PROXY v2 address block too short",
            ProxyError::UnsupportedFamily => "PROXY header for a transport other than TCP",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Whether `buf` starts like a PROXY header (either version; at least five
/// bytes of its signature): what a listener checks on connections from senders
/// it does not trust.
pub fn looks_like_header(buf: &[u8]) -> bool {
    let starts = |signature: &[u8]| {
        let n = buf.len().min(signature.len());
        n >= 5 && buf[..n] == signature[..n]
    };
    starts(&V2_SIGNATURE) || starts(V1_PREFIX)
}

/// Judges the bytes received so far.
pub fn parse(buf: &[u8]) -> Result<Header, ProxyError> {
    if buf.is_empty() {
        return Ok(Header::Partial);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Header, ProxyError> {
    // The line ends at its first `\n`, which must follow a `\r` (the signature
    // check before this puts that `\n` past "PROXY ").
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_BYTES {
            Err(ProxyError::TooLong)
        } else {
            Ok(Header::Partial)
        };
    };
    if lf < V1_PREFIX.len() || buf[lf - 1] != b'\r' {
        return Err(ProxyError::BadV1Line);
    }
    let (end, len) = (lf - 1, lf + 1);
    if len > V1_MAX_BYTES {
        return Err(ProxyError::TooLong);
    }
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyError::BadV1Line)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let origin = match fields.as_slice() {
        ["UNKNOWN", ..] => Origin::Balancer,
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |text: &str| -> Result<IpAddr, ProxyError> {
                let ip: IpAddr = text.parse().map_err(|_| ProxyError::BadV1Line)?;
                match (*family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(ProxyError::BadV1Line),
                }
            };
            let port = |text: &str| -> Result<u16, ProxyError> {
                // Decimal without sign or leading zeros, as the specification writes them.
                if text.is_empty()
                    || (text.len() > 1 && text.starts_with('0'))
                    || !text.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(ProxyError::BadV1Line);
                }
                text.parse().map_err(|_| ProxyError::BadV1Line)
            };
            Origin::Client {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        [family, ..] if !family.starts_with("TCP") => return Err(ProxyError::UnsupportedFamily),
        _ => return Err(ProxyError::BadV1Line),
    };
    Ok(Header::Complete { origin, len })
}

fn parse_v2(buf: &[u8]) -> Result<Header, ProxyError> {
    if buf.len() < 16 {
        return Ok(Header::Partial);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::BadV2Version);
    }
    let local = match version_command & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::BadV2Version),
    };
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX_BYTES {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < len {
        return Ok(Header::Partial);
    }
    if local {
        return Ok(Header::Complete {
            origin: Origin::Balancer,
            len,
        });
    }
    let addresses = &buf[16..len];
    let origin = match family {
        // TCP over IPv4.
        0x11 => {
            let a = addresses.get(..12).ok_or(ProxyError::BadV2Addresses)?;
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
            Origin::Client {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                destination: SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
            }
        }
        // TCP over IPv6.
        0x21 => {
            let a = addresses.get(..36).ok_or(ProxyError::BadV2Addresses)?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Origin::Client {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
            }
        }
        // UNSPEC: the balancer could not tell; keep the connection's address.
        0x00 => Origin::Balancer,
        _ => return Err(ProxyError::UnsupportedFamily),
    };
    Ok(Header::Complete { origin, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend((addresses.len() as u16).to_be_bytes());
        h.extend(addresses);
        h
    }

    fn client(source: &str, destination: &str) -> Origin {
        Origin::Client {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn version_1_lines() {
        let cases: [(&[u8], Origin); 3] = [
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 27708\r\nW0FAC0B1234",
                client("192.0.2.7:56324", "198.51.100.1:27708"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 40508\r\n",
                client("[2001:db8::7]:4000", "[2001:db8::1]:40508"),
            ),
            (b"PROXY UNKNOWN\r\n", Origin::Balancer),
        ];
        for (bytes, origin) in cases {
            let end = bytes.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            assert_eq!(
                parse(bytes),
                Ok(Header::Complete { origin, len: end }),
                "{bytes:?}"
            );
            for cut in 0..end {
                assert_eq!(
                    parse(&bytes[..cut]),
                    Ok(Header::Partial),
                    "prefix {cut} of {bytes:?}"
                );
            }
        }
    }

    #[test]
    fn malformed_version_1_lines() {
        let cases: [(&[u8], ProxyError); 11] = [
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
                ProxyError::BadV1Line,
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 70000\r\n",
                ProxyError::BadV1Line,
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 056324 1\r\n",
                ProxyError::BadV1Line,
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 1\r\n",
                ProxyError::BadV1Line,
            ),
            (
                b"PROXY TCP4 2001:db8::7 198.51.100.1 1 1\r\n",
                ProxyError::BadV1Line,
            ),
            (
                b"PROXY TCP6 192.0.2.7 2001:db8::1 1 1\r\n",
                ProxyError::BadV1Line,
            ),
            (
                b"PROXY TCP4 192.0.2.7  198.51.100.1 1 1\r\n",
                ProxyError::BadV1Line,
            ),
            (
                b"PROXY UDP4 192.0.2.7 198.51.100.1 1 1\r\n",
                ProxyError::UnsupportedFamily,
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 1 1\n",
                ProxyError::BadV1Line,
            ),
            (b"PROXY UNKNOWN\njunk\r\n", ProxyError::BadV1Line),
            (b"W0FAC0B1234", ProxyError::NotProxy),
        ];
        for (bytes, error) in cases {
            assert_eq!(
                parse(bytes),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend([b'1'; 120]);
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
    }

    #[test]
    fn version_2_headers() {
        let mut v4 = vec![192, 0, 2, 7, 198, 51, 100, 1];
        v4.extend(56324u16.to_be_bytes());
        v4.extend(27708u16.to_be_bytes());
        let mut v6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        v6.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend(4000u16.to_be_bytes());
        v6.extend(40508u16.to_be_bytes());
        let mut with_tlv = v4.clone();
        with_tlv.extend([0x04, 0x00, 0x02, 0xAB, 0xCD]);
        let cases = [
            (
                v2(1, 0x11, &v4),
                client("192.0.2.7:56324", "198.51.100.1:27708"),
            ),
            (
                v2(1, 0x21, &v6),
                client("[2001:db8::7]:4000", "[2001:db8::1]:40508"),
            ),
            (
                v2(1, 0x11, &with_tlv),
                client("192.0.2.7:56324", "198.51.100.1:27708"),
            ),
            (v2(0, 0x00, &[]), Origin::Balancer),
            (v2(0, 0x11, &v4), Origin::Balancer),
            (v2(1, 0x00, &[]), Origin::Balancer),
        ];
        for (bytes, origin) in cases {
            let mut stream = bytes.clone();
            stream.extend(b"\x16\x03\x01");
            assert_eq!(
                parse(&stream),
                Ok(Header::Complete {
                    origin,
                    len: bytes.len()
                })
            );
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(Header::Partial), "prefix {cut}");
            }
        }
    }

    #[test]
    fn malformed_version_2_headers() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        let mut bad_command = v2(1, 0x11, &[0; 12]);
        bad_command[12] = 0x22;
        let cases = [
            (bad_version, ProxyError::BadV2Version),
            (bad_command, ProxyError::BadV2Version),
            (v2(1, 0x11, &[0; 8]), ProxyError::BadV2Addresses),
            (v2(1, 0x21, &[0; 20]), ProxyError::BadV2Addresses),
            (v2(1, 0x12, &[0; 12]), ProxyError::UnsupportedFamily),
            (v2(1, 0x31, &[0; 216]), ProxyError::UnsupportedFamily),
            (v2(1, 0x11, &[0; 600]), ProxyError::TooLong),
        ];
        for (bytes, error) in cases {
            assert_eq!(parse(&bytes), Err(error));
        }
    }

    #[test]
    fn untrusted_headers_are_recognised_from_their_first_bytes() {
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(b"PROXY"));
        assert!(!looks_like_header(b"PROX"), "too short to tell");
        assert!(looks_like_header(&V2_SIGNATURE[..5]));
        assert!(!looks_like_header(b"W0FAC0B1234"));
        assert!(!looks_like_header(b"R0FAC0B"));
        assert!(!looks_like_header(b"\x16\x03\x01"));
        assert!(!looks_like_header(b""));
        for error in [
            ProxyError::NotProxy,
            ProxyError::TooLong,
            ProxyError::BadV1Line,
            ProxyError::BadV2Version,
            ProxyError::BadV2Addresses,
            ProxyError::UnsupportedFamily,
        ] {
            assert!(error.to_string().contains("PROXY"), "{error}");
        }
    }
}
