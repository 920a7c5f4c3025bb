//! Compaction: the data file rewritten as a snapshot of the live registers
//! without stopping writers. The store hands the snapshot to a temporary file
//! ([`Compaction::push`]); then the batches written meanwhile are copied from
//! the old file, the new one is fsynced and renamed over it. Only the last
//! short catch-up and the rename (under `always`, with an fsync of that
//! catch-up and of the directory) happen while batches wait.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files::{keep_copy, sync_dir, tmp_path};
use super::log_file::{Journal, JournalError, io_err};
use super::policy::Fsync;
use crate::store::format::{HEADER_BYTES, Key, MAGIC, RECORD_BYTES, encode_record};

/// Compaction catches up with the live file unlocked until less than this is left.
const CATCH_UP_BYTES: u64 = 64 * 1024;
/// Under `always`, the snapshot is fsynced every this many bytes as it is written.
const SNAPSHOT_SYNC_BYTES: u64 = 2 << 20;

/// Whether a rewrite waits until the file has outgrown the live data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    IfOutgrown,
    Now,
}

/// What becomes of the file a rewrite replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    Dropped,
    /// Kept as `FILE.damaged-TIMESTAMP` (a `--repair`).
    KeptAsDamaged,
}

impl Journal {
    /// Whether the file has outgrown the live data enough to be rewritten: by the
    /// policy, or after a failed write (a full disk) once it holds any dead records.
    pub fn wants_compaction(&self, live_registers: usize) -> bool {
        let st = self.state();
        let live = HEADER_BYTES + (live_registers * RECORD_BYTES) as u64;
        !st.compacting
            && (self.compaction.outgrown(st.good_len, live) || (st.failed && st.good_len > live))
    }

    /// Starts a rewrite (if none is running and, unless [`Rewrite::Now`], the
    /// file wants one): the store then [`push`](Compaction::push)es a snapshot
    /// of every register and calls [`finish_compaction`](Journal::finish_compaction). The
    /// snapshot need not be consistent: every batch published after this call is
    /// also copied after it, so for each register the last record is the latest.
    /// With [`Replaced::KeptAsDamaged`], the current file is kept as
    /// `FILE.damaged-TIMESTAMP`.
    pub(crate) fn begin_compaction(
        &self,
        when: Rewrite,
        live_registers: usize,
        replaced: Replaced,
    ) -> Result<Option<Compaction>, JournalError> {
        if when == Rewrite::IfOutgrown && !self.wants_compaction(live_registers) {
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
        let disk_trouble = st.failed;
        drop(st);
        if disk_trouble {
            self.release_reserve();
        }
        let tmp = tmp_path(&self.real);
        match self.create_snapshot_file(&tmp) {
            Ok(out) => Ok(Some(Compaction {
                tmp,
                out,
                error: None,
                bytes: HEADER_BYTES,
                unsynced: 0,
                sync_every: (self.policy == Fsync::Always).then_some(SNAPSHOT_SYNC_BYTES),
                copied_to: start,
                before: start,
                replaced,
            })),
            Err(e) => {
                self.state().compacting = false;
                let _ = std::fs::remove_file(&tmp);
                Err(io_err(&self.path, "create the compacted data file")(e))
            }
        }
    }

    /// The temporary file, new (a leftover is removed first), with the data
    /// file's permissions and the header written.
    fn create_snapshot_file(&self, tmp: &PathBuf) -> io::Result<BufWriter<File>> {
        match std::fs::remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(tmp)?;
        // The new file takes the old one's place: with its permissions too.
        if let Ok(meta) = std::fs::metadata(&self.real) {
            file.set_permissions(meta.permissions())?;
        }
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC)?;
        Ok(out)
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

    /// Puts the snapshot in place of the data file: catches up unlocked, holds
    /// the batches back for the last records and the rename, then continues
    /// on the new file.
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
        self.catch_up(&mut copy)?;
        // From here on no batch is written until the new file is in place.
        let to = self.hold_batches();
        let held = Instant::now();
        let renamed = self.put_in_place(&mut copy, to, &c.tmp, c.replaced);
        // Batches acknowledged from now on go to the new file: under `always`
        // its name must be on disk first.
        let dir_synced = match (&renamed, self.policy) {
            (Ok(_), Fsync::Always) => sync_dir(&self.real),
            _ => Ok(()),
        };
        let after = c.bytes + (copy.copied_to - c.copied_to);
        drop(copy);
        let report = renamed.map(|kept| CompactionReport {
            before: c.before.max(to),
            after,
            damaged_copy: kept,
            held_batches: held.elapsed(),
        });
        // The new file is the data file now: continue on it whatever follows.
        self.resume_batches(report.is_ok().then_some((new, after)));
        dir_synced.map_err(failed("fsync the data file's directory"))?;
        let report = report?;
        if self.policy != Fsync::Always {
            sync_dir(&self.real).map_err(failed("fsync the data file's directory"))?;
        }
        Ok(report)
    }

    /// Copies the batches written since the snapshot began, unlocked, until
    /// little is left (at most 8 rounds), fsyncs the new file and copies once
    /// more.
    fn catch_up(&self, copy: &mut CatchUp<'_>) -> Result<(), JournalError> {
        let copy_failed = io_err(&self.path, "copy new records into the compacted data file");
        for _ in 0..8 {
            let to = self.state().good_len;
            if copy.to(to).map_err(&copy_failed)? < CATCH_UP_BYTES {
                break;
            }
        }
        copy.new
            .sync_data()
            .map_err(io_err(&self.path, "fsync the compacted data file"))?;
        copy.to(self.state().good_len).map_err(&copy_failed)?;
        Ok(())
    }

    /// Waits for the batch in flight, then keeps every other one back; returns
    /// the length of the file they leave.
    fn hold_batches(&self) -> u64 {
        let mut st = self.state();
        while st.flushing {
            st = self.wait_written(st);
        }
        st.flushing = true;
        st.good_len
    }

    /// With the batches held: the last records copied (and fsynced under
    /// `always`), the damaged original kept if asked, and the rename. Returns
    /// where the damaged original was kept.
    fn put_in_place(
        &self,
        copy: &mut CatchUp<'_>,
        to: u64,
        tmp: &PathBuf,
        replaced: Replaced,
    ) -> Result<Option<PathBuf>, JournalError> {
        let failed = |action| io_err(&self.path, action);
        copy.to(to)
            .map_err(failed("copy new records into the compacted data file"))?;
        // The bulk is on disk already. The last records need to be before
        // the rename only if they were acknowledged as on disk; otherwise
        // a power cut can at worst cut them short, which startup trims.
        if self.policy == Fsync::Always {
            copy.new
                .sync_data()
                .map_err(failed("fsync the compacted data file"))?;
        }
        let kept = match replaced {
            Replaced::KeptAsDamaged => Some(
                keep_copy(&self.real).map_err(failed("keep a copy of the damaged data file"))?,
            ),
            Replaced::Dropped => None,
        };
        std::fs::rename(tmp, &self.real)
            .map_err(failed("replace the data file with its compacted copy"))?;
        Ok(kept)
    }

    /// Lets batches go on: on `new` (of `len` bytes) once it replaced the data
    /// file, else on the old one.
    fn resume_batches(&self, new: Option<(File, u64)>) {
        let mut st = self.state();
        let old = new.map(|(new, len)| {
            let old = std::mem::replace(&mut st.file, Arc::new(new));
            st.good_len = len;
            st.needs_truncate = false;
            st.dirty = self.policy != Fsync::Always;
            st.failed = false;
            old
        });
        st.flushing = false;
        self.written.notify_all();
        drop(st);
        // Closing the replaced file frees its blocks: not while batches wait.
        drop(old);
    }
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
    replaced: Replaced,
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
