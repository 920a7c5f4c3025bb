//! The network side, in the order a connection meets it:
//!
//! [`listener`] binds and accepts (one thread per port) → [`allow`] and
//! [`admission`] decide whether it gets a place → [`session`] owns its life from
//! then on: the balancer's [`proxy`] header, TLS handshake, receive, respond,
//! send, close, log → when a step
//! would block, the [`waiting_room`] holds it until its socket is ready or its
//! timer fires → [`linger`] finishes graceful closes. [`server`] starts and
//! stops all of it.

pub mod admission;
pub mod allow;
pub mod linger;
pub(crate) mod listener;
pub mod proxy;
pub(crate) mod rate_limited;
pub mod server;
pub(crate) mod session;
pub(crate) mod waiting_room;
