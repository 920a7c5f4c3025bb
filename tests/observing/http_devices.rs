//! `GET /api/devices/{DEVICE}` on real server processes: a register replayed
//! from the data file after a restart, one written by another front end
//! through a shared Redis, 404, 400 and a lower-case id.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;

/// `GET path`: (status, body).
fn get_status_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let answer = http_get(addr, path);
    (answer.status, answer.body)
}

/// Asserts an answer is `status` with a JSON body naming an error.
fn json_error((got, body): (u16, String), status: u16, what: &str) {
    assert_eq!(got, status, "{what:?}: {body}");
    assert!(json(&body)["error"].is_string(), "{what:?}: {body}");
}

/// The HTTP address of a server process, once `/ready` says 200 (the WWEP
/// side is attached).
fn ready_http(server: &ServerProcess) -> SocketAddr {
    let http = server.await_http_addr();
    assert!(
        eventually(IO_TIMEOUT, || get_status_body(http, "/ready").0 == 200),
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
    let state = json(&get_status_body(http, "/api/state").1);
    assert_eq!(
        state["devices"].as_array().map(Vec::len),
        Some(0),
        "{state}"
    );
    let (status, body) = get_status_body(http, "/api/devices/0FAC");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "{\"device\":\"0FAC\",\"registers\":{\"0B\":\"1234\"}}\n"
    );
    // Either case, answered in upper case.
    assert_eq!(
        get_status_body(http, "/api/devices/0fac"),
        (200, body.clone())
    );
    // A device with nothing written.
    json_error(get_status_body(http, "/api/devices/0FAD"), 404, "0FAD");
    // Malformed ids.
    for bad in ["0FA", "0FAC0", "0FAG", "", "0FAC/0B", "%300FA"] {
        let answer = get_status_body(http, &format!("/api/devices/{bad}"));
        json_error(answer, 400, bad);
    }
}

#[test]
fn a_register_written_by_another_front_end_through_redis_is_answered() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let url = redis.url();
    let args = ["--no-tls", "--http", "127.0.0.1:0", "--store", &url];
    let writer = ServerProcess::start(&args);
    let reader = ServerProcess::start(&args);
    let http = ready_http(&reader);
    assert_eq!(get_status_body(http, "/api/devices/0FAC").0, 404);
    for request in [&b"W0FAC0B1234"[..], b"W0FACFFabcd", b"W0FAD000001"] {
        let reply = transact(&mut connect(writer.plain.unwrap()), request);
        assert_eq!(reply[0], b'A', "{}", String::from_utf8_lossy(&reply));
    }
    let (status, body) = get_status_body(http, "/api/devices/0fac");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "{\"device\":\"0FAC\",\"registers\":{\"0B\":\"1234\",\"FF\":\"ABCD\"}}\n"
    );
    assert_eq!(get_status_body(http, "/api/devices/0FAE").0, 404);
    // The store gone: 503, not 404.
    drop(redis);
    json_error(
        get_status_body(http, "/api/devices/0FAC"),
        503,
        "store gone",
    );
}

#[test]
fn health_answers_while_a_device_lookup_waits_for_a_hung_redis() {
    if !have_tool("ss") {
        return;
    }
    let Some(redis) = RedisServer::start(&[]) else {
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
    assert_eq!(get_status_body(http, "/api/devices/0FAC").0, 404);
    // Redis stops answering (its process stopped, its sockets open).
    let pid = redis.pid() as libc::pid_t;
    // SAFETY: signals a child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let lookup = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let status = get_status_body(http, "/api/devices/0FAC").0;
        (status, started.elapsed())
    });
    // The lookup has reached the hung store: its command waits unread on
    // Redis's side of a connection, as the kernel tells.
    let mut queues = Vec::new();
    let waiting = eventually(Duration::from_secs(5), || {
        queues = tcp_queues(redis.port);
        queues.iter().any(|q| q.unread > 0)
    });
    assert!(waiting, "no command reached the stopped Redis: {queues:?}");
    let started = std::time::Instant::now();
    let (health, _) = get_status_body(http, "/health");
    let (metrics, _) = get_status_body(http, "/metrics");
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
