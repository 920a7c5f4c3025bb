//! The fence on the Redis side: a write that reaches Redis after its front end
//! answered `X` is not applied, so it cannot overwrite a newer acknowledged
//! write; the normal path and the stored layout are unchanged.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use wwep::store::backend::{Backend, StoreError};
use wwep::store::redis::{RedisSettings, RedisStore};

fn store(port: u16, timeout: Duration) -> RedisStore {
    let settings = RedisSettings {
        location: format!("redis://127.0.0.1:{port}").parse().unwrap(),
        ..RedisSettings::default()
    };
    RedisStore::open(&settings, 2, timeout).expect("open the store")
}

/// A TCP relay to Redis that can be cut: while cut, what the front end sends
/// is held, and delivered when the cut ends, as the kernel retransmits a
/// request across a network that comes back (the front end's reset, sent
/// during the cut, never arrives).
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Bytes Redis has answered through the relay, all connections together.
    answered: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, a, s) = (Arc::clone(&cut), Arc::clone(&answered), Arc::clone(&stop));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if s.load(Ordering::Acquire) {
                    return;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                relay(
                    client,
                    server,
                    Arc::clone(&c),
                    Arc::clone(&a),
                    Arc::clone(&s),
                );
            }
        });
        Relay {
            port,
            cut,
            answered,
            stop,
        }
    }

    fn answered(&self) -> Vec<u8> {
        self.answered.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    cut: Arc<AtomicBool>,
    answered: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
) {
    let held = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut from_client = client.try_clone().unwrap();
    let into = Arc::clone(&held);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = from_client.read(&mut buf) {
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut to_server = server.try_clone().unwrap();
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !s.load(Ordering::Acquire) {
            if !cut.load(Ordering::Acquire) {
                let bytes = std::mem::take(&mut *held.lock().unwrap());
                if !bytes.is_empty() && to_server.write_all(&bytes).is_err() {
                    return;
                }
            }
            // The relay's own pace, not a wait for the test.
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = server.read(&mut buf) {
            answered.lock().unwrap().extend_from_slice(&buf[..n]);
            // The front end may have gone: Redis is still read.
            let _ = client.write_all(&buf[..n]);
        }
    });
}

#[test]
fn writes_keep_the_layout_and_survive_a_script_flush() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(redis.port, Duration::from_millis(500));
    assert_eq!(store.write(0x0FAC, 0x0B, 0x1234), Ok(()));
    assert_eq!(store.read(0x0FAC, 0x0B), Ok(Some(0x1234)));
    assert_eq!(
        redis.query::<String>(&["HGET", "wwep:0FAC", "0B"]).unwrap(),
        "1234"
    );
    // The script cache emptied (a restart, SCRIPT FLUSH): EVAL stands in.
    redis.query::<String>(&["SCRIPT", "FLUSH"]).unwrap();
    assert_eq!(store.write(0x0FAC, 0x0B, 0xBEEF), Ok(()));
    assert_eq!(store.read(0x0FAC, 0x0B), Ok(Some(0xBEEF)));
    assert_eq!(
        redis.query::<String>(&["HGET", "wwep:0FAC", "0B"]).unwrap(),
        "BEEF"
    );
}

#[test]
fn a_write_answered_x_that_arrives_late_is_not_applied_over_a_newer_one() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let relay = Relay::start(redis.port);
    let limit = Duration::from_millis(300);
    let cut_off = store(relay.port, limit);
    let other = store(redis.port, limit);
    assert_eq!(cut_off.write(7, 1, 0x0001), Ok(()));

    relay.cut.store(true, Ordering::Release);
    let started = Instant::now();
    assert_eq!(cut_off.write(7, 1, 0x1111), Err(StoreError::Unavailable));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A newer write, through another front end, acknowledged.
    assert_eq!(other.write(7, 1, 0x2222), Ok(()));
    let before = relay.answered().len();

    // The network returns; the held write reaches Redis and is refused.
    relay.cut.store(false, Ordering::Release);
    assert!(
        eventually(Duration::from_secs(5), || relay.answered().len() > before),
        "Redis never answered the late write"
    );
    let answer = String::from_utf8_lossy(&relay.answered()[before..]).into_owned();
    assert!(answer.starts_with(":0"), "the fence answered {answer:?}");
    assert_eq!(
        redis.query::<String>(&["HGET", "wwep:0007", "01"]).unwrap(),
        "2222"
    );
    assert_eq!(other.read(7, 1), Ok(Some(0x2222)));
    // The front end that was cut off serves again by itself.
    assert!(eventually(Duration::from_secs(5), || cut_off
        .write(7, 2, 3)
        == Ok(())));
}

#[test]
fn a_front_end_that_hears_no_sentinel_refuses_writes_within_down_after() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\n\
             sentinel monitor wwep 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds wwep 1000\n",
            redis.port
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server --sentinel");
    let asked = |what: &str| {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"));
        let info: Option<String> = client
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("CLIENT").arg("LIST").query(&mut c))
            .ok();
        info.is_some_and(|info| info.contains(what))
    };
    let settings = RedisSettings {
        location: format!("redis+sentinel://127.0.0.1:{port}/wwep")
            .parse()
            .unwrap(),
        ..RedisSettings::default()
    };
    let store = RedisStore::open(&settings, 2, Duration::from_millis(300)).unwrap();
    assert!(eventually(Duration::from_secs(10), || store.write(1, 1, 1) == Ok(())));
    // The watcher has subscribed, so it has read the down-after period.
    assert!(
        eventually(Duration::from_secs(10), || asked("cmd=subscribe")),
        "the watcher never subscribed"
    );
    // A connection made after the watcher first heard the primary is pooled.
    assert!(eventually(Duration::from_secs(10), || store.write(1, 1, 1) == Ok(())));
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    let stopped = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || store.write(1, 1, 2)
            == Err(StoreError::Unavailable)),
        "writes went on without a Sentinel"
    );
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "refused after {took:?}"
    );
    assert_eq!(store.read(1, 1), Err(StoreError::Unavailable));
    // The primary itself answers all along.
    assert!(redis.query::<String>(&["PING"]).is_ok());
}
