//! The shared store over TLS (`rediss://` with `--store-ca`) and through
//! Sentinel (`redis+sentinel://`), against real `redis-server` processes on
//! loopback: registers written and read through the front end and found in
//! Redis, a certificate the front end must not trust, a Sentinel failover after
//! `kill -9` of the primary followed without a restart, and stores that stop
//! answering (a stopped Redis or Sentinel) getting `X` within the time limit
//! instead of holding the workers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A process this file started; killed by PID (SIGKILL) on drop.
struct Process {
    child: Option<Child>,
    pid: u32,
    name: String,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Process {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process {
            pid: child.id(),
            child: Some(child),
            name: name.to_string(),
            log,
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to this process by its PID.
    fn signal(&self, name: &str) {
        assert!(
            self.try_signal(name),
            "kill -{name} {} ({})",
            self.pid,
            self.name
        );
    }

    fn try_signal(&self, name: &str) -> bool {
        self.child.is_some()
            && Command::new("kill")
                .arg(format!("-{name}"))
                .arg(self.pid.to_string())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// `kill -9`, and wait until the process is gone (its sockets closed).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The end of its log file, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} log ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the Redis tools are here (skips with a message, or fails under
/// WWEP_REQUIRE_TOOLS=1).
fn have_redis() -> bool {
    have_tool("redis-server") && have_tool("redis-cli")
}

/// A `redis-server` on loopback, with its own directory and log file under
/// `dir/name`.
fn redis_server(dir: &Path, name: &str, args: &[String]) -> Process {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).unwrap();
    let log = own.join("redis.log");
    let mut cmd = Command::new("redis-server");
    cmd.args(args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&own)
        .arg("--logfile")
        .arg(&log);
    Process::spawn(name, &mut cmd, log)
}

/// A plain connection to a Redis or Sentinel on 127.0.0.1, with time limits.
fn redis_client(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
    connection.set_read_timeout(Some(Duration::from_secs(5)))?;
    connection.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(connection)
}

/// One command on a fresh plain connection.
fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut redis_client(port)?)
}

fn wait_for_ping(port: u16, process: &Process) {
    assert!(
        patiently(Duration::from_secs(15), || query::<String>(port, &["PING"])
            .is_ok_and(|pong| pong == "PONG")),
        "{} did not answer PING on port {port}\n{}",
        process.name,
        process.log_tail()
    );
}

/// One transaction that may fail: the reply, or what went wrong, and how long
/// it took.
fn timed_transact(
    addr: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> (Result<Vec<u8>, String>, Duration) {
    let started = Instant::now();
    let result = (|| {
        let mut c = TcpStream::connect_timeout(&addr, limit).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
        c.write_all(request).map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        c.read_to_end(&mut reply)
            .map_err(|e| format!("no reply ({e})"))?;
        Ok(reply)
    })();
    (result, started.elapsed())
}

/// Writes 1234 to register 0B of device 0FAC through `server`'s open port and
/// reads it back; that port's address.
fn writes_and_reads_back(server: &ServerProcess) -> SocketAddr {
    let plain = server.plain.expect("the open port");
    let write = transact(&mut connect(plain), b"W0FAC0B1234");
    assert_eq!(write, b"A0FAC0B1234", "{}", server.log_text());
    assert_eq!(transact(&mut connect(plain), b"R0FAC0B"), b"A0FAC0B1234");
    plain
}

// ---------------------------------------------------------------- rediss://

/// A TLS-only `redis-server` (`--port 0`) serving `cert`/`key`.
fn tls_redis(dir: &Path, name: &str, pki: &Pki, cert: &Path, key: &Path) -> (Process, u16) {
    let port = free_port();
    let args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        pki.path("ca.pem").to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let redis = redis_server(dir, name, &args);
    assert!(
        patiently(Duration::from_secs(15), || redis_cli_tls(
            pki,
            port,
            &["PING"]
        ) == "PONG"),
        "TLS redis-server did not answer on port {port}\n{}",
        redis.log_tail()
    );
    (redis, port)
}

/// `redis-cli --tls` against localhost:PORT, verifying with the test CA: an
/// independent client to look into the TLS Redis.
fn redis_cli_tls(pki: &Pki, port: u16, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["-h", "localhost", "-p", &port.to_string()])
        .args(args);
    let out = run_with_input(&mut cmd, b"");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A TLS-only Redis serving the test PKI's server certificate, in a
/// directory of its own.
struct TlsRedis {
    redis: Process,
    port: u16,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    /// `None` (skipped) without the Redis tools.
    fn start() -> Option<TlsRedis> {
        if !have_redis() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(KeyKind::EcP256);
        let (redis, port) = tls_redis_of(dir.path(), "redis-tls", &pki);
        Some(TlsRedis {
            redis,
            port,
            pki,
            dir,
        })
    }
}

/// [`tls_redis`] serving the test PKI's server certificate and key.
fn tls_redis_of(dir: &Path, name: &str, pki: &Pki) -> (Process, u16) {
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    tls_redis(dir, name, pki, &cert, &key)
}

fn tls_front_end(port: u16, ca: &Path, extra: &[&str]) -> ServerProcess {
    tls_store_front_end(&format!("rediss://localhost:{port}"), ca, extra)
}

/// A front end whose store is reached over TLS at `url`, verified with `ca`.
fn tls_store_front_end(url: &str, ca: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--no-tls",
        "--store",
        url,
        "--store-ca",
        ca.to_str().unwrap(),
        "--explain-errors",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

#[test]
fn rediss_store_verified_with_store_ca_keeps_the_registers() {
    let Some(store) = TlsRedis::start() else {
        return;
    };
    let (port, pki) = (store.port, &store.pki);
    let server = tls_front_end(port, &pki.path("ca.pem"), &[]);
    let plain = writes_and_reads_back(&server);
    assert_eq!(transact(&mut connect(plain), b"R0FAC0C"), b"X not found");
    // Really in the TLS Redis, as one readable hash, seen by another client.
    assert_eq!(
        redis_cli_tls(pki, port, &["HGET", "wwep:0FAC", "0B"]),
        "1234"
    );
    // Written there by someone else, read through the front end.
    assert_eq!(
        redis_cli_tls(pki, port, &["HSET", "wwep:0FAC", "0C", "BEEF"]),
        "1"
    );
    assert_eq!(transact(&mut connect(plain), b"R0FAC0C"), b"A0FAC0CBEEF");
    assert!(
        server
            .log_text()
            .contains(&format!("registers are kept in redis localhost:{port}")),
        "{}",
        server.log_text()
    );
}

#[test]
fn rediss_store_whose_certificate_is_not_trusted_refuses_to_start() {
    let Some(store) = TlsRedis::start() else {
        return;
    };
    let (port, pki) = (store.port, &store.pki);
    // A certificate from the right CA for another name only.
    let elsewhere = pki.issue_for("redis.example");
    let (elsewhere_cert, elsewhere_key) = pki.write_issued("elsewhere", &elsewhere);
    let (_misnamed, misnamed_port) = tls_redis(
        store.dir.path(),
        "redis-misnamed",
        pki,
        &elsewhere_cert,
        &elsewhere_key,
    );
    let other = Pki::new(KeyKind::EcP256);
    let refused = |port: u16, ca: Option<&Path>, needles: &[&str]| {
        let url = format!("rediss://localhost:{port}");
        let mut cmd = server_cmd();
        cmd.args(["--no-tls", "--store", &url]);
        if let Some(ca) = ca {
            cmd.arg("--store-ca").arg(ca);
        }
        let started = Instant::now();
        let out = run_with_input(&mut cmd, b"");
        let text = describe(&cmd, &out);
        // A certificate that cannot be used stops the server, as for its own.
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(started.elapsed() < Duration::from_secs(15), "{text}");
        let error = the_error_line(&out.stderr, &text);
        for needle in needles {
            assert!(error.contains(needle), "{needle:?} missing: {text}");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("listener on"), "{text}");
    };
    let wrong_ca = other.path("ca.pem");
    let wrong_ca_text = wrong_ca.display().to_string();
    let store = format!("redis localhost:{port}");
    // Another CA.
    refused(
        port,
        Some(&wrong_ca),
        &["--store-ca", &wrong_ca_text, &store, "not trusted"],
    );
    // No --store-ca: the system's roots, which do not know the test CA.
    refused(port, None, &["--store", &store, "not trusted", "system"]);
    // The right CA, the wrong name.
    let misnamed = format!("redis localhost:{misnamed_port}");
    refused(
        misnamed_port,
        Some(&pki.path("ca.pem")),
        &[&misnamed, "not trusted", "hostname mismatch"],
    );
    // And the right CA and name still work, so the refusals were about trust.
    let server = tls_front_end(port, &pki.path("ca.pem"), &[]);
    assert_eq!(
        transact(&mut connect(server.plain.unwrap()), b"W0FAC0B1234"),
        b"A0FAC0B1234"
    );
}

#[test]
fn a_tls_store_that_stops_answering_gets_x_within_the_time_limit() {
    let Some(store) = TlsRedis::start() else {
        return;
    };
    let (port, pki) = (store.port, &store.pki);
    let server = tls_front_end(port, &pki.path("ca.pem"), &["--timeout-ms", "1000"]);
    let plain = server.plain.unwrap();
    assert_eq!(
        transact(&mut connect(plain), b"W0FAC0B1234"),
        b"A0FAC0B1234"
    );
    // Stopped, Redis still completes TCP handshakes (the kernel does) but never
    // answers a command or a ClientHello: a hung server, or a paused machine.
    store.redis.signal("STOP");
    let stopped = ContinueOnDrop(&store.redis);
    // The first request finds the pooled connection silent; the next ones open
    // new connections, whose TLS handshakes must time out too.
    unavailable_until_continued(&server, plain, stopped);
}

/// While `stopped` holds a store process stopped, each of four reads gets
/// `X store unavailable` within the 1 s time limit (well under 5 s); once it
/// is continued, service resumes with the register written before.
fn unavailable_until_continued(server: &ServerProcess, plain: SocketAddr, stopped: ContinueOnDrop) {
    let limit = Duration::from_secs(10);
    for i in 0..4 {
        let (reply, took) = timed_transact(plain, b"R0FAC0B", limit);
        assert_eq!(
            reply.as_deref(),
            Ok(&b"X store unavailable"[..]),
            "request {i} after {took:?}\n{}",
            server.log_text()
        );
        assert!(
            took < Duration::from_secs(5),
            "request {i} took {took:?} with --timeout-ms 1000\n{}",
            server.log_text()
        );
    }
    drop(stopped);
    assert!(
        patiently(Duration::from_secs(15), || timed_transact(
            plain, b"R0FAC0B", limit
        )
        .0
        .as_deref()
            == Ok(&b"A0FAC0B1234"[..])),
        "service did not resume\n{}",
        server.log_text()
    );
}

/// Sends SIGCONT to a stopped process when dropped, also when a test fails.
struct ContinueOnDrop<'a>(&'a Process);

impl Drop for ContinueOnDrop<'_> {
    fn drop(&mut self) {
        self.0.try_signal("CONT");
    }
}

// ---------------------------------------------------------------- Sentinel

/// A primary, optionally a replica, and one Sentinel monitoring the primary
/// as `wwep` (quorum 1), each in its own directory. With a `Pki`, the primary
/// serves TLS only and the Sentinel reaches it over TLS.
struct SentinelSetup {
    _dir: tempfile::TempDir,
    primary: Process,
    primary_port: u16,
    replica: Option<(Process, u16)>,
    sentinel: Process,
    sentinel_port: u16,
}

const PRIMARY_NAME: &str = "wwep";

impl SentinelSetup {
    fn start(with_replica: bool) -> SentinelSetup {
        Self::start_with(with_replica, None)
    }

    fn start_with(with_replica: bool, tls: Option<&Pki>) -> SentinelSetup {
        assert!(
            !(with_replica && tls.is_some()),
            "the replica here speaks plain Redis"
        );
        let dir = tempfile::tempdir().unwrap();
        let (primary, primary_port) = match tls {
            Some(pki) => tls_redis_of(dir.path(), "primary", pki),
            None => {
                let port = free_port();
                let primary =
                    redis_server(dir.path(), "primary", &["--port".into(), port.to_string()]);
                wait_for_ping(port, &primary);
                (primary, port)
            }
        };
        let replica = with_replica.then(|| {
            let port = free_port();
            let replica = redis_server(
                dir.path(),
                "replica",
                &[
                    "--port".into(),
                    port.to_string(),
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    primary_port.to_string(),
                ],
            );
            wait_for_ping(port, &replica);
            assert!(
                patiently(Duration::from_secs(20), || query::<String>(
                    port,
                    &["INFO", "replication"]
                )
                .is_ok_and(|info| info.contains("master_link_status:up"))),
                "the replica did not sync\n{}\n{}",
                replica.log_tail(),
                primary.log_tail()
            );
            (replica, port)
        });
        let sentinel_port = free_port();
        let sentinel_dir = dir.path().join("sentinel");
        std::fs::create_dir_all(&sentinel_dir).unwrap();
        // Sentinel rewrites its configuration file: it lives in a writable directory.
        let conf = sentinel_dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\n\
                 bind 127.0.0.1\n\
                 sentinel monitor {PRIMARY_NAME} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {PRIMARY_NAME} 1000\n\
                 sentinel failover-timeout {PRIMARY_NAME} 5000\n{}",
                match tls {
                    Some(pki) => format!(
                        "tls-replication yes\n\
                         tls-cert-file {}\n\
                         tls-key-file {}\n\
                         tls-ca-cert-file {}\n",
                        pki.path("server.pem").display(),
                        pki.path("server.key").display(),
                        pki.path("ca.pem").display()
                    ),
                    None => String::new(),
                }
            ),
        )
        .unwrap();
        let log = sentinel_dir.join("sentinel.log");
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf)
            .arg("--sentinel")
            .arg("--dir")
            .arg(&sentinel_dir)
            .arg("--logfile")
            .arg(&log);
        let sentinel = Process::spawn("sentinel", &mut cmd, log);
        wait_for_ping(sentinel_port, &sentinel);
        let setup = SentinelSetup {
            _dir: dir,
            primary,
            primary_port,
            replica,
            sentinel,
            sentinel_port,
        };
        assert_eq!(
            setup.named_primary(),
            Some(primary_port),
            "{}",
            setup.logs()
        );
        // A failover can only promote a replica the Sentinel has discovered.
        if let Some((_, replica_port)) = &setup.replica {
            assert!(
                patiently(Duration::from_secs(30), || setup
                    .known_replicas()
                    .contains(replica_port)),
                "the Sentinel did not discover the replica\n{}",
                setup.logs()
            );
        }
        setup
    }

    /// The primary's port as the Sentinel names it now.
    fn named_primary(&self) -> Option<u16> {
        query::<Option<(String, u16)>>(
            self.sentinel_port,
            &["SENTINEL", "get-master-addr-by-name", PRIMARY_NAME],
        )
        .ok()
        .flatten()
        .map(|(_, port)| port)
    }

    /// Replicas the Sentinel sees up.
    fn known_replicas(&self) -> Vec<u16> {
        query::<Vec<HashMap<String, String>>>(
            self.sentinel_port,
            &["SENTINEL", "replicas", PRIMARY_NAME],
        )
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.get("flags").is_some_and(|f| f == "slave"))
        .filter_map(|r| r.get("port")?.parse().ok())
        .collect()
    }

    /// A front end with the primary this Sentinel names as its store, `X`
    /// explained, and `timeout_ms` as its time limit.
    fn front_end(&self, timeout_ms: &str) -> ServerProcess {
        let url = self.url();
        ServerProcess::start(&[
            "--no-tls",
            "--store",
            &url,
            "--explain-errors",
            "--timeout-ms",
            timeout_ms,
        ])
    }

    fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{PRIMARY_NAME}",
            self.sentinel_port
        )
    }

    fn logs(&self) -> String {
        let mut all = vec![self.primary.log_tail()];
        if let Some((replica, _)) = &self.replica {
            all.push(replica.log_tail());
        }
        all.push(self.sentinel.log_tail());
        all.join("\n")
    }
}

#[test]
fn sentinel_failover_after_kill_9_is_followed_without_a_restart() {
    if !have_redis() {
        return;
    }
    let mut setup = SentinelSetup::start(true);
    let replica_port = setup.replica.as_ref().unwrap().1;
    let server = setup.front_end("2000");
    assert!(
        server.log_text().contains(&format!(
            "registers are kept in primary {PRIMARY_NAME} of sentinels 127.0.0.1:{}",
            setup.sentinel_port
        )),
        "{}",
        server.log_text()
    );
    let plain = writes_and_reads_back(&server);
    assert_eq!(
        query::<Option<String>>(setup.primary_port, &["HGET", "wwep:0FAC", "0B"]).unwrap(),
        Some("1234".to_string())
    );
    // Replication is asynchronous: make sure the replica has the write before
    // the primary dies, so its surviving the failover is something to expect.
    assert!(
        patiently(Duration::from_secs(10), || query::<i64>(
            setup.primary_port,
            &["WAIT", "1", "1000"]
        )
        .is_ok_and(|n| n >= 1)),
        "the replica did not confirm the write\n{}",
        setup.logs()
    );
    assert_eq!(
        query::<Option<String>>(replica_port, &["HGET", "wwep:0FAC", "0B"]).unwrap(),
        Some("1234".to_string())
    );

    setup.primary.kill();
    let killed = Instant::now();
    // Until the Sentinel promotes the replica: X at once, never a hang.
    let (reply, took) = timed_transact(plain, b"W0FAC0C0002", Duration::from_secs(10));
    assert_eq!(
        reply.as_deref(),
        Ok(&b"X store unavailable"[..]),
        "after {took:?}\n{}",
        server.log_text()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        patiently(Duration::from_secs(30), || setup.named_primary()
            == Some(replica_port)),
        "the Sentinel did not promote the replica within 30 s\n{}",
        setup.logs()
    );
    let promoted = killed.elapsed();
    // The same front end, not restarted, writes to the new primary.
    let mut last = Vec::new();
    let serving = patiently(Duration::from_secs(30), || {
        last = timed_transact(plain, b"W0FAC0C0002", Duration::from_secs(10))
            .0
            .unwrap_or_else(|e| e.into_bytes());
        last == b"A0FAC0C0002"
    });
    assert!(
        serving,
        "no write accepted within 30 s of the promotion (last reply {:?})\n{}\n{}",
        String::from_utf8_lossy(&last),
        server.log_text(),
        setup.logs()
    );
    let served = killed.elapsed();
    eprintln!(
        "kill -9 of the primary: promoted after {promoted:?}, writes accepted after {served:?}"
    );
    assert_eq!(transact(&mut connect(plain), b"R0FAC0C"), b"A0FAC0C0002");
    // The write the replica had confirmed survived the failover.
    assert_eq!(transact(&mut connect(plain), b"R0FAC0B"), b"A0FAC0B1234");
    // And the new value is in the promoted replica itself.
    assert_eq!(
        query::<Option<String>>(replica_port, &["HGET", "wwep:0FAC", "0C"]).unwrap(),
        Some("0002".to_string())
    );
    assert!(matches!(
        query::<redis::Role>(replica_port, &["ROLE"]),
        Ok(redis::Role::Primary { .. })
    ));
}

#[test]
fn a_sentinel_that_stops_answering_gets_x_within_the_time_limit() {
    if !have_redis() {
        return;
    }
    let setup = SentinelSetup::start(false);
    let server = setup.front_end("1000");
    let plain = server.plain.unwrap();
    // On a busy machine the first lookup through the Sentinel can take longer
    // than the 1 s limit (an honest X): the setup write may be retried.
    let mut first = Vec::new();
    assert!(
        patiently(Duration::from_secs(15), || {
            first = transact(&mut connect(plain), b"W0FAC0B1234");
            first == b"A0FAC0B1234"
        }),
        "the first write was never accepted (last reply {:?})\n{}",
        String::from_utf8_lossy(&first),
        server.log_text()
    );
    // The Sentinel hangs (its kernel still accepts connections), and the
    // front end's pooled connection to the primary is closed, so the next
    // request needs a new connection, which only the Sentinel can point to.
    setup.sentinel.signal("STOP");
    let stopped = ContinueOnDrop(&setup.sentinel);
    let killed: i64 = query(setup.primary_port, &["CLIENT", "KILL", "TYPE", "normal"]).unwrap();
    assert!(
        killed >= 1,
        "the front end had no connection to the primary"
    );
    unavailable_until_continued(&server, plain, stopped);
}

#[test]
fn rediss_sentinel_reaches_the_named_primary_over_tls_verified_with_store_ca() {
    if !have_redis() {
        return;
    }
    let pki = Pki::new(KeyKind::EcP256);
    let setup = SentinelSetup::start_with(false, Some(&pki));
    let url = format!(
        "rediss+sentinel://127.0.0.1:{}/{PRIMARY_NAME}",
        setup.sentinel_port
    );
    // Sentinel names 127.0.0.1, which the primary's certificate is for.
    let ca = pki.path("ca.pem");
    let server = tls_store_front_end(&url, &ca, &[]);
    let plain = server.plain.unwrap();
    // The first write opens the pool's first TLS connection through the
    // Sentinel; a busy machine can answer it with an honest X under the
    // store's time limit, so it is retried.
    assert!(
        server.answers_within(b"W0FAC0B1234", b"A0FAC0B1234", Duration::from_secs(10)),
        "{}\n{}",
        server.log_text(),
        setup.logs()
    );
    assert_eq!(transact(&mut connect(plain), b"R0FAC0B"), b"A0FAC0B1234");
    assert_eq!(
        redis_cli_tls(&pki, setup.primary_port, &["HGET", "wwep:0FAC", "0B"]),
        "1234"
    );
    // Another CA does not verify the primary Sentinel names.
    let other = Pki::new(KeyKind::EcP256);
    let mut cmd = server_cmd();
    cmd.args(["--no-tls", "--store", &url, "--store-ca"])
        .arg(other.path("ca.pem"));
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let error = the_error_line(&out.stderr, &text);
    assert!(
        error.contains("not trusted")
            && error.contains(&other.path("ca.pem").display().to_string()),
        "{text}"
    );
    // --store-ca without TLS to the data nodes is a mistake, said at once.
    let plain_url = setup.url();
    let mut cmd = server_cmd();
    cmd.args(["--no-tls", "--store", &plain_url, "--store-ca"])
        .arg(&ca);
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--store-ca is for TLS"),
        "{text}"
    );
}
