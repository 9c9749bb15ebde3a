//! Pair samplers: which images form the pairs of a training batch, and whether each pair
//! is "same" (`same = true` when the two labels are equal). Tensor-free: samplers produce
//! indices into an [`ImageSet`](crate::ImageSet) and labels; [`crate::batcher`] turns
//! them into tensors.
//!
//! Every sampler is deterministic from a `u64` seed, and its state can be saved and
//! restored so a resumed run continues exactly the same sequence.

use siamese_state::{StateDict, StateError, Stateful};

use crate::error::DataError;
use crate::rng::Rng;

/// The pairs of one batch, as parallel vectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairBatch {
    /// Index of each pair's first image.
    pub left: Vec<usize>,
    /// Index of each pair's second image.
    pub right: Vec<usize>,
    /// Whether each pair is from the same class.
    pub same: Vec<bool>,
}

impl PairBatch {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.same.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.same.is_empty()
    }

    /// Number of "same" pairs.
    pub fn positives(&self) -> usize {
        self.same.iter().filter(|&&s| s).count()
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            left: Vec::with_capacity(n),
            right: Vec::with_capacity(n),
            same: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, left: usize, right: usize, same: bool) {
        self.left.push(left);
        self.right.push(right);
        self.same.push(same);
    }
}

/// Draws batches of labelled pairs. Its state (for checkpoints and resume) goes
/// through the one state protocol of the workspace, [`Stateful`]: a resumed run
/// continues exactly the same sequence, a custom sampler included.
pub trait PairSampler: Stateful + Send {
    /// Draws the next `batch_size` pairs.
    fn sample(&mut self, batch_size: usize) -> PairBatch;
}

impl<T: PairSampler + ?Sized> PairSampler for Box<T> {
    fn sample(&mut self, batch_size: usize) -> PairBatch {
        (**self).sample(batch_size)
    }
}

/// The [`Stateful`] implementation of a sampler whose whole state is its generator
/// (field `rng`): the state holds `kind` (its `KIND` name: a state restores only into
/// the same kind of sampler) and `rng`. The same for every sampler of this module.
macro_rules! rng_is_the_state {
    ($sampler:ty) => {
        impl Stateful for $sampler {
            fn state_dict(&self) -> Result<StateDict, StateError> {
                let mut state = StateDict::new();
                state.insert_json("kind", Self::KIND);
                state.insert_json("rng", &self.rng);
                Ok(state)
            }

            fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
                self.rng = restore_rng(Self::KIND, state)?;
                Ok(())
            }
        }
    };
}

pub(crate) fn restore_rng(kind: &str, state: &StateDict) -> Result<Rng, StateError> {
    let saved: String = state.json("kind")?;
    if saved != kind {
        return Err(state.invalid(
            "kind",
            format!("cannot restore a {kind:?} sampler from a {saved:?} state"),
        ));
    }
    state.json("rng")
}

/// The indices of each class's images; a label not below `num_classes` is an error.
fn indices_by_class(labels: &[u32], num_classes: usize) -> Result<Vec<Vec<u32>>, DataError> {
    if num_classes > crate::dataset::MAX_CLASSES {
        return Err(DataError::Sampler(format!(
            "{num_classes} classes: at most {} are supported",
            crate::dataset::MAX_CLASSES
        )));
    }
    let mut by_class = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        let class = by_class.get_mut(l as usize).ok_or_else(|| {
            DataError::Sampler(format!(
                "label {l} at index {i} is not below {num_classes} classes"
            ))
        })?;
        class.push(i as u32);
    }
    Ok(by_class)
}

/// The reference program's pairs: two independent uniform draws; a pair is "same" when
/// the labels agree. On MNIST about 10% of pairs are positive.
#[derive(Debug, Clone)]
pub struct RandomPairs {
    labels: Vec<u32>,
    rng: Rng,
}

impl RandomPairs {
    /// Kind name stored in the sampler's state.
    pub const KIND: &'static str = "random";

    /// A sampler over the images with these labels.
    pub fn new(labels: &[u32], seed: u64) -> Result<Self, DataError> {
        if labels.is_empty() {
            return Err(DataError::Sampler("no images to draw pairs from".into()));
        }
        Ok(Self {
            labels: labels.to_vec(),
            rng: Rng::new(seed),
        })
    }
}

rng_is_the_state!(RandomPairs);

impl PairSampler for RandomPairs {
    fn sample(&mut self, batch_size: usize) -> PairBatch {
        let n = self.labels.len();
        let mut batch = PairBatch::with_capacity(batch_size);
        for _ in 0..batch_size {
            let (a, b) = (self.rng.below(n), self.rng.below(n));
            batch.push(a, b, self.labels[a] == self.labels[b]);
        }
        batch
    }
}

/// Pairs with a chosen share of positives (default one half), in random order.
///
/// A batch of `B` holds exactly `round(fraction * B)` positive pairs. A positive pair is
/// an image drawn uniformly (among classes with at least two images) and another image
/// of its class; a negative pair is an image drawn uniformly and an image of another
/// class, the class chosen uniformly among the others.
#[derive(Debug, Clone)]
pub struct BalancedPairs {
    labels: Vec<u32>,
    by_class: Vec<Vec<u32>>,
    nonempty_classes: Vec<u32>,
    positive_candidates: Vec<u32>,
    positive_fraction: f64,
    rng: Rng,
}

impl BalancedPairs {
    /// Kind name stored in the sampler's state.
    pub const KIND: &'static str = "balanced";
    /// The default share of positive pairs.
    pub const DEFAULT_POSITIVE_FRACTION: f64 = 0.5;

    /// A sampler over the images with these labels (each `< num_classes`).
    pub fn new(
        labels: &[u32],
        num_classes: usize,
        positive_fraction: f64,
        seed: u64,
    ) -> Result<Self, DataError> {
        if !(0.0..=1.0).contains(&positive_fraction) {
            return Err(DataError::Sampler(format!(
                "positive fraction must be in [0, 1], found {positive_fraction}"
            )));
        }
        let by_class = indices_by_class(labels, num_classes)?;
        let nonempty_classes: Vec<u32> = (0..num_classes)
            .filter(|&c| !by_class[c].is_empty())
            .map(|c| c as u32)
            .collect();
        let positive_candidates: Vec<u32> = by_class
            .iter()
            .filter(|members| members.len() >= 2)
            .flatten()
            .copied()
            .collect();
        if positive_fraction > 0.0 && positive_candidates.is_empty() {
            return Err(DataError::Sampler(
                "positive pairs need a class with at least two images; none has".into(),
            ));
        }
        if positive_fraction < 1.0 && nonempty_classes.len() < 2 {
            return Err(DataError::Sampler(format!(
                "negative pairs need at least two classes, found {}",
                nonempty_classes.len()
            )));
        }
        Ok(Self {
            labels: labels.to_vec(),
            by_class,
            nonempty_classes,
            positive_candidates,
            positive_fraction,
            rng: Rng::new(seed),
        })
    }

    fn positive(&mut self) -> (usize, usize) {
        let a = self.positive_candidates[self.rng.below(self.positive_candidates.len())];
        let members = &self.by_class[self.labels[a as usize] as usize];
        // Draw among the other members: pick from all but the last slot, and if that is
        // `a` itself, take the last slot instead (uniform over the others).
        let mut b = members[self.rng.below(members.len() - 1)];
        if b == a {
            b = members[members.len() - 1];
        }
        (a as usize, b as usize)
    }

    fn negative(&mut self) -> (usize, usize) {
        let a = self.rng.below(self.labels.len());
        let own = self.labels[a];
        let classes = &self.nonempty_classes;
        let mut other = classes[self.rng.below(classes.len() - 1)];
        if other == own {
            other = classes[classes.len() - 1];
        }
        let members = &self.by_class[other as usize];
        (a, members[self.rng.below(members.len())] as usize)
    }
}

rng_is_the_state!(BalancedPairs);

impl PairSampler for BalancedPairs {
    fn sample(&mut self, batch_size: usize) -> PairBatch {
        let positives = (self.positive_fraction * batch_size as f64).round() as usize;
        let mut kinds: Vec<bool> = (0..batch_size).map(|i| i < positives).collect();
        self.rng.shuffle(&mut kinds);
        let mut batch = PairBatch::with_capacity(batch_size);
        for same in kinds {
            let (a, b) = if same {
                self.positive()
            } else {
                self.negative()
            };
            batch.push(a, b, same);
        }
        batch
    }
}

/// Batches of P classes x K images, as pytorch-metric-learning's `MPerClassSampler`:
/// the batch's `2B` images are groups of `K = images_per_class` images of one class,
/// each group a class not yet used in this batch (a new round of the classes, in a new
/// random order, once all are used). Within a group, images are distinct when the
/// class has enough of them (drawn without replacement; otherwise they repeat across
/// pairs, never within one), and each pair is two consecutive images of the group, so
/// every pair is positive.
///
/// It exists for the miners (`batch_hard`, `multi_similarity`, all pairs of the batch):
/// they see every image against every other, so a batch with several images of each of
/// a few classes gives each anchor hard positives as well as negatives. Sampled pairs
/// alone would see positives only.
#[derive(Debug, Clone)]
pub struct PerClassPairs {
    by_class: Vec<Vec<u32>>,
    /// Classes with at least two images, the only ones a group can come from.
    classes: Vec<u32>,
    images_per_class: usize,
    rng: Rng,
}

impl PerClassPairs {
    /// Kind name stored in the sampler's state.
    pub const KIND: &'static str = "per_class";

    /// A sampler over the images with these labels (each `< num_classes`), in groups
    /// of `images_per_class` (even, at least 2) images of one class.
    pub fn new(
        labels: &[u32],
        num_classes: usize,
        images_per_class: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        if images_per_class < 2 || !images_per_class.is_multiple_of(2) {
            return Err(DataError::Sampler(format!(
                "images per class must be even and at least 2 (each pair is two of them), \
                 found {images_per_class}"
            )));
        }
        let by_class = indices_by_class(labels, num_classes)?;
        let classes: Vec<u32> = (0..num_classes as u32)
            .filter(|&c| by_class[c as usize].len() >= 2)
            .collect();
        if classes.len() < 2 {
            return Err(DataError::Sampler(format!(
                "per-class batches need at least two classes with two images or more, found {}",
                classes.len()
            )));
        }
        Ok(Self {
            by_class,
            classes,
            images_per_class,
            rng: Rng::new(seed),
        })
    }

    /// `count` (even) images of `class`, taken two by two as pairs: distinct when it
    /// has that many; otherwise each pair is two distinct images drawn anew (images
    /// repeat across pairs, never within one).
    fn group(&mut self, class: u32, count: usize) -> Vec<u32> {
        let members = &self.by_class[class as usize];
        let mut picked = Vec::with_capacity(count);
        if members.len() >= count {
            // A partial Fisher-Yates over indices: `count` distinct members.
            let mut pool: Vec<u32> = members.clone();
            for i in 0..count {
                let j = i + self.rng.below(pool.len() - i);
                pool.swap(i, j);
                picked.push(pool[i]);
            }
        } else {
            // Every class here has at least two images (see `new`).
            while picked.len() < count {
                let a = self.rng.below(members.len());
                let mut b = self.rng.below(members.len() - 1);
                if b == a {
                    b = members.len() - 1;
                }
                picked.extend([members[a], members[b]]);
            }
        }
        picked
    }
}

rng_is_the_state!(PerClassPairs);

impl PairSampler for PerClassPairs {
    fn sample(&mut self, batch_size: usize) -> PairBatch {
        let mut batch = PairBatch::with_capacity(batch_size);
        let mut order: Vec<u32> = Vec::new();
        while batch.len() < batch_size {
            if order.is_empty() {
                order = self.classes.clone();
                self.rng.shuffle(&mut order);
            }
            let class = order.pop().expect("refilled above");
            let pairs = (self.images_per_class / 2).min(batch_size - batch.len());
            let images = self.group(class, 2 * pairs);
            for pair in images.chunks_exact(2) {
                batch.push(pair[0] as usize, pair[1] as usize, true);
            }
        }
        batch
    }
}

/// The fixed evaluation pairs of DESIGN.md's protocol: `n` pairs, half of them "same"
/// (`n / 2` rounded to even), drawn from these labels with `seed`. The generator is
/// this crate's own, so the pairs are identical on every machine.
pub fn evaluation_pairs(
    labels: &[u32],
    num_classes: usize,
    n: usize,
    seed: u64,
) -> Result<PairBatch, DataError> {
    BalancedPairs::new(labels, num_classes, 0.5, seed).map(|mut s| s.sample(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels with MNIST-like class shares: class c has 100 + 10c images.
    fn labels() -> Vec<u32> {
        (0..10u32)
            .flat_map(|c| std::iter::repeat_n(c, 100 + 10 * c as usize))
            .collect()
    }

    /// Labels agree with `same`; with `distinct`, no positive pairs an image with itself
    /// (the reference program's independent draws may).
    fn check_pairs(labels: &[u32], batch: &PairBatch, distinct: bool) {
        for i in 0..batch.len() {
            let (a, b) = (batch.left[i], batch.right[i]);
            assert_eq!(batch.same[i], labels[a] == labels[b]);
            if distinct && batch.same[i] {
                assert_ne!(a, b, "a positive pair of one image with itself");
            }
        }
    }

    /// Every image of a batch, in the order the trainer embeds them.
    fn images_of(batch: &PairBatch) -> Vec<usize> {
        batch.left.iter().chain(&batch.right).copied().collect()
    }

    #[test]
    fn per_class_batches_are_groups_of_k_distinct_images_of_distinct_classes() {
        let labels = labels();
        for (k, batch_size) in [(8, 32), (4, 10), (2, 7), (16, 32)] {
            let mut sampler = PerClassPairs::new(&labels, 10, k, 3).unwrap();
            for _ in 0..50 {
                let batch = sampler.sample(batch_size);
                assert_eq!(batch.len(), batch_size);
                assert_eq!(batch.positives(), batch_size, "every pair is positive");
                check_pairs(&labels, &batch, true);
                // Group g is pairs [g*K/2, (g+1)*K/2): one class, distinct images.
                let groups: Vec<std::ops::Range<usize>> = (0..batch_size)
                    .step_by(k / 2)
                    .map(|s| s..(s + k / 2).min(batch_size))
                    .collect();
                let mut classes = Vec::new();
                for g in &groups {
                    let class = labels[batch.left[g.start]];
                    let mut images: Vec<usize> = g
                        .clone()
                        .flat_map(|i| [batch.left[i], batch.right[i]])
                        .collect();
                    assert!(images.iter().all(|&i| labels[i] == class));
                    images.sort_unstable();
                    images.dedup();
                    assert_eq!(images.len(), 2 * g.len(), "a group repeats an image");
                    classes.push(class);
                }
                // Within one round of the ten classes, no class twice.
                for round in classes.chunks(10) {
                    let mut r = round.to_vec();
                    r.sort_unstable();
                    r.dedup();
                    assert_eq!(
                        r.len(),
                        round.len(),
                        "a class twice in one round: {round:?}"
                    );
                }
                assert_eq!(images_of(&batch).len(), 2 * batch_size);
            }
        }
    }

    #[test]
    fn per_class_batches_use_every_class_alike_and_small_classes_without_self_pairs() {
        // Class 0 has 3 images, fewer than K = 8: its groups repeat images, never
        // within one pair.
        let mut labels = vec![0u32; 3];
        labels.extend(std::iter::repeat_n(1u32, 50));
        labels.extend(std::iter::repeat_n(2u32, 50));
        let mut sampler = PerClassPairs::new(&labels, 3, 8, 9).unwrap();
        let mut groups_per_class = [0usize; 3];
        for _ in 0..300 {
            let batch = sampler.sample(12); // three groups of four pairs
            check_pairs(&labels, &batch, true);
            for g in 0..3 {
                groups_per_class[labels[batch.left[4 * g]] as usize] += 1;
            }
        }
        assert_eq!(
            groups_per_class,
            [300, 300, 300],
            "each round uses each class once"
        );
    }

    #[test]
    fn per_class_batches_are_deterministic_resumable_and_refuse_bad_settings() {
        let labels = labels();
        let mut a = PerClassPairs::new(&labels, 10, 6, 11).unwrap();
        let mut b = PerClassPairs::new(&labels, 10, 6, 11).unwrap();
        a.sample(30);
        let saved = a.state_dict().unwrap();
        let next = a.sample(30);
        b.load_state_dict(&saved).unwrap();
        assert_eq!(b.sample(30), next);
        let random = RandomPairs::new(&labels, 1).unwrap().state_dict().unwrap();
        let err = b.load_state_dict(&random).unwrap_err().to_string();
        assert!(err.contains("per_class") && err.contains("random"), "{err}");
        for bad_k in [0, 1, 3] {
            assert!(
                PerClassPairs::new(&labels, 10, bad_k, 1).is_err(),
                "K = {bad_k}"
            );
        }
        assert!(
            PerClassPairs::new(&[0, 0, 0, 1], 2, 2, 1).is_err(),
            "one class of two+"
        );
        assert!(
            PerClassPairs::new(&[0, 5], 2, 2, 1).is_err(),
            "label out of range"
        );
    }

    #[test]
    fn random_pairs_positive_rate_is_the_sum_of_squared_shares() {
        let labels = labels();
        let n = labels.len() as f64;
        let expected: f64 = (0..10).map(|c| ((100 + 10 * c) as f64 / n).powi(2)).sum();
        let mut sampler = RandomPairs::new(&labels, 1).unwrap();
        let draws = 100_000;
        let batch = sampler.sample(draws);
        check_pairs(&labels, &batch, false);
        let rate = batch.positives() as f64 / draws as f64;
        let sd = (expected * (1.0 - expected) / draws as f64).sqrt();
        assert!(
            (rate - expected).abs() < 5.0 * sd,
            "rate {rate}, expected {expected}"
        );
    }

    #[test]
    fn balanced_pairs_have_the_exact_share_and_uniform_negative_classes() {
        let labels = labels();
        for fraction in [0.5, 0.25, 1.0, 0.0] {
            let mut sampler = BalancedPairs::new(&labels, 10, fraction, 3).unwrap();
            let batch = sampler.sample(64);
            check_pairs(&labels, &batch, true);
            assert_eq!(batch.positives(), (fraction * 64.0).round() as usize);
        }
        // For anchors of class 0, the partner's class must be uniform over 1..10.
        let mut sampler = BalancedPairs::new(&labels, 10, 0.0, 5).unwrap();
        let batch = sampler.sample(200_000);
        let mut partner = [0usize; 10];
        for i in 0..batch.len() {
            if labels[batch.left[i]] == 0 {
                partner[labels[batch.right[i]] as usize] += 1;
            }
        }
        assert_eq!(partner[0], 0);
        let total: usize = partner.iter().sum();
        let expect = total as f64 / 9.0;
        let sd = (expect * (1.0 - 1.0 / 9.0)).sqrt();
        for &count in &partner[1..] {
            assert!((count as f64 - expect).abs() < 5.0 * sd, "{partner:?}");
        }
    }

    #[test]
    fn same_seed_same_pairs_and_restore_continues_the_sequence() {
        let labels = labels();
        let mut a = BalancedPairs::new(&labels, 10, 0.5, 11).unwrap();
        let mut b = BalancedPairs::new(&labels, 10, 0.5, 11).unwrap();
        assert_eq!(a.sample(64), b.sample(64));
        let mut c = BalancedPairs::new(&labels, 10, 0.5, 12).unwrap();
        assert_ne!(a.sample(64), c.sample(64));

        let saved = a.state_dict().unwrap();
        let expected = a.sample(64);
        let mut fresh = BalancedPairs::new(&labels, 10, 0.5, 999).unwrap();
        fresh.load_state_dict(&saved).unwrap();
        assert_eq!(fresh.sample(64), expected);

        let mut random = RandomPairs::new(&labels, 11).unwrap();
        let saved = random.state_dict().unwrap();
        let expected = random.sample(64);
        let mut other = RandomPairs::new(&labels, 0).unwrap();
        other.load_state_dict(&saved).unwrap();
        assert_eq!(other.sample(64), expected);
        assert!(fresh.load_state_dict(&saved).is_err(), "kinds must not mix");
        // A boxed sampler (as runs hold them) saves and restores through the box.
        let mut boxed: Box<dyn PairSampler> = Box::new(RandomPairs::new(&labels, 5).unwrap());
        boxed.load_state_dict(&saved).unwrap();
        assert_eq!(boxed.sample(64), expected);
    }

    #[test]
    fn evaluation_pairs_are_balanced_and_fixed() {
        let labels = labels();
        let pairs = evaluation_pairs(&labels, 10, 10_000, 2024).unwrap();
        assert_eq!(pairs.len(), 10_000);
        assert_eq!(pairs.positives(), 5_000);
        check_pairs(&labels, &pairs, true);
        assert_eq!(pairs, evaluation_pairs(&labels, 10, 10_000, 2024).unwrap());
        let head: Vec<(usize, usize, bool)> = (0..6)
            .map(|i| (pairs.left[i], pairs.right[i], pairs.same[i]))
            .collect();
        // Pinned (recorded from this build, whose generator is checked against
        // independently computed values in rng.rs): the protocol's pairs must never
        // change silently from one version or machine to the next.
        assert_eq!(
            head,
            [
                (1107, 1100, true),
                (256, 134, false),
                (1411, 1443, true),
                (628, 720, true),
                (601, 649, true),
                (648, 695, true)
            ]
        );
    }

    #[test]
    fn impossible_requests_are_errors() {
        assert!(RandomPairs::new(&[], 0).is_err());
        assert!(
            BalancedPairs::new(&[0, 1, 2], 3, 0.5, 0).is_err(),
            "no class has two images"
        );
        assert!(
            BalancedPairs::new(&[1, 1, 1], 3, 0.5, 0).is_err(),
            "one class only"
        );
        assert!(BalancedPairs::new(&[0, 0, 1], 2, 1.5, 0).is_err());
        assert!(BalancedPairs::new(&[0, 0, 7], 2, 0.5, 0).is_err());
        assert!(BalancedPairs::new(&[0, 0, 1], 2, 1.0, 0).is_ok());
    }
}
