//! wwep — a server and client for WWEP, the register protocol embedded Wi-Fi boards
//! speak over TCP and TLS.
//!
//! The crate is layered so each piece can be tested alone: [`protocol`] is the pure
//! wire grammar, [`store`] the register map, [`connection`] one transaction's
//! logic with no sockets, [`net`] the listeners, waiting room, admission, pool and
//! shutdown, [`tls`] everything about certificates, [`acl`] who may read or
//! write which registers, and [`client`] the blocking client the CLI and tests use.
//! With `--http`, [`http`] serves [`metrics`], health checks and a live page fed
//! by the [`activity`] record.
#![forbid(unsafe_code)]

pub use net::allow as access;
pub use net::server;

pub mod acl;
pub mod activity;
pub mod bench;
pub mod client;
pub mod config;
pub mod connection;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod protocol;
pub mod store;
pub mod tls;

/// The data file's journal, at the path the server has always imported it from.
pub use store::journal;
