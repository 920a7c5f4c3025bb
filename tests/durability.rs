//! Durable registers and the service around them: the data file across restarts,
//! crashes and damage; compaction; signals; systemd readiness and the unit file.

mod common;

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;
use wwep::journal::{MAGIC, encode_record};

const EXIT_LIMIT: Duration = Duration::from_secs(15);

fn data_server(data: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--no-tls", "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// Writes `count` distinct registers from 8 concurrent clients; every reply is A.
fn write_many(server: &ServerProcess, count: u16) {
    let addr = server.plain.unwrap();
    let threads: Vec<_> = (0..8u16)
        .map(|t| {
            thread::spawn(move || {
                for i in (t..count).step_by(8) {
                    let request = format!("W{:04X}{:02X}{:04X}", i, i % 256, i ^ 0x5A5A);
                    let reply = transact(&mut connect(addr), request.as_bytes());
                    assert_eq!(reply[0], b'A', "write {i} not acknowledged");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn read_all_back(server: &ServerProcess, count: u16) {
    let addr = server.plain.unwrap();
    for i in 0..count {
        let reply = transact(
            &mut connect(addr),
            format!("R{:04X}{:02X}", i, i % 256).as_bytes(),
        );
        assert_eq!(
            reply,
            format!("A{:04X}{:02X}{:04X}", i, i % 256, i ^ 0x5A5A).as_bytes(),
            "register {i}"
        );
    }
}

#[test]
fn restart_after_sigterm_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registers.wwep");
    let mut server = data_server(&data, &[]);
    assert!(
        server.log_text().contains("created"),
        "{}",
        server.log_text()
    );
    write_many(&server, 400);
    server.signal("TERM");
    let status = server.wait_exit(EXIT_LIMIT).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}: {}", server.log_text());
    assert!(server.log_text().contains("stopped"));
    let server = data_server(&data, &[]);
    assert!(
        server
            .log_text()
            .contains("400 records replayed, 400 registers"),
        "{}",
        server.log_text()
    );
    read_all_back(&server, 400);
}

#[test]
fn sigkill_right_after_acknowledged_writes_loses_none_under_fsync_always() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registers.wwep");
    let mut server = data_server(&data, &["--fsync", "always"]);
    write_many(&server, 300);
    server.signal("KILL");
    server.wait_exit(EXIT_LIMIT).expect("killed");
    let server = data_server(&data, &["--fsync", "always"]);
    read_all_back(&server, 300);
}

#[test]
fn memory_only_without_data_says_so() {
    let server = ServerProcess::start(&["--no-tls"]);
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_text()
            .contains("memory only")),
        "{}",
        server.log_text()
    );
}

fn journal_bytes(records: &[((u16, u8), u16)]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    for &(key, value) in records {
        bytes.extend(encode_record(key, value));
    }
    bytes
}

#[test]
fn torn_last_record_is_dropped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registers.wwep");
    let mut bytes = journal_bytes(&[((1, 1), 0x1111), ((2, 2), 0x2222), ((3, 3), 0x3333)]);
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&data, &bytes).unwrap();
    let server = data_server(&data, &[]);
    assert!(
        server.log_text().contains("dropped 4 bytes"),
        "{}",
        server.log_text()
    );
    let addr = server.plain.unwrap();
    assert_eq!(transact(&mut connect(addr), b"R000101"), b"A0001011111");
    assert_eq!(transact(&mut connect(addr), b"R000202"), b"A0002022222");
    assert_eq!(transact(&mut connect(addr), b"R000303"), b"X");
    // New writes follow the valid prefix, so the file stays readable.
    assert_eq!(transact(&mut connect(addr), b"W0003034444"), b"A0003034444");
    drop(server);
    let server = data_server(&data, &[]);
    assert_eq!(
        transact(&mut connect(server.plain.unwrap()), b"R000303"),
        b"A0003034444"
    );
}

/// Starts the server expecting it to refuse; returns its stderr.
fn refused(data: &Path, extra: &[&str]) -> String {
    let mut cmd = server_cmd();
    cmd.args(["--no-tls", "--data"]).arg(data).args(extra);
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_whole_last_record_with_a_bad_crc_is_damage_not_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registers.wwep");
    let mut bytes = journal_bytes(&[((1, 1), 0x1111), ((2, 2), 0x2222)]);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&data, &bytes).unwrap();
    let stderr = refused(&data, &[]);
    assert!(
        stderr.contains(data.to_str().unwrap()) && stderr.contains("byte 17"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&data).unwrap(), bytes, "left alone");
    let server = data_server(&data, &["--repair"]);
    let addr = server.plain.unwrap();
    assert_eq!(transact(&mut connect(addr), b"R000101"), b"A0001011111");
    assert_eq!(transact(&mut connect(addr), b"R000202"), b"X");
}

#[test]
fn damage_before_the_last_record_refuses_to_start_until_repair() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registers.wwep");
    let mut bytes = journal_bytes(&[((1, 1), 0x1111), ((2, 2), 0x2222), ((3, 3), 0x3333)]);
    bytes[8 + 9 + 2] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    let stderr = refused(&data, &[]);
    assert!(
        stderr.contains(data.to_str().unwrap())
            && stderr.contains("byte 17")
            && stderr.contains("--repair"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&data).unwrap(),
        bytes,
        "the damaged file is left alone"
    );
    let server = data_server(&data, &["--repair"]);
    assert!(
        server.log_text().contains("dropped 9 bytes"),
        "{}",
        server.log_text()
    );
    let addr = server.plain.unwrap();
    assert_eq!(transact(&mut connect(addr), b"R000101"), b"A0001011111");
    assert_eq!(transact(&mut connect(addr), b"R000202"), b"X");
    assert_eq!(transact(&mut connect(addr), b"R000303"), b"A0003033333");
}

#[test]
fn compaction_shrinks_the_file_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registers.wwep");
    let server = data_server(
        &data,
        &["--compact-min-bytes", "2000", "--compact-ratio", "2"],
    );
    let addr = server.plain.unwrap();
    for i in 0..400u16 {
        let reply = transact(
            &mut connect(addr),
            format!("W00AA{:02X}{:04X}", i % 4, i).as_bytes(),
        );
        assert_eq!(reply[0], b'A');
    }
    assert!(
        eventually(Duration::from_secs(10), || server
            .log_text()
            .contains("compacted the data file")),
        "{}",
        server.log_text()
    );
    let size = std::fs::metadata(&data).unwrap().len();
    assert!(size < 2000, "compacted file is {size} bytes");
    drop(server);
    let server = data_server(&data, &[]);
    let addr = server.plain.unwrap();
    for r in 0..4u16 {
        let last = 396 + r;
        assert_eq!(
            transact(&mut connect(addr), format!("R00AA{r:02X}").as_bytes()),
            format!("A00AA{r:02X}{last:04X}").as_bytes()
        );
    }
}

#[test]
fn sighup_swaps_the_certificate_and_a_bad_pair_keeps_the_old() {
    let first = Pki::new(KeyKind::EcP256);
    let second = Pki::new(KeyKind::EcP256);
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::copy(first.path("server.pem"), &cert).unwrap();
    std::fs::copy(first.path("server.key"), &key).unwrap();
    let server = ServerProcess::start(&[
        "--no-plain",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let tls = server.tls.unwrap();
    let handshake = |pki: &Pki| pki.connector().connect("localhost", connect(tls)).is_ok();
    assert!(handshake(&first) && !handshake(&second));

    std::fs::copy(second.path("server.pem"), &cert).unwrap();
    std::fs::copy(second.path("server.key"), &key).unwrap();
    server.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || server
        .log_text()
        .contains("reloaded the TLS certificate")));
    assert!(
        handshake(&second) && !handshake(&first),
        "new connections see the new certificate"
    );

    std::fs::write(&key, b"not a key").unwrap();
    server.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || server
        .log_text()
        .contains("keeping the old certificate")));
    assert!(server.log_text().contains(key.to_str().unwrap()));
    assert!(handshake(&second), "the old pair stays in service");
    let mut stream = second
        .connector()
        .connect("localhost", connect(tls))
        .unwrap();
    assert_eq!(transact(&mut stream, b"W0001020003"), b"A0001020003");
}

#[test]
fn readiness_is_notified_after_the_ports_accept() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut server = ServerProcess::start_env(
        &["--no-tls"],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 arrives");
    assert_eq!(&buf[..n], b"READY=1");
    // The port accepted before the notification was sent.
    assert_eq!(
        transact(&mut connect(server.plain.unwrap()), b"R000000"),
        b"X"
    );
    server.signal("TERM");
    let n = socket.recv(&mut buf).expect("STOPPING=1 arrives");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(server.wait_exit(EXIT_LIMIT).unwrap().success());
}

#[test]
fn systemd_unit_verifies() {
    if !have_tool("systemd-analyze") {
        return;
    }
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/wwep.service")).unwrap();
    for needed in [
        "Type=notify",
        "StateDirectory=",
        "EnvironmentFile=",
        "ExecReload=",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "PrivateTmp=yes",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wwep.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/wwep-server",
            env!("CARGO_BIN_EXE_wwep-server"),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(&path);
    let out = run_with_input(&mut cmd, b"");
    let text = describe(&cmd, &out);
    assert!(out.status.success(), "{text}");
    // It reports unknown keys and bad values as warnings, with success.
    assert!(out.stderr.is_empty() && out.stdout.is_empty(), "{text}");
}

#[test]
fn the_example_environment_file_names_real_flags() {
    let env =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/wwep.env")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_wwep-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for line in env.lines().map(|l| l.trim_start_matches('#')) {
        if let Some((var, _)) = line.split_once('=')
            && var.starts_with("WWEP_")
            && var != "WWEP_PKCS12_PASSWORD"
        {
            assert!(help.contains(var), "{var} is not a server flag's variable");
        }
    }
}
