//! The log: the append-only data file that makes writes durable, opened and
//! replayed at startup, appended to by group commit. It speaks records and
//! batches; the register map is the store's, and the journal only reaches it
//! through [`Publish`].
//!
//! Writers add their record to the open batch (`Journal::append`) and wait for
//! it (`Journal::commit`): one writer at a time writes every record gathered
//! meanwhile (group commit), fsyncs under `Fsync::Always`, and hands the batch to
//! [`Publish`] before any of its writers is told it succeeded. A value is therefore
//! visible only once its record is in the file (on disk under `always`); a batch
//! that cannot be written was never visible, so there is nothing to undo.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::fs::OFlags;

use super::files::{dir_of, real_path, sync_dir, tmp_path};
use super::policy::{CompactionPolicy, Fsync};
use super::reserve::Reserve;
use crate::input_file::FileKind;
use crate::io_cause::IoCause;
use crate::store::format::{
    Damage, FormatError, HEADER_BYTES, Key, MAGIC, Region, Scan, Scanner, encode_record,
};
use crate::store::lock::{DataLock, LockError, lock_path};

/// How much of the file is read at a time at startup; a stop request is noticed
/// between reads (every ~29,000 records).
const REPLAY_CHUNK_BYTES: usize = 256 * 1024;

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
        /// The first damaged region.
        first: Region,
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
                first,
                regions,
                damaged_bytes,
                records,
            } => write!(
                f,
                "{}: {first} ({damaged_bytes} damaged bytes in {regions} region(s) in all); \
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

impl JournalError {
    /// What kind of failure it is, from the OS error (an I/O error for a
    /// failure that is not one).
    pub fn cause(&self) -> IoCause {
        match self {
            JournalError::Io { source, .. } => IoCause::of(source),
            _ => IoCause::Io,
        }
    }
}

pub(crate) fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl Fn(io::Error) -> JournalError + 'a {
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
    /// What a crash or a power cut left (trimmed, or with no header, the
    /// file started afresh): one region of one kind, at most.
    pub leftover: Option<Region>,
    /// Bytes dropped by `--repair`: every damaged byte, and the leftover.
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

/// Where one batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Pending = 0,
    Done = 1,
    Failed = 2,
}

/// The [`Stage`] of one batch, shared by every writer whose record is in it.
struct Outcome(AtomicU8);

impl Outcome {
    fn new() -> Arc<Outcome> {
        Arc::new(Outcome(AtomicU8::new(Stage::Pending as u8)))
    }
    fn get(&self) -> Stage {
        match self.0.load(Ordering::Acquire) {
            1 => Stage::Done,
            2 => Stage::Failed,
            _ => Stage::Pending,
        }
    }
    fn set(&self, stage: Stage) {
        self.0.store(stage as u8, Ordering::Release)
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

pub(crate) struct State {
    pub(crate) file: Arc<File>,
    /// Length of the file up to the last batch known written whole.
    pub(crate) good_len: u64,
    open: Batch,
    /// Someone (a writer leading a batch, or a compaction swapping files) owns
    /// the file; everyone else waits on `written`.
    pub(crate) flushing: bool,
    /// A failed write left bytes past `good_len` that could not be cut off yet.
    pub(crate) needs_truncate: bool,
    /// Written since the last fsync (for `everysec`).
    pub(crate) dirty: bool,
    pub(crate) compacting: bool,
    /// A batch failed since the last compaction (a full disk, say).
    pub(crate) failed: bool,
    last_error_log: Option<Instant>,
}

impl State {
    fn new(file: File, good_len: u64) -> State {
        State {
            file: Arc::new(file),
            good_len,
            open: Batch::new(),
            flushing: false,
            needs_truncate: false,
            dirty: false,
            compacting: false,
            failed: false,
            last_error_log: None,
        }
    }
}

/// The open data file.
pub struct Journal {
    /// `FILE.lock`, held from before the file was opened until the journal
    /// is dropped (or the process exits): one server per data file.
    _lock: DataLock,
    /// The file as the user named it, for messages.
    pub(crate) path: PathBuf,
    /// Where it really is (a symbolic link followed): compaction replaces this
    /// file, and the files kept next to it go beside it.
    pub(crate) real: PathBuf,
    pub(crate) policy: Fsync,
    pub(crate) compaction: CompactionPolicy,
    pub(crate) state: Mutex<State>,
    pub(crate) written: Condvar,
    reserve: Mutex<Reserve>,
}

impl Journal {
    /// Opens (or creates) the data file and replays its good records into
    /// `replay`, checking `cancel` between chunks. `FILE.lock` is taken first
    /// and held while the journal lives: a file another process has open fails
    /// with [`JournalError::Locked`] before a byte of it is read. A tail a crash
    /// can leave (a record cut short, zeros) is trimmed. Damage fails with
    /// [`JournalError::Corrupt`] unless `repair`; then the report says what is
    /// damaged, and the caller must rewrite the file by compaction
    /// (`begin_compaction(.., Replaced::KeptAsDamaged)`) before appending.
    pub fn open(
        path: &Path,
        policy: Fsync,
        compaction: CompactionPolicy,
        repair: bool,
        cancel: &AtomicBool,
        replay: &mut dyn FnMut(Key, u16),
    ) -> Result<(Journal, OpenReport), JournalError> {
        let created = !exists_as_file(path)?;
        let (real, lock) = lock(path)?;
        let file = open_file(path)?;
        let (scan, file_len) = replay_file(&file, path, cancel, replay)?;
        if let (Some(first), false) = (scan.damage.first(), repair) {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                first,
                regions: scan.damage.regions,
                damaged_bytes: scan.damage.bytes,
                records: scan.records,
            });
        }
        let mut report = OpenReport {
            created,
            records: scan.records,
            leftover: scan.leftover,
            damage: scan.damage.clone(),
            ..OpenReport::default()
        };
        let good_len = settle(&file, path, &scan, file_len, &mut report)?;
        // A compaction cut short by a crash left its temporary file; the data
        // file itself is whole (it is replaced only by a rename).
        let _ = std::fs::remove_file(tmp_path(&real));
        if created {
            sync_dir(&real).map_err(io_err(path, "fsync the data file's directory"))?;
        }
        let journal = Journal {
            _lock: lock,
            path: path.to_path_buf(),
            reserve: Mutex::new(Reserve::beside(&real)),
            real,
            policy,
            compaction,
            state: Mutex::new(State::new(file, good_len)),
            written: Condvar::new(),
        };
        Ok((journal, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn policy(&self) -> Fsync {
        self.policy
    }

    /// The directory the data file really is in, where compaction writes.
    pub fn directory(&self) -> &Path {
        dir_of(&self.real)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn wait_written<'a>(&'a self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
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
                Stage::Done => return Ok(()),
                Stage::Failed => return Err(StorageError),
                Stage::Pending => {}
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

        let result = self.write_batch(&file, truncate_to, &batch.buf);
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
                batch.outcome.set(Stage::Done);
            }
            Err(e) => {
                // Nothing of the batch was published. Records gathered meanwhile
                // stay in the open batch and get their own try.
                batch.outcome.set(Stage::Failed);
                self.batch_failed(&mut st, &file, &e);
            }
        }
        st.flushing = false;
        self.written.notify_all();
        st
    }

    /// Writes a batch at the end of `file`, first cutting off what a failed
    /// write left (`truncate_to`); fsyncs under `always`.
    fn write_batch(&self, file: &File, truncate_to: Option<u64>, bytes: &[u8]) -> io::Result<()> {
        if let Some(len) = truncate_to {
            file.set_len(len)?;
        }
        (&*file).write_all(bytes)?;
        if self.policy == Fsync::Always {
            file.sync_data()?;
        }
        Ok(())
    }

    /// A batch could not be written: what it left is cut off (or marked to be,
    /// before the next batch), compaction is wanted, and the error is logged at
    /// most once a second.
    fn batch_failed(&self, st: &mut State, file: &File, e: &io::Error) {
        st.failed = true;
        let len = st.good_len;
        st.needs_truncate = file.set_len(len).is_err();
        let now = Instant::now();
        if st
            .last_error_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            st.last_error_log = Some(now);
            let cause = IoCause::of(e);
            log::error!(
                "{}: cannot write the data file ({cause}: {e}); writes get X until it works again; {}",
                self.path.display(),
                cause.remedy(self.directory())
            );
        }
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

    /// Where the reserve is kept.
    pub fn reserve_path(&self) -> PathBuf {
        self.reserve().path().to_path_buf()
    }

    /// Grows `FILE.reserve` towards the size a compacted copy of
    /// `live_registers` needs (a step at a time); never shrinks it. Returns its size.
    pub fn keep_reserve(&self, live_registers: usize) -> u64 {
        self.reserve().keep(live_registers)
    }

    /// Gives the reserve's space back to the file system for a compaction.
    pub(crate) fn release_reserve(&self) {
        self.reserve().release();
    }

    fn reserve(&self) -> MutexGuard<'_, Reserve> {
        self.reserve.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `path` is a file already (false: it is not there yet); anything
/// else there is refused.
fn exists_as_file(path: &Path) -> Result<bool, JournalError> {
    match std::fs::metadata(path) {
        Ok(meta) => match FileKind::of(meta.file_type()) {
            Some(kind) => Err(JournalError::NotRegular {
                path: path.to_path_buf(),
                kind,
            }),
            None => Ok(true),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path, "inspect the data file")(e)),
    }
}

/// One server per data file: the lock is taken before the file is opened,
/// read or written, and held as long as the journal lives. With where the
/// file really is.
fn lock(path: &Path) -> Result<(PathBuf, DataLock), JournalError> {
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
    Ok((real, lock))
}

/// Opens (or creates) the file for appending and reading, and checks again
/// that it is a file.
fn open_file(path: &Path) -> Result<File, JournalError> {
    // Non-blocking, so a FIFO swapped in after the check cannot hang the open.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
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
    Ok(file)
}

/// Reads the whole file a chunk at a time through the [`Scanner`], every
/// good record to `replay`; with the scan's verdict and how many bytes were
/// read.
fn replay_file(
    file: &File,
    path: &Path,
    cancel: &AtomicBool,
    replay: &mut dyn FnMut(Key, u16),
) -> Result<(Scan, u64), JournalError> {
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
    Ok((scan, offset))
}

/// Makes the file what the scan found it should be, and fsyncs it: a blank
/// file gets its header, a crash's tail is trimmed, a damaged file (with
/// `--repair`) is left whole for the compaction that rewrites it. Returns the
/// length new batches append at.
fn settle(
    file: &File,
    path: &Path,
    scan: &Scan,
    file_len: u64,
    report: &mut OpenReport,
) -> Result<u64, JournalError> {
    let mut good_len = scan.end;
    let leftover = scan.leftover.map_or(0, |r| r.bytes);
    if scan.blank {
        file.set_len(0)
            .map_err(io_err(path, "truncate the data file"))?;
        (&*file)
            .write_all(MAGIC)
            .map_err(io_err(path, "write the data file header"))?;
        good_len = HEADER_BYTES;
    } else if scan.damage.regions > 0 {
        // Rewritten by the caller's compaction; nothing is appended before.
        report.repaired_bytes = scan.damage.bytes + leftover;
        good_len = file_len;
    } else if leftover > 0 {
        file.set_len(scan.end)
            .map_err(io_err(path, "trim the end of the data file"))?;
    }
    file.sync_all()
        .map_err(io_err(path, "fsync the data file"))?;
    Ok(good_len)
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

#[cfg(test)]
impl Journal {
    /// Points the journal at another file, to make writes fail (`/dev/full`).
    pub(crate) fn swap_file_for_test(&self, file: File) -> File {
        let mut st = self.state();
        let old = std::mem::replace(&mut st.file, Arc::new(file));
        Arc::try_unwrap(old).unwrap_or_else(|_| panic!("file in use"))
    }
}

/// Runs `open` again while it is refused by a lock that names this process.
/// A test that drops a journal and opens its file again can race another
/// test's child process, which holds a copy of every descriptor (the lock's
/// too) between its fork and its exec; the kernel releases an `flock` only
/// when the last copy closes. Any other refusal, or ten seconds, returns.
#[cfg(test)]
pub(crate) fn wait_out_own_lock<T>(
    mut open: impl FnMut() -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Err(JournalError::Locked { pid: Some(pid), .. })
                if pid == std::process::id() && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::{DamageKind, RECORD_BYTES};
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
        wait_out_own_lock(|| {
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
        })
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
                    first: Region {
                        kind: DamageKind::NotRecords,
                        offset: 17,
                        bytes: 9
                    },
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
        let zeros = Region {
            kind: DamageKind::ZerosAtEnd,
            offset: 26,
            bytes: 4096,
        };
        assert_eq!((report.leftover, report.repaired_bytes), (Some(zeros), 0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 26, "trimmed");
        let published = Published::default();
        j.commit(j.append((3, 3), 3), &published).unwrap();
        drop(j);
        let (_, report, replay) = open(&path, false).unwrap();
        assert_eq!(replay.len(), 3);
        assert_eq!(report.leftover, None);
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
