//! The optimisers: Adam (Kingma & Ba), the default, and SGD with momentum, written out
//! so that their state can be saved in a checkpoint and a resumed run continues bit for
//! bit. No weight decay: candle-nn's `AdamW` defaults to 0.01, which the reference
//! program (TensorFlow's `AdamOptimizer`) does not have; `eps = 1e-8` as TensorFlow.
//!
//! SGD is there because Adam divides each gradient by its own running size: where the
//! true gradient is zero (a direction the loss cannot see) the computed one is rounding
//! noise, and Adam turns it into steps. Runs that differ only in rounding (one process
//! against several data-parallel ranks, which sum in another order) then part ways
//! after a few steps; under SGD they stay within rounding of each other (issue #26's
//! equivalence test, as PyTorch tests its DDP with SGD).
//!
//! On CPU f32 the update runs in place, in one pass per parameter over the parameter,
//! its gradient and both moments, split across the rayon pool (measured on 2 cores of
//! an AVX2 AMD EPYC, family 25 model 1, in alternating runs of `throughput train 20`:
//! 8.3-9.7 ms a step, against 14.5-17.4 ms for three passes, one per moment and one
//! for the parameter): the generic
//! tensor path makes a dozen full-size temporaries per parameter and step, which for the
//! 6.4 M weights of `fc1` cost more than the layer's matrix products. Other devices and
//! dtypes keep the tensor path; a test checks the two agree.

use std::cell::RefCell;

use candle_core::{backprop::GradStore, bail, CpuStorage, DType, InplaceOp1, Layout, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use siamese_state::{StateDict, StateError, Stateful};

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

/// SGD's constant: `velocity = momentum * velocity + gradient`, then
/// `parameter -= lr * velocity` (PyTorch's form; momentum 0 is plain SGD).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Share of the last velocity kept, in `[0, 1)`.
    pub momentum: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { momentum: 0.9 }
    }
}

impl SgdConfig {
    /// Refuses a momentum outside `[0, 1)` (NaN included): at 1 or more the velocity
    /// never forgets and the steps grow without bound.
    pub fn validate(&self) -> Result<(), TrainError> {
        if (0.0..1.0).contains(&self.momentum) {
            Ok(())
        } else {
            Err(TrainError::Config(format!(
                "SGD momentum must be in [0, 1), found {}",
                self.momentum
            )))
        }
    }
}

/// Which update rule, with its constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Adam.
    Adam(AdamConfig),
    /// SGD with momentum.
    Sgd(SgdConfig),
}

impl From<AdamConfig> for Method {
    fn from(config: AdamConfig) -> Self {
        Method::Adam(config)
    }
}

impl From<SgdConfig> for Method {
    fn from(config: SgdConfig) -> Self {
        Method::Sgd(config)
    }
}

/// The optimiser a trainer holds: Adam or SGD over named variables.
pub enum Optimizer {
    /// Adam.
    Adam(Adam),
    /// SGD with momentum.
    Sgd(Sgd),
}

impl Optimizer {
    /// An optimiser for `params` (name, variable) by `method`, its state at zero.
    pub fn new(params: Vec<(String, Var)>, method: impl Into<Method>) -> Result<Self, TrainError> {
        Ok(match method.into() {
            Method::Adam(config) => Optimizer::Adam(Adam::new(params, config)?),
            Method::Sgd(config) => Optimizer::Sgd(Sgd::new(params, config)?),
        })
    }

    /// The parameters it updates (name, variable), in its order.
    pub fn params(&self) -> &[(String, Var)] {
        match self {
            Optimizer::Adam(o) => o.params(),
            Optimizer::Sgd(o) => &o.params,
        }
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        match self {
            Optimizer::Adam(o) => o.step_count(),
            Optimizer::Sgd(o) => o.step,
        }
    }

    /// One update with learning rate `lr` from the gradients in `grads`; parameters
    /// without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        match self {
            Optimizer::Adam(o) => o.step(grads, lr),
            Optimizer::Sgd(o) => o.step(grads, lr),
        }
    }

    /// Uses the generic tensor-op update even where Adam's in-place one applies (for
    /// comparing the two; SGD has only the tensor path).
    pub fn use_tensor_ops(&mut self) {
        if let Optimizer::Adam(o) = self {
            o.use_tensor_ops();
        }
    }

    /// The name its state is saved under in a trainer's state: `adam` or `sgd`.
    pub fn state_key(&self) -> &'static str {
        match self {
            Optimizer::Adam(_) => "adam",
            Optimizer::Sgd(_) => "sgd",
        }
    }
}

impl Stateful for Optimizer {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        match self {
            Optimizer::Adam(o) => o.state_dict(),
            Optimizer::Sgd(o) => o.state_dict(),
        }
    }

    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        match self {
            Optimizer::Adam(o) => o.load_state_dict(state),
            Optimizer::Sgd(o) => o.load_state_dict(state),
        }
    }
}

/// SGD with momentum over named variables.
pub struct Sgd {
    config: SgdConfig,
    params: Vec<(String, Var)>,
    velocity: Vec<Var>,
    step: u64,
}

impl Sgd {
    /// An optimiser for `params` (name, variable), velocities at zero; a momentum
    /// outside `[0, 1)` is refused.
    pub fn new(params: Vec<(String, Var)>, config: SgdConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let velocity = params
            .iter()
            .map(|(_, p)| Var::zeros(p.shape(), p.dtype(), p.device()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config,
            params,
            velocity,
            step: 0,
        })
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        self.step += 1;
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            let v = ((self.velocity[i].as_tensor() * self.config.momentum)? + g)?;
            p.set(&(p.as_tensor() - (&v * lr)?)?)?;
            self.velocity[i].set(&v)?;
        }
        Ok(())
    }
}

/// SGD's state: the velocity under `"{name}.velocity"` for every parameter, and the
/// step count under `step`.
impl Stateful for Sgd {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        let mut state = StateDict::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            // A copy: the velocity is updated in place by later steps.
            let v = self.velocity[i].as_tensor().copy()?;
            state.insert_tensor(format!("{name}.velocity"), v);
        }
        state.insert_json("step", &self.step);
        Ok(state)
    }

    /// Every velocity must be present with its parameter's shape; nothing is written
    /// until all are checked.
    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        let step: u64 = state.json("step")?;
        for (i, (name, _)) in self.params.iter().enumerate() {
            state.tensor_like(&format!("{name}.velocity"), self.velocity[i].as_tensor())?;
        }
        for (i, (name, _)) in self.params.iter().enumerate() {
            self.velocity[i].set(state.tensor(&format!("{name}.velocity"))?)?;
        }
        self.step = step;
        Ok(())
    }
}

/// Adam over named variables.
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Var)>,
    first: Vec<Var>,
    second: Vec<Var>,
    step: u64,
    in_place: bool,
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
        let in_place = params
            .iter()
            .all(|(_, p)| p.device().is_cpu() && p.dtype() == DType::F32);
        Ok(Self {
            config,
            params,
            first,
            second,
            step: 0,
            in_place,
        })
    }

    /// Uses the generic tensor-op update even where the in-place one applies (for
    /// comparing the two).
    pub fn use_tensor_ops(&mut self) {
        self.in_place = false;
    }

    /// The parameters it updates (name, variable), in its order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
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
            if self.in_place {
                let update = Update {
                    beta1: beta1 as f32,
                    rest1: (1.0 - beta1) as f32,
                    beta2: beta2 as f32,
                    rest2: (1.0 - beta2) as f32,
                    lr: lr as f32,
                    c1: c1 as f32,
                    c2: c2 as f32,
                    eps: eps as f32,
                };
                let g = g.contiguous()?;
                let (gs, gl) = g.storage_and_layout();
                let g = match &*gs {
                    candle_core::Storage::Cpu(s) => contiguous(s, gl)?,
                    _ => {
                        let msg = "adam: the in-place update runs on the CPU";
                        return Err(candle_core::Error::Msg(msg.into()).into());
                    }
                };
                // One pass over parameter, gradient and both moments (three passes
                // read the gradient twice and the moments twice more).
                with_elements_mut(self.first[i].as_tensor(), |m| {
                    with_elements_mut(self.second[i].as_tensor(), |v| {
                        with_elements_mut(p.as_tensor(), |p| update.run(p, g, m, v))
                    })
                })?;
                continue;
            }
            let m = ((self.first[i].as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((self.second[i].as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = (m.affine(c1, 0.0)? / (v.affine(c2, 0.0)?.sqrt()? + eps)?)?;
            p.set(&(p.as_tensor() - (update * lr)?)?)?;
            self.first[i].set(&m)?;
            self.second[i].set(&v)?;
        }
        Ok(())
    }
}

/// Adam's state: the moments under `"{name}.m"` / `"{name}.v"` for every parameter, and
/// the step count under `step` (it sets the bias corrections).
impl Stateful for Adam {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        let mut state = StateDict::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            state.insert_tensor(format!("{name}.m"), self.first[i].as_tensor().clone());
            state.insert_tensor(format!("{name}.v"), self.second[i].as_tensor().clone());
        }
        state.insert_json("step", &self.step);
        Ok(state)
    }

    /// Every moment must be present with its parameter's shape; nothing is written
    /// until all are checked.
    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        let step: u64 = state.json("step")?;
        // The bias corrections raise beta to the step count as an i32 (`powi`): a
        // larger count (only a forged file holds one) would wrap and silently scale
        // every update.
        if step >= i32::MAX as u64 {
            return Err(state.invalid("step", format!("{step} steps is beyond any run")));
        }
        for (i, (name, _)) in self.params.iter().enumerate() {
            state.tensor_like(&format!("{name}.m"), self.first[i].as_tensor())?;
            state.tensor_like(&format!("{name}.v"), self.second[i].as_tensor())?;
        }
        for (i, (name, _)) in self.params.iter().enumerate() {
            self.first[i].set(state.tensor(&format!("{name}.m"))?)?;
            self.second[i].set(state.tensor(&format!("{name}.v"))?)?;
        }
        self.step = step;
        Ok(())
    }
}

/// Elements per rayon task in the in-place passes: large enough to amortise the
/// task, small enough to split `fc1` across the cores.
const PAR_CHUNK: usize = 1 << 15;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("adam: expected contiguous f32 tensors"),
    }
}

fn contiguous_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => bail!("adam: expected contiguous f32 tensors"),
    }
}

/// Runs `f` on the elements of a contiguous CPU f32 tensor, in place: candle writes
/// a tensor's storage only through an in-place op, so this is one that calls `f`.
/// Nested calls hold several tensors' storages at once (each its own lock).
fn with_elements_mut<R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&mut [f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    struct Op<F, R> {
        f: RefCell<Option<F>>,
        out: RefCell<Option<R>>,
    }
    impl<F: FnOnce(&mut [f32]) -> candle_core::Result<R>, R> InplaceOp1 for Op<F, R> {
        fn name(&self) -> &'static str {
            "adam_in_place"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
            let Some(f) = self.f.borrow_mut().take() else {
                bail!("adam: an in-place op ran twice")
            };
            *self.out.borrow_mut() = Some(f(contiguous_mut(s, l)?)?);
            Ok(())
        }
    }
    let op = Op {
        f: RefCell::new(Some(f)),
        out: RefCell::new(None),
    };
    t.inplace_op1(&op)?;
    match op.out.into_inner() {
        Some(out) => Ok(out),
        None => bail!("adam: the in-place update did not run (not a CPU tensor)"),
    }
}

/// One Adam update of a parameter in a single pass: both moments, then
/// `p -= lr * (c1 m) / (sqrt(c2 v) + eps)` (the bias-corrected step). Each element's
/// arithmetic is the tensor path's, in the same order, so the two agree.
#[derive(Clone, Copy)]
struct Update {
    beta1: f32,
    /// `1 - beta1`, rounded from f64 as the tensor path rounds it.
    rest1: f32,
    beta2: f32,
    rest2: f32,
    lr: f32,
    c1: f32,
    c2: f32,
    eps: f32,
}

impl Update {
    fn run(
        self,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) -> candle_core::Result<()> {
        if p.len() != g.len() || p.len() != m.len() || p.len() != v.len() {
            bail!("adam: parameter, gradient and moment sizes differ");
        }
        let Update {
            beta1,
            rest1,
            beta2,
            rest2,
            lr,
            c1,
            c2,
            eps,
        } = self;
        p.par_chunks_mut(PAR_CHUNK)
            .zip(g.par_chunks(PAR_CHUNK))
            .zip(m.par_chunks_mut(PAR_CHUNK))
            .zip(v.par_chunks_mut(PAR_CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    *m = beta1 * *m + rest1 * g;
                    *v = beta2 * *v + rest2 * (g * g);
                    *p -= lr * (c1 * *m) / ((c2 * *v).sqrt() + eps);
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

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

    /// SGD with momentum 0.5 on (x - 3)^2 from 0: the first two steps by hand
    /// (gradient -6, velocity -6, x 0.6; gradient -4.8, velocity -7.8, x 1.38), then
    /// convergence; a restored optimiser continues bit for bit; a bad momentum and a
    /// state without a velocity are refused.
    #[test]
    fn sgd_follows_its_formula_and_resumes() {
        let x = Var::new(&[0f64], &Device::Cpu).unwrap();
        let config = SgdConfig { momentum: 0.5 };
        let mut sgd = Optimizer::new(vec![("x".into(), x.clone())], config).unwrap();
        let grad = |x: &Var| {
            let loss = (x.as_tensor() - 3.0).unwrap().sqr().unwrap();
            loss.sum_all().unwrap().backward().unwrap()
        };
        sgd.step(&grad(&x), 0.1).unwrap();
        assert!((x.to_vec1::<f64>().unwrap()[0] - 0.6).abs() < 1e-12);
        sgd.step(&grad(&x), 0.1).unwrap();
        assert!((x.to_vec1::<f64>().unwrap()[0] - 1.38).abs() < 1e-12);
        assert_eq!((sgd.state_key(), sgd.step_count()), ("sgd", 2));
        let saved = sgd.state_dict().unwrap();
        let at = x.to_vec1::<f64>().unwrap();
        for _ in 0..200 {
            sgd.step(&grad(&x), 0.1).unwrap();
        }
        let ran_on = x.to_vec1::<f64>().unwrap();
        assert!((ran_on[0] - 3.0).abs() < 1e-6, "{ran_on:?}");
        let y = Var::new(at.as_slice(), &Device::Cpu).unwrap();
        let mut resumed = Optimizer::new(vec![("x".into(), y.clone())], config).unwrap();
        resumed.load_state_dict(&saved).unwrap();
        for _ in 0..200 {
            resumed.step(&grad(&y), 0.1).unwrap();
        }
        assert_eq!(y.to_vec1::<f64>().unwrap(), ran_on);
        for momentum in [1.0, -0.1, f64::NAN] {
            let params = vec![("x".into(), x.clone())];
            assert!(Optimizer::new(params, SgdConfig { momentum }).is_err());
        }
        let mut empty = StateDict::new();
        empty.insert_json("step", &3u64);
        let err = resumed.load_state_dict(&empty).unwrap_err().to_string();
        assert!(err.contains("x.velocity"), "{err}");
        assert_eq!(resumed.step_count(), 202, "a refused state changes nothing");
    }

    /// One Adam step on `|x - target|^2`.
    fn step_towards(target: &Tensor, x: &Var, adam: &mut Adam, lr: f64) {
        let loss = (x.as_tensor() - target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        adam.step(&loss.backward().unwrap(), lr).unwrap();
    }

    /// The in-place CPU update and the tensor-op update agree to f32 rounding over
    /// several steps, on a parameter larger than one parallel chunk.
    #[test]
    fn in_place_update_matches_tensor_ops() {
        let n = 3 * PAR_CHUNK + 17;
        let init: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let target: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 997) as f32 / 400.0)
            .collect();
        let target = Tensor::from_vec(target, n, &Device::Cpu).unwrap();
        let run = |in_place: bool| {
            let x = Var::from_tensor(&Tensor::from_vec(init.clone(), n, &Device::Cpu).unwrap())
                .unwrap();
            let mut adam = Adam::new(vec![("x".into(), x.clone())], AdamConfig::default()).unwrap();
            assert!(adam.in_place);
            if !in_place {
                adam.use_tensor_ops();
            }
            for _ in 0..5 {
                step_towards(&target, &x, &mut adam, 0.01);
            }
            let state = adam.state_dict().unwrap();
            let v = state.tensor("x.v").unwrap().to_vec1::<f32>().unwrap();
            (x.to_vec1::<f32>().unwrap(), v)
        };
        let (fast, fast_v) = run(true);
        let (plain, plain_v) = run(false);
        assert_ne!(fast, init, "the parameters moved");
        for (a, b) in fast.iter().zip(&plain).chain(fast_v.iter().zip(&plain_v)) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }

    /// A restored optimiser continues bit for bit; a state that lacks a moment or has
    /// the wrong shape is refused, named, and changes nothing.
    #[test]
    fn state_round_trips_and_bad_states_change_nothing() {
        let target = Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).unwrap();
        let make = || {
            let x = Var::from_tensor(&Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()).unwrap();
            let adam = Adam::new(vec![("x".into(), x.clone())], AdamConfig::default()).unwrap();
            (x, adam)
        };
        let step = |x: &Var, adam: &mut Adam| step_towards(&target, x, adam, 0.05);
        let (xa, mut a) = make();
        for _ in 0..3 {
            step(&xa, &mut a);
        }
        let saved = a.state_dict().unwrap();
        let (xb, mut b) = make();
        xb.set(xa.as_tensor()).unwrap();
        b.load_state_dict(&saved).unwrap();
        assert_eq!(b.step_count(), 3);
        step(&xa, &mut a);
        step(&xb, &mut b);
        assert_eq!(xa.to_vec1::<f32>().unwrap(), xb.to_vec1::<f32>().unwrap());

        let (_, mut c) = make();
        let mut lacking = StateDict::new();
        lacking.insert_json("step", &3u64);
        lacking.insert_tensor("x.m", saved.tensor("x.m").unwrap().clone());
        let err = c.load_state_dict(&lacking).unwrap_err().to_string();
        assert_eq!(err, "the state lacks \"x.v\"");
        let mut wrong = lacking.clone();
        wrong.insert_tensor("x.v", Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap());
        assert!(c
            .load_state_dict(&wrong)
            .unwrap_err()
            .to_string()
            .contains("[4]"));
        let mut forged = saved.clone();
        forged.insert_json("step", &(1u64 << 40));
        let err = c.load_state_dict(&forged).unwrap_err().to_string();
        assert!(err.contains("\"step\"") && err.contains("beyond"), "{err}");
        assert_eq!(c.step_count(), 0);
        let m = c
            .state_dict()
            .unwrap()
            .tensor("x.m")
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(m, [0.0; 3], "a refused state wrote nothing");
    }
}
