//! Where registers live: the data file (durability, repair, compaction), a shared
//! Valkey/Redis store, its fence, TLS and Sentinel, and the fleet under partitions.

#[path = "../common/mod.rs"]
mod common;

mod durability;
mod fleet_partition;
mod redis_fence;
mod redis_tls_and_sentinel;
mod shared_store;
