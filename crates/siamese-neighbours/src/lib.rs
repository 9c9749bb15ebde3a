//! Euclidean distances and exact k-nearest neighbours over embeddings held as plain
//! `f32` rows (row-major, `dim` columns): the one implementation that the metrics
//! (verification pairs, kNN, retrieval), gallery search and the explorer page share,
//! so that a distance means the same thing wherever it is shown. Training computes its
//! distances as tensors (siamese-loss) because it needs their gradients; nothing here
//! does.
//!
//! - Distances are summed in eight lanes the compiler turns into SIMD, the same order
//!   everywhere, so one pair of rows has one distance bit for bit.
//! - Neighbours are exact (every row is scanned) and ordered by distance, then by row
//!   index, so the answer does not depend on the number of threads or the block size.
//! - Ranking uses squared distances; the square root is taken only of what is returned.
//!
//! ```
//! use siamese_neighbours::{euclidean, nearest, nearest_to_each_row};
//!
//! // Four 2-D rows: two near the origin, two near (3, 3).
//! let rows = [0.0, 0.0, 0.1, 0.0, 3.0, 3.0, 3.0, 3.1];
//! assert_eq!(euclidean(&rows[0..2], &rows[4..6]), 18f32.sqrt());
//!
//! // The two rows nearest to a query, nearest first.
//! let hits = nearest(&rows, 2, &[2.9, 3.0], 2);
//! assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [2, 3]);
//!
//! // Every row's nearest other row (the row itself left out), mapped to its index.
//! let firsts = nearest_to_each_row(&rows, 2, |_| 1, |_, hits| hits[0].index);
//! assert_eq!(firsts, [1, 0, 3, 2]);
//! ```

use std::collections::BinaryHeap;

use rayon::prelude::*;
use serde::Serialize;

/// Rows scanned per block by one thread in [`nearest`]: a block of 4096 rows of 128
/// floats is 2 MiB, about what a core's L2 holds.
const BLOCK_ROWS: usize = 4096;

/// One neighbour of a query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Neighbour {
    /// Row of the searched embeddings.
    pub index: usize,
    /// Euclidean distance to the query.
    pub distance: f32,
}

/// Squared Euclidean distance, in eight lanes the compiler turns into SIMD. Every
/// distance of the workspace outside training goes through here, so the summation
/// order (and with it the last bit) is the same wherever a distance is computed.
pub fn squared_euclidean(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "rows of one dimension");
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            let d = x[i] - y[i];
            lanes[i] += d * d;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += (x - y) * (x - y);
    }
    sum
}

/// Euclidean distance between two rows.
pub fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    squared_euclidean(a, b).sqrt()
}

/// Euclidean distances between rows `left[i]` and `right[i]` of `rows` (`dim`
/// columns), in parallel.
///
/// # Panics
/// When `left` and `right` differ in length or an index is past the last row.
pub fn pair_distances(rows: &[f32], dim: usize, left: &[usize], right: &[usize]) -> Vec<f32> {
    assert_eq!(left.len(), right.len(), "one right index per left one");
    let row = |i: usize| &rows[i * dim..(i + 1) * dim];
    left.par_iter()
        .zip(right)
        .map(|(&a, &b)| euclidean(row(a), row(b)))
        .collect()
}

/// Orders neighbours by distance, then row.
fn closer(a: &Neighbour, b: &Neighbour) -> std::cmp::Ordering {
    a.distance
        .total_cmp(&b.distance)
        .then(a.index.cmp(&b.index))
}

/// A neighbour ordered by [`closer`], for the heap of the `k` best so far.
#[derive(Clone, Copy)]
struct Ranked(Neighbour);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        closer(&self.0, &other.0).is_eq()
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        closer(&self.0, &other.0)
    }
}

/// The `k` rows of `rows` (the first being row `first`) nearest to `query`, by
/// squared distance then row, skipping row `skip`, nearest first; one thread. A
/// max-heap of the `k` best so far, so a row costs `O(log k)` at worst whatever the
/// order the rows come in (retrieval asks for a whole class, `k` in the thousands).
fn scan(
    rows: &[f32],
    first: usize,
    dim: usize,
    query: &[f32],
    k: usize,
    skip: Option<usize>,
) -> Vec<Neighbour> {
    if k == 0 {
        return Vec::new();
    }
    let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k + 1);
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        if skip == Some(first + i) {
            continue;
        }
        let hit = Ranked(Neighbour {
            index: first + i,
            distance: squared_euclidean(row, query),
        });
        if best.len() < k {
            best.push(hit);
        } else if let Some(mut worst) = best.peek_mut() {
            if hit < *worst {
                *worst = hit;
            }
        }
    }
    best.into_sorted_vec().into_iter().map(|r| r.0).collect()
}

/// [`scan`] for a tile of queries at once (`(query, k, skip)` each), rows `0..`: each
/// row is read from memory once for the whole tile and compared with every query while
/// it is in cache. For wide rows (3,000 rows of 20,000 values: 240 MB) the scan is
/// memory-bound, and one query at a time read the rows 3,000 times. Each distance is
/// the same [`squared_euclidean`] and each list the same set as [`scan`]'s.
fn scan_tile(
    rows: &[f32],
    dim: usize,
    tile: &[(&[f32], usize, Option<usize>)],
) -> Vec<Vec<Neighbour>> {
    let mut best: Vec<BinaryHeap<Ranked>> = tile
        .iter()
        .map(|&(_, k, _)| BinaryHeap::with_capacity(k + 1))
        .collect();
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        for (heap, &(query, k, skip)) in best.iter_mut().zip(tile) {
            if k == 0 || skip == Some(i) {
                continue;
            }
            let hit = Ranked(Neighbour {
                index: i,
                distance: squared_euclidean(row, query),
            });
            if heap.len() < k {
                heap.push(hit);
            } else if let Some(mut worst) = heap.peek_mut() {
                if hit < *worst {
                    *worst = hit;
                }
            }
        }
    }
    best.into_iter()
        .map(|heap| heap.into_sorted_vec().into_iter().map(|r| r.0).collect())
        .collect()
}

/// Queries per tile of [`scan_tile`]: up to 8, fewer when there are too few queries to
/// keep every thread busy with several tiles.
fn tile_size(queries: usize) -> usize {
    (queries / (4 * rayon::current_num_threads())).clamp(1, 8)
}

/// Squared distances to distances, in place.
fn take_roots(hits: &mut [Neighbour]) {
    for h in hits {
        h.distance = h.distance.sqrt();
    }
}

/// The `k` rows of `rows` (`dim` columns) nearest to `query` (at most all of them),
/// nearest first, by Euclidean distance; equal distances in row order. Exact: every
/// row is scanned, in blocks spread over threads, each keeping its `k` best.
pub fn nearest(rows: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<Neighbour> {
    assert!(dim > 0, "rows need a dimension");
    let mut hits: Vec<Neighbour> = rows
        .par_chunks(BLOCK_ROWS * dim)
        .enumerate()
        .flat_map_iter(|(b, block)| scan(block, b * BLOCK_ROWS, dim, query, k, None))
        .collect();
    hits.sort_by(closer);
    hits.truncate(k);
    take_roots(&mut hits);
    hits
}

/// For every query (row-major, `dim` columns) its `k` nearest rows of `rows`, passed
/// with the query's index to `f`; queries in parallel, results in query order.
pub fn nearest_to_each<T: Send>(
    rows: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
    f: impl Fn(usize, &[Neighbour]) -> T + Sync,
) -> Vec<T> {
    assert!(dim > 0, "rows need a dimension");
    let per_tile = tile_size(queries.len() / dim);
    queries
        .par_chunks(per_tile * dim)
        .enumerate()
        .flat_map_iter(|(t, block)| {
            let first = t * per_tile;
            let tile: Vec<_> = block.chunks(dim).map(|q| (q, k, None)).collect();
            let lists = scan_tile(rows, dim, &tile);
            let f = &f;
            lists.into_iter().enumerate().map(move |(j, mut hits)| {
                take_roots(&mut hits);
                f(first + j, &hits)
            })
        })
        .collect()
}

/// For every row of `rows`, its `k_of(row)` nearest other rows (the row itself left
/// out, however many rows equal it), passed with the row's index to `f`: leave-one-out
/// kNN, retrieval and the explorer's neighbour lists. Rows in parallel, results in row
/// order; `f` sees the neighbours as a slice, so a caller that needs only a summary of
/// each list keeps no `n x k` table.
pub fn nearest_to_each_row<T: Send>(
    rows: &[f32],
    dim: usize,
    k_of: impl Fn(usize) -> usize + Sync,
    f: impl Fn(usize, &[Neighbour]) -> T + Sync,
) -> Vec<T> {
    assert!(dim > 0, "rows need a dimension");
    let per_tile = tile_size(rows.len() / dim);
    rows.par_chunks(per_tile * dim)
        .enumerate()
        .flat_map_iter(|(t, block)| {
            let first = t * per_tile;
            let queries: Vec<_> = block
                .chunks(dim)
                .enumerate()
                .map(|(j, q)| (q, k_of(first + j), Some(first + j)))
                .collect();
            let lists = scan_tile(rows, dim, &queries);
            let f = &f;
            lists.into_iter().enumerate().map(move |(j, mut hits)| {
                take_roots(&mut hits);
                f(first + j, &hits)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition: every distance, sorted by (distance, row), the first k.
    fn naive(
        rows: &[f32],
        dim: usize,
        query: &[f32],
        k: usize,
        skip: Option<usize>,
    ) -> Vec<(usize, f64)> {
        let mut all: Vec<(usize, f64)> = rows
            .chunks_exact(dim)
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(i, row)| {
                let d: f64 = row
                    .iter()
                    .zip(query)
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                    .sum();
                (i, d.sqrt())
            })
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn same_as_naive(got: &[Neighbour], want: &[(usize, f64)]) -> Result<(), TestCaseError> {
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            prop_assert_eq!(g.index, w.0);
            prop_assert!((f64::from(g.distance) - w.1).abs() < 1e-4 * (1.0 + w.1));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// Exact search equals the naive loop, across block boundaries and dimensions
        /// that are not multiples of the SIMD lanes.
        #[test]
        fn nearest_equals_the_naive_loop(n in 1usize..9000, dim in 1usize..20, k in 1usize..12, seed in 0u64..1000) {
            let e = values(n * dim, seed);
            let q = values(dim, seed + 7);
            same_as_naive(&nearest(&e, dim, &q, k), &naive(&e, dim, &q, k, None))?;
        }

        /// Every row's neighbours leave the row out and equal the naive loop; so do
        /// queries from another set.
        #[test]
        fn each_row_and_each_query_equal_the_naive_loop(n in 1usize..300, m in 1usize..80, dim in 1usize..20, k in 0usize..12, seed in 0u64..1000) {
            // Rows and queries go in tiles of up to 8 (the last one short), each row
            // with its own k, as retrieval asks.
            let e = values(n * dim, seed);
            let k_of = |q: usize| (q * 7 + k) % 13;
            let lists = nearest_to_each_row(&e, dim, k_of, |_, hits| hits.to_vec());
            for (q, hits) in lists.iter().enumerate() {
                same_as_naive(hits, &naive(&e, dim, &e[q * dim..(q + 1) * dim], k_of(q), Some(q)))?;
            }
            let queries = values(m * dim, seed + 1);
            let lists = nearest_to_each(&e, &queries, dim, k, |_, hits| hits.to_vec());
            prop_assert_eq!(lists.len(), m);
            for (q, hits) in lists.iter().enumerate() {
                same_as_naive(hits, &naive(&e, dim, &queries[q * dim..(q + 1) * dim], k, None))?;
            }
        }
    }

    #[test]
    fn a_row_finds_itself_first_at_distance_0_and_ties_go_by_row() {
        let e = values(5000 * 16, 3);
        let row = 4321;
        let q = e[row * 16..(row + 1) * 16].to_vec();
        let hits = nearest(&e, 16, &q, 3);
        assert_eq!((hits[0].index, hits[0].distance), (row, 0.0));
        // Ten equal rows across a block boundary: the first k of them, in row order.
        let mut e = values(9000 * 2, 4);
        for r in (4090..4100).rev() {
            e[r * 2..r * 2 + 2].copy_from_slice(&[9.0, 9.0]);
        }
        let got: Vec<usize> = nearest(&e, 2, &[9.0, 9.0], 4)
            .iter()
            .map(|h| h.index)
            .collect();
        assert_eq!(got, [4090, 4091, 4092, 4093]);
    }

    #[test]
    fn leave_one_out_skips_only_the_row_itself_among_equal_rows() {
        // Rows 0, 1 and 2 are equal: row 1's nearest others are 0 and 2 at distance 0.
        let e = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0];
        let lists = nearest_to_each_row(&e, 2, |_| 2, |_, h| h.to_vec());
        let idx = |q: usize| lists[q].iter().map(|h| h.index).collect::<Vec<_>>();
        assert_eq!(
            (idx(0), idx(1), idx(2), idx(3)),
            (vec![1, 2], vec![0, 2], vec![0, 1], vec![0, 1])
        );
        assert_eq!(lists[1][0].distance, 0.0);
        // k past the other rows gives all of them; k = 0 gives none.
        assert_eq!(
            nearest_to_each_row(&e, 2, |_| 10, |_, h| h.len()),
            [3, 3, 3, 3]
        );
        assert_eq!(
            nearest_to_each_row(&e, 2, |_| 0, |_, h| h.len()),
            [0, 0, 0, 0]
        );
    }

    #[test]
    fn pair_distances_are_the_row_distances() {
        let e = [0.0, 0.0, 3.0, 4.0, 6.0, 8.0];
        assert_eq!(
            pair_distances(&e, 2, &[0, 1, 2], &[1, 2, 2]),
            [5.0, 5.0, 0.0]
        );
        // Dimensions past the eight lanes: 9 ones against 9 zeros is 3.
        assert_eq!(euclidean(&[1.0; 9], &[0.0; 9]), 3.0);
    }

    #[test]
    fn non_finite_values_sort_last_and_do_not_hang() {
        let e = [f32::NAN, 0.0, 1.0, 1.0, 0.0, 0.0];
        let hits = nearest(&e, 2, &[0.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [2, 1, 0]);
        assert!(hits[2].distance.is_nan());
    }
}
