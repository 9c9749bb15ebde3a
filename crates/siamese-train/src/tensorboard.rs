//! A TensorBoard event file of scalars, written without TensorFlow: records of
//! hand-encoded `Event` protocol buffers, each framed as TensorFlow's `TFRecord`
//! (length, masked CRC-32C of the length, data, masked CRC-32C of the data).
//!
//! A resumed run starts a new file. Before that, the earlier files of the run lose the
//! events the interrupted run logged after its last checkpoint (they are logged again,
//! and readers of the files, not only TensorBoard, would see each such step twice). The
//! new file opens with a `SessionLog START` at the first step it logs, the purge marker
//! that tells a TensorBoard which already read those points to drop them too.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::TrainError;

/// CRC-32C (Castagnoli), the checksum of TFRecord framing.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotated and offset so that CRCs of CRCs stay well spread.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn len_delimited(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// An `Event` with wall time, step and one extra field already encoded.
fn event(wall_time: f64, step: u64, extra: &[u8]) -> Vec<u8> {
    let mut e = vec![0x09]; // field 1, fixed64: wall_time
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10); // field 2, varint: step
    varint(step, &mut e);
    e.extend_from_slice(extra);
    e
}

/// Writes scalar summaries to `events.out.tfevents.<time>.siamese` in a folder.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates a new event file in `dir`. `continues_from`, when the writer continues
    /// an interrupted run, is the first step it will log: the events at that step and
    /// later are removed from the folder's earlier files (see [`prune_from`]) and a
    /// `SessionLog START` at that step opens the new one.
    pub fn create(dir: &Path, continues_from: Option<u64>) -> Result<Self, TrainError> {
        if let Some(step) = continues_from {
            prune_from(dir, step)?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{}.siamese",
            now.as_secs(),
            now.subsec_nanos()
        ));
        let file = File::create(&path).map_err(TrainError::io(&path))?;
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        let mut version = Vec::new();
        len_delimited(0x1a, b"brain.Event:2", &mut version); // field 3: file_version
        writer.record(&event(now.as_secs_f64(), 0, &version))?;
        if let Some(step) = continues_from {
            let mut log = Vec::new();
            len_delimited(0x32, &[0x08, 0x01], &mut log); // field 6: session_log {status: START}
            writer.record(&event(now.as_secs_f64(), step, &log))?;
        }
        writer.flush()?;
        Ok(writer)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<(), TrainError> {
        let mut framed = Vec::with_capacity(data.len() + 16);
        frame(data, &mut framed);
        self.out
            .write_all(&framed)
            .map_err(TrainError::io(&self.path))
    }

    /// Logs scalars (tag, value) at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), TrainError> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            len_delimited(0x0a, tag.as_bytes(), &mut v); // Value.tag
            v.push(0x15); // Value.simple_value, fixed32
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            len_delimited(0x0a, &v, &mut summary); // Summary.value
        }
        let mut field = Vec::new();
        len_delimited(0x2a, &summary, &mut field); // Event.summary, field 5
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.record(&event(wall, step, &field))?;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), TrainError> {
        self.out.flush().map_err(TrainError::io(&self.path))
    }
}

/// Appends one TFRecord: length, its masked CRC, the data, its masked CRC.
fn frame(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// The records of an event file's bytes, each with both CRCs checked, up to the first
/// that is torn or corrupt; and what was wrong with that one, if any.
fn parse_records(bytes: &[u8]) -> (Vec<&[u8]>, Option<String>) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 12) else {
            return (records, Some("truncated record header".into()));
        };
        let (len, len_crc) = header.split_at(8);
        if masked_crc(len).to_le_bytes() != len_crc {
            return (records, Some(format!("bad length CRC at byte {at}")));
        }
        // A length past the file's end (a torn or forged record) is caught by `get`.
        let n = usize::try_from(u64::from_le_bytes(len.try_into().expect("8 bytes")))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let Some(data) = bytes.get(at + 12..at + 12 + n) else {
            return (records, Some("truncated record".into()));
        };
        let Some(crc) = bytes.get(at + 12 + n..at + 16 + n) else {
            return (records, Some("truncated record CRC".into()));
        };
        if masked_crc(data).to_le_bytes() != crc {
            return (records, Some(format!("bad data CRC at byte {at}")));
        }
        records.push(data);
        at += 16 + n;
    }
    (records, None)
}

/// Reads the records of an event file back, checking both CRCs of each; returns the
/// raw `Event` bytes. For tests and tools.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    match parse_records(&bytes) {
        (records, None) => Ok(records.into_iter().map(<[u8]>::to_vec).collect()),
        (_, Some(problem)) => Err(problem),
    }
}

/// The top-level fields of a protocol buffer message: `(field number, value)`, where a
/// varint or fixed value comes as its little-endian bytes and a length-delimited one as
/// its body. `None` when the bytes are not a well-formed message.
fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes)?;
        let size = match key & 7 {
            0 => {
                let start = bytes;
                read_varint(&mut bytes)?;
                out.push((key >> 3, &start[..start.len() - bytes.len()]));
                continue;
            }
            1 => 8,
            2 => usize::try_from(read_varint(&mut bytes)?).ok()?,
            5 => 4,
            _ => return None,
        };
        if size > bytes.len() {
            return None;
        }
        let (value, rest) = bytes.split_at(size);
        out.push((key >> 3, value));
        bytes = rest;
    }
    Some(out)
}

/// An `Event`'s step (field 2), 0 when absent as protobuf defaults it.
fn event_step(event: &[u8]) -> Option<u64> {
    let fields = fields(event)?;
    match fields.iter().find(|(number, _)| *number == 2) {
        None => Some(0),
        // `fields` checked the varint's form; at most 10 bytes of 7 bits each.
        Some((_, varint)) => Some(
            varint
                .iter()
                .enumerate()
                .fold(0u64, |v, (i, b)| v | u64::from(b & 0x7f) << (7 * i)),
        ),
    }
}

/// The scalars of an event file, in file order: `(step, tag, value)`. For tests and
/// tools that read a run's curves without TensorBoard.
pub fn read_scalars(path: &Path) -> Result<Vec<(u64, String, f32)>, String> {
    let mut scalars = Vec::new();
    for record in read_records(path)? {
        let bad = || {
            format!(
                "{}: an event that is not a valid protocol buffer",
                path.display()
            )
        };
        let event = fields(&record).ok_or_else(bad)?;
        let step = event_step(&record).ok_or_else(bad)?;
        for (_, summary) in event.iter().filter(|(n, _)| *n == 5) {
            for (_, value) in fields(summary)
                .ok_or_else(bad)?
                .iter()
                .filter(|(n, _)| *n == 1)
            {
                let value = fields(value).ok_or_else(bad)?;
                let tag = value.iter().find(|(n, _)| *n == 1);
                let simple = value.iter().find(|(n, v)| *n == 2 && v.len() == 4);
                if let (Some((_, tag)), Some((_, simple))) = (tag, simple) {
                    let simple = f32::from_le_bytes((*simple).try_into().expect("4 bytes"));
                    scalars.push((step, String::from_utf8_lossy(tag).into_owned(), simple));
                }
            }
        }
    }
    Ok(scalars)
}

/// Removes, from the event files this tool wrote in `dir`, every event at `step` or
/// later, and any torn record a killed writer left at a file's end. Each changed file
/// is replaced atomically; files of other writers are left alone.
pub fn prune_from(dir: &Path, step: u64) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(dir).map_err(TrainError::io(dir))?;
    for entry in entries {
        let path = entry.map_err(TrainError::io(dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let ours =
            name.is_some_and(|n| n.starts_with("events.out.tfevents.") && n.ends_with(".siamese"));
        if !ours || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(TrainError::io(&path))?;
        let (records, problem) = parse_records(&bytes);
        let kept: Vec<&[u8]> = records
            .iter()
            .copied()
            .filter(|r| event_step(r).is_some_and(|s| s < step))
            .collect();
        if kept.len() == records.len() && problem.is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(bytes.len());
        for record in kept {
            frame(record, &mut out);
        }
        siamese_data::write_atomic(&path, &out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C (RFC 3720, appendix B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    /// Issue #28: after a kill and a resume, the steps the interrupted run logged past
    /// its checkpoint were in two event files.
    #[test]
    fn a_continuing_writer_removes_the_earlier_files_later_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = EventWriter::create(dir.path(), None).unwrap();
        for step in 1..=5 {
            first.scalars(step, &[("train/loss", step as f64)]).unwrap();
        }
        let first_path = first.path().to_path_buf();
        drop(first);
        // A kill -9 in the middle of a record.
        let mut bytes = std::fs::read(&first_path).unwrap();
        bytes.extend_from_slice(&[7, 0, 0]);
        std::fs::write(&first_path, bytes).unwrap();
        // Another program's file in the folder is not ours to edit.
        let foreign = dir.path().join("events.out.tfevents.1.other-host");
        std::fs::copy(&first_path, &foreign).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));

        let mut second = EventWriter::create(dir.path(), Some(4)).unwrap();
        second.scalars(4, &[("train/loss", 40.0)]).unwrap();
        let steps =
            |path: &Path| -> Vec<u64> { read_scalars(path).unwrap().iter().map(|s| s.0).collect() };
        assert_eq!(steps(&first_path), [1, 2, 3]);
        assert_eq!(steps(second.path()), [4]);
        assert_eq!(read_scalars(second.path()).unwrap()[0].1, "train/loss");
        assert_eq!(read_scalars(second.path()).unwrap()[0].2, 40.0);
        assert!(read_records(&foreign).is_err(), "left torn, as found");
        // Nothing to remove: the file is left as it is.
        let before = std::fs::metadata(&first_path).unwrap().modified().unwrap();
        prune_from(dir.path(), 4).unwrap();
        assert_eq!(
            std::fs::metadata(&first_path).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn malformed_messages_are_not_fields() {
        assert!(fields(&[0x10]).is_none(), "varint cut short");
        assert!(fields(&[0x0a, 5, 1]).is_none(), "length past the end");
        assert!(fields(&[0x0b]).is_none(), "group wire type");
        assert_eq!(event_step(&[0x10, 0xac, 0x02]), Some(300));
        assert_eq!(event_step(&[]), Some(0));
    }

    #[test]
    fn records_read_back_with_valid_crcs_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), Some(40)).unwrap();
        w.scalars(50, &[("train/loss", 1.5), ("train/lr", 0.25)])
            .unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let records = read_records(&path).unwrap();
        assert_eq!(records.len(), 3);
        assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
        assert!(
            records[1].ends_with(&[0x32, 0x02, 0x08, 0x01]),
            "SessionLog START"
        );
        let last = &records[2];
        assert!(last.windows(10).any(|w| w == b"train/loss"));
        let find_value = |tag: &[u8]| {
            let at = last.windows(tag.len()).position(|w| w == tag).unwrap() + tag.len();
            assert_eq!(last[at], 0x15);
            f32::from_le_bytes(last[at + 1..at + 5].try_into().unwrap())
        };
        assert_eq!(find_value(b"train/loss"), 1.5);
        assert_eq!(find_value(b"train/lr"), 0.25);
        // Step 50 is encoded as varint after the wall time.
        assert_eq!(&last[9..11], &[0x10, 50]);
        // A flipped byte is caught.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(read_records(&path).unwrap_err().contains("CRC"));
    }
}
