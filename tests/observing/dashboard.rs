//! The dashboards people watch: dist/grafana/wwep.json queries only metrics a
//! running server exports (every `wwep_*` name in its queries is in `/metrics`
//! of a server with a data file and TLS, so every family exists, after one
//! write); and the live page fits its window, from a phone to a full-HD
//! screen, full of the longest things it shows.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::http::Browser;

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

/// Windows the page is shown in and photographed at: a small phone, a
/// common phone, just above the one-column layout, an 800×600 and a 1024×768
/// projector, a laptop (where addresses stop wrapping), a full-HD screen.
const WINDOWS: [(u32, u32); 7] = [
    (320, 568),
    (360, 740),
    (641, 480),
    (800, 600),
    (1024, 768),
    (1440, 900),
    (1920, 1080),
];

/// Between those, every this many pixels the page is measured too.
const SWEEP_STEP: u32 = 40;

/// The longest text a client address can take.
const LONGEST_PEER: &str = "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535";

/// A connection to `to` that the server takes to come from `[source]:port`,
/// as a balancer would announce it (the server believes 127.0.0.1).
fn from_client(to: SocketAddr, source: &str, port: u16) -> TcpStream {
    let mut stream = connect(to);
    write!(stream, "PROXY TCP6 {source} 2001:db8::1 {port} 27708\r\n").expect("PROXY header");
    stream
}

/// A long IPv6 client address, the `n`th of many.
fn client(n: usize) -> String {
    format!("2001:db8:ffff:ffff:ffff:ffff:{:x}:ffff", 0xf000 + n)
}

/// What the page shows at its fullest: 64 devices with three registers each,
/// written over both ports, then 50 transactions (what the page lists) from
/// long IPv6 addresses mixing writes, refused reads and a TLS ClientHello on
/// the open port (the longest request text), the newest from [`LONGEST_PEER`].
fn fill(server: &ServerProcess, pki: &Pki) {
    let (plain, tls) = (server.plain.unwrap(), server.tls.unwrap());
    let connector = pki.connector();
    let over_tls = |stream: TcpStream, request: &[u8]| {
        let mut stream = connector.connect("localhost", stream).expect("handshake");
        transact(&mut stream, request)
    };
    for n in 0..64 * 3 {
        let device = 0x0A00 + (n / 3) * 0x3B;
        let register = [0x05, 0x0B, 0x10][n % 3];
        let request = format!("W{device:04X}{register:02X}{:04X}", n * 0x111 % 0x10000);
        let reply = if n % 4 == 0 {
            over_tls(
                from_client(tls, &client(n), 40000 + n as u16),
                request.as_bytes(),
            )
        } else {
            transact(
                &mut from_client(plain, &client(n), 50000 + n as u16),
                request.as_bytes(),
            )
        };
        assert_eq!(reply, format!("A{}", &request[1..]).as_bytes());
    }
    for n in 0..50 {
        let (source, port) = if n == 49 {
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".to_string(), 65535)
        } else {
            (client(n), 60000 + n as u16)
        };
        let reply = match n % 5 {
            0 => transact(
                &mut from_client(plain, &source, port),
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x9a\x41\xe0\x07\x5c",
            ),
            1 => transact(&mut from_client(plain, &source, port), b"R0FFF0B"),
            2 => over_tls(from_client(tls, &source, port), b"W0A000B00FF"),
            _ => transact(&mut from_client(plain, &source, port), b"W0A3B05BEEF"),
        };
        assert!(
            reply.starts_with(b"A") || reply.starts_with(b"X"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
    }
}

/// Where the page's screenshots go: target/tmp/live-page/.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page");
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    dir
}

/// The whole page as it is laid out now, as a PNG.
fn screenshot(browser: &mut Browser) -> Vec<u8> {
    let layout = browser.call("Page.getLayoutMetrics", serde_json::json!({}));
    let size = &layout["cssContentSize"];
    let shot = browser.call(
        "Page.captureScreenshot",
        serde_json::json!({
            "format": "png",
            "captureBeyondViewport": true,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        }),
    );
    openssl::base64::decode_block(shot["data"].as_str().expect("PNG data")).expect("base64")
}

/// How wide the page is laid out: the window's inner width, the document's
/// scroll width, and the element reaching furthest right (which catches
/// content cut off by a clipping container, not only a scrolling one).
const MEASURE: &str = r##"(() => {
  let widest = null, right = 0;
  for (const e of document.querySelectorAll("body *")) {
    const r = e.getBoundingClientRect().right;
    if (r > right) { right = r; widest = e; }
  }
  const name = widest === null ? "" : widest.tagName.toLowerCase()
    + (widest.id ? "#" + widest.id : "") + (widest.className ? "." + String(widest.className).trim().split(/\s+/).join(".") : "");
  return { inner: window.innerWidth, scroll: document.documentElement.scrollWidth, right,
    widest: name, text: widest === null ? "" : widest.textContent.slice(0, 60) };
})()"##;

#[test]
fn the_live_page_fits_its_window_from_320_to_1920_pixels_wide() {
    if !have_tool("chromium") || !have_tool("mkfifo") {
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let server = ServerProcess::with_pki(
        &pki,
        &[
            "--http",
            "127.0.0.1:0",
            "--proxy-protocol",
            "--proxy-from",
            "127.0.0.1",
            "--explain-errors",
        ],
    );
    let http = server.await_http_addr();
    fill(&server, &pki);

    let mut browser = Browser::start();
    browser.open(&format!("http://{http}/"));
    let filled = format!(
        r##"document.getElementById("status").textContent === "live"
          && document.querySelectorAll("#devices .device").length === 64
          && document.querySelectorAll("#recent tr").length === 50
          && [...document.querySelectorAll("#recent td")].some(td => td.textContent === "{LONGEST_PEER}")"##
    );
    let until = Instant::now() + Duration::from_secs(20);
    while browser.eval(&filled) != true {
        assert!(
            Instant::now() < until,
            "the page never showed 64 devices and 50 transactions, one from {LONGEST_PEER}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let dir = screenshot_dir();
    let sweep = (320..=1920)
        .step_by(SWEEP_STEP as usize)
        .filter(|w| !WINDOWS.iter().any(|(width, _)| width == w))
        .map(|w| (w, 768, false));
    let photographed = WINDOWS.iter().map(|&(w, h)| (w, h, true));
    let mut overflows = Vec::new();
    for (width, height, photograph) in photographed.chain(sweep) {
        // Not emulated as mobile: a phone browser zooms out to show a page
        // wider than its window, which would hide the overflow measured here.
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        let until = Instant::now() + Duration::from_secs(5);
        while browser.eval("window.innerWidth") != width {
            assert!(
                Instant::now() < until,
                "the window never became {width} px wide"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let m = browser.eval(MEASURE);
        let mut seen = String::new();
        if photograph {
            let path = dir.join(format!("live-page-{width}x{height}.png"));
            std::fs::write(&path, screenshot(&mut browser)).expect("write the screenshot");
            seen = format!("; see {}", path.display());
        }
        let (inner, scroll, right) = (
            m["inner"].as_f64().unwrap_or(0.0),
            m["scroll"].as_f64().unwrap_or(f64::MAX),
            m["right"].as_f64().unwrap_or(f64::MAX),
        );
        // Sub-pixel layout may put an edge a fraction past the window.
        if scroll > inner || right > inner + 1.0 {
            overflows.push(format!(
                "at {width} px the document is {scroll} px wide; {} ({:?}) ends at {right:.1} px{seen}",
                m["widest"], m["text"]
            ));
        }
    }
    eprintln!(
        "measured every {SWEEP_STEP} px from 320 to 1920 px wide, {} too narrow; screenshots in {}",
        overflows.len(),
        dir.display()
    );
    assert!(
        overflows.is_empty(),
        "the page scrolls sideways:\n{}",
        overflows.join("\n")
    );
}

/// How many times the page has read `/api/state`, from the browser's own
/// record of the resources it fetched.
const STATE_READS: &str = r#"performance.getEntriesByType("resource").filter(e => new URL(e.name).pathname === "/api/state").length"#;

/// Waits until `expression` is `want` in the page, failing the test with
/// `what` after `limit`.
fn until_page(
    browser: &mut Browser,
    expression: &str,
    want: serde_json::Value,
    limit: Duration,
    what: &str,
) {
    let until = Instant::now() + limit;
    loop {
        let got = browser.eval(expression);
        if got == want {
            return;
        }
        assert!(Instant::now() < until, "{what}: {got} after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `request` on the open port and waits for the page to show its
/// value in the register's card and the write at the head of its
/// transactions, within 2 s.
fn shown_within_two_seconds(browser: &mut Browser, plain: SocketAddr, request: &str) {
    let (device, register, value) = (&request[1..5], &request[5..7], &request[7..11]);
    assert_eq!(
        transact(&mut connect(plain), request.as_bytes()),
        format!("A{}", &request[1..]).as_bytes()
    );
    let shown = format!(
        r##"(document.querySelector('#devices [data-device="{device}"][data-register="{register}"] .value')?.textContent ?? "") === "{value}"
          && (document.querySelector("#recent tr")?.textContent ?? "").includes("{request}")"##
    );
    until_page(
        browser,
        &shown,
        true.into(),
        Duration::from_secs(2),
        &format!("{request} shown"),
    );
}

#[test]
fn the_live_page_follows_the_stream_and_polls_only_while_it_is_down() {
    if !have_tool("chromium") || !have_tool("mkfifo") {
        return;
    }
    let server = ServerProcess::start(&["--no-tls", "--http", "127.0.0.1:0"]);
    let http = server.await_http_addr();
    let plain = server.plain.expect("the open port");
    let mut browser = Browser::start();
    // The stream blocked from the start, as a proxy that cannot pass it would.
    browser.open("about:blank");
    browser.call("Network.enable", serde_json::json!({}));
    let block = |browser: &mut Browser, urls: &[&str]| {
        browser.call(
            "Network.setBlockedURLs",
            serde_json::json!({ "urls": urls }),
        );
    };
    block(&mut browser, &["*/api/events*"]);
    browser.call(
        "Page.navigate",
        serde_json::json!({ "url": format!("http://{http}/") }),
    );
    let mode = r#"document.getElementById("status").dataset.mode + " " + document.getElementById("status").textContent"#;
    until_page(
        &mut browser,
        mode,
        "polling live".into(),
        Duration::from_secs(20),
        "the page's mode",
    );
    // Read, and nothing written yet: only now does the page say so.
    until_page(
        &mut browser,
        r#"document.getElementById("devices").textContent"#,
        "No register written since the server started.".into(),
        Duration::from_secs(5),
        "the empty devices' note",
    );
    shown_within_two_seconds(&mut browser, plain, "W0FAC0B1111");
    let reads = browser.eval(STATE_READS).as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(2500));
    let polled = browser.eval(STATE_READS).as_u64().unwrap_or(0);
    assert!(
        polled >= reads + 2,
        "no polling without the stream: {reads} then {polled} reads of /api/state"
    );

    // The stream back: the page follows it and stops polling.
    block(&mut browser, &[]);
    until_page(
        &mut browser,
        mode,
        "stream live".into(),
        Duration::from_secs(30),
        "the page's mode",
    );
    shown_within_two_seconds(&mut browser, plain, "W0FAC0B2222");
    shown_within_two_seconds(&mut browser, plain, "W0ABC050001");
    let reads = browser.eval(STATE_READS).as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(3000));
    shown_within_two_seconds(&mut browser, plain, "W0FAC0B3333");
    let later = browser.eval(STATE_READS).as_u64().unwrap_or(0);
    assert_eq!(later, reads, "/api/state read while the stream is up");
    let first =
        browser.eval(r##"document.querySelector("#devices .device")?.dataset.device ?? null"##);
    assert_eq!(first, "0FAC", "the device written last comes first");
}
