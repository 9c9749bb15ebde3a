//! Cohort score normalisation (symmetric, adaptive: "AS-norm", Matějka et al. 2017, the
//! standard of speaker and face verification): a pair's distance is judged against how
//! far each of its two images lies from a cohort of other identities (the training
//! classes' embeddings), not against one global threshold alone.
//!
//! Why: the test figures of unseen people are dominated by look-alikes. Two people whose
//! photos all lie near each other, and near many training faces, get small distances
//! for every pair across them, and one global threshold then accepts all of them. An
//! image whose nearest cohort faces are close has its distances raised; one far from
//! everybody has them lowered:
//!
//! `d' = ((d - m_a) / s_a + (d - m_b) / s_b) / 2`
//!
//! where `m_x`, `s_x` are the mean and standard deviation of the distances from image
//! `x` to its `top_k` nearest cohort rows. Smaller still means "more alike", so every
//! verification metric takes `d'` unchanged.
//!
//! ```
//! use siamese_metrics::score_norm::{cohort_stats, normalised_distances};
//!
//! // 1-D embeddings: a cohort of four rows, two query rows.
//! let cohort = [0.0, 1.0, 2.0, 3.0];
//! let rows = [0.5, 2.5];
//! let stats = cohort_stats(&cohort, &rows, 1, 2);
//! // Row 0's two nearest cohort rows are at 0.5 and 0.5: mean 0.5, spread 0.
//! assert_eq!((stats[0].mean, stats[0].std), (0.5, 0.0));
//! // A zero spread cannot scale a distance: the answer is NaN, never a guess.
//! let d = normalised_distances(&[2.0], &[0], &[1], &stats);
//! assert!(d[0].is_nan());
//! ```

use siamese_neighbours::nearest_to_each;

/// Where one image lies against the cohort: the mean and sample standard deviation of
/// its distances to its nearest cohort rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CohortStats {
    /// Mean distance to the nearest cohort rows.
    pub mean: f64,
    /// Their standard deviation (population: over exactly those rows).
    pub std: f64,
}

/// Training images' embeddings that distances are normalised against
/// (this module), and how many of the nearest each image's
/// statistics are taken over.
#[derive(Debug, Clone, PartialEq)]
pub struct Cohort {
    /// Row-major embeddings, `dim` columns.
    pub embeddings: Vec<f32>,
    /// The embedding dimension.
    pub dim: usize,
    /// Nearest cohort rows per image.
    pub top_k: usize,
}

impl Cohort {
    /// The [`CohortStats`] of each row of `rows` (`dim` columns).
    pub fn stats(&self, rows: &[f32]) -> Vec<CohortStats> {
        cohort_stats(&self.embeddings, rows, self.dim, self.top_k)
    }

    /// Rows in the cohort.
    pub fn len(&self) -> usize {
        self.embeddings.len() / self.dim.max(1)
    }

    /// Whether the cohort has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`CohortStats`] of every row of `rows` against its `top_k` nearest rows of `cohort`
/// (both row-major, `dim` columns; all the cohort when `top_k` exceeds it).
///
/// # Panics
/// When `dim` or `top_k` is zero, or the cohort is empty.
pub fn cohort_stats(cohort: &[f32], rows: &[f32], dim: usize, top_k: usize) -> Vec<CohortStats> {
    assert!(
        dim > 0 && top_k > 0,
        "a dimension and at least one cohort row"
    );
    assert!(cohort.len() >= dim, "an empty cohort has no statistics");
    let k = top_k.min(cohort.len() / dim);
    nearest_to_each(cohort, rows, dim, k, |_, hits| {
        let n = hits.len() as f64;
        let mean = hits.iter().map(|h| f64::from(h.distance)).sum::<f64>() / n;
        let var = hits
            .iter()
            .map(|h| (f64::from(h.distance) - mean).powi(2))
            .sum::<f64>()
            / n;
        CohortStats {
            mean,
            std: var.sqrt(),
        }
    })
}

/// The normalised distance of each pair `(left[i], right[i])` with raw distance
/// `distances[i]`, from the two rows' [`CohortStats`]. NaN where either spread is zero
/// or not finite, or the distance is not finite: [`crate::pair_metrics`] then reports
/// NaN rather than a figure from broken numbers.
///
/// # Panics
/// When the three slices differ in length or an index has no statistics.
pub fn normalised_distances(
    distances: &[f32],
    left: &[usize],
    right: &[usize],
    stats: &[CohortStats],
) -> Vec<f32> {
    assert!(
        distances.len() == left.len() && left.len() == right.len(),
        "one pair of rows per distance"
    );
    distances
        .iter()
        .zip(left.iter().zip(right))
        .map(|(&d, (&a, &b))| normalised_distance(f64::from(d), &stats[a], &stats[b]) as f32)
        .collect()
}

/// One distance `d` between two images, normalised by their [`CohortStats`] `a` and
/// `b`: `((d - m_a) / s_a + (d - m_b) / s_b) / 2`. NaN where either spread is zero or
/// not finite, or `d` is not finite.
pub fn normalised_distance(d: f64, a: &CohortStats, b: &CohortStats) -> f64 {
    let z = |s: &CohortStats| {
        if s.std > 0.0 && s.std.is_finite() {
            (d - s.mean) / s.std
        } else {
            f64::NAN
        }
    };
    0.5 * (z(a) + z(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pair_metrics;

    /// Against a naive computation: every distance to the cohort, sorted, the first k.
    #[test]
    fn stats_match_a_naive_sort() {
        let dim = 3;
        let cohort: Vec<f32> = (0..30).map(|i| ((i * 7919) % 23) as f32 * 0.1).collect();
        let rows: Vec<f32> = (0..12)
            .map(|i| ((i * 104_729) % 17) as f32 * 0.13)
            .collect();
        for k in [1, 4, 10, 50] {
            let got = cohort_stats(&cohort, &rows, dim, k);
            for (r, s) in rows.chunks(dim).zip(&got) {
                let mut d: Vec<f64> = cohort
                    .chunks(dim)
                    .map(|c| f64::from(siamese_neighbours::euclidean(c, r)))
                    .collect();
                d.sort_by(f64::total_cmp);
                d.truncate(k);
                let mean = d.iter().sum::<f64>() / d.len() as f64;
                let std =
                    (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
                assert!((s.mean - mean).abs() < 1e-9 && (s.std - std).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn hand_made_pair() {
        let stats = [
            CohortStats {
                mean: 1.0,
                std: 0.5,
            },
            CohortStats {
                mean: 2.0,
                std: 1.0,
            },
        ];
        // ((1.5 - 1) / 0.5 + (1.5 - 2) / 1) / 2 = (1 - 0.5) / 2.
        let d = normalised_distances(&[1.5], &[0], &[1], &stats);
        assert!((d[0] - 0.25).abs() < 1e-7);
    }

    /// Two regions of the embedding space, the second the first scaled by 10 and moved
    /// far away: in each, two people (A, B) and four cohort faces. Raw distances mix the
    /// regions' scales (a genuine pair of the wide region is farther apart than an
    /// impostor pair of the narrow one), so no global threshold separates them; relative
    /// to each image's own cohort neighbours the two regions score alike and every
    /// genuine pair is nearer than every impostor.
    #[test]
    fn normalisation_removes_a_scale_a_global_threshold_cannot() {
        let narrow = [0.0f32, 0.1, 0.3, 0.4];
        let narrow_cohort = [-0.5f32, -0.4, 0.8, 0.9];
        let wide = |x: &f32| 1000.0 + 10.0 * x;
        let rows: Vec<f32> = narrow
            .iter()
            .chain(&narrow)
            .enumerate()
            .map(|(i, x)| if i < 4 { *x } else { wide(x) })
            .collect();
        let cohort: Vec<f32> = narrow_cohort
            .iter()
            .chain(&narrow_cohort)
            .enumerate()
            .map(|(i, x)| if i < 4 { *x } else { wide(x) })
            .collect();
        let labels = [0, 0, 1, 1, 2, 2, 3, 3];
        let (mut left, mut right, mut same) = (vec![], vec![], vec![]);
        for a in 0..rows.len() {
            for b in a + 1..rows.len() {
                left.push(a);
                right.push(b);
                same.push(labels[a] == labels[b]);
            }
        }
        let raw = crate::pair_distances(&rows, 1, &left, &right);
        assert!(
            pair_metrics(&raw, &same).roc_auc < 1.0,
            "raw distances must mix them"
        );
        let stats = cohort_stats(&cohort, &rows, 1, 2);
        let normalised = normalised_distances(&raw, &left, &right, &stats);
        assert_eq!(
            pair_metrics(&normalised, &same).roc_auc,
            1.0,
            "{normalised:?}"
        );
        // The same pair in either region gets the same score (here A's two photos).
        assert!((normalised[0] - normalised[left.len() - 6]).abs() < 1e-3);
    }

    #[test]
    fn non_finite_input_gives_nan() {
        let stats = [CohortStats {
            mean: 1.0,
            std: f64::NAN,
        }];
        assert!(normalised_distances(&[1.0], &[0], &[0], &stats)[0].is_nan());
        let ok = [CohortStats {
            mean: 1.0,
            std: 1.0,
        }];
        assert!(normalised_distances(&[f32::NAN], &[0], &[0], &ok)[0].is_nan());
        assert!(pair_metrics(
            &normalised_distances(&[0.5, 2.0], &[0, 0], &[0, 0], &stats),
            &[true, false]
        )
        .roc_auc
        .is_nan());
    }
}
