//! `GET /api/devices/{DEVICE}` on real server processes: a register replayed
//! from the data file after a restart, one written by another front end
//! through a shared Redis, 404, 400 and a lower-case id.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// `GET path` over HTTP/1.0, read to the close: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_string())
}

/// The HTTP address a server process logged.
fn http_addr(server: &ServerProcess) -> SocketAddr {
    server
        .log_text()
        .lines()
        .find_map(|l| l.split("http listener on ").nth(1))
        .and_then(|a| a.split(['"', ' ']).next())
        .and_then(|a| a.trim().parse().ok())
        .expect("the HTTP address is logged")
}

/// The HTTP address of a server process, once `/ready` says 200 (the WWEP
/// side is attached).
fn ready_http(server: &ServerProcess) -> SocketAddr {
    let http = http_addr(server);
    assert!(
        eventually(IO_TIMEOUT, || get(http, "/ready").0 == 200),
        "the server never said it was ready"
    );
    http
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn a_register_replayed_from_the_data_file_is_answered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registers.wwep");
    let data = data.to_str().unwrap();
    let args = ["--no-tls", "--http", "127.0.0.1:0", "--data", data];
    {
        let mut first = ServerProcess::start(&args);
        assert_eq!(
            transact(&mut connect(first.plain.unwrap()), b"W0FAC0B1234"),
            b"A0FAC0B1234"
        );
        first.signal("TERM");
        assert!(first.wait_exit(Duration::from_secs(20)).is_some());
    }
    let second = ServerProcess::start(&args);
    let http = ready_http(&second);
    // The page's cards start empty after a restart; the device is still there.
    let state = json(&get(http, "/api/state").1);
    assert_eq!(
        state["devices"].as_array().map(Vec::len),
        Some(0),
        "{state}"
    );
    let (status, body) = get(http, "/api/devices/0FAC");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "{\"device\":\"0FAC\",\"registers\":{\"0B\":\"1234\"}}\n"
    );
    // Either case, answered in upper case.
    assert_eq!(get(http, "/api/devices/0fac"), (200, body.clone()));
    // A device with nothing written.
    let (status, body) = get(http, "/api/devices/0FAD");
    assert_eq!(status, 404, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");
    // Malformed ids.
    for bad in ["0FA", "0FAC0", "0FAG", "", "0FAC/0B", "%300FA"] {
        let (status, body) = get(http, &format!("/api/devices/{bad}"));
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
}

/// A `redis-server` on a free loopback port, killed by PID on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        if !have_tool("redis-server") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis {
            child,
            port,
            _dir: dir,
        };
        assert!(
            eventually(Duration::from_secs(10), || redis.ping()),
            "redis-server did not answer on port {port}"
        );
        Some(redis)
    }

    fn ping(&self) -> bool {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        c.write_all(b"PING\r\n").is_ok()
            && c.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_register_written_by_another_front_end_through_redis_is_answered() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--no-tls", "--http", "127.0.0.1:0", "--store", &url];
    let writer = ServerProcess::start(&args);
    let reader = ServerProcess::start(&args);
    let http = ready_http(&reader);
    assert_eq!(get(http, "/api/devices/0FAC").0, 404);
    for request in [&b"W0FAC0B1234"[..], b"W0FACFFabcd", b"W0FAD000001"] {
        let reply = transact(&mut connect(writer.plain.unwrap()), request);
        assert_eq!(reply[0], b'A', "{}", String::from_utf8_lossy(&reply));
    }
    let (status, body) = get(http, "/api/devices/0fac");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "{\"device\":\"0FAC\",\"registers\":{\"0B\":\"1234\",\"FF\":\"ABCD\"}}\n"
    );
    assert_eq!(get(http, "/api/devices/0FAE").0, 404);
    // The store gone: 503, not 404.
    drop(redis);
    let (status, body) = get(http, "/api/devices/0FAC");
    assert_eq!(status, 503, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");
}

#[test]
fn health_answers_while_a_device_lookup_waits_for_a_hung_redis() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let args = [
        "--no-tls",
        "--http",
        "127.0.0.1:0",
        "--store",
        &url,
        "--timeout-ms",
        "3000",
    ];
    let server = ServerProcess::start(&args);
    let http = ready_http(&server);
    assert_eq!(get(http, "/api/devices/0FAC").0, 404);
    // Redis stops answering (its process stopped, its sockets open).
    let pid = redis.child.id() as libc::pid_t;
    // SAFETY: signals a child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let lookup = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let status = get(http, "/api/devices/0FAC").0;
        (status, started.elapsed())
    });
    // Scenario pacing: the lookup is on its way to the hung store.
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (health, _) = get(http, "/health");
    let (metrics, _) = get(http, "/metrics");
    let took = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let (status, waited) = lookup.join().expect("the lookup thread");
    eprintln!("health+metrics {took:?}, lookup {status} after {waited:?}");
    assert_eq!((health, metrics), (200, 200));
    assert!(
        took < Duration::from_millis(1500),
        "/health and /metrics took {took:?} behind a lookup waiting for the store"
    );
    assert!(
        waited > took,
        "the lookup ({waited:?}, status {status}) did not overlap the health check"
    );
}
