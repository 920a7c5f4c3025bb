//! The server process's life between its flags and its exit code: start,
//! reload when asked, stop when asked, and an exit code that says how it went.
//!
//! Requests come as [`Signal`]s on a channel (the binary turns SIGTERM, SIGINT
//! and SIGHUP into them), so the whole state machine runs in tests without
//! sending the process a signal.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use log::{error, info, warn};

use crate::config::ServerConfig;
use crate::net::server::{RunningServer, ServerControl, ServerError};
use crate::notify::notify;
use crate::store::journal::JournalError;
use crate::store::redis::RedisOpenError;

/// What the process is asked to do from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Stop accepting, finish the connections in flight, sync, exit (SIGTERM, SIGINT).
    Stop,
    /// Read the TLS material and the acl rules again (SIGHUP).
    Reload,
}

/// How the process ends, by meaning; [`Exit::code`] is its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped when asked, everything synced: 0.
    Stopped,
    /// Could not start, or could not sync the data file at the end: 1.
    Failed,
    /// A setting that cannot work, to be fixed by whoever gave it: 2.
    Usage,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Stopped => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
        }
    }

    /// The exit of a server that did not start because of `e`.
    pub fn of(e: &ServerError) -> Exit {
        match e {
            ServerError::Config(_)
            | ServerError::Acl(_)
            | ServerError::Store(RedisOpenError::Setup(_) | RedisOpenError::NoWaitAof(_)) => {
                Exit::Usage
            }
            // An unreachable or untrusted store, a file that will not load, a
            // port taken: the settings may be right and the world wrong.
            ServerError::Store(
                RedisOpenError::Unreachable(_) | RedisOpenError::Untrusted { .. },
            )
            | ServerError::Tls(_)
            | ServerError::Bind { .. }
            | ServerError::Data(_)
            | ServerError::Thread(_) => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// What the signal thread acts on: nothing until the server runs.
#[derive(Default)]
struct Running {
    /// `None` until the server is up, and again once it has stopped.
    control: Mutex<Option<ServerControl>>,
    /// A stop was asked for (before or after the server came up).
    stop: AtomicBool,
    /// A reload came during startup: the files may have changed after they
    /// were read, so they are read again once the server is up. Set and taken
    /// under the `control` lock, so none is lost in between.
    reload_pending: AtomicBool,
    /// The server has stopped: later signals are too late to mean anything.
    finished: AtomicBool,
}

impl Running {
    fn obey(&self, signal: Signal) {
        let control = {
            let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
            if self.finished.load(Ordering::SeqCst) {
                return;
            }
            if signal == Signal::Reload && control.is_none() {
                self.reload_pending.store(true, Ordering::SeqCst);
            }
            control.clone()
        };
        match (signal, control) {
            (Signal::Reload, Some(control)) => reload(&control),
            (Signal::Reload, None) => info!("SIGHUP during startup: reloading once started"),
            (Signal::Stop, control) => {
                info!("asked to stop: finishing connections in flight");
                let _ = notify("STOPPING=1");
                self.stop.store(true, Ordering::SeqCst);
                if let Some(control) = control {
                    control.shutdown();
                }
            }
        }
    }

    /// Hands over the running server; whether a reload came during startup.
    fn started(&self, control: ServerControl) -> bool {
        let mut slot = self.control.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(control);
        self.reload_pending.swap(false, Ordering::SeqCst)
    }

    fn finish(&self) {
        let mut slot = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.finished.store(true, Ordering::SeqCst);
        *slot = None;
    }
}

/// A reload: the TLS material and the acl rules again, each kept as it was
/// when the new one does not load.
fn reload(control: &ServerControl) {
    match control.reload_tls() {
        Ok(()) => info!("SIGHUP: reloaded the TLS certificate and key, the client CA and the CRLs"),
        Err(e) => error!("SIGHUP: keeping the old certificate: {e}"),
    }
    match control.reload_acl() {
        Ok(Some(acl)) => info!("SIGHUP: reloaded the acl {}", acl.summary()),
        Ok(None) => {}
        Err(e) => error!("SIGHUP: keeping the old acl rules: {e}"),
    }
}

/// Runs a server until it is asked to stop and has finished: see [`serve`].
pub fn run(config: ServerConfig, signals: Receiver<Signal>) -> ExitCode {
    serve(config, signals).into()
}

/// Starts a server with `config`, obeys `signals` from the start (a stop
/// during a long replay of the data file is obeyed; a reload during startup
/// is done once the server is up), and returns when the server has stopped.
/// Startup errors are printed on stderr, as the person who gave the settings
/// reads them there. The thread that reads `signals` ends when their sender
/// is dropped; signals after the server has stopped are ignored.
pub fn serve(config: ServerConfig, signals: Receiver<Signal>) -> Exit {
    serve_with(config, signals, |_, _| {})
}

/// [`serve`], with `up` called once the server has started and before it is
/// handed to the signal thread: where tests learn its address and step in.
fn serve_with(
    config: ServerConfig,
    signals: Receiver<Signal>,
    up: impl FnOnce(&RunningServer, &Running),
) -> Exit {
    let running = Arc::new(Running::default());
    let reader = {
        let running = Arc::clone(&running);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals {
                    running.obey(signal);
                }
            })
    };
    if let Err(e) = reader {
        eprintln!("wwep-server: cannot start the signal thread: {e}");
        return Exit::Failed;
    }
    let server = match crate::net::server::start_unless(config, &running.stop) {
        Ok(server) => server,
        Err(ServerError::Data(JournalError::Cancelled { .. })) => {
            info!("stopped during startup");
            running.finish();
            return Exit::Stopped;
        }
        Err(e) => {
            eprintln!("wwep-server: {e}");
            running.finish();
            return Exit::of(&e);
        }
    };
    up(&server, &running);
    if running.started(server.control()) {
        reload(&server.control());
    }
    if running.stop.load(Ordering::SeqCst) {
        // The stop came between the replay and the handover above.
        server.control().shutdown();
    } else if let Err(e) = notify("READY=1") {
        warn!("cannot notify the service manager: {e}");
    }
    let result = server.wait();
    running.finish();
    match result {
        Ok(()) => {
            info!("stopped");
            Exit::Stopped
        }
        Err(e) => {
            error!("the data file could not be synced at shutdown: {e}");
            Exit::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};
    use std::path::Path;
    use std::sync::mpsc::{Sender, channel};
    use std::time::{Duration, Instant};

    const ALL: &str = "allow anyone read,write *\n";
    const READS: &str = "allow anyone read *\n";

    /// The open port only, on 127.0.0.1, with an acl rule file whose changes
    /// show whether a reload happened.
    fn config(acl: &Path) -> ServerConfig {
        ServerConfig {
            bind: Ipv4Addr::LOCALHOST.into(),
            plain_port: Some(0),
            tls_port: None,
            workers: Some(2),
            acl: Some(acl.to_path_buf()),
            ..ServerConfig::default()
        }
    }

    fn acl_file(dir: &tempfile::TempDir, rules: &str) -> std::path::PathBuf {
        let path = dir.path().join("rules.acl");
        std::fs::write(&path, rules).unwrap();
        path
    }

    fn transact(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        reply
    }

    /// Waits (with a deadline) until a write is refused: the rules that allow
    /// only reads are in force.
    fn wait_until_writes_are_refused(addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while transact(addr, b"W0001020003\n") != b"X\n" {
            assert!(
                Instant::now() < deadline,
                "the new rules never came into force"
            );
            std::thread::yield_now();
        }
    }

    /// Serves in a thread; the server's open address comes back once it is up,
    /// after `up` has run.
    fn serve_in_thread(
        config: ServerConfig,
        signals: Receiver<Signal>,
        up: impl FnOnce(&Running) + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Exit>) {
        let (addr_tx, addr_rx) = channel();
        let thread = std::thread::spawn(move || {
            serve_with(config, signals, |server, running| {
                up(running);
                let _ = addr_tx.send(server.plain_addr());
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server starts")
            .expect("the open port is served");
        (addr, thread)
    }

    fn stop(signals: &Sender<Signal>, thread: std::thread::JoinHandle<Exit>) -> Exit {
        signals.send(Signal::Stop).unwrap();
        thread.join().unwrap()
    }

    #[test]
    fn a_stop_before_the_start_is_obeyed() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = channel();
        tx.send(Signal::Stop).unwrap();
        assert_eq!(serve(config(&acl_file(&dir, ALL)), rx), Exit::Stopped);
    }

    #[test]
    fn a_reload_then_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let acl = acl_file(&dir, ALL);
        let (tx, rx) = channel();
        let (addr, thread) = serve_in_thread(config(&acl), rx, |_| {});
        assert_eq!(transact(addr, b"W0001020003\n"), b"A0001020003\n");
        std::fs::write(&acl, READS).unwrap();
        tx.send(Signal::Reload).unwrap();
        wait_until_writes_are_refused(addr);
        assert_eq!(transact(addr, b"R000102\n"), b"A0001020003\n");
        assert_eq!(stop(&tx, thread), Exit::Stopped);
    }

    #[test]
    fn a_reload_during_startup_is_done_once_up() {
        let dir = tempfile::tempdir().unwrap();
        let acl = acl_file(&dir, ALL);
        let (tx, rx) = channel();
        let during_startup = tx.clone();
        let changed = acl.clone();
        // The rules change after startup read them, and the reload arrives
        // before the server is handed over: only the pending reload can
        // bring the new rules in.
        let (addr, thread) = serve_in_thread(config(&acl), rx, move |running| {
            std::fs::write(&changed, READS).unwrap();
            during_startup.send(Signal::Reload).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !running.reload_pending.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the reload was never seen");
                std::thread::yield_now();
            }
        });
        wait_until_writes_are_refused(addr);
        assert_eq!(stop(&tx, thread), Exit::Stopped);
    }

    #[test]
    fn a_stop_during_startup_stops_once_up() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = channel();
        let during_startup = tx.clone();
        let (addr, thread) = serve_in_thread(config(&acl_file(&dir, ALL)), rx, move |running| {
            during_startup.send(Signal::Stop).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !running.stop.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the stop was never seen");
                std::thread::yield_now();
            }
        });
        assert_eq!(thread.join().unwrap(), Exit::Stopped);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_setting_that_cannot_work_exits_2() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = channel();
        let nothing = ServerConfig {
            plain_port: None,
            ..config(&acl_file(&dir, ALL))
        };
        assert_eq!(serve(nothing, rx), Exit::Usage);
        let (_tx, rx) = channel();
        let bad_rules = config(&acl_file(&dir, "allow nobody-at-all read *\n"));
        assert_eq!(serve(bad_rules, rx), Exit::Usage);
    }

    #[test]
    fn a_port_in_use_exits_1() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (_tx, rx) = channel();
        let config = ServerConfig {
            plain_port: Some(taken.local_addr().unwrap().port()),
            ..config(&acl_file(&dir, ALL))
        };
        assert_eq!(serve(config, rx), Exit::Failed);
    }

    #[test]
    fn exit_codes() {
        let cases = [(Exit::Stopped, 0), (Exit::Failed, 1), (Exit::Usage, 2)];
        for (exit, code) in cases {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
        let e = |e| Exit::of(&e);
        assert_eq!(
            e(ServerError::Config(crate::config::ConfigError::NoListener)),
            Exit::Usage
        );
        assert_eq!(
            e(ServerError::Store(RedisOpenError::Setup("x".into()))),
            Exit::Usage
        );
        assert_eq!(
            e(ServerError::Store(RedisOpenError::NoWaitAof("x".into()))),
            Exit::Usage
        );
        assert_eq!(
            e(ServerError::Store(RedisOpenError::Unreachable("x".into()))),
            Exit::Failed
        );
        assert_eq!(
            e(ServerError::Thread(std::io::Error::other("x"))),
            Exit::Failed
        );
    }
}
