//! Why a file operation failed, by kind, because what an operator does about
//! it differs: give the server's user access, free space, or look at the disk.
//! Read from the error's kind (which the standard library derives from the
//! OS error number), never from its text. A leaf: it imports nothing of the
//! crate.

use std::fmt;
use std::io;
use std::path::Path;

/// The three causes a failed file operation is sorted into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCause {
    /// Not allowed: `EACCES`, `EPERM` (an immutable file or directory too),
    /// `EROFS` (a read-only file system).
    Permission,
    /// No room: `ENOSPC`, `EDQUOT`.
    Space,
    /// Anything else: `EIO`, a file that is not what it should be, …
    Io,
}

impl IoCause {
    pub const ALL: [IoCause; 3] = [IoCause::Permission, IoCause::Space, IoCause::Io];

    pub fn of(e: &io::Error) -> IoCause {
        match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                IoCause::Permission
            }
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => IoCause::Space,
            _ => IoCause::Io,
        }
    }

    /// The metric label: `permission`, `space`, `io`.
    pub fn label(self) -> &'static str {
        match self {
            IoCause::Permission => "permission",
            IoCause::Space => "space",
            IoCause::Io => "io",
        }
    }

    /// What to do about it, for files in `dir`.
    pub fn remedy(self, dir: &Path) -> Remedy<'_> {
        Remedy { cause: self, dir }
    }
}

impl fmt::Display for IoCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoCause::Permission => "no permission",
            IoCause::Space => "no space",
            IoCause::Io => "an I/O error",
        })
    }
}

/// The advice for one [`IoCause`] in one directory, as displayed.
pub struct Remedy<'a> {
    cause: IoCause,
    dir: &'a Path,
}

impl fmt::Display for Remedy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        match self.cause {
            IoCause::Permission => write!(
                f,
                "let the user the server runs as create and rename files in {dir} \
                 (check its owner and mode, `lsattr -d` for the immutable flag, and that \
                 it is not mounted read-only)"
            ),
            IoCause::Space => write!(
                f,
                "free space on the file system holding {dir} (or raise the quota)"
            ),
            IoCause::Io => write!(
                f,
                "check the disk holding {dir} and the kernel log (`dmesg`)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_come_from_the_os_error_number() {
        // Linux's numbers: EPERM 1, EIO 5, EACCES 13, EEXIST 17, EISDIR 21,
        // ENOSPC 28, EROFS 30, EDQUOT 122.
        for (errno, cause) in [
            (1, IoCause::Permission),
            (13, IoCause::Permission),
            (30, IoCause::Permission),
            (28, IoCause::Space),
            (122, IoCause::Space),
            (5, IoCause::Io),
            (17, IoCause::Io),
            (21, IoCause::Io),
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(IoCause::of(&e), cause, "errno {errno}: {e}");
        }
        // An error that carries no number: by its kind alone, whatever its text.
        let e = io::Error::new(io::ErrorKind::PermissionDenied, "no space left");
        assert_eq!(IoCause::of(&e), IoCause::Permission);
        assert_eq!(
            IoCause::of(&io::Error::other("permission denied")),
            IoCause::Io
        );
    }

    #[test]
    fn each_cause_has_its_own_label_and_remedy() {
        let dir = Path::new("/var/lib/wwep");
        let labels: Vec<_> = IoCause::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels, ["permission", "space", "io"]);
        let remedies: Vec<_> = IoCause::ALL
            .iter()
            .map(|c| c.remedy(dir).to_string())
            .collect();
        assert!(remedies[0].starts_with(
            "let the user the server runs as create and rename files in /var/lib/wwep"
        ));
        assert!(remedies[1].starts_with("free space on the file system holding /var/lib/wwep"));
        assert!(remedies[2].contains("dmesg"));
    }
}
