//! N-way K-shot episodes, as few-shot learning trains and measures: `ways` distinct
//! classes, and for each `shots` support images and `queries` query images, all
//! distinct (no image is both support and query). Used to score one-shot
//! classification on classes training never saw, and to train episodically
//! (prototypical networks, Snell et al. 2017).
//!
//! Tensor-free and deterministic from its seed, like the pair samplers; its whole
//! state is its generator, saved and restored through [`Stateful`].

use siamese_state::{StateDict, StateError, Stateful};

use crate::error::DataError;
use crate::rng::Rng;
use crate::sampler::{PairBatch, PairSampler};

/// One episode: indices into the image set, class-major (`support[c * shots + s]` and
/// `query[c * queries + q]` are of episode class `c`), and each episode class's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// The label of each of the `ways` classes.
    pub classes: Vec<u32>,
    /// `ways * shots` support images.
    pub support: Vec<usize>,
    /// `ways * queries` query images.
    pub query: Vec<usize>,
}

impl Episode {
    /// Number of classes.
    pub fn ways(&self) -> usize {
        self.classes.len()
    }

    /// Support images per class.
    pub fn shots(&self) -> usize {
        self.support.len() / self.classes.len().max(1)
    }

    /// Query images per class.
    pub fn queries(&self) -> usize {
        self.query.len() / self.classes.len().max(1)
    }

    /// The episode class (0..ways) of each query, in order.
    pub fn query_classes(&self) -> Vec<usize> {
        let q = self.queries();
        (0..self.query.len()).map(|i| i / q.max(1)).collect()
    }
}

/// Draws episodes of `ways` classes, `shots` support and `queries` query images each,
/// among the classes of a labelled set that have at least `shots + queries` images.
#[derive(Debug, Clone)]
pub struct EpisodeSampler {
    /// Images of each eligible class, and its label.
    classes: Vec<(u32, Vec<usize>)>,
    ways: usize,
    shots: usize,
    queries: usize,
    rng: Rng,
}

impl EpisodeSampler {
    /// Kind name stored in the sampler's state.
    pub const KIND: &'static str = "episodes";

    /// A sampler over the images with these labels. Refused (naming the numbers) when
    /// fewer than `ways` classes have `shots + queries` images, or a count is zero.
    pub fn new(
        labels: &[u32],
        ways: usize,
        shots: usize,
        queries: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        if ways < 2 || shots == 0 || queries == 0 {
            return Err(DataError::Sampler(format!(
                "episodes need at least 2 ways, 1 shot and 1 query, found {ways}-way \
                 {shots}-shot with {queries} queries"
            )));
        }
        let mut by_label: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, &l) in labels.iter().enumerate() {
            by_label.entry(l).or_default().push(i);
        }
        let need = shots + queries;
        let classes: Vec<(u32, Vec<usize>)> = by_label
            .into_iter()
            .filter(|(_, images)| images.len() >= need)
            .collect();
        if classes.len() < ways {
            return Err(DataError::Sampler(format!(
                "{ways}-way episodes of {shots} support + {queries} query images need \
                 {ways} classes with {need} images or more; this set has {}",
                classes.len()
            )));
        }
        Ok(Self {
            classes,
            ways,
            shots,
            queries,
            rng: Rng::new(seed),
        })
    }

    /// Classes an episode may draw from.
    pub fn eligible_classes(&self) -> usize {
        self.classes.len()
    }

    /// The next episode.
    pub fn sample(&mut self) -> Episode {
        let picked = choose(&mut self.rng, self.classes.len(), self.ways);
        let mut episode = Episode {
            classes: Vec::with_capacity(self.ways),
            support: Vec::with_capacity(self.ways * self.shots),
            query: Vec::with_capacity(self.ways * self.queries),
        };
        for &c in &picked {
            let (label, images) = &self.classes[c];
            let drawn = choose(&mut self.rng, images.len(), self.shots + self.queries);
            episode.classes.push(*label);
            episode
                .support
                .extend(drawn[..self.shots].iter().map(|&i| images[i]));
            episode
                .query
                .extend(drawn[self.shots..].iter().map(|&i| images[i]));
        }
        episode
    }
}

/// What one training step draws: pairs (laid out by the trainer's [`crate::Layout`]) or
/// an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Draw {
    /// A batch of labelled pairs.
    Pairs(PairBatch),
    /// An N-way K-shot episode.
    Episode(Episode),
}

/// The sampler of a training step: every [`PairSampler`] is one (it draws pairs), and
/// so is the [`EpisodeSampler`]. The trainer holds one of these, so pairs and episodes
/// train through the same step, checkpoints and resume.
pub trait StepSampler: Stateful + Send {
    /// The next step's draw; `batch_size` is the number of pairs for a pair sampler
    /// (an episode's size is fixed by its sampler).
    fn draw(&mut self, batch_size: usize) -> Draw;
}

impl<T: PairSampler + ?Sized> StepSampler for T {
    fn draw(&mut self, batch_size: usize) -> Draw {
        Draw::Pairs(self.sample(batch_size))
    }
}

impl StepSampler for EpisodeSampler {
    fn draw(&mut self, _batch_size: usize) -> Draw {
        Draw::Episode(self.sample())
    }
}

impl StepSampler for Box<dyn StepSampler> {
    fn draw(&mut self, batch_size: usize) -> Draw {
        (**self).draw(batch_size)
    }
}

/// `k` distinct indices of `0..n`, in random order (a partial Fisher-Yates shuffle
/// over a sparse swap map, so drawing 5 of 100,000 costs 5 steps, not 100,000).
fn choose(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    debug_assert!(k <= n);
    let mut swapped: std::collections::HashMap<usize, usize> = Default::default();
    (0..k)
        .map(|i| {
            let j = i + rng.below(n - i);
            let at_j = *swapped.get(&j).unwrap_or(&j);
            let at_i = *swapped.get(&i).unwrap_or(&i);
            swapped.insert(j, at_i);
            at_j
        })
        .collect()
}

impl Stateful for EpisodeSampler {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        let mut state = StateDict::new();
        state.insert_json("kind", Self::KIND);
        state.insert_json("rng", &self.rng);
        Ok(state)
    }

    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        self.rng = crate::sampler::restore_rng(Self::KIND, state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// 30 classes of 6 images, and one class of 2 (too small for 2 + 3).
    fn labels() -> Vec<u32> {
        let mut l: Vec<u32> = (0..180).map(|i| (i % 30) as u32 * 7).collect();
        l.extend([999, 999]);
        l
    }

    #[test]
    fn episodes_hold_distinct_classes_and_disjoint_support_and_query() {
        let labels = labels();
        let mut sampler = EpisodeSampler::new(&labels, 5, 2, 3, 1).unwrap();
        assert_eq!(sampler.eligible_classes(), 30);
        for _ in 0..200 {
            let e = sampler.sample();
            assert_eq!((e.ways(), e.shots(), e.queries()), (5, 2, 3));
            let classes: BTreeSet<u32> = e.classes.iter().copied().collect();
            assert_eq!(classes.len(), 5, "distinct classes");
            assert!(!classes.contains(&999), "a class too small is never drawn");
            let images: BTreeSet<usize> = e.support.iter().chain(&e.query).copied().collect();
            assert_eq!(
                images.len(),
                5 * 5,
                "no image twice, none both support and query"
            );
            for (c, &label) in e.classes.iter().enumerate() {
                assert!(e.support[c * 2..c * 2 + 2]
                    .iter()
                    .all(|&i| labels[i] == label));
                assert!(e.query[c * 3..c * 3 + 3]
                    .iter()
                    .all(|&i| labels[i] == label));
            }
            assert_eq!(
                e.query_classes(),
                [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
            );
        }
    }

    #[test]
    fn deterministic_from_the_seed_and_resumable() {
        let labels = labels();
        let mut a = EpisodeSampler::new(&labels, 4, 1, 1, 9).unwrap();
        let mut b = EpisodeSampler::new(&labels, 4, 1, 1, 9).unwrap();
        let first: Vec<Episode> = (0..5).map(|_| a.sample()).collect();
        assert_eq!(first, (0..5).map(|_| b.sample()).collect::<Vec<_>>());
        let state = a.state_dict().unwrap();
        let next = a.sample();
        let mut c = EpisodeSampler::new(&labels, 4, 1, 1, 0).unwrap();
        c.load_state_dict(&state).unwrap();
        assert_eq!(c.sample(), next);
        // Every image of every class with 2 images or more (the small one too) turns up.
        let seen: BTreeSet<usize> = (0..400).flat_map(|_| a.sample().support).collect();
        assert_eq!(seen.len(), 182);
    }

    #[test]
    fn impossible_episodes_are_refused_with_the_numbers() {
        let labels = labels();
        // 31 classes have 2 images (the small one included): 32 ways is one too many.
        assert!(EpisodeSampler::new(&labels, 31, 1, 1, 0).is_ok());
        let err = EpisodeSampler::new(&labels, 32, 1, 1, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("need 32 classes with 2 images or more; this set has 31"),
            "{err}"
        );
        let err = EpisodeSampler::new(&labels, 5, 5, 5, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("this set has 0"), "{err}");
        assert!(EpisodeSampler::new(&labels, 1, 1, 1, 0).is_err());
        assert!(EpisodeSampler::new(&labels, 5, 0, 1, 0).is_err());
    }

    #[test]
    fn choose_draws_distinct_indices_uniformly() {
        let mut rng = Rng::new(3);
        let mut counts = [0usize; 10];
        for _ in 0..20_000 {
            let picked = choose(&mut rng, 10, 3);
            let set: BTreeSet<usize> = picked.iter().copied().collect();
            assert_eq!(set.len(), 3);
            picked.iter().for_each(|&i| counts[i] += 1);
        }
        // Each index is picked 6,000 times in expectation.
        assert!(
            counts.iter().all(|&c| (5_600..6_400).contains(&c)),
            "{counts:?}"
        );
    }
}
