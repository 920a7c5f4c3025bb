//! One server per data file: `FILE.lock` beside the data file, held under an
//! exclusive `flock` from the moment the file is opened until the process
//! exits, as LevelDB and RocksDB hold their `LOCK` file.
//!
//! The lock is on a file of its own, not on the data file, because compaction
//! renames a new file over the data file: a lock on the old one would be lost
//! with it. The lock file holds the holder's PID, for the message a second
//! server prints. It is never removed: a file with no holder (left by a
//! stopped or killed server, whose lock the kernel released) blocks nobody.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Held while the data file is open; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct DataLock {
    /// Open for as long as the lock is held: closing it releases the lock.
    _file: File,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its PID when the lock file says.
    Held { pid: Option<u32> },
    /// The lock file could not be opened or locked.
    Io(io::Error),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held { pid: Some(pid) } => write!(f, "held by PID {pid}"),
            LockError::Held { pid: None } => f.write_str("held by another process"),
            LockError::Io(e) => e.fmt(f),
        }
    }
}

/// `FILE.lock`, beside the (real) data file.
pub fn lock_path(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl DataLock {
    /// Takes the lock for the data file `data` (its real path, links followed),
    /// without waiting: fails at once with [`LockError::Held`] when another
    /// process holds it.
    pub fn acquire(data: &Path) -> Result<DataLock, LockError> {
        let path = lock_path(data);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        // A lock file left by another user (a server once run as root) can
        // still be locked read-only; only the PID is not written then.
        let (mut file, writable) = match opened {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                (File::open(&path).map_err(LockError::Io)?, false)
            }
            Err(e) => return Err(LockError::Io(e)),
        };
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(LockError::Held {
                        pid: holder_pid(&mut file),
                    });
                }
                Err(e) => return Err(LockError::Io(e.into())),
            }
        }
        // The PID is for people; a lock whose PID could not be written is
        // still a lock.
        let pid = format!("{}\n", std::process::id());
        if writable && file.set_len(0).is_ok() {
            let _ = file.write_all_at(pid.as_bytes(), 0);
        }
        Ok(DataLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The PID the holder wrote, if it has written one yet.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataLock::acquire(&data).unwrap();
        assert_eq!(first.path(), dir.path().join("data.lock"));
        match DataLock::acquire(&data) {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(first);
        let again = DataLock::acquire(&data).expect("released on drop");
        drop(again);
        assert!(
            lock_path(&data).exists(),
            "the lock file stays, blocking nobody"
        );
        DataLock::acquire(&data).expect("a stale lock file blocks nobody");
    }

    #[test]
    fn a_lock_file_without_a_pid_names_no_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = DataLock::acquire(&data).unwrap();
        std::fs::write(lock_path(&data), b"").unwrap();
        assert!(matches!(
            DataLock::acquire(&data),
            Err(LockError::Held { pid: None })
        ));
        drop(held);
    }
}
