//! The decision log: one fixed-size, checksummed record per decided item, appended to segment
//! files `decisions-<first seq>.log` in the records folder.
//!
//! A record is [`RECORD_BYTES`] bytes: a magic, a CRC-32 of the rest, and the item's fields.
//! Records carry a sequence number that runs on across segments and restarts. On start-up the
//! last segment is read back; the first record that is short, has a wrong checksum or breaks
//! the sequence marks a torn tail (a write cut by a crash or power loss), and the file is cut
//! there. Segments hold [`SEGMENT_RECORDS`] records; the oldest are deleted beyond the
//! configured number of segments.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::core::decision::{Action, Outcome};
use crate::core::MAX_CLASSES;

/// Bytes per record.
pub const RECORD_BYTES: usize = 64;
/// Records per segment file (4 MiB).
pub const SEGMENT_RECORDS: u64 = 65_536;
const MAGIC: [u8; 4] = *b"FSR1";

/// Why an item carried a fault (index into [`FAULT_NAMES`]).
pub const FAULT_NAMES: [&str; 9] = [
    "",
    "corrupt frame",
    "wrong frame size",
    "model error",
    "decision overrun",
    "tracking overflow",
    "dropped frame",
    "camera timeout",
    "camera lost",
];

/// The code of a fault name (0: none or unknown).
pub fn fault_code(name: Option<&str>) -> u8 {
    match name {
        None => 0,
        Some(n) => FAULT_NAMES.iter().position(|f| *f == n).unwrap_or(0) as u8,
    }
}

/// One decided item.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogRecord {
    /// Position in the log (assigned by the writer; runs on across restarts).
    pub seq: u64,
    /// Wall-clock time of the decision, milliseconds since 1970 (UTC).
    pub unix_ms: u64,
    /// Local calendar day of the decision, as `yyyymmdd`.
    pub day: u32,
    /// Shift of that day (0 = first configured shift start).
    pub shift: u8,
    /// The station's item id.
    pub item: u32,
    /// The camera frame's sequence number (0 for items the camera did not see).
    pub frame_seq: u32,
    /// Why.
    pub outcome: Outcome,
    /// What the actuator did.
    pub action: Action,
    /// Class index, if the scores were valid.
    pub class: Option<u8>,
    /// Fault code ([`FAULT_NAMES`]), 0 for none.
    pub fault: u8,
    /// Score of the class.
    pub score: f32,
    /// Capture → decision, µs.
    pub latency_us: u32,
    /// The recipe (product) that decided it: its index in the profile (0: the profile's own).
    pub recipe: u8,
}

fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Accept => 0,
        Outcome::Reject => 1,
        Outcome::Uncertain => 2,
        Outcome::FailSafe => 3,
    }
}

impl LogRecord {
    /// The record's bytes.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.unix_ms.to_le_bytes());
        b[24..28].copy_from_slice(&self.day.to_le_bytes());
        b[28..32].copy_from_slice(&self.item.to_le_bytes());
        b[32..36].copy_from_slice(&self.frame_seq.to_le_bytes());
        b[36..40].copy_from_slice(&self.score.to_le_bytes());
        b[40..44].copy_from_slice(&self.latency_us.to_le_bytes());
        b[44] = outcome_code(self.outcome);
        b[45] = matches!(self.action, Action::Reject) as u8;
        b[46] = self.class.unwrap_or(u8::MAX);
        b[47] = self.fault;
        b[48] = self.shift;
        b[49] = self.recipe;
        let crc = crc32fast::hash(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Read a record back; `None` when the bytes are not a whole, intact record.
    pub fn decode(b: &[u8]) -> Option<LogRecord> {
        if b.len() < RECORD_BYTES || b[0..4] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[4..8].try_into().ok()?);
        if crc != crc32fast::hash(&b[8..RECORD_BYTES]) {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let outcome = match b[44] {
            0 => Outcome::Accept,
            1 => Outcome::Reject,
            2 => Outcome::Uncertain,
            3 => Outcome::FailSafe,
            _ => return None,
        };
        Some(LogRecord {
            seq: u64_at(8),
            unix_ms: u64_at(16),
            day: u32_at(24),
            item: u32_at(28),
            frame_seq: u32_at(32),
            score: f32::from_bits(u32_at(36)),
            latency_us: u32_at(40),
            outcome,
            action: if b[45] == 1 { Action::Reject } else { Action::Accept },
            class: (b[46] != u8::MAX && (b[46] as usize) < MAX_CLASSES).then_some(b[46]),
            fault: b[47].min(FAULT_NAMES.len() as u8 - 1),
            shift: b[48],
            recipe: b[49],
        })
    }
}

/// What start-up found in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogRecovery {
    /// Segment files present.
    pub segments: usize,
    /// Intact records in the last segment.
    pub records_in_last: u64,
    /// The next sequence number (one past the last intact record).
    pub next_seq: u64,
    /// Bytes cut from the end of the last segment (a torn write).
    pub torn_bytes: u64,
}

/// Appends records; see the module documentation.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    first_seq: u64,
    next_seq: u64,
    max_segments: usize,
    buf: Vec<u8>,
}

fn segment_name(first_seq: u64) -> String {
    format!("decisions-{first_seq:016}.log")
}

/// The segment files of `dir`, oldest first, with their first sequence numbers.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list the records folder", dir.display())),
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if let Some(seq) = n
            .strip_prefix("decisions-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            v.push((seq, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Read the intact records of one segment; returns them and the byte length they cover.
fn read_segment(path: &Path, first_seq: u64) -> Result<(Vec<LogRecord>, u64, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::with_capacity(bytes.len() / RECORD_BYTES);
    let mut expect = first_seq;
    for chunk in bytes.chunks(RECORD_BYTES) {
        match LogRecord::decode(chunk) {
            Some(r) if r.seq == expect => {
                out.push(r);
                expect += 1;
            }
            _ => break,
        }
    }
    let good = out.len() as u64 * RECORD_BYTES as u64;
    Ok((out, good, bytes.len() as u64 - good))
}

impl LogWriter {
    /// Open (or create) the log in `dir`, cutting a torn tail off the last segment.
    pub fn open(dir: &Path, max_segments: usize) -> Result<(LogWriter, LogRecovery)> {
        let existed = dir.is_dir();
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the records folder", dir.display()))?;
        if !existed {
            // A new folder outlives a power cut once the folder that holds it is synced.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent);
            }
        }
        let segs = segments(dir)?;
        let mut rec = LogRecovery {
            segments: segs.len(),
            ..LogRecovery::default()
        };
        let (first_seq, path) = match segs.last() {
            Some((first, path)) => {
                let (records, good, torn) = read_segment(path, *first)?;
                rec.records_in_last = records.len() as u64;
                rec.torn_bytes = torn;
                rec.next_seq = first + records.len() as u64;
                if torn > 0 {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .with_context(|| format!("{}: cannot open to cut a torn tail", path.display()))?;
                    f.set_len(good)
                        .and_then(|_| f.sync_all())
                        .with_context(|| format!("{}: cannot cut a torn tail", path.display()))?;
                }
                (*first, path.clone())
            }
            None => {
                rec.segments = 1;
                (0, dir.join(segment_name(0)))
            }
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        file.seek(SeekFrom::End(0))?;
        let w = LogWriter {
            dir: dir.to_path_buf(),
            file,
            first_seq,
            next_seq: rec.next_seq,
            max_segments: max_segments.max(1),
            buf: Vec::with_capacity(RECORD_BYTES * 1024),
        };
        if segs.is_empty() {
            sync_dir(dir);
        }
        Ok((w, rec))
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence number of the first record of the segment being appended to: it changes
    /// when a segment is full and the next one starts.
    pub fn segment_first_seq(&self) -> u64 {
        self.first_seq
    }

    /// A second handle on the segment being appended to, for syncing it from another thread
    /// ([`File::sync_data`] on it makes what [`LogWriter::append`] wrote durable). A full
    /// segment is synced before the next one starts.
    pub fn sync_handle(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Append records (their `seq` is set here). Written, not yet synced: see [`LogWriter::sync`].
    pub fn append(&mut self, records: &mut [LogRecord]) -> std::io::Result<()> {
        let mut i = 0;
        while i < records.len() {
            if self.next_seq - self.first_seq >= SEGMENT_RECORDS {
                self.rotate()?;
            }
            let room = (SEGMENT_RECORDS - (self.next_seq - self.first_seq)) as usize;
            let n = room.min(records.len() - i);
            self.buf.clear();
            for r in &mut records[i..i + n] {
                r.seq = self.next_seq + (self.buf.len() / RECORD_BYTES) as u64;
                self.buf.extend_from_slice(&r.encode());
            }
            if let Err(e) = self.file.write_all(&self.buf) {
                // Whatever part reached the file is a torn tail: cut it so later records
                // still follow in sequence.
                let len = (self.next_seq - self.first_seq) * RECORD_BYTES as u64;
                let _ = self.file.set_len(len);
                return Err(e);
            }
            self.next_seq += n as u64;
            i += n;
        }
        Ok(())
    }

    /// Make what was appended durable (survives a power cut).
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let path = self.dir.join(segment_name(self.next_seq));
        self.file = OpenOptions::new().create(true).append(true).open(path)?;
        self.first_seq = self.next_seq;
        sync_dir(&self.dir);
        if let Ok(segs) = segments(&self.dir) {
            let excess = segs.len().saturating_sub(self.max_segments);
            for (_, p) in segs.iter().take(excess) {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    }
}

/// Make a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Every intact record in `dir` with `seq >= from`, oldest first. A damaged record inside a
/// segment ends that segment's reading (it is reported by [`check`]).
pub fn read_from(dir: &Path, from: u64) -> Result<Vec<LogRecord>> {
    let segs = segments(dir)?;
    let mut out = Vec::new();
    for (k, (first, path)) in segs.iter().enumerate() {
        if let Some((next, _)) = segs.get(k + 1) {
            if *next <= from {
                continue;
            }
        }
        let (records, _, _) = read_segment(path, *first)?;
        out.extend(records.into_iter().filter(|r| r.seq >= from));
    }
    Ok(out)
}

/// Integrity of the whole log: (intact records, damaged bytes). Damaged bytes anywhere but the
/// end of the last segment mean corruption; at the very end they are a torn tail.
pub fn check(dir: &Path) -> Result<(u64, u64)> {
    let mut records = 0;
    let mut damaged = 0;
    for (first, path) in segments(dir)? {
        let (r, _, bad) = read_segment(&path, first)?;
        records += r.len() as u64;
        damaged += bad;
    }
    Ok((records, damaged))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(item: u32) -> LogRecord {
        LogRecord {
            seq: 0,
            unix_ms: 1_700_000_000_000 + item as u64,
            day: 20261130,
            shift: 1,
            item,
            frame_seq: item * 2,
            outcome: if item.is_multiple_of(3) {
                Outcome::Reject
            } else {
                Outcome::Accept
            },
            action: if item.is_multiple_of(3) {
                Action::Reject
            } else {
                Action::Accept
            },
            class: Some((item % 6) as u8),
            fault: (item % 9) as u8,
            score: 0.25 + item as f32 / 1000.0,
            latency_us: 1234 + item,
            recipe: 0,
        }
    }

    #[test]
    fn records_round_trip_and_a_flipped_bit_is_caught() {
        let r = LogRecord { seq: 77, ..rec(5) };
        let b = r.encode();
        assert_eq!(LogRecord::decode(&b), Some(r));
        for i in 0..RECORD_BYTES {
            let mut c = b;
            c[i] ^= 0x10;
            assert_eq!(LogRecord::decode(&c), None, "byte {i}");
        }
        assert_eq!(LogRecord::decode(&b[..RECORD_BYTES - 1]), None);
    }

    #[test]
    fn torn_tail_is_cut_and_the_sequence_goes_on() {
        let dir = std::env::temp_dir().join(format!("ferroscope-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut w, r) = LogWriter::open(&dir, 4).unwrap();
        assert_eq!(r.next_seq, 0);
        let mut batch: Vec<LogRecord> = (0..10).map(rec).collect();
        w.append(&mut batch).unwrap();
        w.sync().unwrap();
        drop(w);
        // A crash in the middle of the next write: 1.5 records reached the file.
        let path = segments(&dir).unwrap()[0].1.clone();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut more = rec(10);
        more.seq = 10;
        f.write_all(&more.encode()).unwrap();
        more.seq = 11;
        f.write_all(&more.encode()[..30]).unwrap();
        drop(f);
        let (mut w, r) = LogWriter::open(&dir, 4).unwrap();
        assert_eq!(r.next_seq, 11);
        assert_eq!(r.torn_bytes, 30);
        let mut batch = vec![rec(11)];
        w.append(&mut batch).unwrap();
        drop(w);
        let all = read_from(&dir, 0).unwrap();
        assert_eq!(all.len(), 12);
        assert!(all.iter().enumerate().all(|(i, r)| r.seq == i as u64));
        assert_eq!(check(&dir).unwrap(), (12, 0));
        assert_eq!(read_from(&dir, 9).unwrap().len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
