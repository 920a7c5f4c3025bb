//! Log lines about clients, at most one per interval for each kind of line, so
//! a flood of bad clients cannot flood the log and a flood of one kind cannot
//! hide another. Each kind keeps its own count of the lines it held back, and
//! its next line reports only that count: a line never speaks for another
//! kind's failures.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Logs at `level` at most once per interval for each kind, and says how
/// many lines of that kind were held back since its last line.
pub(crate) struct RateLimitedLog {
    level: log::Level,
    interval_ms: u64,
    epoch: Instant,
    /// One gate per kind; never empty.
    gates: Box<[Gate]>,
}

/// One kind's limit.
#[derive(Default)]
struct Gate {
    /// Milliseconds since `epoch` of the last line logged, plus one (0 = never).
    last_ms: AtomicU64,
    /// Lines of this kind held back since its last line.
    held: AtomicU64,
}

/// What becomes of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Written, followed by how many lines of its kind were held back before it.
    Show { held: u64 },
    /// Held back (and counted for its kind's next line).
    Hold,
}

impl RateLimitedLog {
    /// A log of one kind of line.
    pub(crate) fn new(level: log::Level, interval: Duration) -> Self {
        Self::per_kind(level, interval, 1)
    }

    /// A log of `kinds` kinds of line, each limited and counted apart;
    /// [`RateLimitedLog::log_kind`] names the kind by its index.
    pub(crate) fn per_kind(level: log::Level, interval: Duration, kinds: usize) -> Self {
        RateLimitedLog {
            level,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            gates: (0..kinds.max(1)).map(|_| Gate::default()).collect(),
        }
    }

    /// Logs a line of the only kind (or the first).
    pub(crate) fn log(&self, message: fmt::Arguments<'_>) {
        self.log_kind(0, message);
    }

    /// Logs a line of kind `kind` (an index below the number of kinds; a
    /// larger one counts as the last kind).
    pub(crate) fn log_kind(&self, kind: usize, message: fmt::Arguments<'_>) {
        if !log::log_enabled!(self.level) {
            return;
        }
        if let Some(line) = self.line(kind, Instant::now(), message) {
            log::log!(self.level, "{line}");
        }
    }

    /// The line to write for a line of `kind` offered at `now`, if any: the
    /// decision and the text, with no I/O (the clock is the caller's).
    fn line(&self, kind: usize, now: Instant, message: fmt::Arguments<'_>) -> Option<String> {
        match self.pass(kind, now) {
            Pass::Show { held: 0 } => Some(message.to_string()),
            Pass::Show { held } => Some(format!("{message} ({held} more like this not shown)")),
            Pass::Hold => None,
        }
    }

    /// Decides a line of `kind` offered at `now`.
    fn pass(&self, kind: usize, now: Instant) -> Pass {
        let gate = &self.gates[kind.min(self.gates.len() - 1)];
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1)
            + 1;
        let last = gate.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= self.interval_ms;
        if due
            && gate
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Pass::Show {
                held: gate.held.swap(0, Ordering::Relaxed),
            }
        } else {
            gate.held.fetch_add(1, Ordering::Relaxed);
            Pass::Hold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_line_a_second_with_the_count_held_back() {
        let log = RateLimitedLog::new(log::Level::Info, SECOND);
        let t0 = log.epoch;
        let offers = [
            (ms(0), Pass::Show { held: 0 }),
            (ms(10), Pass::Hold),
            (ms(500), Pass::Hold),
            (ms(999), Pass::Hold),
            (ms(1000), Pass::Show { held: 3 }),
            (ms(1001), Pass::Hold),
            (ms(5000), Pass::Show { held: 1 }),
            (ms(6000), Pass::Show { held: 0 }),
        ];
        for (at, expected) in offers {
            assert_eq!(log.pass(0, t0 + at), expected, "at {at:?}");
        }
    }

    #[test]
    fn each_kind_counts_only_its_own_lines() {
        // The case the log once got wrong: plain text on the TLS port (kind 1)
        // held back, then credited to the next protocol-version line (kind 0).
        let log = RateLimitedLog::per_kind(log::Level::Info, SECOND, 3);
        let t0 = log.epoch;
        let line = |kind, at, text: &str| log.line(kind, t0 + at, format_args!("{text}"));
        assert_eq!(line(0, ms(0), "version"), Some("version".to_string()));
        assert_eq!(line(1, ms(1), "not tls"), Some("not tls".to_string()));
        for n in 0..5 {
            assert_eq!(line(1, ms(10 + n), "not tls"), None);
        }
        assert_eq!(line(0, ms(20), "version"), None);
        assert_eq!(
            line(0, ms(1200), "version"),
            Some("version (1 more like this not shown)".to_string())
        );
        assert_eq!(
            line(1, ms(1300), "not tls"),
            Some("not tls (5 more like this not shown)".to_string())
        );
        // A kind never offered before is due at once, whatever the others did.
        assert_eq!(line(2, ms(1301), "other"), Some("other".to_string()));
        // Counts start again after each line.
        assert_eq!(line(0, ms(2200), "version"), Some("version".to_string()));
    }

    #[test]
    fn a_kind_past_the_last_counts_as_the_last() {
        let log = RateLimitedLog::per_kind(log::Level::Info, SECOND, 2);
        let t0 = log.epoch;
        assert_eq!(log.pass(1, t0), Pass::Show { held: 0 });
        assert_eq!(log.pass(7, t0 + ms(1)), Pass::Hold);
        assert_eq!(log.pass(1, t0 + SECOND), Pass::Show { held: 1 });
        assert_eq!(log.pass(0, t0 + SECOND), Pass::Show { held: 0 });
    }

    #[test]
    fn lines_offered_from_many_threads_are_each_shown_or_counted_once() {
        let log = RateLimitedLog::per_kind(log::Level::Info, SECOND, 2);
        let t0 = log.epoch;
        let shown_and_held = |kind: usize| {
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            (0..1000)
                                .map(|i| match log.pass(kind, t0 + ms(i)) {
                                    Pass::Show { held } => (1, held),
                                    Pass::Hold => (0, 0),
                                })
                                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
            })
        };
        let (shown, held) = shown_and_held(0);
        assert_eq!(shown, 1, "all within one interval");
        assert_eq!(held, 0);
        // The next line of kind 0 reports every other line of the 4,000; kind
        // 1's own lines are not among them.
        assert_eq!(shown_and_held(1).0, 1);
        assert_eq!(log.pass(0, t0 + SECOND), Pass::Show { held: 3999 });
        assert_eq!(log.pass(1, t0 + SECOND), Pass::Show { held: 3999 });
    }
}
