//! One answer per path, in one `match`.

use super::message::{Head, Response};
use super::{Health, State, devices, events};

/// The live page: HTML, CSS and script in one file, no external assets.
const PAGE: &str = include_str!("page.html");

/// The page's script and styles are inline; it talks only to its own origin.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn header<'a>(name: &'static str, value: &'a str) -> (&'static str, &'a str) {
    (name, value)
}

fn reply(status: u16, content_type: &str, body: String) -> Response {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
}

fn text(status: u16, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    reply(status, "text/plain; charset=utf-8", body)
}

/// The answer to a connection from an address not in `--http-allow`.
pub(super) fn forbidden() -> Response {
    text(403, "forbidden: this address is not in --http-allow")
}

/// The answer to a request that cannot be read: 400, 413 or 431.
pub(super) fn refusal(status: u16) -> Response {
    match status {
        413 => text(413, "a request to this side has no body"),
        431 => text(431, "request head too large"),
        503 => text(503, "stopping: device lookups are no longer answered"),
        _ => text(400, "malformed request"),
    }
}

/// Whether answering reads the store (and may wait for it): the device
/// lookup. Everything else is answered from memory.
pub(super) fn reads_store(request: &Head) -> bool {
    matches!(request.method.as_str(), "GET" | "HEAD") && request.path.starts_with(devices::PREFIX)
}

/// `GET` (or `HEAD`) `/api/events`: the device the watcher asks for
/// (`None`: every device), or the 400 its query gets; `None` for any other
/// request. The stream itself is the event loop's.
pub(super) fn watch(request: &Head) -> Option<Result<Option<u16>, Response>> {
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        return None;
    }
    let (path, query) = match request.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path.as_str(), None),
    };
    (path == events::PATH).then(|| events::filter(query).map_err(events::refusal))
}

pub(super) fn answer(request: &Head, state: &State) -> Response {
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        text(405, "only GET and HEAD: this side is read-only")
            .with_header(header("Allow", "GET, HEAD"))
    } else {
        let path = request.path.split('?').next().unwrap_or("");
        route(path, state)
    }
}

fn route(path: &str, state: &State) -> Response {
    let server = state.server.get();
    match path {
        "/" | "/index.html" => reply(200, "text/html; charset=utf-8", PAGE.to_string())
            .with_header(header("Content-Security-Policy", PAGE_CSP))
            .with_header(header("Referrer-Policy", "no-referrer")),
        "/metrics" => {
            let mut snapshot = server.map(|s| s.snapshot()).unwrap_or_default();
            snapshot.http = Some(state.counters.counts());
            reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.encode(&snapshot),
            )
        }
        "/health" => match server {
            None => text(503, "starting: the data file is being replayed"),
            Some(status) => match status.health() {
                Health::Ok => text(200, "ok"),
                Health::Degraded(reason) => text(200, format!("degraded: {reason}")),
                Health::Failing(reason) => text(503, reason),
            },
        },
        "/ready" => match server {
            None => text(503, "starting"),
            Some(status) if status.is_stopping() => text(503, "stopping"),
            Some(_) => text(200, "ready"),
        },
        "/api/state" => {
            let registers = server.and_then(|s| s.snapshot().registers);
            reply(
                200,
                "application/json",
                state
                    .activity
                    .to_json(state.metrics.answered_total(), registers),
            )
        }
        _ if path.starts_with(devices::PREFIX) => {
            let (status, content_type, body) = devices::answer(path, server.map(|s| &**s));
            reply(status, content_type, body)
        }
        _ => text(
            404,
            "not found: try /, /metrics, /health, /ready, /api/state, /api/events or /api/devices/0FAC (any device id)",
        ),
    }
}
