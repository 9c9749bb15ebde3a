//! Files for TensorBoard's embedding projector (what PyTorch's `add_embedding`
//! writes), so `tensorboard --logdir RUN` shows the test embeddings with their labels
//! and images: `tensors.tsv` (one row per embedding), `metadata.tsv` (a header, then
//! label, class, index and file path when there is one), `sprite.png` (every image in
//! one grid, row-major, as the projector cuts it) and `projector_config.pbtxt`, which
//! ties them together.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::TrainError;
use crate::labelled::LabelledEmbeddings;

/// The file names the config points at.
pub mod files {
    /// Embeddings, tab-separated.
    pub const TENSORS: &str = "tensors.tsv";
    /// Labels, classes, indices and paths, tab-separated with a header.
    pub const METADATA: &str = "metadata.tsv";
    /// The images in one grid.
    pub const SPRITE: &str = "sprite.png";
    /// The projector's config (text protocol buffer).
    pub const CONFIG: &str = "projector_config.pbtxt";
}

/// Largest sprite side TensorBoard accepts, in pixels.
pub const MAX_SPRITE_SIDE: usize = 8192;

/// What to write: `labels.len()` rows of `dim` values, each row's class name through
/// its label, optional file paths, and optional grayscale images (`height x width`
/// bytes each, in row order) for the sprite.
pub struct Projection<'a> {
    /// The name TensorBoard shows.
    pub name: &'a str,
    /// The embeddings, their labels, class names, paths and images.
    pub set: LabelledEmbeddings<'a>,
}

/// A TSV cell: TensorBoard splits on tabs and line breaks, so those become spaces.
fn cell(text: &str) -> String {
    text.replace(['\t', '\n', '\r'], " ")
}

/// A text-protocol-buffer string literal.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The sprite: images in a square grid of `ceil(sqrt(n))` columns, shrunk by the
/// smallest whole factor that keeps the grid within [`MAX_SPRITE_SIDE`]. Returns the
/// PNG bytes and the thumbnail's `(height, width)`.
pub fn sprite(
    pixels: &[u8],
    n: usize,
    height: usize,
    width: usize,
) -> Result<(Vec<u8>, (usize, usize)), TrainError> {
    if n == 0 || height == 0 || width == 0 || pixels.len() != n * height * width {
        return Err(TrainError::Input(format!(
            "sprite: {} bytes are not {n} images of {height}x{width}",
            pixels.len()
        )));
    }
    let cols = n.isqrt() + usize::from(n.isqrt().pow(2) < n);
    let shrink = (cols * height.max(width)).div_ceil(MAX_SPRITE_SIDE).max(1);
    let (th, tw) = (height.div_ceil(shrink), width.div_ceil(shrink));
    let rows = n.div_ceil(cols);
    let (sw, sh) = (cols * tw, rows * th);
    let mut canvas = vec![0u8; sw * sh];
    for i in 0..n {
        let image = &pixels[i * height * width..(i + 1) * height * width];
        let (x0, y0) = ((i % cols) * tw, (i / cols) * th);
        for y in 0..th {
            for x in 0..tw {
                // Nearest pixel of the shrunk grid (the images are thumbnails).
                let v = image[(y * shrink).min(height - 1) * width + (x * shrink).min(width - 1)];
                canvas[(y0 + y) * sw + x0 + x] = v;
            }
        }
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, sw as u32, sh as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let png_err = |e: png::EncodingError| TrainError::Plot(format!("sprite: {e}"));
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer.write_image_data(&canvas).map_err(png_err)?;
    }
    Ok((bytes, (th, tw)))
}

/// Writes the projector's four files (three without images) into `dir`, each
/// atomically.
pub fn write_projector(dir: &Path, p: &Projection) -> Result<(), TrainError> {
    p.set.check("projector")?;
    let n = p.set.len();
    let mut tensors = String::with_capacity(p.set.embeddings.len() * 10);
    for row in p.set.embeddings.chunks_exact(p.set.dim) {
        for (j, v) in row.iter().enumerate() {
            // `{}` is the shortest text that reads back to the same f32.
            let _ = write!(tensors, "{}{v}", if j == 0 { "" } else { "\t" });
        }
        tensors.push('\n');
    }
    let mut metadata = String::from(if p.set.paths.is_empty() {
        "label\tclass\tindex\n"
    } else {
        "label\tclass\tindex\tpath\n"
    });
    for (i, &label) in p.set.labels.iter().enumerate() {
        let class = p
            .set
            .class_names
            .get(label as usize)
            .map(|s| cell(s))
            .unwrap_or_else(|| label.to_string());
        let _ = write!(metadata, "{label}\t{class}\t{i}");
        if let Some(path) = p.set.paths.get(i) {
            let _ = write!(metadata, "\t{}", cell(path));
        }
        metadata.push('\n');
    }
    let mut config = format!(
        "embeddings {{\n  tensor_name: {}\n  tensor_path: {}\n  metadata_path: {}\n",
        quoted(p.name),
        quoted(files::TENSORS),
        quoted(files::METADATA)
    );
    let write = |name: &str, bytes: &[u8]| {
        siamese_data::write_atomic(&dir.join(name), bytes).map_err(TrainError::from)
    };
    if let Some((pixels, h, w)) = p.set.images {
        let (png, (th, tw)) = sprite(pixels, n, h, w)?;
        write(files::SPRITE, &png)?;
        // single_image_dim is [width, height].
        let _ = write!(
            config,
            "  sprite {{\n    image_path: {}\n    single_image_dim: {tw}\n    single_image_dim: {th}\n  }}\n",
            quoted(files::SPRITE)
        );
    }
    config.push_str("}\n");
    write(files::TENSORS, tensors.as_bytes())?;
    write(files::METADATA, metadata.as_bytes())?;
    write(files::CONFIG, config.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_user_text_cannot_break_them() {
        let dir = tempfile::tempdir().unwrap();
        let embeddings = [0.1f32, -2.5e-7, 3.0, f32::MIN_POSITIVE, 1.0 / 3.0, 7.0];
        let names = ["a\tb".to_string(), "new\nline \"q\"".to_string()];
        let paths = [
            "x/1.png".to_string(),
            "y\t/2.png".to_string(),
            "z".to_string(),
        ];
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8).collect();
        write_projector(
            dir.path(),
            &Projection {
                name: "test \"embeddings\"",
                set: LabelledEmbeddings {
                    embeddings: &embeddings,
                    dim: 2,
                    labels: &[0, 1, 1],
                    class_names: &names,
                    paths: &paths,
                    images: Some((&pixels, 4, 5)),
                },
            },
        )
        .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let back: Vec<f32> = read(files::TENSORS)
            .lines()
            .flat_map(|l| {
                l.split('\t')
                    .map(|v| v.parse::<f32>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(back, embeddings);
        let meta: Vec<Vec<String>> = read(files::METADATA)
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect();
        assert_eq!(meta.len(), 4);
        assert!(meta.iter().all(|r| r.len() == 4));
        assert_eq!(meta[0], ["label", "class", "index", "path"]);
        assert_eq!(meta[1], ["0", "a b", "0", "x/1.png"]);
        assert_eq!(meta[2], ["1", "new line \"q\"", "1", "y /2.png"]);
        let config = read(files::CONFIG);
        assert!(
            config.contains(r#"tensor_name: "test \"embeddings\"""#),
            "{config}"
        );
        assert!(
            config.contains("single_image_dim: 5\n    single_image_dim: 4"),
            "{config}"
        );
        // The sprite: 2 x 2 grid of 4 x 5 images; image 2 at the bottom left.
        let decoder =
            png::Decoder::new(std::fs::File::open(dir.path().join(files::SPRITE)).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (10, 8));
        assert_eq!(buf[4 * 10], pixels[2 * 20]);
        assert_eq!(buf[7 * 10 + 9], 0, "the unused cell is black");
        assert_eq!(
            buf[9],
            pixels[20 + 4],
            "image 1, top right, its last column"
        );
    }

    #[test]
    fn large_sprites_are_shrunk_to_what_tensorboard_accepts() {
        // 10,000 images of 100 x 100 would be 10,000 pixels wide: shrunk by 2.
        let (png, (th, tw)) = sprite(&vec![0u8; 10_000 * 100 * 100], 10_000, 100, 100).unwrap();
        assert_eq!((th, tw), (50, 50));
        let reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        assert_eq!(reader.info().width, 5000);
        assert!(sprite(&[0u8; 3], 2, 1, 1).is_err());
    }
}
