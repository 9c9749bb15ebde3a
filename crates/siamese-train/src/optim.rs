//! Adam (Kingma & Ba), written out so that its moments can be saved in a checkpoint and
//! a resumed run continues bit for bit. No weight decay: candle-nn's `AdamW` defaults to
//! 0.01, which the reference program (TensorFlow's `AdamOptimizer`) does not have;
//! `eps = 1e-8` as TensorFlow.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// Exponential decay of the first moment.
    pub beta1: f64,
    /// Exponential decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam over named variables.
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Var)>,
    first: Vec<Var>,
    second: Vec<Var>,
    step: u64,
}

impl Adam {
    /// An optimiser for `params` (name, variable), moments at zero.
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self, TrainError> {
        let mut first = Vec::with_capacity(params.len());
        let mut second = Vec::with_capacity(params.len());
        for (_, p) in &params {
            first.push(Var::zeros(p.shape(), p.dtype(), p.device())?);
            second.push(Var::zeros(p.shape(), p.dtype(), p.device())?);
        }
        Ok(Self {
            config,
            params,
            first,
            second,
            step: 0,
        })
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr` from the gradients in `grads`; parameters
    /// without a gradient (batch-norm running statistics) are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        self.step += 1;
        let AdamConfig { beta1, beta2, eps } = self.config;
        let t = self.step as i32;
        let c1 = 1.0 / (1.0 - beta1.powi(t));
        let c2 = 1.0 / (1.0 - beta2.powi(t));
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            let m = ((self.first[i].as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((self.second[i].as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = (m.affine(c1, 0.0)? / (v.affine(c2, 0.0)?.sqrt()? + eps)?)?;
            p.set(&(p.as_tensor() - (update * lr)?)?)?;
            self.first[i].set(&m)?;
            self.second[i].set(&v)?;
        }
        Ok(())
    }

    /// The state to save: moments by `"{name}.m"` / `"{name}.v"`, and the step count.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut tensors = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            tensors.insert(format!("{name}.m"), self.first[i].as_tensor().clone());
            tensors.insert(format!("{name}.v"), self.second[i].as_tensor().clone());
        }
        (tensors, self.step)
    }

    /// Restores a saved state; every moment must be present with the right shape.
    pub fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<(), TrainError> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (suffix, moment) in [("m", &self.first[i]), ("v", &self.second[i])] {
                let key = format!("{name}.{suffix}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| TrainError::Resume(format!("optimiser state lacks {key:?}")))?;
                if t.dims() != p.dims() {
                    return Err(TrainError::Resume(format!(
                        "optimiser state {key:?} has shape {:?}, expected {:?}",
                        t.dims(),
                        p.dims()
                    )));
                }
                moment.set(t)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Minimising (x - 3)^2 from 0 reaches 3; the first step moves by exactly lr
    /// (Adam's bias-corrected first step is lr * g / |g|).
    #[test]
    fn converges_and_first_step_is_lr() {
        let x = Var::new(&[0f64], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![("x".into(), x.clone())], AdamConfig::default()).unwrap();
        let loss = |x: &Var| {
            (x.as_tensor() - 3.0)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        adam.step(&loss(&x).backward().unwrap(), 0.1).unwrap();
        let after_one = x.to_vec1::<f64>().unwrap()[0];
        assert!((after_one - 0.1).abs() < 1e-6, "{after_one}");
        for _ in 0..500 {
            adam.step(&loss(&x).backward().unwrap(), 0.1).unwrap();
        }
        assert!((x.to_vec1::<f64>().unwrap()[0] - 3.0).abs() < 1e-2);
    }
}
