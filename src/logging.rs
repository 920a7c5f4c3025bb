//! Logging for the binaries: env_logger's `RUST_LOG` filtering (default `info`),
//! with a writer cheap enough for one line per transaction.
//!
//! env_logger writes every line under one process-wide lock; with a worker per
//! connection that lock was contended on every transaction (measured: 10–20 % of
//! plain-port throughput at concurrency 32). Here each thread formats into its own
//! buffer and hands the whole line to the kernel in one `write(2)` on a duplicate
//! of stderr, which keeps lines whole for files, pipes and journald's socket.
//!
//! [`LogFormat::Json`] writes each line as one JSON object instead: `time`,
//! `level`, `target`, `message`, and the record's key-value pairs as fields
//! (the per-transaction line carries `event`, `port`, `peer`, `tls`, `cn`,
//! `request`, `reply` and `us`), for journald, Loki and `jq`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::time::SystemTime;

use log::kv::{Key, Value, VisitSource};
use log::{Log, Metadata, Record};

use crate::civil_date::UtcTime;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`, for people.
    #[default]
    Text,
    /// One JSON object per line, for machines.
    Json,
}

impl LogFormat {
    pub fn parse(text: &str) -> Option<LogFormat> {
        match text {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

struct LineLogger {
    filter: env_logger::Logger,
    out: Stderr,
    format: LogFormat,
}

/// Where the lines go.
enum Stderr {
    /// A duplicate of stderr: one `write(2)` a line, without std's lock.
    Duplicate(File),
    /// Stderr itself, when no descriptor is left for a duplicate.
    Shared(std::io::Stderr),
}

impl Stderr {
    fn open() -> Stderr {
        match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => Stderr::Duplicate(File::from(fd)),
            Err(_) => Stderr::Shared(std::io::stderr()),
        }
    }

    fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Stderr::Duplicate(file) => (&*file).write_all(line),
            Stderr::Shared(stderr) => (&*stderr).write_all(line),
        }
    }
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
            match self.format {
                LogFormat::Text => {
                    line.push('[');
                    push_timestamp(&mut line, SystemTime::now());
                    let _ = writeln!(
                        line,
                        " {:<5} {}] {}",
                        record.level(),
                        record.target(),
                        record.args()
                    );
                }
                LogFormat::Json => push_json_line(&mut line, record, SystemTime::now()),
            }
            // Logging must never take the server down: a failed write is dropped.
            let _ = self.out.write_line(line.as_bytes());
        });
    }

    fn flush(&self) {}
}

/// One record as a JSON object and a newline: `time`, `level`, `target`,
/// `message`, `event` (`log` unless the record names its own) and the
/// record's key-value pairs.
fn push_json_line(out: &mut String, record: &Record<'_>, now: SystemTime) {
    out.push_str("{\"time\":\"");
    push_timestamp(out, now);
    let _ = write!(
        out,
        "\",\"level\":\"{}\",\"target\":",
        record.level().as_str().to_ascii_lowercase()
    );
    push_json_str(out, record.target());
    out.push_str(",\"message\":");
    match record.args().as_str() {
        Some(s) => push_json_str(out, s),
        None => push_json_str(out, &record.args().to_string()),
    }
    let kvs = record.key_values();
    // Every line has an event: the transaction line says its own.
    if kvs.get(Key::from_str("event")).is_none() {
        out.push_str(",\"event\":\"log\"");
    }
    let _ = kvs.visit(&mut JsonFields(out));
    out.push_str("}\n");
}

/// Writes key-value pairs as `,"key":value`: numbers and booleans as they
/// are, everything else as a string.
struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let out = &mut *self.0;
        out.push(',');
        push_json_str(out, key.as_str());
        out.push(':');
        if let Some(n) = value.to_u64() {
            let _ = write!(out, "{n}");
        } else if let Some(n) = value.to_i64() {
            let _ = write!(out, "{n}");
        } else if let Some(b) = value.to_bool() {
            let _ = write!(out, "{b}");
        } else if let Some(s) = value.to_borrowed_str() {
            push_json_str(out, s);
        } else {
            push_json_str(out, &value.to_string());
        }
        Ok(())
    }
}

/// Appends `s` as a JSON string literal, quotes included.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-25T20:15:46.123456Z` — RFC 3339 in UTC, to the microsecond.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let t = UtcTime::at(now);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros
    );
}

/// Installs the logger: `RUST_LOG` as env_logger reads it, `info` by default.
pub fn init(format: LogFormat) {
    let filter =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let level = filter.filter();
    let logger = LineLogger {
        filter,
        out: Stderr::open(),
        format,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        s.clear();
        // 2026-11-25T20:15:46.123456Z
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::new(1_795_637_746, 123_456_000),
        );
        assert_eq!(s, "2026-11-25T20:15:46.123456Z");
        s.clear();
        // A leap day: 2024-02-29T23:59:59Z.
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(1_709_251_199));
        assert_eq!(s, "2024-02-29T23:59:59.000000Z");
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn json_lines_carry_the_key_values() {
        let mut s = String::new();
        let args = format_args!("#1 plain");
        let kvs: [(&str, log::kv::Value); 3] = [
            ("event", "transaction".into()),
            ("us", 42u64.into()),
            ("peer", "127.0.0.1:5000".into()),
        ];
        let record = Record::builder()
            .args(args)
            .level(log::Level::Info)
            .target("wwep::net::session")
            .key_values(&kvs)
            .build();
        push_json_line(&mut s, &record, UNIX_EPOCH);
        assert_eq!(
            s,
            "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"info\",\"target\":\"wwep::net::session\",\"message\":\"#1 plain\",\"event\":\"transaction\",\"us\":42,\"peer\":\"127.0.0.1:5000\"}\n"
        );
    }

    #[test]
    fn json_lines_without_an_event_are_log_events() {
        let mut s = String::new();
        let record = Record::builder()
            .args(format_args!("plain listener on 127.0.0.1:27708"))
            .level(log::Level::Warn)
            .target("wwep::net::server")
            .build();
        push_json_line(&mut s, &record, UNIX_EPOCH);
        assert_eq!(
            s,
            "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"warn\",\"target\":\"wwep::net::server\",\"message\":\"plain listener on 127.0.0.1:27708\",\"event\":\"log\"}\n"
        );
    }
}
