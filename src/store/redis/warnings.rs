//! The Redis store's warnings, each of its own kind: at most one line a second
//! of each kind, and the count a line gives of those held back since its last
//! ("(5 more like this not shown)") is of its own kind only, so refused
//! connections are never counted as late writes, nor a bad value in the store
//! as an outage.

use std::fmt;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::rate_limited::RateLimitedLog;

/// What a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Warning {
    /// A new connection was refused: nothing listens at the address.
    ConnectRefused,
    /// A new connection was not made within the time limit.
    ConnectTimeout,
    /// A new connection failed otherwise (TLS, authentication, a name lookup,
    /// Sentinel's answer, the new connection's first command).
    ConnectFailed,
    /// A command got no answer within the time limit.
    CommandTimeout,
    /// A connection was closed or reset under a command.
    ConnectionLost,
    /// The node a command reached is a replica now (`READONLY`).
    ReadOnly,
    /// Any other error a command got.
    CommandFailed,
    /// No Sentinel has answered for longer than its down-after period.
    SentinelsSilent,
    /// Sentinel named another primary while a command ran.
    PrimaryChanged,
    /// The fence refused a write that reached Redis after its deadline.
    Late,
    /// `WAIT`/`WAITAOF` did not confirm a write in time.
    Unconfirmed,
    /// A register's stored value is not 4 hex digits.
    UnreadableValue,
    /// A field of a device's hash that is not a register.
    NotARegister,
    /// A device's key holds another type than a hash.
    WrongType,
}

impl Warning {
    /// Every kind, each at the index it is counted under.
    const ALL: [Warning; 14] = [
        Warning::ConnectRefused,
        Warning::ConnectTimeout,
        Warning::ConnectFailed,
        Warning::CommandTimeout,
        Warning::ConnectionLost,
        Warning::ReadOnly,
        Warning::CommandFailed,
        Warning::SentinelsSilent,
        Warning::PrimaryChanged,
        Warning::Late,
        Warning::Unconfirmed,
        Warning::UnreadableValue,
        Warning::NotARegister,
        Warning::WrongType,
    ];

    /// The kind of a failure to make a new connection.
    pub(crate) fn connecting(e: &RedisError) -> Warning {
        if e.is_connection_refusal() {
            Warning::ConnectRefused
        } else if e.is_timeout() {
            Warning::ConnectTimeout
        } else {
            Warning::ConnectFailed
        }
    }

    /// The kind of a command's failure on a connection that was made.
    pub(crate) fn command(e: &RedisError) -> Warning {
        if e.is_timeout() {
            Warning::CommandTimeout
        } else if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) {
            Warning::ReadOnly
        } else if e.is_io_error() {
            Warning::ConnectionLost
        } else {
            Warning::CommandFailed
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The store's warnings, limited and counted per [`Warning`].
pub(crate) struct Warnings(RateLimitedLog);

impl Warnings {
    pub(crate) fn new() -> Warnings {
        Warnings(RateLimitedLog::per_kind(
            log::Level::Warn,
            Duration::from_secs(1),
            Warning::ALL.len(),
        ))
    }

    pub(crate) fn log(&self, kind: Warning, message: fmt::Arguments<'_>) {
        self.0.log_kind(kind.index(), message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> RedisError {
        std::io::Error::new(kind, "test").into()
    }

    /// The error a command gets from an error reply, as the server sends it.
    fn reply(line: &str) -> RedisError {
        redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
            .and_then(redis::Value::extract_error)
            .expect_err("an error reply")
    }

    #[test]
    fn each_kind_is_counted_apart() {
        for (index, kind) in Warning::ALL.iter().enumerate() {
            assert_eq!(kind.index(), index, "{kind:?}");
        }
        // The last kind is last in `ALL`: none shares another's count.
        assert_eq!(Warning::ALL.len(), Warning::WrongType.index() + 1);
    }

    #[test]
    fn connection_failures_by_cause() {
        use std::io::ErrorKind::*;
        assert_eq!(
            Warning::connecting(&io(ConnectionRefused)),
            Warning::ConnectRefused
        );
        assert_eq!(
            Warning::connecting(&super::super::connect::timed_out("no connection".into())),
            Warning::ConnectTimeout
        );
        assert_eq!(
            Warning::connecting(&io(WouldBlock)),
            Warning::ConnectTimeout
        );
        assert_eq!(
            Warning::connecting(&(ErrorKind::AuthenticationFailed, "auth").into()),
            Warning::ConnectFailed
        );
        assert_eq!(
            Warning::connecting(&reply("WRONGPASS invalid username-password pair")),
            Warning::ConnectFailed
        );
        assert_eq!(
            Warning::connecting(&(ErrorKind::MasterNameNotFoundBySentinel, "no").into()),
            Warning::ConnectFailed
        );
    }

    #[test]
    fn command_failures_by_cause() {
        use std::io::ErrorKind::*;
        assert_eq!(Warning::command(&io(WouldBlock)), Warning::CommandTimeout);
        assert_eq!(Warning::command(&io(TimedOut)), Warning::CommandTimeout);
        for lost in [ConnectionReset, BrokenPipe, UnexpectedEof] {
            assert_eq!(Warning::command(&io(lost)), Warning::ConnectionLost);
        }
        assert_eq!(
            Warning::command(&reply(
                "READONLY You can't write against a read only replica."
            )),
            Warning::ReadOnly
        );
        for other in [
            "ERR unknown command",
            "LOADING Redis is loading the dataset in memory",
            "NOPERM this user has no permissions",
        ] {
            assert_eq!(Warning::command(&reply(other)), Warning::CommandFailed);
        }
    }
}
