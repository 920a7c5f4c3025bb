//! The HTTP side (`--http`): `/metrics` for Prometheus, `/health` and
//! `/ready` for load balancers and service managers, and `/`, a live page of
//! the devices' registers and the last transactions. Read-only: nothing here
//! changes a register.
//!
//! `tiny_http` parses HTTP; a few threads of ours take its requests and answer
//! them. The HTTP port starts before the data file is replayed (so `/ready`
//! can say the server is still starting) and stops after the WWEP ports.

mod devices;
mod routes;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};

use log::{debug, info};

use crate::activity::Activity;
use crate::allow::Cidr;
use crate::config::HttpConfig;
use crate::metrics::{Metrics, Snapshot};
use crate::store::backend::StoreError;

/// What the HTTP side reads of the running WWEP side: a narrow view the server
/// fills in, so nothing here knows how the server is built.
pub trait Status: Send + Sync {
    /// Values for `/metrics` read where they live (connections, registers,
    /// the data file's size, certificate expiry).
    fn snapshot(&self) -> Snapshot;
    /// `Ok` when the server can do its work, or the reason it cannot.
    fn health(&self) -> Result<(), String>;
    fn is_stopping(&self) -> bool;
    /// The registers written for one device, sorted, read from the store
    /// whatever the backend.
    fn device(&self, device: u16) -> Result<Vec<(u8, u16)>, StoreError>;
}

/// What the request threads share.
struct State {
    metrics: Arc<Metrics>,
    activity: Arc<Activity>,
    allow: Vec<Cidr>,
    /// Set once the WWEP ports are open: the server is ready.
    server: OnceLock<Arc<dyn Status>>,
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
    pub fn start(
        config: &HttpConfig,
        metrics: Arc<Metrics>,
        activity: Arc<Activity>,
    ) -> io::Result<HttpServer> {
        let http = tiny_http::Server::http(config.addr).map_err(io::Error::other)?;
        let addr = http.server_addr().to_ip().unwrap_or(config.addr);
        let http = Arc::new(http);
        let state = Arc::new(State {
            metrics,
            activity,
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

    /// The WWEP side is up: serve its state; `/ready` turns 200.
    pub fn attach(&self, status: Arc<dyn Status>) {
        let _ = self.state.server.set(status);
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
