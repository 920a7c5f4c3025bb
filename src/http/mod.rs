//! The HTTP side (`--http`): `/metrics` for Prometheus, `/health` and
//! `/ready` for load balancers and service managers, and `/`, a live page of
//! the devices' registers and the last transactions. Read-only: nothing here
//! changes a register.
//!
//! `tiny_http` parses HTTP; a few threads of ours take its requests and answer
//! them. The HTTP port starts before the data file is replayed (so `/ready`
//! can say the server is still starting) and stops after the WWEP ports.

mod routes;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{debug, info};

use crate::activity::{Activity, Transaction};
use crate::metrics::Metrics;
use crate::net::allow::Cidr;
use crate::net::server::Shared;

/// Where the HTTP side listens and who may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Client addresses allowed ([`default_allow`]: loopback only). An empty
    /// list allows everyone, as `--allow` does.
    pub allow: Vec<Cidr>,
}

impl HttpConfig {
    /// The port the README suggests, on loopback.
    pub const SUGGESTED_ADDR: &'static str = "127.0.0.1:9708";

    pub fn new(addr: SocketAddr) -> HttpConfig {
        HttpConfig {
            addr,
            allow: default_allow(),
        }
    }
}

/// `127.0.0.0/8` and `::1`.
pub fn default_allow() -> Vec<Cidr> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// What the connection path reports to the HTTP side: counters and the
/// activity record. Kept in the server's shared state when `--http` is on.
#[derive(Default)]
pub struct Observer {
    pub metrics: Arc<Metrics>,
    pub activity: Activity,
}

impl Observer {
    /// One answered transaction (one call per transaction, from the worker).
    pub fn transaction(&self, tx: &Transaction<'_>) {
        let took = Duration::from_micros(tx.micros);
        self.metrics
            .transaction(tx.port, tx.request, &tx.verdict, took);
        self.activity.record(tx);
    }
}

/// What the request threads share.
struct State {
    observer: Arc<Observer>,
    allow: Vec<Cidr>,
    /// Set once the WWEP ports are open: the server is ready.
    server: OnceLock<Arc<Shared>>,
    stopping: AtomicBool,
}

/// A running HTTP side; stopped by [`HttpServer::stop`] or on drop.
pub struct HttpServer {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
}

/// Request threads: enough for a scrape, a health check and a few pages at
/// once; every answer is computed in memory.
const THREADS: usize = 2;

impl HttpServer {
    /// Binds the HTTP port and starts answering (`/ready` says 503 until
    /// [`HttpServer::attach`]).
    pub fn start(config: &HttpConfig) -> io::Result<HttpServer> {
        let http = tiny_http::Server::http(config.addr).map_err(io::Error::other)?;
        let addr = http.server_addr().to_ip().unwrap_or(config.addr);
        let http = Arc::new(http);
        let state = Arc::new(State {
            observer: Arc::new(Observer::default()),
            allow: config.allow.clone(),
            server: OnceLock::new(),
            stopping: AtomicBool::new(false),
        });
        let mut server = HttpServer {
            http,
            addr,
            state,
            threads: Vec::new(),
        };
        for i in 0..THREADS {
            let http = Arc::clone(&server.http);
            let state = Arc::clone(&server.state);
            let handle = thread::Builder::new()
                .name(format!("wwep-http-{i}"))
                .spawn(move || serve(&http, &state))?;
            server.threads.push(handle);
        }
        info!("http listener on {addr}");
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the connection path reports to.
    pub fn observer(&self) -> Arc<Observer> {
        Arc::clone(&self.state.observer)
    }

    /// The WWEP side is up: serve its state; `/ready` turns 200.
    pub(crate) fn attach(&self, shared: Arc<Shared>) {
        let _ = self.state.server.set(shared);
    }

    /// Stops answering and joins the request threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.state.stopping.store(true, Ordering::Release);
        for _ in &self.threads {
            self.http.unblock();
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(http: &tiny_http::Server, state: &State) {
    while !state.stopping.load(Ordering::Acquire) {
        match http.recv() {
            Ok(request) => routes::answer(request, state),
            Err(e) => {
                if !state.stopping.load(Ordering::Acquire) {
                    debug!("http: {e}");
                }
            }
        }
    }
}
