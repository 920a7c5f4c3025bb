//! What every connection is served with: the settings, the store, the TLS
//! context and the `--acl` rules in force (both swapped whole on reload), the
//! connection table and the record that counts. Built once at start; the
//! waiting room (whose threads are the workers) is passed beside it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use log::error;
use mio::Token;

use crate::acl::Acl;
use crate::config::ServerConfig;
use crate::net::admission::AdmissionTable;
use crate::net::linger::Lingerer;
use crate::net::record::Record;
use crate::policy::ConnectionPolicy;
use crate::rate_limited::RateLimitedLog;
use crate::store::backend::Backend;
use crate::tls::server::Acceptor;

pub(crate) struct Context {
    pub(crate) config: ServerConfig,
    /// `--allow`, `--max-connections` and `--timeout-ms`, as the rules the
    /// HTTP side's connections are held to too.
    pub(crate) policy: ConnectionPolicy,
    /// Where registers are read and written.
    pub(crate) backend: Arc<dyn Backend>,
    /// Swapped whole on reload; a handshake holds its own `Arc`.
    acceptor: RwLock<Option<Arc<Acceptor>>>,
    /// The `--acl` rules, swapped whole on reload; `None` without `--acl`.
    acl: Option<RwLock<Arc<Acl>>>,
    pub(crate) table: Arc<AdmissionTable>,
    pub(crate) lingerer: Lingerer,
    pub(crate) record: Record,
    next_token: AtomicUsize,
    stopping: AtomicBool,
    /// Trouble of the server's own (accepting, renewing session keys), at
    /// most a line a second.
    pub(crate) trouble_log: RateLimitedLog,
}

/// The parts a [`Context`] is made of.
pub(crate) struct Parts {
    pub(crate) config: ServerConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) acceptor: Option<Acceptor>,
    pub(crate) acl: Option<Acl>,
    pub(crate) record: Record,
}

impl Context {
    pub(crate) fn new(parts: Parts, lingerer: Lingerer) -> Context {
        let config = parts.config;
        Context {
            policy: ConnectionPolicy::new(
                config.allow.clone(),
                config.max_connections,
                config.timeout,
            ),
            table: AdmissionTable::new(config.max_connections, config.max_per_ip),
            backend: parts.backend,
            acceptor: RwLock::new(parts.acceptor.map(Arc::new)),
            acl: parts.acl.map(|acl| RwLock::new(Arc::new(acl))),
            lingerer,
            record: parts.record,
            // Tokens are never reused.
            next_token: AtomicUsize::new(1),
            stopping: AtomicBool::new(false),
            trouble_log: RateLimitedLog::new(log::Level::Warn, Duration::from_secs(1)),
            config,
        }
    }

    /// The TLS context for a new handshake; renewed (fresh session cache and
    /// ticket keys) once the session lifetime has run out.
    pub(crate) fn acceptor(&self) -> Option<Arc<Acceptor>> {
        let current = self
            .acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let now = Instant::now();
        if !current.renewal_due(now) {
            return Some(current);
        }
        let mut slot = self.acceptor.write().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(latest) if latest.renewal_due(now) => match latest.renew() {
                Ok(renewed) => *slot = Some(Arc::new(renewed)),
                Err(e) => self
                    .trouble_log
                    .log(format_args!("cannot renew the TLS session keys: {e}")),
            },
            _ => {}
        }
        slot.clone()
    }

    /// The TLS context in force, without renewing it (for its certificates).
    pub(crate) fn current_acceptor(&self) -> Option<Arc<Acceptor>> {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves new handshakes with `acceptor` from now on.
    pub(crate) fn replace_acceptor(&self, acceptor: Acceptor) {
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(acceptor));
    }

    /// The `--acl` rules in force now; `None` when every request may pass.
    pub(crate) fn acl(&self) -> Option<Arc<Acl>> {
        self.acl
            .as_ref()
            .map(|acl| Arc::clone(&acl.read().unwrap_or_else(|p| p.into_inner())))
    }

    /// Applies `acl` to new requests; false without `--acl` (nothing to swap).
    pub(crate) fn replace_acl(&self, acl: Arc<Acl>) -> bool {
        match &self.acl {
            Some(slot) => {
                *slot.write().unwrap_or_else(|p| p.into_inner()) = acl;
                true
            }
            None => false,
        }
    }

    pub(crate) fn next_token(&self) -> Token {
        Token(self.next_token.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Marks the server as stopping; true for the first call only.
    pub(crate) fn stop(&self) -> bool {
        !self.stopping.swap(true, Ordering::AcqRel)
    }
}

/// Runs a connection's step; a panic in it is logged and costs only that
/// connection (dropping the session releases its place and closes it).
pub(crate) fn run_guarded(job: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(job)).is_err() {
        error!("a connection was abandoned after a panic while it was served");
    }
}
