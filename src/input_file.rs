//! Reading a file an operator named: a certificate, key, CA or CRL file, a
//! PKCS#12 bundle, a rule file. Each must be a regular file (or a symbolic
//! link to one) no larger than its limit; anything else is refused with what
//! it is, before a byte is read. So a FIFO never hangs startup (it is never
//! opened, and what is opened is opened non-blocking) and `/dev/zero` or
//! `/dev/urandom` are never read until memory runs out.

use std::fmt;
use std::fs::{FileType, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::OFlags;

/// The most read of a certificate, key, CA bundle, PKCS#12 or rule file: a
/// CA bundle of every public root is a quarter of this.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The most read of a certificate revocation list file: a large CA's CRLs
/// run to megabytes.
pub const MAX_CRL_BYTES: u64 = 16 << 20;

/// What a path is when it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    Fifo,
    BlockDevice,
    CharacterDevice,
    Socket,
    Other,
}

impl FileKind {
    /// `None` for a regular file.
    pub fn of(t: FileType) -> Option<FileKind> {
        Some(if t.is_file() {
            return None;
        } else if t.is_dir() {
            FileKind::Directory
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else if t.is_char_device() {
            FileKind::CharacterDevice
        } else if t.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Other
        })
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::BlockDevice => "a block device",
            FileKind::CharacterDevice => "a character device",
            FileKind::Socket => "a socket",
            FileKind::Other => "something other than a file",
        })
    }
}

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFileError {
    /// The system's words (no such file, permission denied, …).
    Io(String),
    NotRegular(FileKind),
    TooLarge {
        max_bytes: u64,
    },
}

impl fmt::Display for InputFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputFileError::Io(e) => f.write_str(e),
            InputFileError::NotRegular(kind) => write!(f, "{kind}, not a regular file"),
            InputFileError::TooLarge { max_bytes } => {
                write!(f, "larger than {} KiB", max_bytes / 1024)
            }
        }
    }
}

impl std::error::Error for InputFileError {}

/// Reads the whole of a regular file of at most `max_bytes`.
pub fn read(path: &Path, max_bytes: u64) -> Result<Vec<u8>, InputFileError> {
    let io = |e: std::io::Error| InputFileError::Io(e.to_string());
    let meta = std::fs::metadata(path).map_err(io)?;
    if let Some(kind) = FileKind::of(meta.file_type()) {
        return Err(InputFileError::NotRegular(kind));
    }
    // Non-blocking, so a FIFO put in its place after the check cannot hang
    // the open either; what was opened is checked again.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if let Some(kind) = FileKind::of(meta.file_type()) {
        return Err(InputFileError::NotRegular(kind));
    }
    if meta.len() > max_bytes {
        return Err(InputFileError::TooLarge { max_bytes });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(InputFileError::TooLarge { max_bytes });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.pem");
        std::fs::write(&file, b"12345").unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&file, 5), Ok(b"12345".to_vec()));
        assert_eq!(read(&link, 5), Ok(b"12345".to_vec()));
        assert_eq!(
            read(&file, 4),
            Err(InputFileError::TooLarge { max_bytes: 4 })
        );
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let cases = [
            (dir.path(), FileKind::Directory),
            (fifo.as_path(), FileKind::Fifo),
            (Path::new("/dev/zero"), FileKind::CharacterDevice),
        ];
        for (path, kind) in cases {
            assert_eq!(
                read(path, MAX_FILE_BYTES),
                Err(InputFileError::NotRegular(kind)),
                "{path:?}"
            );
        }
        assert!(matches!(
            read(&dir.path().join("missing"), 5),
            Err(InputFileError::Io(_))
        ));
        assert_eq!(
            InputFileError::NotRegular(FileKind::Fifo).to_string(),
            "a FIFO, not a regular file"
        );
    }
}
