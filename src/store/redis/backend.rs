//! [`RedisStore`]: the register [`Backend`] over the pool. `R` is `HGET`,
//! `W` goes through the fence, and opening the store sets up the source of
//! connections (one server or Sentinel), the Sentinel watcher and a first
//! connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};
use redis::{
    Client, Connection, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult,
    TlsCertificates,
};

use super::connect::{aborting, describe};
use super::fence::{Confirmation, FencedWrite, Outcome, fence_sha};
use super::location::{RedisSettings, StoreLocation};
use super::pool::{Pool, Source};
use super::sentinel::SentinelSource;
use super::warnings::Warning;
use crate::input_file::MAX_FILE_BYTES;
use crate::protocol::{Escaped, Transport};
use crate::store::backend::{Backend, DeviceRegisters, StoreError};
use crate::store::text;

/// Why the shared store cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOpenError {
    /// The location or the CA file cannot be used.
    Setup(String),
    /// `--store-wait-aof` against a server without `WAITAOF`.
    NoWaitAof(String),
    /// `--store-wait-aof` needs to ask the server, which did not answer.
    Unreachable(String),
    /// The store's TLS certificate does not verify, at startup: a setting to
    /// fix (`--store-ca`, the name in the URL, the store's certificate), not an
    /// outage to wait out.
    Untrusted {
        store: String,
        /// The CA file it was checked against; None for the system's roots.
        ca: Option<PathBuf>,
        /// OpenSSL's reason, e.g. `hostname mismatch`.
        reason: String,
    },
}

impl fmt::Display for RedisOpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisOpenError::Setup(e) => write!(f, "--store: {e}"),
            RedisOpenError::NoWaitAof(server) => write!(
                f,
                "--store-wait-aof: {server} has no WAITAOF (it needs Redis or Valkey 7.2 or later)"
            ),
            RedisOpenError::Unreachable(e) => write!(
                f,
                "--store-wait-aof: cannot ask the store whether it has WAITAOF: {e}"
            ),
            RedisOpenError::Untrusted { store, ca, reason } => match ca {
                Some(ca) => write!(
                    f,
                    "--store: the certificate of {store} is not trusted (checked against --store-ca {}): {reason}",
                    ca.display()
                ),
                None => write!(
                    f,
                    "--store: the certificate of {store} is not trusted (checked against the system's roots; --store-ca names another CA): {reason}"
                ),
            },
        }
    }
}

impl std::error::Error for RedisOpenError {}

/// The longest one command may take, whatever `--timeout-ms` allows.
const MAX_COMMAND_TIME: Duration = Duration::from_secs(1);

/// How much of a stored value a log line shows: enough to recognise it, and
/// a huge one never floods the log.
const LOGGED_VALUE_BYTES: usize = 32;

pub struct RedisStore {
    pool: Pool,
    /// Keys are `PREFIX:DEV`.
    prefix: String,
    /// What a write waits for once applied.
    confirm: Confirmation,
    /// Ends the Sentinel watcher when the store is dropped.
    stop: Arc<AtomicBool>,
    /// The SHA1 of the fence script, for `EVALSHA`.
    fence_sha: String,
}

impl RedisStore {
    /// Sets up the pool (`capacity` connections at most, one per worker) and
    /// tries a first connection. A store that does not answer yet is not an
    /// error (service starts when it does), unless `--store-wait-aof` needs to
    /// ask it what it supports.
    pub fn open(
        settings: &RedisSettings,
        capacity: usize,
        timeout: Duration,
    ) -> Result<RedisStore, RedisOpenError> {
        let root_cert = read_ca(settings.ca.as_deref())?;
        let source = source_of(&settings.location, root_cert.clone())?;
        let timeout = timeout.min(MAX_COMMAND_TIME);
        let store = RedisStore {
            pool: Pool::new(source, settings.location.clone(), capacity, timeout),
            prefix: settings.prefix.clone(),
            confirm: Confirmation::new(settings.wait_replicas, settings.wait_aof, timeout),
            stop: Arc::new(AtomicBool::new(false)),
            fence_sha: fence_sha(),
        };
        store.follow_sentinels()?;
        store.first_connection(settings.ca.as_deref(), root_cert.as_deref())?;
        Ok(store)
    }

    /// With Sentinel, starts the thread that follows the Sentinels until the
    /// store is dropped.
    fn follow_sentinels(&self) -> Result<(), RedisOpenError> {
        if let Source::Sentinel(_) = &*self.pool.source {
            let (source, stop) = (Arc::clone(&self.pool.source), Arc::clone(&self.stop));
            std::thread::Builder::new()
                .name("wwep-sentinel-watch".to_string())
                .spawn(move || {
                    if let Source::Sentinel(sentinels) = &*source {
                        sentinels.follow(&stop);
                    }
                })
                .map_err(|e| RedisOpenError::Setup(format!("cannot start a thread: {e}")))?;
        }
        Ok(())
    }

    /// Connects once: the connection joins the pool; `--store-wait-aof` is
    /// checked; a store whose certificate does not verify is refused, and one
    /// that does not answer yet is logged.
    fn first_connection(
        &self,
        ca: Option<&Path>,
        root_cert: Option<&[u8]>,
    ) -> Result<(), RedisOpenError> {
        let location = &self.pool.location;
        let epoch = self.pool.source.epoch();
        match self.pool.connect() {
            Ok(mut connection) => {
                if self.confirm.aof && !has_waitaof(&mut connection) {
                    return Err(RedisOpenError::NoWaitAof(location.to_string()));
                }
                info!("registers are kept in {location}");
                self.pool.adopt(connection, epoch);
            }
            Err(e) if self.confirm.aof => return Err(RedisOpenError::Unreachable(describe(&e))),
            Err(e) => {
                if let Some(reason) = self.certificate_rejection(root_cert) {
                    return Err(RedisOpenError::Untrusted {
                        store: location.to_string(),
                        ca: ca.map(Path::to_path_buf),
                        reason,
                    });
                }
                warn!(
                    "{location} does not answer yet ({}); requests get X until it does",
                    describe(&e)
                )
            }
        }
        Ok(())
    }

    /// Why the data node's TLS certificate does not verify, if it is reached
    /// over TLS and answers a handshake that fails on its certificate.
    fn certificate_rejection(&self, root_cert: Option<&[u8]>) -> Option<String> {
        let deadline = Instant::now() + self.pool.timeout;
        let (host, port) = self.pool.source.tls_node(deadline)?;
        crate::tls::client::certificate_rejection(&host, port, root_cert, deadline)
    }

    fn key(&self, device: u16) -> String {
        format!("{}:{device:04X}", self.prefix)
    }

    /// The one verdict on a register's stored text, whichever path asked (a
    /// WWEP read, `/api/devices`): its value, or unreadable, logged.
    fn verdict(&self, device: u16, register: u8, stored: &[u8]) -> Result<u16, StoreError> {
        text::value(stored).ok_or_else(|| {
            self.pool.warnings.log(
                Warning::UnreadableValue,
                format_args!(
                    "{}: register {register:02X} holds \"{}\"{}, not 4 hex digits: \
                     answered as unreadable (X to a read, \"unreadable\" in /api/devices)",
                    self.key(device),
                    Escaped(&stored[..stored.len().min(LOGGED_VALUE_BYTES)]),
                    if stored.len() > LOGGED_VALUE_BYTES {
                        "…"
                    } else {
                        ""
                    }
                ),
            );
            StoreError::Unreadable
        })
    }

    /// The one verdict on a device whose key holds `kind` (`string`, `list`,
    /// …), not a hash, whichever path met it (a WWEP read or write,
    /// `/api/devices`): every register of it is unreadable, logged. The store
    /// answered, so it is not an outage; the key is not this server's to
    /// replace.
    fn not_a_hash(&self, device: u16, kind: &str) -> StoreError {
        self.pool.warnings.log(
            Warning::WrongType,
            format_args!(
                "{key} holds a {kind}, not a hash of registers: device {device:04X} is unreadable \
                 (X to a read or a write, 502 from /api/devices/{device:04X}); the key is left as \
                 it is: delete it to use the device again, or give wwep another --store-prefix \
                 if another program owns it",
                key = self.key(device),
                kind = Escaped(kind.as_bytes()),
            ),
        );
        StoreError::Unreadable
    }

    /// The answer to a write Redis answered: logged unless it was done.
    fn report(&self, device: u16, outcome: Outcome) -> Result<(), StoreError> {
        let Confirmation {
            replicas,
            aof,
            wait_ms,
        } = self.confirm;
        let warnings = &self.pool.warnings;
        match outcome {
            Outcome::Done => return Ok(()),
            Outcome::NotAHash(kind) => return Err(self.not_a_hash(device, &kind)),
            Outcome::Late => warnings.log(Warning::Late, format_args!(
                "{}: a write reached Redis after its time limit of {} ms and was not applied; answered X",
                self.pool.location,
                self.pool.timeout.as_millis()
            )),
            Outcome::Unconfirmed => warnings.log(Warning::Unconfirmed, format_args!(
                "{}: a write was not confirmed by {replicas} replica(s){} in {wait_ms} ms; answered X",
                self.pool.location,
                if aof { " and the append-only file" } else { "" }
            )),
        }
        Err(StoreError::Unavailable)
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The CA file's bytes (`--store-ca`), if one is given.
fn read_ca(ca: Option<&Path>) -> Result<Option<Vec<u8>>, RedisOpenError> {
    ca.map(|path| {
        crate::input_file::read(path, MAX_FILE_BYTES).map_err(|e| {
            RedisOpenError::Setup(format!("--store-ca {}: cannot read: {e}", path.display()))
        })
    })
    .transpose()
}

/// Where the pool's connections will come from.
fn source_of(
    location: &StoreLocation,
    root_cert: Option<Vec<u8>>,
) -> Result<Source, RedisOpenError> {
    let setup = |e: RedisError| RedisOpenError::Setup(describe(&e));
    match location {
        StoreLocation::Memory => Err(RedisOpenError::Setup("not a shared store".to_string())),
        StoreLocation::Redis { url } => direct_client(url, root_cert)
            .map(Source::Direct)
            .map_err(setup),
        StoreLocation::Sentinel {
            sentinels,
            primary,
            node,
            transport,
        } => {
            if *transport == Transport::Plain && root_cert.is_some() {
                return Err(RedisOpenError::Setup(
                    "--store-ca is for TLS to the store: rediss://… or rediss+sentinel://…"
                        .to_string(),
                ));
            }
            SentinelSource::new(sentinels, primary, node, *transport, root_cert)
                .map(Source::Sentinel)
                .map_err(setup)
        }
    }
}

/// A client for one server at `url`, trusting `root_cert` for TLS if given.
fn direct_client(url: &str, root_cert: Option<Vec<u8>>) -> RedisResult<Client> {
    let info = aborting(url.into_connection_info()?);
    match root_cert {
        Some(root) => Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(root),
            },
        ),
        None => Client::open(info),
    }
}

/// What Redis answered a command on a device's key.
enum OnKey<T> {
    /// The key is a hash, or there is none: the command's answer.
    Hash(T),
    /// The key holds this type (`string`, `list`, …): no register of the
    /// device can be read from it.
    NotAHash(String),
}

/// Runs `command` on the device's `key`. A key of another type than a hash
/// is an answer, not a failure of the store: Redis's `WRONGTYPE` (told by its
/// error code, never its text), the type named by `TYPE`.
fn on_key<T: FromRedisValue>(
    connection: &mut Connection,
    key: &str,
    command: &redis::Cmd,
) -> RedisResult<OnKey<T>> {
    match command.query(connection) {
        Err(e) if is_wrong_type(&e) => Ok(OnKey::NotAHash(
            redis::cmd("TYPE").arg(key).query(connection)?,
        )),
        answer => answer.map(OnKey::Hash),
    }
}

/// Redis's answer to a command on a key of another type than it works on.
fn is_wrong_type(e: &RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
}

/// Whether the server knows `WAITAOF` (Redis/Valkey 7.2+).
fn has_waitaof(connection: &mut Connection) -> bool {
    let info: RedisResult<redis::Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("WAITAOF")
        .query(connection);
    matches!(info, Ok(redis::Value::Array(entries)) if entries.first().is_some_and(|e| *e != redis::Value::Nil))
}

/// A device's registers from the fields of its hash: each field that is a
/// register ([`text::register`], the spelling a read asks `HGET` for) with
/// the `verdict` a read of it gets (its value, or `None`: unreadable);
/// every other field goes to `not_a_register` and is left out, as no read
/// can reach it. One field per register, so none is listed twice.
fn listing(
    fields: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    mut verdict: impl FnMut(u8, &[u8]) -> Option<u16>,
    mut not_a_register: impl FnMut(&[u8]),
) -> DeviceRegisters {
    let mut registers = DeviceRegisters::default();
    for (field, stored) in fields {
        match text::register(&field) {
            Some(register) => match verdict(register, &stored) {
                Some(value) => registers.values.push((register, value)),
                None => registers.unreadable.push(register),
            },
            None => not_a_register(&field),
        }
    }
    registers.values.sort_unstable();
    registers.unreadable.sort_unstable();
    registers
}

impl Backend for RedisStore {
    /// `HGET`: the stored bytes as they are (a value that is not UTF-8, or
    /// a key that is not a hash, is unreadable, not a failure of the store).
    fn read(&self, device: u16, register: u8) -> Result<Option<u16>, StoreError> {
        let key = self.key(device);
        let mut hget = redis::cmd("HGET");
        hget.arg(&key).arg(format!("{register:02X}"));
        let stored: Option<Vec<u8>> =
            match self.pool.with_connection(|c, _| on_key(c, &key, &hget))? {
                OnKey::Hash(stored) => stored,
                OnKey::NotAHash(kind) => return Err(self.not_a_hash(device, &kind)),
            };
        stored
            .map(|stored| self.verdict(device, register, &stored))
            .transpose()
    }

    /// `HGETALL` of the device's hash, within the same time limit as `read`;
    /// each register gets the verdict `read` gives it. A field that is not a
    /// register (no read can ask for it) is logged and left out. A key that
    /// is not a hash makes the whole device unreadable, as `read` finds it.
    fn device(&self, device: u16) -> Result<DeviceRegisters, StoreError> {
        let key = self.key(device);
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(&key);
        let fields: std::collections::HashMap<Vec<u8>, Vec<u8>> = match self
            .pool
            .with_connection(|c, _| on_key(c, &key, &hgetall))?
        {
            OnKey::Hash(fields) => fields,
            OnKey::NotAHash(kind) => return Err(self.not_a_hash(device, &kind)),
        };
        Ok(listing(
            fields,
            |register, stored| self.verdict(device, register, stored).ok(),
            |field| {
                self.pool.warnings.log(
                    Warning::NotARegister,
                    format_args!(
                        "{}: field \"{}\"{} is not a register (2 upper-case hex digits, as wwep \
                         writes them and a read asks for them); left out",
                        self.key(device),
                        Escaped(&field[..field.len().min(LOGGED_VALUE_BYTES)]),
                        if field.len() > LOGGED_VALUE_BYTES {
                            "…"
                        } else {
                            ""
                        }
                    ),
                )
            },
        ))
    }

    fn write(&self, device: u16, register: u8, value: u16) -> Result<(), StoreError> {
        let write = FencedWrite {
            key: self.key(device),
            field: format!("{register:02X}"),
            text: format!("{value:04X}"),
            confirm: self.confirm,
            sha: &self.fence_sha,
        };
        let outcome = self.pool.with_connection(|c, clock| {
            // This write is answered X once the socket's time limit passes
            // from now at the earliest: the fence refuses it after that.
            write.run(c, clock.deadline(Instant::now() + self.pool.timeout))
        })?;
        self.report(device, outcome)
    }

    /// Answers from the last command; after a failure, asks Redis (a `PING`,
    /// paced by the reconnection back-off).
    fn writable(&self) -> bool {
        if !self.pool.is_failing() {
            return true;
        }
        self.pool
            .with_connection(|c, _| redis::cmd("PING").query::<String>(c))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_does_not_answer_fails_fast_and_backs_off() {
        // A port nothing listens on: bind, note, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = RedisSettings {
            location: format!("redis://127.0.0.1:{port}").parse().unwrap(),
            ..RedisSettings::default()
        };
        let store = RedisStore::open(&settings, 4, Duration::from_millis(200)).unwrap();
        let started = Instant::now();
        assert_eq!(store.write(1, 2, 3), Err(StoreError::Unavailable));
        assert_eq!(store.read(1, 2), Err(StoreError::Unavailable));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!store.writable(), "the last command failed");
        let wait_aof = RedisSettings {
            wait_aof: true,
            ..settings
        };
        assert!(matches!(
            RedisStore::open(&wait_aof, 4, Duration::from_millis(200)),
            Err(RedisOpenError::Unreachable(_))
        ));
    }

    #[test]
    fn a_store_or_sentinel_that_accepts_and_never_answers_fails_within_the_time_limit() {
        // The kernel completes the TCP handshakes; nothing ever answers: a hung
        // server. Neither a TLS handshake nor a Sentinel lookup may wait on it.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        for location in [
            format!("rediss://127.0.0.1:{port}"),
            format!("redis+sentinel://127.0.0.1:{port}/main"),
        ] {
            let settings = RedisSettings {
                location: location.parse().unwrap(),
                ..RedisSettings::default()
            };
            let started = Instant::now();
            let store = RedisStore::open(&settings, 4, Duration::from_millis(200)).unwrap();
            assert_eq!(store.read(1, 2), Err(StoreError::Unavailable), "{location}");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{location}: {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn a_key_of_another_type_is_told_by_its_error_code() {
        let reply = |line: &str| {
            redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
                .and_then(redis::Value::extract_error)
                .expect_err("an error reply")
        };
        assert!(is_wrong_type(&reply(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )));
        // The code decides, not words in the message.
        assert!(is_wrong_type(&reply("WRONGTYPE")));
        for other in [
            "ERR WRONGTYPE in the message of another error",
            "READONLY You can't write against a read only replica.",
            "NOSCRIPT No matching script.",
        ] {
            assert!(!is_wrong_type(&reply(other)), "{other}");
        }
        let lost: RedisError = std::io::Error::other("WRONGTYPE").into();
        assert!(!is_wrong_type(&lost));
    }

    /// What `listing` makes of a hash's fields, with the value grammar as
    /// the verdict: the registers, and the fields it called not registers.
    fn listed(fields: &[(&str, &str)]) -> (DeviceRegisters, Vec<String>) {
        let mut others = Vec::new();
        let registers = listing(
            fields
                .iter()
                .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec())),
            |_, stored| text::value(stored),
            |field| others.push(String::from_utf8_lossy(field).into_owned()),
        );
        others.sort();
        (registers, others)
    }

    #[test]
    fn a_listing_has_each_register_once_in_the_spelling_a_read_asks_for() {
        // `HSET … 0a 1111 0A 2222`: only 0A is the register a read finds.
        let (registers, others) = listed(&[("0a", "1111"), ("0A", "2222")]);
        assert_eq!(registers.values, [(0x0A, 0x2222)]);
        assert!(registers.unreadable.is_empty());
        assert_eq!(others, ["0a"]);
        // `HSET … 0a ff 0A 1234`: 0A is listed once, as readable.
        let (registers, others) = listed(&[("0a", "ff"), ("0A", "1234")]);
        assert_eq!(registers.values, [(0x0A, 0x1234)]);
        assert!(registers.unreadable.is_empty());
        assert_eq!(others, ["0a"]);
        // `HSET … 0b 00ab`: no register at all, as a read of 0B finds none.
        let (registers, others) = listed(&[("0b", "00ab")]);
        assert!(registers.is_empty());
        assert_eq!(others, ["0b"]);
        // Values in either case read; bad ones are unreadable; all sorted.
        let (registers, others) = listed(&[
            ("FF", "abcd"),
            ("0C", "ff"),
            ("01", "0001"),
            ("02", "12345"),
            ("x", "0001"),
            ("0B0", "0001"),
        ]);
        assert_eq!(registers.values, [(0x01, 0x0001), (0xFF, 0xABCD)]);
        assert_eq!(registers.unreadable, [0x02, 0x0C]);
        assert_eq!(others, ["0B0", "x"]);
    }

    #[test]
    fn an_untrusted_certificate_is_named_with_the_ca() {
        let error = RedisOpenError::Untrusted {
            store: "redis localhost:6380".to_string(),
            ca: Some(PathBuf::from("redis-ca.pem")),
            reason: "certificate has expired".to_string(),
        };
        assert_eq!(
            error.to_string(),
            "--store: the certificate of redis localhost:6380 is not trusted (checked against --store-ca redis-ca.pem): certificate has expired"
        );
    }
}
