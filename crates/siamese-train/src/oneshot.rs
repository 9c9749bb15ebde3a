//! One-shot classification in the evaluation report, as the few-shot literature reports
//! it: N-way K-shot accuracy over seeded episodes of the test classes (with a 95%
//! confidence interval, beside the same episodes scored by raw pixels), and Lake's 20
//! runs of 20-way one-shot classification on Omniglot (nearest support image by the
//! model's distance), beside raw pixels and Lake's modified Hausdorff baseline.

use serde::{Deserialize, Serialize};
use siamese_data::omniglot::runs::OneShotRun;
use siamese_data::{unit_pixel, Batcher, EpisodeSampler, ImageSet};
use siamese_metrics::oneshot::ink_points;
use siamese_metrics::oneshot::{episode_accuracy_normalised, lowest};
use siamese_metrics::score_norm::{normalised_distance, Cohort};
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
    /// The model's mean accuracy with cohort-normalised distances (query and class
    /// mean each against their nearest training images), when a cohort was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalised_accuracy: Option<f64>,
    /// Half-width of its 95% confidence interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalised_ci95: Option<f64>,
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
    /// The model's mean accuracy with cohort-normalised distances, when a cohort was
    /// given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalised_accuracy: Option<f64>,
}

/// The episode settings the test split allows, each over [`EPISODES`] episodes, for the
/// model's test embeddings (also cohort-normalised, with a `cohort`) and for the test
/// images' pixels.
pub fn episode_reports(
    test: &[f32],
    dim: usize,
    set: &ImageSet,
    cohort: Option<&Cohort>,
) -> Vec<OneShotReport> {
    let pixels: Vec<f32> = set.pixels().iter().map(|&p| unit_pixel(p)).collect();
    let test_stats = cohort.map(|c| c.stats(test));
    EPISODE_SETTINGS
        .iter()
        .filter_map(|&(ways, shots)| {
            let sampler =
                EpisodeSampler::new(set.labels(), ways, shots, EPISODE_QUERIES, EPISODE_SEED);
            let mut sampler = sampler.ok()?;
            let (mut model, mut raw, mut normalised) = (Vec::new(), Vec::new(), Vec::new());
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
                if let (Some(c), Some(stats)) = (cohort, &test_stats) {
                    normalised.push(episode_accuracy_normalised(
                        test,
                        dim,
                        ways,
                        (&e.support, &e.query, &truth),
                        &c.embeddings,
                        c.top_k,
                        stats,
                    ));
                }
            }
            let ((accuracy, ci95), (pixel_accuracy, pixel_ci95)) =
                (mean_ci95(&model), mean_ci95(&raw));
            let normalised = cohort.map(|_| mean_ci95(&normalised));
            Some(OneShotReport {
                ways,
                shots,
                queries: EPISODE_QUERIES,
                episodes: EPISODES,
                accuracy,
                ci95,
                pixel_accuracy,
                pixel_ci95,
                normalised_accuracy: normalised.map(|n| n.0),
                normalised_ci95: normalised.map(|n| n.1),
            })
        })
        .collect()
}

/// The share of `run`'s queries whose nearest support item (by `distance`) is their
/// answer; ties go to the first support item. NaN when a distance is not finite.
fn run_accuracy(run: &OneShotRun, distance: impl Fn(usize, usize) -> f64) -> f64 {
    let mut right = 0usize;
    for (q, &answer) in run.answers.iter().enumerate() {
        let d: Vec<f64> = (0..run.support.len()).map(|s| distance(q, s)).collect();
        let Some(nearest) = lowest(&d) else {
            return f64::NAN;
        };
        right += usize::from(nearest == answer);
    }
    right as f64 / run.answers.len().max(1) as f64
}

/// Euclidean distance between rows `a` of `left` and `b` of `right`.
fn row_distance(left: &[f32], right: &[f32], dim: usize, a: usize, b: usize) -> f64 {
    f64::from(siamese_neighbours::euclidean(
        &left[a * dim..(a + 1) * dim],
        &right[b * dim..(b + 1) * dim],
    ))
}

/// Lake's runs scored by the model (nearest support image in embedding space; also
/// cohort-normalised, with a `cohort`) and by raw pixels at the model's image size.
pub fn lake_runs<E: Embedder>(
    tower: &E,
    runs: &[OneShotRun],
    batcher: &Batcher,
    size: [usize; 2],
    cohort: Option<&Cohort>,
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
    let (mut per_run, mut pixel, mut normalised) = (Vec::new(), Vec::new(), Vec::new());
    for run in runs {
        let (s, q) = (embed(&run.support)?, embed(&run.query)?);
        per_run.push(run_accuracy(run, |a, b| row_distance(&q, &s, dim, a, b)));
        if let Some(c) = cohort {
            let (s_stats, q_stats) = (c.stats(&s), c.stats(&q));
            normalised.push(run_accuracy(run, |a, b| {
                normalised_distance(row_distance(&q, &s, dim, a, b), &q_stats[a], &s_stats[b])
            }));
        }
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
        normalised_accuracy: cohort.map(|_| mean(&normalised)),
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
