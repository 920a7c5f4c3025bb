//! The append-only data file that makes writes durable.
//!
//! Layout: an 8-byte header `WWEPLOG1`, then 9-byte records — device (u16 BE),
//! register (u8), value (u16 BE), CRC32 of those five bytes (u32 BE). Replaying the
//! records in order rebuilds the store; a later record for a key wins. A compacted
//! file has the same layout with one record per live register.
//!
//! Writers append through [`Journal::append`] while they hold the store's lock, so
//! the file's order is the store's order; they then wait (without the lock) for
//! their batch to reach the file, and under `Fsync::Always` the disk. One writer at
//! a time writes all records that have gathered meanwhile (group commit).

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const MAGIC: &[u8; 8] = b"WWEPLOG1";
pub const RECORD_BYTES: usize = 9;

pub type Key = (u16, u8);

/// What a store write replaced: how to undo it.
pub type Undo = (Key, Option<u16>);

/// Takes back what is not yet durable: `open` (the batch still gathering), then
/// `inflight` (the batch being written), each newest entry first.
pub(crate) fn undo(map: &mut HashMap<Key, u16>, open: &[Undo], inflight: &[Undo]) {
    for (key, old) in open.iter().rev().chain(inflight.iter().rev()) {
        match old {
            Some(v) => map.insert(*key, *v),
            None => map.remove(key),
        };
    }
}

/// Records to replay into the store, in file order.
pub type Replay = Vec<(Key, u16)>;

/// When appended records are forced to disk (Redis `appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Before each write is acknowledged (one fsync covers a whole batch).
    Always,
    /// About once a second; a power cut can lose the last second of writes.
    #[default]
    EverySec,
    /// When the operating system decides.
    Never,
}

impl Fsync {
    pub fn parse(text: &str) -> Option<Fsync> {
        match text {
            "always" => Some(Fsync::Always),
            "everysec" => Some(Fsync::EverySec),
            "never" | "no" => Some(Fsync::Never),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
            Fsync::Never => "never",
        }
    }
}

/// When the file is rewritten as a snapshot of the live registers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionPolicy {
    /// Rewrite once the file is this many times the size of the live data…
    pub ratio: f64,
    /// …and at least this large.
    pub min_bytes: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            ratio: 4.0,
            min_bytes: 1 << 20,
        }
    }
}

/// Why the data file could not be opened or written.
#[derive(Debug)]
pub enum JournalError {
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    NotAJournal {
        path: PathBuf,
    },
    Corrupt {
        path: PathBuf,
        offset: u64,
        valid_records: u64,
        bytes_after: u64,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io {
                path,
                action,
                source,
            } => write!(f, "{}: cannot {action}: {source}", path.display()),
            JournalError::NotAJournal { path } => {
                write!(
                    f,
                    "{}: not a wwep data file (no {} header)",
                    path.display(),
                    String::from_utf8_lossy(MAGIC)
                )
            }
            JournalError::Corrupt {
                path,
                offset,
                valid_records,
                bytes_after,
            } => write!(
                f,
                "{}: damaged record at byte {offset} with {bytes_after} bytes after it; the {valid_records} records before it are intact. \
                 Back the file up, then start once with --repair to keep those records and drop the rest",
                path.display()
            ),
        }
    }
}

impl std::error::Error for JournalError {}

pub fn encode_record(key: Key, value: u16) -> [u8; RECORD_BYTES] {
    let mut r = [0u8; RECORD_BYTES];
    r[0..2].copy_from_slice(&key.0.to_be_bytes());
    r[2] = key.1;
    r[3..5].copy_from_slice(&value.to_be_bytes());
    let crc = crc32fast::hash(&r[0..5]);
    r[5..9].copy_from_slice(&crc.to_be_bytes());
    r
}

fn decode_record(r: &[u8]) -> Option<(Key, u16)> {
    let crc = u32::from_be_bytes([r[5], r[6], r[7], r[8]]);
    if crc32fast::hash(&r[0..5]) != crc {
        return None;
    }
    Some((
        (u16::from_be_bytes([r[0], r[1]]), r[2]),
        u16::from_be_bytes([r[3], r[4]]),
    ))
}

/// What a scan of a data file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Records are `bytes[8..valid_len]`; `torn_bytes` after them were a record cut
    /// short by a crash and are to be dropped.
    Valid {
        valid_len: u64,
        records: u64,
        torn_bytes: u64,
    },
    /// A record before the last is damaged.
    Corrupt {
        offset: u64,
        records: u64,
        bytes_after: u64,
    },
    NotAJournal,
}

/// Checks a data file's bytes; no I/O, so every damage case is unit-tested.
pub fn scan(bytes: &[u8]) -> Scan {
    if bytes.len() < MAGIC.len() {
        // Empty, or a header torn by a crash on the very first start.
        return if MAGIC.starts_with(bytes) {
            Scan::Valid {
                valid_len: 0,
                records: 0,
                torn_bytes: bytes.len() as u64,
            }
        } else {
            Scan::NotAJournal
        };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Scan::NotAJournal;
    }
    let mut offset = MAGIC.len();
    let mut records = 0;
    while offset < bytes.len() {
        let rest = bytes.len() - offset;
        if rest < RECORD_BYTES {
            return Scan::Valid {
                valid_len: offset as u64,
                records,
                torn_bytes: rest as u64,
            };
        }
        if decode_record(&bytes[offset..offset + RECORD_BYTES]).is_none() {
            if rest == RECORD_BYTES {
                // The last record, half on disk when the power went.
                return Scan::Valid {
                    valid_len: offset as u64,
                    records,
                    torn_bytes: rest as u64,
                };
            }
            return Scan::Corrupt {
                offset: offset as u64,
                records,
                bytes_after: rest as u64,
            };
        }
        offset += RECORD_BYTES;
        records += 1;
    }
    Scan::Valid {
        valid_len: offset as u64,
        records,
        torn_bytes: 0,
    }
}

/// The records of a valid prefix, in file order.
pub fn records(bytes: &[u8], valid_len: u64) -> impl Iterator<Item = (Key, u16)> + '_ {
    let body = bytes
        .get(MAGIC.len()..valid_len as usize)
        .unwrap_or_default();
    body.chunks_exact(RECORD_BYTES).filter_map(decode_record)
}

/// What opening the data file did, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub records: u64,
    /// Bytes of a torn last record that were truncated away.
    pub torn_bytes: u64,
    /// Bytes dropped by `--repair` after a damaged record.
    pub repaired_bytes: u64,
    pub created: bool,
}

/// Outcome of one batch, shared by every writer whose record is in it.
struct Outcome(AtomicU8);

const PENDING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

impl Outcome {
    fn new() -> Arc<Outcome> {
        Arc::new(Outcome(AtomicU8::new(PENDING)))
    }
    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Release)
    }
}

/// Records gathered while another batch is being written.
struct Batch {
    buf: Vec<u8>,
    /// What each record replaced in the store, to undo a batch that cannot be
    /// written: a write that was not made durable is never acknowledged, and must
    /// not stay visible either.
    undo: Vec<Undo>,
    outcome: Arc<Outcome>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: Vec::new(),
            undo: Vec::new(),
            outcome: Outcome::new(),
        }
    }
}

struct State {
    file: Arc<File>,
    /// Length of the file up to the last record known written whole.
    good_len: u64,
    open: Batch,
    /// Undo entries of the batch being written now, if any.
    inflight_undo: Vec<Undo>,
    flushing: bool,
    /// A failed write left bytes past `good_len` that could not be cut off yet.
    needs_truncate: bool,
    /// Written since the last fsync (for `everysec`).
    dirty: bool,
    /// While a compaction runs, batches written meanwhile, to append to the new file.
    capture: Option<Vec<u8>>,
    compacting: bool,
    last_error_log: Option<Instant>,
}

/// The open data file.
pub struct Journal {
    path: PathBuf,
    policy: Fsync,
    compaction: CompactionPolicy,
    state: Mutex<State>,
    written: Condvar,
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

impl Journal {
    /// Opens (or creates) the data file, checks it, and returns its records for the
    /// store to replay. A torn last record is cut off; damage before it is an error
    /// unless `repair`, which keeps the valid prefix.
    pub fn open(
        path: &Path,
        policy: Fsync,
        compaction: CompactionPolicy,
        repair: bool,
    ) -> Result<(Journal, Replay, OpenReport), JournalError> {
        let created = !path.exists();
        let bytes = if created {
            Vec::new()
        } else {
            std::fs::read(path).map_err(io_err(path, "read the data file"))?
        };
        let mut report = OpenReport {
            records: 0,
            torn_bytes: 0,
            repaired_bytes: 0,
            created,
        };
        let valid_len = match scan(&bytes) {
            Scan::NotAJournal => {
                return Err(JournalError::NotAJournal {
                    path: path.to_path_buf(),
                });
            }
            Scan::Corrupt {
                offset,
                records,
                bytes_after,
            } if !repair => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    offset,
                    valid_records: records,
                    bytes_after,
                });
            }
            Scan::Corrupt {
                offset,
                records,
                bytes_after,
            } => {
                report.records = records;
                report.repaired_bytes = bytes_after;
                offset
            }
            Scan::Valid {
                valid_len,
                records,
                torn_bytes,
            } => {
                report.records = records;
                report.torn_bytes = torn_bytes;
                valid_len
            }
        };
        let replay: Replay = records(&bytes, valid_len).collect();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io_err(path, "open the data file for appending"))?;
        let mut good_len = valid_len;
        if (bytes.len() as u64) != valid_len {
            file.set_len(valid_len)
                .map_err(io_err(path, "truncate the data file"))?;
        }
        if valid_len < MAGIC.len() as u64 {
            file.set_len(0)
                .map_err(io_err(path, "truncate the data file"))?;
            (&file)
                .write_all(MAGIC)
                .map_err(io_err(path, "write the data file header"))?;
            good_len = MAGIC.len() as u64;
        }
        file.sync_all()
            .map_err(io_err(path, "fsync the data file"))?;
        if created {
            sync_dir(path).map_err(io_err(path, "fsync the data file's directory"))?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            policy,
            compaction,
            state: Mutex::new(State {
                file: Arc::new(file),
                good_len,
                open: Batch::new(),
                inflight_undo: Vec::new(),
                flushing: false,
                needs_truncate: false,
                dirty: false,
                capture: None,
                compacting: false,
                last_error_log: None,
            }),
            written: Condvar::new(),
        };
        Ok((journal, replay, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn policy(&self) -> Fsync {
        self.policy
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current size of the data file.
    pub fn len(&self) -> u64 {
        self.state().good_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() <= MAGIC.len() as u64
    }

    /// Adds a record to the open batch. Called with the store's lock held, which
    /// orders records as the store applied them. `old` is what the write replaced.
    pub(crate) fn append(&self, key: Key, value: u16, old: Option<u16>) -> Ticket {
        let mut st = self.state();
        st.open.buf.extend_from_slice(&encode_record(key, value));
        st.open.undo.push((key, old));
        Ticket(Arc::clone(&st.open.outcome))
    }

    /// Waits until the ticket's batch is written (and, under `always`, on disk).
    /// Writes it, with every record gathered so far, if no one else is writing.
    /// `lock_map` locks the store, to undo records whose batch failed.
    pub(crate) fn wait<'m>(
        &self,
        ticket: Ticket,
        lock_map: &dyn Fn() -> MutexGuard<'m, HashMap<Key, u16>>,
    ) -> Result<(), StorageError> {
        let mut st = self.state();
        loop {
            match ticket.0.get() {
                DONE => return Ok(()),
                FAILED => return Err(StorageError),
                _ => {}
            }
            if st.flushing {
                st = self.written.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st = self.flush_open(st, lock_map);
        }
    }

    /// Writes the open batch as leader; returns with the lock held again.
    fn flush_open<'a, 'm>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        lock_map: &dyn Fn() -> MutexGuard<'m, HashMap<Key, u16>>,
    ) -> MutexGuard<'a, State> {
        let batch = std::mem::replace(&mut st.open, Batch::new());
        st.inflight_undo = batch.undo;
        st.flushing = true;
        let file = Arc::clone(&st.file);
        let truncate_to = st.needs_truncate.then_some(st.good_len);
        drop(st);

        let result = (|| {
            if let Some(len) = truncate_to {
                file.set_len(len)?;
            }
            (&*file).write_all(&batch.buf)?;
            if self.policy == Fsync::Always {
                file.sync_data()?;
            }
            Ok::<(), io::Error>(())
        })();

        let mut st = match result {
            Ok(()) => {
                let mut st = self.state();
                st.needs_truncate = false;
                st.good_len += batch.buf.len() as u64;
                st.dirty |= self.policy != Fsync::Always;
                if let Some(capture) = st.capture.as_mut() {
                    capture.extend_from_slice(&batch.buf);
                }
                st.inflight_undo.clear();
                batch.outcome.set(DONE);
                st
            }
            Err(e) => {
                // The store's lock comes before ours, as in `append`.
                let mut map = lock_map();
                let mut st = self.state();
                // Undo newest first: the records gathered meanwhile, then this batch.
                // Those gathered meanwhile fail too, since they were applied after it.
                let open = std::mem::replace(&mut st.open, Batch::new());
                let inflight = std::mem::take(&mut st.inflight_undo);
                undo(&mut map, &open.undo, &inflight);
                drop(map);
                open.outcome.set(FAILED);
                batch.outcome.set(FAILED);
                let len = st.good_len;
                st.needs_truncate = file.set_len(len).is_err();
                let now = Instant::now();
                if st
                    .last_error_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    st.last_error_log = Some(now);
                    log::error!(
                        "{}: cannot write the data file: {e}; writes get X until it works again",
                        self.path.display()
                    );
                }
                st
            }
        };
        st.flushing = false;
        self.written.notify_all();
        st
    }

    /// Forces what has been written to disk (the `everysec` timer, shutdown).
    /// Batches are written by their writers before they are acknowledged, so only
    /// the fsync can be outstanding here.
    pub fn sync(&self) -> io::Result<()> {
        let mut st = self.state();
        while st.flushing {
            st = self.written.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if !st.dirty {
            return Ok(());
        }
        let file = Arc::clone(&st.file);
        st.dirty = false;
        drop(st);
        file.sync_data().inspect_err(|_| self.state().dirty = true)
    }

    /// Whether the file has outgrown the live data enough to be rewritten.
    pub fn wants_compaction(&self, live_registers: usize) -> bool {
        let st = self.state();
        let live = (MAGIC.len() + live_registers * RECORD_BYTES) as f64;
        !st.compacting
            && st.good_len >= self.compaction.min_bytes
            && st.good_len as f64 > live * self.compaction.ratio
    }

    /// Starts capturing written batches for a compaction and hands `f` the undo
    /// entries of everything not yet durable (the open batch, then the one being
    /// written; each oldest first), under the journal's lock. Called with the
    /// store's lock held. Returns false if a compaction is already running.
    pub(crate) fn begin_capture(&self, f: &mut dyn FnMut(&[Undo], &[Undo])) -> bool {
        let mut st = self.state();
        if st.compacting {
            return false;
        }
        st.compacting = true;
        st.capture = Some(Vec::new());
        f(&st.open.undo, &st.inflight_undo);
        true
    }

    /// Rewrites the file as `snapshot` (the durable state when capture began) plus
    /// every batch written since, without stopping writers: the snapshot is written
    /// unlocked; only the short catch-up and the rename hold the lock.
    pub(crate) fn finish_compaction(
        &self,
        snapshot: &HashMap<Key, u16>,
    ) -> Result<CompactionReport, JournalError> {
        let before = self.len();
        let tmp = self.path.with_extension("compact.tmp");
        let write_snapshot = || -> io::Result<File> {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            out.write_all(MAGIC)?;
            let mut entries: Vec<_> = snapshot.iter().collect();
            entries.sort_unstable();
            for (&key, &value) in entries {
                out.write_all(&encode_record(key, value))?;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_data()?;
            Ok(file)
        };
        let written = write_snapshot();
        let mut st = self.state();
        while st.flushing {
            st = self.written.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let captured = st.capture.take().unwrap_or_default();
        st.compacting = false;
        let fail = |action, source| {
            let _ = std::fs::remove_file(&tmp);
            JournalError::Io {
                path: self.path.clone(),
                action,
                source,
            }
        };
        let tmp_file = written.map_err(|e| fail("write the compacted data file", e))?;
        let swap = || -> io::Result<File> {
            (&tmp_file).write_all(&captured)?;
            tmp_file.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            sync_dir(&self.path)?;
            OpenOptions::new().append(true).read(true).open(&self.path)
        };
        let file = swap().map_err(|e| fail("replace the data file with its compacted copy", e))?;
        st.good_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        st.file = Arc::new(file);
        st.needs_truncate = false;
        st.dirty = false;
        Ok(CompactionReport {
            before,
            after: st.good_len,
        })
    }
}

/// A writer's place in a batch.
pub(crate) struct Ticket(Arc<Outcome>);

/// A write that could not be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageError;

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the data file cannot be written")
    }
}

impl std::error::Error for StorageError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionReport {
    pub before: u64,
    pub after: u64,
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
impl Journal {
    /// Points the journal at another file, to make writes fail (`/dev/full`).
    pub(crate) fn swap_file_for_test(&self, file: File) -> File {
        let mut st = self.state();
        let old = std::mem::replace(&mut st.file, Arc::new(file));
        Arc::try_unwrap(old).unwrap_or_else(|_| panic!("file in use"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[(Key, u16)]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for &(k, v) in records {
            bytes.extend(encode_record(k, v));
        }
        bytes
    }

    #[test]
    fn records_round_trip() {
        for (key, value) in [
            ((0, 0), 0),
            ((0xFFFF, 0xFF), 0xFFFF),
            ((0x0FAC, 0x0B), 0x1234),
        ] {
            let r = encode_record(key, value);
            assert_eq!(decode_record(&r), Some((key, value)));
        }
    }

    #[test]
    fn scan_verdicts() {
        let two = file(&[((1, 1), 1), ((2, 2), 2)]);
        assert_eq!(
            scan(b""),
            Scan::Valid {
                valid_len: 0,
                records: 0,
                torn_bytes: 0
            }
        );
        assert_eq!(
            scan(b"WWEP"),
            Scan::Valid {
                valid_len: 0,
                records: 0,
                torn_bytes: 4
            }
        );
        assert_eq!(scan(b"JUNK"), Scan::NotAJournal);
        assert_eq!(scan(b"not a journal at all"), Scan::NotAJournal);
        assert_eq!(
            scan(MAGIC),
            Scan::Valid {
                valid_len: 8,
                records: 0,
                torn_bytes: 0
            }
        );
        assert_eq!(
            scan(&two),
            Scan::Valid {
                valid_len: 26,
                records: 2,
                torn_bytes: 0
            }
        );
        // A record cut short by a crash.
        for cut in 1..RECORD_BYTES {
            let torn = &two[..two.len() - cut];
            assert_eq!(
                scan(torn),
                Scan::Valid {
                    valid_len: 17,
                    records: 1,
                    torn_bytes: (RECORD_BYTES - cut) as u64
                }
            );
        }
        // A last record whose bytes arrived but not all of them right.
        let mut bad_last = two.clone();
        bad_last[20] ^= 0xFF;
        assert_eq!(
            scan(&bad_last),
            Scan::Valid {
                valid_len: 17,
                records: 1,
                torn_bytes: 9
            }
        );
        // Damage before the last record.
        let mut bad_first = two.clone();
        bad_first[9] ^= 0x01;
        assert_eq!(
            scan(&bad_first),
            Scan::Corrupt {
                offset: 8,
                records: 0,
                bytes_after: 18
            }
        );
        let replay: Vec<_> = records(&two, 26).collect();
        assert_eq!(replay, vec![((1, 1), 1), ((2, 2), 2)]);
    }

    #[test]
    fn open_repairs_or_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let mut bytes = file(&[((1, 1), 1), ((2, 2), 2), ((3, 3), 3)]);
        bytes[9] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::open(&path, Fsync::Never, CompactionPolicy::default(), false)
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("byte 8") && text.contains("--repair") && text.contains("data"),
            "{text}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "a refused file is left as it was"
        );
        let (_, replay, report) =
            Journal::open(&path, Fsync::Never, CompactionPolicy::default(), true).unwrap();
        assert!(replay.is_empty());
        assert_eq!(report.repaired_bytes, 27);
        assert_eq!(std::fs::read(&path).unwrap(), MAGIC);
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(
            Journal::open(&path, Fsync::Never, CompactionPolicy::default(), true),
            Err(JournalError::NotAJournal { .. })
        ));
    }
}
