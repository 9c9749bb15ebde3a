//! Retrieval metrics as pytorch-metric-learning's `AccuracyCalculator` defines them
//! (Musgrave et al., "A Metric Learning Reality Check", 2020), with every embedding of
//! a set used as a query against all the others (the query itself left out):
//!
//! - **precision@1**: the share of queries whose nearest neighbour has their class;
//! - **R-precision**: with `R` the number of other items of the query's class, the share
//!   of the `R` nearest that have it;
//! - **MAP@R**: mean average precision over those `R` nearest, each relevant item at
//!   rank `i` counting the precision at `i`, divided by `R` (so a late hit counts less
//!   than an early one, which R-precision does not tell apart).
//!
//! Each is the mean over queries. A query alone in its class (`R = 0`) has nothing to
//! retrieve and is left out of all three. Neighbours are ranked by Euclidean distance,
//! ties broken by position in the set, so the numbers do not depend on thread count.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use siamese_neighbours::{nearest_to_each_row, Neighbour};

/// The three retrieval metrics of a set of embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    /// Share of queries whose nearest other item has their class.
    pub precision_at_1: f64,
    /// Mean over queries of the share of their class among the `R` nearest.
    pub r_precision: f64,
    /// Mean average precision at `R`.
    pub map_at_r: f64,
    /// Queries counted (those with at least one other item of their class).
    pub queries: usize,
}

/// Retrieval metrics of `embeddings` (row-major, `dim` columns, one label per row),
/// each row a query against all the others. NaN when a value is not finite or no query
/// has another item of its class.
pub fn retrieval_leave_one_out(embeddings: &[f32], labels: &[u32], dim: usize) -> RetrievalMetrics {
    assert!(dim > 0, "embeddings need a dimension");
    assert_eq!(
        embeddings.len(),
        labels.len() * dim,
        "one label per embedding"
    );
    let nan = RetrievalMetrics {
        precision_at_1: f64::NAN,
        r_precision: f64::NAN,
        map_at_r: f64::NAN,
        queries: 0,
    };
    if embeddings.iter().any(|v| !v.is_finite()) {
        return nan;
    }
    // Class sizes by label; labels are indices below the data set's class count, but a
    // caller's labels are not trusted for an allocation: a map holds only those present.
    let mut class_size: HashMap<u32, usize> = HashMap::new();
    labels
        .iter()
        .for_each(|&l| *class_size.entry(l).or_default() += 1);
    // A query's R is the number of other items of its class; a class of one is left out.
    let others = |q: usize| class_size[&labels[q]] - 1;
    let per_query: Vec<Option<(f64, f64, f64)>> =
        nearest_to_each_row(embeddings, dim, others, |q, ranked| {
            (others(q) > 0).then(|| query(labels, q, ranked))
        });
    let counted: Vec<(f64, f64, f64)> = per_query.into_iter().flatten().collect();
    if counted.is_empty() {
        return nan;
    }
    let n = counted.len() as f64;
    let mean = |f: fn(&(f64, f64, f64)) -> f64| counted.iter().map(f).sum::<f64>() / n;
    RetrievalMetrics {
        precision_at_1: mean(|c| c.0),
        r_precision: mean(|c| c.1),
        map_at_r: mean(|c| c.2),
        queries: counted.len(),
    }
}

/// (precision@1, R-precision, AP@R) of query `q` from its R nearest others, nearest
/// first.
fn query(labels: &[u32], q: usize, ranked: &[Neighbour]) -> (f64, f64, f64) {
    let own = labels[q];
    let (mut hits, mut precision_sum) = (0usize, 0.0);
    for (rank, n) in ranked.iter().enumerate() {
        if labels[n.index] == own {
            hits += 1;
            precision_sum += hits as f64 / (rank + 1) as f64;
        }
    }
    let r = ranked.len() as f64;
    let first = f64::from(u8::from(labels[ranked[0].index] == own));
    (first, hits as f64 / r, precision_sum / r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definitions, spelled out: a full sort of every other item per query.
    fn naive(embeddings: &[f32], labels: &[u32], dim: usize) -> (f64, f64, f64) {
        let n = labels.len();
        let (mut p1, mut rp, mut map, mut count) = (0.0, 0.0, 0.0, 0.0);
        for q in 0..n {
            let r = labels.iter().filter(|&&l| l == labels[q]).count() - 1;
            if r == 0 {
                continue;
            }
            let mut others: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != q)
                .map(|j| {
                    let d: f64 = (0..dim)
                        .map(|k| {
                            let v = f64::from(embeddings[q * dim + k])
                                - f64::from(embeddings[j * dim + k]);
                            v * v
                        })
                        .sum();
                    (d, j)
                })
                .collect();
            others.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let rel: Vec<bool> = others
                .iter()
                .map(|&(_, j)| labels[j] == labels[q])
                .collect();
            p1 += f64::from(u8::from(rel[0]));
            rp += rel[..r].iter().filter(|&&x| x).count() as f64 / r as f64;
            let mut ap = 0.0;
            for i in 0..r {
                if rel[i] {
                    ap += rel[..=i].iter().filter(|&&x| x).count() as f64 / (i + 1) as f64;
                }
            }
            map += ap / r as f64;
            count += 1.0;
        }
        (p1 / count, rp / count, map / count)
    }

    #[test]
    fn hand_worked_example() {
        // 1-D points. Class 0 at 0, 1, 10; class 1 at 2, 11. Only the R nearest count.
        // Query 0 (R=2): 1 (c0), 2 (c1): P@1 1, RP 1/2, AP@R (1 + 0)/2.
        // Query 1 (R=2): 0 and 2 tie at distance 1, 0 (earlier in the set) first: the same.
        // Query 10 (R=2): 11 (c1), 2 (c1): 0, 0, 0.
        // Query 2 (R=1): 1 (c0): 0, 0, 0. Query 11 (R=1): 10 (c0): 0, 0, 0.
        let e = [0.0, 1.0, 10.0, 2.0, 11.0];
        let l = [0, 0, 0, 1, 1];
        let m = retrieval_leave_one_out(&e, &l, 1);
        assert_eq!(m.queries, 5);
        assert!((m.precision_at_1 - 2.0 / 5.0).abs() < 1e-12, "{m:?}");
        assert!((m.r_precision - 1.0 / 5.0).abs() < 1e-12, "{m:?}");
        assert!((m.map_at_r - 1.0 / 5.0).abs() < 1e-12, "{m:?}");
    }

    #[test]
    fn perfect_clusters_score_one_and_singletons_are_left_out() {
        let e = [0.0, 0.1, 0.2, 5.0, 5.1, 9.0];
        let l = [0, 0, 0, 1, 1, 2];
        let m = retrieval_leave_one_out(&e, &l, 1);
        assert_eq!(m.queries, 5);
        assert_eq!(
            (m.precision_at_1, m.r_precision, m.map_at_r),
            (1.0, 1.0, 1.0)
        );
    }

    /// Labels past any small table: 3,000 classes of two points each, labels spread to
    /// 3,000,000; retrieval and kNN still find each point's partner.
    #[test]
    fn thousands_of_classes_with_large_labels() {
        let (e, l): (Vec<f32>, Vec<u32>) = (0..6_000u32)
            .map(|i| {
                (
                    (i / 2) as f32 * 10.0 + (i % 2) as f32 * 0.1,
                    (i / 2) * 1_000,
                )
            })
            .unzip();
        let m = retrieval_leave_one_out(&e, &l, 1);
        assert_eq!((m.queries, m.map_at_r), (6_000, 1.0));
        assert_eq!(crate::knn_accuracy_leave_one_out(&e, &l, 1, 1), 1.0);
    }

    #[test]
    fn broken_numbers_give_nan() {
        let m = retrieval_leave_one_out(&[0.0, f32::NAN, 1.0, 2.0], &[0, 0, 1, 1], 1);
        assert!(m.map_at_r.is_nan() && m.precision_at_1.is_nan());
        let m = retrieval_leave_one_out(&[0.0, 1.0], &[0, 1], 1);
        assert!(m.map_at_r.is_nan() && m.queries == 0);
    }

    proptest! {
        #[test]
        fn equals_the_naive_definition(
            points in proptest::collection::vec((0u8..4, -3i8..3, -3i8..3), 2..40)
        ) {
            // Small integer coordinates: many exact ties, broken by position in both.
            let labels: Vec<u32> = points.iter().map(|p| u32::from(p.0)).collect();
            let e: Vec<f32> = points.iter().flat_map(|p| [f32::from(p.1), f32::from(p.2)]).collect();
            let m = retrieval_leave_one_out(&e, &labels, 2);
            if m.queries == 0 {
                prop_assert!(m.map_at_r.is_nan());
            } else {
                let (p1, rp, map) = naive(&e, &labels, 2);
                prop_assert!((m.precision_at_1 - p1).abs() < 1e-12);
                prop_assert!((m.r_precision - rp).abs() < 1e-12);
                prop_assert!((m.map_at_r - map).abs() < 1e-12);
            }
        }
    }
}
