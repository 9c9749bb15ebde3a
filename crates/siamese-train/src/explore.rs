//! The embedding explorer: one self-contained HTML page (script, style and image
//! thumbnails inlined; nothing fetched when it is viewed) that draws the embeddings as a
//! scatter on a canvas coloured by class. Hovering a point shows its image and label,
//! clicking it lists its nearest neighbours with their distances (computed here, in
//! the full embedding space), the legend filters classes, the wheel zooms and a drag
//! pans, and the validation threshold is drawn as a reference length. Embeddings of
//! more than two dimensions are shown through their first principal components
//! (computed here; the page picks which two).
//!
//! Text from users' folders (class names, the title) reaches the page only as JSON in
//! a `<script type="application/json">` block with `<`, `>` and `&` escaped, and the
//! page puts it on screen with `textContent`, never as HTML.

use siamese_neighbours::nearest_to_each_row;

use crate::error::TrainError;
use crate::labelled::LabelledEmbeddings;

/// Neighbours listed for a clicked point.
pub const NEIGHBOURS: usize = 5;
/// Principal components offered as axes when the embedding has more than two.
pub const COMPONENTS: usize = 4;

/// What the page shows.
pub struct Exploration<'a> {
    /// The page title.
    pub title: &'a str,
    /// The embeddings, their labels and class names, and their images if any (paths
    /// are not shown).
    pub set: LabelledEmbeddings<'a>,
    /// The distance at or below which two items are called the same, if known.
    pub threshold: Option<f64>,
}

/// The `k` nearest other rows of every row, by Euclidean distance in the full
/// embedding space: `(indices, distances)`, `n * k` each (fewer when there are not `k`
/// other rows), nearest first, ties by row.
pub fn all_neighbours(embeddings: &[f32], dim: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let lists = nearest_to_each_row(embeddings, dim.max(1), |_| k, |_, hits| hits.to_vec());
    lists
        .iter()
        .flatten()
        .map(|h| (h.index as u32, h.distance))
        .unzip()
}

/// JSON safe to place inside a `<script>` element: no `<`, `>` or `&` left to end it.
fn script_json(value: &serde_json::Value) -> String {
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Text for an HTML text node.
fn html_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The page.
pub fn explorer_html(e: &Exploration) -> Result<String, TrainError> {
    e.set.check("explorer")?;
    let n = e.set.len();
    // Axes: the values themselves up to two dimensions, else principal components.
    let (axes, axis_names): (Vec<f32>, Vec<String>) = if e.set.dim <= 2 {
        let names = (1..=e.set.dim).map(|i| format!("dimension {i}")).collect();
        (e.set.embeddings.to_vec(), names)
    } else {
        let c = COMPONENTS.min(e.set.dim);
        let pca = siamese_metrics::Pca::fit(e.set.embeddings, e.set.dim, c, 0);
        let names = (1..=c).map(|i| format!("PC {i}")).collect();
        (pca.project(e.set.embeddings), names)
    };
    let (neighbours, distances) = all_neighbours(e.set.embeddings, e.set.dim, NEIGHBOURS);
    let round = |v: f32| (f64::from(v) * 1e5).round() / 1e5;
    let sprite = match e.set.images {
        Some((pixels, h, w)) => {
            let (png, (th, tw)) = crate::projector::sprite(pixels, n, h, w)?;
            let cols = n.isqrt() + usize::from(n.isqrt().pow(2) < n);
            serde_json::json!({
                "src": format!("data:image/png;base64,{}", base64(&png)),
                "height": th, "width": tw, "columns": cols,
            })
        }
        None => serde_json::Value::Null,
    };
    let data = serde_json::json!({
        "title": e.title,
        "n": n,
        "dim": e.set.dim,
        "axisNames": axis_names,
        "axes": axes.iter().map(|&v| round(v)).collect::<Vec<_>>(),
        "labels": e.set.labels,
        "classNames": e.set.class_names,
        "neighbours": neighbours,
        "distances": distances.iter().map(|&v| round(v)).collect::<Vec<_>>(),
        "k": neighbours.len() / n,
        "threshold": e.threshold,
        "sprite": sprite,
    });
    Ok(TEMPLATE
        .replace("{{TITLE}}", &html_text(e.title))
        .replace("{{DATA}}", &script_json(&data)))
}

/// The page around the data: canvas drawing, hover, click, legend, zoom and pan, and a
/// self-test (`#selftest`) that a headless browser runs: it hovers and clicks point 0
/// and writes what the page showed into `#selftest-result`.
const TEMPLATE: &str = include_str!("explore.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[255, 254, 253]), "//79");
    }

    /// Neighbours against the definition: on a line, each point's nearest others.
    #[test]
    fn neighbours_are_the_nearest_others_in_order() {
        let points = [0.0f32, 1.0, 3.0, 7.0, 7.5];
        let (idx, dist) = all_neighbours(&points, 1, 2);
        assert_eq!(idx, [1, 2, 0, 2, 1, 0, 4, 2, 3, 2]);
        let want = [1.0, 3.0, 1.0, 2.0, 2.0, 3.0, 0.5, 4.0, 0.5, 4.5];
        for (d, w) in dist.iter().zip(want) {
            assert!((d - w).abs() < 1e-5, "{dist:?}");
        }
    }

    /// A class named like markup stays text: it appears only escaped in the page.
    #[test]
    fn user_text_cannot_become_markup() {
        let evil = "<img src=x onerror=alert(1)></script><script>alert(2)</script>".to_string();
        let names = [evil, "ok".into()];
        let page = explorer_html(&Exploration {
            title: "<b>title</b>",
            set: LabelledEmbeddings {
                embeddings: &[0.0, 1.0, 2.0, 3.0],
                dim: 2,
                labels: &[0, 1],
                class_names: &names,
                paths: &[],
                images: None,
            },
            threshold: Some(1.0),
        })
        .unwrap();
        assert!(!page.contains("<img src=x"));
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("<b>title"));
        assert!(page.contains("\\u003cimg src=x onerror=alert(1)\\u003e"));
        assert!(page.contains("&lt;b&gt;title&lt;/b&gt;"));
        let bad = explorer_html(&Exploration {
            title: "t",
            set: LabelledEmbeddings {
                embeddings: &[f32::NAN, 0.0],
                dim: 2,
                labels: &[0],
                class_names: &[],
                paths: &[],
                images: None,
            },
            threshold: None,
        });
        assert!(bad.is_err());
    }
}
