//! The HTTP side: `/metrics`, `/health`, `/ready`, `/api/devices`, `/api/events`,
//! the live page, its abuse limits, and the Grafana dashboard against the metrics.

#[path = "../common/mod.rs"]
mod common;

mod dashboard;
mod events;
mod http;
mod http_abuse;
mod http_devices;
