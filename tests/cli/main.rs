//! The two programs as people run them: the `wwep` client, `wwep-server`'s flags and
//! exit codes, `wwep bench`, and the documentation's links.

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod client_cli;
mod docs_links;
mod reply_checks;
mod server_cli;
