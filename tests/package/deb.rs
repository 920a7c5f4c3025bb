//! `make deb`: scripts/make-deb.sh builds the Debian package (here from the debug
//! binaries the tests already have, uncompressed, to keep it quick), and the
//! package holds what an operator expects: the binaries in /usr/bin, the unit
//! starting /usr/bin/wwep-server, the sysusers file, /etc/wwep/wwep.env as a
//! conffile, and maintainer scripts that touch systemd only where it runs and
//! never start the service on a first install. Installing and purging it for
//! real is done by .ci/run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo().join("scripts/make-deb.sh")
}

/// Whether the package can be built here; if not, the test is skipped.
fn can_build() -> bool {
    have_tool("dpkg-deb") && have_tool("dpkg-shlibdeps")
}

/// Runs a command to success and returns its stdout.
fn output(cmd: &mut Command) -> String {
    let out = run_with_input(cmd, b"");
    let text = describe(cmd, &out);
    assert!(out.status.success(), "{text}");
    String::from_utf8(out.stdout).unwrap()
}

/// The package built once for all tests here, and where its files (`root/`) and
/// control files (`control/`) were extracted.
struct Built {
    deb: PathBuf,
    root: PathBuf,
    control: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb-test");
        let _ = std::fs::remove_dir_all(&dir);
        let out = dir.join("out");
        let binaries = Path::new(env!("CARGO_BIN_EXE_wwep-server"))
            .parent()
            .unwrap();
        let stdout = output(
            Command::new(script())
                .arg("--binaries")
                .arg(binaries)
                .arg("--out")
                .arg(&out)
                .args(["--compression", "none"]),
        );
        let arch = output(Command::new("dpkg").arg("--print-architecture"));
        let deb = out.join(format!("wwep_{VERSION}_{}.deb", arch.trim()));
        assert_eq!(
            stdout.trim(),
            deb.to_str().unwrap(),
            "it prints the package's path"
        );
        let entries: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            entries.len(),
            1,
            "only the package is left behind: {entries:?}"
        );
        let (root, control) = (dir.join("root"), dir.join("control"));
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        output(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
        Built { deb, root, control }
    })
}

fn field(deb: &Path, name: &str) -> String {
    output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_package_is_named_and_described_as_debian_expects() {
    if !can_build() {
        return;
    }
    let deb = &built().deb;
    let arch = output(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field(deb, "Package"), "wwep");
    assert_eq!(
        field(deb, "Version"),
        VERSION,
        "the version is Cargo.toml's"
    );
    assert_eq!(field(deb, "Architecture"), arch.trim());
    assert!(
        field(deb, "Maintainer").ends_with('>'),
        "Maintainer: name <address>"
    );
    let depends = field(deb, "Depends");
    assert!(
        depends.contains("libc6 (>="),
        "Depends comes from the binaries' libraries: {depends}"
    );
    let size: u64 = field(deb, "Installed-Size").parse().unwrap();
    assert!(size > 1000, "Installed-Size in KiB: {size}");
    let info = output(Command::new("dpkg-deb").arg("-I").arg(deb));
    for part in ["conffiles", "postinst", "prerm", "postrm", "md5sums"] {
        assert!(
            info.contains(part),
            "no {part} in the control archive:\n{info}"
        );
    }
    assert_eq!(
        read(&built().control.join("conffiles")),
        "/etc/wwep/wwep.env\n",
        "the environment file survives upgrades and local edits"
    );
}

#[test]
fn the_package_holds_the_binaries_the_unit_the_user_and_the_environment_file() {
    if !can_build() {
        return;
    }
    let b = built();
    // `dpkg-deb -c`: mode, owner, size, date, time, path.
    let listing = output(Command::new("dpkg-deb").arg("-c").arg(&b.deb));
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() >= 6, "{line}");
        assert_eq!(cols[1], "root/root", "owned by root: {line}");
        if !cols[0].starts_with('d') {
            files.insert(cols[5].to_string(), cols[0].to_string());
        }
    }
    let expected = [
        ("./etc/wwep/wwep.env", "-rw-r--r--"),
        ("./usr/bin/wwep", "-rwxr-xr-x"),
        ("./usr/bin/wwep-server", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/wwep.service", "-rw-r--r--"),
        ("./usr/lib/sysusers.d/wwep.conf", "-rw-r--r--"),
        ("./usr/share/doc/wwep/changelog.gz", "-rw-r--r--"),
        ("./usr/share/doc/wwep/copyright", "-rw-r--r--"),
        ("./usr/share/man/man1/wwep-server.1.gz", "-rw-r--r--"),
        ("./usr/share/man/man1/wwep.1.gz", "-rw-r--r--"),
    ];
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(files, expected, "the package's files:\n{listing}");

    // The unit is dist/wwep.service but for where the server is.
    let unit = read(&b.root.join("usr/lib/systemd/system/wwep.service"));
    let source = read(&repo().join("dist/wwep.service"));
    assert!(
        unit.lines().any(|l| l == "ExecStart=/usr/bin/wwep-server"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    assert_eq!(
        unit,
        source.replace(
            "ExecStart=/usr/local/bin/wwep-server",
            "ExecStart=/usr/bin/wwep-server"
        )
    );
    assert!(unit.contains("User=wwep\n") && unit.contains("EnvironmentFile=-/etc/wwep/wwep.env\n"));
    assert_eq!(
        read(&b.root.join("usr/lib/sysusers.d/wwep.conf")),
        read(&repo().join("dist/wwep.sysusers"))
    );
    assert_eq!(
        read(&b.root.join("etc/wwep/wwep.env")),
        read(&repo().join("dist/wwep.env"))
    );

    // The packaged server runs and says its version; md5sums match the files.
    let version = output(Command::new(b.root.join("usr/bin/wwep-server")).arg("--version"));
    assert!(version.contains(VERSION), "{version}");
    output(
        Command::new("md5sum")
            .args(["--check", "--quiet"])
            .arg(b.control.join("md5sums"))
            .current_dir(&b.root),
    );
    for bin in ["wwep-server", "wwep"] {
        let page = output(
            Command::new("gzip")
                .arg("-dc")
                .arg(b.root.join(format!("usr/share/man/man1/{bin}.1.gz"))),
        );
        assert!(
            page.starts_with(&format!(".TH {} 1 ", bin.to_uppercase())) && page.contains("Usage: "),
            "{page}"
        );
    }
}

/// Whether the innermost block is a `case` (before or in one of its patterns).
fn in_case(guards: &[String]) -> bool {
    guards
        .last()
        .is_some_and(|g| g.starts_with("case ") || g.ends_with(')'))
}

/// Each command line of a shell script (comments, blank lines and `echo`s
/// left out) with the `if` conditions and `case` patterns it runs under.
fn commands_with_guards(script: &str) -> Vec<(String, Vec<String>)> {
    let mut guards: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in script.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with("echo ") {
            continue;
        }
        if line.starts_with("if ") {
            guards.push(line.to_string());
        } else if line.starts_with("elif ") || line == "else" {
            // The branch no longer runs under the `if`'s condition.
            guards.pop();
            guards.push(line.to_string());
        } else if line == "fi" {
            guards.pop();
        } else if line.starts_with("case ") {
            guards.push(line.to_string());
        } else if line == "esac" {
            if guards.last().is_some_and(|g| g.ends_with(')')) {
                guards.pop();
            }
            guards.pop();
        } else if in_case(&guards) && (line.ends_with(')') || line.ends_with(") ;;")) {
            // A pattern of the innermost case: replaces the previous one.
            if guards.last().is_some_and(|g| g.ends_with(')')) {
                guards.pop();
            }
            guards.push(line.trim_end_matches(" ;;").to_string());
        } else if line == ";;" && guards.last().is_some_and(|g| g.ends_with(')')) {
            guards.pop();
        }
        out.push((line.to_string(), guards.clone()));
    }
    out
}

/// The action given to `systemctl`, `deb-systemd-invoke` or
/// `deb-systemd-helper` on this line, if it calls one.
fn systemd_action(line: &str) -> Option<(String, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| ["systemctl", "deb-systemd-invoke", "deb-systemd-helper"].contains(w))?;
    let action = words[at + 1..].iter().find(|w| !w.starts_with('-'))?;
    Some((words[at].to_string(), action.to_string()))
}

#[test]
fn maintainer_scripts_touch_systemd_only_where_it_runs_and_never_start_on_install() {
    if !can_build() {
        return;
    }
    let control = &built().control;
    let guarded = |guards: &[String]| {
        guards
            .iter()
            .any(|g| g.contains("[ -d /run/systemd/system ]"))
    };
    // What each script may ask of systemd: nothing that enables or starts.
    let allowed: [(&str, &[&str]); 3] = [
        ("postinst", &["daemon-reload", "try-restart"]),
        ("prerm", &["stop"]),
        ("postrm", &["daemon-reload", "purge"]),
    ];
    for (name, actions) in allowed {
        let path = control.join(name);
        let text = read(&path);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{name} is executable");
        assert!(
            text.starts_with("#!/bin/sh\n") && text.contains("\nset -e\n"),
            "{name}"
        );
        output(Command::new("sh").arg("-n").arg(&path));
        let mut calls = 0;
        for (line, guards) in commands_with_guards(&text) {
            let Some((tool, action)) = systemd_action(&line) else {
                continue;
            };
            calls += 1;
            assert!(
                actions.contains(&action.as_str()),
                "{name}: {line:?} is not allowed"
            );
            // deb-systemd-helper purge only forgets enablement state, with or
            // without a running systemd; the others talk to systemd.
            if tool != "deb-systemd-helper" {
                assert!(
                    guarded(&guards),
                    "{name}: {line:?} runs without systemd: {guards:?}"
                );
            }
            if action == "try-restart" {
                assert!(
                    guards.iter().any(|g| g.contains("[ -n \"$2\" ]")),
                    "{name}: restarts only on an upgrade: {guards:?}"
                );
            }
        }
        assert!(calls > 0, "{name} never tells systemd anything");
    }

    let postinst = read(&control.join("postinst"));
    for user_maker in ["systemd-sysusers wwep.conf", "useradd --system"] {
        assert!(
            postinst.contains(user_maker),
            "postinst lacks {user_maker:?}"
        );
    }
    let postrm = read(&control.join("postrm"));
    let purge = postrm
        .split_once("\npurge)\n")
        .map(|(_, rest)| rest.split_once("\n\t;;").unwrap().0)
        .expect("postrm has a purge branch");
    let removals = [
        "rm -rf /var/lib/wwep",
        "/etc/wwep/wwep.env",
        "userdel wwep",
        "groupdel wwep",
    ];
    let missing: Vec<&str> = removals
        .into_iter()
        .filter(|r| !purge.contains(r))
        .collect();
    assert!(missing.is_empty(), "purge lacks {missing:?}:\n{purge}");
}

#[test]
fn the_guard_check_sees_an_unguarded_call() {
    // The parser above must not take every line for guarded.
    let script = "#!/bin/sh\nset -e\ncase \"$1\" in\nremove | purge)\n\tif [ -d /run/systemd/system ]; then\n\t\tsystemctl daemon-reload\n\telse\n\t\tsystemctl start wwep\n\tfi\n\t;;\nupgrade) ;;\nesac\nsystemctl stop wwep\n";
    let found = commands_with_guards(script);
    let guards_of = |cmd: &str| &found.iter().find(|(l, _)| l == cmd).unwrap().1;
    assert_eq!(
        guards_of("systemctl daemon-reload")[1..],
        [
            "remove | purge)".to_string(),
            "if [ -d /run/systemd/system ]; then".to_string()
        ]
    );
    assert_eq!(guards_of("systemctl start wwep")[2], "else");
    assert_eq!(guards_of("systemctl start wwep").len(), 3);
    assert!(guards_of("systemctl stop wwep").is_empty());
    assert_eq!(
        systemd_action("deb-systemd-invoke try-restart wwep.service >/dev/null || true"),
        Some(("deb-systemd-invoke".into(), "try-restart".into()))
    );
}

/// scripts/make-deb.sh's answer to bad input: exit status 2 and one line.
fn refused(args: &[&str]) -> String {
    let mut cmd = Command::new(script());
    cmd.args(args);
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {text}");
    stderr
}

#[test]
fn bad_arguments_get_one_line_errors() {
    assert!(refused(&["--bogus"]).contains("unknown argument '--bogus'"));
    assert!(refused(&["--compression", "zstd"]).contains("xz, gzip or none"));
    assert!(refused(&["--binaries"]).contains("--binaries needs a directory"));
    if !can_build() {
        return;
    }
    let missing = refused(&["--binaries", "/nonexistent-wwep-dir"]);
    assert!(
        missing.contains("/nonexistent-wwep-dir/wwep-server"),
        "{missing}"
    );
}
