//! Verification metrics of pairs (ROC AUC, equal error rate, accuracy at a threshold
//! and the threshold that maximises it) and k-nearest-neighbour accuracy. A pair is
//! predicted "same" when its distance is at most the threshold.

use serde::{Deserialize, Serialize};
use siamese_neighbours::{nearest_to_each, nearest_to_each_row, Neighbour};

/// Verification metrics of a set of pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    /// Area under the ROC curve: the probability that a same-class pair is closer than a
    /// different-class pair (ties count half).
    pub roc_auc: f64,
    /// Equal error rate: where false accepts and false rejects are equal.
    pub eer: f64,
    /// The threshold with the best accuracy on these pairs.
    pub best_threshold: f64,
    /// The accuracy at that threshold.
    pub best_accuracy: f64,
}

/// Fraction of pairs classified right when "same" means `distance <= threshold`.
pub fn accuracy_at(distances: &[f32], same: &[bool], threshold: f64) -> f64 {
    let right = distances
        .iter()
        .zip(same)
        .filter(|(&d, &s)| (f64::from(d) <= threshold) == s)
        .count();
    right as f64 / distances.len().max(1) as f64
}

/// ROC AUC, EER and the best threshold of a set of pairs. With only one kind of pair
/// present, AUC and EER are undefined and reported as NaN; so is everything when a
/// distance is not finite (broken numbers get no confident answer).
pub fn pair_metrics(distances: &[f32], same: &[bool]) -> PairMetrics {
    assert_eq!(distances.len(), same.len(), "one label per distance");
    if distances.iter().any(|d| !d.is_finite()) {
        return PairMetrics {
            roc_auc: f64::NAN,
            eer: f64::NAN,
            best_threshold: f64::NAN,
            best_accuracy: f64::NAN,
        };
    }
    let n = distances.len();
    let positives = same.iter().filter(|&&s| s).count();
    let negatives = n - positives;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| distances[a].total_cmp(&distances[b]));

    // Walk the distances upwards, one group of equal values at a time. Each cut point
    // (before everything, then after each group) is a candidate threshold: accuracy and
    // the FAR/FRR balance are tracked over all of them.
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut auc_sum = 0.0;
    // (accuracy, threshold) of the best cut, and (|FAR - FRR|, EER) of the most balanced.
    let mut best = (f64::NEG_INFINITY, f64::NAN);
    let mut eer = (f64::INFINITY, f64::NAN);
    let mut consider = |tp: usize, fp: usize, threshold: f64| {
        let accuracy = (tp + negatives - fp) as f64 / n.max(1) as f64;
        if accuracy > best.0 {
            best = (accuracy, threshold);
        }
        if positives > 0 && negatives > 0 {
            let far = fp as f64 / negatives as f64;
            let frr = (positives - tp) as f64 / positives as f64;
            if (far - frr).abs() < eer.0 {
                eer = ((far - frr).abs(), (far + frr) / 2.0);
            }
        }
    };
    // Below the smallest distance nothing is "same".
    let smallest = order.first().map_or(0.0, |&i| f64::from(distances[i]));
    consider(0, 0, smallest - 1.0);
    let mut i = 0;
    while i < n {
        let d = distances[order[i]];
        let mut j = i;
        let (mut group_pos, mut group_neg) = (0usize, 0usize);
        while j < n && distances[order[j]] == d {
            if same[order[j]] {
                group_pos += 1;
            } else {
                group_neg += 1;
            }
            j += 1;
        }
        // Each negative in the group beats the positives strictly below, ties half.
        auc_sum += group_neg as f64 * (tp as f64 + 0.5 * group_pos as f64);
        tp += group_pos;
        fp += group_neg;
        let threshold = if j < n {
            (f64::from(d) + f64::from(distances[order[j]])) / 2.0
        } else {
            f64::from(d) + 1.0
        };
        consider(tp, fp, threshold);
        i = j;
    }
    let defined = positives > 0 && negatives > 0;
    PairMetrics {
        roc_auc: if defined {
            auc_sum / (positives as f64 * negatives as f64)
        } else {
            f64::NAN
        },
        eer: if defined { eer.1 } else { f64::NAN },
        best_threshold: best.1,
        best_accuracy: best.0,
    }
}

/// Accuracy of k-nearest-neighbour classification of `test` embeddings against `train`
/// embeddings (row-major, `dim` columns), Euclidean. Votes tied between classes go to
/// the class with the nearest member.
pub fn knn_accuracy(
    train: &[f32],
    train_labels: &[u32],
    test: &[f32],
    test_labels: &[u32],
    dim: usize,
    k: usize,
) -> f64 {
    knn(train, train_labels, test, test_labels, dim, k, false)
}

/// kNN accuracy within one set, each embedding classified by the others (leave one
/// out): the measure for a test split whose classes training never saw (an image
/// folder split by class), where a gallery of training embeddings would hold none of
/// the right answers.
pub fn knn_accuracy_leave_one_out(embeddings: &[f32], labels: &[u32], dim: usize, k: usize) -> f64 {
    knn(embeddings, labels, embeddings, labels, dim, k, true)
}

/// `leave_one_out`: `test` is `train`, and a query skips its own row.
fn knn(
    train: &[f32],
    train_labels: &[u32],
    test: &[f32],
    test_labels: &[u32],
    dim: usize,
    k: usize,
    leave_one_out: bool,
) -> f64 {
    assert!(k > 0 && dim > 0);
    assert_eq!(train.len(), train_labels.len() * dim);
    assert_eq!(test.len(), test_labels.len() * dim);
    // Each query's vote: the k nearest (its own row left out when the sets are one),
    // ties between classes going to the class with the nearest member. Votes are
    // counted over the k neighbours alone, so any number of classes costs nothing.
    let vote = |q: usize, nearest: &[Neighbour]| {
        let label = |n: &Neighbour| train_labels[n.index];
        let votes = |l: u32| nearest.iter().filter(|n| label(n) == l).count();
        let top = nearest.iter().map(|n| votes(label(n))).max().unwrap_or(0);
        let predicted = nearest.iter().map(label).find(|&l| votes(l) == top);
        predicted == Some(test_labels[q])
    };
    let right: Vec<bool> = if leave_one_out {
        nearest_to_each_row(train, dim, |_| k, vote)
    } else {
        nearest_to_each(train, test, dim, k, vote)
    };
    right.iter().filter(|&&r| r).count() as f64 / test_labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_skips_the_query_itself() {
        // With itself in the gallery every point is its own nearest neighbour. Left
        // out: 0.0 and the 5.x points are right; 0.1 and 0.2 have the class-1 point
        // 0.15 nearest, and 0.15 has class-0 points nearest: 4 of 7.
        let points = [0.0, 0.1, 0.2, 0.15, 5.0, 5.1, 5.2];
        let labels = [0, 0, 0, 1, 1, 1, 1];
        let with_self = knn_accuracy(&points, &labels, &points, &labels, 1, 1);
        let loo = knn_accuracy_leave_one_out(&points, &labels, 1, 1);
        assert_eq!(with_self, 1.0);
        assert!((loo - 4.0 / 7.0).abs() < 1e-12, "{loo}");
    }

    #[test]
    fn perfect_separation() {
        let d = [0.1, 0.2, 0.9, 1.0];
        let s = [true, true, false, false];
        let m = pair_metrics(&d, &s);
        assert_eq!(m.roc_auc, 1.0);
        assert_eq!(m.eer, 0.0);
        assert_eq!(m.best_accuracy, 1.0);
        assert!((m.best_threshold - 0.55).abs() < 1e-6);
        assert_eq!(accuracy_at(&d, &s, m.best_threshold), 1.0);
    }

    /// Against the definition, a double loop over (positive, negative) pairs.
    #[test]
    fn auc_matches_the_pairwise_definition_with_ties() {
        let d = [0.3f32, 0.5, 0.5, 0.1, 0.9, 0.5, 0.2, 0.7];
        let s = [true, false, true, false, false, true, true, false];
        let mut wins = 0.0;
        let mut count = 0.0;
        for i in 0..d.len() {
            for j in 0..d.len() {
                if s[i] && !s[j] {
                    count += 1.0;
                    wins += if d[i] < d[j] {
                        1.0
                    } else if d[i] == d[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        let m = pair_metrics(&d, &s);
        assert!(
            (m.roc_auc - wins / count).abs() < 1e-12,
            "{} vs {}",
            m.roc_auc,
            wins / count
        );
        // The best threshold really is the best of all cut points.
        let best = d
            .iter()
            .map(|&t| accuracy_at(&d, &s, f64::from(t)))
            .fold(0.0, f64::max);
        assert!(m.best_accuracy >= best - 1e-12);
        assert_eq!(accuracy_at(&d, &s, m.best_threshold), m.best_accuracy);
    }

    #[test]
    fn non_finite_distances_give_nan_not_a_hang() {
        for bad in [f32::NAN, f32::INFINITY] {
            let m = pair_metrics(&[0.1, bad, 0.3, bad], &[true, false, true, false]);
            assert!(m.roc_auc.is_nan() && m.eer.is_nan() && m.best_threshold.is_nan());
        }
    }

    #[test]
    fn reversed_scores_give_auc_zero_and_eer_one() {
        let m = pair_metrics(&[0.9, 0.8, 0.1, 0.2], &[true, true, false, false]);
        assert_eq!(m.roc_auc, 0.0);
        assert_eq!(m.eer, 1.0);
        assert_eq!(m.best_accuracy, 0.5);
    }

    #[test]
    fn knn_votes_and_breaks_ties_by_nearest() {
        // 1-D embeddings: class 0 near 0, class 1 near 10.
        let train = [0.0, 0.5, 1.0, 10.0, 10.5, 11.0];
        let labels = [0, 0, 0, 1, 1, 1];
        assert_eq!(
            knn_accuracy(&train, &labels, &[0.2, 10.2], &[0, 1], 1, 3),
            1.0
        );
        assert_eq!(
            knn_accuracy(&train, &labels, &[0.2, 10.2], &[1, 1], 1, 3),
            0.5
        );
        // k = 2 at 5.4: one neighbour of each class; class 1 (10.0) is nearer than 1.0? no:
        // |5.4 - 1.0| = 4.4 < |5.4 - 10.0| = 4.6, so class 0 wins the tie.
        assert_eq!(knn_accuracy(&train, &labels, &[5.4], &[0], 1, 2), 1.0);
    }
}
