//! The C library (clients/c) built once per test binary into target/c-client,
//! with its unit tests run; a missing compiler or mbedTLS is a recorded skip
//! (a failure under WWEP_REQUIRE_TOOLS=1).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{describe, on_path, run_with_input, skip};

enum Build {
    /// The folder with the programs and the unit tests.
    Ready(PathBuf),
    /// A tool the build needs is missing.
    Missing(String),
}

/// Builds clients/c once for the whole test binary (into target/c-client) and
/// runs its unit tests; a failing build or unit test fails every test that
/// asks. None (and a recorded skip) when a tool is missing.
pub fn build() -> Option<&'static Path> {
    static BUILD: OnceLock<Build> = OnceLock::new();
    let build = BUILD.get_or_init(|| {
        // Not have_tool: each test records its own skip, once.
        let missing = ["cc", "make"]
            .into_iter()
            .find(|tool| !on_path(tool))
            .map(|tool| format!("{tool} is not installed"))
            .or_else(|| {
                (!mbedtls_headers())
                    .then(|| "the mbedTLS headers (libmbedtls-dev) are not installed".to_string())
            });
        if let Some(reason) = missing {
            if std::env::var("WWEP_REQUIRE_TOOLS").as_deref() == Ok("1") {
                panic!("{reason}, but WWEP_REQUIRE_TOOLS=1 requires it");
            }
            return Build::Missing(reason);
        }
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target folder")
            .join("c-client");
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/c");
        let build = format!("BUILD={}", target.display());
        let mut make = Command::new("make");
        must_succeed(
            make.arg("-C").arg(&sources).arg(build),
            "the C library builds",
        );
        for unit in ["test_wwep", "test_wwep_server", "test_wwep_server_1slot"] {
            must_succeed(
                &mut Command::new(target.join(unit)),
                "the C unit tests pass",
            );
        }
        Build::Ready(target)
    });
    match build {
        Build::Ready(dir) => Some(dir),
        Build::Missing(reason) => {
            skip(reason);
            None
        }
    }
}

/// Runs `cmd` to its end; fails the test, saying `what` was expected, unless
/// it succeeds.
fn must_succeed(cmd: &mut Command, what: &str) {
    let out = run_with_input(cmd, b"");
    assert!(out.status.success(), "{what}\n{}", describe(cmd, &out));
}

/// Whether the C compiler finds <mbedtls/ssl.h>.
fn mbedtls_headers() -> bool {
    let mut cc = Command::new("cc");
    cc.args(["-E", "-x", "c", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    run_with_input(&mut cc, b"#include <mbedtls/ssl.h>\n")
        .status
        .success()
}
