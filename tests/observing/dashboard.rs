//! dist/grafana/wwep.json queries only metrics a running server exports: every
//! `wwep_*` name in its queries is in `/metrics` of a server with a data file
//! and TLS (so every family exists) after one write.

use std::collections::BTreeSet;

use crate::common::*;

/// Every string under a key named `expr` or `query`/`definition` (template
/// variables), anywhere in the dashboard.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v {
                    serde_json::Value::String(s)
                        if matches!(key.as_str(), "expr" | "query" | "definition") =>
                    {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `wwep_*` metric names a PromQL text mentions.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(at) = query[i..].find("wwep_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = query[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(query.len(), |e| start + e);
        if boundary {
            names.insert(query[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/grafana/wwep.json"
    ))
    .expect("dist/grafana/wwep.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    let queried: BTreeSet<String> = found.iter().flat_map(|q| metric_names(q)).collect();
    assert!(queried.len() >= 10, "too few metrics queried: {queried:?}");

    let pki = Pki::new(KeyKind::EcP256);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registers.wwep");
    let server = ServerProcess::with_pki(
        &pki,
        &["--data", data.to_str().unwrap(), "--http", "127.0.0.1:0"],
    );
    let http = server.await_http_addr();
    let mut tls = pki
        .connector()
        .connect("localhost", connect(server.tls.unwrap()))
        .expect("handshake");
    assert_eq!(transact(&mut tls, b"W0FAC0B1234"), b"A0FAC0B1234");
    let mut exported = BTreeSet::new();
    assert!(
        eventually(IO_TIMEOUT, || {
            let body = http_get(http, "/metrics").body;
            exported = body
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| l.split(['{', ' ']).next())
                .map(str::to_string)
                .collect();
            exported.contains("wwep_tls_certificate_not_after_seconds")
                && exported.contains("wwep_transaction_duration_seconds_bucket")
        }),
        "the server's /metrics never had every family: {exported:?}"
    );
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| exported.contains(&format!("{name}{suffix}")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}\nexported: {exported:?}"
    );
    eprintln!("{} metrics queried, all exported", queried.len());
}
