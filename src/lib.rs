//! wwep — a server and client for WWEP, the register protocol embedded Wi-Fi boards
//! speak over TCP and TLS.
//!
//! The crate is layered so each piece can be tested alone, and each layer
//! imports only the ones below it:
//!
//! - [`protocol`] the wire grammar; [`allow`] address ranges; `rate_limited`
//!   log lines; [`civil_date`] UTC dates; [`json`] hex and text as JSON
//!   strings; [`register_set`] which of a device's 256 registers exist;
//!   [`logging`] the log writer; [`notify`] systemd readiness;
//!   [`input_file`] the files an operator names, read only when they are
//!   files of bounded size; [`io_cause`] why a file operation failed, by kind;
//! - [`acl`] who may read or write which registers; [`tls`] certificates and
//!   handshakes; [`activity`] the live page's record, and [`events`] the
//!   writes acknowledged, as they happen, for its watchers;
//! - [`facts`] what is known of one connection; [`metrics`] the counters;
//!   [`policy`] who may connect, how many at once and for how long (both
//!   listening sides);
//! - [`store`] the registers (memory, data file, Valkey/Redis);
//! - [`config`] the settings; [`connection`] one transaction with no sockets;
//! - [`http`] the HTTP side, reading a narrow status view; [`net`] the
//!   listeners, waiting room, sessions and the record of each connection, and
//!   [`net::server`], which starts and stops it all; [`service`] the process's
//!   life from settings to exit code: start, reload and stop on request;
//! - [`client`] and [`mod@bench`], the blocking client the CLI and tests use.
//!
//! docs/design.md says how this shape grew from the design card it started
//! from, and why each piece changed.
#![forbid(unsafe_code)]

pub mod acl;
pub mod activity;
pub mod allow;
pub mod bench;
pub mod civil_date;
pub mod client;
pub mod config;
pub mod connection;
pub mod events;
pub mod facts;
pub mod http;
pub mod input_file;
pub mod io_cause;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod policy;
pub mod protocol;
pub(crate) mod rate_limited;
pub mod register_set;
pub mod service;
pub mod store;
pub mod tls;
