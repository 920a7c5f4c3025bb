//! A `redis-server` of the test's own on a free loopback port, killed by PID
//! on drop: the shared store's tests, the fence's and the HTTP side's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, have_tool};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// A port no one listens on now. Redis cannot be told to pick one itself and
/// say which (`--port 0` turns TCP off), so the test picks it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Started with `extra` arguments and no snapshots; `None` (the skip is
    /// recorded by `have_tool`) without `redis-server`.
    pub fn start(extra: &[&str]) -> Option<RedisServer> {
        if !have_tool("redis-server") {
            return None;
        }
        let mut redis = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.run();
        Some(redis)
    }

    /// Starts (again) on the same port and directory, and waits for `PONG`.
    pub fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        assert!(
            eventually(Duration::from_secs(10), || self.ping()),
            "redis-server did not answer on port {}",
            self.port
        );
    }

    pub fn ping(&self) -> bool {
        let Ok(mut c) = TcpStream::connect(self.addr()) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        c.write_all(b"PING\r\n").is_ok()
            && c.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// The running process's PID (for SIGSTOP and SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("redis-server is running")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection with a 2 s connect limit.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("a connection to the test's redis-server")
    }

    /// One command on a fresh connection with a 5 s read limit.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
        connection.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut connection)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
