//! A fleet under partitions, in Linux network namespaces: Redis primary r1
//! (`appendfsync always`) and replica r2, three Sentinels (quorum 2), two
//! front ends `--store redis+sentinel://…`, and writers, each in its own
//! namespace on one bridge. A partition is r1's link taken down; a heal is the
//! link up. Every scenario asserts that no acknowledged write is lost and that
//! every front end answers an `A` by itself after the heal, and prints the
//! longest time without an `A`.
//!
//! Root only (namespaces); skipped otherwise. The writers are threads of this
//! test that enter the client namespace with `setns`, so their sockets live
//! there and reach the front ends across the bridge. `WWEP_FLEET_LONG=1`
//! makes every scenario run longer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const WWEP_PORT: u16 = 7000;
const PRIMARY: &str = "fleet";

/// The nodes, in order: their index is the last octet minus 10.
const NODES: [&str; 8] = ["r1", "r2", "s1", "s2", "s3", "f1", "f2", "cl"];

/// Every process this test starts, killed by PID, and every namespace it made,
/// deleted, on drop (also on a panic).
struct Fleet {
    prefix: String,
    subnet: u8,
    dir: PathBuf,
    procs: Mutex<Vec<(String, Child)>>,
}

fn ip(args: &[&str]) -> bool {
    let mut quiet = Command::new("ip");
    quiet.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    quiet.status().is_ok_and(|s| s.success())
}

fn must_ip(args: &[&str]) {
    assert!(ip(args), "ip {}", args.join(" "));
}

/// Deletes namespaces left by an earlier run of this file that did not end
/// (their names start with `wfp`).
fn clean_leftovers() {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with("wfp") {
            let namespace = format!("/run/netns/{name}");
            if older_than(Path::new(&namespace), Duration::from_secs(600)) {
                ip(&["netns", "del", name]);
            }
        }
    }
}

fn can_run() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        skip("network namespaces need root");
        return false;
    }
    have_tool("ip") && have_tool("redis-server") && have_tool("redis-cli")
}

impl Fleet {
    fn ns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    fn addr(&self, node: &str) -> String {
        let i = NODES.iter().position(|n| *n == node).unwrap();
        format!("10.77.{}.{}", self.subnet, 11 + i)
    }

    fn new() -> Fleet {
        clean_leftovers();
        static RUN: AtomicU32 = AtomicU32::new(0);
        let seed = std::process::id()
            ^ (Instant::now().elapsed().subsec_nanos())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        let n = RUN.fetch_add(1, Ordering::SeqCst);
        let tag = (seed.wrapping_add(n * 7919)) % 0xfff;
        let prefix = format!("wfp{tag:03x}");
        let subnet = ((seed / 7 + n * 37) % 250 + 1) as u8;
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fleet = Fleet {
            prefix,
            subnet,
            dir,
            procs: Mutex::new(Vec::new()),
        };
        let br = fleet.ns("br");
        must_ip(&["netns", "add", &br]);
        must_ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        must_ip(&["-n", &br, "link", "set", "br0", "up"]);
        for (i, node) in NODES.iter().enumerate() {
            let ns = fleet.ns(node);
            must_ip(&["netns", "add", &ns]);
            let here = format!("{}a{i}", fleet.prefix);
            let there = format!("{}b{i}", fleet.prefix);
            must_ip(&[
                "-n", &br, "link", "add", &there, "type", "veth", "peer", "name", &here, "netns",
                &ns,
            ]);
            must_ip(&["-n", &br, "link", "set", &there, "master", "br0"]);
            must_ip(&["-n", &br, "link", "set", &there, "up"]);
            must_ip(&["-n", &ns, "link", "set", &here, "name", "eth0"]);
            let cidr = format!("{}/24", fleet.addr(node));
            must_ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            must_ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            must_ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        fleet
    }

    fn spawn(&self, node: &str, name: &str, program: &str, args: &[String]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node), program])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.procs.lock().unwrap().push((name.to_string(), child));
    }

    fn kill(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(pos) = procs.iter().position(|(n, _)| n == name) {
            let (_, mut child) = procs.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn redis_cli(&self, from: &str, host: &str, port: u16, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(from), "redis-cli", "-h", host])
            .args(["-p", &port.to_string()])
            .args(args)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    fn start_redis(&self) {
        for node in ["r1", "r2"] {
            let own = self.dir.join(node);
            std::fs::create_dir_all(&own).unwrap();
            let mut args: Vec<String> = [
                "--bind",
                &self.addr(node),
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--protected-mode",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.push("--dir".into());
            args.push(own.display().to_string());
            if node == "r2" {
                args.push("--replicaof".into());
                args.push(self.addr("r1"));
                args.push("6379".into());
            }
            self.spawn(node, node, "redis-server", &args);
        }
        let r2 = self.addr("r2");
        assert!(
            patiently(Duration::from_secs(20), || {
                self.redis_cli("r2", &r2, 6379, &["INFO", "replication"])
                    .contains("master_link_status:up")
            }),
            "r2 did not replicate r1"
        );
        for s in ["s1", "s2", "s3"] {
            let own = self.dir.join(s);
            std::fs::create_dir_all(&own).unwrap();
            let conf = own.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "bind {}\nport 26379\nprotected-mode no\ndir {}\n\
                     sentinel monitor {PRIMARY} {} 6379 2\n\
                     sentinel down-after-milliseconds {PRIMARY} 1000\n\
                     sentinel failover-timeout {PRIMARY} 5000\n",
                    self.addr(s),
                    own.display(),
                    self.addr("r1")
                ),
            )
            .unwrap();
            self.spawn(
                s,
                s,
                "redis-server",
                &[conf.display().to_string(), "--sentinel".into()],
            );
        }
        assert!(
            patiently(Duration::from_secs(30), || {
                ["s1", "s2", "s3"].iter().all(|s| {
                    let info = self.redis_cli(
                        "cl",
                        &self.addr(s),
                        26379,
                        &["SENTINEL", "master", PRIMARY],
                    );
                    info.contains("num-other-sentinels\n2") && info.contains("num-slaves\n1")
                })
            }),
            "the Sentinels did not find each other and the replica"
        );
    }

    fn sentinel_url(&self) -> String {
        let hosts: Vec<String> = ["s1", "s2", "s3"]
            .iter()
            .map(|s| format!("{}:26379", self.addr(s)))
            .collect();
        format!("redis+sentinel://{}/{PRIMARY}", hosts.join(","))
    }

    fn start_front_end(&self, node: &str, wait_replicas: u32) {
        let wait = wait_replicas.to_string();
        let args: Vec<String> = [
            "--bind",
            &self.addr(node),
            "--plain-port",
            &WWEP_PORT.to_string(),
            "--no-tls",
            "--store",
            &self.sentinel_url(),
            "--timeout-ms",
            "2000",
            "--store-wait-replicas",
            &wait,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.spawn(node, node, env!("CARGO_BIN_EXE_wwep-server"), &args);
    }

    fn front_end(&self, node: &str) -> SocketAddr {
        format!("{}:{WWEP_PORT}", self.addr(node)).parse().unwrap()
    }

    fn primary(&self) -> String {
        self.redis_cli(
            "cl",
            &self.addr("s1"),
            26379,
            &["SENTINEL", "get-master-addr-by-name", PRIMARY],
        )
    }

    fn link(&self, node: &str, up: bool) {
        must_ip(&[
            "-n",
            &self.ns(node),
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["r1", "r2", "s1", "f1", "f2"] {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!(
                "--- {name} ---\n{}\n",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, mut child) in self.procs.lock().unwrap().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in NODES.iter().chain(["br"].iter()) {
            ip(&["netns", "del", &self.ns(node)]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Moves the calling thread into the named network namespace.
fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid fd of a network namespace; it changes only the
    // calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}");
}

/// One request on a new connection; `None` when there is no answer.
fn ask(addr: SocketAddr, request: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.trim().to_string())
}

/// The last acknowledged value of one register, its writes serialised.
struct Register {
    address: u32,
    last_a: Mutex<Written>,
}

/// What was written to one register: its last acknowledged value, and the
/// values tried after it that got `X` or no answer. Such a write may still
/// have been applied (an `X` for an unconfirmed replica, a reply lost in the
/// cut), so reading one of them back loses nothing that was acknowledged.
#[derive(Default)]
struct Written {
    acknowledged: Option<u16>,
    tried_since: Vec<u16>,
}

#[derive(Default)]
struct Tally {
    acknowledged: u64,
    refused: u64,
    /// Per front end: the time of its last `A`, and its longest gap.
    last_a: [Option<Instant>; 2],
    longest: [Duration; 2],
    /// Per front end: when each `A` arrived, to measure how soon after
    /// Sentinel's switch each one answered again.
    answered_at: [Vec<Instant>; 2],
}

impl Tally {
    /// How long after `switch` front end `fe` answered its first `A`.
    fn first_a_after(&self, fe: usize, switch: Instant) -> Option<Duration> {
        self.answered_at[fe]
            .iter()
            .find(|&&at| at >= switch)
            .map(|&at| at - switch)
    }
}

struct Plan {
    /// Registers shared by all writers (each written many times).
    registers: usize,
    writers_per_front_end: usize,
    run: Duration,
    /// When front end 2 takes requests (from, until); None = always.
    f2_active: Option<(Duration, Duration)>,
    pause: Duration,
}

impl Plan {
    /// Three writers per front end on `registers` registers, both front ends
    /// taking requests throughout, for `seconds` (`long_seconds` under
    /// [`long`]), pausing `pause_ms` between writes.
    fn steady(registers: usize, seconds: (u64, u64), pause_ms: u64) -> Plan {
        let (short, long_seconds) = seconds;
        Plan {
            registers,
            writers_per_front_end: 3,
            run: Duration::from_secs(if long() { long_seconds } else { short }),
            f2_active: None,
            pause: Duration::from_millis(pause_ms),
        }
    }
}

struct Outcome {
    tally: Tally,
    lost: Vec<(u32, u16, String)>,
}

fn run_writers(
    fleet: &Arc<Fleet>,
    plan: &Plan,
    during: impl FnOnce(&Fleet, Instant, &Arc<Mutex<Tally>>),
) -> Outcome {
    let registers: Arc<Vec<Register>> = Arc::new(
        (0..plan.registers)
            .map(|i| Register {
                address: 0x0A0000 + i as u32,
                last_a: Mutex::new(Written::default()),
            })
            .collect(),
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU32::new(1));
    let start = Instant::now();
    let mut threads = Vec::new();
    for fe in 0..2 {
        for w in 0..plan.writers_per_front_end {
            let (fleet, registers, tally, stop, counter) = (
                Arc::clone(fleet),
                Arc::clone(&registers),
                Arc::clone(&tally),
                Arc::clone(&stop),
                Arc::clone(&counter),
            );
            let active = if fe == 1 { plan.f2_active } else { None };
            let pause = plan.pause;
            threads.push(std::thread::spawn(move || {
                enter(&fleet.ns("cl"));
                let addr = fleet.front_end(if fe == 0 { "f1" } else { "f2" });
                let mut k = w + fe * 7;
                while !stop.load(Ordering::SeqCst) {
                    let now = start.elapsed();
                    if let Some((from, until)) = active
                        && now >= from
                        && now < until
                    {
                        // Idle time is not an outage.
                        tally.lock().unwrap().last_a[fe] = None;
                        std::thread::sleep(pause);
                        continue;
                    }
                    let reg = &registers[k % registers.len()];
                    k += 1;
                    let value = (counter.fetch_add(1, Ordering::SeqCst) % 0xffff) as u16;
                    let mut last = reg.last_a.lock().unwrap();
                    let request = format!("W{:06X}{value:04X}", reg.address);
                    let answer = ask(addr, &request);
                    let at = Instant::now();
                    let mut t = tally.lock().unwrap();
                    if answer.as_deref() == Some(&format!("A{:06X}{value:04X}", reg.address)[..]) {
                        *last = Written {
                            acknowledged: Some(value),
                            tried_since: Vec::new(),
                        };
                        t.acknowledged += 1;
                        if let Some(prev) = t.last_a[fe] {
                            t.longest[fe] = t.longest[fe].max(at - prev);
                        }
                        t.last_a[fe] = Some(at);
                        t.answered_at[fe].push(at);
                    } else {
                        last.tried_since.push(value);
                        t.refused += 1;
                    }
                    drop(t);
                    drop(last);
                    std::thread::sleep(pause);
                }
            }));
        }
    }
    during(fleet, start, &tally);
    while start.elapsed() < plan.run {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    // Read every register back through a front end that answers.
    let lost = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(&fleet.ns("cl"));
                let mut lost = Vec::new();
                for reg in registers.iter() {
                    let written = reg.last_a.lock().unwrap();
                    let Some(want) = written.acknowledged else {
                        continue;
                    };
                    let later: Vec<String> = written
                        .tried_since
                        .iter()
                        .map(|v| format!("A{:06X}{v:04X}", reg.address))
                        .collect();
                    drop(written);
                    let expect = format!("A{:06X}{want:04X}", reg.address);
                    let mut got = String::new();
                    let ok = patiently(Duration::from_secs(20), || {
                        ["f1", "f2"].iter().any(|fe| {
                            match ask(fleet.front_end(fe), &format!("R{:06X}", reg.address)) {
                                Some(a) if a.starts_with('A') => {
                                    got = a;
                                    true
                                }
                                _ => false,
                            }
                        })
                    });
                    if !ok || (got != expect && !later.contains(&got)) {
                        lost.push((reg.address, want, got));
                    }
                }
                lost
            })
            .join()
            .unwrap()
    });
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    Outcome { tally, lost }
}

fn long() -> bool {
    std::env::var("WWEP_FLEET_LONG").as_deref() == Ok("1")
}

/// Every named front end answers an `A` to a write of its own within `limit`.
fn serves_again(fleet: &Arc<Fleet>, nodes: &[&str], limit: Duration) -> Vec<String> {
    let fleet = Arc::clone(fleet);
    let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        enter(&fleet.ns("cl"));
        nodes
            .into_iter()
            .filter(|fe| {
                !patiently(limit, || {
                    ask(fleet.front_end(fe), "W0B00010001").is_some_and(|a| a.starts_with('A'))
                })
            })
            .collect()
    })
    .join()
    .unwrap()
}

fn report(name: &str, fleet: &Fleet, out: &Outcome, switched: bool) {
    eprintln!(
        "fleet {name}: acknowledged {}, X or no answer {}, lost {}, longest without an A: f1 {:?}, f2 {:?}, failover {}",
        out.tally.acknowledged,
        out.tally.refused,
        out.lost.len(),
        out.tally.longest[0],
        out.tally.longest[1],
        if switched { "yes" } else { "no" }
    );
    assert!(
        out.lost.is_empty(),
        "{name}: {} acknowledged writes lost (address, acknowledged, read): {:?}\n{}",
        out.lost.len(),
        &out.lost[..out.lost.len().min(10)],
        fleet.logs()
    );
}

fn setup(wait_replicas: u32) -> Option<Arc<Fleet>> {
    if !can_run() {
        return None;
    }
    let fleet = Arc::new(Fleet::new());
    fleet.start_redis();
    fleet.start_front_end("f1", wait_replicas);
    fleet.start_front_end("f2", wait_replicas);
    let bad = serves_again(&fleet, &["f1", "f2"], Duration::from_secs(20));
    assert!(
        bad.is_empty(),
        "front ends did not start: {bad:?}\n{}",
        fleet.logs()
    );
    Some(fleet)
}

/// A cut of r1 long enough for Sentinel to fail over, then the heal. With
/// `wait_replicas` 1 and one replica, writes are refused (X) from the cut
/// until r1 has rejoined as r2's replica: that is the promise, not a fault.
fn cut_and_heal(f2_idle: bool, wait_replicas: u32, name: &str) {
    let Some(fleet) = setup(wait_replicas) else {
        return;
    };
    let scale = if long() { 3 } else { 1 };
    let cut_at = Duration::from_secs(4);
    let cut_for = Duration::from_secs(9);
    // A replica must rejoin before writes are confirmed again.
    let after = Duration::from_secs(if wait_replicas > 0 { 20 } else { 6 } * scale);
    let plan = Plan {
        registers: 32,
        writers_per_front_end: 3,
        run: cut_at + cut_for + after,
        f2_active: f2_idle.then_some((cut_at - Duration::from_secs(1), cut_at + cut_for)),
        pause: Duration::from_millis(80),
    };
    let r1 = fleet.addr("r1");
    // The last time r1 was still named: Sentinel's switch came after it, so
    // a gap measured from here is never shorter than the true one.
    let mut switch_at: Option<Instant> = None;
    let out = run_writers(&fleet, &plan, |fleet, start, _| {
        while start.elapsed() < cut_at {
            std::thread::sleep(Duration::from_millis(50));
        }
        fleet.link("r1", false);
        let mut still_r1 = Instant::now();
        let switched = patiently(cut_for, || {
            let asked = Instant::now();
            let primary = fleet.primary();
            let moved = !primary.starts_with(&r1) && !primary.is_empty();
            if !moved {
                still_r1 = asked;
            }
            moved
        });
        if switched {
            switch_at = Some(still_r1);
        }
        while start.elapsed() < cut_at + cut_for {
            std::thread::sleep(Duration::from_millis(50));
        }
        fleet.link("r1", true);
    });
    let limit = if wait_replicas > 0 {
        after
    } else {
        Duration::from_secs(10)
    };
    let bad = serves_again(&fleet, &["f1", "f2"], limit);
    report(name, &fleet, &out, switch_at.is_some());
    let Some(switch_at) = switch_at else {
        panic!("{name}: Sentinel did not fail over during the cut");
    };
    assert!(
        bad.is_empty(),
        "{name}: {bad:?} did not answer A after the heal\n{}",
        fleet.logs()
    );
    if wait_replicas == 0 {
        // Every front end taking requests at the switch answers within 1 s.
        let busy: &[usize] = if f2_idle { &[0] } else { &[0, 1] };
        for &fe in busy {
            let first = out.tally.first_a_after(fe, switch_at);
            eprintln!(
                "fleet {name}: f{} answered its first A {first:?} after Sentinel's switch",
                fe + 1
            );
            assert!(
                first.is_some_and(|d| d <= Duration::from_secs(1)),
                "{name}: f{} answered its first A {first:?} after Sentinel's switch (more than 1 s)\n{}",
                fe + 1,
                fleet.logs()
            );
        }
    }
}

/// One test for each case of [`cut_and_heal`]: its name, then whether the
/// second front end idles, the replicas to wait for, and the case's label.
macro_rules! cut_and_heal_tests {
    ($($name:ident: $idle:expr, $replicas:expr, $label:expr;)*) => {$(
        #[test]
        fn $name() {
            cut_and_heal($idle, $replicas, $label);
        }
    )*};
}

cut_and_heal_tests! {
    a_primary_cut_off_for_nine_seconds_loses_no_acknowledged_write: false, 0, "cut 9 s";
    a_front_end_idle_through_the_partition_loses_no_acknowledged_write: true, 0, "idle front end";
    waiting_for_a_replica_through_a_partition_loses_no_acknowledged_write:
        false, 1, "cut 9 s, wait-replicas 1";
    waiting_for_a_replica_with_an_idle_front_end_loses_no_acknowledged_write:
        true, 1, "idle front end, wait-replicas 1";
}

#[test]
fn five_short_cuts_without_failover_lose_no_acknowledged_write() {
    let Some(fleet) = setup(0) else { return };
    let plan = Plan::steady(8, (14, 30), 60);
    let out = run_writers(&fleet, &plan, |fleet, start, _| {
        for i in 0..5u64 {
            while start.elapsed() < Duration::from_millis(2000 + i * 2000) {
                std::thread::sleep(Duration::from_millis(20));
            }
            fleet.link("r1", false);
            std::thread::sleep(Duration::from_millis(800));
            fleet.link("r1", true);
        }
    });
    let bad = serves_again(&fleet, &["f1", "f2"], Duration::from_secs(10));
    report("five short cuts", &fleet, &out, false);
    assert!(
        bad.is_empty(),
        "{bad:?} did not answer A after the cuts\n{}",
        fleet.logs()
    );
}

#[test]
fn kill_9_of_one_front_end_loses_no_acknowledged_write() {
    let Some(fleet) = setup(0) else { return };
    let plan = Plan::steady(32, (16, 40), 80);
    let r1 = fleet.addr("r1");
    let mut switched = false;
    let out = run_writers(&fleet, &plan, |fleet, start, _| {
        while start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
        }
        fleet.link("r1", false);
        while start.elapsed() < Duration::from_secs(6) {
            std::thread::sleep(Duration::from_millis(50));
        }
        fleet.kill("f2");
        switched = patiently(Duration::from_secs(8), || {
            !fleet.primary().starts_with(&r1) && !fleet.primary().is_empty()
        });
        fleet.link("r1", true);
    });
    let bad = serves_again(&fleet, &["f1"], Duration::from_secs(10));
    report("kill -9 of a front end", &fleet, &out, switched);
    assert!(
        bad.is_empty(),
        "f1 did not answer A after the heal\n{}",
        fleet.logs()
    );
}
