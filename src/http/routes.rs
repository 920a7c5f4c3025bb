//! One answer per path, in one `match`.

use std::io::Cursor;

use log::debug;
use tiny_http::{Header, Method, Request, Response};

use super::{State, devices};
use crate::allow;

/// The live page: HTML, CSS and script in one file, no external assets.
const PAGE: &str = include_str!("page.html");

/// The page's script and styles are inline; it talks only to its own origin.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn header(name: &str, value: &str) -> Header {
    // Names and values below are ASCII constants.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
}

fn text(status: u16, body: impl Into<String>) -> Response<Cursor<Vec<u8>>> {
    let mut body = body.into();
    body.push('\n');
    reply(status, "text/plain; charset=utf-8", body)
}

pub(super) fn answer(request: Request, state: &State) {
    let allowed = request
        .remote_addr()
        .is_some_and(|peer| allow::allowed(&state.allow, peer.ip().to_canonical()));
    let response = if !allowed {
        text(403, "forbidden: this address is not in --http-allow")
    } else if !matches!(request.method(), Method::Get | Method::Head) {
        text(405, "only GET and HEAD: this side is read-only")
            .with_header(header("Allow", "GET, HEAD"))
    } else {
        let path = request.url().split('?').next().unwrap_or("");
        route(path, state)
    };
    if let Err(e) = request.respond(response) {
        debug!("http: reply not sent: {e}");
    }
}

fn route(path: &str, state: &State) -> Response<Cursor<Vec<u8>>> {
    let server = state.server.get();
    match path {
        "/" | "/index.html" => reply(200, "text/html; charset=utf-8", PAGE.to_string())
            .with_header(header("Content-Security-Policy", PAGE_CSP))
            .with_header(header("Referrer-Policy", "no-referrer")),
        "/metrics" => {
            let snapshot = server.map(|s| s.snapshot()).unwrap_or_default();
            reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.encode(&snapshot),
            )
        }
        "/health" => match server {
            None => text(503, "starting: the data file is being replayed"),
            Some(status) => match status.health() {
                Ok(()) => text(200, "ok"),
                Err(reason) => text(503, reason),
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
        _ => text(404, "not found: try /, /metrics, /health or /ready"),
    }
}
