//! Reading one image file for `siamese verify`: PNG (8-bit grayscale, or colour
//! converted to luminance) and binary PGM (P5, 8-bit), at the model's input size.
//! Pixels are scaled to [0, 1] as in training.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The image at `path` as `h * w` values in [0, 1]; any other size is an error.
pub fn read_grayscale(path: &Path, h: usize, w: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (width, height, pixels) = if bytes.starts_with(b"\x89PNG") {
        decode_png(&bytes).with_context(|| format!("{}: not a readable PNG", path.display()))?
    } else if bytes.starts_with(b"P5") {
        decode_pgm(&bytes)
            .with_context(|| format!("{}: not a readable binary PGM", path.display()))?
    } else {
        bail!(
            "{}: unsupported image format (expected PNG or binary PGM)",
            path.display()
        );
    };
    if (height, width) != (h, w) {
        bail!(
            "{}: the image is {height}x{width} pixels (height x width), the model expects {h}x{w}",
            path.display()
        );
    }
    Ok(pixels.into_iter().map(|p| f32::from(p) / 255.0).collect())
}

fn decode_png(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palette and low bit depths expand to 8 bits; 16-bit samples are cut to 8.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let gray = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|px| match channels {
            1 | 2 => px[0],
            // ITU-R BT.601 luma, as most image libraries convert colour to gray.
            _ => (0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2]))
                .round() as u8,
        })
        .collect();
    Ok((w, h, gray))
}

fn decode_pgm(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    // Header: "P5", width, height, maxval, separated by whitespace (comments skipped),
    // then exactly one whitespace byte before the pixels.
    let mut fields = Vec::new();
    let mut i = 2;
    while fields.len() < 3 {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'#') {
            if bytes[i] == b'#' {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            bail!("truncated header");
        }
        fields.push(std::str::from_utf8(&bytes[start..i])?.parse::<usize>()?);
    }
    let (w, h, maxval) = (fields[0], fields[1], fields[2]);
    if maxval == 0 || maxval > 255 {
        bail!("maxval {maxval}: only 8-bit PGM is supported");
    }
    let data = bytes.get(i + 1..).context("no pixel data")?;
    let n = w.checked_mul(h).context("image too large")?;
    if data.len() < n {
        bail!("{} pixel bytes for a {w}x{h} image", data.len());
    }
    let scale = 255.0 / maxval as f32;
    Ok((
        w,
        h,
        data[..n]
            .iter()
            .map(|&p| (f32::from(p) * scale).round() as u8)
            .collect(),
    ))
}
