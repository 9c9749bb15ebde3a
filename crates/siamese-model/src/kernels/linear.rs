//! A fully connected layer, `x · Wᵀ + b`, optionally followed by ReLU, as one candle op
//! (CPU, f32), with a backward that writes each gradient once in its final layout
//! (plain candle computes `dW` transposed and copies it back through a strided pass).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::gemm::{product, Mat};
use super::{cpu_f32, cpu_f32_tensor};

/// `act(x · weightᵀ + bias)` with `x` `[B, in]`, `weight` `[out, in]` (PyTorch's
/// layout), `bias` `[out]`; `act` is ReLU when `relu`, else the identity. Apply with
/// `x.apply_op3(&weight, &bias, LinearAct { relu })`.
#[derive(Debug, Clone, Copy)]
pub struct LinearAct {
    /// Whether a ReLU follows.
    pub relu: bool,
}

fn dims2(l: &Layout, what: &str) -> candle_core::Result<(usize, usize)> {
    match l.dims() {
        [a, b] => Ok((*a, *b)),
        dims => candle_core::bail!("linear: {what} has shape {dims:?}, expected 2 dimensions"),
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

impl CustomOp3 for LinearAct {
    fn name(&self) -> &'static str {
        if self.relu {
            "linear_relu"
        } else {
            "linear"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, n_in) = dims2(l1, "input")?;
        let (n_out, w_in) = dims2(l2, "weight")?;
        if w_in != n_in || l3.dims() != [n_out] {
            candle_core::bail!(
                "linear: input [{batch}, {n_in}], weight {:?}, bias {:?} do not fit",
                l2.dims(),
                l3.dims()
            );
        }
        let x = cpu_f32(s1, l1, "linear input")?;
        let w = cpu_f32(s2, l2, "linear weight")?;
        let b = cpu_f32(s3, l3, "linear bias")?;
        let mut y = product(
            Mat::rows(x, batch, n_in),
            Mat::rows(w, n_out, n_in).t(),
            threads(),
        );
        for row in y.chunks_exact_mut(n_out) {
            for (v, &bias) in row.iter_mut().zip(b) {
                *v += bias;
                if self.relu {
                    *v = super::relu_to(*v, 0.0);
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((batch, n_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x = x.contiguous()?;
        let grad_res = grad_res.contiguous()?;
        let (batch, n_in) = x.dims2()?;
        let (n_out, _) = weight.dims2()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (rs, rl) = res.storage_and_layout();
        let (gs, gl) = grad_res.storage_and_layout();
        let xv = cpu_f32_tensor(&xs, xl, "linear input")?;
        let w = cpu_f32_tensor(&ws, wl, "linear weight")?;
        let out = cpu_f32_tensor(&rs, rl, "linear output")?;
        let grad = cpu_f32_tensor(&gs, gl, "linear gradient")?;
        if grad.len() != batch * n_out || out.len() != grad.len() {
            candle_core::bail!("linear backward: gradient shape does not match [{batch}, {n_out}]");
        }
        // The gradient after the activation.
        let gy: Vec<f32> = if self.relu {
            grad.iter()
                .zip(out)
                .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
                .collect()
        } else {
            grad.to_vec()
        };
        let mut db = vec![0f32; n_out];
        for row in gy.chunks_exact(n_out) {
            db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        let gy_mat = Mat::rows(&gy, batch, n_out);
        // Both written once by their product: no zero fill first.
        let dw = product(gy_mat.t(), Mat::rows(xv, batch, n_in), threads());
        let dx = product(gy_mat, Mat::rows(w, n_out, n_in), threads());
        let device = weight.device();
        Ok((
            Some(Tensor::from_vec(dx, (batch, n_in), device)?),
            Some(Tensor::from_vec(dw, (n_out, n_in), device)?),
            Some(Tensor::from_vec(db, n_out, device)?),
        ))
    }
}
