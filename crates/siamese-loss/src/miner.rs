//! Miners, as pytorch-metric-learning composes them: the batcher gives the step's
//! images with one label each, a [`Miner`] picks which pairs of them the loss sees, and
//! the loss scores those pairs. Mining looks at the distances without their gradients
//! (a plain `n x n` matrix), so a miner is plain Rust and tested on hand-made batches.
//!
//! - [`PairedHalves`]: row `i` with row `i + n/2`, the pairs a pair sampler drew (the
//!   batcher lays a pair batch out as all first images, then all second images): the
//!   reference program's sampled pairs.
//! - [`AllPairs`]: every pair `(i, j)`, `i < j` (today's `all_in_batch`).
//! - [`BatchHard`]: for each anchor, its farthest same-class image and its nearest
//!   other-class image (Hermans et al. 2017, pytorch-metric-learning's
//!   `BatchHardMiner`).
//! - [`MultiSimilarity`]: for each anchor, the same-class pairs farther than its
//!   nearest impostor less `epsilon`, and the other-class pairs nearer than its farthest
//!   same-class image plus `epsilon` (Wang et al. 2019; pytorch-metric-learning's
//!   `MultiSimilarityMiner` on distances instead of similarities).

/// Pairs of a batch's rows: the two index lists and whether each pair is same-class
/// (1.0) or not (0.0), ready for `index_select` and a [`crate::PairLoss`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinedPairs {
    /// First row of each pair.
    pub first: Vec<u32>,
    /// Second row of each pair.
    pub second: Vec<u32>,
    /// 1.0 for a same-class pair, 0.0 otherwise.
    pub same: Vec<f32>,
}

impl MinedPairs {
    fn push(&mut self, i: usize, j: usize, same: bool) {
        // Row indices of one batch: the batch size is bounded far below u32::MAX by
        // the training config's limits.
        self.first.push(i as u32);
        self.second.push(j as u32);
        self.same.push(f32::from(u8::from(same)));
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.same.len()
    }

    /// Whether no pair was picked.
    pub fn is_empty(&self) -> bool {
        self.same.is_empty()
    }
}

/// Picks the pairs of a batch that the loss sees.
pub trait Miner {
    /// Pairs among the `n = labels.len()` rows, from their distances (`distances[i * n
    /// + j]`, row-major, symmetric; empty when [`Miner::needs_distances`] says so). A
    /// pair `(i, i)` is never picked.
    fn mine(&self, distances: &[f32], labels: &[u32]) -> MinedPairs;
    /// Whether [`Miner::mine`] looks at the distances (the caller can skip computing
    /// them when not).
    fn needs_distances(&self) -> bool {
        true
    }
}

impl<T: Miner + ?Sized> Miner for Box<T> {
    fn mine(&self, distances: &[f32], labels: &[u32]) -> MinedPairs {
        (**self).mine(distances, labels)
    }

    fn needs_distances(&self) -> bool {
        (**self).needs_distances()
    }
}

fn check(distances: &[f32], labels: &[u32]) -> usize {
    let n = labels.len();
    assert_eq!(
        distances.len(),
        n * n,
        "an n x n distance matrix for n labels"
    );
    n
}

/// Row `i` with row `i + n/2` for each `i < n/2`, same-class when their labels agree:
/// the sampled pairs of a batch laid out as first images then second images (as
/// `siamese_data::Batcher` lays them). With an odd `n`
/// the last row has no partner and is left out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairedHalves;

impl Miner for PairedHalves {
    /// The distances are not looked at (pass an empty slice).
    fn mine(&self, _distances: &[f32], labels: &[u32]) -> MinedPairs {
        let half = labels.len() / 2;
        let mut out = MinedPairs::default();
        for i in 0..half {
            out.push(i, i + half, labels[i] == labels[i + half]);
        }
        out
    }

    fn needs_distances(&self) -> bool {
        false
    }
}

/// Every pair `(i, j)`, `i < j`, in row order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AllPairs;

impl Miner for AllPairs {
    /// The distances are not looked at (pass an empty slice).
    fn mine(&self, _distances: &[f32], labels: &[u32]) -> MinedPairs {
        let n = labels.len();
        let mut out = MinedPairs::default();
        for i in 0..n {
            for j in i + 1..n {
                out.push(i, j, labels[i] == labels[j]);
            }
        }
        out
    }

    fn needs_distances(&self) -> bool {
        false
    }
}

/// For each anchor with at least one same-class and one other-class image in the
/// batch: the pair with its farthest same-class image and the pair with its nearest
/// other-class image. Ties go to the lower index; NaN distances are never picked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchHard;

impl Miner for BatchHard {
    fn mine(&self, distances: &[f32], labels: &[u32]) -> MinedPairs {
        let n = check(distances, labels);
        let mut out = MinedPairs::default();
        for i in 0..n {
            let row = &distances[i * n..(i + 1) * n];
            let mut hardest_positive: Option<(usize, f32)> = None;
            let mut hardest_negative: Option<(usize, f32)> = None;
            for (j, &d) in row.iter().enumerate() {
                if j == i || d.is_nan() {
                    continue;
                }
                if labels[j] == labels[i] {
                    if hardest_positive.is_none_or(|(_, best)| d > best) {
                        hardest_positive = Some((j, d));
                    }
                } else if hardest_negative.is_none_or(|(_, best)| d < best) {
                    hardest_negative = Some((j, d));
                }
            }
            if let (Some((p, _)), Some((q, _))) = (hardest_positive, hardest_negative) {
                out.push(i, p, true);
                out.push(i, q, false);
            }
        }
        out
    }
}

/// Multi-similarity mining on distances: for anchor `i`, a same-class pair `(i, j)` is
/// kept when `d(i, j) > min over impostors k of d(i, k) - epsilon` (it is not clearly
/// closer than every impostor), and an other-class pair `(i, k)` when `d(i, k) < max
/// over same-class j of d(i, j) + epsilon` (it is not clearly farther than every
/// same-class image). Anchors without a same-class or an other-class image give no
/// pairs. Each pair is listed from each of its anchors, as in pytorch-metric-learning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiSimilarity {
    /// The slack around the hardest pair of the other kind (0.1 in the paper and
    /// pytorch-metric-learning, for cosine similarities).
    pub epsilon: f32,
}

impl Default for MultiSimilarity {
    fn default() -> Self {
        Self { epsilon: 0.1 }
    }
}

impl Miner for MultiSimilarity {
    fn mine(&self, distances: &[f32], labels: &[u32]) -> MinedPairs {
        let n = check(distances, labels);
        let mut out = MinedPairs::default();
        for i in 0..n {
            let row = &distances[i * n..(i + 1) * n];
            let others = || (0..n).filter(move |&j| j != i && !row[j].is_nan());
            let nearest_impostor = others()
                .filter(|&k| labels[k] != labels[i])
                .map(|k| row[k])
                .fold(f32::INFINITY, f32::min);
            let farthest_positive = others()
                .filter(|&j| labels[j] == labels[i])
                .map(|j| row[j])
                .fold(f32::NEG_INFINITY, f32::max);
            if !(nearest_impostor.is_finite() && farthest_positive.is_finite()) {
                continue;
            }
            for j in others() {
                let same = labels[j] == labels[i];
                let keep = if same {
                    row[j] > nearest_impostor - self.epsilon
                } else {
                    row[j] < farthest_positive + self.epsilon
                };
                if keep {
                    out.push(i, j, same);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distances of points on a line.
    fn line(points: &[f32]) -> Vec<f32> {
        points
            .iter()
            .flat_map(|a| points.iter().map(move |b| (a - b).abs()))
            .collect()
    }

    fn pairs(m: &MinedPairs) -> Vec<(u32, u32, bool)> {
        (0..m.len())
            .map(|k| (m.first[k], m.second[k], m.same[k] == 1.0))
            .collect()
    }

    #[test]
    fn paired_halves_pairs_each_first_row_with_its_second() {
        let m = PairedHalves.mine(&[], &[3, 1, 4, 3, 5, 4]);
        assert_eq!(pairs(&m), [(0, 3, true), (1, 4, false), (2, 5, true)]);
        // An odd last row has no partner.
        assert_eq!(pairs(&PairedHalves.mine(&[], &[1, 1, 2])), [(0, 1, true)]);
        assert!(PairedHalves.mine(&[], &[]).is_empty() && !PairedHalves.needs_distances());
    }

    #[test]
    fn all_pairs_lists_each_unordered_pair_once() {
        let m = AllPairs.mine(&line(&[0., 1., 2., 3.]), &[3, 1, 3, 1]);
        assert_eq!(
            pairs(&m),
            [
                (0, 1, false),
                (0, 2, true),
                (0, 3, false),
                (1, 2, false),
                (1, 3, true),
                (2, 3, false)
            ]
        );
        assert!(AllPairs.mine(&[], &[7]).is_empty());
        assert!(!AllPairs.needs_distances() && BatchHard.needs_distances());
    }

    /// Points 0, 1, 5 of class A and 2, 9 of class B on a line: the farthest same-class
    /// image and nearest impostor of each, worked out by hand.
    #[test]
    fn batch_hard_picks_the_farthest_positive_and_the_nearest_negative() {
        let m = BatchHard.mine(&line(&[0., 1., 5., 2., 9.]), &[0, 0, 0, 1, 1]);
        assert_eq!(
            pairs(&m),
            [
                (0, 2, true),  // 0: farthest A is 5 (index 2)
                (0, 3, false), // nearest B is 2 (index 3)
                (1, 2, true),  // 1: farthest A is 5
                (1, 3, false), // nearest B is 2
                (2, 0, true),  // 5: farthest A is 0
                (2, 3, false), // nearest B: 2 (distance 3) before 9 (distance 4)
                (3, 4, true),  // 2: the only other B
                (3, 1, false), // nearest A is 1
                (4, 3, true),  // 9: the only other B
                (4, 2, false), // nearest A is 5
            ]
        );
    }

    #[test]
    fn batch_hard_skips_anchors_without_both_kinds() {
        // Class 2 has one image: no positive for it, so no pairs from it as anchor.
        let m = BatchHard.mine(&line(&[0., 1., 4.]), &[1, 1, 2]);
        assert_eq!(
            pairs(&m),
            [(0, 1, true), (0, 2, false), (1, 0, true), (1, 2, false)]
        );
        // One class only: nothing.
        assert!(BatchHard.mine(&line(&[0., 1.]), &[5, 5]).is_empty());
        // NaN distances are never picked.
        let mut d = line(&[0., 1., 2., 3.]);
        d[2] = f32::NAN; // (0, 2)
        let m = BatchHard.mine(&d, &[0, 1, 0, 1]);
        assert!(pairs(&m).iter().all(|&(i, j, _)| (i, j) != (0, 2)));
    }

    /// Points 0, 1, 5 (A) and 2, 9 (B), epsilon 0.5, by hand. Anchor 0 (at 0): nearest
    /// B at 2, farthest A at 5. Keeps A pairs with d > 1.5: (0, 5); keeps B pairs with
    /// d < 5.5: (0, 2). Anchor at 1: nearest B 1, farthest A 4: A pairs d > 0.5: both
    /// (1 to 0 and to 5); B pairs d < 4.5: 2 only. Anchor at 5: nearest B 3, farthest
    /// A 5: A pairs d > 2.5: 0 and 1 (4 and 5); B pairs d < 5.5: 2 and 9. Anchor at 2:
    /// nearest A 1, farthest B 7: B pairs d > 0.5: 9; A pairs d < 7.5: all three.
    /// Anchor at 9: nearest A 4, farthest B 7: B pairs d > 3.5: 2; A pairs d < 7.5: 5.
    #[test]
    fn multi_similarity_keeps_the_pairs_near_the_other_kind() {
        let miner = MultiSimilarity { epsilon: 0.5 };
        let m = miner.mine(&line(&[0., 1., 5., 2., 9.]), &[0, 0, 0, 1, 1]);
        assert_eq!(
            pairs(&m),
            [
                (0, 2, true),
                (0, 3, false),
                (1, 0, true),
                (1, 2, true),
                (1, 3, false),
                (2, 0, true),
                (2, 1, true),
                (2, 3, false),
                (2, 4, false),
                (3, 0, false),
                (3, 1, false),
                (3, 2, false),
                (3, 4, true),
                (4, 2, false),
                (4, 3, true),
            ]
        );
    }

    /// With a huge slack every pair of an anchor that has both kinds is kept; with a
    /// well separated batch and no slack nothing is.
    #[test]
    fn multi_similarity_slack_bounds() {
        let d = line(&[0., 1., 10., 11.]);
        let labels = [0, 0, 1, 1];
        let all = MultiSimilarity { epsilon: 100.0 }.mine(&d, &labels);
        assert_eq!(all.len(), 12);
        assert!(MultiSimilarity { epsilon: 0.0 }
            .mine(&d, &labels)
            .is_empty());
    }
}
