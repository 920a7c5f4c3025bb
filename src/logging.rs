//! Logger set-up shared by the binaries: env_logger filtering (`RUST_LOG`,
//! default `info`), with a plain one-line format that is cheap enough for one
//! line per transaction.

use std::io::Write;

/// Installs the logger. Messages carry no colour codes, and anything a peer sent
/// is escaped before it reaches a message, so lines are written as they are.
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            writeln!(
                buf,
                "[{} {:<5} {}] {}",
                buf.timestamp_micros(),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
}
