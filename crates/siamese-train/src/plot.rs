//! The embedding scatter plot: one point per image, coloured by class, with a legend.
//! Embeddings of more than two dimensions are projected on their first two principal
//! components, and the title says so. Text uses the DejaVu Sans font compiled in, so
//! plotting needs no system fonts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::TrainError;

/// Ten colours that stay distinct (Tableau 10).
/// Most classes named in the legend; with more, none are (a legend of hundreds of
/// entries would hide the plot).
const LEGEND_CLASSES: usize = 20;

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font compiled into the binary.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Projects `n x dim` values on two axes: the values themselves for `dim <= 2` (a zero
/// second axis for `dim = 1`), else the first two principal components
/// ([`siamese_metrics::Pca`]). Returns the points and whether PCA was used.
pub fn project_2d(values: &[f32], dim: usize) -> (Vec<(f64, f64)>, bool) {
    let rows = values.chunks_exact(dim);
    match dim {
        1 => return (rows.map(|r| (f64::from(r[0]), 0.0)).collect(), false),
        2 => {
            return (
                rows.map(|r| (f64::from(r[0]), f64::from(r[1]))).collect(),
                false,
            )
        }
        _ => {}
    }
    let pca = siamese_metrics::Pca::fit(values, dim, 2, 0);
    let points = pca
        .project(values)
        .chunks_exact(2)
        .map(|p| (f64::from(p[0]), f64::from(p[1])))
        .collect();
    (points, true)
}

/// Draws the scatter of `embeddings` (`n x dim`) coloured by `labels` to a PNG.
pub fn plot_embeddings(
    path: &Path,
    embeddings: &[f32],
    dim: usize,
    labels: &[u32],
    class_names: &[String],
    title: &str,
) -> Result<(), TrainError> {
    register_fonts();
    let (points, pca) = project_2d(embeddings, dim);
    let title = if pca {
        format!("{title} (PCA of {dim}-D embeddings)")
    } else {
        title.to_string()
    };
    let plot_err =
        |e: String| TrainError::Plot(format!("{}: plotting failed: {e}", path.display()));
    if points.is_empty() || points.iter().any(|(x, y)| !x.is_finite() || !y.is_finite()) {
        return Err(plot_err(
            "the embeddings are empty or hold NaN or infinity".into(),
        ));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let pad = |a: f64, b: f64| ((b - a) * 0.05).max(1e-6);
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
        .map_err(|e| plot_err(e.to_string()))?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_err(e.to_string()))?;
    // One series per class present; beyond LEGEND_CLASSES the legend would cover the
    // plot (Omniglot has 659 test classes), so later classes are drawn unnamed.
    let mut by_class: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for (&p, &l) in points.iter().zip(labels) {
        by_class.entry(l).or_default().push(p);
    }
    let named = by_class.len() <= LEGEND_CLASSES;
    for (&class, mine) in &by_class {
        let color = PALETTE[class as usize % PALETTE.len()];
        let series = chart
            .draw_series(
                mine.iter()
                    .map(|&p| Circle::new(p, 2, color.mix(0.6).filled())),
            )
            .map_err(|e| plot_err(e.to_string()))?;
        if named {
            let name = class_names
                .get(class as usize)
                .cloned()
                .unwrap_or_else(|| class.to_string());
            series
                .label(name)
                .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
        }
    }
    if named {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| plot_err(e.to_string()))?;
    }
    root.present().map_err(|e| plot_err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_spread_axes() {
        // Points along (1, 1, 0) with small noise on z: the first component is that line.
        let values: Vec<f32> = (0..50)
            .flat_map(|i| {
                let t = i as f32 - 25.0;
                [t, t, 0.01 * (i % 3) as f32]
            })
            .collect();
        let (points, pca) = project_2d(&values, 3);
        assert!(pca);
        let spread = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<f64> = points.iter().map(f).collect();
            v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min)
        };
        assert!(spread(|p| p.0) > 60.0 && spread(|p| p.1) < 0.1);
    }

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.png");
        let emb = [0.0, 0.0, 1.0, 1.0, 2.0, 0.5];
        plot_embeddings(
            &path,
            &emb,
            2,
            &[0, 1, 2],
            &["a".into(), "b".into(), "c".into()],
            "test",
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        assert!(plot_embeddings(&path, &[f32::NAN, 0.0], 2, &[0], &[], "nan").is_err());
    }
}
