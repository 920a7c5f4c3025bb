//! The HTTP side (`--http`): `/metrics` for Prometheus, `/health` and
//! `/ready` for load balancers and service managers, `/`, a live page of
//! the devices' registers and the last transactions, and `/api/events`, the
//! writes as they are acknowledged. Read-only: nothing here changes a
//! register.
//!
//! One thread runs a `mio` event loop ([`server`]) that accepts, parses
//! (with `httparse`) and answers every request; no thread is ever started per
//! connection. The HTTP port starts before the data file is replayed (so `/ready`
//! can say the server is still starting) and stops after the WWEP ports.

mod devices;
mod events;
mod message;
mod routes;
mod server;

pub use message::MAX_HEAD;
pub use server::{IDLE_DEADLINE, REQUEST_DEADLINE};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};

use log::info;
use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};

use crate::activity::Activity;
use crate::config::HttpConfig;
use crate::metrics::{Metrics, Snapshot};
use crate::policy::ConnectionPolicy;
use crate::store::backend::{DeviceRegisters, StoreError};

/// What the HTTP side reads of the running WWEP side: a narrow view the server
/// fills in, so nothing here knows how the server is built.
pub trait Status: Send + Sync {
    /// Values for `/metrics` read where they live (connections, registers,
    /// the data file's size, certificate expiry).
    fn snapshot(&self) -> Snapshot;
    /// Whether the server can do its work, and if not quite, why.
    fn health(&self) -> Health;
    fn is_stopping(&self) -> bool;
    /// The registers written for one device, sorted, read from the store
    /// whatever the backend, each with its verdict: a value or unreadable.
    fn device(&self, device: u16) -> Result<DeviceRegisters, StoreError>;
}

/// What `/health` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// `200 ok`.
    Ok,
    /// The server serves, reads and stores writes, but something needs an
    /// operator (a compaction that keeps failing): `200 degraded: …`, so a
    /// balancer keeps sending it the boards only it holds the registers of.
    Degraded(String),
    /// The server cannot do its work (stopping, a port down, the store not
    /// taking writes): `503` and why.
    Failing(String),
}

/// What the request threads share.
struct State {
    metrics: Arc<Metrics>,
    activity: Arc<Activity>,
    /// `--http-allow`, `--http-max-connections` and the request deadline.
    policy: ConnectionPolicy,
    /// Set once the WWEP ports are open: the server is ready.
    server: OnceLock<Arc<dyn Status>>,
    stopping: AtomicBool,
    counters: server::Counters,
}

/// A running HTTP side; stopped by [`HttpServer::stop`] or on drop.
pub struct HttpServer {
    waker: Arc<Waker>,
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds the HTTP port and starts answering (`/ready` says 503 until
    /// [`HttpServer::attach`]).
    pub fn start(
        config: &HttpConfig,
        metrics: Arc<Metrics>,
        activity: Arc<Activity>,
    ) -> io::Result<HttpServer> {
        let mut listener = TcpListener::bind(config.addr)?;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, server::LISTENER, Interest::READABLE)?;
        let waker = Arc::new(server::waker(&poll)?);
        let state = Arc::new(State {
            metrics,
            activity,
            policy: ConnectionPolicy::new(
                config.allow.clone(),
                config.max_connections,
                REQUEST_DEADLINE,
            ),
            server: OnceLock::new(),
            stopping: AtomicBool::new(false),
            counters: server::Counters::default(),
        });
        let mut event_loop =
            server::EventLoop::new(poll, listener, Arc::clone(&state), Arc::clone(&waker))?;
        let thread = thread::Builder::new()
            .name("wwep-http".to_string())
            .spawn(move || event_loop.run())?;
        let server = HttpServer {
            waker,
            addr,
            state,
            thread: Some(thread),
        };
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

    /// Stops answering and joins the event-loop thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.state.stopping.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
