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
//! again, so one damaged region never hides the good records after it.

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

/// Damaged regions found between good records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Damage {
    pub regions: u64,
    pub bytes: u64,
    /// File offset of the first damaged byte.
    pub first: Option<u64>,
}

/// What a crash or a power cut left after the last good record: both are trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tail {
    /// A last record cut short (fewer than 9 bytes before any trailing zeros).
    pub torn_bytes: u64,
    /// Zero bytes at the very end (a power cut can leave a grown file unwritten).
    pub zero_bytes: u64,
}

impl Tail {
    pub fn bytes(&self) -> u64 {
        self.torn_bytes + self.zero_bytes
    }
}

/// The verdict on a whole file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    /// No header yet: an empty file, a header cut short, or only zeros. Nothing in
    /// it is data; it is started afresh.
    pub blank: bool,
    /// Good records, before and after any damage.
    pub records: u64,
    /// Good records before the first damage.
    pub records_before_damage: u64,
    pub damage: Damage,
    /// Where the tail starts: the file ends here once the tail is trimmed.
    pub end: u64,
    pub tail: Tail,
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
            if MAGIC.starts_with(bytes) {
                self.scan.blank = true;
                self.scan.tail.torn_bytes = available;
            } else if bytes.iter().all(|&b| b == 0) {
                self.scan.blank = true;
                self.scan.tail.zero_bytes = available;
            } else {
                return Err(FormatError::NotAJournal);
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
            self.scan.tail.zero_bytes = self.at;
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
                self.end_damage(start);
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
    fn end_damage(&mut self, start: u64) {
        self.count_damage(start, self.at - start);
        self.mode = Mode::Records;
    }

    /// One damaged region of `bytes` bytes from `start`.
    fn count_damage(&mut self, start: u64, bytes: u64) {
        if self.scan.damage.first.is_none() {
            self.scan.damage.first = Some(start);
            self.scan.records_before_damage = self.scan.records;
        }
        self.scan.damage.regions += 1;
        self.scan.damage.bytes += bytes;
    }

    /// Damage that runs to the end of the file: a tail a crash can leave, or damage.
    fn finish_damage(&mut self, start: u64, nonzero_end: u64) {
        let end = self.at;
        let content = nonzero_end - start;
        if content < RECORD {
            self.scan.end = start;
            self.scan.tail = Tail {
                torn_bytes: content,
                zero_bytes: end - nonzero_end,
            };
            return;
        }
        self.count_damage(start, content);
        self.scan.end = nonzero_end;
        self.scan.tail = Tail {
            torn_bytes: 0,
            zero_bytes: end - nonzero_end,
        };
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
                (verdict, got.clone()),
                "split at {at}"
            );
        }
        (verdict.expect("a data file"), got)
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
        ] {
            assert_eq!(
                scan_all(bytes).0,
                Err(FormatError::NotAJournal),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn blank_files_start_afresh() {
        let blank = |torn_bytes, zero_bytes| Scan {
            blank: true,
            tail: Tail {
                torn_bytes,
                zero_bytes,
            },
            ..Scan::default()
        };
        assert_eq!(scan_ok(b"").0, blank(0, 0));
        assert_eq!(scan_ok(b"WWEP").0, blank(4, 0));
        assert_eq!(scan_ok(&[0; 5]).0, blank(0, 5));
        assert_eq!(scan_ok(&[0; 100]).0, blank(0, 100));
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
    fn a_record_cut_short_is_a_torn_tail() {
        let records = numbered(2);
        let bytes = file(&records);
        for cut in 1..RECORD_BYTES {
            let (s, got) = scan_ok(&bytes[..bytes.len() - cut]);
            // Leading zero bytes of the fragment count as zeros; the sum is what matters.
            assert_eq!(s.tail.bytes(), (RECORD_BYTES - cut) as u64, "cut {cut}");
            assert_eq!(
                Scan {
                    tail: Tail::default(),
                    ..s
                },
                Scan {
                    records: 1,
                    end: 17,
                    ..Scan::default()
                },
                "cut {cut}"
            );
            assert_eq!(got, records[..1]);
        }
    }

    #[test]
    fn zeros_at_the_end_are_a_tail_however_long() {
        let records = numbered(2);
        for zeros in [1, 8, 9, 10, 4096] {
            let mut bytes = file(&records);
            bytes.extend(std::iter::repeat_n(0, zeros));
            let (s, got) = scan_ok(&bytes);
            assert_eq!(
                s,
                Scan {
                    records: 2,
                    end: 26,
                    tail: Tail {
                        torn_bytes: 0,
                        zero_bytes: zeros as u64
                    },
                    ..Scan::default()
                },
                "{zeros} zeros"
            );
            assert_eq!(got, records);
        }
        // A record half written, then zeros where the rest of the write went.
        let mut bytes = file(&records);
        bytes.extend_from_slice(&encode_record((0x0707, 7), 0x0707)[..4]);
        bytes.extend([0; 100]);
        let (s, _) = scan_ok(&bytes);
        let torn = Tail {
            torn_bytes: 4,
            zero_bytes: 100,
        };
        assert_eq!((s.end, s.tail, s.damage), (26, torn, Damage::default()));
    }

    #[test]
    fn a_whole_last_record_with_a_bad_crc_is_damage() {
        let records = numbered(2);
        let mut bytes = file(&records);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        let (s, got) = scan_ok(&bytes);
        assert_eq!(
            s,
            Scan {
                records: 1,
                records_before_damage: 1,
                damage: Damage {
                    regions: 1,
                    bytes: 9,
                    first: Some(17)
                },
                end: 26,
                ..Scan::default()
            }
        );
        assert_eq!(got, records[..1]);
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
                    records_before_damage: hit as u64,
                    damage: Damage {
                        regions: 1,
                        bytes: 9,
                        first: Some(start)
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
            assert_eq!(
                s.damage,
                Damage {
                    regions: 1,
                    bytes: junk as u64,
                    first: Some(35)
                }
            );
            assert_eq!((s.end, s.tail), (bytes.len() as u64, Tail::default()));
            assert_eq!(got, [before.clone(), after.clone()].concat());
        }
    }

    #[test]
    fn zeros_between_good_records_are_damage() {
        let records = numbered(4);
        let mut bytes = file(&records[..2]);
        bytes.extend([0; 600]);
        for &(k, v) in &records[2..] {
            bytes.extend(encode_record(k, v));
        }
        let (s, got) = scan_ok(&bytes);
        assert_eq!(
            s.damage,
            Damage {
                regions: 1,
                bytes: 600,
                first: Some(26)
            }
        );
        assert_eq!((s.records, s.tail), (4, Tail::default()));
        assert_eq!(got, records);
    }

    #[test]
    fn several_damaged_regions_are_counted() {
        let records = numbered(20);
        let mut bytes = file(&records);
        for offset in [8 + 2 * 9, 8 + 9 * 9 + 4, 8 + 15 * 9 + 8] {
            bytes[offset] ^= 0x80;
        }
        let (s, got) = scan_ok(&bytes);
        assert_eq!(s.records, 17);
        assert_eq!(s.records_before_damage, 2);
        assert_eq!(
            s.damage,
            Damage {
                regions: 3,
                bytes: 27,
                first: Some(26)
            }
        );
        assert_eq!(got.len(), 17);
    }

    #[test]
    fn damage_then_zeros_is_damage_then_a_zero_tail() {
        let mut bytes = file(&numbered(2));
        bytes.extend([0xEE; 20]);
        bytes.extend([0; 50]);
        let (s, _) = scan_ok(&bytes);
        assert_eq!(
            s.damage,
            Damage {
                regions: 1,
                bytes: 20,
                first: Some(26)
            }
        );
        assert_eq!((s.end, s.tail.zero_bytes, s.tail.torn_bytes), (46, 50, 0));
    }

    proptest::proptest! {
        /// Any bytes after a header: no panic, the same verdict however split,
        /// every emitted record counted, and every byte accounted for.
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
            proptest::prop_assert_eq!(scan_split(&bytes, at), (verdict, got.clone()));
            let s = verdict.unwrap();
            proptest::prop_assert_eq!(s.records as usize, got.len());
            // The good records on both sides of the damage are all kept.
            proptest::prop_assert_eq!(&got[..good.len()], &good[..]);
            proptest::prop_assert_eq!(&got[got.len() - good.len()..], &good[..]);
            let accounted = HEADER_BYTES + s.records * RECORD + s.damage.bytes + s.tail.bytes();
            proptest::prop_assert_eq!(accounted, bytes.len() as u64);
            proptest::prop_assert_eq!(s.end + s.tail.bytes(), bytes.len() as u64);
        }
    }
}
