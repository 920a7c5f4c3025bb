//! `wwep bench` against a real `wwep-server` process on ephemeral loopback ports:
//! the open-loop schedule, abuse connections beside the load, exact
//! `--requests` counts, replies that are not WWEP, and bad values.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::reply_checks::FakeServer;

struct Run {
    out: Output,
    text: String,
    took: Duration,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).to_string()
    }

    fn succeeded(&self) -> &Self {
        assert_eq!(self.out.status.code(), Some(0), "{}", self.text);
        self
    }

    /// Every one of `words` is in the output.
    fn says(&self, words: &[&str]) {
        let out = self.stdout();
        for word in words {
            assert!(out.contains(word), "no {word:?} in {}", self.text);
        }
    }

    /// Exit 2 with one line on stderr that mentions `needle`, and no panic.
    fn fails_with(&self, needle: &str) {
        assert_eq!(self.out.status.code(), Some(2), "{}", self.text);
        let err = String::from_utf8_lossy(&self.out.stderr);
        assert!(err.contains(needle), "expected {needle:?}: {}", self.text);
        assert_eq!(err.lines().count(), 1, "{}", self.text);
        assert!(!err.contains("panicked"), "{}", self.text);
    }

    /// A number in the JSON report, found by its key (the first occurrence
    /// after `within`, when given, for nested objects).
    fn number(&self, within: Option<&str>, key: &str) -> f64 {
        let out = self.stdout();
        let scope = match within {
            Some(w) => out
                .split_once(&format!("\"{w}\":"))
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_else(|| panic!("no {w} in {}", self.text)),
            None => out,
        };
        scope
            .split_once(&format!("\"{key}\":"))
            .and_then(|(_, rest)| rest.split([',', '}']).next().and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| panic!("no number {key} in {}", self.text))
    }
}

/// Runs `wwep` (killed after 20 s) and keeps what it printed.
fn wwep(args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wwep"));
    cmd.args(args);
    let started = Instant::now();
    let out = run_with_input(&mut cmd, b"");
    let took = started.elapsed();
    let text = describe(&cmd, &out);
    Run { out, text, took }
}

/// `wwep --server ADDR GLOBAL bench ARGS` against `server`'s open port.
fn bench(server: &ServerProcess, global: &[&str], args: &[&str]) -> Run {
    let plain = server.plain.expect("plain listener").to_string();
    wwep(&[&["--server", &plain][..], global, &["bench"], args].concat())
}

#[test]
fn open_loop_keeps_to_its_schedule_and_says_how_well() {
    let server = ServerProcess::start(&["--no-tls"]);
    let run = bench(
        &server,
        &["--json"],
        &[
            "-c",
            "4",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0",
            "-q",
        ],
    );
    run.succeeded();
    assert_eq!(run.number(Some("schedule"), "rate"), 200.0, "{}", run.text);
    let scheduled = run.number(Some("schedule"), "scheduled");
    assert!((195.0..=205.0).contains(&scheduled), "{}", run.text);
    let completed = run.number(None, "completed");
    // An idle server keeps up with 200/s: what was due got done, give or take
    // the transactions in flight at either end.
    assert!(
        completed > 0.0 && (completed - scheduled).abs() <= 8.0,
        "{}",
        run.text
    );
    let late = run.number(Some("schedule"), "late");
    let missed = run.number(Some("schedule"), "missed");
    assert!(late <= completed && missed <= 8.0, "{}", run.text);

    let text = bench(
        &server,
        &[],
        &[
            "-c",
            "2",
            "--rate",
            "100",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "-q",
        ],
    );
    text.succeeded().says(&[
        "open loop at 100/s:",
        "late",
        "missed",
        "latency ms (from the scheduled time)",
    ]);
}

#[test]
fn idle_and_slow_connections_beside_the_load() {
    // The server gives up on silent connections after 300 ms, so during a
    // 1.5 s run every idle connection is closed and reopened several times.
    let server = ServerProcess::start(&["--no-tls", "--timeout-ms", "300"]);
    let run = bench(
        &server,
        &["--json"],
        &[
            "-c",
            "2",
            "--duration",
            "1.5",
            "--warmup",
            "0",
            "--idle",
            "4",
            "--slow",
            "2",
            "--slow-interval-ms",
            "200",
            "--idle-from",
            "127.0.0.2",
            "127.0.0.3",
            "-q",
        ],
    );
    run.succeeded();
    assert!(run.number(None, "completed") > 0.0, "{}", run.text);
    assert!(run.stdout().contains("\"errors\":{}"), "{}", run.text);
    let idle_opened = run.number(Some("idle"), "opened");
    let idle_closed = run.number(Some("idle"), "closed_by_server");
    assert!(idle_opened >= 4.0, "{}", run.text);
    assert!(
        idle_closed >= 4.0 && idle_closed <= idle_opened,
        "{}",
        run.text
    );
    let slow_opened = run.number(Some("slow"), "opened");
    let slow_closed = run.number(Some("slow"), "closed_by_server");
    // A byte every 200 ms is slower than the server's 100 ms gap: each slow
    // connection is judged on what it has, answered and closed.
    assert!(slow_opened >= 2.0 && slow_closed >= 2.0, "{}", run.text);
    assert_eq!(
        run.number(Some("idle"), "connect_failed"),
        0.0,
        "{}",
        run.text
    );
    // Stopping does not wait out any timeout.
    assert!(
        run.took < Duration::from_secs(6),
        "took {:?}: {}",
        run.took,
        run.text
    );

    let text = bench(
        &server,
        &[],
        &[
            "-c",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--idle",
            "2",
            "-q",
        ],
    );
    text.succeeded()
        .says(&["abuse idle: ", "closed by the server"]);
    assert!(!text.stdout().contains("abuse slow"), "{}", text.text);
}

#[test]
fn slow_tls_client_hellos() {
    let pki = Pki::new(KeyKind::EcP256);
    let server = ServerProcess::with_pki(&pki, &["--no-plain", "--timeout-ms", "300"]);
    let ca = pki.path("ca.pem");
    let run = wwep(&[
        "--server",
        &format!("localhost:{}", server.tls.expect("tls listener").port()),
        "--tls",
        "--ca",
        ca.to_str().unwrap(),
        "--json",
        "bench",
        "-c",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--slow",
        "2",
        "--slow-interval-ms",
        "100",
        "-q",
    ]);
    run.succeeded();
    // Whether the server cuts a trickled handshake short is the server's
    // business; the bench holds the connections, counts them and stops on time.
    assert!(run.number(Some("slow"), "opened") >= 2.0, "{}", run.text);
    assert!(run.number(None, "completed") > 0.0, "{}", run.text);
    assert!(
        run.took < Duration::from_secs(6),
        "took {:?}: {}",
        run.took,
        run.text
    );
}

#[test]
fn requests_are_counted_exactly_and_timed_to_the_last_of_them() {
    let server = ServerProcess::start(&["--no-tls"]);
    let json = |args: &[&str]| {
        let base = ["--warmup", "0", "-q"];
        let run = bench(&server, &["--json"], &[args, &base[..]].concat());
        run.succeeded();
        run
    };
    // Many workers, one transaction: exactly one is counted, however many
    // were in flight when it completed.
    let one = json(&["-c", "64", "--requests", "1"]);
    assert_eq!(one.number(None, "completed"), 1.0, "{}", one.text);
    assert_eq!(one.number(None, "requested"), 1.0, "{}", one.text);

    let steady = json(&["-c", "8", "--duration", "1"]);
    let steady_rate = steady.number(None, "per_second");
    assert!(steady_rate > 0.0, "{}", steady.text);
    // The clock stops at the 100th completion, so the rate is the server's,
    // not 100 over however long the bench took to notice. A short run is at
    // the mercy of the scheduler on a busy machine: the best of three.
    let mut best = 0.0f64;
    for _ in 0..3 {
        let run = json(&["-c", "8", "--requests", "100"]);
        assert_eq!(run.number(None, "completed"), 100.0, "{}", run.text);
        let seconds = run.number(None, "seconds");
        assert!(
            seconds <= run.took.as_secs_f64(),
            "{seconds} s reported, {:?} taken: {}",
            run.took,
            run.text
        );
        best = best.max(run.number(None, "per_second"));
    }
    assert!(
        best >= steady_rate / 5.0,
        "100 requests at best {best}/s, {steady_rate}/s over a second"
    );
}

/// The red team's server: whatever it is sent, it sends back.
fn echo(message: &[u8]) -> Vec<u8> {
    message.to_vec()
}

#[test]
fn replies_that_are_not_wwep_complete_nothing() {
    let fake = FakeServer::start(echo);
    let args = |extra: &[&str]| {
        let base = ["--server", fake.addr.as_str(), "--json", "bench"];
        wwep(&[&base[..], &["-c", "2", "--warmup", "0", "-q"], extra].concat())
    };
    let run = args(&["--duration", "0.3"]);
    run.fails_with("no transaction completed");
    run.fails_with("bad replies");
    assert_eq!(run.number(None, "completed"), 0.0, "{}", run.text);
    assert_eq!(run.number(None, "per_second"), 0.0, "{}", run.text);
    assert_eq!(run.number(None, "max_us"), 0.0, "{}", run.text);
    assert!(run.number(None, "bad_replies") > 0.0, "{}", run.text);
    assert_eq!(run.number(None, "mismatched"), 0.0, "{}", run.text);

    // --requests never reached: --duration bounds the wait.
    let bounded = args(&["--requests", "10", "--duration", "0.3"]);
    bounded.fails_with("no transaction completed");
    assert_eq!(bounded.number(None, "completed"), 0.0, "{}", bounded.text);
    assert_eq!(bounded.number(None, "requested"), 10.0, "{}", bounded.text);
    assert!(
        bounded.number(None, "bad_replies") > 0.0,
        "{}",
        bounded.text
    );
    assert!(
        bounded.took < Duration::from_secs(6),
        "took {:?}: {}",
        bounded.took,
        bounded.text
    );

    let text = wwep(&[
        "--server",
        fake.addr.as_str(),
        "bench",
        "-c",
        "1",
        "--requests",
        "5",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "-q",
    ]);
    text.fails_with("no transaction completed");
    text.says(&[
        "0 transactions in",
        "--duration ran out before the 5 transactions asked for completed",
        "bad replies (not WWEP, not completed): ",
        "writes refused (X, counted as completed): 0",
    ]);
}

#[test]
fn bad_values_are_one_line_and_exit_2() {
    // Checked before any connection is made: no server needed.
    for (args, needle) in [
        (&["bench", "--rate", "0"][..], "--rate"),
        (&["bench", "--rate", "fast"], "--rate"),
        (&["bench", "--rate", "NaN"], "--rate"),
        (&["bench", "-c", "0"], "--concurrency"),
        (&["bench", "--requests", "0"], "--requests"),
        (&["bench", "--duration", "-1"], "--duration"),
        (&["bench", "--warmup", "x"], "--warmup"),
        (&["bench", "--mix", "60/60"], "add up to 100"),
        (&["bench", "--idle", "-3"], "--idle"),
        (
            &["bench", "--idle", "1", "--idle-from", "10.0.0.1"],
            "not a loopback address",
        ),
        (
            &["bench", "--source-ip", "192.0.2.1"],
            "not a loopback address",
        ),
        (
            &["bench", "--slow", "1", "--slow-interval-ms", "0"],
            "--slow-interval-ms",
        ),
        (&["bench", "--idle", "20000"], "--idle"),
        (&["bench", "--idle", "5000", "--slow", "5001"], "at most"),
    ] {
        wwep(args).fails_with(needle);
    }
}

#[test]
fn every_numeric_flag_names_its_range() {
    // Checked before any connection is made: no server needed. Each flag's
    // lowest and highest bad value (and a word) is one line naming the flag
    // and what it takes.
    let cases: [(&str, &[&str], &str); 10] = [
        ("--concurrency", &["0", "10001", "x"], "from 1 to 10000"),
        (
            "--duration",
            &["0", "1000001", "-1"],
            "more than 0 and at most 1000000",
        ),
        ("--requests", &["0", "-1", "1.5"], "from 1 to"),
        ("--warmup", &["-1", "1000001", "x"], "from 0 to 1000000"),
        (
            "--rate",
            &["0", "0.0001", "10000001"],
            "from 0.001 to 10000000",
        ),
        ("--devices", &["0", "65537", "-1"], "from 1 to 65536"),
        ("--idle", &["-1", "10001"], "from 0 to 10000"),
        ("--slow", &["-1", "10001"], "from 0 to 10000"),
        ("--slow-interval-ms", &["0", "3600001"], "from 1 to 3600000"),
        ("--timeout-ms", &["0", "3600001"], "from 1 to 3600000"),
    ];
    for (flag, values, range) in cases {
        for value in values {
            let run = wwep(&["bench", flag, value]);
            run.fails_with(&format!("{flag} <"));
            run.fails_with(range);
        }
    }
}
