//! The files beside the data file and what is done to them: their names
//! (`FILE.compact.tmp`, `FILE.reserve`, `FILE.damaged-STAMP`), where a
//! symbolic link really points, kept copies, and the directory's fsync.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::civil_date::UtcTime;

pub(crate) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Where the data file really is: a symbolic link followed (even one whose
/// target does not exist yet), so that compaction replaces the real file and
/// two servers given two links to one file take one lock.
pub(crate) fn real_path(path: &Path) -> io::Result<PathBuf> {
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

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    suffixed(path, ".compact.tmp")
}

/// Keeps the file as `FILE.damaged-YYYYMMDDTHHMMSSZ` (a hard link, or a copy
/// where links are not possible); returns the name.
pub(crate) fn keep_copy(path: &Path) -> io::Result<PathBuf> {
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
fn utc_stamp(t: SystemTime) -> String {
    let t = UtcTime::at(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The directory entry of `path` on disk: after a file is created, renamed or
/// linked there.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(dir_of(path))?.sync_all()
}

/// The directory `path` is in (`.` for a bare name).
pub(crate) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_stamps() {
        let at = |s| utc_stamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_735_689_599), "20241231T235959Z");
    }
}
