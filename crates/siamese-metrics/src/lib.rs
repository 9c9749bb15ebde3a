//! Evaluation of a learned similarity metric, in plain Rust on distances and embeddings
//! (no tensors, no plotting): verification of pairs (ROC AUC, equal error rate,
//! accuracy at a threshold chosen on other pairs), k-nearest-neighbour accuracy,
//! retrieval (precision@1, R-precision, MAP@R, as pytorch-metric-learning defines
//! them), cohort score normalisation of pair distances ([`score_norm`]), and PCA, for
//! the baseline a learned metric must beat and for plots.
//!
//! ```
//! use siamese_metrics::{pair_distances, retrieval_leave_one_out, verification};
//!
//! // Four 2-D embeddings of two classes.
//! let embeddings = [0.0, 0.0, 0.1, 0.0, 3.0, 3.0, 3.1, 3.0];
//! let labels = [0, 0, 1, 1];
//! let (left, right) = ([0, 2, 0, 1], [1, 3, 2, 3]);
//! let d = pair_distances(&embeddings, 2, &left, &right);
//! let same = [true, true, false, false];
//! // Threshold from one set of pairs, applied to another (here the same ones).
//! let v = verification(&d, &same, &d, &same);
//! assert_eq!((v.test_roc_auc, v.test_accuracy), (1.0, 1.0));
//!
//! let r = retrieval_leave_one_out(&embeddings, &labels, 2);
//! assert_eq!(r.map_at_r, 1.0);
//! ```

pub mod oneshot;
pub mod pairs;
pub mod pca;
pub mod retrieval;
pub mod score_norm;

pub use oneshot::{episode_accuracy, mean_ci95, modified_hausdorff};
pub use pairs::{accuracy_at, knn_accuracy, knn_accuracy_leave_one_out, pair_metrics, PairMetrics};
pub use pca::Pca;
pub use retrieval::{retrieval_leave_one_out, RetrievalMetrics};
/// Euclidean distances between rows `left[i]` and `right[i]` of embeddings (row-major,
/// `dim` columns): the same routine as every other distance outside training.
pub use siamese_neighbours::pair_distances;

use serde::{Deserialize, Serialize};

/// ROC AUC of telling two classes apart: the same-class pairs of either class against
/// the pairs of one image of each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassPairAuc {
    /// The two classes, lower first.
    pub classes: [u32; 2],
    /// ROC AUC over those pairs.
    pub roc_auc: f64,
    /// Same-class pairs of either class, and pairs across the two.
    pub pairs: [usize; 2],
}

/// [`ClassPairAuc`] for every two classes that have pairs across them among these
/// (`distances[i]` of a pair whose images have labels `first[i]` and `second[i]`), in
/// class order; a class pair without a same-class pair of either class is left out.
pub fn class_pair_auc(distances: &[f32], first: &[u32], second: &[u32]) -> Vec<ClassPairAuc> {
    assert!(
        distances.len() == first.len() && first.len() == second.len(),
        "one pair of labels per distance"
    );
    let mut across: Vec<[u32; 2]> = first
        .iter()
        .zip(second)
        .filter(|(a, b)| a != b)
        .map(|(&a, &b)| [a.min(b), a.max(b)])
        .collect();
    across.sort_unstable();
    across.dedup();
    across
        .into_iter()
        .filter_map(|[a, b]| {
            let (mut d, mut same) = (Vec::new(), Vec::new());
            for ((&x, &y), &dist) in first.iter().zip(second).zip(distances) {
                let genuine = x == y && (x == a || x == b);
                let impostor = (x, y) == (a, b) || (x, y) == (b, a);
                if genuine || impostor {
                    d.push(dist);
                    same.push(genuine);
                }
            }
            let genuine = same.iter().filter(|&&s| s).count();
            (genuine > 0).then(|| ClassPairAuc {
                classes: [a, b],
                roc_auc: pair_metrics(&d, &same).roc_auc,
                pairs: [genuine, same.len() - genuine],
            })
        })
        .collect()
}

/// Verification figures of the protocol: a threshold chosen on validation pairs, then
/// applied to test pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Metrics of the validation pairs (the threshold is their best one).
    pub validation: PairMetrics,
    /// The distance threshold chosen on validation pairs.
    pub threshold: f64,
    /// Test pair accuracy at that threshold.
    pub test_accuracy: f64,
    /// Test ROC AUC.
    pub test_roc_auc: f64,
    /// Test equal error rate.
    pub test_eer: f64,
}

/// The protocol's verification figures from validation and test pair distances.
pub fn verification(
    validation_distances: &[f32],
    validation_same: &[bool],
    test_distances: &[f32],
    test_same: &[bool],
) -> Verification {
    let validation = pair_metrics(validation_distances, validation_same);
    let test = pair_metrics(test_distances, test_same);
    Verification {
        validation,
        threshold: validation.best_threshold,
        test_accuracy: if validation.best_threshold.is_finite() {
            accuracy_at(test_distances, test_same, validation.best_threshold)
        } else {
            f64::NAN
        },
        test_roc_auc: test.roc_auc,
        test_eer: test.eer,
    }
}

#[cfg(test)]
mod class_pair_tests {
    use super::*;

    /// Classes 0, 1, 2: 0 and 1 are told apart perfectly, 1 and 2 worse than chance
    /// (their cross pair is nearer than the same-class ones), 0 and 2 have no cross pair.
    #[test]
    fn each_class_pair_is_scored_on_its_own_pairs() {
        let first = [0, 1, 2, 0, 1, 1, 0];
        let second = [0, 1, 2, 1, 2, 1, 1];
        let distances = [0.1, 0.2, 0.3, 0.9, 0.2, 0.3, 0.8];
        let got = class_pair_auc(&distances, &first, &second);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].classes, [0, 1]);
        // Genuine 0.1 (0-0), 0.2 and 0.3 (1-1); impostors 0.9 and 0.8: all apart.
        assert_eq!((got[0].roc_auc, got[0].pairs), (1.0, [3, 2]));
        assert_eq!(got[1].classes, [1, 2]);
        // Genuine 0.2, 0.3 (1-1), 0.3 (2-2); impostor 0.2 (1-2): no genuine pair is
        // nearer than it, one ties (half) -> AUC 0.5 / 3.
        assert!((got[1].roc_auc - 0.5 / 3.0).abs() < 1e-12, "{got:?}");
        assert_eq!(got[1].pairs, [3, 1]);
    }
}
