//! The register store: every register of every device id, in memory, optionally
//! written through a [`Journal`] so acknowledged writes survive a restart.
//!
//! The map is a fixed table of 65,536 device slots split into [`SHARDS`] shards,
//! each behind its own lock, so a compaction snapshots one shard at a time (a
//! copy of at most 256 devices) while writers and readers use the others. The
//! store owns the map: the journal hands it durable batches through [`Publish`],
//! and never holds its own lock while doing so, so the two locks never nest.

pub mod backend;
pub mod format;
pub mod journal;
pub mod lock;
pub mod redis;
pub mod text;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::backend::{Backend, CompactionFailing, DeviceRegisters, StoreError};
use self::format::{DamageKind, Key};
use self::journal::{
    CompactionPolicy, CompactionReport, Fsync, Journal, JournalError, OpenReport, Publish,
    Replaced, Rewrite, StorageError,
};
use crate::metrics::DataFileMetrics;
use crate::register_set::RegisterSet;

/// How long the maintenance thread waits after a failed compaction.
const COMPACTION_RETRY: Duration = Duration::from_secs(30);

/// Shards of the device table; device `d` lives in shard `d % SHARDS`.
pub const SHARDS: usize = 256;
const SLOTS: usize = 65_536 / SHARDS;

/// The 256 registers of one device id.
#[derive(Clone)]
struct Registers {
    present: RegisterSet,
    values: [u16; 256],
}

impl Registers {
    fn new() -> Registers {
        Registers {
            present: RegisterSet::EMPTY,
            values: [0; 256],
        }
    }

    fn get(&self, register: u8) -> Option<u16> {
        self.present
            .contains(register)
            .then_some(self.values[usize::from(register)])
    }

    /// Sets a register; true if it did not exist before.
    fn set(&mut self, register: u8, value: u16) -> bool {
        self.values[usize::from(register)] = value;
        self.present.insert(register)
    }

    fn each(&self, mut f: impl FnMut(u8, u16)) {
        for register in self.present.iter() {
            f(register, self.values[usize::from(register)]);
        }
    }
}

/// One shard's device slots: slot `d / SHARDS` holds device `d`.
struct Shard {
    slots: Vec<Option<Box<Registers>>>,
}

/// Every register, sharded by device id.
struct Table {
    shards: Box<[Mutex<Shard>]>,
    live: AtomicUsize,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        slots: (0..SLOTS).map(|_| None).collect(),
                    })
                })
                .collect(),
            live: AtomicUsize::new(0),
        }
    }
}

impl Table {
    /// A panic while a lock was held cannot leave a shard half-updated (every
    /// critical section sets or reads whole values), so a poisoned lock is safe.
    fn shard(&self, device: u16) -> MutexGuard<'_, Shard> {
        self.shards[device as usize % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, (device, register): Key) -> Option<u16> {
        self.shard(device).slots[device as usize / SHARDS]
            .as_ref()
            .and_then(|r| r.get(register))
    }

    /// The registers of one device, sorted (`each` walks them in order).
    fn device(&self, device: u16) -> Vec<(u8, u16)> {
        let mut registers = Vec::new();
        if let Some(r) = self.shard(device).slots[device as usize / SHARDS].as_ref() {
            r.each(|register, value| registers.push((register, value)));
        }
        registers
    }

    fn set(&self, (device, register): Key, value: u16) {
        let new = self.shard(device).slots[device as usize / SHARDS]
            .get_or_insert_with(|| Box::new(Registers::new()))
            .set(register, value);
        if new {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands every register to `f`, one shard at a time: each shard's lock is held
    /// only to copy its devices out. Gives up (returning false) once `stop` is set.
    fn snapshot(&self, stop: &AtomicBool, f: &mut dyn FnMut(Key, u16)) -> bool {
        let mut copy: Vec<(u16, Registers)> = Vec::with_capacity(SLOTS);
        for (s, shard) in self.shards.iter().enumerate() {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            copy.clear();
            {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                for (slot, regs) in shard.slots.iter().enumerate() {
                    if let Some(regs) = regs {
                        copy.push(((slot * SHARDS + s) as u16, Registers::clone(regs)));
                    }
                }
            }
            for (device, regs) in &copy {
                regs.each(|r, v| f((*device, r), v));
            }
        }
        true
    }
}

impl Publish for Table {
    fn publish(&self, records: &[(Key, u16)]) {
        for &(key, value) in records {
            self.set(key, value);
        }
    }
}

/// Where and how registers are made durable (`--data` and its flags).
#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    pub path: PathBuf,
    pub fsync: Fsync,
    pub compaction: CompactionPolicy,
    /// Keep the valid prefix of a damaged file instead of refusing to start.
    pub repair: bool,
}

/// Registers keyed by (device id, register). Nothing exists before its first write.
#[derive(Default)]
pub struct RegisterStore {
    table: Table,
    journal: Option<Journal>,
    /// Where the data file's fsyncs, compactions and write errors are counted.
    data_metrics: OnceLock<Arc<DataFileMetrics>>,
    /// The last write to the data file failed (cleared by the next that
    /// succeeds): what `/health` reports.
    failing: AtomicBool,
    /// Compactions failed since the last that worked (the maintenance
    /// thread's): what `/health` reports as degraded.
    compaction_failing: Mutex<Option<CompactionFailing>>,
}

impl RegisterStore {
    /// A memory-only store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store backed by a data file, rebuilt from the file's records.
    pub fn open(
        path: &Path,
        fsync: Fsync,
        compaction: CompactionPolicy,
        repair: bool,
    ) -> Result<(RegisterStore, OpenReport), JournalError> {
        Self::open_cancellable(path, fsync, compaction, repair, &AtomicBool::new(false))
    }

    /// [`open`](RegisterStore::open), giving up with [`JournalError::Cancelled`]
    /// once `cancel` is set (checked every ~29,000 records of the replay). With
    /// `repair`, a damaged file is rewritten from every good record and the
    /// original kept as `FILE.damaged-TIMESTAMP`.
    pub fn open_cancellable(
        path: &Path,
        fsync: Fsync,
        compaction: CompactionPolicy,
        repair: bool,
        cancel: &AtomicBool,
    ) -> Result<(RegisterStore, OpenReport), JournalError> {
        let table = Table::default();
        let (journal, mut report) = Journal::open(
            path,
            fsync,
            compaction,
            repair,
            cancel,
            &mut |key, value| table.set(key, value),
        )?;
        let store = RegisterStore {
            table,
            journal: Some(journal),
            data_metrics: OnceLock::new(),
            failing: AtomicBool::new(false),
            compaction_failing: Mutex::new(None),
        };
        if report.damage.regions > 0 {
            let compacted = store.rewrite(
                Rewrite::Now,
                Replaced::KeptAsDamaged,
                &AtomicBool::new(false),
            )?;
            report.damaged_copy = compacted.and_then(|c| c.damaged_copy);
        }
        Ok((store, report))
    }

    /// Reports the data file's fsyncs and compactions to `metrics` from now on.
    pub fn report_to(&self, metrics: Arc<DataFileMetrics>) {
        let _ = self.data_metrics.set(metrics);
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The value of a register, or `None` if it was never written. Only values
    /// whose record is in the data file (on disk under `--fsync always`) are seen.
    pub fn read(&self, device: u16, register: u8) -> Option<u16> {
        self.table.get((device, register))
    }

    /// The registers written for one device, sorted by register; like
    /// [`RegisterStore::read`], only what is in the data file shows.
    pub fn device(&self, device: u16) -> Vec<(u8, u16)> {
        self.table.device(device)
    }

    /// Stores a value, replacing any earlier one. With a data file, returns once
    /// the write is in the file (on disk under `--fsync always`); only then does it
    /// become visible. A write that cannot be made durable fails and never shows.
    pub fn write(&self, device: u16, register: u8, value: u16) -> Result<(), StorageError> {
        let key = (device, register);
        match &self.journal {
            None => {
                self.table.set(key, value);
                Ok(())
            }
            Some(journal) => {
                let committed = journal.commit(journal.append(key, value), &self.table);
                match &committed {
                    Ok(()) => {
                        // Read first: the common case leaves the cache line shared.
                        if self.failing.load(Ordering::Relaxed) {
                            self.failing.store(false, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        self.failing.store(true, Ordering::Relaxed);
                        if let Some(m) = self.data_metrics.get() {
                            m.write_error();
                        }
                    }
                }
                committed
            }
        }
    }

    /// Forces written records to disk.
    pub fn sync(&self) -> io::Result<()> {
        match &self.journal {
            Some(j) => j.sync(),
            None => Ok(()),
        }
    }

    /// Rewrites the data file as a snapshot of the live registers, if it has
    /// outgrown them (or always, with `force`). Writers keep going meanwhile.
    pub fn compact(&self, force: bool) -> Result<Option<CompactionReport>, JournalError> {
        let when = if force {
            Rewrite::Now
        } else {
            Rewrite::IfOutgrown
        };
        self.rewrite(when, Replaced::Dropped, &AtomicBool::new(false))
    }

    /// Compacts like [`compact`](RegisterStore::compact), abandoning the rewrite
    /// (`Ok(None)`, the data file untouched) if `stop` is set meanwhile.
    pub fn compact_unless(
        &self,
        when: Rewrite,
        stop: &AtomicBool,
    ) -> Result<Option<CompactionReport>, JournalError> {
        self.rewrite(when, Replaced::Dropped, stop)
    }

    fn rewrite(
        &self,
        when: Rewrite,
        replaced: Replaced,
        stop: &AtomicBool,
    ) -> Result<Option<CompactionReport>, JournalError> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        let Some(mut compaction) = journal.begin_compaction(when, self.len(), replaced)? else {
            return Ok(None);
        };
        if !self
            .table
            .snapshot(stop, &mut |key, value| compaction.push(key, value))
        {
            journal.abandon_compaction(compaction);
            return Ok(None);
        }
        journal.finish_compaction(compaction).map(Some)
    }

    /// Starts the thread that, once a second, fsyncs under `everysec`, compacts
    /// the data file when it has grown (or a write failed and it holds dead
    /// records) and grows `FILE.reserve`; it ends when `stop` is set.
    pub fn spawn_maintenance(self: &Arc<Self>, stop: Arc<AtomicBool>) -> Option<JoinHandle<()>> {
        let journal = self.journal.as_ref()?;
        let mut maintenance = Maintenance {
            store: Arc::clone(self),
            fsync: journal.policy(),
            retry_at: None,
            synced_len: journal.len(),
        };
        std::thread::Builder::new()
            .name("wwep-journal".to_string())
            .spawn(move || {
                let mut ticks = 0u32;
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                    ticks += 1;
                    if ticks.is_multiple_of(10) {
                        maintenance.run(&stop);
                    }
                }
            })
            .ok()
    }

    /// Compactions failed since the last that worked, if any.
    pub fn compaction_failing(&self) -> Option<CompactionFailing> {
        self.compaction_state().clone()
    }

    fn compaction_state(&self) -> MutexGuard<'_, Option<CompactionFailing>> {
        self.compaction_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A compaction worked: no longer failing.
    fn compaction_worked(&self) {
        *self.compaction_state() = None;
        if let Some(m) = self.data_metrics.get() {
            m.compaction();
        }
    }

    /// A compaction failed with `e`: counted by cause, one more in a row.
    fn compaction_failed(&self, e: &JournalError) -> CompactionFailing {
        let mut state = self.compaction_state();
        let failing = CompactionFailing {
            cause: e.cause(),
            in_a_row: state.as_ref().map_or(0, |f| f.in_a_row).saturating_add(1),
            error: e.to_string(),
        };
        *state = Some(failing.clone());
        drop(state);
        if let Some(m) = self.data_metrics.get() {
            m.compaction_failed(failing.cause, failing.in_a_row);
        }
        failing
    }

    /// How many registers have been written.
    pub fn len(&self) -> usize {
        self.table.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the maintenance thread does once a second, and what it remembers
/// from one second to the next.
struct Maintenance {
    store: Arc<RegisterStore>,
    fsync: Fsync,
    /// After a failed compaction, no rewrite is tried before this.
    retry_at: Option<Instant>,
    /// The file's length at the last fsync.
    synced_len: u64,
}

impl Maintenance {
    fn run(&mut self, stop: &AtomicBool) {
        if self.fsync == Fsync::EverySec {
            self.sync();
        }
        self.compact(stop);
        if let Some(journal) = self.store.journal() {
            journal.keep_reserve(self.store.len());
        }
    }

    /// `everysec`'s fsync, counted only when the file has grown (a file that
    /// has not had nothing to fsync).
    fn sync(&mut self) {
        let began = Instant::now();
        let len = self.store.journal.as_ref().map_or(0, Journal::len);
        match self.store.sync() {
            Ok(()) => {
                if let Some(m) = self.store.data_metrics.get()
                    && len != self.synced_len
                {
                    m.fsync(began.elapsed());
                }
                self.synced_len = len;
            }
            Err(e) => log::error!("data file fsync failed: {e}"),
        }
    }

    /// Compacts if the file has outgrown the registers, unless a compaction
    /// failed less than [`COMPACTION_RETRY`] ago.
    fn compact(&mut self, stop: &AtomicBool) {
        let began = Instant::now();
        let result = match self.retry_at {
            Some(t) if began < t => Ok(None),
            _ => self.store.compact_unless(Rewrite::IfOutgrown, stop),
        };
        match result {
            Ok(Some(r)) => {
                self.store.compaction_worked();
                log::info!(
                    "compacted the data file: {} -> {} bytes in {} ms (writes held {} µs)",
                    r.before,
                    r.after,
                    began.elapsed().as_millis(),
                    r.held_batches.as_micros()
                )
            }
            Ok(None) => {}
            Err(e) => {
                let failing = self.store.compaction_failed(&e);
                let dir = self
                    .store
                    .journal()
                    .map_or(Path::new("."), Journal::directory);
                log::error!(
                    "compaction failed ({}): {e}; {}; writes are still stored, and the data file \
                     grows until a compaction works; next try in {} s ({} failure(s) in a row)",
                    failing.cause,
                    failing.cause.remedy(dir),
                    COMPACTION_RETRY.as_secs(),
                    failing.in_a_row
                );
                self.retry_at = Some(Instant::now() + COMPACTION_RETRY);
            }
        }
    }
}

impl Backend for RegisterStore {
    fn read(&self, device: u16, register: u8) -> Result<Option<u16>, StoreError> {
        Ok(RegisterStore::read(self, device, register))
    }

    fn device(&self, device: u16) -> Result<DeviceRegisters, StoreError> {
        Ok(DeviceRegisters {
            values: RegisterStore::device(self, device),
            // Every record's CRC was checked on replay.
            unreadable: Vec::new(),
        })
    }

    fn write(&self, device: u16, register: u8, value: u16) -> Result<(), StoreError> {
        RegisterStore::write(self, device, register, value).map_err(|_| StoreError::Storage)
    }

    fn writable(&self) -> bool {
        !self.failing.load(Ordering::Relaxed)
    }

    fn registers(&self) -> Option<usize> {
        Some(self.len())
    }

    fn data_file_bytes(&self) -> Option<u64> {
        self.journal().map(Journal::len)
    }

    fn sync(&self) -> io::Result<()> {
        RegisterStore::sync(self)
    }

    fn answers_from_memory(&self) -> bool {
        self.journal().is_none()
    }

    fn compaction_failing(&self) -> Option<CompactionFailing> {
        RegisterStore::compaction_failing(self)
    }
}

/// Opens the store for `data`, stopping early with [`JournalError::Cancelled`]
/// once `cancel` is set, and logs what startup found: the replay (info), a trimmed
/// tail and a repair (warn).
pub fn open_logged(data: &DataConfig, cancel: &AtomicBool) -> Result<RegisterStore, JournalError> {
    let began = Instant::now();
    let (store, report) = RegisterStore::open_cancellable(
        &data.path,
        data.fsync,
        data.compaction,
        data.repair,
        cancel,
    )?;
    let path = data.path.display();
    let fsync = data.fsync.name();
    if report.created {
        log::info!("data file {path} created (fsync {fsync})");
    } else {
        log::info!(
            "data file {path}: {} records replayed, {} registers in {} ms (fsync {fsync})",
            report.records,
            store.len(),
            began.elapsed().as_millis()
        );
    }
    // One line per region, each said once as what it is.
    if let Some(leftover) = report.leftover {
        let done = match leftover.kind {
            _ if report.damage.regions > 0 => "dropped by --repair",
            DamageKind::HeaderCutShort | DamageKind::OnlyZeros => "started afresh",
            _ => "dropped; every whole record was kept",
        };
        log::warn!("data file {path}: {leftover}; {done}");
    }
    if report.damage.regions > 0 {
        for region in &report.damage.listed {
            log::warn!("data file {path}: {region}; dropped by --repair");
        }
        let unlisted = report.damage.regions - report.damage.listed.len() as u64;
        if unlisted > 0 {
            log::warn!(
                "data file {path}: {unlisted} more damaged region(s) like these, not listed; dropped by --repair"
            );
        }
        let copy = report
            .damaged_copy
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        log::warn!(
            "data file {path}: --repair kept {} records ({} registers) and dropped {} bytes in {} damaged region(s){}; the damaged original is kept as {copy}",
            report.records,
            store.len(),
            report.repaired_bytes,
            report.damage.regions,
            if report.leftover.is_some() {
                " and what a crash left at the end"
            } else {
                ""
            }
        );
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::Path;

    #[test]
    fn nothing_exists_before_the_first_write() {
        let store = RegisterStore::new();
        assert_eq!(store.read(0x0FAC, 0x0B), None);
        assert!(store.is_empty());
        store.write(0x0FAC, 0x0B, 0x1234).unwrap();
        assert_eq!(store.read(0x0FAC, 0x0B), Some(0x1234));
        assert_eq!(store.read(0x0FAC, 0x0C), None);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn devices_have_separate_registers() {
        let store = RegisterStore::new();
        store.write(0x1234, 0x05, 1).unwrap();
        store.write(0xABCD, 0x05, 2).unwrap();
        assert_eq!(store.read(0x1234, 0x05), Some(1));
        assert_eq!(store.read(0xABCD, 0x05), Some(2));
    }

    #[test]
    fn later_write_wins_at_the_key_space_edges() {
        let store = RegisterStore::new();
        for (d, r) in [(0, 0), (0xFFFF, 0xFF), (0, 0xFF), (0xFFFF, 0)] {
            store.write(d, r, 0xFFFF).unwrap();
            store.write(d, r, 0).unwrap();
            assert_eq!(store.read(d, r), Some(0));
        }
        assert_eq!(store.len(), 4);
    }

    fn open(dir: &Path, fsync: Fsync, compaction: CompactionPolicy) -> RegisterStore {
        open_at(&dir.join("data"), fsync, compaction, false)
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    /// [`RegisterStore::open`], waiting out a lock that names this process.
    fn open_at(
        path: &Path,
        fsync: Fsync,
        compaction: CompactionPolicy,
        repair: bool,
    ) -> Result<(RegisterStore, OpenReport), JournalError> {
        journal::wait_out_own_lock(|| RegisterStore::open(path, fsync, compaction, repair))
    }

    /// A store in `dir` whose data file holds one live record and nine dead ones.
    fn one_register_written_ten_times(dir: &Path, fsync: Fsync) -> RegisterStore {
        let store = open(dir, fsync, CompactionPolicy::default());
        for v in 0..10 {
            store.write(1, 1, v).unwrap();
        }
        store
    }

    #[test]
    fn writes_survive_a_reopen_under_every_policy() {
        for fsync in [Fsync::Always, Fsync::EverySec, Fsync::Never] {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = open(dir.path(), fsync, CompactionPolicy::default());
                for i in 0..100u16 {
                    store.write(i, (i % 7) as u8, i * 3).unwrap();
                }
                store.write(500, 5, 0xAAAA).unwrap();
                store.write(500, 5, 0xBBBB).unwrap();
                store.sync().unwrap();
            }
            let store = open(dir.path(), fsync, CompactionPolicy::default());
            assert_eq!(store.len(), 101);
            assert_eq!(store.read(99, 99 % 7), Some(297));
            assert_eq!(store.read(500, 5), Some(0xBBBB));
        }
    }

    #[test]
    fn concurrent_writers_share_fsyncs_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path(), Fsync::Always, CompactionPolicy::default()));
        let threads: Vec<_> = (0..16u16)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..50u16 {
                        store.write(t, i as u8, i).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(store);
        let store = open(dir.path(), Fsync::Always, CompactionPolicy::default());
        assert_eq!(store.len(), 16 * 50);
        assert_eq!(store.read(15, 49), Some(49));
    }

    #[test]
    fn a_write_that_cannot_reach_the_disk_fails_and_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), Fsync::Always, CompactionPolicy::default());
        store.write(1, 1, 1).unwrap();
        let journal = store.journal().unwrap();
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let real = journal.swap_file_for_test(full);
        assert_eq!(store.write(1, 1, 2), Err(StorageError));
        assert_eq!(
            store.write(2, 2, 2),
            Err(StorageError),
            "writes keep failing"
        );
        assert_eq!(store.read(1, 1), Some(1), "the failed write is not visible");
        assert_eq!(store.read(2, 2), None);
        journal.swap_file_for_test(real);
        store.write(3, 3, 3).unwrap();
        drop(store);
        let store = open(dir.path(), Fsync::Always, CompactionPolicy::default());
        assert_eq!(
            (store.read(1, 1), store.read(2, 2), store.read(3, 3)),
            (Some(1), None, Some(3))
        );
    }

    #[test]
    fn compaction_shrinks_the_file_and_keeps_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let policy = CompactionPolicy {
            ratio: 2.0,
            min_bytes: 100,
        };
        let store = Arc::new(open(dir.path(), Fsync::Never, policy));
        for round in 0..50u16 {
            for r in 0..10u8 {
                store.write(7, r, round).unwrap();
            }
        }
        let before = store.journal().unwrap().len();
        // Writers race the rewrite.
        let racer = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..50u16 {
                    store.write(8, i as u8, i).unwrap();
                }
            })
        };
        let report = store
            .compact(false)
            .unwrap()
            .expect("the file had outgrown its data");
        racer.join().unwrap();
        assert_eq!(
            store.journal().unwrap().len(),
            std::fs::metadata(dir.path().join("data")).unwrap().len(),
            "the journal knows the new file's length"
        );
        assert!(report.before >= before);
        assert!(report.after < before / 2, "{report:?}");
        let expected: Vec<_> = (0..10u8)
            .map(|r| store.read(7, r))
            .chain((0..50u8).map(|r| store.read(8, r)))
            .collect();
        drop(store);
        let store = open(dir.path(), Fsync::Never, policy);
        let got: Vec<_> = (0..10u8)
            .map(|r| store.read(7, r))
            .chain((0..50u8).map(|r| store.read(8, r)))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(store.read(7, 0), Some(49));
        assert_eq!(store.read(8, 49), Some(49));
    }

    #[test]
    fn a_poisoned_lock_keeps_serving() {
        let store = Arc::new(RegisterStore::new());
        store.write(1, 1, 7).unwrap();
        let s = Arc::clone(&store);
        let _ = std::thread::spawn(move || {
            let _guard = s.table.shard(1);
            panic!("poison the lock");
        })
        .join();
        assert!(store.table.shards[1].is_poisoned());
        assert_eq!(store.read(1, 1), Some(7));
        store.write(1, 2, 8).unwrap();
        assert_eq!(store.read(1, 2), Some(8));
    }

    #[test]
    fn the_snapshot_holds_every_register_once() {
        let store = RegisterStore::new();
        let keys = [
            (0, 0),
            (0, 255),
            (255, 7),
            (256, 7),
            (0xFFFF, 0xFF),
            (0x1234, 0x40),
        ];
        for (i, &(d, r)) in keys.iter().enumerate() {
            store.write(d, r, 1).unwrap();
            store.write(d, r, i as u16).unwrap();
        }
        let mut got = Vec::new();
        assert!(
            store
                .table
                .snapshot(&AtomicBool::new(false), &mut |k, v| got.push((k, v)))
        );
        got.sort();
        let mut want: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u16))
            .collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(store.len(), keys.len());
        assert!(
            !store
                .table
                .snapshot(&AtomicBool::new(true), &mut |_, _| panic!("stopped"))
        );
    }

    #[test]
    fn a_stopped_compaction_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_register_written_ten_times(dir.path(), Fsync::Never);
        let before = std::fs::read(dir.path().join("data")).unwrap();
        assert_eq!(
            store
                .compact_unless(Rewrite::Now, &AtomicBool::new(true))
                .unwrap(),
            None
        );
        assert_eq!(std::fs::read(dir.path().join("data")).unwrap(), before);
        assert!(!dir.path().join("data.compact.tmp").exists());
        let report = store.compact(true).unwrap().expect("not stopped");
        assert_eq!(report.after, 8 + 9);
    }

    #[test]
    fn repair_keeps_every_good_record_and_the_damaged_original() {
        use super::format::{MAGIC, encode_record};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let mut bytes = MAGIC.to_vec();
        for i in 0..1000u16 {
            bytes.extend(encode_record((i, 1), i));
        }
        bytes[12] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            open_at(&path, Fsync::Never, CompactionPolicy::default(), false),
            Err(JournalError::Corrupt {
                first: format::Region { offset: 8, .. },
                records: 999,
                ..
            })
        ));
        let (store, report) =
            open_at(&path, Fsync::Never, CompactionPolicy::default(), true).unwrap();
        assert_eq!((report.records, report.repaired_bytes), (999, 9));
        assert_eq!(store.len(), 999);
        assert_eq!(
            (store.read(0, 1), store.read(1, 1), store.read(999, 1)),
            (None, Some(1), Some(999))
        );
        let copy = report.damaged_copy.expect("a damaged copy");
        assert_eq!(std::fs::read(&copy).unwrap(), bytes);
        assert!(copy.to_str().unwrap().contains("data.damaged-"));
        store.write(5000, 1, 1).unwrap();
        drop(store);
        let (store, report) =
            open_at(&path, Fsync::Never, CompactionPolicy::default(), false).unwrap();
        assert_eq!((report.records, store.len()), (1000, 1000));
    }

    #[test]
    fn a_failed_write_gives_the_reserve_to_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_register_written_ten_times(dir.path(), Fsync::Always);
        let journal = store.journal().unwrap();
        let reserve = journal.reserve_path();
        assert_eq!(
            journal.keep_reserve(store.len()),
            20480,
            "header, a record, slack, in pages"
        );
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 20480);
        assert!(!journal.wants_compaction(store.len()));
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let real = journal.swap_file_for_test(full);
        assert_eq!(store.write(1, 1, 99), Err(StorageError));
        journal.swap_file_for_test(real);
        assert!(
            journal.wants_compaction(store.len()),
            "dead records and a failed write"
        );
        let report = store.compact(false).unwrap().expect("compacted");
        assert_eq!((report.before, report.after), (8 + 90, 8 + 9));
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 0, "given back");
        assert!(!journal.wants_compaction(store.len()));
        assert_eq!(journal.keep_reserve(store.len()), 20480);
        assert_eq!(store.read(1, 1), Some(9));
    }

    #[test]
    fn failing_compactions_are_counted_in_a_row_by_cause_until_one_works() {
        use crate::io_cause::IoCause;
        let dir = tempfile::tempdir().unwrap();
        let policy = CompactionPolicy {
            ratio: 1.0,
            min_bytes: 0,
        };
        let store = Arc::new(open(dir.path(), Fsync::Never, policy));
        let metrics = crate::metrics::Metrics::new();
        store.report_to(Arc::clone(metrics.data_file()));
        for v in 0..10 {
            store.write(1, 1, v).unwrap();
        }
        // The compaction's temporary file cannot be removed and made anew:
        // a directory holding a file stands where it goes (EISDIR, an I/O error).
        let tmp = dir.path().join("data.compact.tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("x"), b"x").unwrap();
        let mut maintenance = Maintenance {
            store: Arc::clone(&store),
            fsync: Fsync::Never,
            retry_at: None,
            synced_len: 0,
        };
        let stop = AtomicBool::new(false);
        assert_eq!(store.compaction_failing(), None);
        for in_a_row in 1..=2 {
            maintenance.retry_at = None;
            maintenance.compact(&stop);
            let failing = store.compaction_failing().expect("failing");
            assert_eq!((failing.cause, failing.in_a_row), (IoCause::Io, in_a_row));
            assert!(
                failing
                    .error
                    .contains("cannot create the compacted data file"),
                "{}",
                failing.error
            );
            assert!(maintenance.retry_at.is_some(), "waits before the next try");
        }
        let scraped = |name: &str| {
            let text = metrics.encode(&crate::metrics::Snapshot {
                data_file_bytes: Some(0),
                ..Default::default()
            });
            text.lines()
                .find(|l| l.starts_with(name))
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert_eq!(
            scraped("wwep_data_file_compaction_failures_total{cause=\"io\"}"),
            "wwep_data_file_compaction_failures_total{cause=\"io\"} 2"
        );
        assert_eq!(
            scraped("wwep_data_file_compaction_failures_total{cause=\"permission\"}"),
            "wwep_data_file_compaction_failures_total{cause=\"permission\"} 0"
        );
        assert_eq!(
            scraped("wwep_data_file_compaction_failures_in_a_row"),
            "wwep_data_file_compaction_failures_in_a_row 2"
        );
        std::fs::remove_dir_all(&tmp).unwrap();
        maintenance.retry_at = None;
        maintenance.compact(&stop);
        assert_eq!(store.compaction_failing(), None, "one that works clears it");
        assert_eq!(
            scraped("wwep_data_file_compaction_failures_in_a_row"),
            "wwep_data_file_compaction_failures_in_a_row 0"
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("data")).unwrap().len(),
            8 + 9
        );
    }

    #[test]
    fn open_logged_opens_or_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataConfig {
            path: dir.path().join("data"),
            fsync: Fsync::Always,
            compaction: CompactionPolicy::default(),
            repair: false,
        };
        let store = open_logged(&data, &AtomicBool::new(false)).unwrap();
        store.write(1, 2, 3).unwrap();
        drop(store);
        assert!(matches!(
            open_logged(&data, &AtomicBool::new(true)),
            Err(JournalError::Cancelled { .. })
        ));
        let store = open_logged(&data, &AtomicBool::new(false)).unwrap();
        assert_eq!(store.read(1, 2), Some(3));
    }

    #[test]
    fn compaction_through_a_symbolic_link_replaces_the_real_file_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        {
            let (store, _) =
                open_at(&link, Fsync::Never, CompactionPolicy::default(), false).unwrap();
            store.write(1, 1, 1).unwrap();
        }
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (store, _) = open_at(&link, Fsync::Never, CompactionPolicy::default(), false).unwrap();
        store.write(1, 1, 2).unwrap();
        store.compact(true).unwrap().expect("compacted");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let meta = std::fs::metadata(&real).unwrap();
        assert_eq!(
            (meta.len(), meta.permissions().mode() & 0o777),
            (8 + 9, 0o640)
        );
        assert_eq!(
            store.journal().unwrap().reserve_path(),
            dir.path().join("real.reserve")
        );
        store.write(1, 1, 3).unwrap();
        drop(store);
        let (store, _) = open_at(&link, Fsync::Never, CompactionPolicy::default(), false).unwrap();
        assert_eq!(store.read(1, 1), Some(3));
    }

    #[test]
    fn a_second_open_is_refused_before_during_and_after_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let policy = CompactionPolicy::default();
        let store = one_register_written_ten_times(dir.path(), Fsync::Always);
        let refused = |repair| match RegisterStore::open(&path, Fsync::Always, policy, repair) {
            Err(JournalError::Locked { path: p, lock, pid }) => {
                assert_eq!(
                    (p, lock, pid),
                    (
                        path.clone(),
                        dir.path().join("data.lock"),
                        Some(std::process::id())
                    )
                );
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a second store opened the data file"),
        };
        refused(false);
        refused(true);
        let journal = store.journal().unwrap();
        let mut compaction = journal
            .begin_compaction(Rewrite::Now, store.len(), Replaced::Dropped)
            .unwrap()
            .expect("forced");
        compaction.push((1, 1), 9);
        refused(false);
        journal.finish_compaction(compaction).unwrap();
        // The data file is a new one now; its lock is not.
        refused(false);
        store.write(2, 2, 2).unwrap();
        drop(store);
        let store = open(dir.path(), Fsync::Always, policy);
        assert_eq!((store.read(1, 1), store.read(2, 2)), (Some(9), Some(2)));
    }

    #[test]
    fn only_registers_without_a_data_file_answer_from_memory() {
        assert!(RegisterStore::new().answers_from_memory());
        let dir = tempfile::tempdir().unwrap();
        let (logged, _) = open_at(
            &dir.path().join("wwep.data"),
            Fsync::Never,
            CompactionPolicy::default(),
            false,
        )
        .unwrap();
        assert!(
            !logged.answers_from_memory(),
            "a data file's writes go through the file"
        );
    }
}
