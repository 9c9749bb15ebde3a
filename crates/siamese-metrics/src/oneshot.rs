//! Few-shot classification scores, as the field reports them: N-way K-shot accuracy over
//! episodes of classes never trained on (each query given the class whose support
//! embeddings' mean is nearest, which for one shot is the nearest support image), the
//! mean over episodes with a 95% confidence interval, and the modified Hausdorff
//! distance (Dubuisson & Jain 1994), Lake's pixel-level baseline on Omniglot.

use crate::score_norm::{cohort_stats, normalised_distance, CohortStats};
use siamese_neighbours::{euclidean, squared_euclidean};

/// Accuracy of one episode: `support` rows (class-major, `support.len() / ways` per
/// class) give each class the mean of its embeddings; each of `query` (with its class
/// in `query_classes`) is right when the nearest mean is its own (ties to the lower
/// class). NaN when an embedding is not finite.
pub fn episode_accuracy(
    embeddings: &[f32],
    dim: usize,
    ways: usize,
    support: &[usize],
    query: &[usize],
    query_classes: &[usize],
) -> f64 {
    let means = class_means(embeddings, dim, ways, support);
    let row = |i: usize| &embeddings[i * dim..(i + 1) * dim];
    accuracy_by(query, query_classes, ways, |q, c| {
        f64::from(squared_euclidean(&means[c * dim..(c + 1) * dim], row(q)))
    })
}

/// [`episode_accuracy`] with cohort-normalised distances
/// ([`crate::score_norm::normalised_distance`]): each class mean's statistics over its
/// `top_k` nearest rows of `cohort`, each query's from `query_stats` (by row of
/// `embeddings`). NaN when an embedding or a spread is broken.
#[allow(clippy::too_many_arguments)]
pub fn episode_accuracy_normalised(
    embeddings: &[f32],
    dim: usize,
    ways: usize,
    (support, query, query_classes): (&[usize], &[usize], &[usize]),
    cohort: &[f32],
    top_k: usize,
    query_stats: &[CohortStats],
) -> f64 {
    let means = class_means(embeddings, dim, ways, support);
    if means.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let mean_stats = cohort_stats(cohort, &means, dim, top_k);
    let row = |i: usize| &embeddings[i * dim..(i + 1) * dim];
    accuracy_by(query, query_classes, ways, |q, c| {
        let d = euclidean(&means[c * dim..(c + 1) * dim], row(q));
        normalised_distance(f64::from(d), &query_stats[q], &mean_stats[c])
    })
}

/// The mean embedding of each class's support rows (class-major, the same shots each).
fn class_means(embeddings: &[f32], dim: usize, ways: usize, support: &[usize]) -> Vec<f32> {
    assert!(
        ways > 0 && support.len().is_multiple_of(ways),
        "the same shots for every class"
    );
    let row = |i: usize| &embeddings[i * dim..(i + 1) * dim];
    let shots = support.len() / ways;
    let mut means = vec![0f32; ways * dim];
    for (c, mean) in means.chunks_exact_mut(dim).enumerate() {
        for &s in &support[c * shots..(c + 1) * shots] {
            mean.iter_mut().zip(row(s)).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= shots as f32);
    }
    means
}

/// The share of `query` whose lowest `score(query row, class)` over the `ways` classes
/// is its own class in `query_classes` (ties to the lower class); NaN when any score is
/// not finite, so broken numbers give no confident answer.
fn accuracy_by(
    query: &[usize],
    query_classes: &[usize],
    ways: usize,
    score: impl Fn(usize, usize) -> f64,
) -> f64 {
    assert_eq!(query.len(), query_classes.len(), "one class per query");
    let mut right = 0usize;
    for (&q, &truth) in query.iter().zip(query_classes) {
        let scores: Vec<f64> = (0..ways).map(|c| score(q, c)).collect();
        let Some(nearest) = lowest(&scores) else {
            return f64::NAN;
        };
        right += usize::from(nearest == truth);
    }
    right as f64 / query.len().max(1) as f64
}

/// The index of the lowest score (the first of equal ones); `None` when there is none
/// or any score is not finite, so broken numbers pick nothing.
pub fn lowest(scores: &[f64]) -> Option<usize> {
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    scores
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(&b.0)))
        .map(|(i, _)| i)
}

/// The mean of per-episode accuracies and its 95% confidence interval (normal
/// approximation, as the few-shot literature reports it).
pub fn mean_ci95(accuracies: &[f64]) -> (f64, f64) {
    let n = accuracies.len() as f64;
    if accuracies.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = accuracies.iter().sum::<f64>() / n;
    if accuracies.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = accuracies.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, 1.96 * (var / n).sqrt())
}

/// Modified Hausdorff distance between two point sets: the larger of the two mean
/// distances from a point of one set to the nearest point of the other (Dubuisson &
/// Jain 1994). Infinite when a set is empty.
pub fn modified_hausdorff(a: &[[f64; 2]], b: &[[f64; 2]]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::INFINITY;
    }
    let directed = |from: &[[f64; 2]], to: &[[f64; 2]]| {
        from.iter()
            .map(|p| {
                to.iter()
                    .map(|q| (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2))
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .sum::<f64>()
            / from.len() as f64
    };
    directed(a, b).max(directed(b, a))
}

/// The ink pixels of a `side`-wide image (ink where the value is at least 128) as
/// `(row, column)` points centred on their mean, as Lake's baseline reads an image.
pub fn ink_points(pixels: &[u8], side: usize) -> Vec<[f64; 2]> {
    let mut points: Vec<[f64; 2]> = pixels
        .iter()
        .enumerate()
        .filter(|(_, &p)| p >= 128)
        .map(|(i, _)| [(i / side) as f64, (i % side) as f64])
        .collect();
    if points.is_empty() {
        return points;
    }
    let n = points.len() as f64;
    let mean = [
        points.iter().map(|p| p[0]).sum::<f64>() / n,
        points.iter().map(|p| p[1]).sum::<f64>() / n,
    ];
    points.iter_mut().for_each(|p| {
        p[0] -= mean[0];
        p[1] -= mean[1];
    });
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes on a line: supports at 0 and 10; queries at 1, 4, 6 and 9.
    #[test]
    fn queries_go_to_the_nearest_class_mean() {
        let e = [0.0, 10.0, 1.0, 4.0, 6.0, 9.0];
        let acc = episode_accuracy(&e, 1, 2, &[0, 1], &[2, 3, 4, 5], &[0, 0, 1, 1]);
        assert_eq!(acc, 1.0);
        // Wrong truths: all four wrong.
        assert_eq!(
            episode_accuracy(&e, 1, 2, &[0, 1], &[2, 3, 4, 5], &[1, 1, 0, 0]),
            0.0
        );
        // Two shots: class 0's mean is 5 (0 and 10), class 1's is 9: 6 goes to class 0.
        let acc = episode_accuracy(&e, 1, 2, &[0, 1, 5, 5], &[4], &[0]);
        assert_eq!(acc, 1.0);
        // A tie (5 between 0 and 10) goes to the lower class.
        assert_eq!(
            episode_accuracy(&[0.0, 10.0, 5.0], 1, 2, &[0, 1], &[2], &[0]),
            1.0
        );
        // Broken numbers give no confident answer.
        assert!(episode_accuracy(&[0.0, f32::NAN, 5.0], 1, 2, &[0, 1], &[2], &[0]).is_nan());
    }

    /// A dense neighbourhood and a sparse one on a line: class 0's support at 0 has its
    /// four nearest cohort rows at 1, 1, 2, 2 (mean 1.5, spread 0.5), class 1's at 10
    /// at 4, 4, 8, 8 (mean 6, spread 2). A query of class 1 at 4.5 is raw-nearer class
    /// 0 (4.5 against 5.5); normalised, 4.5 is far beyond class 0's narrow spread and
    /// within class 1's wide one (scores 4.41 against 2.0), so it goes to class 1.
    #[test]
    fn normalised_episodes_judge_each_class_by_its_neighbourhood() {
        let cohort = [-1.0, 1.0, -2.0, 2.0, 6.0, 14.0, 2.0, 18.0];
        // Rows: support of class 0, support of class 1, the query.
        let e = [0.0, 10.0, 4.5];
        let episode = (&[0usize, 1][..], &[2usize][..], &[1usize][..]);
        assert_eq!(
            episode_accuracy(&e, 1, 2, episode.0, episode.1, episode.2),
            0.0
        );
        let stats = cohort_stats(&cohort, &e, 1, 4);
        let normalised = episode_accuracy_normalised(&e, 1, 2, episode, &cohort, 4, &stats);
        assert_eq!(normalised, 1.0);
        // A zero spread cannot scale a distance: no answer rather than a guess.
        let flat = [CohortStats {
            mean: 1.0,
            std: 0.0,
        }; 3];
        assert!(episode_accuracy_normalised(&e, 1, 2, episode, &cohort, 4, &flat).is_nan());
    }

    #[test]
    fn confidence_interval_of_the_mean() {
        let (m, ci) = mean_ci95(&[1.0, 0.0, 1.0, 0.0]);
        // Sample standard deviation 0.5774, standard error 0.2887.
        assert!((m - 0.5).abs() < 1e-12 && (ci - 1.96 * 0.288_675_134_6).abs() < 1e-9);
        assert!(mean_ci95(&[]).0.is_nan());
        assert!(mean_ci95(&[0.7]).1.is_nan());
    }

    #[test]
    fn modified_hausdorff_by_hand() {
        let a = [[0.0, 0.0], [0.0, 2.0]];
        let b = [[0.0, 0.0]];
        // a to b: (0 + 2) / 2 = 1; b to a: 0. The larger: 1.
        assert_eq!(modified_hausdorff(&a, &b), 1.0);
        assert_eq!(modified_hausdorff(&a, &a), 0.0);
        assert!(modified_hausdorff(&a, &[]).is_infinite());
        // Centring makes the distance blind to where the drawing sits.
        let mut img = vec![0u8; 25];
        img[6] = 255;
        img[7] = 255;
        let mut moved = vec![0u8; 25];
        moved[18] = 255;
        moved[19] = 255;
        assert_eq!(
            modified_hausdorff(&ink_points(&img, 5), &ink_points(&moved, 5)),
            0.0
        );
    }
}
