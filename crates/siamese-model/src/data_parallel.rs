//! One rank's share of a data-parallel forward pass: which rows of the global batch it
//! holds ([`Shard`]), every rank's rows gathered with gradients flowing to its own
//! ([`all_gather_rows`]), and a differentiable all-reduce ([`all_reduce_sum`]) for batch
//! norm's statistics over the global batch.
//!
//! Every rank computes the same loss of the whole batch from the gathered rows, and its
//! backward pass reaches the parameters only through its own rows; the ranks' gradients
//! summed are the one-process gradient, because every path from a parameter to the loss
//! runs through exactly one rank's rows. Batch norm's statistics add paths from one
//! rank's images through every rank's rows: their all-reduce sums the gradient over the
//! ranks in the backward pass too (as PyTorch's `SyncBatchNorm`), so each rank's
//! statistics receive the whole gradient.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use siamese_collective::{shard, Collective, SharedCollective};

use crate::error::ModelError;

/// This rank's rows of a global batch of `total` images spread over `collective`.
#[derive(Clone, Copy)]
pub struct Shard<'a> {
    /// The group of ranks.
    pub collective: &'a SharedCollective,
    /// The rows of the global batch this rank holds ([`siamese_collective::shard`]).
    pub rows: (usize, usize),
    /// Images in the global batch.
    pub total: usize,
}

impl<'a> Shard<'a> {
    /// This rank's share of a global batch of `total` images.
    pub fn of(collective: &'a SharedCollective, total: usize) -> Self {
        let rows = shard(total, collective.rank(), collective.world_size());
        Self {
            collective,
            rows: (rows.start, rows.end),
            total,
        }
    }

    /// The rows, as a range.
    pub fn range(&self) -> Range<usize> {
        self.rows.0..self.rows.1
    }
}

fn collective_error(e: siamese_collective::CollectiveError) -> ModelError {
    ModelError::Config(format!("data-parallel step: {e}"))
}

/// The whole batch's rows, in rank order, from each rank's share `local` (rank r holds
/// rows [`shard`]`(n, r, world)` of `n`): the other ranks' rows as constants, this
/// rank's as `local` itself, so gradients flow back to it alone. A world of one returns
/// `local` unchanged.
pub fn all_gather_rows(
    local: &Tensor,
    n: usize,
    collective: &dyn Collective,
) -> Result<Tensor, ModelError> {
    let (world, rank) = (collective.world_size(), collective.rank());
    if world == 1 {
        return Ok(local.clone());
    }
    let (rows, cols) = local.dims2()?;
    let mine = shard(n, rank, world);
    if rows != mine.len() {
        return Err(ModelError::Config(format!(
            "data-parallel step: rank {rank} holds {rows} rows, its share of {n} is {}",
            mine.len()
        )));
    }
    // Shares differ by one row at most: each is padded to the largest for the gather
    // (which takes equal lengths), and the padding dropped after.
    let widest = n.div_ceil(world);
    let mut values: Vec<f32> = local
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    values.resize(widest * cols, 0.0);
    let all = collective.all_gather(&values).map_err(collective_error)?;
    let rows_of = |r: usize| -> Vec<f32> {
        let start = r * widest * cols;
        all[start..start + shard(n, r, world).len() * cols].to_vec()
    };
    let constant = |ranks: Range<usize>| -> Result<Tensor, ModelError> {
        let values: Vec<f32> = ranks.flat_map(rows_of).collect();
        let rows = values.len() / cols.max(1);
        Ok(Tensor::from_vec(values, (rows, cols), local.device())?.to_dtype(local.dtype())?)
    };
    let parts = [
        constant(0..rank)?,
        local.clone(),
        constant(rank + 1..world)?,
    ];
    Ok(Tensor::cat(&parts, 0)?)
}

/// The element-wise sum of `local` over the ranks, differentiable: the backward pass sums
/// the incoming gradient over the ranks as well, so each rank's term receives the whole
/// batch's gradient (every rank uses the sum). Every rank must call it at the same point
/// of its forward pass, and so of its backward pass. CPU f32.
pub fn all_reduce_sum(local: &Tensor, collective: &SharedCollective) -> Result<Tensor, ModelError> {
    Ok(local.contiguous()?.apply_op1(AllReduceSum {
        collective: collective.clone(),
    })?)
}

struct AllReduceSum {
    collective: SharedCollective,
}

impl AllReduceSum {
    fn reduce(&self, mut values: Vec<f32>) -> candle_core::Result<Vec<f32>> {
        self.collective
            .all_reduce_sum(&mut values)
            .map_err(|e| candle_core::Error::Msg(format!("data-parallel step: {e}")))?;
        Ok(values)
    }
}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "all-reduce-sum"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("all-reduce-sum takes a contiguous f32 tensor");
        };
        let summed = self.reduce(data[start..end].to_vec())?;
        Ok((CpuStorage::F32(summed), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let summed = self.reduce(grad.flatten_all()?.to_vec1::<f32>()?)?;
        Ok(Some(Tensor::from_vec(summed, grad.shape(), grad.device())?))
    }
}
