//! The fence: a write reaches Redis with the Redis time after which it must
//! not be applied (the moment its front end answers `X`), so a write that
//! arrives late never lands on a newer acknowledged one. Each connection
//! carries a reading of Redis's clock ([`Clock`]) to turn a local deadline
//! into Redis time; the write itself is [`FENCE_SCRIPT`], then `WAIT` and
//! `WAITAOF` when asked for, in one pipeline.

use std::time::{Duration, Instant};

use redis::{Connection, ErrorKind, RedisResult, Value};

/// One reading of Redis's clock (`TIME`), and the local instant just after
/// the answer came: at any later local instant `t`, Redis's clock reads at
/// least `redis_ms + (t - local)` (less the rounding down to milliseconds).
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    redis_ms: u64,
    local: Instant,
}

impl Clock {
    pub(crate) fn sample(connection: &mut Connection) -> RedisResult<Clock> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(connection)?;
        Ok(Clock {
            redis_ms: secs * 1000 + micros / 1000,
            local: Instant::now(),
        })
    }

    /// The Redis time by which Redis's clock has certainly passed when the
    /// local clock reaches `at`, less [`FENCE_MARGIN`].
    pub(crate) fn deadline(&self, at: Instant) -> u64 {
        let ahead = at.saturating_duration_since(self.local).as_millis() as u64;
        (self.redis_ms + ahead).saturating_sub(FENCE_MARGIN.as_millis() as u64)
    }

    /// Read recently enough to fence a write.
    pub(crate) fn is_recent(&self) -> bool {
        self.local.elapsed() < MAX_CLOCK_AGE
    }
}

/// Room for the two clocks drifting apart between samples.
const FENCE_MARGIN: Duration = Duration::from_millis(5);
/// A clock reading older than this is taken again before the connection
/// carries a write.
const MAX_CLOCK_AGE: Duration = Duration::from_secs(10);

/// The fence: `HSET KEYS[1] ARGV[2] ARGV[3]` only if Redis's clock has not
/// passed `ARGV[1]` (milliseconds), the moment the front end answers `X` for
/// this write; 1 when written, 0 when refused. A write that reaches Redis
/// after its front end gave up on it is never applied, so it cannot land on
/// a newer acknowledged one.
///
/// A key that holds another type than a hash (set by hand or by another
/// program) is not the device's registers: the write is not made, the key is
/// left as it is, and its type is the answer. Asked with `TYPE` rather than
/// told by `HSET`'s `WRONGTYPE` error, whose code does not reliably reach this
/// side from a script in a pipeline (Redis before 7.0 reports it as the
/// script's `ERR`; the client keeps a pipeline's error codes only when it
/// knows them).
const FENCE_SCRIPT: &str = "\
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[1]) then
  return 0
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then
  return kind
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
";

/// What a write waits for after the fence has applied it: `WAIT` for
/// `replicas` replicas and `WAITAOF` for the append-only files, each for at
/// most `wait_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Confirmation {
    pub(crate) replicas: u32,
    pub(crate) aof: bool,
    pub(crate) wait_ms: u64,
}

impl Confirmation {
    /// WAIT (and WAITAOF) must answer well before the socket's read timeout
    /// (`timeout`), so that "not confirmed" (an answer) and "no answer" are
    /// told apart: they share half of the time limit.
    pub(crate) fn new(replicas: u32, aof: bool, timeout: Duration) -> Confirmation {
        let waits = u64::from(replicas > 0) + u64::from(aof);
        let wait_ms = (timeout.as_millis() as u64 / 2 / waits.max(1)).max(1);
        Confirmation {
            replicas,
            aof,
            wait_ms,
        }
    }
}

/// What became of a write that Redis answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    /// The fence refused it: it arrived after its deadline.
    Late,
    /// Applied, but not confirmed by the replicas or the append-only file.
    Unconfirmed,
    /// Not made: the device's key holds this type (`string`, `list`, …),
    /// not a hash.
    NotAHash(String),
}

/// The SHA1 of [`FENCE_SCRIPT`], for `EVALSHA`.
pub(crate) fn fence_sha() -> String {
    openssl::sha::sha1(FENCE_SCRIPT.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One register write through the fence: `HSET key field text`.
pub(crate) struct FencedWrite<'a> {
    pub(crate) key: String,
    pub(crate) field: String,
    pub(crate) text: String,
    pub(crate) confirm: Confirmation,
    /// [`fence_sha`], computed once.
    pub(crate) sha: &'a str,
}

impl FencedWrite<'_> {
    /// Sends the write, refused by Redis after `deadline` (Redis time, in
    /// milliseconds), and judges the answers.
    pub(crate) fn run(&self, connection: &mut Connection, deadline: u64) -> RedisResult<Outcome> {
        let answers: Vec<Value> = match self.pipeline(deadline, true).query(connection) {
            Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The first write on this server since it started (or
                // since SCRIPT FLUSH): EVAL caches the script.
                self.pipeline(deadline, false).query(connection)?
            }
            answers => answers?,
        };
        Ok(self.judge(answers))
    }

    fn pipeline(&self, deadline: u64, by_sha: bool) -> redis::Pipeline {
        let Confirmation {
            replicas,
            aof,
            wait_ms,
        } = self.confirm;
        let mut pipe = redis::pipe();
        if by_sha {
            pipe.cmd("EVALSHA").arg(self.sha);
        } else {
            pipe.cmd("EVAL").arg(FENCE_SCRIPT);
        }
        pipe.arg(1)
            .arg(&self.key)
            .arg(deadline)
            .arg(&self.field)
            .arg(&self.text);
        if replicas > 0 {
            pipe.cmd("WAIT").arg(replicas).arg(wait_ms);
        }
        if aof {
            pipe.cmd("WAITAOF").arg(1).arg(replicas).arg(wait_ms);
        }
        pipe
    }

    /// The fence's answer, then WAIT's count of replicas, then WAITAOF's
    /// counts (local, replicas), as far as they were asked for.
    fn judge(&self, answers: Vec<Value>) -> Outcome {
        let Confirmation { replicas, aof, .. } = self.confirm;
        let mut answers = answers.into_iter();
        let mut next = || answers.next().unwrap_or(Value::Nil);
        let applied: i64 = match next() {
            // The script answers the key's type when it is not a hash.
            Value::BulkString(kind) => {
                return Outcome::NotAHash(String::from_utf8_lossy(&kind).into_owned());
            }
            Value::SimpleString(kind) => return Outcome::NotAHash(kind),
            applied => redis::from_redis_value(applied).unwrap_or(0),
        };
        if applied != 1 {
            return Outcome::Late;
        }
        let mut ok = true;
        if replicas > 0 {
            let acked: i64 = redis::from_redis_value(next()).unwrap_or(0);
            ok &= acked >= i64::from(replicas);
        }
        if aof {
            let counts: Vec<i64> = redis::from_redis_value(next()).unwrap_or_default();
            ok &= counts.first().is_some_and(|local| *local >= 1)
                && counts.get(1).is_some_and(|r| *r >= i64::from(replicas));
        }
        if ok {
            Outcome::Done
        } else {
            Outcome::Unconfirmed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(replicas: u32) -> FencedWrite<'static> {
        FencedWrite {
            key: "wwep:0BB0".to_string(),
            field: "01".to_string(),
            text: "1234".to_string(),
            confirm: Confirmation::new(replicas, false, Duration::from_millis(200)),
            sha: "",
        }
    }

    #[test]
    fn the_fence_answers_judged() {
        let int = Value::Int;
        assert_eq!(write(0).judge(vec![int(1)]), Outcome::Done);
        assert_eq!(write(0).judge(vec![int(0)]), Outcome::Late);
        assert_eq!(write(1).judge(vec![int(1), int(1)]), Outcome::Done);
        assert_eq!(write(1).judge(vec![int(1), int(0)]), Outcome::Unconfirmed);
        assert_eq!(write(0).judge(Vec::new()), Outcome::Late);
        assert_eq!(
            write(1).judge(vec![Value::BulkString(b"string".to_vec()), int(0)]),
            Outcome::NotAHash("string".to_string())
        );
        assert_eq!(
            write(0).judge(vec![Value::SimpleString("list".to_string())]),
            Outcome::NotAHash("list".to_string())
        );
    }
}
