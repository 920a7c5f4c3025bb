//! The append-only data file that makes writes durable.
//!
//! - [`policy`](self::policy): when records go to disk and when the file is
//!   rewritten (`Fsync`, `CompactionPolicy`);
//! - [`log_file`](self::log_file): the log itself: opened and replayed at
//!   startup, appended to by group commit ([`Journal`]);
//! - [`compaction`](self::compaction): the file rewritten as a snapshot of the
//!   live registers while writers go on;
//! - [`reserve`](self::reserve): `FILE.reserve`, room kept for compaction on a
//!   full disk;
//! - [`files`](self::files): the files beside the data file, their names and
//!   the directory's fsync.

mod compaction;
mod files;
mod log_file;
mod policy;
mod reserve;

pub use self::compaction::{CompactionReport, Replaced, Rewrite};
#[cfg(test)]
pub(crate) use self::log_file::wait_out_own_lock;
pub use self::log_file::{Journal, JournalError, OpenReport, Publish, StorageError};
pub use self::policy::{CompactionPolicy, Fsync};
pub use crate::store::format::{Key, MAGIC, RECORD_BYTES, encode_record};
