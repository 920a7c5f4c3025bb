//! Making one connection within a time limit. The redis crate cannot time out
//! every step (a TLS handshake with a server that accepted the connection and
//! went silent, a name lookup), so each attempt runs on a thread of its own and
//! the caller waits for it only until its deadline; what it leaves behind is
//! counted, and capped. Also the small helpers every part of the Redis store
//! shares: time left, time-out errors, errors in words, reset-on-close.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionInfo, RedisError, RedisResult};

/// One connection attempt, shared by the thread that makes it and the caller
/// that waits for it.
#[derive(Default)]
struct Attempt {
    result: Option<RedisResult<Connection>>,
    /// The caller stopped waiting; the thread drops what it gets.
    abandoned: bool,
}

/// While this many connection attempts that were given up on still wait for
/// an answer, no new one is started: a silent store costs a few threads, not
/// one per request.
const MAX_ABANDONED_ATTEMPTS: usize = 4;

/// Connection attempts, each on a thread of its own.
#[derive(Default)]
pub(crate) struct Attempts {
    /// Attempts given up on that have not finished yet.
    abandoned: Arc<AtomicUsize>,
}

impl Attempts {
    /// Runs `connect(deadline)` on a thread of its own and waits for it until
    /// `timeout` passes, so that a step the library cannot time out holds
    /// that thread, not the worker; the worker gets an error when the time is
    /// up.
    pub(crate) fn run(
        &self,
        timeout: Duration,
        connect: impl FnOnce(Instant) -> RedisResult<Connection> + Send + 'static,
    ) -> RedisResult<Connection> {
        let abandoned = self.abandoned.load(Ordering::Acquire);
        if abandoned >= MAX_ABANDONED_ATTEMPTS {
            return Err(timed_out(format!(
                "{abandoned} earlier connection attempts still wait for an answer"
            )));
        }
        let deadline = Instant::now() + timeout;
        let attempt = self.start(deadline, connect)?;
        let (slot, done) = &*attempt;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = slot.result.take() {
                return result;
            }
            let Ok(left) = time_left(deadline) else {
                slot.abandoned = true;
                self.abandoned.fetch_add(1, Ordering::AcqRel);
                return Err(timed_out(format!(
                    "no connection within {} ms",
                    timeout.as_millis()
                )));
            };
            slot = match done.wait_timeout(slot, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The thread of one attempt: it hands its result over, or drops it and
    /// counts itself finished when the caller has given up.
    fn start(
        &self,
        deadline: Instant,
        connect: impl FnOnce(Instant) -> RedisResult<Connection> + Send + 'static,
    ) -> RedisResult<Arc<(Mutex<Attempt>, Condvar)>> {
        let attempt = Arc::new((Mutex::new(Attempt::default()), Condvar::new()));
        let (shared, abandoned) = (Arc::clone(&attempt), Arc::clone(&self.abandoned));
        std::thread::Builder::new()
            .name("wwep-store-connect".to_string())
            .spawn(move || {
                let result = connect(deadline);
                let (slot, done) = &*shared;
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                if slot.abandoned {
                    abandoned.fetch_sub(1, Ordering::AcqRel);
                } else {
                    slot.result = Some(result);
                    done.notify_one();
                }
            })?;
        Ok(attempt)
    }
}

/// What is left until `deadline`, or a time-out error when nothing is.
pub(crate) fn time_left(deadline: Instant) -> RedisResult<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| timed_out("the time limit passed".to_string()))
}

pub(crate) fn timed_out(what: String) -> RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what).into()
}

/// Connections to the data nodes close with a reset (`SO_LINGER` 0): a
/// connection is closed when a command's time limit passes, and a plain close
/// would leave the command in the kernel's send queue, retransmitted when the
/// network returns and applied after the board was told `X` (and possibly
/// after a newer write). A reset discards what is queued.
pub(crate) fn aborting(info: ConnectionInfo) -> ConnectionInfo {
    let tcp = info
        .tcp_settings()
        .clone()
        .set_nodelay(true)
        .set_linger_time(Duration::ZERO);
    info.set_tcp_settings(tcp)
}

/// What went wrong, in words: a read that timed out is "no answer", not the
/// system's `Resource temporarily unavailable`.
pub(crate) fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    if e.is_timeout() && text.contains("os error") {
        "no answer within the time limit".to_string()
    } else {
        text
    }
}
