//! Registers in Valkey/Redis, shared by several front ends.
//!
//! One hash per device: `PREFIX:0FAC` holds field `0B` = `"1234"`, so
//! `redis-cli HGETALL wwep:0FAC` shows a board readably. `W` is `HSET` in a script
//! that refuses it after its deadline ([`fence`]; then `WAIT`/`WAITAOF` when
//! asked for), `R` is `HGET`. Connections come from a bounded [`pool`];
//! connecting (Sentinel's answer included) and every command have a time
//! limit ([`connect`]); when Redis is down, each request fails at once (`X`)
//! while reconnection backs off, and service resumes by itself when Redis (or
//! the primary [`sentinel`] names) answers again.
//!
//! - [`location`]: the `--store` grammar and the settings;
//! - [`sentinel`]: which node is the primary, asked and followed;
//! - [`connect`]: one connection within a time limit;
//! - [`pool`]: the connections, the back-off, a command on a connection;
//! - [`fence`]: Redis's clock and the write that refuses to land late;
//! - [`backend`]: [`RedisStore`], opening it and the register commands;
//! - [`warnings`]: what it logs, limited and counted by kind.

mod backend;
mod connect;
mod fence;
mod location;
mod pool;
mod sentinel;
mod warnings;

pub use self::backend::{RedisOpenError, RedisStore};
pub use self::location::{DEFAULT_PREFIX, RedisSettings, StoreLocation};
