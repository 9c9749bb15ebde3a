//! The state protocol from a user's side: a sampler written outside this workspace
//! implements `Stateful`, and a trainer built with it saves and resumes bit for bit
//! through `Trainer`'s own `Stateful` implementation, with no code of the run's.

use std::path::Path;

use candle_core::Device;
use siamese_data::{Batcher, ImageSet, PairBatch, PairSampler, StateDict, StateError, Stateful};
use siamese_loss::{Chopra2005, Euclidean, MinedLoss, PairedHalves, Reduction};

/// The reference program's loss: the sampled pairs, Chopra 2005, averaged.
type SampledChopra = MinedLoss<PairedHalves, Euclidean, Chopra2005>;
use siamese_model::{ConvTower, TowerConfig};
use siamese_train::{AdamConfig, Trainer};

/// Pairs each image with the next one, from a cursor that walks the set: its whole
/// state is the cursor.
struct Walk {
    labels: Vec<u32>,
    cursor: usize,
}

impl PairSampler for Walk {
    fn sample(&mut self, batch_size: usize) -> PairBatch {
        let n = self.labels.len();
        let mut batch = PairBatch::default();
        for _ in 0..batch_size {
            let (a, b) = (self.cursor % n, (self.cursor * 7 + 1) % n);
            batch.left.push(a);
            batch.right.push(b);
            batch.same.push(self.labels[a] == self.labels[b]);
            self.cursor += 1;
        }
        batch
    }
}

impl Stateful for Walk {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        let mut state = StateDict::new();
        state.insert_json("cursor", &self.cursor);
        Ok(state)
    }

    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        self.cursor = state.json("cursor")?;
        Ok(())
    }
}

fn images() -> ImageSet {
    let (side, n) = (8, 64);
    let labels: Vec<u32> = (0..n).map(|i| (i % 4) as u32).collect();
    let pixels: Vec<u8> = (0..n * side * side)
        .map(|i| {
            let (img, px) = (i / (side * side), i % (side * side));
            if px / 16 == img % 4 {
                200
            } else {
                ((i * 37) % 50) as u8
            }
        })
        .collect();
    ImageSet::new(side, side, 4, pixels, labels, Path::new("walk")).unwrap()
}

type WalkTrainer = Trainer<Walk, ConvTower, SampledChopra>;

fn trainer(set: &ImageSet, seed: u64) -> WalkTrainer {
    let config = TowerConfig {
        input_height: 8,
        input_width: 8,
        conv_channels: vec![4],
        conv_strides: vec![2],
        fc_widths: vec![16],
        embedding_dim: 2,
        ..Default::default()
    };
    let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, seed).unwrap();
    let params = ConvTower::trainable_parameters(&varmap);
    let sampler = Walk {
        labels: set.labels().to_vec(),
        cursor: seed as usize,
    };
    Trainer::new(
        sampler,
        tower,
        MinedLoss::new(
            PairedHalves,
            Euclidean::default(),
            Chopra2005::default(),
            Reduction::Mean,
        ),
        params,
        AdamConfig::default(),
        Batcher::new(Device::Cpu),
    )
    .unwrap()
}

fn losses(t: &mut WalkTrainer, set: &ImageSet, steps: u64) -> Vec<f64> {
    (0..steps)
        .map(|s| t.step(set, 16, 1e-3, s).unwrap())
        .collect()
}

#[test]
fn a_trainer_with_a_custom_sampler_resumes_from_a_saved_state() {
    let set = images();
    let mut whole = trainer(&set, 1);
    losses(&mut whole, &set, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    whole.state_dict().unwrap().save(&path).unwrap();
    let expected = losses(&mut whole, &set, 5);

    // Another seed for everything (weights, dropout, cursor): the state replaces it.
    let mut resumed = trainer(&set, 99);
    let state = StateDict::load(&path, &Device::Cpu).unwrap();
    assert_eq!(
        state.child("sampler").json::<usize>("cursor").unwrap(),
        1 + 5 * 16
    );
    resumed.load_state_dict(&state).unwrap();
    assert_eq!(losses(&mut resumed, &set, 5), expected);
    let weights = |t: &WalkTrainer| {
        let s = t.state_dict().unwrap();
        s.tensors()
            .map(|(k, t)| {
                (
                    k.to_string(),
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        weights(&whole),
        weights(&resumed),
        "weights and moments bit for bit"
    );

    // A state without the sampler's part is refused, naming the entry.
    let mut lacking = StateDict::new();
    lacking.nest("model", state.child("model"));
    lacking.nest("adam", state.child("adam"));
    let err = trainer(&set, 3)
        .load_state_dict(&lacking)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "the state lacks \"sampler.cursor\"");
}
