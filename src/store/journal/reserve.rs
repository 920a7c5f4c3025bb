//! `FILE.reserve`: zeros as large as a compacted copy of the live data, grown a
//! step at a time by the maintenance thread and given back when a write fails
//! (a full disk), so that compaction always has room.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::files::{dir_of, suffixed};
use crate::io_cause::IoCause;
use crate::store::format::{HEADER_BYTES, RECORD_BYTES};

/// The reserve covers the live data plus this, in whole pages.
const RESERVE_SLACK_BYTES: u64 = 16 * 1024;
const PAGE_BYTES: u64 = 4096;
/// The reserve grows by at most this much per maintenance tick, so that filling
/// it never competes with writers for the disk for long.
const RESERVE_STEP_BYTES: u64 = 8 << 20;

pub(crate) struct Reserve {
    path: PathBuf,
    /// The reserve could not grow last time (warned once until it can).
    short: bool,
}

impl Reserve {
    /// The reserve of the data file really at `real`.
    pub(crate) fn beside(real: &Path) -> Reserve {
        Reserve {
            path: suffixed(real, ".reserve"),
            short: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Grows the file towards the size a compacted copy of `live_registers`
    /// needs (a step at a time); never shrinks it. Returns its size.
    pub(crate) fn keep(&mut self, live_registers: usize) -> u64 {
        let live = HEADER_BYTES + (live_registers * RECORD_BYTES) as u64 + RESERVE_SLACK_BYTES;
        let target = live.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        match self.grow(target) {
            Ok(len) => {
                self.short = false;
                len
            }
            Err(e) => {
                if !self.short {
                    let cause = IoCause::of(&e);
                    log::warn!(
                        "{}: cannot reserve room for compaction ({cause}: {e}); {}; until it can, \
                         a disk filled by the data file does not free itself by compacting",
                        self.path.display(),
                        cause.remedy(dir_of(&self.path))
                    );
                }
                self.short = true;
                std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
            }
        }
    }

    /// Writes zeros up to `target` bytes, at most one step; a write that
    /// fails is cut off again.
    fn grow(&self, target: u64) -> io::Result<u64> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
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
    }

    /// Gives the reserve's space back to the file system for a compaction.
    pub(crate) fn release(&self) {
        match OpenOptions::new().write(true).open(&self.path) {
            Ok(file) => {
                if let Err(e) = file.set_len(0) {
                    log::warn!("{}: cannot release: {e}", self.path.display());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{}: cannot release: {e}", self.path.display()),
        }
    }
}
