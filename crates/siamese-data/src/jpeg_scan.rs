//! Checks that a baseline JPEG's compressed data is exactly what its headers promise.
//!
//! The decoder under `image` is lenient, as libjpeg is: scan data that ends early is
//! padded with zeros, a marker in the middle of it ends the scan, and bytes left over
//! after the last block are ignored. A file whose scan data was replaced by garbage
//! therefore decoded to a picture of noise and got a verdict. libjpeg reports the same
//! faults as "Corrupt JPEG data" warnings; this module turns them into errors, by
//! walking the Huffman codes of every block (no inverse DCT: it only counts bits):
//! - every code is one of the scan's tables, and every block's coefficients stay
//!   within its 64 positions;
//! - the data holds all the blocks the frame's size implies, in each restart interval,
//!   and no whole byte more (the last byte's unused bits are padding);
//! - restart markers come where the restart interval puts them, in their order.
//!
//! Progressive and lossless files are not walked (their scans refine one another; the
//! decoder alone judges them). Data that decodes exactly is an image, whatever it
//! shows: noise crafted to decode exactly is not refused.

/// A Huffman table in canonical form (JPEG Annex C): for each code length, the largest
/// code of that length and where its symbols start.
#[derive(Clone, Default)]
struct Huffman {
    max_code: [i32; 17],
    first_index: [i32; 17],
    first_code: [i32; 17],
    symbols: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Result<Self, String> {
        let mut table = Self {
            max_code: [-1; 17],
            symbols: symbols.to_vec(),
            ..Self::default()
        };
        let mut code = 0i32;
        let mut index = 0i32;
        for (length, &count) in (1..=16).zip(counts) {
            table.first_index[length] = index;
            table.first_code[length] = code;
            code += i32::from(count);
            index += i32::from(count);
            if count > 0 {
                table.max_code[length] = code - 1;
            }
            if code > 1 << length {
                return Err("a Huffman table with more codes than its lengths allow".into());
            }
            code <<= 1;
        }
        Ok(table)
    }

    fn decode(&self, bits: &mut Bits) -> Result<u8, String> {
        let mut code = 0i32;
        for length in 1..=16 {
            code = (code << 1) | bits.read(1)? as i32;
            if code <= self.max_code[length] {
                let at = self.first_index[length] + code - self.first_code[length];
                return Ok(self.symbols[at as usize]);
            }
        }
        Err("a Huffman code that is in no table".into())
    }
}

/// A bit reader over one restart interval's data, byte stuffing already removed.
struct Bits<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: u32) -> Result<u32, String> {
        let mut value = 0u32;
        for _ in 0..n {
            let byte = *self
                .bytes
                .get(self.at / 8)
                .ok_or("the scan data ends before all the blocks its frame promises are decoded")?;
            value = (value << 1) | u32::from(byte >> (7 - self.at % 8) & 1);
            self.at += 1;
        }
        Ok(value)
    }
}

#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
}

/// What the file's headers say, gathered as its segments are read.
#[derive(Default)]
struct Frame {
    width: usize,
    height: usize,
    components: Vec<Component>,
    baseline: bool,
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
    restart_interval: usize,
}

/// `Ok` when the file is not a baseline JPEG this module walks, or when every scan's
/// data is exact; otherwise what is wrong with it.
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(());
    }
    let mut frame = Frame::default();
    let mut at = 2;
    loop {
        // Fill bytes (0xFF) may precede a marker; anything else between segments the
        // decoder has tolerated, and so do we.
        while bytes.get(at).is_some_and(|&b| b != 0xFF) {
            at += 1;
        }
        while bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = bytes.get(at + 1) else {
            return Ok(());
        };
        at += 2;
        match marker {
            0xD9 => return Ok(()),                 // end of image
            0xD0..=0xD7 | 0x01 | 0x00 => continue, // no segment follows
            _ => {}
        }
        let segment = segment(bytes, at)?;
        at += 2 + segment.len();
        match marker {
            0xC0 | 0xC1 => {
                frame.baseline = true;
                read_frame(segment, &mut frame)?;
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(()),
            0xC4 => read_huffman_tables(segment, &mut frame)?,
            0xDD => {
                let ri = segment.get(..2).ok_or("a short restart interval segment")?;
                frame.restart_interval = usize::from(u16::from_be_bytes([ri[0], ri[1]]));
            }
            0xDA => {
                if !frame.baseline || frame.height == 0 {
                    return Ok(());
                }
                let end = scan_end(bytes, at);
                walk_scan(segment, &bytes[at..end], &frame)?;
                at = end;
            }
            _ => {}
        }
    }
}

/// The body of the segment whose length field starts at `at`.
fn segment(bytes: &[u8], at: usize) -> Result<&[u8], String> {
    let len = bytes
        .get(at..at + 2)
        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        .ok_or("the file ends inside a segment header")?;
    bytes
        .get(at + 2..at + len.max(2))
        .ok_or_else(|| "the file ends inside a segment".to_string())
}

fn read_frame(segment: &[u8], frame: &mut Frame) -> Result<(), String> {
    let short = || "a short frame header".to_string();
    let header = segment.get(..6).ok_or_else(short)?;
    frame.height = usize::from(u16::from_be_bytes([header[1], header[2]]));
    frame.width = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let n = usize::from(header[5]);
    let specs = segment.get(6..6 + 3 * n).ok_or_else(short)?;
    frame.components = specs
        .chunks(3)
        .map(|c| Component {
            id: c[0],
            h: usize::from(c[1] >> 4).max(1),
            v: usize::from(c[1] & 15).max(1),
        })
        .collect();
    Ok(())
}

fn read_huffman_tables(mut segment: &[u8], frame: &mut Frame) -> Result<(), String> {
    while let Some((&class_and_id, rest)) = segment.split_first() {
        let counts: &[u8; 16] = rest
            .get(..16)
            .and_then(|c| c.try_into().ok())
            .ok_or("a short Huffman table")?;
        let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let symbols = rest.get(16..16 + n).ok_or("a short Huffman table")?;
        let table = Some(Huffman::new(counts, symbols)?);
        let id = usize::from(class_and_id & 3);
        if class_and_id >> 4 == 0 {
            frame.dc[id] = table;
        } else {
            frame.ac[id] = table;
        }
        segment = &rest[16 + n..];
    }
    Ok(())
}

/// Where a scan's entropy-coded data ends: at the first marker that is neither byte
/// stuffing (0xFF 0x00) nor a restart marker (0xFF 0xD0-0xD7), or the file's end.
fn scan_end(bytes: &[u8], mut at: usize) -> usize {
    while at + 1 < bytes.len() {
        if bytes[at] == 0xFF && !matches!(bytes[at + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
            return at;
        }
        at += 1;
    }
    bytes.len()
}

/// Walks one scan's data (`data`, up to the marker after it) with its header `header`.
fn walk_scan(header: &[u8], data: &[u8], frame: &Frame) -> Result<(), String> {
    let n = usize::from(*header.first().ok_or("an empty scan header")?);
    let specs = header.get(1..1 + 2 * n).ok_or("a short scan header")?;
    let mut components = Vec::with_capacity(n);
    for spec in specs.chunks(2) {
        let component = frame
            .components
            .iter()
            .find(|c| c.id == spec[0])
            .ok_or("a scan of a component the frame does not have")?;
        let dc = frame.dc[usize::from(spec[1] >> 4 & 3)].as_ref();
        let ac = frame.ac[usize::from(spec[1] & 3)].as_ref();
        let (Some(dc), Some(ac)) = (dc, ac) else {
            return Err("a scan that uses a Huffman table the file does not define".into());
        };
        components.push((*component, dc, ac));
    }
    let h_max = frame.components.iter().map(|c| c.h).max().unwrap_or(1);
    let v_max = frame.components.iter().map(|c| c.v).max().unwrap_or(1);
    // An interleaved scan codes MCUs of h x v blocks of each component; a scan of one
    // component codes its blocks one by one, over that component's own size.
    let (mcus, blocks_per_mcu): (usize, Vec<usize>) = if components.len() == 1 {
        let c = components[0].0;
        let w = (frame.width * c.h).div_ceil(h_max).div_ceil(8);
        let h = (frame.height * c.v).div_ceil(v_max).div_ceil(8);
        (w * h, vec![1])
    } else {
        let w = frame.width.div_ceil(8 * h_max);
        let h = frame.height.div_ceil(8 * v_max);
        (
            w * h,
            components.iter().map(|(c, _, _)| c.h * c.v).collect(),
        )
    };
    let interval = match frame.restart_interval {
        0 => mcus,
        ri => ri,
    };
    let mut intervals = split_at_restarts(data)?;
    if intervals.len() != mcus.div_ceil(interval.max(1)) {
        return Err(format!(
            "the scan data has {} restart intervals, where {mcus} units of blocks in \
             intervals of {interval} make {}",
            intervals.len(),
            mcus.div_ceil(interval.max(1))
        ));
    }
    for (i, bytes) in intervals.iter_mut().enumerate() {
        let mut bits = Bits { bytes, at: 0 };
        let count = interval.min(mcus - i * interval);
        for _ in 0..count {
            for ((_, dc, ac), &blocks) in components.iter().zip(&blocks_per_mcu) {
                for _ in 0..blocks {
                    walk_block(&mut bits, dc, ac)?;
                }
            }
        }
        let left = bytes.len() - bits.at.div_ceil(8);
        if left > 0 {
            return Err(format!(
                "{left} bytes of scan data follow its last block (corrupt or forged data)"
            ));
        }
    }
    Ok(())
}

/// One 8x8 block: a DC difference and up to 63 AC coefficients.
fn walk_block(bits: &mut Bits, dc: &Huffman, ac: &Huffman) -> Result<(), String> {
    let size = dc.decode(bits)?;
    if size > 11 {
        return Err("a DC difference wider than 11 bits".into());
    }
    bits.read(u32::from(size))?;
    let mut k = 1;
    while k < 64 {
        let rs = ac.decode(bits)?;
        let (run, size) = (rs >> 4, rs & 15);
        if size == 0 {
            if run != 15 {
                break; // end of block
            }
            k += 16;
            continue;
        }
        k += usize::from(run);
        if k > 63 {
            return Err("a block with coefficients past its 64th".into());
        }
        bits.read(u32::from(size))?;
        k += 1;
    }
    Ok(())
}

/// The restart intervals of a scan's data, byte stuffing removed, checking that the
/// restart markers count 0-7 in order.
fn split_at_restarts(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut intervals = vec![Vec::with_capacity(data.len())];
    let mut expected = 0xD0;
    let mut at = 0;
    while at < data.len() {
        let byte = data[at];
        if byte != 0xFF {
            intervals.last_mut().expect("one at least").push(byte);
            at += 1;
            continue;
        }
        match data.get(at + 1) {
            Some(0x00) => intervals.last_mut().expect("one at least").push(0xFF),
            Some(0xFF) => {
                // A fill byte before a marker: the marker starts at the next one.
                at += 1;
                continue;
            }
            Some(&rst) => {
                if rst != expected {
                    return Err(format!(
                        "restart marker {} where {} was due",
                        rst - 0xD0,
                        expected - 0xD0
                    ));
                }
                expected = 0xD0 + (expected - 0xD0 + 1) % 8;
                intervals.push(Vec::new());
            }
            None => {}
        }
        at += 2;
    }
    // An encoder may end a scan with a restart marker; it opens no interval.
    if intervals.len() > 1 && intervals.last().is_some_and(Vec::is_empty) {
        intervals.pop();
    }
    Ok(intervals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::ColorType;

    fn encode(width: u32, height: u32, color: ColorType) -> Vec<u8> {
        let channels = if color == ColorType::L8 { 1 } else { 3 };
        let pixels: Vec<u8> = (0..width * height * channels)
            .map(|i| (i * 37 % 251) as u8 ^ (i / 7) as u8)
            .collect();
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90)
            .encode(&pixels, width, height, color)
            .unwrap();
        out
    }

    /// Where the (only) scan's entropy-coded data starts and ends.
    fn scan_data(jpeg: &[u8]) -> (usize, usize) {
        let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let len = usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
        let start = sos + 2 + len;
        (start, scan_end(jpeg, start))
    }

    #[test]
    fn encoded_images_are_exact() {
        for (w, h, color) in [
            (28, 28, ColorType::L8),
            (37, 23, ColorType::L8),
            (37, 23, ColorType::Rgb8),
            (1, 1, ColorType::Rgb8),
            (64, 48, ColorType::Rgb8),
        ] {
            let jpeg = encode(w, h, color);
            assert_eq!(check(&jpeg), Ok(()), "{w}x{h} {color:?}");
        }
    }

    /// Issue #28: a JPEG whose scan data was garbage decoded to noise and got a verdict.
    #[test]
    fn garbage_truncated_or_padded_scan_data_is_refused() {
        for color in [ColorType::L8, ColorType::Rgb8] {
            let jpeg = encode(40, 40, color);
            let (start, end) = scan_data(&jpeg);
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            for seed in 0..50 {
                let mut forged = jpeg.clone();
                for byte in &mut forged[start..end] {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // No 0xFF: the garbage holds no marker that would end the scan.
                    *byte = (state >> 24) as u8 % 255;
                }
                assert!(check(&forged).is_err(), "seed {seed} {color:?}");
            }
            let mut truncated = jpeg[..start + (end - start) / 2].to_vec();
            truncated.extend_from_slice(&jpeg[end..]);
            let err = check(&truncated).unwrap_err();
            assert!(err.contains("ends before"), "{err}");
            let mut padded = jpeg[..end].to_vec();
            padded.extend_from_slice(&[0x12, 0x34]);
            padded.extend_from_slice(&jpeg[end..]);
            let err = check(&padded).unwrap_err();
            assert!(err.contains("2 bytes of scan data follow"), "{err}");
        }
    }

    #[test]
    fn restart_markers_split_intervals_in_order() {
        let data = [
            1, 2, 0xFF, 0xD0, 3, 0xFF, 0x00, 0xFF, 0xFF, 0xD1, 4, 0xFF, 0xD2,
        ];
        let intervals = split_at_restarts(&data).unwrap();
        assert_eq!(intervals, [vec![1, 2], vec![3, 0xFF], vec![4]]);
        let err = split_at_restarts(&[1, 0xFF, 0xD1, 2]).unwrap_err();
        assert!(err.contains("restart marker 1 where 0 was due"), "{err}");
    }

    #[test]
    fn other_files_are_left_to_the_decoder() {
        assert_eq!(check(b"\x89PNG"), Ok(()));
        // A progressive frame (SOF2) is not walked.
        assert_eq!(check(&[0xFF, 0xD8, 0xFF, 0xC2, 0, 2, 0xFF, 0xD9]), Ok(()));
        // A frame header cut short is reported, not indexed past its end.
        assert!(check(&[0xFF, 0xD8, 0xFF, 0xC0, 0, 4, 8, 0]).is_err());
        assert!(check(&[0xFF, 0xD8, 0xFF, 0xC0, 0, 40]).is_err());
    }
}
