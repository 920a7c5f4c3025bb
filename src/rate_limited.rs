//! Log lines about clients, at most one per interval, so a flood of bad clients
//! cannot flood the log.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Logs at `level` at most once per interval and says how many were held back.
pub(crate) struct RateLimitedLog {
    level: log::Level,
    interval_ms: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last line logged, plus one (0 = never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    pub(crate) fn new(level: log::Level, interval: Duration) -> Self {
        RateLimitedLog {
            level,
            interval_ms: interval.as_millis() as u64,
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    pub(crate) fn log(&self, message: fmt::Arguments<'_>) {
        if !log::log_enabled!(self.level) {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let held = self.suppressed.swap(0, Ordering::Relaxed);
            if held > 0 {
                log::log!(self.level, "{message} ({held} more like this not shown)");
            } else {
                log::log!(self.level, "{message}");
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
