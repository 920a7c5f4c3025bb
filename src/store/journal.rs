//! The append-only data file that makes writes durable. It speaks records and
//! batches; the register map is the store's, and the journal only reaches it
//! through [`Publish`].
//!
//! Writers add their record to the open batch (`Journal::append`) and wait for
//! it (`Journal::commit`): one writer at a time writes every record gathered
//! meanwhile (group commit), fsyncs under `Fsync::Always`, and hands the batch to
//! [`Publish`] before any of its writers is told it succeeded. A value is therefore
//! visible only once its record is in the file (on disk under `always`); a batch
//! that cannot be written was never visible, so there is nothing to undo.
//!
//! Compaction (`Journal::begin_compaction`) writes a snapshot the store hands it
//! to a temporary file without stopping writers, then copies the batches written
//! meanwhile from the old file, fsyncs and renames. Only the last short catch-up
//! and the rename (under `always`, with an fsync of that catch-up and of the
//! directory) happen while batches wait.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::format::{Damage, FormatError, HEADER_BYTES, Scanner};
pub use super::format::{Key, MAGIC, RECORD_BYTES, encode_record};
use super::lock::{DataLock, LockError, lock_path};
use crate::input_file::FileKind;

/// How much of the file is read at a time at startup; a stop request is noticed
/// between reads (every ~29,000 records).
const REPLAY_CHUNK_BYTES: usize = 256 * 1024;
/// Compaction catches up with the live file unlocked until less than this is left.
const CATCH_UP_BYTES: u64 = 64 * 1024;
/// Under `always`, the snapshot is fsynced every this many bytes as it is written.
const SNAPSHOT_SYNC_BYTES: u64 = 2 << 20;
/// The reserve covers the live data plus this, in whole pages.
const RESERVE_SLACK_BYTES: u64 = 16 * 1024;
const PAGE_BYTES: u64 = 4096;
/// The reserve grows by at most this much per maintenance tick, so that filling
/// it never competes with writers for the disk for long.
const RESERVE_STEP_BYTES: u64 = 8 << 20;

/// When appended records are forced to disk (Redis `appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Fsync {
    /// Before each write is acknowledged (one fsync covers a whole batch).
    Always,
    /// About once a second; a power cut can lose the last second of writes.
    #[default]
    #[value(name = "everysec")]
    EverySec,
    /// When the operating system decides.
    #[value(alias = "no")]
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

/// Why the data file could not be opened or rewritten. Each names the file.
#[derive(Debug)]
pub enum JournalError {
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// A directory, FIFO, device or socket: never opened, so a FIFO cannot hang.
    NotRegular {
        path: PathBuf,
        kind: FileKind,
    },
    NotAJournal {
        path: PathBuf,
    },
    /// Damage between good records, or a whole last record with a bad CRC.
    Corrupt {
        path: PathBuf,
        offset: u64,
        regions: u64,
        damaged_bytes: u64,
        /// Good records in the whole file, before and after the damage.
        records: u64,
    },
    /// Startup was asked to stop while the file was being replayed.
    Cancelled {
        path: PathBuf,
    },
    /// Another process (another server) has the file open: its lock file is
    /// held, by this PID when the lock file says.
    Locked {
        path: PathBuf,
        lock: PathBuf,
        pid: Option<u32>,
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
            JournalError::NotRegular { path, kind } => write!(
                f,
                "{}: is {kind}, not a regular file; --data needs a file",
                path.display()
            ),
            JournalError::NotAJournal { path } => write!(
                f,
                "{}: not a wwep data file (no {} header)",
                path.display(),
                String::from_utf8_lossy(MAGIC)
            ),
            JournalError::Corrupt {
                path,
                offset,
                regions,
                damaged_bytes,
                records,
            } => write!(
                f,
                "{}: damaged record at byte {offset} ({damaged_bytes} damaged bytes in {regions} region(s)); \
                 {records} records are intact. Back the file up, then start once with --repair \
                 to keep every intact record and drop only the damaged bytes",
                path.display()
            ),
            JournalError::Cancelled { path } => {
                write!(f, "{}: replay stopped by a stop request", path.display())
            }
            JournalError::Locked { path, lock, pid } => {
                write!(f, "{}: in use by another wwep-server", path.display())?;
                if let Some(pid) = pid {
                    write!(f, " (PID {pid})")?;
                }
                write!(
                    f,
                    ", which holds {}; one server per data file",
                    lock.display()
                )
            }
        }
    }
}

impl std::error::Error for JournalError {}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl Fn(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// What opening the data file did, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenReport {
    pub created: bool,
    /// Good records replayed (with `--repair`, those after damage too).
    pub records: u64,
    /// Bytes trimmed from the end: a record cut short plus any zeros after it.
    pub torn_bytes: u64,
    /// Of `torn_bytes`, the zeros at the very end.
    pub zero_bytes: u64,
    /// Bytes dropped by `--repair`: every damaged byte, and the tail.
    pub repaired_bytes: u64,
    /// Damage found (only ever non-empty with `--repair`; otherwise opening fails).
    pub damage: Damage,
    /// Where `--repair` kept the damaged original.
    pub damaged_copy: Option<PathBuf>,
}

/// The store's side of a commit: makes a durable batch visible, in file order.
pub trait Publish {
    fn publish(&self, records: &[(Key, u16)]);
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
    records: Vec<(Key, u16)>,
    outcome: Arc<Outcome>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: Vec::new(),
            records: Vec::new(),
            outcome: Outcome::new(),
        }
    }
}

struct State {
    file: Arc<File>,
    /// Length of the file up to the last batch known written whole.
    good_len: u64,
    open: Batch,
    /// Someone (a writer leading a batch, or a compaction swapping files) owns
    /// the file; everyone else waits on `written`.
    flushing: bool,
    /// A failed write left bytes past `good_len` that could not be cut off yet.
    needs_truncate: bool,
    /// Written since the last fsync (for `everysec`).
    dirty: bool,
    compacting: bool,
    /// A batch failed since the last compaction (a full disk, say).
    failed: bool,
    last_error_log: Option<Instant>,
}

/// The open data file.
pub struct Journal {
    /// `FILE.lock`, held from before the file was opened until the journal
    /// is dropped (or the process exits): one server per data file.
    _lock: DataLock,
    /// The file as the user named it, for messages.
    path: PathBuf,
    /// Where it really is (a symbolic link followed): compaction replaces this
    /// file, and the files kept next to it go beside it.
    real: PathBuf,
    policy: Fsync,
    compaction: CompactionPolicy,
    state: Mutex<State>,
    written: Condvar,
    reserve: Mutex<Reserve>,
}

/// `FILE.reserve`: zeros as large as a compacted copy of the live data, given back
/// when a write fails (a full disk), so that compaction always has room.
struct Reserve {
    path: PathBuf,
    /// The reserve could not grow last time (warned once until it can).
    short: bool,
}

impl Journal {
    /// Opens (or creates) the data file and replays its good records into
    /// `replay`, checking `cancel` between chunks. A tail a crash can leave (a
    /// record cut short, zeros) is trimmed. Damage fails with
    /// [`JournalError::Corrupt`] unless `repair`; then the report says what is
    /// damaged, and the caller must rewrite the file by compaction
    /// (`begin_compaction(.., keep_damaged: true)`) before appending.
    pub fn open(
        path: &Path,
        policy: Fsync,
        compaction: CompactionPolicy,
        repair: bool,
        cancel: &AtomicBool,
        replay: &mut dyn FnMut(Key, u16),
    ) -> Result<(Journal, OpenReport), JournalError> {
        let created = match std::fs::metadata(path) {
            Ok(meta) => match FileKind::of(meta.file_type()) {
                Some(kind) => {
                    return Err(JournalError::NotRegular {
                        path: path.to_path_buf(),
                        kind,
                    });
                }
                None => false,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err(path, "inspect the data file")(e)),
        };
        // One server per data file: the lock is taken before the file is
        // opened, read or written, and held as long as the journal lives.
        let real = real_path(path).map_err(io_err(path, "follow the symbolic link"))?;
        let lock = DataLock::acquire(&real).map_err(|e| match e {
            LockError::Held { pid } => JournalError::Locked {
                path: path.to_path_buf(),
                lock: lock_path(&real),
                pid,
            },
            LockError::Io(source) => JournalError::Io {
                path: lock_path(&real),
                action: "lock the data file",
                source,
            },
        })?;
        // Non-blocking, so a FIFO swapped in after the check cannot hang the open.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io_err(path, "open the data file"))?;
        let meta = file
            .metadata()
            .map_err(io_err(path, "inspect the data file"))?;
        if let Some(kind) = FileKind::of(meta.file_type()) {
            return Err(JournalError::NotRegular {
                path: path.to_path_buf(),
                kind,
            });
        }

        let not_a_journal = |FormatError::NotAJournal| JournalError::NotAJournal {
            path: path.to_path_buf(),
        };
        let mut scanner = Scanner::new();
        let mut chunk = vec![0u8; REPLAY_CHUNK_BYTES];
        let mut offset = 0u64;
        loop {
            if cancel.load(Ordering::Acquire) {
                return Err(JournalError::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            let n = match file.read_at(&mut chunk, offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(path, "read the data file")(e)),
            };
            offset += n as u64;
            scanner
                .push(&chunk[..n], &mut *replay)
                .map_err(not_a_journal)?;
        }
        let scan = scanner.finish(&mut *replay).map_err(not_a_journal)?;

        if let (Some(offset), false) = (scan.damage.first, repair) {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                offset,
                regions: scan.damage.regions,
                damaged_bytes: scan.damage.bytes,
                records: scan.records,
            });
        }
        let mut report = OpenReport {
            created,
            records: scan.records,
            torn_bytes: scan.tail.bytes(),
            zero_bytes: scan.tail.zero_bytes,
            damage: scan.damage,
            ..OpenReport::default()
        };
        let mut good_len = scan.end;
        if scan.blank {
            file.set_len(0)
                .map_err(io_err(path, "truncate the data file"))?;
            (&file)
                .write_all(MAGIC)
                .map_err(io_err(path, "write the data file header"))?;
            good_len = HEADER_BYTES;
        } else if scan.damage.regions > 0 {
            // Rewritten by the caller's compaction; nothing is appended before.
            report.repaired_bytes = scan.damage.bytes + scan.tail.bytes();
            report.torn_bytes = 0;
            report.zero_bytes = 0;
            good_len = offset;
        } else if scan.tail.bytes() > 0 {
            file.set_len(scan.end)
                .map_err(io_err(path, "trim the end of the data file"))?;
        }
        file.sync_all()
            .map_err(io_err(path, "fsync the data file"))?;
        // A compaction cut short by a crash left its temporary file; the data
        // file itself is whole (it is replaced only by a rename).
        let _ = std::fs::remove_file(tmp_path(&real));
        if created {
            sync_dir(&real).map_err(io_err(path, "fsync the data file's directory"))?;
        }
        let journal = Journal {
            _lock: lock,
            path: path.to_path_buf(),
            real: real.clone(),
            policy,
            compaction,
            state: Mutex::new(State {
                file: Arc::new(file),
                good_len,
                open: Batch::new(),
                flushing: false,
                needs_truncate: false,
                dirty: false,
                compacting: false,
                failed: false,
                last_error_log: None,
            }),
            written: Condvar::new(),
            reserve: Mutex::new(Reserve {
                path: suffixed(&real, ".reserve"),
                short: false,
            }),
        };
        Ok((journal, report))
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

    fn wait_written<'a>(&'a self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.written.wait(st).unwrap_or_else(|p| p.into_inner())
    }

    /// Current size of the data file.
    pub fn len(&self) -> u64 {
        self.state().good_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_BYTES
    }

    /// Adds a record to the open batch.
    pub(crate) fn append(&self, key: Key, value: u16) -> Ticket {
        let mut st = self.state();
        st.open.buf.extend_from_slice(&encode_record(key, value));
        st.open.records.push((key, value));
        Ticket(Arc::clone(&st.open.outcome))
    }

    /// Waits until the ticket's batch is written (and, under `always`, on disk)
    /// and published. Writes it, with every record gathered so far, if no one
    /// else is writing.
    pub(crate) fn commit(&self, ticket: Ticket, publish: &dyn Publish) -> Result<(), StorageError> {
        let mut st = self.state();
        loop {
            match ticket.0.get() {
                DONE => return Ok(()),
                FAILED => return Err(StorageError),
                _ => {}
            }
            st = if st.flushing {
                self.wait_written(st)
            } else {
                self.flush_open(st, publish)
            };
        }
    }

    /// Writes the open batch as leader; returns with the lock held again.
    fn flush_open<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        publish: &dyn Publish,
    ) -> MutexGuard<'a, State> {
        let batch = std::mem::replace(&mut st.open, Batch::new());
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
        if result.is_ok() {
            // Visible before anyone is told: a reader never sees a value that
            // could still fail, and a writer's A is never followed by a stale read.
            publish.publish(&batch.records);
        }

        let mut st = self.state();
        match result {
            Ok(()) => {
                st.needs_truncate = false;
                st.good_len += batch.buf.len() as u64;
                st.dirty |= self.policy != Fsync::Always;
                batch.outcome.set(DONE);
            }
            Err(e) => {
                // Nothing of the batch was published. Records gathered meanwhile
                // stay in the open batch and get their own try.
                batch.outcome.set(FAILED);
                st.failed = true;
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
            }
        }
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
            st = self.wait_written(st);
        }
        if !st.dirty {
            return Ok(());
        }
        let file = Arc::clone(&st.file);
        st.dirty = false;
        drop(st);
        file.sync_data().inspect_err(|_| self.state().dirty = true)
    }

    /// Whether the file has outgrown the live data enough to be rewritten: by the
    /// policy, or after a failed write (a full disk) once it holds any dead records.
    pub fn wants_compaction(&self, live_registers: usize) -> bool {
        let st = self.state();
        let live = HEADER_BYTES + (live_registers * RECORD_BYTES) as u64;
        !st.compacting
            && ((st.good_len >= self.compaction.min_bytes
                && st.good_len as f64 > live as f64 * self.compaction.ratio)
                || (st.failed && st.good_len > live))
    }

    /// Starts a rewrite (if none is running and, without `force`, the file wants
    /// one): the store then [`push`](Compaction::push)es a snapshot of every
    /// register and calls [`finish_compaction`](Journal::finish_compaction). The
    /// snapshot need not be consistent: every batch published after this call is
    /// also copied after it, so for each register the last record is the latest.
    /// With `keep_damaged`, the current file is kept as `FILE.damaged-TIMESTAMP`.
    pub(crate) fn begin_compaction(
        &self,
        force: bool,
        live_registers: usize,
        keep_damaged: bool,
    ) -> Result<Option<Compaction>, JournalError> {
        if !force && !self.wants_compaction(live_registers) {
            return Ok(None);
        }
        let mut st = self.state();
        if st.compacting {
            return Ok(None);
        }
        // Everything up to `good_len` is published once no batch is in flight.
        while st.flushing {
            st = self.wait_written(st);
        }
        st.compacting = true;
        let start = st.good_len;
        let before = st.good_len;
        let disk_trouble = st.failed;
        drop(st);
        if disk_trouble {
            self.release_reserve();
        }
        let tmp = tmp_path(&self.real);
        let created = (|| {
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .open(&tmp)?;
            // The new file takes the old one's place: with its permissions too.
            if let Ok(meta) = std::fs::metadata(&self.real) {
                file.set_permissions(meta.permissions())?;
            }
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(MAGIC)?;
            Ok(out)
        })();
        match created {
            Ok(out) => Ok(Some(Compaction {
                tmp,
                out,
                error: None,
                bytes: HEADER_BYTES,
                unsynced: 0,
                sync_every: (self.policy == Fsync::Always).then_some(SNAPSHOT_SYNC_BYTES),
                copied_to: start,
                before,
                keep_damaged,
            })),
            Err(e) => {
                self.state().compacting = false;
                let _ = std::fs::remove_file(&tmp);
                Err(io_err(&self.path, "create the compacted data file")(e))
            }
        }
    }

    /// Ends a rewrite: catches up with batches written meanwhile (unlocked, until
    /// little is left), fsyncs, then briefly holds the batches back for the last
    /// records, the rename and the directory fsync, and continues on the new file.
    pub(crate) fn finish_compaction(
        &self,
        c: Compaction,
    ) -> Result<CompactionReport, JournalError> {
        let tmp = c.tmp.clone();
        let result = self.swap_in(c);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        self.state().compacting = false;
        result
    }

    /// Drops a rewrite that was begun: the data file stays as it is.
    pub(crate) fn abandon_compaction(&self, c: Compaction) {
        let tmp = c.tmp.clone();
        drop(c);
        let _ = std::fs::remove_file(&tmp);
        self.state().compacting = false;
    }

    fn swap_in(&self, c: Compaction) -> Result<CompactionReport, JournalError> {
        let failed = |action| io_err(&self.path, action);
        if let Some(e) = c.error {
            return Err(failed("write the compacted data file")(e));
        }
        let new = c
            .out
            .into_inner()
            .map_err(|e| failed("write the compacted data file")(e.into_error()))?;
        let mut copy = CatchUp {
            old: Arc::clone(&self.state().file),
            new: &new,
            copied_to: c.copied_to,
        };
        let copy_failed = failed("copy new records into the compacted data file");
        let fsync_failed = failed("fsync the compacted data file");
        for _ in 0..8 {
            let to = self.state().good_len;
            if copy.to(to).map_err(&copy_failed)? < CATCH_UP_BYTES {
                break;
            }
        }
        new.sync_data().map_err(&fsync_failed)?;
        copy.to(self.state().good_len).map_err(&copy_failed)?;

        // From here on no batch is written until the new file is in place.
        let mut st = self.state();
        while st.flushing {
            st = self.wait_written(st);
        }
        st.flushing = true;
        let to = st.good_len;
        drop(st);
        let held = Instant::now();
        let renamed = (|| {
            copy.to(to).map_err(&copy_failed)?;
            // The bulk is on disk already. The last records need to be before
            // the rename only if they were acknowledged as on disk; otherwise
            // a power cut can at worst cut them short, which startup trims.
            if self.policy == Fsync::Always {
                new.sync_data().map_err(&fsync_failed)?;
            }
            let kept = match c.keep_damaged {
                true => Some(
                    keep_copy(&self.real)
                        .map_err(failed("keep a copy of the damaged data file"))?,
                ),
                false => None,
            };
            std::fs::rename(&c.tmp, &self.real)
                .map_err(failed("replace the data file with its compacted copy"))?;
            Ok(kept)
        })();
        // Batches acknowledged from now on go to the new file: under `always`
        // its name must be on disk first.
        let dir_synced = match (&renamed, self.policy) {
            (Ok(_), Fsync::Always) => sync_dir(&self.real),
            _ => Ok(()),
        };
        let after = c.bytes + (copy.copied_to - c.copied_to);
        drop(copy);
        let mut st = self.state();
        let mut old = None;
        let result = renamed.map(|kept| {
            // The new file is the data file now: continue on it whatever follows.
            old = Some(std::mem::replace(&mut st.file, Arc::new(new)));
            st.good_len = after;
            st.needs_truncate = false;
            st.dirty = self.policy != Fsync::Always;
            st.failed = false;
            CompactionReport {
                before: c.before.max(to),
                after,
                damaged_copy: kept,
                held_batches: held.elapsed(),
            }
        });
        st.flushing = false;
        self.written.notify_all();
        drop(st);
        // Closing the replaced file frees its blocks: not while batches wait.
        drop(old);
        dir_synced.map_err(failed("fsync the data file's directory"))?;
        let report = result?;
        if self.policy != Fsync::Always {
            sync_dir(&self.real).map_err(failed("fsync the data file's directory"))?;
        }
        Ok(report)
    }
}

impl Journal {
    fn reserve(&self) -> MutexGuard<'_, Reserve> {
        self.reserve.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the reserve is kept.
    pub fn reserve_path(&self) -> PathBuf {
        self.reserve().path.clone()
    }

    /// Grows `FILE.reserve` towards the size a compacted copy of
    /// `live_registers` needs (a step at a time); never shrinks it. Returns its size.
    pub fn keep_reserve(&self, live_registers: usize) -> u64 {
        let mut reserve = self.reserve();
        let live = HEADER_BYTES + (live_registers * RECORD_BYTES) as u64 + RESERVE_SLACK_BYTES;
        let target = live.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let grown = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&reserve.path)?;
            let len = file.metadata()?.len();
            if len >= target {
                return Ok(len);
            }
            let goal = target.min(len + RESERVE_STEP_BYTES);
            let zeros = vec![0u8; (goal - len).min(1 << 20) as usize];
            let mut at = len;
            while at < goal {
                let n = zeros.len().min((goal - at) as usize);
                if let Err(e) = file.write_all_at(&zeros[..n], at) {
                    let _ = file.set_len(len);
                    return Err(e);
                }
                at += n as u64;
            }
            Ok(goal)
        })();
        match grown {
            Ok(len) => {
                reserve.short = false;
                len
            }
            Err(e) => {
                if !reserve.short {
                    log::warn!(
                        "{}: cannot reserve room for compaction ({e}); a full disk may need space freed by hand",
                        reserve.path.display()
                    );
                }
                reserve.short = true;
                std::fs::metadata(&reserve.path)
                    .map(|m| m.len())
                    .unwrap_or(0)
            }
        }
    }

    /// Gives the reserve's space back to the file system for a compaction.
    fn release_reserve(&self) {
        let reserve = self.reserve();
        match OpenOptions::new().write(true).open(&reserve.path) {
            Ok(file) => {
                if let Err(e) = file.set_len(0) {
                    log::warn!("{}: cannot release: {e}", reserve.path.display());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{}: cannot release: {e}", reserve.path.display()),
        }
    }
}

/// Copies what batches appended to the live file into the compacted one.
struct CatchUp<'a> {
    old: Arc<File>,
    new: &'a File,
    /// The live file is copied from here on.
    copied_to: u64,
}

impl CatchUp<'_> {
    /// Copies up to offset `to` of the live file; returns how many bytes.
    fn to(&mut self, to: u64) -> io::Result<u64> {
        let mut buf = vec![0u8; (1 << 20).min(to.saturating_sub(self.copied_to)) as usize];
        let from = self.copied_to;
        while self.copied_to < to {
            let want = buf.len().min((to - self.copied_to) as usize);
            let n = self.old.read_at(&mut buf[..want], self.copied_to)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the data file is shorter than written",
                ));
            }
            let mut new = self.new;
            new.write_all(&buf[..n])?;
            self.copied_to += n as u64;
        }
        Ok(self.copied_to - from)
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Where the data file really is: a symbolic link followed (even one whose
/// target does not exist yet), so that compaction replaces the real file and
/// two servers given two links to one file take one lock.
fn real_path(path: &Path) -> io::Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(path) {
            Ok(real) => Ok(real),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let target = std::fs::read_link(path)?;
                Ok(match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                })
            }
            Err(e) => Err(e),
        },
        _ => Ok(path.to_path_buf()),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    suffixed(path, ".compact.tmp")
}

/// Keeps the file as `FILE.damaged-YYYYMMDDTHHMMSSZ` (a hard link, or a copy
/// where links are not possible); returns the name.
fn keep_copy(path: &Path) -> io::Result<PathBuf> {
    let stamp = utc_stamp(SystemTime::now());
    for n in 0..100 {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".damaged-{stamp}"));
        if n > 0 {
            name.push(format!("-{n}"));
        }
        let target = PathBuf::from(name);
        if target.exists() {
            continue;
        }
        if std::fs::hard_link(path, &target).is_err() {
            std::fs::copy(path, &target)?;
            File::open(&target)?.sync_all()?;
        }
        sync_dir(path)?;
        return Ok(target);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "too many damaged copies with the same timestamp",
    ))
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
pub(crate) fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A rewrite in progress: the snapshot goes to a temporary file.
pub(crate) struct Compaction {
    tmp: PathBuf,
    out: BufWriter<File>,
    error: Option<io::Error>,
    /// Bytes of the snapshot, header included.
    bytes: u64,
    /// Snapshot bytes written since the last fsync, and how many to allow.
    unsynced: u64,
    sync_every: Option<u64>,
    /// The live file is copied from here on after the snapshot.
    copied_to: u64,
    before: u64,
    keep_damaged: bool,
}

impl Compaction {
    /// Adds a register to the snapshot; the first error is reported by `finish`.
    pub(crate) fn push(&mut self, key: Key, value: u16) {
        if self.error.is_some() {
            return;
        }
        let mut written = self.out.write_all(&encode_record(key, value));
        self.bytes += RECORD_BYTES as u64;
        self.unsynced += RECORD_BYTES as u64;
        if let (Ok(()), Some(every)) = (&written, self.sync_every)
            && self.unsynced >= every
        {
            // Under `always` every batch fsyncs the file system's journal, which
            // then also waits for whatever of the snapshot is still unwritten:
            // keep that small, and leave the disk idle for as long as each part
            // took to write, so the writers' fsyncs get at least half of it.
            self.unsynced = 0;
            let began = Instant::now();
            written = self
                .out
                .flush()
                .and_then(|()| self.out.get_ref().sync_data());
            std::thread::sleep(began.elapsed().min(Duration::from_millis(100)));
        }
        if let Err(e) = written {
            self.error = Some(e);
        }
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionReport {
    pub before: u64,
    pub after: u64,
    /// Where a repair kept the damaged original.
    pub damaged_copy: Option<PathBuf>,
    /// How long batches were held back while the new file was put in place (the
    /// longest any write waited on the compaction itself).
    pub held_batches: Duration,
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
    use std::sync::Mutex;

    /// What was published, in order.
    #[derive(Default)]
    struct Published(Mutex<Vec<(Key, u16)>>);

    impl Publish for Published {
        fn publish(&self, records: &[(Key, u16)]) {
            self.0.lock().unwrap().extend_from_slice(records);
        }
    }

    impl Published {
        fn all(&self) -> Vec<(Key, u16)> {
            self.0.lock().unwrap().clone()
        }
    }

    fn file(records: &[(Key, u16)]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for &(k, v) in records {
            bytes.extend(encode_record(k, v));
        }
        bytes
    }

    type Opened = (Journal, OpenReport, Vec<(Key, u16)>);

    fn open(path: &Path, repair: bool) -> Result<Opened, JournalError> {
        let mut replay = Vec::new();
        let (j, r) = Journal::open(
            path,
            Fsync::Never,
            CompactionPolicy::default(),
            repair,
            &AtomicBool::new(false),
            &mut |k, v| replay.push((k, v)),
        )?;
        Ok((j, r, replay))
    }

    #[test]
    fn fsync_names_round_trip() {
        use clap::ValueEnum;
        for f in [Fsync::Always, Fsync::EverySec, Fsync::Never] {
            assert_eq!(Fsync::parse(f.name()), Some(f));
            assert_eq!(Fsync::from_str(f.name(), false), Ok(f));
        }
        assert_eq!(Fsync::from_str("no", false), Ok(Fsync::Never));
        assert_eq!(Fsync::parse("sometimes"), None);
    }

    #[test]
    fn utc_stamps() {
        let at = |s| utc_stamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_735_689_599), "20241231T235959Z");
    }

    #[test]
    fn every_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");

        let err = open(dir.path(), false).err().unwrap();
        assert!(
            matches!(
                err,
                JournalError::NotRegular {
                    kind: FileKind::Directory,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(dir.path().to_str().unwrap()));

        std::fs::write(&path, b"something else entirely").unwrap();
        let err = open(&path, true).err().unwrap();
        assert!(matches!(err, JournalError::NotAJournal { .. }), "{err}");
        assert!(
            err.to_string().contains("data: not a wwep data file"),
            "{err}"
        );

        let mut bytes = file(&[((1, 1), 1), ((2, 2), 2), ((3, 3), 3)]);
        bytes[8 + 9 + 1] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = open(&path, false).err().unwrap();
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    offset: 17,
                    regions: 1,
                    damaged_bytes: 9,
                    records: 2,
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("byte 17") && text.contains("--repair"),
            "{text}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "a refused file is left as it was"
        );

        let cancel = AtomicBool::new(true);
        let err = Journal::open(
            &path,
            Fsync::Never,
            CompactionPolicy::default(),
            true,
            &cancel,
            &mut |_, _| {},
        )
        .err()
        .unwrap();
        assert!(matches!(err, JournalError::Cancelled { .. }), "{err}");
        assert!(err.to_string().contains("data: replay stopped"), "{err}");

        let err = JournalError::Io {
            path: path.clone(),
            action: "read the data file",
            source: io::Error::other("boom"),
        };
        assert!(
            err.to_string()
                .ends_with("data: cannot read the data file: boom"),
            "{err}"
        );
    }

    #[test]
    fn a_stop_request_during_replay_is_noticed_within_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let records: Vec<_> = (0..200_000u32)
            .map(|i| (((i >> 8) as u16, i as u8), 1))
            .collect();
        std::fs::write(&path, file(&records)).unwrap();
        let cancel = AtomicBool::new(false);
        let mut replayed = 0usize;
        let result = Journal::open(
            &path,
            Fsync::Never,
            CompactionPolicy::default(),
            false,
            &cancel,
            &mut |_, _| {
                replayed += 1;
                if replayed == 1000 {
                    cancel.store(true, Ordering::Release);
                }
            },
        );
        assert!(matches!(result, Err(JournalError::Cancelled { .. })));
        assert!(
            replayed <= 1000 + REPLAY_CHUNK_BYTES / RECORD_BYTES + 1,
            "{replayed} records replayed after the request"
        );
        assert_eq!(std::fs::read(&path).unwrap(), file(&records), "untouched");
    }

    #[test]
    fn tails_are_trimmed_and_new_records_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let mut bytes = file(&[((1, 1), 1), ((2, 2), 2)]);
        bytes.extend([0u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let (j, report, replay) = open(&path, false).unwrap();
        assert_eq!(replay, vec![((1, 1), 1), ((2, 2), 2)]);
        assert_eq!(
            (report.torn_bytes, report.zero_bytes, report.repaired_bytes),
            (4096, 4096, 0)
        );
        let published = Published::default();
        j.commit(j.append((3, 3), 3), &published).unwrap();
        drop(j);
        let (_, report, replay) = open(&path, false).unwrap();
        assert_eq!(replay.len(), 3);
        assert_eq!(report.torn_bytes, 0);
    }

    #[test]
    fn a_batch_is_published_only_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _, _) = open(&dir.path().join("data"), false).unwrap();
        let published = Published::default();
        let ticket = j.append((1, 1), 7);
        assert!(published.all().is_empty(), "not visible while pending");
        j.commit(ticket, &published).unwrap();
        assert_eq!(published.all(), [((1, 1), 7)]);
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let real = j.swap_file_for_test(full);
        assert_eq!(j.commit(j.append((1, 1), 8), &published), Err(StorageError));
        assert_eq!(published.all(), [((1, 1), 7)], "a failed batch never shows");
        j.swap_file_for_test(real);
        j.commit(j.append((2, 2), 9), &published).unwrap();
        assert_eq!(published.all(), [((1, 1), 7), ((2, 2), 9)]);
    }
}
