//! The fixed evaluation protocol of DESIGN.md, shared by training and `siamese eval`
//! so their numbers agree: 10,000 balanced validation pairs choose the threshold; on
//! 10,000 balanced test pairs (a fixed seed) report ROC AUC, EER and accuracy at that
//! threshold; kNN-5 accuracy of test embeddings against train embeddings (or, when the
//! test classes were never trained on, among the test embeddings, leaving each query
//! out); retrieval among the test embeddings (precision@1, R-precision, MAP@R); and
//! the same pairs scored by raw pixels and by PCA, the baselines to beat.

use serde::{Deserialize, Serialize};
use siamese_data::{evaluation_pairs, Batcher, Dataset, ImageSet, PairBatch};
use siamese_model::Embedder;

use siamese_metrics::score_norm::{normalised_distances, Cohort};
use siamese_metrics::{
    class_pair_auc, knn_accuracy, knn_accuracy_leave_one_out, pair_metrics,
    retrieval_leave_one_out, verification, PairMetrics, Pca, Verification,
};

use crate::error::TrainError;
use crate::oneshot::{episode_reports, lake_runs, LakeRunsReport, OneShotReport};
use siamese_data::omniglot::runs::OneShotRun;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Test classes that training never saw (held out, or an image folder's test
    /// classes); empty for the closed-set protocol.
    #[serde(default)]
    pub unseen_test_classes: Vec<u32>,
    /// Retrieval among the test embeddings, each one a query against the others: the
    /// share whose nearest neighbour has their class.
    #[serde(default)]
    pub precision_at_1: f64,
    /// R-precision of the same queries.
    #[serde(default)]
    pub r_precision: f64,
    /// MAP@R of the same queries.
    #[serde(default)]
    pub map_at_r: f64,
    /// The same validation and test pairs scored by the Euclidean distance of raw
    /// pixels (scaled to [0, 1]).
    #[serde(default)]
    pub pixel_baseline: Option<Verification>,
    /// For unseen test classes: ROC AUC of each two classes, the model's beside the
    /// raw pixels', over the protocol's test pairs of those classes (a learned metric
    /// should beat pixels on every pair, not only on average).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_pairs: Vec<ClassPairReport>,
    /// The same pairs scored after PCA of the pixels onto the embedding's dimension,
    /// fitted on the training images; absent when the images are too large to fit it
    /// (more than [`PCA_BASELINE_MAX_PIXELS`] pixels) or have fewer pixels than the
    /// embedding has dimensions.
    #[serde(default)]
    pub pca_baseline: Option<Verification>,
    /// For unseen test classes: N-way K-shot accuracy over seeded episodes of the test
    /// classes, the model's beside raw pixels' (the settings the classes allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_shot: Vec<OneShotReport>,
    /// Lake's 20-way one-shot runs, when the data set is Omniglot and its runs folder
    /// is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lake_runs: Option<LakeRunsReport>,
    /// For unseen test classes: the same validation and test pairs scored by cohort
    /// normalised distances (AS-norm against training embeddings), the model's beside
    /// raw pixels' normalised the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_normalised: Option<ScoreNormalised>,
}

impl EvalReport {
    /// Whether cohort-normalised scores told the validation pairs apart better than
    /// plain distances (a lower EER): the scoring `siamese verify` applies by default.
    /// `None` without normalised figures.
    pub fn prefers_normalised(&self) -> Option<bool> {
        let n = self.score_normalised.as_ref()?;
        Some(normalised_preferred(
            n.model.validation.eer,
            self.validation.eer,
        ))
    }
}

/// The one rule by which `siamese verify` picks its scoring: normalised when its
/// validation EER is strictly the lower (a tie keeps the plain distance, which needs
/// no cohort).
pub fn normalised_preferred(normalised_validation_eer: f64, plain_validation_eer: f64) -> bool {
    normalised_validation_eer < plain_validation_eer
}

/// Verification with cohort score normalisation ([`siamese_metrics::score_norm`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreNormalised {
    /// Training images in the cohort (evenly spaced over the training set).
    pub cohort: usize,
    /// Nearest cohort rows each image's statistics are taken over.
    pub top_k: usize,
    /// The model's figures (the threshold is on normalised distances).
    pub model: Verification,
    /// Raw pixels' figures, normalised against the same cohort's pixels.
    pub pixels: Verification,
}

/// Most training images in the score-normalisation cohort: its cost is one distance
/// from every validation and test image to each.
pub const COHORT_MAX_ROWS: usize = 2_000;
/// Nearest cohort rows per image in the score normalisation: on AT&T faces (a cohort
/// of 300 training photos) all of them measured best, by a little (the README).
pub const COHORT_TOP_K: usize = 300;

/// Two unseen test classes told apart by the model and by raw pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassPairReport {
    /// The two classes, by label.
    pub classes: [u32; 2],
    /// The model's ROC AUC on their test pairs.
    pub roc_auc: f64,
    /// Raw pixels' ROC AUC on the same pairs.
    pub pixel_roc_auc: f64,
    /// Same-class pairs of either class, and pairs across the two.
    pub pairs: [usize; 2],
}

/// Classes per report above which the class pairs are not listed (their number grows
/// with the square).
pub const MAX_CLASS_PAIR_CLASSES: usize = 20;

/// The per-class-pair figures of the model's and the pixels' test distances.
fn class_pairs(
    data: &Dataset,
    pairs: &PairBatch,
    model: &[f32],
    pixels: &[f32],
) -> Vec<ClassPairReport> {
    let labels = data.test.labels();
    let first: Vec<u32> = pairs.left.iter().map(|&i| labels[i]).collect();
    let second: Vec<u32> = pairs.right.iter().map(|&i| labels[i]).collect();
    let by_pixels = class_pair_auc(pixels, &first, &second);
    class_pair_auc(model, &first, &second)
        .into_iter()
        .zip(by_pixels)
        .map(|(m, p)| ClassPairReport {
            classes: m.classes,
            roc_auc: m.roc_auc,
            pixel_roc_auc: p.roc_auc,
            pairs: m.pairs,
        })
        .collect()
}

/// Largest image (in pixels) for which the PCA baseline is fitted: its covariance
/// matrix grows with the square of this.
pub const PCA_BASELINE_MAX_PIXELS: usize = 4096;
/// Seed of the PCA baseline's start.
pub const PCA_BASELINE_SEED: u64 = 2007;

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
    let indices: Vec<usize> = (0..set.len()).collect();
    embed_rows(tower, set, &indices, batcher)
}

/// Embeds images `indices` of `set` in inference mode, in that order.
fn embed_rows<E: Embedder>(
    tower: &E,
    set: &ImageSet,
    indices: &[usize],
    batcher: &Batcher,
) -> Result<Vec<f32>, TrainError> {
    let mut out = Vec::with_capacity(indices.len() * tower.embedding_dim());
    for chunk in indices.chunks(EMBED_BATCH) {
        let images = batcher.images(set, chunk)?;
        let e = tower.embed(&images)?;
        out.extend(e.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Euclidean distances of `pairs` between rows of `embeddings` (`dim` columns).
pub fn pair_distances(embeddings: &[f32], dim: usize, pairs: &PairBatch) -> Vec<f32> {
    siamese_metrics::pair_distances(embeddings, dim, &pairs.left, &pairs.right)
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

/// The pixels of images `indices` of `set` (all when `None`), scaled to [0, 1] as the
/// batcher scales them: the "embedding" of the pixel baseline.
fn pixels_f32(set: &ImageSet, indices: Option<&[usize]>) -> Vec<f32> {
    let scale = |p: &u8| siamese_data::unit_pixel(*p);
    match indices {
        None => set.pixels().iter().map(scale).collect(),
        Some(ix) => ix
            .iter()
            .flat_map(|&i| set.image(i).iter().map(scale))
            .collect(),
    }
}

/// The protocol's validation and test pairs, drawn once.
struct ProtocolPairs {
    validation: PairBatch,
    test: PairBatch,
}

impl ProtocolPairs {
    fn draw(data: &Dataset) -> Result<Self, TrainError> {
        let draw = |set: &ImageSet, seed| {
            evaluation_pairs(set.labels(), set.num_classes(), PROTOCOL_PAIRS, seed)
        };
        Ok(Self {
            validation: draw(&data.validation, VALIDATION_PAIRS_SEED)?,
            test: draw(&data.test, TEST_PAIRS_SEED)?,
        })
    }

    /// Verification figures of embeddings of the validation and test sets, and the
    /// test pairs' distances.
    fn score(&self, validation: &[f32], test: &[f32], dim: usize) -> (Verification, Vec<f32>) {
        let v = pair_distances(validation, dim, &self.validation);
        let t = pair_distances(test, dim, &self.test);
        (
            verification(&v, &self.validation.same, &t, &self.test.same),
            t,
        )
    }

    /// [`Self::score`] with distances normalised against `cohort` (in the same space as
    /// the rows).
    fn score_normalised(&self, validation: &[f32], test: &[f32], cohort: &Cohort) -> Verification {
        let normalised = |rows: &[f32], pairs: &PairBatch| {
            let stats = cohort.stats(rows);
            let d = pair_distances(rows, cohort.dim, pairs);
            normalised_distances(&d, &pairs.left, &pairs.right, &stats)
        };
        let v = normalised(validation, &self.validation);
        let t = normalised(test, &self.test);
        verification(&v, &self.validation.same, &t, &self.test.same)
    }
}

/// The score-normalisation cohort: (at most [`COHORT_MAX_ROWS`] evenly spaced)
/// training images, by their row in the training set; empty without training images.
fn cohort_rows(data: &Dataset) -> Vec<usize> {
    let step = data.train.len().div_ceil(COHORT_MAX_ROWS).max(1);
    (0..data.train.len()).step_by(step).collect()
}

/// Cohort score normalisation of the protocol's pairs, model and pixels (each as the
/// validation and test sets' rows), against the `cohort` of training images (rows
/// `rows` of the training set, their embeddings in `cohort`).
fn score_normalised(
    data: &Dataset,
    pairs: &ProtocolPairs,
    (rows, cohort): (&[usize], &Cohort),
    (validation, test): (&[f32], &[f32]),
    (pixel_validation, pixel_test): (&[f32], &[f32]),
) -> ScoreNormalised {
    let model = pairs.score_normalised(validation, test, cohort);
    let pixel_cohort = Cohort {
        embeddings: pixels_f32(&data.train, Some(rows)),
        dim: data.test.image_len(),
        top_k: cohort.top_k,
    };
    let pixels = pairs.score_normalised(pixel_validation, pixel_test, &pixel_cohort);
    ScoreNormalised {
        cohort: rows.len(),
        top_k: cohort.top_k,
        model,
        pixels,
    }
}

/// The baselines of the protocol: raw pixels, and PCA of the pixels onto `dim`
/// dimensions fitted on (at most [`siamese_metrics::pca::PCA_MAX_FIT_ROWS`] evenly
/// spaced) training images, from the validation and test sets' pixels ([`pixels_f32`]).
/// Also returns the pixels' test pair distances.
fn baselines(
    data: &Dataset,
    pairs: &ProtocolPairs,
    dim: usize,
    (validation, test): (&[f32], &[f32]),
) -> (Verification, Vec<f32>, Option<Verification>) {
    let pixels = data.test.image_len();
    let (pixel, pixel_distances) = pairs.score(validation, test, pixels);
    let pca =
        (pixels <= PCA_BASELINE_MAX_PIXELS && dim <= pixels && !data.train.is_empty()).then(|| {
            let step = data
                .train
                .len()
                .div_ceil(siamese_metrics::pca::PCA_MAX_FIT_ROWS);
            let fit_rows: Vec<usize> = (0..data.train.len()).step_by(step.max(1)).collect();
            let pca = Pca::fit(
                &pixels_f32(&data.train, Some(&fit_rows)),
                pixels,
                dim,
                PCA_BASELINE_SEED,
            );
            pairs
                .score(&pca.project(validation), &pca.project(test), dim)
                .0
        });
    (pixel, pixel_distances, pca)
}

/// What [`evaluate`] computed: the report, and what a run keeps beside it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The protocol's numbers.
    pub report: EvalReport,
    /// The test images' embeddings, row-major.
    pub test_embeddings: Vec<f32>,
    /// The training images the unseen classes' distances were normalised against
    /// (`None` for the closed-set protocol).
    pub cohort: Option<Cohort>,
}

/// Runs the whole protocol, and Lake's one-shot runs when given.
pub fn evaluate<E: Embedder>(
    tower: &E,
    data: &Dataset,
    batcher: &Batcher,
    runs: Option<&[OneShotRun]>,
) -> Result<Evaluation, TrainError> {
    let dim = tower.embedding_dim();
    let pairs = ProtocolPairs::draw(data)?;
    let val = embed_set(tower, &data.validation, batcher)?;
    let test = embed_set(tower, &data.test, batcher)?;
    let (model, test_distances) = pairs.score(&val, &test, dim);
    let unseen_test_classes = data.unseen_test_classes();
    let (knn5_accuracy, knn_gallery) = if unseen_test_classes.is_empty() {
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
    } else {
        let acc = knn_accuracy_leave_one_out(&test, data.test.labels(), dim, KNN_K);
        (acc, KnnGallery::TestLeaveOneOut)
    };
    let retrieval = retrieval_leave_one_out(&test, data.test.labels(), dim);
    let pixels = (
        pixels_f32(&data.validation, None),
        pixels_f32(&data.test, None),
    );
    let pixels = (pixels.0.as_slice(), pixels.1.as_slice());
    let (pixel, pixel_distances, pca) = baselines(data, &pairs, dim, pixels);
    let unseen_pairs =
        if unseen_test_classes.is_empty() || unseen_test_classes.len() > MAX_CLASS_PAIR_CLASSES {
            Vec::new()
        } else {
            class_pairs(data, &pairs.test, &test_distances, &pixel_distances)
        };
    // Distances of classes never trained on are also judged against training images.
    let cohort_rows = if unseen_test_classes.is_empty() {
        Vec::new()
    } else {
        cohort_rows(data)
    };
    let cohort = if cohort_rows.is_empty() {
        None
    } else {
        Some(Cohort {
            embeddings: embed_rows(tower, &data.train, &cohort_rows, batcher)?,
            dim,
            top_k: COHORT_TOP_K.min(cohort_rows.len()),
        })
    };
    let one_shot = if unseen_test_classes.is_empty() {
        Vec::new()
    } else {
        episode_reports(&test, dim, &data.test, cohort.as_ref())
    };
    let size = [data.test.rows(), data.test.cols()];
    let lake_runs = runs
        .map(|runs| lake_runs(tower, runs, batcher, size, cohort.as_ref()))
        .transpose()?;
    let score_normalised = cohort
        .as_ref()
        .map(|c| score_normalised(data, &pairs, (&cohort_rows, c), (&val, &test), pixels));
    let report = EvalReport {
        validation: model.validation,
        threshold: model.threshold,
        test_accuracy: model.test_accuracy,
        test_roc_auc: model.test_roc_auc,
        test_eer: model.test_eer,
        knn5_accuracy,
        knn_gallery,
        unseen_test_classes,
        precision_at_1: retrieval.precision_at_1,
        r_precision: retrieval.r_precision,
        map_at_r: retrieval.map_at_r,
        class_pairs: unseen_pairs,
        pixel_baseline: Some(pixel),
        pca_baseline: pca,
        one_shot,
        lake_runs,
        score_normalised,
    };
    Ok(Evaluation {
        report,
        test_embeddings: test,
        cohort,
    })
}
