//! The connection policy both listening sides hold their connections to, the
//! WWEP ports (`--allow`, `--max-connections`, `--timeout-ms`) and the HTTP
//! side (`--http-allow`, `--http-max-connections`, its request deadline): who
//! may connect, how many may be open at once, which one makes room for a
//! newcomer when that many are (the oldest idle one), and how long a request
//! may take. Each side keeps its own connections and answers in its own
//! protocol; the rules are this one type. No I/O.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::allow::{self, Cidr};
use crate::facts::Refusal;

/// Where a side keeps its open connections, as the policy sees it.
pub trait Places {
    /// A place in the table (the WWEP side's counts the address's unfinished
    /// connections too; the HTTP side's is nothing more than room).
    type Place;
    /// Takes a place for a connection from `ip`, or says why there is none
    /// ([`Refusal::Full`] when the table is full).
    fn take(&mut self, ip: IpAddr) -> Result<Self::Place, Refusal>;
    /// Closes the connection that has been idle the longest; false when none
    /// is idle.
    fn shed_oldest_idle(&mut self) -> bool;
}

/// Who may connect, how many at once, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPolicy {
    /// An empty list allows everyone.
    allow: Vec<Cidr>,
    max_connections: usize,
    /// From a request's start (accept on the WWEP ports, the first byte on
    /// the HTTP side) to the end of its answer.
    request_deadline: Duration,
}

impl ConnectionPolicy {
    pub fn new(
        allow: Vec<Cidr>,
        max_connections: usize,
        request_deadline: Duration,
    ) -> ConnectionPolicy {
        ConnectionPolicy {
            allow,
            max_connections,
            request_deadline,
        }
    }

    /// The address check, run once per connection, when its real address is
    /// known (at accept, or after a trusted balancer's PROXY header).
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
        if allow::allowed(&self.allow, ip.to_canonical()) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Whether `open` connections fill the table.
    pub fn is_full(&self, open: usize) -> bool {
        open >= self.max_connections
    }

    /// A place for a newcomer from `ip`: when the table is full, the oldest
    /// idle connection is shed to make room, and the place taken again.
    pub fn make_room<P: Places>(&self, places: &mut P, ip: IpAddr) -> Result<P::Place, Refusal> {
        match places.take(ip) {
            Err(Refusal::Full) if places.shed_oldest_idle() => places.take(ip),
            taken => taken,
        }
    }

    pub fn request_deadline(&self) -> Duration {
        self.request_deadline
    }

    /// When a request that started at `start` must be answered.
    pub fn deadline_from(&self, start: Instant) -> Instant {
        start + self.request_deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `open` connections, `idle` of them idle.
    struct Table {
        open: usize,
        idle: usize,
        max: usize,
        shed: usize,
    }

    impl Places for Table {
        type Place = usize;

        fn take(&mut self, _ip: IpAddr) -> Result<usize, Refusal> {
            if self.open >= self.max {
                return Err(Refusal::Full);
            }
            self.open += 1;
            Ok(self.open)
        }

        fn shed_oldest_idle(&mut self) -> bool {
            if self.idle == 0 {
                return false;
            }
            self.idle -= 1;
            self.open -= 1;
            self.shed += 1;
            true
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_address_check_follows_the_allow_list_and_an_empty_list_allows_all() {
        let everyone = ConnectionPolicy::new(Vec::new(), 1, Duration::from_secs(1));
        assert_eq!(everyone.check_address(ip("203.0.113.5")), Ok(()));
        let lan = ConnectionPolicy::new(
            vec!["192.168.1.0/24".parse().unwrap()],
            1,
            Duration::from_secs(1),
        );
        for (addr, expected) in [
            ("192.168.1.7", Ok(())),
            ("::ffff:192.168.1.7", Ok(())),
            ("192.168.2.7", Err(Refusal::NotAllowed)),
            ("2001:db8::1", Err(Refusal::NotAllowed)),
        ] {
            assert_eq!(lan.check_address(ip(addr)), expected, "{addr}");
        }
    }

    #[test]
    fn a_full_table_sheds_its_oldest_idle_connection_or_refuses() {
        let policy = ConnectionPolicy::new(Vec::new(), 2, Duration::from_secs(1));
        let newcomer = ip("127.0.0.1");
        let cases = [
            // (open, idle) → (result, shed)
            ((0, 0), (Ok(1), 0)),
            ((1, 1), (Ok(2), 0)),
            ((2, 1), (Ok(2), 1)),
            ((2, 0), (Err(Refusal::Full), 0)),
        ];
        for ((open, idle), (expected, shed)) in cases {
            let mut table = Table {
                open,
                idle,
                max: policy.max_connections(),
                shed: 0,
            };
            assert_eq!(
                policy.make_room(&mut table, newcomer),
                expected,
                "{open} open"
            );
            assert_eq!(table.shed, shed, "{open} open, {idle} idle");
        }
        assert!(policy.is_full(2) && !policy.is_full(1));
    }

    #[test]
    fn a_deadline_counts_from_the_start_of_the_request() {
        let policy = ConnectionPolicy::new(Vec::new(), 1, Duration::from_millis(250));
        let start = Instant::now();
        assert_eq!(
            policy.deadline_from(start) - start,
            Duration::from_millis(250)
        );
        assert_eq!(policy.request_deadline(), Duration::from_millis(250));
    }
}
