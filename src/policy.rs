//! The connection policy both listening sides hold their connections to, the
//! WWEP ports (`--allow`, `--max-connections`, `--timeout-ms`) and the HTTP
//! side (`--http-allow`, `--http-max-connections`, its request deadline): who
//! may connect, how many may be open at once, which one makes room for a
//! newcomer when that many are, and how long a request may take. Each side
//! keeps its own connections and answers in its own protocol; the rules are
//! this one type. No I/O.
//!
//! Whom a full table sheds for a newcomer: first an idle connection, the one
//! idle the longest; then, among the connections past their first second
//! ([`SHED_GRACE`]), the oldest still sending its request, then the oldest
//! being answered, then the oldest following a stream. When every connection
//! is within its first second (clients that reconnect before they are a
//! second old), the side may shed a young one too
//! ([`Places::shed_young`]; the HTTP side sheds the youngest still sending
//! its request head, else the oldest that has sent nothing yet): otherwise a
//! crowd that reconnects fast enough would keep a newcomer (a balancer's
//! health probe) out for good. A newcomer is refused only when nothing may
//! be shed.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::allow::{self, Cidr};
use crate::facts::Refusal;

/// A busy connection is not shed for a newcomer until it has been busy this
/// long: a request that has only just begun gets its chance.
pub const SHED_GRACE: Duration = Duration::from_secs(1);

/// What a busy connection is doing, in the order a full table sheds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Still sending its request (an HTTP request head not yet complete):
    /// the cheapest to lose, and what a slow client holds the table with.
    Request,
    /// Its request is complete and its answer is being made or written.
    Answer,
    /// Following a stream that has no end (`GET /api/events`): it reconnects
    /// by itself, so it goes last.
    Stream,
}

impl Busy {
    /// Every kind, in the order a full table sheds them.
    pub const SHED_ORDER: [Busy; 3] = [Busy::Request, Busy::Answer, Busy::Stream];
}

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
    /// Closes the connection that has been `busy` the longest, if it began
    /// before `began_before`; false when there is none. The WWEP side keeps
    /// this default and sheds only silent connections: its messages are a
    /// few bytes, its unfinished connections are capped per address
    /// (`--max-per-ip`) and its deadline is `--timeout-ms`.
    fn shed_oldest_busy(&mut self, busy: Busy, began_before: Instant) -> bool {
        let _ = (busy, began_before);
        false
    }
    /// Nothing is idle and nothing is past its first second: closes a
    /// connection within its first second, if the side has one it would
    /// rather lose than the newcomer; false when there is none. The WWEP side
    /// keeps this default (it sheds only silent connections, above).
    fn shed_young(&mut self) -> bool {
        false
    }
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

    /// A place for a newcomer from `ip`: when the table is full, one
    /// connection is shed to make room (the module's order), and the place
    /// taken again.
    pub fn make_room<P: Places>(&self, places: &mut P, ip: IpAddr) -> Result<P::Place, Refusal> {
        match places.take(ip) {
            // The clock is read only when the table is full.
            Err(Refusal::Full) => self.shed_then_take(places, ip, Instant::now()),
            taken => taken,
        }
    }

    /// [`ConnectionPolicy::make_room`] at the moment `now`.
    pub fn make_room_at<P: Places>(
        &self,
        places: &mut P,
        ip: IpAddr,
        now: Instant,
    ) -> Result<P::Place, Refusal> {
        match places.take(ip) {
            Err(Refusal::Full) => self.shed_then_take(places, ip, now),
            taken => taken,
        }
    }

    /// The table is full: one connection is shed, in the module's order, and
    /// the place taken again; `Full` when none may be.
    fn shed_then_take<P: Places>(
        &self,
        places: &mut P,
        ip: IpAddr,
        now: Instant,
    ) -> Result<P::Place, Refusal> {
        let shed = places.shed_oldest_idle()
            || now.checked_sub(SHED_GRACE).is_some_and(|before| {
                Busy::SHED_ORDER
                    .iter()
                    .any(|&busy| places.shed_oldest_busy(busy, before))
            })
            || places.shed_young();
        if shed {
            places.take(ip)
        } else {
            Err(Refusal::Full)
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

    /// A table of `open` connections, `idle` of them idle, and the busy ones
    /// listed with when they began.
    struct Table {
        open: usize,
        idle: usize,
        busy: Vec<(Busy, Instant)>,
        max: usize,
        shed: usize,
        /// What was shed, in order.
        shed_busy: Vec<(Busy, Instant)>,
        /// Young connections the side would rather lose than a newcomer.
        young: usize,
    }

    impl Table {
        fn new(open: usize, idle: usize, max: usize) -> Table {
            Table {
                open,
                idle,
                busy: Vec::new(),
                max,
                shed: 0,
                shed_busy: Vec::new(),
                young: 0,
            }
        }
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

        fn shed_oldest_busy(&mut self, busy: Busy, began_before: Instant) -> bool {
            let oldest = (0..self.busy.len())
                .filter(|&i| self.busy[i].0 == busy && self.busy[i].1 < began_before)
                .min_by_key(|&i| self.busy[i].1);
            let Some(i) = oldest else {
                return false;
            };
            self.shed_busy.push(self.busy.remove(i));
            self.open -= 1;
            self.shed += 1;
            true
        }

        fn shed_young(&mut self) -> bool {
            if self.young == 0 {
                return false;
            }
            self.young -= 1;
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
            let mut table = Table::new(open, idle, policy.max_connections());
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
    fn a_full_table_of_busy_connections_sheds_by_kind_then_age_after_the_grace() {
        use Busy::{Answer, Request, Stream};
        let policy = ConnectionPolicy::new(Vec::new(), 3, Duration::from_secs(5));
        let now = Instant::now() + Duration::from_secs(60);
        let ago = |ms: u64| now - Duration::from_millis(ms);
        let newcomer = ip("127.0.0.1");
        // (busy connections held) → what is shed for the newcomer, if anything
        type Held = (Busy, Instant);
        let cases: [(&[Held], Option<Held>); 7] = [
            (
                &[
                    (Stream, ago(9000)),
                    (Answer, ago(5000)),
                    (Request, ago(1500)),
                ],
                Some((Request, ago(1500))),
            ),
            (
                &[
                    (Request, ago(1200)),
                    (Request, ago(3000)),
                    (Request, ago(2000)),
                ],
                Some((Request, ago(3000))),
            ),
            (
                &[
                    (Request, ago(900)),
                    (Answer, ago(1100)),
                    (Stream, ago(9000)),
                ],
                Some((Answer, ago(1100))),
            ),
            (
                &[(Request, ago(900)), (Answer, ago(100)), (Stream, ago(9000))],
                Some((Stream, ago(9000))),
            ),
            (
                &[(Request, ago(999)), (Answer, ago(10)), (Stream, ago(0))],
                None,
            ),
            (
                &[
                    (Stream, ago(2000)),
                    (Stream, ago(1000)),
                    (Stream, ago(4000)),
                ],
                Some((Stream, ago(4000))),
            ),
            (
                &[(Request, ago(0)), (Request, ago(1)), (Request, ago(2))],
                None,
            ),
        ];
        for (held, expected) in cases {
            let mut table = Table::new(3, 0, 3);
            table.busy = held.to_vec();
            let result = policy.make_room_at(&mut table, newcomer, now);
            assert_eq!(table.shed_busy.first().copied(), expected, "{held:?}");
            assert_eq!(table.shed, usize::from(expected.is_some()), "one at most");
            assert_eq!(
                result,
                if expected.is_some() {
                    Ok(3)
                } else {
                    Err(Refusal::Full)
                },
                "{held:?}"
            );
        }
        // An idle connection goes before any busy one, whatever its age.
        let mut table = Table::new(3, 1, 3);
        table.busy = vec![(Request, ago(9000)), (Stream, ago(9000))];
        assert_eq!(policy.make_room_at(&mut table, newcomer, now), Ok(3));
        assert!(table.shed_busy.is_empty() && table.idle == 0);
    }

    #[test]
    fn a_table_of_young_connections_sheds_a_young_one_last_and_only_if_the_side_offers_one() {
        use Busy::Request;
        let policy = ConnectionPolicy::new(Vec::new(), 3, Duration::from_secs(5));
        let now = Instant::now() + Duration::from_secs(60);
        let ago = |ms: u64| now - Duration::from_millis(ms);
        let newcomer = ip("127.0.0.1");
        let held = vec![
            (Request, ago(800)),
            (Request, ago(10)),
            (Request, ago(1200)),
        ];
        // Anything past its first second goes first.
        let mut table = Table::new(3, 0, 3);
        table.busy = held.clone();
        table.young = 2;
        assert_eq!(policy.make_room_at(&mut table, newcomer, now), Ok(3));
        assert_eq!(table.shed_busy, [(Request, ago(1200))]);
        assert_eq!(table.young, 2);
        // Every one young: one the side offers, else the newcomer is refused
        // (the WWEP side's default offers none).
        for (young, expected) in [(1, Ok(3)), (0, Err(Refusal::Full))] {
            let mut table = Table::new(3, 0, 3);
            table.busy = held[..2].to_vec();
            table.young = young;
            assert_eq!(
                policy.make_room_at(&mut table, newcomer, now),
                expected,
                "{young}"
            );
            assert!(table.shed_busy.is_empty());
        }
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
