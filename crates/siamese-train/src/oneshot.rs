//! One-shot classification in the evaluation report, as the few-shot literature reports
//! it: N-way K-shot accuracy over seeded episodes of the test classes (with a 95%
//! confidence interval, beside the same episodes scored by raw pixels), and Lake's 20
//! runs of 20-way one-shot classification on Omniglot (nearest support image by the
//! model's distance), beside raw pixels and Lake's modified Hausdorff baseline.

use serde::{Deserialize, Serialize};
use siamese_data::omniglot::runs::OneShotRun;
use siamese_data::{unit_pixel, Batcher, EpisodeSampler, ImageSet};
use siamese_metrics::oneshot::ink_points;
use siamese_metrics::{episode_accuracy, mean_ci95, modified_hausdorff};
use siamese_model::Embedder;

use crate::error::TrainError;

/// Episodes scored per setting.
pub const EPISODES: usize = 1000;
/// Seed of the episodes (the same episodes for every model and for pixels).
pub const EPISODE_SEED: u64 = 2017;
/// Query images per class in an episode.
pub const EPISODE_QUERIES: usize = 5;
/// The `(ways, shots)` settings scored, when the test classes allow them.
pub const EPISODE_SETTINGS: [(usize, usize); 4] = [(5, 1), (5, 5), (20, 1), (20, 5)];

/// One N-way K-shot setting: the model's accuracy and raw pixels' on the same episodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneShotReport {
    /// Classes per episode.
    pub ways: usize,
    /// Support images per class.
    pub shots: usize,
    /// Query images per class.
    pub queries: usize,
    /// Episodes scored.
    pub episodes: usize,
    /// The model's mean accuracy.
    pub accuracy: f64,
    /// Half-width of its 95% confidence interval.
    pub ci95: f64,
    /// Raw pixels' mean accuracy on the same episodes.
    pub pixel_accuracy: f64,
    /// Half-width of the pixels' 95% confidence interval.
    pub pixel_ci95: f64,
}

/// Lake's runs: accuracy of each run and their mean, for the model and for pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LakeRunsReport {
    /// Runs scored.
    pub runs: usize,
    /// The model's mean accuracy over the runs.
    pub accuracy: f64,
    /// The model's accuracy on each run.
    pub per_run: Vec<f64>,
    /// Raw pixels' (at the model's image size) mean accuracy.
    pub pixel_accuracy: f64,
}

/// The episode settings the test split allows, each over [`EPISODES`] episodes, for the
/// model's test embeddings and for the test images' pixels.
pub fn episode_reports(test: &[f32], dim: usize, set: &ImageSet) -> Vec<OneShotReport> {
    let pixels: Vec<f32> = set.pixels().iter().map(|&p| unit_pixel(p)).collect();
    EPISODE_SETTINGS
        .iter()
        .filter_map(|&(ways, shots)| {
            let sampler =
                EpisodeSampler::new(set.labels(), ways, shots, EPISODE_QUERIES, EPISODE_SEED);
            let mut sampler = sampler.ok()?;
            let (mut model, mut raw) = (Vec::new(), Vec::new());
            for _ in 0..EPISODES {
                let e = sampler.sample();
                let truth = e.query_classes();
                model.push(episode_accuracy(
                    test, dim, ways, &e.support, &e.query, &truth,
                ));
                raw.push(episode_accuracy(
                    &pixels,
                    set.image_len(),
                    ways,
                    &e.support,
                    &e.query,
                    &truth,
                ));
            }
            let ((accuracy, ci95), (pixel_accuracy, pixel_ci95)) =
                (mean_ci95(&model), mean_ci95(&raw));
            Some(OneShotReport {
                ways,
                shots,
                queries: EPISODE_QUERIES,
                episodes: EPISODES,
                accuracy,
                ci95,
                pixel_accuracy,
                pixel_ci95,
            })
        })
        .collect()
}

/// The share of `run`'s queries whose nearest support item (by `distance`) is their
/// answer; ties go to the first support item.
fn run_accuracy(run: &OneShotRun, distance: impl Fn(usize, usize) -> f64) -> f64 {
    let right = (0..run.answers.len())
        .filter(|&q| {
            let nearest = (0..run.support.len())
                .map(|s| (s, distance(q, s)))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                .map(|(s, _)| s);
            nearest == Some(run.answers[q])
        })
        .count();
    right as f64 / run.answers.len().max(1) as f64
}

/// Euclidean distance between rows `a` of `left` and `b` of `right`.
fn row_distance(left: &[f32], right: &[f32], dim: usize, a: usize, b: usize) -> f64 {
    f64::from(siamese_neighbours::euclidean(
        &left[a * dim..(a + 1) * dim],
        &right[b * dim..(b + 1) * dim],
    ))
}

/// Lake's runs scored by the model (nearest support image in embedding space) and by
/// raw pixels at the model's image size.
pub fn lake_runs<E: Embedder>(
    tower: &E,
    runs: &[OneShotRun],
    batcher: &Batcher,
    size: [usize; 2],
) -> Result<LakeRunsReport, TrainError> {
    let dim = tower.embedding_dim();
    let embed = |images: &[Vec<u8>]| -> Result<Vec<f32>, TrainError> {
        let pixels: Vec<u8> = images.concat();
        let tensor = batcher.raw_images(&pixels, size[0], size[1])?;
        Ok(tower.embed(&tensor)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let flat = |images: &[Vec<u8>]| -> Vec<f32> {
        images.iter().flatten().map(|&p| unit_pixel(p)).collect()
    };
    let (mut per_run, mut pixel) = (Vec::new(), Vec::new());
    for run in runs {
        let (s, q) = (embed(&run.support)?, embed(&run.query)?);
        per_run.push(run_accuracy(run, |a, b| row_distance(&q, &s, dim, a, b)));
        let (ps, pq) = (flat(&run.support), flat(&run.query));
        let n = size[0] * size[1];
        pixel.push(run_accuracy(run, |a, b| row_distance(&pq, &ps, n, a, b)));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(LakeRunsReport {
        runs: runs.len(),
        accuracy: mean(&per_run),
        pixel_accuracy: mean(&pixel),
        per_run,
    })
}

/// Lake's own pixel-level baseline on his runs: the modified Hausdorff distance between
/// the ink points of the 105 x 105 drawings, centred. Accuracy of each run.
pub fn modified_hausdorff_runs(runs: &[OneShotRun]) -> Vec<f64> {
    use rayon::prelude::*;
    runs.par_iter()
        .map(|run| {
            let side = siamese_data::omniglot::NATIVE_SIDE;
            let support: Vec<_> = run
                .support_native
                .iter()
                .map(|i| ink_points(i, side))
                .collect();
            let query: Vec<_> = run
                .query_native
                .iter()
                .map(|i| ink_points(i, side))
                .collect();
            run_accuracy(run, |q, s| modified_hausdorff(&query[q], &support[s]))
        })
        .collect()
}
