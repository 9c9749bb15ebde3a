//! The tensor side of data-parallel training, over any [`Collective`]
//! (siamese-collective: one process, threads, or MPI).
//!
//! Each rank embeds its own share of the global batch ([`siamese_collective::shard`]).
//! A loss that pairs images across the batch (all pairs, mining, self-supervised views,
//! episodes) must see the whole batch: [`all_gather_rows`] gives every rank every
//! rank's embeddings, the other ranks' as constants and its own still in the graph
//! (pytorch-metric-learning's `DistributedLossWrapper`). Every rank then computes the
//! same loss of the whole batch, and its backward pass reaches the parameters only
//! through its own images; [`all_reduce_gradients`] sums those contributions over the
//! ranks (one fused buffer, Horovod's tensor fusion), which is the whole batch's
//! gradient: every path from a parameter to the loss runs through exactly one rank's
//! images.
//!
//! Batch norm in training takes the global batch's statistics, all-reduced over the
//! ranks in the forward and the backward pass, and dropout each rank's rows of the
//! global batch's masks (`siamese_model::Embedder::forward_t_shard`).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use siamese_collective::{Collective, Fusion};

use crate::error::TrainError;

fn collective_error(e: siamese_collective::CollectiveError) -> TrainError {
    TrainError::Input(format!("data-parallel step: {e}"))
}

pub use siamese_model::data_parallel::{all_gather_rows, all_reduce_sum, Shard};

/// Sums every parameter's gradient over the ranks, in place in `grads`, as one fused
/// buffer in the order of `params`; a parameter without a gradient on this rank counts
/// as zeros (every rank must send the same buffer length). A world of one changes
/// nothing.
pub fn all_reduce_gradients(
    params: &[(String, Var)],
    grads: &mut GradStore,
    collective: &dyn Collective,
) -> Result<(), TrainError> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let mut parts: Vec<Vec<f32>> = Vec::with_capacity(params.len());
    for (_, var) in params {
        parts.push(match grads.get(var) {
            Some(g) => g
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?,
            None => vec![0.0; var.elem_count()],
        });
    }
    let slices: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
    let (fusion, mut buffer) = Fusion::fuse(&slices);
    collective
        .all_reduce_sum(&mut buffer)
        .map_err(collective_error)?;
    for ((_, var), summed) in params.iter().zip(fusion.split(&buffer)) {
        let g = Tensor::from_slice(summed, var.shape(), var.device())?.to_dtype(var.dtype())?;
        grads.insert(var.as_tensor(), g);
    }
    Ok(())
}

/// Per entry, whether `local` is `true` on every rank (on every rank: an all-reduce of
/// the count of ranks where it is not).
pub fn everywhere(local: &[bool], collective: &dyn Collective) -> Result<Vec<bool>, TrainError> {
    if collective.world_size() == 1 {
        return Ok(local.to_vec());
    }
    let mut not = local
        .iter()
        .map(|&f| f32::from(u8::from(!f)))
        .collect::<Vec<_>>();
    collective
        .all_reduce_sum(&mut not)
        .map_err(collective_error)?;
    Ok(not.iter().map(|&n| n == 0.0).collect())
}

/// The ranks that answered `true`, on every rank (an all-gather of one flag each), so
/// that every rank takes the same decision.
fn ranks_where(flag: bool, collective: &dyn Collective) -> Result<Vec<usize>, TrainError> {
    let flags = collective
        .all_gather(&[f32::from(u8::from(flag))])
        .map_err(collective_error)?;
    Ok(flags
        .iter()
        .enumerate()
        .filter(|(_, &f)| f != 0.0)
        .map(|(rank, _)| rank)
        .collect())
}

/// Checks, before training, that every rank runs the same configuration (`config`,
/// the serialised config of this rank, JSON): rank 0's is sent to all, and if any
/// rank's differs, every rank returns an error naming those ranks and the fields the
/// first of them differs in, with both values, so none starts while another refuses.
/// Every rank says it all because a launcher may stop the others as soon as one exits
/// (mpiexec does): whichever message is printed must be the whole story.
pub fn check_same_config(config: &[u8], collective: &dyn Collective) -> Result<(), TrainError> {
    let mut root = config.to_vec();
    collective
        .broadcast_bytes(&mut root, 0)
        .map_err(collective_error)?;
    let differ = ranks_where(root != config, collective)?;
    let Some(&first) = differ.first() else {
        return Ok(());
    };
    let mut theirs = config.to_vec();
    collective
        .broadcast_bytes(&mut theirs, first)
        .map_err(collective_error)?;
    let mut message = format!(
        "the ranks disagree: the config of rank(s) {differ:?} differs from rank 0's \
         (every rank must be started with the same arguments)"
    );
    let fields = differing_fields(&root, &theirs);
    if !fields.is_empty() {
        message.push_str(&format!(
            "; rank 0's / rank {first}'s: {}",
            fields.join(", ")
        ));
    }
    Err(TrainError::Config(message))
}

/// The fields (dotted paths) where two JSON documents differ, each with both values,
/// at most 8; empty when either is not JSON.
fn differing_fields(root: &[u8], mine: &[u8]) -> Vec<String> {
    use serde_json::Value;
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for key in keys {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    let (a, b) = (
                        x.get(key).unwrap_or(&Value::Null),
                        y.get(key).unwrap_or(&Value::Null),
                    );
                    walk(&path, a, b, out);
                }
            }
            _ if a != b => out.push(format!("{path} = {a} / {b}")),
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (
        serde_json::from_slice::<Value>(root),
        serde_json::from_slice::<Value>(mine),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out.truncate(8);
    out
}

/// Sends rank 0's values of `tensors` (every parameter and batch-norm statistic, in one
/// fused buffer) to every rank and checks that each rank held the same values already
/// (built from the same config and seed): a rank that did not makes every rank return
/// the same error naming it; otherwise each rank now holds rank 0's exact bits.
pub fn broadcast_parameters(
    tensors: &[(String, Tensor)],
    collective: &dyn Collective,
) -> Result<(), TrainError> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let mut parts: Vec<Vec<f32>> = Vec::with_capacity(tensors.len());
    for (_, t) in tensors {
        parts.push(
            t.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?,
        );
    }
    let slices: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
    let (fusion, mine) = Fusion::fuse(&slices);
    let mut root = mine.clone();
    collective
        .broadcast(&mut root, 0)
        .map_err(collective_error)?;
    let same = root
        .iter()
        .zip(&mine)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    let differ = ranks_where(!same, collective)?;
    if !differ.is_empty() {
        return Err(TrainError::Config(format!(
            "the ranks disagree: the parameters of rank(s) {differ:?} differ from rank 0's \
             at the start (the same config and seed on every rank?)"
        )));
    }
    for ((_, t), values) in tensors.iter().zip(fusion.split(&root)) {
        let v = Tensor::from_slice(values, t.shape(), t.device())?.to_dtype(t.dtype())?;
        Var::from_tensor(t)?.set(&v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use siamese_collective::{shard, SingleProcess, ThreadGroup};

    /// A hand-made case: a linear map `w` of 5 rows of 3 features to 2-D embeddings, and
    /// a loss that pairs rows across the batch (every pair's squared distance, weighted
    /// by the pair). Split over 2 ranks (3 rows and 2), gathered, each rank's backward
    /// summed over the ranks: the one-process gradient.
    #[test]
    fn gathered_rows_backpropagate_to_the_one_process_gradient() {
        let dev = Device::Cpu;
        let x: Vec<f32> = (0..15).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
        let w0: Vec<f32> = vec![0.3, -0.2, 0.5, 0.1, -0.4, 0.25];
        let loss_of = |emb: &Tensor| -> Tensor {
            let n = emb.dim(0).unwrap();
            let mut total = Tensor::zeros((), DType::F32, &dev).unwrap();
            for i in 0..n {
                for j in i + 1..n {
                    let d = (emb.get(i).unwrap() - emb.get(j).unwrap()).unwrap();
                    let weight = 1.0 + (i * n + j) as f64 / 10.0;
                    let term = (d.sqr().unwrap().sum_all().unwrap() * weight).unwrap();
                    total = (total + term).unwrap();
                }
            }
            total
        };
        let grad_of = |rows: std::ops::Range<usize>, c: &dyn Collective| -> Vec<f32> {
            let w = Var::from_vec(w0.clone(), (3, 2), &dev).unwrap();
            let local = Tensor::from_vec(
                x[rows.start * 3..rows.end * 3].to_vec(),
                (rows.len(), 3),
                &dev,
            )
            .unwrap();
            let emb = local.matmul(w.as_tensor()).unwrap();
            let all = all_gather_rows(&emb, 5, c).unwrap();
            let mut grads = loss_of(&all).backward().unwrap();
            let params = vec![("w".to_string(), w.clone())];
            all_reduce_gradients(&params, &mut grads, c).unwrap();
            grads
                .get(&w)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let one = grad_of(0..5, &SingleProcess);
        let ranks = ThreadGroup::run(2, |c| grad_of(shard(5, c.rank(), 2), c));
        for got in &ranks {
            for (a, b) in got.iter().zip(&one) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{got:?} vs {one:?}"
                );
            }
        }
        // Every rank ends with the same bits, to update its parameters identically.
        assert_eq!(ranks[0], ranks[1]);
    }

    #[test]
    fn a_flag_holds_everywhere_when_it_holds_on_every_rank() {
        let got = ThreadGroup::run(3, |c| {
            let local = match c.rank() {
                0 => [true, true, false, true],
                1 => [true, false, false, true],
                _ => [true, true, false, false],
            };
            everywhere(&local, c).unwrap()
        });
        for flags in got {
            assert_eq!(flags, [true, false, false, false]);
        }
        let alone = everywhere(&[true, false], &siamese_collective::SingleProcess).unwrap();
        assert_eq!(alone, [true, false]);
    }

    #[test]
    fn ranks_that_disagree_on_the_config_or_the_start_all_refuse_naming_them() {
        let configs = ThreadGroup::run(3, |c| {
            let text = if c.rank() == 2 {
                "{\"seed\":1}"
            } else {
                "{\"seed\":0}"
            };
            check_same_config(text.as_bytes(), c).map_err(|e| e.to_string())
        });
        for r in &configs {
            let err = r.as_ref().unwrap_err();
            assert!(err.contains("rank(s) [2]"), "{err}");
        }
        // Every rank names the field and both values (a launcher may print only one).
        for r in &configs {
            let err = r.as_ref().unwrap_err();
            assert!(err.ends_with("rank 0's / rank 2's: seed = 0 / 1"), "{err}");
        }
        let nested = ThreadGroup::run(2, |c| {
            let lr = if c.rank() == 1 { "0.02" } else { "0.01" };
            let text =
                format!("{{\"optim\":{{\"lr\":{lr},\"schedule\":\"constant\"}},\"seed\":0}}");
            check_same_config(text.as_bytes(), c).map_err(|e| e.to_string())
        });
        for r in &nested {
            let err = r.as_ref().unwrap_err();
            assert!(err.ends_with("rank 1's: optim.lr = 0.01 / 0.02"), "{err}");
        }
        let agreed = ThreadGroup::run(2, |c| check_same_config(b"{}", c).is_ok());
        assert_eq!(agreed, [true, true]);

        let dev = Device::Cpu;
        let starts = ThreadGroup::run(2, |c| {
            let w = Var::from_vec(vec![1f32, 2.0, 3.0], 3, &dev).unwrap();
            let b = Var::from_vec(vec![4f32], 1, &dev).unwrap();
            let tensors = vec![
                ("w".to_string(), w.as_tensor().clone()),
                ("b".to_string(), b.as_tensor().clone()),
            ];
            broadcast_parameters(&tensors, c)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        assert!(starts.iter().all(Result::is_ok), "{starts:?}");
        let differing = ThreadGroup::run(2, |c| {
            let w = Var::from_vec(vec![1f32, 2.0, 3.0 + c.rank() as f32], 3, &dev).unwrap();
            let tensors = vec![("w".to_string(), w.as_tensor().clone())];
            broadcast_parameters(&tensors, c).map_err(|e| e.to_string())
        });
        for r in differing {
            assert!(r.unwrap_err().contains("rank(s) [1]"));
        }
    }

    #[test]
    fn gradients_round_trip_through_the_fused_buffer_in_shape_and_order() {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![1f32, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), &dev).unwrap();
        let b = Var::from_vec(vec![1f32; 4], (2, 1, 2), &dev).unwrap();
        let unused = Var::from_vec(vec![0f32; 3], 3, &dev).unwrap();
        let params = vec![
            ("a".to_string(), a.clone()),
            ("unused".to_string(), unused.clone()),
            ("b".to_string(), b.clone()),
        ];
        let sums = ThreadGroup::run(2, |c| {
            // Rank r's loss: (r + 1) * (sum(a^2) + sum(3 b)).
            let scale = (c.rank() + 1) as f64;
            let loss = ((a.as_tensor().sqr().unwrap().sum_all().unwrap()
                + (b.as_tensor() * 3.0).unwrap().sum_all().unwrap())
            .unwrap()
                * scale)
                .unwrap();
            let mut grads = loss.backward().unwrap();
            all_reduce_gradients(&params, &mut grads, c).unwrap();
            let get = |v: &Var| grads.get(v).unwrap().clone();
            (get(&a), get(&b), get(&unused))
        });
        for (ga, gb, gu) in sums {
            // (1 + 2) * 2a, (1 + 2) * 3, zeros: summed, each in its own shape.
            assert_eq!(ga.dims(), [2, 3]);
            assert_eq!(gb.dims(), [2, 1, 2]);
            let ga: Vec<f32> = ga.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(ga, [6.0, 12.0, 18.0, 24.0, 30.0, 36.0]);
            let gb: Vec<f32> = gb.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(gb, [9.0; 4]);
            assert_eq!(gu.to_vec1::<f32>().unwrap(), [0.0; 3]);
        }
    }
}
