//! The Debian package under a running systemd: a minimal Debian (debootstrap
//! `--variant=minbase` plus systemd, the release this machine runs) booted with
//! `systemd-nspawn --boot`, the package installed in it, and the service driven
//! as an operator does. The checks run inside, in tests/package/systemd/checks.sh, by a
//! one-shot unit that writes one line per check to a file read here and then
//! powers the container off. See docs/operations.md ("The service under
//! systemd, tested").
//!
//! The root is made once and kept in target/systemd-test/ (built in a temporary
//! directory and renamed, so a half-made root is never used); each run boots it
//! with `--volatile=overlay`, so whatever the run writes goes to a tmpfs and the
//! cached root stays as debootstrap made it. Needs root, systemd-nspawn
//! (systemd-container), debootstrap, dpkg-dev and, the first time, Debian's
//! mirror. WWEP_SYSTEMD_DEB=FILE checks that package (e.g. `make deb`'s) instead
//! of one made from this build's binaries.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use openssl::hash::MessageDigest;
use wwep::store::journal::{MAGIC, encode_record};

/// Packages besides minbase: systemd as PID 1 (no dbus: systemctl and
/// systemd-analyze talk to it directly, as root), openssl for a TLS client
/// that shows the served certificate (libssl3 is what the package needs anyway).
const INCLUDE: &str = "systemd,systemd-sysv,openssl";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Records in the data file the service starts with: its replay is what
/// `systemctl enable --now` must wait for (Type=notify).
const PRELOAD: u32 = 1_000_000;
/// The checks in the order checks.sh runs them; each must say `ok`.
const CHECKS: [&str; 13] = [
    "install",
    "notify-ready",
    "tls-port",
    "accept-threads-batch",
    "reload-rotated",
    "reload-expired-kept",
    "kill9-restart-data-kept",
    "stop-under-load",
    "stop-acknowledged-kept",
    "journal-transactions",
    "security-exposure",
    "upgrade-restarts-keeps-data",
    "purge-leaves-nothing",
];
const DEBOOTSTRAP_LIMIT: Duration = Duration::from_secs(20 * 60);
const CONTAINER_LIMIT: Duration = Duration::from_secs(6 * 60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A child in its own process group, stopped by its PID (and that group) when
/// dropped while still running: SIGTERM (systemd-nspawn then powers the
/// container off), SIGKILL 10 s later.
struct Bounded {
    child: Child,
    what: &'static str,
}

impl Bounded {
    fn spawn(cmd: &mut Command, what: &'static str) -> Bounded {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Bounded { child, what }
    }

    /// Waits for the exit within `limit`; None when it is still running.
    fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child and the group it leads.
        unsafe {
            libc::kill(pid, signal);
            libc::kill(-pid, signal);
        }
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            eprintln!("stopping {} (PID {})", self.what, self.child.id());
            self.signal(libc::SIGTERM);
            if self.wait_within(Duration::from_secs(10)).is_none() {
                self.signal(libc::SIGKILL);
                let _ = self.child.wait();
            }
        }
    }
}

/// The Debian release to boot: this machine's, as the package is built
/// against its libraries. None elsewhere than on Debian.
fn debian_suite() -> Option<String> {
    let release = std::fs::read_to_string("/etc/os-release").ok()?;
    let field = |name: &str| {
        release.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim_matches('"').to_string())
        })
    };
    (field("ID")? == "debian").then_some(())?;
    field("VERSION_CODENAME").filter(|c| !c.is_empty())
}

/// Whether this machine can run the test; if not, says why (a skip, or a
/// failure under WWEP_REQUIRE_TOOLS=1).
fn can_run() -> Option<String> {
    let required = std::env::var("WWEP_REQUIRE_TOOLS").as_deref() == Ok("1");
    let refuse = |why: &str| {
        assert!(!required, "{why} (WWEP_REQUIRE_TOOLS=1)");
        skip(why);
        None
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return refuse("booting a container with systemd-nspawn needs root");
    }
    let Some(suite) = debian_suite() else {
        return refuse("not a Debian machine: the package is built for this machine's Debian");
    };
    for tool in [
        "systemd-nspawn",
        "debootstrap",
        "dpkg-deb",
        "dpkg-shlibdeps",
    ] {
        if !have_tool(tool) {
            return None;
        }
    }
    Some(suite)
}

/// Removes what a run killed before it could clean up left in `dir`: its
/// temporary directories (`run.*`, `*.tmp.*`) older than an hour, longer than
/// any run or root build may take.
fn sweep_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("run.") || name.contains(".tmp.")) {
            continue;
        }
        if older_than(&entry.path(), Duration::from_secs(3600)) {
            eprintln!("removing {name}, left by an earlier run");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The minimal root for `suite`, made by debootstrap the first time.
fn cached_root(suite: &str) -> PathBuf {
    let dir = repo().join("target/systemd-test");
    std::fs::create_dir_all(&dir).unwrap();
    sweep_leftovers(&dir);
    // The name says what is in it: a change of INCLUDE makes a new root.
    let name = format!("{suite}-minbase+{}", INCLUDE.replace(',', "+"));
    let root = dir.join(&name);
    if root.is_dir() {
        return root;
    }
    let mirror = std::env::var("WWEP_DEBIAN_MIRROR").unwrap_or_else(|_| MIRROR.to_string());
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{name}.tmp."))
        .tempdir_in(&dir)
        .unwrap();
    let log_path = tmp.path().join("debootstrap.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    eprintln!("making the {suite} root with debootstrap from {mirror} (once; kept in {name})");
    let mut debootstrap = Bounded::spawn(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), suite])
            .arg(tmp.path().join("root"))
            .arg(&mirror)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
        "debootstrap",
    );
    let status = debootstrap.wait_within(DEBOOTSTRAP_LIMIT);
    let tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("debootstrap failed ({s}):\n{}", tail()),
        None => panic!(
            "debootstrap took more than {DEBOOTSTRAP_LIMIT:?}:\n{}",
            tail()
        ),
    }
    drop(debootstrap);
    // Another run may have finished first: its root is as good as ours.
    if let Err(e) = std::fs::rename(tmp.path().join("root"), &root) {
        assert!(
            root.is_dir(),
            "cannot keep the root as {}: {e}",
            root.display()
        );
    }
    eprintln!("root made in {:.0?}", started.elapsed());
    root
}

/// Runs a command to success; its stdout.
fn output(cmd: &mut Command) -> String {
    let out = run_with_input(cmd, b"");
    let text = describe(cmd, &out);
    assert!(out.status.success(), "{text}");
    String::from_utf8(out.stdout).unwrap()
}

/// The package to test and an upgrade of it: the same files with a higher
/// version, as a newer build would be.
fn packages(dir: &Path) -> (PathBuf, PathBuf, String) {
    let deb = match std::env::var_os("WWEP_SYSTEMD_DEB") {
        Some(deb) => PathBuf::from(deb),
        None => {
            let binaries = Path::new(env!("CARGO_BIN_EXE_wwep-server"))
                .parent()
                .unwrap();
            let printed = output(
                Command::new(repo().join("scripts/make-deb.sh"))
                    .arg("--binaries")
                    .arg(binaries)
                    .arg("--out")
                    .arg(dir.join("deb"))
                    .args(["--compression", "none"]),
            );
            PathBuf::from(printed.trim())
        }
    };
    let version = output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"));
    let upgrade_version = format!("{}+systemdtest1", version.trim());
    let tree = dir.join("upgrade-tree");
    output(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text = text.replace(
        &format!("\nVersion: {}\n", version.trim()),
        &format!("\nVersion: {upgrade_version}\n"),
    );
    assert!(text.contains(&upgrade_version), "{text}");
    std::fs::write(&control, text).unwrap();
    let upgrade = dir.join("wwep-upgrade.deb");
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Znone", "--build"])
            .arg(&tree)
            .arg(&upgrade),
    );
    std::fs::remove_dir_all(&tree).unwrap();
    (deb, upgrade, upgrade_version)
}

/// A certificate for localhost/127.0.0.1 and its key, as `NAME.pem` and
/// `NAME.key`, valid from `not_before` to `not_after` seconds from now.
fn certificate(dir: &Path, name: &str, not_before: i64, not_after: i64) {
    let issued = issue(
        &CertSpec {
            kind: KeyKind::EcP256,
            digest: MessageDigest::sha256(),
            not_before,
            not_after,
            ..CertSpec::server(name)
        },
        None,
    );
    std::fs::write(
        dir.join(format!("{name}.pem")),
        issued.cert.to_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        issued.key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
}

/// A data file of PRELOAD records: record i is device i/256, register i%256,
/// value i%65536.
fn data_file(path: &Path) {
    let mut bytes = MAGIC.to_vec();
    for i in 0..PRELOAD {
        bytes.extend(encode_record(((i >> 8) as u16, i as u8), i as u16));
    }
    std::fs::write(path, bytes).unwrap();
}

const CHECKS_UNIT: &str = "\
[Unit]
Description=wwep's checks under systemd (tests/package/systemd.rs)
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/bin/bash /wwep-test/checks.sh
TimeoutStartSec=300
StandardOutput=journal+console
";

fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last {lines} lines)\n{}",
        path.display(),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

#[test]
fn the_package_under_a_booted_systemd() {
    let Some(suite) = can_run() else {
        return;
    };
    let started = Instant::now();
    let root = cached_root(&suite);
    let prepared = Instant::now();

    let work = tempfile::Builder::new()
        .prefix("run.")
        .tempdir_in(repo().join("target/systemd-test"))
        .unwrap();
    let (input, out) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let (deb, upgrade, upgrade_version) = packages(work.path());
    std::fs::copy(&deb, input.join("wwep.deb")).unwrap();
    std::fs::rename(&upgrade, input.join("wwep-upgrade.deb")).unwrap();
    let day = 86400;
    certificate(&input, "first", -3600, 365 * day);
    certificate(&input, "second", -3600, 365 * day);
    certificate(&input, "expired", -3 * day, -day);
    data_file(&input.join("registers.wwep"));
    let mut settings = std::fs::File::create(input.join("settings")).unwrap();
    writeln!(
        settings,
        "PRELOAD={PRELOAD}\nUPGRADE_VERSION={upgrade_version}"
    )
    .unwrap();
    std::fs::write(input.join("wwep-checks.service"), CHECKS_UNIT).unwrap();

    let console = std::fs::File::create(work.path().join("console.log")).unwrap();
    let bind =
        |opt: &str, host: &Path, inside: &str| format!("--{opt}={}:{inside}", host.display());
    let booted = Instant::now();
    let mut container = Bounded::spawn(
        Command::new("systemd-nspawn")
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--quiet",
                "--console=pipe",
                "--private-network",
                "--volatile=overlay",
            ])
            .arg("--directory")
            .arg(&root)
            .arg(bind("bind-ro", &input, "/wwep-test/in"))
            .arg(bind("bind", &out, "/wwep-test/out"))
            .arg(bind(
                "bind-ro",
                &repo().join("tests/package/systemd/checks.sh"),
                "/wwep-test/checks.sh",
            ))
            .arg(bind(
                "bind-ro",
                &input.join("wwep-checks.service"),
                "/etc/systemd/system/wwep-checks.service",
            ))
            .arg("systemd.wants=wwep-checks.service")
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console),
        "systemd-nspawn",
    );
    let status = container.wait_within(CONTAINER_LIMIT);
    drop(container);
    let ran = booted.elapsed();

    let results = std::fs::read_to_string(out.join("results")).unwrap_or_default();
    let context = || {
        format!(
            "{}\n{}\n{}\n{}",
            tail_of(&out.join("checks.log"), 60),
            tail_of(&out.join("journal.txt"), 40),
            tail_of(&work.path().join("console.log"), 30),
            results
        )
    };
    assert!(
        status.is_some(),
        "the container ran longer than {CONTAINER_LIMIT:?}\n{}",
        context()
    );
    eprintln!(
        "root ready in {:.1?}, container ran {:.1?}, {} in all:\n{results}",
        prepared - started,
        ran,
        format_args!("{:.1?}", started.elapsed())
    );
    let failed: Vec<&str> = results.lines().filter(|l| l.starts_with("FAIL ")).collect();
    let missing: Vec<&str> = CHECKS
        .iter()
        .copied()
        .filter(|c| {
            !results
                .lines()
                .any(|l| l.strip_prefix("ok ").and_then(|r| r.split(' ').next()) == Some(*c))
        })
        .collect();
    assert!(
        failed.is_empty() && missing.is_empty() && results.lines().last() == Some("end"),
        "failed: {failed:#?}\nnot passed: {missing:?}\n{}",
        context()
    );
    assert!(
        status.unwrap().success(),
        "systemd-nspawn: {status:?}\n{}",
        context()
    );
}
