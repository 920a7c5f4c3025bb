//! The register store: every register of every device id, in memory, optionally
//! written through a [`Journal`] so acknowledged writes survive a restart.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::journal::{
    self, CompactionPolicy, CompactionReport, Fsync, Journal, JournalError, OpenReport,
    StorageError,
};
use crate::metrics::DataFileMetrics;

/// Registers keyed by (device id, register). Nothing exists before its first write.
#[derive(Default)]
pub struct RegisterStore {
    registers: Mutex<HashMap<(u16, u8), u16>>,
    journal: Option<Journal>,
    /// Where the maintenance thread reports fsyncs and compactions (`--http`).
    data_metrics: OnceLock<Arc<DataFileMetrics>>,
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
        let (journal, records, report) = Journal::open(path, fsync, compaction, repair)?;
        let mut map = HashMap::new();
        for (key, value) in records {
            map.insert(key, value);
        }
        Ok((
            RegisterStore {
                registers: Mutex::new(map),
                journal: Some(journal),
                data_metrics: OnceLock::new(),
            },
            report,
        ))
    }

    /// Reports the data file's fsyncs and compactions to `metrics` from now on.
    pub fn report_to(&self, metrics: Arc<DataFileMetrics>) {
        let _ = self.data_metrics.set(metrics);
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// A panic while the lock was held cannot leave the map half-updated (every
    /// critical section is one map call), so a poisoned lock is safe to keep using.
    fn map(&self) -> MutexGuard<'_, HashMap<(u16, u8), u16>> {
        self.registers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value of a register, or `None` if it was never written.
    pub fn read(&self, device: u16, register: u8) -> Option<u16> {
        self.map().get(&(device, register)).copied()
    }

    /// Stores a value, replacing any earlier one. With a data file, returns once
    /// the write is in the file (on disk under `--fsync always`); a write that
    /// cannot be made durable is undone and fails.
    pub fn write(&self, device: u16, register: u8, value: u16) -> Result<(), StorageError> {
        let key = (device, register);
        let mut map = self.map();
        let old = map.insert(key, value);
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let ticket = journal.append(key, value, old);
        drop(map);
        journal.wait(ticket, &|| self.map())
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
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        let snapshot = {
            let map = self.map();
            if !force && !journal.wants_compaction(map.len()) {
                return Ok(None);
            }
            // The snapshot is the durable state: what is applied but not yet
            // written is taken back out, and reaches the new file as it is written.
            let mut snapshot = map.clone();
            let began = journal
                .begin_capture(&mut |open, inflight| journal::undo(&mut snapshot, open, inflight));
            if !began {
                return Ok(None);
            }
            snapshot
        };
        journal.finish_compaction(&snapshot).map(Some)
    }

    /// Starts the thread that fsyncs once a second under `everysec` and compacts
    /// the data file when it has grown; it ends when `stop` is set.
    pub fn spawn_maintenance(self: &Arc<Self>, stop: Arc<AtomicBool>) -> Option<JoinHandle<()>> {
        let journal = self.journal.as_ref()?;
        let everysec = journal.policy() == Fsync::EverySec;
        let store = Arc::clone(self);
        std::thread::Builder::new()
            .name("wwep-journal".to_string())
            .spawn(move || {
                let mut ticks = 0u32;
                let mut synced_len = store.journal.as_ref().map_or(0, Journal::len);
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                    ticks += 1;
                    if !ticks.is_multiple_of(10) {
                        continue;
                    }
                    let metrics = store.data_metrics.get();
                    if everysec {
                        let began = Instant::now();
                        // A file that has not grown had nothing to fsync.
                        let len = store.journal.as_ref().map_or(0, Journal::len);
                        match store.sync() {
                            Ok(()) => {
                                if let Some(m) = metrics
                                    && len != synced_len
                                {
                                    m.fsync(began.elapsed());
                                }
                                synced_len = len;
                            }
                            Err(e) => log::error!("data file fsync failed: {e}"),
                        }
                    }
                    match store.compact(false) {
                        Ok(Some(r)) => {
                            if let Some(m) = metrics {
                                m.compaction();
                            }
                            log::info!("compacted the data file: {} -> {} bytes", r.before, r.after)
                        }
                        Ok(None) => {}
                        Err(e) => log::error!("compaction failed: {e}"),
                    }
                }
            })
            .ok()
    }

    /// How many registers have been written.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

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
        RegisterStore::open(&dir.join("data"), fsync, compaction, false)
            .unwrap()
            .0
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
            let _guard = s.map();
            panic!("poison the lock");
        })
        .join();
        assert!(store.registers.is_poisoned());
        assert_eq!(store.read(1, 1), Some(7));
        store.write(1, 2, 8).unwrap();
        assert_eq!(store.read(1, 2), Some(8));
    }
}
