//! A TensorBoard event file of scalars, written without TensorFlow: records of
//! hand-encoded `Event` protocol buffers, each framed as TensorFlow's `TFRecord`
//! (length, masked CRC-32C of the length, data, masked CRC-32C of the data).
//!
//! A resumed run starts a new file whose first event is a `SessionLog START` at the
//! resumed step, which tells TensorBoard to drop the points that the interrupted run
//! logged after its last checkpoint.

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
    /// Creates a new event file in `dir`; `resumed_at` writes a `SessionLog START` at
    /// that step.
    pub fn create(dir: &Path, resumed_at: Option<u64>) -> Result<Self, TrainError> {
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
        if let Some(step) = resumed_at {
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
        let len = (data.len() as u64).to_le_bytes();
        let io = TrainError::io(&self.path);
        let mut framed = Vec::with_capacity(data.len() + 16);
        framed.extend_from_slice(&len);
        framed.extend_from_slice(&masked_crc(&len).to_le_bytes());
        framed.extend_from_slice(data);
        framed.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out.write_all(&framed).map_err(io)
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

/// Reads the records of an event file back, checking both CRCs of each; returns the
/// raw `Event` bytes. For tests and tools.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = bytes.get(at..at + 12).ok_or("truncated record header")?;
        let (len, len_crc) = header.split_at(8);
        if masked_crc(len).to_le_bytes() != len_crc {
            return Err(format!("bad length CRC at byte {at}"));
        }
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
        let data = bytes.get(at + 12..at + 12 + n).ok_or("truncated record")?;
        let crc = bytes
            .get(at + 12 + n..at + 16 + n)
            .ok_or("truncated record CRC")?;
        if masked_crc(data).to_le_bytes() != crc {
            return Err(format!("bad data CRC at byte {at}"));
        }
        records.push(data.to_vec());
        at += 16 + n;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C (RFC 3720, appendix B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
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
