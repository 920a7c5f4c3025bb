//! The WWEP ports as clients meet them: the open and the TLS listener, TLS policy and
//! mutual TLS, the PROXY header, abuse, `--acl` and `--allow`, and property tests.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod authorization;
mod mutual_tls;
mod plain_listener;
mod properties;
mod proxy_protocol;
mod tls_listener;
mod tls_policy;
