//! The fixed evaluation protocol of DESIGN.md, shared by training and `siamese eval`
//! so their numbers agree: 10,000 balanced validation pairs choose the threshold; on
//! 10,000 balanced test pairs (a fixed seed) report ROC AUC, EER and accuracy at that
//! threshold; and kNN-5 accuracy of test embeddings against train embeddings (or,
//! when the test classes were never trained on, among the test embeddings, leaving
//! each query out).

use serde::{Deserialize, Serialize};
use siamese_data::{evaluation_pairs, Batcher, Dataset, ImageSet, PairBatch};
use siamese_model::Embedder;

use crate::error::TrainError;
use crate::metrics::{
    accuracy_at, knn_accuracy, knn_accuracy_leave_one_out, pair_metrics, PairMetrics,
};

/// Pairs drawn from each of the validation and test splits.
pub const PROTOCOL_PAIRS: usize = 10_000;
/// Seed of the validation pairs.
pub const VALIDATION_PAIRS_SEED: u64 = 2005;
/// Seed of the test pairs.
pub const TEST_PAIRS_SEED: u64 = 2006;
/// Neighbours in the kNN evaluation.
pub const KNN_K: usize = 5;
/// Images per inference batch when embedding a split.
pub const EMBED_BATCH: usize = 1000;

/// The protocol's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
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
    /// kNN-5 accuracy of test embeddings, against the gallery `knn_gallery` says.
    pub knn5_accuracy: f64,
    /// Which embeddings the kNN neighbours come from.
    #[serde(default)]
    pub knn_gallery: KnnGallery,
}

/// The gallery of the kNN evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnnGallery {
    /// The train embeddings (the test classes were seen in training).
    #[default]
    Train,
    /// The other test embeddings, leave one out (the test classes were not seen in
    /// training, as in an image folder split by class).
    TestLeaveOneOut,
}

/// Embeds every image of `set` in inference mode; returns `len * dim` values.
pub fn embed_set<E: Embedder>(
    tower: &E,
    set: &ImageSet,
    batcher: &Batcher,
) -> Result<Vec<f32>, TrainError> {
    let mut out = Vec::with_capacity(set.len() * tower.embedding_dim());
    let indices: Vec<usize> = (0..set.len()).collect();
    for chunk in indices.chunks(EMBED_BATCH) {
        let images = batcher.images(set, chunk)?;
        let e = tower.forward_t(&images, false)?;
        out.extend(e.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Euclidean distances of `pairs` between rows of `embeddings` (`dim` columns).
pub fn pair_distances(embeddings: &[f32], dim: usize, pairs: &PairBatch) -> Vec<f32> {
    pairs
        .left
        .iter()
        .zip(&pairs.right)
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

/// Metrics of `n` fixed balanced pairs of `set`, from its embeddings.
pub fn pair_metrics_of(
    set: &ImageSet,
    embeddings: &[f32],
    dim: usize,
    n: usize,
    seed: u64,
) -> Result<(PairMetrics, Vec<f32>, Vec<bool>), TrainError> {
    let pairs = evaluation_pairs(set.labels(), set.num_classes(), n, seed)?;
    let d = pair_distances(embeddings, dim, &pairs);
    Ok((pair_metrics(&d, &pairs.same), d, pairs.same))
}

/// Runs the whole protocol. Returns the report and the test embeddings.
pub fn evaluate<E: Embedder>(
    tower: &E,
    data: &Dataset,
    batcher: &Batcher,
) -> Result<(EvalReport, Vec<f32>), TrainError> {
    let dim = tower.embedding_dim();
    let val = embed_set(tower, &data.validation, batcher)?;
    let (validation, _, _) = pair_metrics_of(
        &data.validation,
        &val,
        dim,
        PROTOCOL_PAIRS,
        VALIDATION_PAIRS_SEED,
    )?;
    let test = embed_set(tower, &data.test, batcher)?;
    let (test_metrics, d, same) =
        pair_metrics_of(&data.test, &test, dim, PROTOCOL_PAIRS, TEST_PAIRS_SEED)?;
    let seen = data.train.class_counts();
    let unseen = data
        .test
        .labels()
        .iter()
        .any(|&l| seen.get(l as usize).is_none_or(|&n| n == 0));
    let (knn5_accuracy, knn_gallery) = if unseen {
        let acc = knn_accuracy_leave_one_out(&test, data.test.labels(), dim, KNN_K);
        (acc, KnnGallery::TestLeaveOneOut)
    } else {
        let train = embed_set(tower, &data.train, batcher)?;
        let acc = knn_accuracy(
            &train,
            data.train.labels(),
            &test,
            data.test.labels(),
            dim,
            KNN_K,
        );
        (acc, KnnGallery::Train)
    };
    let report = EvalReport {
        validation,
        threshold: validation.best_threshold,
        test_accuracy: accuracy_at(&d, &same, validation.best_threshold),
        test_roc_auc: test_metrics.roc_auc,
        test_eer: test_metrics.eer,
        knn5_accuracy,
        knn_gallery,
    };
    Ok((report, test))
}
