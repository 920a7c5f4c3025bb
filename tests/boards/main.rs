//! The board library (clients/c) against the real server.

#[path = "../common/mod.rs"]
mod common;

mod board_lwip;
mod board_server;
mod c_client;
