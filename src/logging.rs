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
use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::time::SystemTime;

use log::kv::{Key, Value, VisitSource};
use log::{Level, Log, Metadata, Record};
use serde::ser::{Error as _, SerializeMap};
use serde::{Serialize, Serializer};

use crate::civil_date::UtcTime;
use crate::json::Text;

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
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
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
            let now = Timestamp(SystemTime::now());
            let formatted = match self.format {
                LogFormat::Text => writeln!(
                    line,
                    "[{now} {:<5} {}] {}",
                    record.level(),
                    record.target(),
                    record.args()
                ),
                LogFormat::Json => push_json_line(&mut line, record, now),
            };
            // Logging must never take the server down: a line that cannot be
            // formatted or written is dropped.
            if formatted.is_ok() {
                let _ = self.out.write_line(&line);
            }
        });
    }

    fn flush(&self) {}
}

/// One record as a JSON object and a newline: `time`, `level`, `target`,
/// `message`, `event` (`log` unless the record names its own) and the
/// record's key-value pairs.
fn push_json_line(out: &mut Vec<u8>, record: &Record<'_>, now: Timestamp) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &JsonLine { record, now })?;
    out.push(b'\n');
    Ok(())
}

/// A record as the JSON object of its line, written field by field.
struct JsonLine<'a, 'r> {
    record: &'a Record<'r>,
    now: Timestamp,
}

impl Serialize for JsonLine<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = self.record;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("time", &Text(self.now))?;
        map.serialize_entry("level", lowercase(record.level()))?;
        map.serialize_entry("target", record.target())?;
        map.serialize_entry("message", record.args())?;
        let kvs = record.key_values();
        // Every line has an event: the transaction line says its own.
        if kvs.get(Key::from_str("event")).is_none() {
            map.serialize_entry("event", "log")?;
        }
        let mut fields = JsonFields {
            map: &mut map,
            error: None,
        };
        let visited = kvs.visit(&mut fields);
        if let Some(error) = fields.error {
            return Err(error);
        }
        visited.map_err(S::Error::custom)?;
        map.end()
    }
}

fn lowercase(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Writes key-value pairs as fields: numbers and booleans as they are,
/// everything else as a string; the first error ends the visit.
struct JsonFields<'m, M: SerializeMap> {
    map: &'m mut M,
    error: Option<M::Error>,
}

impl<'kvs, M: SerializeMap> VisitSource<'kvs> for JsonFields<'_, M> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        let written = if let Some(n) = value.to_u64() {
            self.map.serialize_entry(key, &n)
        } else if let Some(n) = value.to_i64() {
            self.map.serialize_entry(key, &n)
        } else if let Some(b) = value.to_bool() {
            self.map.serialize_entry(key, &b)
        } else if let Some(s) = value.to_borrowed_str() {
            self.map.serialize_entry(key, s)
        } else {
            self.map.serialize_entry(key, &Text(value))
        };
        written.map_err(|e| {
            self.error = Some(e);
            log::kv::Error::msg("a field could not be written")
        })
    }
}

/// `2026-11-25T20:15:46.123456Z` — RFC 3339 in UTC, to the microsecond.
#[derive(Debug, Clone, Copy)]
struct Timestamp(SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        UtcTime::at(self.0).fmt(f)
    }
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
        let at = |t| Timestamp(t).to_string();
        assert_eq!(at(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            at(UNIX_EPOCH + Duration::new(1_795_637_746, 123_456_000)),
            "2026-11-25T20:15:46.123456Z"
        );
        // A leap day.
        assert_eq!(
            at(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "2024-02-29T23:59:59.000000Z"
        );
    }

    /// The JSON line of `record` at the epoch.
    fn json_line(record: &Record<'_>) -> String {
        let mut line = Vec::new();
        push_json_line(&mut line, record, Timestamp(UNIX_EPOCH)).unwrap();
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let record = Record::builder()
            .args(format_args!("a\"b\\c\nd\u{1}é"))
            .target("t")
            .build();
        let line = json_line(&record);
        assert!(line.contains(r#""message":"a\"b\\c\nd\u0001é""#), "{line}");
    }

    #[test]
    fn json_lines_carry_the_key_values() {
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
        assert_eq!(
            json_line(&record),
            "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"info\",\"target\":\"wwep::net::session\",\"message\":\"#1 plain\",\"event\":\"transaction\",\"us\":42,\"peer\":\"127.0.0.1:5000\"}\n"
        );
    }

    #[test]
    fn json_lines_without_an_event_are_log_events() {
        let record = Record::builder()
            .args(format_args!("plain listener on 127.0.0.1:27708"))
            .level(log::Level::Warn)
            .target("wwep::net::server")
            .build();
        assert_eq!(
            json_line(&record),
            "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"warn\",\"target\":\"wwep::net::server\",\"message\":\"plain listener on 127.0.0.1:27708\",\"event\":\"log\"}\n"
        );
    }
}
