//! Who may connect: address ranges for `--allow`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address range such as `192.168.1.0/24`, `2001:db8::/32` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range. IPv4 clients of an IPv6 listener arrive as
    /// `::ffff:a.b.c.d` and are matched as the IPv4 address they are.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!("'{text}' is not an address or CIDR range (e.g. 192.168.1.0/24, ::1)")
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}': prefix length must be 0-{max}"))?,
        };
        Ok(Cidr {
            network: network.to_canonical(),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether an address may connect: everyone when the list is empty.
pub fn allowed(list: &[Cidr], ip: IpAddr) -> bool {
    list.is_empty() || list.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        let net: Cidr = "192.168.1.0/24".parse().unwrap();
        assert!(net.contains(ip("192.168.1.0")) && net.contains(ip("192.168.1.255")));
        assert!(!net.contains(ip("192.168.2.1")));
        assert!(
            net.contains(ip("::ffff:192.168.1.7")),
            "IPv4 through an IPv6 listener"
        );
        assert!(!net.contains(ip("::1")));
        let one: Cidr = "127.0.0.2".parse().unwrap();
        assert!(one.contains(ip("127.0.0.2")) && !one.contains(ip("127.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let any6: Cidr = "::/0".parse().unwrap();
        assert!(any6.contains(ip("::1")));
        assert_eq!(one.to_string(), "127.0.0.2/32");
    }

    #[test]
    fn bad_ranges_are_explained() {
        for bad in [
            "",
            "x",
            "1.2.3.4/33",
            "::1/129",
            "1.2.3.4/",
            "1.2.3.4/-1",
            "300.1.1.1/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_list_allows_everyone() {
        assert!(allowed(&[], ip("203.0.113.9")));
        let list = ["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        assert!(allowed(&list, ip("10.1.2.3")) && allowed(&list, ip("::1")));
        assert!(!allowed(&list, ip("127.0.0.1")));
    }
}
