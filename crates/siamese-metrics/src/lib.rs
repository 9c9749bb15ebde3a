//! Evaluation of a learned similarity metric, in plain Rust on distances and embeddings
//! (no tensors, no plotting): verification of pairs (ROC AUC, equal error rate,
//! accuracy at a threshold chosen on other pairs), k-nearest-neighbour accuracy,
//! retrieval (precision@1, R-precision, MAP@R, as pytorch-metric-learning defines
//! them), and PCA, for the baseline a learned metric must beat and for plots.
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

pub mod pairs;
pub mod pca;
pub mod retrieval;

pub use pairs::{accuracy_at, knn_accuracy, knn_accuracy_leave_one_out, pair_metrics, PairMetrics};
pub use pca::Pca;
pub use retrieval::{retrieval_leave_one_out, RetrievalMetrics};

use serde::{Deserialize, Serialize};

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

/// Euclidean distances between rows `left[i]` and `right[i]` of `embeddings`
/// (row-major, `dim` columns).
pub fn pair_distances(embeddings: &[f32], dim: usize, left: &[usize], right: &[usize]) -> Vec<f32> {
    assert_eq!(left.len(), right.len(), "one right index per left one");
    left.iter()
        .zip(right)
        .map(|(&a, &b)| {
            let (x, y) = (
                &embeddings[a * dim..(a + 1) * dim],
                &embeddings[b * dim..(b + 1) * dim],
            );
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q) * (p - q))
                .sum::<f32>()
                .sqrt()
        })
        .collect()
}
