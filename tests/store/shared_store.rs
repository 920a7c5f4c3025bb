//! Several front ends, one set of registers in Redis: sharing, the layout in
//! Redis, Redis going away and coming back, and acknowledged writes surviving a
//! `kill -9` of Redis under `appendfsync always`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

fn front_end(pki: &Pki, redis: &RedisServer, extra: &[&str]) -> ServerProcess {
    let url = redis.url();
    let mut args = vec!["--store", &url, "--explain-errors"];
    args.extend_from_slice(extra);
    ServerProcess::with_pki(pki, &args)
}

fn tls_transact(pki: &Pki, addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut tls = pki
        .connector()
        .connect("localhost", connect(addr))
        .expect("handshake");
    transact(&mut tls, request)
}

#[test]
fn two_front_ends_share_one_redis() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let pki = Pki::new(KeyKind::EcP256);
    let a = front_end(&pki, &redis, &[]);
    let b = front_end(&pki, &redis, &[]);
    assert_eq!(
        transact(&mut connect(a.plain.unwrap()), b"W0FAC0B1234"),
        b"A0FAC0B1234"
    );
    assert_eq!(
        tls_transact(&pki, b.tls.unwrap(), b"R0FAC0B\n"),
        b"A0FAC0B1234\n"
    );
    assert_eq!(
        tls_transact(&pki, a.tls.unwrap(), b"W0FAC0C0001"),
        b"A0FAC0C0001"
    );
    assert_eq!(
        transact(&mut connect(b.plain.unwrap()), b"R0FAC0C"),
        b"A0FAC0C0001"
    );
    assert_eq!(
        transact(&mut connect(b.plain.unwrap()), b"R0FAC0D"),
        b"X not found"
    );
    // One readable hash per device.
    let stored: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg("wwep:0FAC")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(
        stored.into_iter().collect::<Vec<_>>(),
        [
            ("0B".to_string(), "1234".to_string()),
            ("0C".to_string(), "0001".to_string())
        ]
    );
    // Another deployment on the same Redis sees none of it.
    let other = front_end(&pki, &redis, &["--store-prefix", "other"]);
    assert_eq!(
        transact(&mut connect(other.plain.unwrap()), b"R0FAC0B"),
        b"X not found"
    );
}

#[test]
fn redis_going_away_gives_x_at_once_and_service_resumes_by_itself() {
    let Some(mut redis) = RedisServer::start(&[]) else {
        return;
    };
    let pki = Pki::new(KeyKind::EcP256);
    let server = front_end(
        &pki,
        &redis,
        &["--timeout-ms", "2000", "--http", "127.0.0.1:0"],
    );
    let plain = server.plain.unwrap();
    let http = server.await_http_addr();
    // The HTTP side answers from before the listeners open ("starting").
    assert!(
        eventually(Duration::from_secs(5), || health(http).0 == 200),
        "{:?}",
        health(http)
    );
    assert_eq!(
        transact(&mut connect(plain), b"W0001010001"),
        b"A0001010001"
    );
    redis.kill();
    for request in [&b"R000101"[..], b"W0001010002"] {
        let started = Instant::now();
        assert_eq!(
            transact(&mut connect(plain), request),
            b"X store unavailable"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(eventually(Duration::from_secs(5), || server
        .log_text()
        .contains("answering X until it recovers")));
    let (status, down) = health(http);
    assert!(
        status == 503 && down.contains("does not answer"),
        "{status} {down}"
    );
    redis.run();
    assert!(
        server.answers_within(b"W0001010003", b"A0001010003", Duration::from_secs(10)),
        "{}",
        server.log_text()
    );
    assert_eq!(transact(&mut connect(plain), b"R000101"), b"A0001010003");
    assert_eq!(health(http).0, 200);
}

#[test]
fn a_restarted_redis_costs_no_x_for_the_stale_pooled_connections() {
    let Some(mut redis) = RedisServer::start(&[]) else {
        return;
    };
    let pki = Pki::new(KeyKind::EcP256);
    let server = front_end(&pki, &redis, &["--timeout-ms", "2000"]);
    let plain = server.plain.unwrap();
    // Several connections in the pool: concurrent clients, a few rounds.
    for round in 0..5u16 {
        let clients: Vec<_> = (0..8u16)
            .map(|k| {
                std::thread::spawn(move || {
                    let request = format!("W00{k:02X}01{round:04X}");
                    transact(&mut connect(plain), request.as_bytes())
                })
            })
            .collect();
        for client in clients {
            let reply = client.join().unwrap();
            assert!(
                reply.starts_with(b"A"),
                "{}",
                String::from_utf8_lossy(&reply)
            );
        }
    }
    redis.kill();
    redis.run();
    // Every pooled connection is stale now; none of them may cost a board an X.
    for k in 0..8u16 {
        let request = format!("W00{k:02X}01ABCD");
        assert_eq!(
            transact(&mut connect(plain), request.as_bytes()),
            format!("A00{k:02X}01ABCD").as_bytes(),
            "{}",
            server.log_text()
        );
    }
}

/// `GET /health`: the status and the rest of the answer, head and body (0
/// and nothing when there is no answer).
fn health(http: SocketAddr) -> (u16, String) {
    http_get_from(None, http, "/health").map_or((0, String::new()), |answer| {
        (
            answer.status,
            format!("{}\n\n{}", answer.headers, answer.body),
        )
    })
}

#[test]
fn acknowledged_writes_survive_kill_9_of_redis_with_appendfsync_always() {
    let Some(mut redis) = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"])
    else {
        return;
    };
    let pki = Pki::new(KeyKind::EcP256);
    let server = front_end(&pki, &redis, &["--timeout-ms", "2000"]);
    let plain = server.plain.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Each writer writes every key once, so an acknowledged value is the value.
    let writers: Vec<_> = (0..4u16)
        .map(|w| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..4096u16 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (device, register) = (w * 16 + i / 256, (i % 256) as u8);
                    let request = format!("W{device:04X}{register:02X}{i:04X}");
                    let Ok(mut c) = TcpStream::connect(plain) else {
                        continue;
                    };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = c.write_all(request.as_bytes());
                    let mut reply = Vec::new();
                    let _ = c.read_to_end(&mut reply);
                    if reply.first() == Some(&b'A') {
                        acked.push((device, register, i));
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    redis.kill();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(u16, u8, u16)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acked.len() > 50,
        "only {} writes were acknowledged",
        acked.len()
    );
    redis.run();
    let mut conn = redis.client();
    let mut lost = 0;
    for (device, register, value) in &acked {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(format!("wwep:{device:04X}"))
            .arg(format!("{register:02X}"))
            .query(&mut conn)
            .unwrap();
        if stored != Some(format!("{value:04X}")) {
            lost += 1;
        }
    }
    assert_eq!(
        lost,
        0,
        "{lost} of {} acknowledged writes lost",
        acked.len()
    );
}

#[test]
fn shared_store_flags_fail_clearly() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let url = redis.url();
    let one_line = |args: &[&str], code: i32, needle: &str| {
        let mut cmd = server_cmd();
        cmd.arg("--no-tls").args(args);
        let out = run_with_input(&mut cmd, b"");
        let text = describe(&cmd, &out);
        assert_eq!(out.status.code(), Some(code), "{text}");
        assert!(
            the_error_line(&out.stderr, &text).contains(needle),
            "{text}"
        );
    };
    one_line(&["--store", &url, "--data", "registers.wwep"], 2, "--data");
    one_line(&["--store-wait-replicas", "1"], 2, "--store-wait-replicas");
    // Debian's redis-server 7.0 has no WAITAOF: refused, not ignored.
    one_line(&["--store", &url, "--store-wait-aof"], 2, "WAITAOF");
    let mut cmd = server_cmd();
    cmd.args(["--no-tls", "--store", "mysql://x"]);
    let out = run_with_input(&mut cmd, b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store"));
}

/// `GET /metrics`, the body (nothing when there is no answer).
fn metrics_text(http: SocketAddr) -> String {
    http_get_from(None, http, "/metrics").map_or(String::new(), |answer| answer.body)
}

#[test]
fn registers_in_a_shared_store_are_counted_truly_or_not_at_all() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let pki = Pki::new(KeyKind::EcP256);
    let server = front_end(&pki, &redis, &["--http", "127.0.0.1:0"]);
    let plain = server.plain.unwrap();
    let http = server.await_http_addr();
    for request in [
        &b"W0FAC0B0001"[..],
        b"W0FAC0C0002",
        b"W00010500FF",
        b"W0FAC0B0003",
    ] {
        let mut c = connect(plain);
        assert_eq!(transact(&mut c, request)[0], b'A');
    }
    // Three distinct registers: wwep_registers says 3, or is not exported —
    // never 0 or a count of this front end's own writes alone.
    let mut text = String::new();
    let settled = eventually(Duration::from_secs(10), || {
        text = metrics_text(http);
        let registers = text
            .lines()
            .find_map(|l| l.strip_prefix("wwep_registers "))
            .map(str::trim);
        registers.is_none_or(|n| n == "3")
    });
    assert!(settled, "{text}");
    assert!(text.contains("wwep_transactions_total"), "{text}");
}

/// A register whose stored value this server cannot read (`HSET wwep:0BB0 01
/// ff`, by hand or by another program) gets one verdict on every path: `X
/// unreadable` to a WWEP read, listed under `unreadable` by
/// `/api/devices`, and the read's `X` in `/api/state`'s transactions; the
/// store itself is healthy, and the device's other registers read as ever.
#[test]
fn a_value_wwep_cannot_read_gets_one_verdict_on_every_path() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let pki = Pki::new(KeyKind::EcP256);
    let server = front_end(&pki, &redis, &["--http", "127.0.0.1:0"]);
    let plain = server.plain.unwrap();
    let http = server.await_http_addr();
    assert_eq!(
        transact(&mut connect(plain), b"W0BB0021234"),
        b"A0BB0021234"
    );
    let added: i64 = redis.query(&["HSET", "wwep:0BB0", "01", "ff"]).unwrap();
    assert_eq!(added, 1);
    // Bytes that are not even UTF-8: unreadable too, not a store failure.
    let added: i64 = redis::cmd("HSET")
        .arg("wwep:0BB1")
        .arg("01")
        .arg(&b"\xff\xfe"[..])
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(added, 1);

    assert_eq!(transact(&mut connect(plain), b"R0BB001"), b"X unreadable");
    assert_eq!(transact(&mut connect(plain), b"R0BB101"), b"X unreadable");
    assert_eq!(transact(&mut connect(plain), b"R0BB002"), b"A0BB0021234");
    let device = http_get(http, "/api/devices/0BB0");
    assert_eq!(
        (device.status, device.body.as_str()),
        (
            200,
            "{\"device\":\"0BB0\",\"registers\":{\"02\":\"1234\"},\"unreadable\":[\"01\"]}\n"
        )
    );
    let device = http_get(http, "/api/devices/0bb1");
    assert_eq!(
        (device.status, device.body.as_str()),
        (
            200,
            "{\"device\":\"0BB1\",\"registers\":{},\"unreadable\":[\"01\"]}\n"
        )
    );
    // `/api/state` lists what went through this server: the read's X, and
    // no value for the register.
    let state: serde_json::Value =
        serde_json::from_str(&http_get(http, "/api/state").body).unwrap();
    let read = state["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|tx| tx["request"] == "R0BB001")
        .unwrap_or_else(|| panic!("the read in {state}"));
    assert_eq!(read["reply"], "X unreadable");
    let devices = state["devices"].as_array().unwrap();
    let bb0 = devices.iter().find(|d| d["device"] == "0BB0").unwrap();
    let written: Vec<_> = bb0["registers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["register"].as_str(), r["value"].as_str()))
        .collect();
    assert_eq!(written, [(Some("02"), Some("1234"))]);

    server.assert_logs_within(
        "wwep:0BB0: register 01 holds \"ff\", not 4 hex digits",
        Duration::from_secs(5),
    );
    let metrics = metrics_text(http);
    assert!(
        metrics.contains(
            "wwep_transactions_total{port=\"plain\",command=\"R\",reply=\"X\",result=\"unreadable\"} 2\n"
        ),
        "{metrics}"
    );
    assert_eq!(health(http).0, 200, "the store answers: {:?}", health(http));

    // Written through wwep, the register reads again everywhere.
    assert_eq!(
        transact(&mut connect(plain), b"W0BB0010001"),
        b"A0BB0010001"
    );
    assert_eq!(transact(&mut connect(plain), b"R0BB001"), b"A0BB0010001");
    assert_eq!(
        http_get(http, "/api/devices/0BB0").body,
        "{\"device\":\"0BB0\",\"registers\":{\"01\":\"0001\",\"02\":\"1234\"}}\n"
    );
}

/// A hash field in lower case (`HSET wwep:0BB5 0b 00ab`, by hand or by
/// another program) is not a register: a read asks `HGET` for the field in
/// upper case, as wwep writes it, and finds nothing (`X not found`), so
/// `/api/devices` does not list it either — one verdict per register, and
/// never one register twice in the JSON. The field is left as it is and
/// logged; values keep their rule (either case reads, on both paths).
#[test]
fn a_lower_case_field_is_not_a_register_on_any_path() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let pki = Pki::new(KeyKind::EcP256);
    let server = front_end(&pki, &redis, &["--http", "127.0.0.1:0"]);
    let plain = server.plain.unwrap();
    let http = server.await_http_addr();
    let hset = |args: &[&str]| {
        let mut command = vec!["HSET"];
        command.extend_from_slice(args);
        let added: i64 = redis.query(&command).unwrap();
        assert_eq!(added as usize, (args.len() - 1) / 2, "{args:?}");
    };
    hset(&["wwep:0BB5", "0b", "00ab"]);
    hset(&["wwep:0BB4", "0a", "1111", "0A", "2222"]);
    hset(&["wwep:0BB3", "0a", "ff", "0A", "1234"]);
    // A lower-case value under an upper-case field reads on both paths.
    hset(&["wwep:0BB3", "0C", "00ab"]);

    let read = |request: &[u8]| transact(&mut connect(plain), request);
    assert_eq!(read(b"R0BB50B"), b"X not found");
    let device = http_get(http, "/api/devices/0BB5");
    assert_eq!(
        (device.status, device.body.as_str()),
        (
            404,
            "{\"error\":\"nothing has been written to this device\"}\n"
        )
    );

    assert_eq!(read(b"R0BB40A"), b"A0BB40A2222");
    let device = http_get(http, "/api/devices/0BB4");
    assert_eq!(
        (device.status, device.body.as_str()),
        (
            200,
            "{\"device\":\"0BB4\",\"registers\":{\"0A\":\"2222\"}}\n"
        )
    );

    assert_eq!(read(b"R0BB30A"), b"A0BB30A1234");
    assert_eq!(read(b"R0BB30C"), b"A0BB30C00AB");
    let device = http_get(http, "/api/devices/0BB3");
    assert_eq!(
        (device.status, device.body.as_str()),
        (
            200,
            "{\"device\":\"0BB3\",\"registers\":{\"0A\":\"1234\",\"0C\":\"00AB\"}}\n"
        )
    );

    server.assert_logs_within(
        "wwep:0BB5: field \"0b\" is not a register",
        Duration::from_secs(5),
    );
    // Left as they are: wwep reads the store, it does not tidy it.
    let kept: Option<String> = redis.query(&["HGET", "wwep:0BB4", "0a"]).unwrap();
    assert_eq!(kept.as_deref(), Some("1111"));
    // A write through wwep makes the register, in upper case, on both paths.
    assert_eq!(read(b"W0BB50B0001"), b"A0BB50B0001");
    assert_eq!(read(b"R0BB50B"), b"A0BB50B0001");
    assert_eq!(
        http_get(http, "/api/devices/0BB5").body,
        "{\"device\":\"0BB5\",\"registers\":{\"0B\":\"0001\"}}\n"
    );
}

/// `INFO stats`' count of connections Redis has accepted since it started.
fn connections_received(redis: &RedisServer) -> u64 {
    let info: String = redis.query(&["INFO", "stats"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("total_connections_received in {info}"))
}

/// A device's key that is not a hash (`SET wwep:0BB0 x`, a list, by hand or
/// by another program) is unreadable, not an outage: a read and a write of
/// any of its registers get `X unreadable`, the key is left as it is,
/// `/api/devices` answers 502 saying the stored values cannot be read, one
/// warning names the key and its type, `/health` stays 200, the pooled
/// connection is kept, and every other device works as ever. Once the key is
/// gone, a write stores the register again.
#[test]
fn a_device_key_that_is_not_a_hash_is_unreadable_not_an_outage() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let pki = Pki::new(KeyKind::EcP256);
    let server = front_end(&pki, &redis, &["--http", "127.0.0.1:0"]);
    let plain = server.plain.unwrap();
    let http = server.await_http_addr();
    assert_eq!(
        transact(&mut connect(plain), b"W0BB1021234"),
        b"A0BB1021234"
    );
    let _: () = redis.query(&["SET", "wwep:0BB0", "x"]).unwrap();
    let pushed: i64 = redis.query(&["RPUSH", "wwep:0BB2", "a"]).unwrap();
    assert_eq!(pushed, 1);
    // Each `redis.query` below is one connection of the test's own; wwep's
    // pooled connection carries every request, none is opened for them.
    let before = connections_received(&redis);

    for _ in 0..3 {
        assert_eq!(transact(&mut connect(plain), b"R0BB001"), b"X unreadable");
        assert_eq!(
            transact(&mut connect(plain), b"W0BB0011234"),
            b"X unreadable"
        );
        assert_eq!(transact(&mut connect(plain), b"R0BB2FF"), b"X unreadable");
        assert_eq!(
            transact(&mut connect(plain), b"W0BB2FF0001"),
            b"X unreadable"
        );
        assert_eq!(transact(&mut connect(plain), b"R0BB102"), b"A0BB1021234");
    }
    let device = http_get(http, "/api/devices/0BB0");
    assert_eq!(
        (device.status, device.body.as_str()),
        (502, "{\"error\":\"the stored values cannot be read\"}\n")
    );
    assert_eq!(http_get(http, "/api/devices/0BB2").status, 502);
    assert_eq!(
        http_get(http, "/api/devices/0BB1").body,
        "{\"device\":\"0BB1\",\"registers\":{\"02\":\"1234\"}}\n"
    );
    assert_eq!(health(http).0, 200, "the store answers: {:?}", health(http));
    assert_eq!(
        transact(&mut connect(plain), b"W0BB1030001"),
        b"A0BB1030001"
    );
    assert_eq!(
        connections_received(&redis),
        before + 1,
        "only the test's own INFO connected"
    );

    // The operator's values are untouched.
    let kept: String = redis.query(&["GET", "wwep:0BB0"]).unwrap();
    assert_eq!(kept, "x");
    let list: Vec<String> = redis.query(&["LRANGE", "wwep:0BB2", "0", "-1"]).unwrap();
    assert_eq!(list, ["a"]);

    server.assert_logs_within(
        "wwep:0BB0 holds a string, not a hash of registers",
        Duration::from_secs(5),
    );
    let log = server.log_text();
    assert!(
        !log.contains("until it recovers") && !log.contains("WRONGTYPE"),
        "no outage is logged: {log}"
    );
    let metrics = metrics_text(http);
    for command in ["R", "W"] {
        let line = format!(
            "wwep_transactions_total{{port=\"plain\",command=\"{command}\",reply=\"X\",result=\"unreadable\"}} 6\n"
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(
        metrics
            .lines()
            .filter(|l| l.contains("result=\"store_failure\""))
            .all(|l| l.ends_with(" 0")),
        "no store failure counted: {metrics}"
    );

    // Once the key is gone, the device is written and read as any other.
    let removed: i64 = redis.query(&["DEL", "wwep:0BB0"]).unwrap();
    assert_eq!(removed, 1);
    assert_eq!(
        transact(&mut connect(plain), b"W0BB0011234"),
        b"A0BB0011234"
    );
    assert_eq!(transact(&mut connect(plain), b"R0BB001"), b"A0BB0011234");
    assert_eq!(
        http_get(http, "/api/devices/0BB0").body,
        "{\"device\":\"0BB0\",\"registers\":{\"01\":\"1234\"}}\n"
    );
}
