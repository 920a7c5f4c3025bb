//! The data file's format, with no I/O: bytes in, records and a verdict out.
//!
//! Layout: an 8-byte header `WWEPLOG1`, then 9-byte records — device (u16 BE),
//! register (u8), value (u16 BE), CRC32 of those five bytes (u32 BE). Replaying the
//! records in order rebuilds the store; a later record for a key wins. A compacted
//! file has the same layout with one record per live register.
//!
//! [`Scanner`] reads a file fed in chunks of any size and tells apart what a crash
//! or a power cut leaves at the end (a record cut short, zeros) from damage. After
//! damage it resynchronises: it tries every byte offset until records check out
//! again, so one damaged region never hides the good records after it. Every
//! region that is not records is reported once, as one [`DamageKind`].

use std::fmt;

pub const MAGIC: &[u8; 8] = b"WWEPLOG1";
pub const HEADER_BYTES: u64 = MAGIC.len() as u64;
pub const RECORD_BYTES: usize = 9;
const RECORD: u64 = RECORD_BYTES as u64;

/// A register: (device id, register number).
pub type Key = (u16, u8);

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer than [`RECORD_BYTES`] bytes.
    Short { len: usize },
    /// The CRC does not match the five bytes before it.
    Checksum,
}

/// Why a file is not a data file at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// It does not start with [`MAGIC`] (nor with part of it, nor with zeros).
    NotAJournal,
}

pub fn encode_record(key: Key, value: u16) -> [u8; RECORD_BYTES] {
    let mut r = [0u8; RECORD_BYTES];
    r[0..2].copy_from_slice(&key.0.to_be_bytes());
    r[2] = key.1;
    r[3..5].copy_from_slice(&value.to_be_bytes());
    let crc = crc32fast::hash(&r[0..5]);
    r[5..9].copy_from_slice(&crc.to_be_bytes());
    r
}

/// Decodes the record at the start of `bytes` (bytes after it are ignored).
pub fn decode_record(bytes: &[u8]) -> Result<(Key, u16), RecordError> {
    let Some(r) = bytes.get(..RECORD_BYTES) else {
        return Err(RecordError::Short { len: bytes.len() });
    };
    let crc = u32::from_be_bytes([r[5], r[6], r[7], r[8]]);
    if crc32fast::hash(&r[0..5]) != crc {
        return Err(RecordError::Checksum);
    }
    Ok((
        (u16::from_be_bytes([r[0], r[1]]), r[2]),
        u16::from_be_bytes([r[3], r[4]]),
    ))
}

fn is_record(bytes: &[u8]) -> bool {
    decode_record(bytes).is_ok()
}

/// What a region of the file that is not records is, and so what it means:
/// what a crash or a power cut leaves (startup deals with it by itself), or
/// damage (the file is refused until `--repair` drops it). Each region of a
/// scanned file is exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// A file shorter than the header that holds the header's first bytes.
    HeaderCutShort,
    /// A file of zeros and nothing else, no header.
    OnlyZeros,
    /// After the last whole record, fewer bytes than a record, not all zeros.
    RecordCutShort,
    /// After the last whole record, zeros and nothing else (any number).
    ZerosAtEnd,
    /// After the last whole record, fewer bytes than a record, then zeros,
    /// a record's worth or more in all.
    RecordCutShortThenZeros,
    /// Zeros, and nothing else, between good records.
    ZerosBetweenRecords,
    /// Bytes that are not records: between good records, or a record's worth
    /// or more (before any zeros) at the end.
    NotRecords,
}

impl DamageKind {
    pub const ALL: [DamageKind; 7] = [
        DamageKind::HeaderCutShort,
        DamageKind::OnlyZeros,
        DamageKind::RecordCutShort,
        DamageKind::ZerosAtEnd,
        DamageKind::RecordCutShortThenZeros,
        DamageKind::ZerosBetweenRecords,
        DamageKind::NotRecords,
    ];

    /// Whether it is what a crash or a power cut leaves, which startup trims
    /// (or, for a file with no header, starts afresh) by itself; the others
    /// are damage, refused until `--repair`.
    pub fn is_crash_leftover(self) -> bool {
        match self {
            DamageKind::HeaderCutShort
            | DamageKind::OnlyZeros
            | DamageKind::RecordCutShort
            | DamageKind::ZerosAtEnd
            | DamageKind::RecordCutShortThenZeros => true,
            DamageKind::ZerosBetweenRecords | DamageKind::NotRecords => false,
        }
    }

    /// What the region is and what leaves one, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            DamageKind::HeaderCutShort => {
                "a header cut short (the file is shorter than its 8-byte header): \
                 a crash while the file was being created; nothing in it was data"
            }
            DamageKind::OnlyZeros => {
                "zeros and no header: the file grew but a power cut left it unwritten; \
                 nothing in it was data"
            }
            DamageKind::RecordCutShort => "a record cut short at the end: a crash during a write",
            DamageKind::ZerosAtEnd => {
                "zeros at the end: the file grew but a power cut \
                 left the new part unwritten"
            }
            DamageKind::RecordCutShortThenZeros => {
                "a record cut short, then zeros, at the end: \
                 a power cut during a write, after the file grew"
            }
            DamageKind::ZerosBetweenRecords => {
                "zeros between good records: a file system that wrote later pages \
                 before earlier ones when the power went; the records there are lost"
            }
            DamageKind::NotRecords => {
                "bytes that are not records (a bad checksum, garbage, bytes lost or \
                 inserted): damage, not what a crash leaves"
            }
        }
    }
}

/// One region of the file that is not records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub kind: DamageKind,
    /// File offset of its first byte.
    pub offset: u64,
    pub bytes: u64,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.bytes == 1 { "" } else { "s" };
        write!(
            f,
            "{} byte{s} at byte {}: {}",
            self.bytes,
            self.offset,
            self.kind.describe()
        )
    }
}

/// How many damaged regions a scan lists one by one (it counts them all).
pub const MAX_LISTED: usize = 8;

/// The damage in a file (regions that are not [crash
/// leftovers](DamageKind::is_crash_leftover)): every region counted, the
/// first [`MAX_LISTED`] listed, so a file damaged all over costs no more.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Damage {
    pub regions: u64,
    pub bytes: u64,
    /// The first regions, in file order.
    pub listed: Vec<Region>,
}

impl Damage {
    pub fn first(&self) -> Option<Region> {
        self.listed.first().copied()
    }

    fn add(&mut self, region: Region) {
        self.regions += 1;
        self.bytes += region.bytes;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(region);
        }
    }
}

/// The verdict on a whole file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scan {
    /// No header yet: an empty file, a header cut short, or only zeros. Nothing in
    /// it is data; it is started afresh.
    pub blank: bool,
    /// Good records, before and after any damage.
    pub records: u64,
    pub damage: Damage,
    /// Where the leftover starts: the file ends here once it is trimmed.
    pub end: u64,
    /// What a crash or a power cut left at the end of the file (or instead of
    /// its header): at most one region, trimmed at startup.
    pub leftover: Option<Region>,
}

impl Scan {
    /// Every region that is not records (the listed damage and the
    /// leftover), in file order.
    pub fn regions(&self) -> Vec<Region> {
        let mut all = self.damage.listed.clone();
        all.extend(self.leftover);
        all
    }

    fn leave(&mut self, kind: DamageKind, offset: u64, bytes: u64) {
        self.leftover = Some(Region {
            kind,
            offset,
            bytes,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the header.
    Header,
    /// The first 8 bytes were zeros; the rest must be zeros too.
    Zeros,
    /// Reading records; `at` is where the next one starts.
    Records,
    /// Inside damage that began at `start`; `at` is the next offset to try.
    Damaged { start: u64, nonzero_end: u64 },
}

/// Whether more bytes may follow the ones held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    More,
    Ended,
}

/// What a step of the scan leaves: another step, or waiting for more bytes
/// (or, once the input has ended, nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Step,
    Wait,
}

/// A streaming scan: [`push`](Scanner::push) chunks, then [`finish`](Scanner::finish).
/// Every good record goes to `emit` in file order. Verdicts do not depend on how
/// the file was split into chunks.
pub struct Scanner {
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    base: u64,
    /// File offset the scan has reached.
    at: u64,
    mode: Mode,
    scan: Scan,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner {
            buf: Vec::new(),
            base: 0,
            at: 0,
            mode: Mode::Header,
            scan: Scan::default(),
        }
    }

    /// Good records seen so far.
    pub fn records(&self) -> u64 {
        self.scan.records
    }

    pub fn push(
        &mut self,
        chunk: &[u8],
        emit: &mut dyn FnMut(Key, u16),
    ) -> Result<(), FormatError> {
        self.buf.extend_from_slice(chunk);
        self.run(Input::More, emit)?;
        let consumed = (self.at - self.base) as usize;
        self.buf.drain(..consumed);
        self.base = self.at;
        Ok(())
    }

    pub fn finish(mut self, emit: &mut dyn FnMut(Key, u16)) -> Result<Scan, FormatError> {
        self.run(Input::Ended, emit)?;
        Ok(self.scan)
    }

    fn bytes(&self, from: u64) -> &[u8] {
        &self.buf[(from - self.base) as usize..]
    }

    fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Scans as far as the bytes held allow: each step reads the header, the
    /// zeros of a blank file, one record, or one offset inside damage.
    fn run(&mut self, input: Input, emit: &mut dyn FnMut(Key, u16)) -> Result<(), FormatError> {
        loop {
            let next = match self.mode {
                Mode::Header => self.header(input)?,
                Mode::Zeros => self.zeros(input)?,
                Mode::Records => self.record(input, emit),
                Mode::Damaged { start, nonzero_end } => self.damaged(input, start, nonzero_end),
            };
            if next == Next::Wait {
                return Ok(());
            }
        }
    }

    fn available(&self) -> u64 {
        self.end() - self.at
    }

    /// The first 8 bytes: the magic (records follow), zeros (a blank file), or
    /// at the end of a short file, part of the magic or zeros (blank too).
    fn header(&mut self, input: Input) -> Result<Next, FormatError> {
        let available = self.available();
        if available < HEADER_BYTES {
            if input == Input::More {
                return Ok(Next::Wait);
            }
            let bytes = self.bytes(self.at);
            let kind = if bytes.is_empty() {
                None
            } else if MAGIC.starts_with(bytes) {
                Some(DamageKind::HeaderCutShort)
            } else if bytes.iter().all(|&b| b == 0) {
                Some(DamageKind::OnlyZeros)
            } else {
                return Err(FormatError::NotAJournal);
            };
            self.scan.blank = true;
            if let Some(kind) = kind {
                self.scan.leave(kind, 0, available);
            }
            self.at = self.end();
            return Ok(Next::Wait);
        }
        let header = &self.bytes(0)[..HEADER_BYTES as usize];
        if header == MAGIC {
            self.mode = Mode::Records;
            self.at = HEADER_BYTES;
            self.scan.end = HEADER_BYTES;
        } else if header.iter().all(|&b| b == 0) {
            self.mode = Mode::Zeros;
        } else {
            return Err(FormatError::NotAJournal);
        }
        Ok(Next::Step)
    }

    /// A file that began with zeros must be zeros to its end.
    fn zeros(&mut self, input: Input) -> Result<Next, FormatError> {
        if self.bytes(self.at).iter().any(|&b| b != 0) {
            return Err(FormatError::NotAJournal);
        }
        self.at = self.end();
        if input == Input::Ended {
            self.scan.blank = true;
            self.scan.leave(DamageKind::OnlyZeros, 0, self.at);
        }
        Ok(Next::Wait)
    }

    /// One record: emitted when it checks out, the start of damage when not.
    fn record(&mut self, input: Input, emit: &mut dyn FnMut(Key, u16)) -> Next {
        let available = self.available();
        if available < RECORD {
            if input == Input::More {
                return Next::Wait;
            }
            if available == 0 {
                self.scan.end = self.at;
                return Next::Wait;
            }
        }
        match decode_record(self.bytes(self.at)) {
            Ok((key, value)) => {
                emit(key, value);
                self.scan.records += 1;
                self.at += RECORD;
                self.scan.end = self.at;
            }
            Err(_) => {
                self.mode = Mode::Damaged {
                    start: self.at,
                    nonzero_end: self.at,
                };
            }
        }
        Next::Step
    }

    /// Inside damage that began at `start`: records again at this offset end
    /// it; otherwise the byte is left behind and the next offset is tried.
    fn damaged(&mut self, input: Input, start: u64, nonzero_end: u64) -> Next {
        let available = self.available();
        if self.at > start {
            // A candidate needs two records of look-ahead (or the end).
            if available < 2 * RECORD && input == Input::More {
                return Next::Wait;
            }
            if self.resynchronises(start, available) {
                self.end_damage(start, nonzero_end);
                return Next::Step;
            }
        }
        if available == 0 {
            self.finish_damage(start, nonzero_end);
            return Next::Wait;
        }
        let byte = self.bytes(self.at)[0];
        self.at += 1;
        let nonzero_end = if byte != 0 { self.at } else { nonzero_end };
        self.mode = Mode::Damaged { start, nonzero_end };
        Next::Step
    }

    /// Whether records start again at the scan's offset. In the old alignment
    /// one good record is proof enough (a flipped byte); at a new one, two in a
    /// row (or one that ends the file), so damage cannot fake a
    /// resynchronisation.
    fn resynchronises(&self, start: u64, available: u64) -> bool {
        let here = self.bytes(self.at);
        let aligned = (self.at - start).is_multiple_of(RECORD);
        is_record(here)
            && (aligned || available == RECORD || here.get(RECORD_BYTES..).is_some_and(is_record))
    }

    /// Damage from `start` to the scan's offset, with good records after it.
    fn end_damage(&mut self, start: u64, nonzero_end: u64) {
        let kind = if nonzero_end == start {
            DamageKind::ZerosBetweenRecords
        } else {
            DamageKind::NotRecords
        };
        self.scan.damage.add(Region {
            kind,
            offset: start,
            bytes: self.at - start,
        });
        self.mode = Mode::Records;
    }

    /// Bytes from `start` to the end of the file that are not records: what
    /// a crash or a power cut leaves (fewer bytes than a record before any
    /// zeros), or damage running to the end.
    fn finish_damage(&mut self, start: u64, nonzero_end: u64) {
        let bytes = self.at - start;
        let content = nonzero_end - start;
        let kind = if content == 0 {
            DamageKind::ZerosAtEnd
        } else if content >= RECORD {
            self.scan.damage.add(Region {
                kind: DamageKind::NotRecords,
                offset: start,
                bytes,
            });
            self.scan.end = self.at;
            return;
        } else if bytes < RECORD {
            DamageKind::RecordCutShort
        } else {
            DamageKind::RecordCutShortThenZeros
        };
        self.scan.end = start;
        self.scan.leave(kind, start, bytes);
    }
}

/// Scans a whole file held in memory.
pub fn scan(bytes: &[u8], emit: &mut dyn FnMut(Key, u16)) -> Result<Scan, FormatError> {
    let mut scanner = Scanner::new();
    scanner.push(bytes, emit)?;
    scanner.finish(emit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use DamageKind::*;

    fn file(records: &[(Key, u16)]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for &(k, v) in records {
            bytes.extend(encode_record(k, v));
        }
        bytes
    }

    fn numbered(n: u16) -> Vec<(Key, u16)> {
        (0..n).map(|i| ((i, i as u8), i ^ 0x5A5A)).collect()
    }

    fn scan_all(bytes: &[u8]) -> (Result<Scan, FormatError>, Vec<(Key, u16)>) {
        let mut got = Vec::new();
        let verdict = scan(bytes, &mut |k, v| got.push((k, v)));
        (verdict, got)
    }

    /// Every verdict must come out the same whatever the chunking.
    fn scan_split(bytes: &[u8], at: usize) -> (Result<Scan, FormatError>, Vec<(Key, u16)>) {
        let mut got = Vec::new();
        let mut scanner = Scanner::new();
        let mut emit = |k, v| got.push((k, v));
        let verdict = scanner
            .push(&bytes[..at], &mut emit)
            .and_then(|()| scanner.push(&bytes[at..], &mut emit))
            .and_then(|()| scanner.finish(&mut emit));
        (verdict, got)
    }

    fn scan_ok(bytes: &[u8]) -> (Scan, Vec<(Key, u16)>) {
        let (verdict, got) = scan_all(bytes);
        for at in 0..=bytes.len() {
            assert_eq!(
                scan_split(bytes, at),
                (verdict.clone(), got.clone()),
                "split at {at}"
            );
        }
        (verdict.expect("a data file"), got)
    }

    fn region(kind: DamageKind, offset: u64, bytes: u64) -> Region {
        Region {
            kind,
            offset,
            bytes,
        }
    }

    #[test]
    fn records_round_trip_at_the_edges() {
        for (key, value) in [
            ((0, 0), 0),
            ((0xFFFF, 0xFF), 0xFFFF),
            ((0x0FAC, 0x0B), 0x1234),
        ] {
            let r = encode_record(key, value);
            assert_eq!(decode_record(&r), Ok((key, value)));
        }
    }

    #[test]
    fn every_record_error() {
        let r = encode_record((1, 2), 3);
        for len in 0..RECORD_BYTES {
            assert_eq!(decode_record(&r[..len]), Err(RecordError::Short { len }));
        }
        for i in 0..RECORD_BYTES {
            let mut bad = r;
            bad[i] ^= 0x10;
            assert_eq!(decode_record(&bad), Err(RecordError::Checksum), "byte {i}");
        }
        assert_eq!(decode_record(&[0; 9]), Err(RecordError::Checksum));
    }

    #[test]
    fn not_a_journal() {
        for bytes in [
            &b"JUNK"[..],
            b"not a data file at all",
            b"WWEPLOG2",
            b"\0\0\0\0\0\0\0\0\0\x01",
            b"\0\0\x01",
            b"WWEP\0",
        ] {
            assert_eq!(
                scan_all(bytes).0,
                Err(FormatError::NotAJournal),
                "{bytes:?}"
            );
        }
    }

    /// Each kind of damage, built byte by byte, scanned: exactly the regions
    /// expected, each once, of one kind; every good record kept.
    #[test]
    fn every_kind_of_damage_is_one_region_of_one_kind() {
        let two = file(&numbered(2)); // 26 bytes
        let four = numbered(4);
        let with = |parts: &[&[u8]]| parts.concat();
        let last = encode_record((0x0707, 7), 0x0707);
        let mut bad_crc = encode_record((0x0808, 8), 0x0808);
        bad_crc[8] ^= 0x01;
        // A last record cut short whose last byte written is a zero: one
        // record cut short, not a record and zeros.
        let ending_in_zero = [0x07, 0x07, 0x00];
        let cases: Vec<(&str, Vec<u8>, Vec<Region>, u64)> = vec![
            ("empty file", vec![], vec![], 0),
            (
                "5-byte file",
                MAGIC[..5].to_vec(),
                vec![region(HeaderCutShort, 0, 5)],
                0,
            ),
            (
                "7-byte file",
                MAGIC[..7].to_vec(),
                vec![region(HeaderCutShort, 0, 7)],
                0,
            ),
            ("5 zeros", vec![0; 5], vec![region(OnlyZeros, 0, 5)], 0),
            (
                "100 zeros",
                vec![0; 100],
                vec![region(OnlyZeros, 0, 100)],
                0,
            ),
            ("header only", MAGIC.to_vec(), vec![], 0),
            (
                "torn record ending in a zero byte",
                with(&[&two, &ending_in_zero]),
                vec![region(RecordCutShort, 26, 3)],
                2,
            ),
            (
                "torn record of 8 bytes",
                with(&[&two, &last[..8]]),
                vec![region(RecordCutShort, 26, 8)],
                2,
            ),
            (
                "one zero",
                with(&[&two, &[0]]),
                vec![region(ZerosAtEnd, 26, 1)],
                2,
            ),
            (
                "4096 zeros",
                with(&[&two, &[0; 4096]]),
                vec![region(ZerosAtEnd, 26, 4096)],
                2,
            ),
            (
                "torn record then zeros",
                with(&[&two, &last[..4], &[0; 100]]),
                vec![region(RecordCutShortThenZeros, 26, 104)],
                2,
            ),
            (
                "whole last record with a bad CRC",
                with(&[&two, &bad_crc]),
                vec![region(NotRecords, 26, 9)],
                2,
            ),
            (
                "garbage then zeros at the end",
                with(&[&two, &[0xEE; 20], &[0; 50]]),
                vec![region(NotRecords, 26, 70)],
                2,
            ),
            (
                "zeros between records",
                with(&[&file(&four[..2]), &[0; 600], &file(&four[2..])[8..]]),
                vec![region(ZerosBetweenRecords, 26, 600)],
                4,
            ),
            (
                "garbage between records",
                with(&[&file(&four[..2]), &[0xA5; 13], &file(&four[2..])[8..]]),
                vec![region(NotRecords, 26, 13)],
                4,
            ),
            (
                "damage mid-file and a torn last record",
                with(&[
                    &file(&four[..2]),
                    &[0xA5; 13],
                    &file(&four[2..])[8..],
                    &last[..5],
                ]),
                vec![region(NotRecords, 26, 13), region(RecordCutShort, 57, 5)],
                4,
            ),
        ];
        for (name, bytes, regions, records) in cases {
            let (s, got) = scan_ok(&bytes);
            assert_eq!(s.regions(), regions, "{name}");
            assert_eq!((s.records, got.len() as u64), (records, records), "{name}");
            let leftover = s.leftover.map_or(0, |r| r.bytes);
            assert_eq!(s.end + leftover, bytes.len() as u64, "{name}");
            let damaged: Vec<_> = regions
                .iter()
                .filter(|r| !r.kind.is_crash_leftover())
                .collect();
            assert_eq!(s.damage.regions, damaged.len() as u64, "{name}");
            assert_eq!(
                s.damage.bytes,
                damaged.iter().map(|r| r.bytes).sum::<u64>(),
                "{name}"
            );
            assert_eq!(s.blank, !bytes.starts_with(MAGIC), "{name}");
        }
    }

    #[test]
    fn each_kind_is_described_once_and_leftovers_are_told_from_damage() {
        let mut seen = std::collections::HashSet::new();
        for kind in DamageKind::ALL {
            assert!(seen.insert(kind.describe()), "{kind:?}");
        }
        let leftovers: Vec<_> = DamageKind::ALL
            .into_iter()
            .filter(|k| k.is_crash_leftover())
            .collect();
        assert_eq!(
            leftovers,
            [
                HeaderCutShort,
                OnlyZeros,
                RecordCutShort,
                ZerosAtEnd,
                RecordCutShortThenZeros
            ]
        );
        assert_eq!(
            region(HeaderCutShort, 0, 5).to_string(),
            format!("5 bytes at byte 0: {}", HeaderCutShort.describe())
        );
        assert!(
            region(RecordCutShort, 26, 1)
                .to_string()
                .starts_with("1 byte at byte 26: a record cut short")
        );
    }

    #[test]
    fn clean_files() {
        let (s, got) = scan_ok(MAGIC);
        assert_eq!(
            s,
            Scan {
                end: 8,
                ..Scan::default()
            }
        );
        assert!(got.is_empty());
        let records = numbered(3);
        let (s, got) = scan_ok(&file(&records));
        assert_eq!(
            s,
            Scan {
                records: 3,
                end: 35,
                ..Scan::default()
            }
        );
        assert_eq!(got, records);
    }

    #[test]
    fn a_record_cut_short_anywhere_is_one_leftover() {
        let records = numbered(2);
        let bytes = file(&records);
        for cut in 1..RECORD_BYTES {
            let (s, got) = scan_ok(&bytes[..bytes.len() - cut]);
            let kept = (RECORD_BYTES - cut) as u64;
            // Whatever the fragment's bytes (a zero among them or not).
            let kind = if bytes[17..17 + kept as usize].iter().all(|&b| b == 0) {
                ZerosAtEnd
            } else {
                RecordCutShort
            };
            assert_eq!(
                s,
                Scan {
                    records: 1,
                    end: 17,
                    leftover: Some(region(kind, 17, kept)),
                    ..Scan::default()
                },
                "cut {cut}"
            );
            assert_eq!(got, records[..1]);
        }
    }

    #[test]
    fn a_flipped_byte_mid_file_loses_only_its_record() {
        let records = numbered(40);
        let clean = file(&records);
        for offset in [8, 12, 16, 17, 200, clean.len() - 10] {
            let mut bytes = clean.clone();
            bytes[offset] ^= 0x01;
            let hit = (offset - 8) / RECORD_BYTES;
            let (s, got) = scan_ok(&bytes);
            let start = (8 + hit * RECORD_BYTES) as u64;
            assert_eq!(
                s,
                Scan {
                    records: 39,
                    damage: Damage {
                        regions: 1,
                        bytes: 9,
                        listed: vec![region(NotRecords, start, 9)],
                    },
                    end: clean.len() as u64,
                    ..Scan::default()
                },
                "offset {offset}"
            );
            let mut want = records.clone();
            want.remove(hit);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn resynchronises_after_garbage_of_any_length() {
        let before = numbered(3);
        let after: Vec<_> = (100..105u16).map(|i| ((i, 1), i)).collect();
        for junk in 1..30 {
            let mut bytes = file(&before);
            bytes.extend((0..junk).map(|i| 0xA5 ^ i as u8));
            for &(k, v) in &after {
                bytes.extend(encode_record(k, v));
            }
            let (s, got) = scan_ok(&bytes);
            assert_eq!(s.records, 8, "{junk} junk bytes");
            assert_eq!(s.regions(), [region(NotRecords, 35, junk as u64)]);
            assert_eq!(s.end, bytes.len() as u64);
            assert_eq!(got, [before.clone(), after.clone()].concat());
        }
    }

    #[test]
    fn many_damaged_regions_are_all_counted_and_the_first_listed() {
        let records = numbered(200);
        let mut bytes = file(&records);
        // Every fourth record damaged: 50 regions of one record each.
        for n in (0..200).step_by(4) {
            bytes[8 + n * RECORD_BYTES + 3] ^= 0x80;
        }
        let (s, got) = scan_ok(&bytes);
        assert_eq!((s.records, got.len()), (150, 150));
        assert_eq!((s.damage.regions, s.damage.bytes), (50, 450));
        let first: Vec<_> = (0..MAX_LISTED as u64)
            .map(|i| region(NotRecords, 8 + i * 36, 9))
            .collect();
        assert_eq!(s.damage.listed, first);
        assert_eq!(s.damage.first(), Some(first[0]));
    }

    proptest::proptest! {
        /// Any bytes after a header: no panic, the same verdict however split,
        /// every emitted record counted, and every byte accounted for once.
        #[test]
        fn any_damage_scans_the_same_in_chunks(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            good in proptest::collection::vec((0u16..4, 0u8..4, proptest::prelude::any::<u16>()), 0..6),
            at in 0usize..200,
        ) {
            let good: Vec<_> = good.iter().map(|&(d, r, v)| ((d, r), v)).collect();
            let mut bytes = file(&good);
            bytes.extend(&body);
            for &(k, v) in &good {
                bytes.extend(encode_record(k, v));
            }
            let (verdict, got) = scan_all(&bytes);
            let at = at.min(bytes.len());
            proptest::prop_assert_eq!(scan_split(&bytes, at), (verdict.clone(), got.clone()));
            let s = verdict.unwrap();
            proptest::prop_assert_eq!(s.records as usize, got.len());
            // The good records on both sides of the damage are all kept.
            proptest::prop_assert_eq!(&got[..good.len()], &good[..]);
            proptest::prop_assert_eq!(&got[got.len() - good.len()..], &good[..]);
            let leftover = s.leftover.map_or(0, |r| r.bytes);
            let accounted = HEADER_BYTES + s.records * RECORD + s.damage.bytes + leftover;
            proptest::prop_assert_eq!(accounted, bytes.len() as u64);
            proptest::prop_assert_eq!(s.end + leftover, bytes.len() as u64);
            // Regions never overlap and come in file order.
            let regions = s.regions();
            for pair in regions.windows(2) {
                proptest::prop_assert!(pair[0].offset + pair[0].bytes <= pair[1].offset);
            }
            proptest::prop_assert!(s.leftover.is_none_or(|r| r.kind.is_crash_leftover()));
            proptest::prop_assert!(s.damage.listed.iter().all(|r| !r.kind.is_crash_leftover()));
        }
    }
}
