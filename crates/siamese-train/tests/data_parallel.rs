//! Data-parallel training (issue #26) against one process, with ranks as threads
//! (siamese-collective's `ThreadGroup`; the MPI implementation is checked across real
//! processes in that crate): 2 ranks with an episode of 12 images, embedding 6 each, end
//! 20 steps with the parameters of one process training on the whole episode, and every
//! rank holds the same bits after every step. The recipe is the faces one in small:
//! prototypical episodes, augmentation, four strided convolutions (no batch norm, no
//! dropout).

use candle_core::Device;
use siamese_collective::{Collective, SingleProcess, ThreadGroup};
use siamese_data::{AugmentConfig, Augmenter, Batcher, EpisodeSampler, ImageSet, Layout};
use siamese_loss::Prototypical;
use siamese_model::{ConvTower, TowerConfig};
use siamese_train::{AdamConfig, Trainer};

const STEPS: u64 = 20;
const LR: f64 = 1e-3;

fn images() -> ImageSet {
    let (side, classes, per_class) = (12, 10, 6);
    let n = classes * per_class;
    let pixels: Vec<u8> = (0..n * side * side)
        .map(|i| {
            let (image, p) = (i / (side * side), i % (side * side));
            let class = image / per_class;
            let on = (p / side + p % side * class) % 7 < 2;
            (if on { 200 } else { 30 } + (i * 31 % 40)) as u8
        })
        .collect();
    let labels: Vec<u32> = (0..n).map(|i| (i / per_class) as u32).collect();
    ImageSet::new(side, side, classes, pixels, labels, "synthetic".as_ref()).unwrap()
}

/// A trainer of the faces recipe in small, its parameters set to `values` (in
/// [`ConvTower::trainable_parameters`] order) when given.
fn trainer(
    set: &ImageSet,
    values: Option<&[f32]>,
) -> (
    Trainer<EpisodeSampler, ConvTower, Prototypical>,
    Vec<(String, candle_core::Var)>,
) {
    let config = TowerConfig::strided_four(12, 12, 8);
    let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, 7).unwrap();
    let (ways, shots, queries) = (4, 1, 2);
    let sampler = EpisodeSampler::new(set.labels(), ways, shots, queries, 11).unwrap();
    let loss = Prototypical {
        ways,
        shots,
        queries,
    };
    let params = ConvTower::trainable_parameters(&varmap);
    if let Some(values) = values {
        let mut at = 0;
        for (_, var) in &params {
            let n = var.elem_count();
            let t = candle_core::Tensor::from_slice(&values[at..at + n], var.shape(), &Device::Cpu);
            var.set(&t.unwrap()).unwrap();
            at += n;
        }
    }
    let mut trainer = Trainer::new(
        sampler,
        tower,
        loss,
        params.clone(),
        AdamConfig::default(),
        Batcher::new(Device::Cpu),
    )
    .unwrap();
    trainer.augmenter = Some(Augmenter::new(AugmentConfig::default(), 13).unwrap());
    trainer.layout = Layout::Pairs;
    (trainer, params)
}

fn flat(params: &[(String, candle_core::Var)]) -> Vec<f32> {
    params
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// Trains 20 steps as one rank of `collective`; returns every parameter's values after
/// each step.
fn train(set: &ImageSet, collective: &dyn Collective) -> Vec<Vec<f32>> {
    let (mut trainer, params) = trainer(set, None);
    (0..STEPS)
        .map(|step| {
            let loss = trainer
                .step_data_parallel(set, 0, LR, step, collective, true)
                .unwrap();
            assert!(loss.is_finite());
            flat(&params)
        })
        .collect()
}

/// The gradients of one step from parameters `values`, summed over the ranks of
/// `collective`: what the whole data-parallel path (shards, gather, backward, fused
/// all-reduce) computes for the same episode, before Adam.
fn gradients(set: &ImageSet, values: &[f32], collective: &dyn Collective) -> Vec<f32> {
    let (mut trainer, params) = trainer(set, Some(values));
    let (_, grads) = trainer
        .gradients_data_parallel(set, 0, 0, collective)
        .unwrap();
    params
        .iter()
        .flat_map(|(_, v)| {
            grads
                .get(v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    let norm =
        |v: &mut dyn Iterator<Item = f32>| v.map(|x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    norm(&mut a.iter().zip(b).map(|(x, y)| x - y)) / norm(&mut b.iter().copied())
}

/// Every rank holds the same bits after every step, and from the same parameters the
/// ranks' summed gradient is the one-process gradient: at the start and at 5 points of a
/// one-process run.
#[test]
fn two_ranks_make_the_one_process_update_and_stay_identical() {
    let set = images();
    let one = train(&set, &SingleProcess);
    let ranks = ThreadGroup::run(2, |c| train(&set, c));
    for (step, (a, b)) in ranks[0].iter().zip(&ranks[1]).enumerate() {
        assert!(
            a == b,
            "the ranks' parameters differ after step {}",
            step + 1
        );
    }
    for at in [None, Some(3usize), Some(7), Some(11), Some(15), Some(19)] {
        let values = match at {
            None => flat(&trainer(&set, None).1),
            Some(step) => one[step].clone(),
        };
        let want = gradients(&set, &values, &SingleProcess);
        let got = ThreadGroup::run(2, |c| gradients(&set, &values, c));
        assert_eq!(got[0], got[1], "ranks disagree from step {at:?}");
        let r = relative(&got[0], &want);
        eprintln!("gradient from step {at:?}: relative difference {r:e}");
        assert!(r <= 1e-5, "from step {at:?}: relative difference {r}");
    }
    // Whole trajectories drift apart (measured, not bounded): see the README.
    let drift = relative(ranks[0].last().unwrap(), one.last().unwrap());
    eprintln!("parameters after {STEPS} steps: relative difference {drift:e}");
}

#[test]
fn a_tower_with_batch_norm_or_dropout_in_training_is_refused_not_approximated() {
    let set = images();
    let results = ThreadGroup::run(2, |c| {
        let config = TowerConfig::four_block(16, 16, 8);
        let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, 7).unwrap();
        let sampler = EpisodeSampler::new(set.labels(), 4, 1, 2, 11).unwrap();
        let loss = Prototypical {
            ways: 4,
            shots: 1,
            queries: 2,
        };
        let params = ConvTower::trainable_parameters(&varmap);
        let mut trainer = Trainer::new(
            sampler,
            tower,
            loss,
            params,
            AdamConfig::default(),
            Batcher::new(Device::Cpu),
        )
        .unwrap();
        trainer
            .step_data_parallel(&set, 0, 1e-3, 0, c, false)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    for r in results {
        let err = r.unwrap_err();
        assert!(err.contains("batch norm or dropout"), "{err}");
    }
}
