//! The Debian package and the systemd unit.

#[path = "../common/mod.rs"]
mod common;

mod deb;
mod systemd;
