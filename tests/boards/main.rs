//! The board library (clients/c) against the real server.

#[path = "../common/mod.rs"]
mod common;

mod c_client;
