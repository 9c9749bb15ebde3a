//! The reference program's initialisation: weights from a normal distribution of
//! standard deviation `init_std` truncated at two standard deviations (TensorFlow's
//! `truncated_normal`: draws beyond 2 sd are drawn again), zero biases; batch norm
//! starts as the identity (weight 1, bias 0, running mean 0, running variance 1).

use candle_core::Tensor;
use candle_nn::VarMap;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::TowerConfig;
use crate::error::ModelError;
use crate::tower::assign;

/// One draw of a standard normal truncated to `[-2, 2]` (Box-Muller, with rejection).
fn truncated_standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    loop {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
        let u2: f64 = rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        if z.abs() <= 2.0 {
            return z;
        }
    }
}

/// Sets every parameter of a tower built on `varmap`, deterministically from `seed`
/// (parameters are visited in the fixed order of [`TowerConfig::parameter_shapes`]).
pub fn reference_init(varmap: &VarMap, config: &TowerConfig, seed: u64) -> Result<(), ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let device = varmap
        .all_vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    for (name, shape) in config.parameter_shapes() {
        let n: usize = shape.iter().product();
        let value = if name.starts_with("bn") || name.contains(".bn.") {
            let one = name.ends_with(".weight") || name.ends_with(".running_var");
            Tensor::full(if one { 1f32 } else { 0f32 }, shape.as_slice(), &device)?
        } else if name.ends_with(".weight") {
            let values: Vec<f32> = (0..n)
                .map(|_| (truncated_standard_normal(&mut rng) * config.init_std) as f32)
                .collect();
            Tensor::from_vec(values, shape.as_slice(), &device)?
        } else {
            Tensor::zeros(shape.as_slice(), candle_core::DType::F32, &device)?
        };
        assign(varmap, &name, &value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConvTower;

    #[test]
    fn weights_are_truncated_normal_and_biases_zero() {
        let config = TowerConfig::default();
        let (_, varmap) = ConvTower::init(&config, &candle_core::Device::Cpu, 3).unwrap();
        let data = varmap.data().lock().unwrap();
        let w: Vec<f32> = data["fc1.weight"].flatten_all().unwrap().to_vec1().unwrap();
        let n = w.len() as f64;
        let mean = w.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let sd = (w
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        // A normal truncated at 2 sd has sd 0.05 * 0.8796 = 0.04398.
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((sd - 0.04398).abs() < 2e-4, "sd {sd}");
        assert!(w.iter().all(|x| x.abs() <= 0.1 + 1e-7));
        let b: Vec<f32> = data["conv2.bias"].to_vec1().unwrap();
        assert!(b.iter().all(|&x| x == 0.0));
        let v: Vec<f32> = data["bn1.running_var"].to_vec1().unwrap();
        assert!(v.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn same_seed_same_weights() {
        let config = TowerConfig {
            fc_widths: vec![16],
            conv_channels: vec![4],
            conv_strides: vec![2],
            ..Default::default()
        };
        let get = |seed| {
            let (_, vm) = ConvTower::init(&config, &candle_core::Device::Cpu, seed).unwrap();
            let data = vm.data().lock().unwrap();
            data["conv1.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get(1), get(1));
        assert_ne!(get(1), get(2));
    }
}
