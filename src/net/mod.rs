//! The network side, in the order a connection meets it:
//!
//! [`listener`] binds and accepts (one thread per port), checks `--allow`
//! (behind a trusted balancer, the session does once the PROXY header has
//! named the client) and takes a place in the connection table
//! ([`admission`]) → [`session`] owns the connection's life from then on: the
//! balancer's [`proxy`] header, TLS handshake, receive, transact, send, close
//! → when a step would block, the [`waiting_room`] holds it until its socket
//! is ready or its timer fires → [`close`] is the one way a connection is
//! refused or closed, and [`linger`] finishes its graceful close → [`record`]
//! turns the finished connection's facts into its log line, counts and
//! live-page entry. Every step reads the [`context`]; [`server`] starts and
//! stops all of it.

pub mod admission;
pub(crate) mod close;
pub(crate) mod context;
pub mod linger;
pub(crate) mod listener;
pub mod proxy;
pub(crate) mod record;
pub mod server;
pub(crate) mod session;
pub(crate) mod waiting_room;
