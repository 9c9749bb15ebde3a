//! NumPy's `.npz` files (a zip archive of `.npy` arrays, as `numpy.savez` and
//! `savez_compressed` write them), read strictly: what Omniglot ships as.
//!
//! Only what data sets need is supported: C-order arrays of `bool`, `u8`, and
//! little-endian `i16`, `i32`, `i64`, `f32`; members stored or deflated; no zip64, no
//! encryption. Nothing in the file is trusted for an allocation: a member's declared
//! size is checked against [`MAX_MEMBER_BYTES`] and against its own shape before it is
//! inflated, the inflated bytes must be exactly the declared size, and their CRC-32
//! must match the archive's. Every error names the file, the member and what was
//! expected.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::DeflateDecoder;

use crate::error::DataError;

/// Largest member this reader inflates (4 GiB): Omniglot's largest is 212 MB.
pub const MAX_MEMBER_BYTES: u64 = 1 << 32;

/// The element type of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `|b1`: one byte, 0 or 1.
    Bool,
    /// `|u1`.
    U8,
    /// `<i2`.
    I16,
    /// `<i4`.
    I32,
    /// `<i8`.
    I64,
    /// `<f4`.
    F32,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Self> {
        Some(match descr {
            "|b1" => Self::Bool,
            "|u1" => Self::U8,
            "<i2" => Self::I16,
            "<i4" => Self::I32,
            "<i8" => Self::I64,
            "<f4" => Self::F32,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 => 1,
            Self::I16 => 2,
            Self::I32 | Self::F32 => 4,
            Self::I64 => 8,
        }
    }
}

/// One array: its type, shape and raw little-endian bytes (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product() * dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl Array {
    /// The values as `i64`, for integer arrays (and booleans as 0 / 1).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let d = &self.data;
        Some(match self.dtype {
            Dtype::Bool | Dtype::U8 => d.iter().map(|&b| i64::from(b)).collect(),
            Dtype::I16 => d
                .chunks_exact(2)
                .map(|c| i64::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")))
                .collect(),
            Dtype::F32 => return None,
        })
    }
}

/// The arrays of an `.npz` file by name (without the `.npy` suffix).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>, DataError> {
    let bytes = std::fs::read(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    decode_npz(&bytes, path)
}

/// [`read_npz`] of bytes already read; `origin` names them in errors.
pub fn decode_npz(bytes: &[u8], origin: &Path) -> Result<BTreeMap<String, Array>, DataError> {
    let bad = |detail: String| corrupt(origin, detail);
    let mut arrays = BTreeMap::new();
    for member in central_directory(bytes, origin)? {
        let Some(name) = member.name.strip_suffix(".npy") else {
            return Err(bad(format!(
                "member {:?} is not a .npy array (an .npz holds only those)",
                member.name
            )));
        };
        let raw = member_bytes(bytes, &member, origin)?;
        let array = decode_npy(&raw).map_err(|e| bad(format!("member {}: {e}", member.name)))?;
        if arrays.insert(name.to_string(), array).is_some() {
            return Err(bad(format!("member {} appears twice", member.name)));
        }
    }
    Ok(arrays)
}

fn corrupt(origin: &Path, detail: String) -> DataError {
    DataError::Corrupt {
        path: PathBuf::from(origin),
        detail: format!("not a valid .npz file: {detail}"),
    }
}

/// One entry of the zip's central directory.
struct Member {
    name: String,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local_header: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The members the archive lists, from its end-of-central-directory record.
fn central_directory(bytes: &[u8], origin: &Path) -> Result<Vec<Member>, DataError> {
    let bad = |detail: &str| corrupt(origin, detail.to_string());
    const EOCD: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    // The record is 22 bytes plus a comment of at most 65,535.
    let earliest = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (earliest..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(bytes, i) == Some(EOCD))
        .ok_or_else(|| bad("no end-of-archive record (truncated, or not a zip archive)"))?;
    let count = usize::from(u16_at(bytes, eocd + 10).ok_or_else(|| bad("short record"))?);
    let offset = u32_at(bytes, eocd + 16).ok_or_else(|| bad("short record"))? as usize;
    if count == 0xFFFF || offset == 0xFFFF_FFFF {
        return Err(bad("zip64 archives are not supported"));
    }
    let mut members = Vec::with_capacity(count.min(1024));
    let mut at = offset;
    for _ in 0..count {
        let field = |off: usize| u32_at(bytes, at + off);
        if field(0) != Some(CENTRAL) {
            return Err(bad("the central directory is cut short or damaged"));
        }
        let short = || bad("a central directory entry is cut short");
        let flags = u16_at(bytes, at + 8).ok_or_else(short)?;
        let method = u16_at(bytes, at + 10).ok_or_else(short)?;
        let crc = field(16).ok_or_else(short)?;
        let compressed = u64::from(field(20).ok_or_else(short)?);
        let size = u64::from(field(24).ok_or_else(short)?);
        let name_len = usize::from(u16_at(bytes, at + 28).ok_or_else(short)?);
        let extra_len = usize::from(u16_at(bytes, at + 30).ok_or_else(short)?);
        let comment_len = usize::from(u16_at(bytes, at + 32).ok_or_else(short)?);
        let local_header = u64::from(field(42).ok_or_else(short)?);
        let name = bytes.get(at + 46..at + 46 + name_len).ok_or_else(short)?;
        if flags & 1 != 0 {
            return Err(bad("encrypted members are not supported"));
        }
        if compressed == 0xFFFF_FFFF || size == 0xFFFF_FFFF || local_header == 0xFFFF_FFFF {
            return Err(bad("zip64 members are not supported"));
        }
        members.push(Member {
            name: String::from_utf8_lossy(name).into_owned(),
            method,
            crc,
            compressed,
            size,
            local_header,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(members)
}

/// A member's bytes, inflated, checked for size and CRC-32.
fn member_bytes(bytes: &[u8], m: &Member, origin: &Path) -> Result<Vec<u8>, DataError> {
    let bad = |detail: String| corrupt(origin, format!("member {}: {detail}", m.name));
    if m.size > MAX_MEMBER_BYTES {
        return Err(bad(format!(
            "declares {} bytes, more than the {MAX_MEMBER_BYTES} this reader accepts",
            m.size
        )));
    }
    let at = usize::try_from(m.local_header).map_err(|_| bad("offset out of range".into()))?;
    if u32_at(bytes, at) != Some(0x0403_4b50) {
        return Err(bad("its local header is missing or damaged".into()));
    }
    let short = || bad("its local header is cut short".into());
    let name_len = usize::from(u16_at(bytes, at + 26).ok_or_else(short)?);
    let extra_len = usize::from(u16_at(bytes, at + 28).ok_or_else(short)?);
    let start = at + 30 + name_len + extra_len;
    let end = start.checked_add(m.compressed as usize);
    let data = end
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| bad("its data runs past the end of the file (truncated?)".into()))?;
    let out = match m.method {
        0 => data.to_vec(),
        8 => {
            let mut out = Vec::with_capacity(m.size as usize);
            // One byte more than declared, so that a member inflating past its size is
            // caught without inflating all of it.
            DeflateDecoder::new(data)
                .take(m.size + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("cannot be inflated: {e}")))?;
            out
        }
        other => return Err(bad(format!("compression method {other} is not supported"))),
    };
    if out.len() as u64 != m.size {
        return Err(bad(format!(
            "holds {} bytes, the archive says {}",
            out.len(),
            m.size
        )));
    }
    let mut crc = flate2::Crc::new();
    crc.update(&out);
    if crc.sum() != m.crc {
        return Err(bad(format!(
            "CRC-32 {:08x}, the archive says {:08x} (damaged)",
            crc.sum(),
            m.crc
        )));
    }
    Ok(out)
}

/// Decodes one `.npy` array (format versions 1, 2 and 3).
pub fn decode_npy(bytes: &[u8]) -> Result<Array, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("no .npy magic".into());
    }
    let (header_len, header_at) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => (u32_at(bytes, 8).ok_or("header cut short")? as usize, 12),
        v => return Err(format!("format version {v} is not supported")),
    };
    let header = bytes
        .get(header_at..header_at + header_len)
        .ok_or("header cut short")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = Dtype::parse(descr).ok_or_else(|| {
        format!("dtype {descr} is not supported (|b1, |u1, <i2, <i4, <i8, <f4 are)")
    })?;
    match dict_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => return Err("Fortran-order arrays are not supported".into()),
        _ => return Err("header has no 'fortran_order'".into()),
    }
    let shape_text = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let shape = parse_shape(shape_text)?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or("shape overflows")?;
    let data = &bytes[header_at + header_len..];
    if data.len() != count {
        return Err(format!(
            "shape {shape:?} of {descr} needs {count} bytes of data, found {}",
            data.len()
        ));
    }
    Ok(Array {
        dtype,
        shape,
        data: data.to_vec(),
    })
}

/// The text of `key`'s value in the header's Python dict literal: up to the next
/// top-level comma (a tuple's commas are inside its parentheses).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// `(964, 20, 105, 105)`, `(3,)` or `()`.
fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("shape {text} is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("shape {text} holds {s}, not a size"))
        })
        .collect()
}

/// Writes arrays as an `.npz` (stored, not compressed): for tests and fixtures.
pub fn encode_npz(arrays: &[(&str, &Array)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, array) in arrays {
        let npy = encode_npy(array);
        let name = format!("{name}.npy");
        let mut crc = flate2::Crc::new();
        crc.update(&npy);
        let offset = out.len() as u32;
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        local.extend_from_slice(&crc.sum().to_le_bytes());
        local.extend_from_slice(&(npy.len() as u32).to_le_bytes());
        local.extend_from_slice(&(npy.len() as u32).to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&local);
        out.extend_from_slice(&npy);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&crc.sum().to_le_bytes());
        central.extend_from_slice(&(npy.len() as u32).to_le_bytes());
        central.extend_from_slice(&(npy.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_at = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(arrays.len() as u16).to_le_bytes());
    out.extend_from_slice(&(arrays.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&central_at.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// One `.npy` (format 1.0) of `array`.
pub fn encode_npy(array: &Array) -> Vec<u8> {
    let descr = match array.dtype {
        Dtype::Bool => "|b1",
        Dtype::U8 => "|u1",
        Dtype::I16 => "<i2",
        Dtype::I32 => "<i4",
        Dtype::I64 => "<i8",
        Dtype::F32 => "<f4",
    };
    let dims: Vec<String> = array.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Header padded with spaces to a multiple of 64 bytes, newline-terminated.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&array.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn labels() -> Array {
        Array {
            dtype: Dtype::I64,
            shape: vec![2, 3],
            data: [0i64, 1, 2, 3, 4, 5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        }
    }

    fn images() -> Array {
        Array {
            dtype: Dtype::Bool,
            shape: vec![2, 3, 2, 2],
            data: (0..24).map(|i| u8::from(i % 3 == 0)).collect(),
        }
    }

    #[test]
    fn round_trip_of_stored_members() {
        let (l, i) = (labels(), images());
        let bytes = encode_npz(&[("images", &i), ("labels", &l)]);
        let got = decode_npz(&bytes, Path::new("t.npz")).unwrap();
        assert_eq!(got["images"], i);
        assert_eq!(got["labels"].to_i64().unwrap(), [0, 1, 2, 3, 4, 5]);
        assert_eq!(got["labels"].shape, [2, 3]);
    }

    /// A deflated member (what `numpy.savez_compressed` writes), made by rewriting a
    /// stored archive's member with flate2.
    #[test]
    fn deflated_members_are_inflated_and_checked() {
        let l = labels();
        let npy = encode_npy(&l);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&npy).unwrap();
        let packed = z.finish().unwrap();
        let stored = encode_npz(&[("labels", &l)]);
        // Rebuild with method 8 and the compressed size.
        let name_len = "labels.npy".len();
        let mut bytes = stored[..30 + name_len].to_vec();
        bytes[8] = 8;
        bytes[18..22].copy_from_slice(&(packed.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&packed);
        let central_at = bytes.len() as u32;
        let old_central = 30 + name_len + npy.len();
        let mut central = stored[old_central..old_central + 46 + name_len].to_vec();
        central[10] = 8;
        central[20..24].copy_from_slice(&(packed.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&central);
        let mut eocd = stored[stored.len() - 22..].to_vec();
        eocd[16..20].copy_from_slice(&central_at.to_le_bytes());
        bytes.extend_from_slice(&eocd);
        let got = decode_npz(&bytes, Path::new("c.npz")).unwrap();
        assert_eq!(got["labels"], l);

        // A flipped bit in the deflated data: an inflate error or a CRC mismatch.
        let mut broken = bytes.clone();
        broken[30 + name_len + packed.len() / 2] ^= 0x10;
        let err = decode_npz(&broken, Path::new("c.npz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.npz") && err.contains("member labels.npy"),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_forged_files_are_refused_with_the_file_named() {
        let (l, i) = (labels(), images());
        let bytes = encode_npz(&[("images", &i), ("labels", &l)]);
        let err = |b: &[u8]| decode_npz(b, Path::new("x.npz")).unwrap_err().to_string();
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            let e = err(&bytes[..cut]);
            assert!(
                e.contains("x.npz: corrupt data: not a valid .npz file"),
                "{cut}: {e}"
            );
        }
        // A shape that claims more data than the member holds.
        let mut forged = images();
        forged.shape = vec![2, 3, 2, 3];
        let e = err(&encode_npz(&[("images", &forged)]));
        assert!(e.contains("needs 36 bytes of data, found 24"), "{e}");
        // A dtype the reader does not know.
        let mut npy = encode_npy(&l);
        let at = npy.windows(3).position(|w| w == b"<i8").unwrap();
        npy[at..at + 3].copy_from_slice(b">i8");
        assert!(decode_npy(&npy)
            .unwrap_err()
            .contains("dtype >i8 is not supported"));
        // A shape of absurd size overflows, it does not allocate.
        let huge = Array {
            shape: vec![99_999_999_999, 99_999_999_999],
            ..labels()
        };
        assert_eq!(
            decode_npy(&encode_npy(&huge)).unwrap_err(),
            "shape overflows"
        );
        // A large but possible shape with too little data is refused before any copy.
        let big = Array {
            shape: vec![1 << 20, 1 << 10],
            ..labels()
        };
        assert!(decode_npy(&encode_npy(&big))
            .unwrap_err()
            .contains("needs 8589934592 bytes"));
        // A member that is not an array.
        let mut renamed = encode_npz(&[("labels", &l)]);
        let at = renamed
            .windows(10)
            .position(|w| w == b"labels.npy")
            .unwrap();
        renamed[at + 7..at + 10].copy_from_slice(b"txt");
        let central = renamed
            .windows(10)
            .rposition(|w| w == b"labels.npy")
            .unwrap();
        renamed[central + 7..central + 10].copy_from_slice(b"txt");
        assert!(err(&renamed).contains("is not a .npy array"));
    }

    #[test]
    fn headers_of_every_version_and_scalar_shapes_parse() {
        assert_eq!(
            parse_shape("(964, 20, 105, 105)").unwrap(),
            [964, 20, 105, 105]
        );
        assert_eq!(parse_shape("(3,)").unwrap(), [3]);
        assert!(parse_shape("()").unwrap().is_empty());
        assert!(parse_shape("[3]").is_err());
        assert_eq!(
            dict_value(
                "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }",
                "shape"
            ),
            Some("(2, 3)")
        );
    }
}
