//! When records go to disk ([`Fsync`]) and when the file is rewritten
//! ([`CompactionPolicy`]): the data file's settings.

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

impl CompactionPolicy {
    /// Whether a file of `len` bytes has outgrown `live` bytes of live data:
    /// at least `min_bytes`, and more than `ratio` times the live data.
    pub(crate) fn outgrown(&self, len: u64, live: u64) -> bool {
        len >= self.min_bytes && len as f64 > live as f64 * self.ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
