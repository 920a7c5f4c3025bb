//! The one boundary the connection code sees: a place registers are read from
//! and written to, in this process ([`RegisterStore`](super::RegisterStore)) or
//! in Valkey/Redis ([`RedisStore`](super::redis::RedisStore)).

use std::fmt;
use std::io;

use crate::io_cause::IoCause;

/// Why a register could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The data file could not take the write (disk full, read-only, I/O error).
    Storage,
    /// The shared store did not answer in time, or refused (down, failing over,
    /// durability not confirmed).
    Unavailable,
    /// The register holds a value this server cannot read (in a shared store,
    /// a field that is not 4 hex digits, or a device key that is not a hash at
    /// all, which also refuses writes): the store answered, what it holds is
    /// bad, and nothing is overwritten.
    Unreadable,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::Storage => "the data file cannot take the write",
            StoreError::Unavailable => "the store is unavailable",
            StoreError::Unreadable => "the stored value cannot be read",
        })
    }
}

impl std::error::Error for StoreError {}

/// What the store holds for one device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceRegisters {
    /// The registers with a value, sorted by register.
    pub values: Vec<(u8, u16)>,
    /// The registers whose stored value cannot be read, sorted: a read of
    /// one fails with [`StoreError::Unreadable`].
    pub unreadable: Vec<u8>,
}

impl DeviceRegisters {
    /// Nothing has been written to the device.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.unreadable.is_empty()
    }
}

/// Compactions of the data file have failed since the last that worked: the
/// server still takes writes, but the file grows until one works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionFailing {
    /// Of the last failure.
    pub cause: IoCause,
    /// Failures since the last compaction that worked.
    pub in_a_row: u32,
    /// The last failure as logged, naming the file and the step that failed.
    pub error: String,
}

impl fmt::Display for CompactionFailing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "compaction of the data file failed {} time(s) in a row ({}): {}; \
             writes are still stored, and the file grows until a compaction works",
            self.in_a_row, self.cause, self.error
        )
    }
}

/// Registers keyed by (device id, register); nothing exists before its first
/// write. Every call returns within the connection's time limit.
pub trait Backend: Send + Sync {
    /// The value of a register, or `None` if it was never written.
    fn read(&self, device: u16, register: u8) -> Result<Option<u16>, StoreError>;
    /// The registers written for one device (empty if none was ever
    /// written), each with the verdict [`Backend::read`] gives it: a value,
    /// or unreadable.
    fn device(&self, device: u16) -> Result<DeviceRegisters, StoreError>;
    /// Stores a value; returns once it is as durable as the store promises.
    fn write(&self, device: u16, register: u8, value: u16) -> Result<(), StoreError>;
    /// Forces what was written to durable storage (at shutdown).
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    /// Whether a write would be taken now, for health checks: the store's own
    /// knowledge (the data file's last write failed; the shared store stopped
    /// answering).
    fn writable(&self) -> bool {
        true
    }
    /// Whether every read and write is answered from memory, without waiting
    /// for a file, a disk or another process.
    fn answers_from_memory(&self) -> bool {
        false
    }
    /// How many registers are stored, where this process can tell cheaply
    /// (`None` for a store other front ends write to as well).
    fn registers(&self) -> Option<usize> {
        None
    }
    /// The size of the data file this process keeps, if any.
    fn data_file_bytes(&self) -> Option<u64> {
        None
    }
    /// Whether the data file's compactions have been failing, for health
    /// checks (`None` while they work, and for a store without one).
    fn compaction_failing(&self) -> Option<CompactionFailing> {
        None
    }
}
