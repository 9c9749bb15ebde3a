//! The model of a Siamese network on candle: the conv tower of the reference program
//! (usable alone, to embed images), the pair model that shares it between both sides,
//! and self-describing safetensors checkpoints. On CPU f32 the tower's layers run as
//! the fused kernels of [`kernels`] (same results as plain candle, several times
//! faster); elsewhere, as plain candle layers.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use siamese_model::{ConvTower, Embedder, SiameseModel, TowerConfig};
//!
//! // The reference architecture: 28x28 grayscale in, a 2-D embedding out.
//! let config = TowerConfig::default();
//! let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, /* seed */ 0)?;
//! let images = Tensor::zeros((3, 1, 28, 28), DType::F32, &Device::Cpu)?;
//! let embeddings = tower.forward_t(&images, /* train */ false)?;
//! assert_eq!(embeddings.dims(), &[3, 2]);
//!
//! // The pair model runs the one tower once over both sides.
//! let model = SiameseModel::new(tower);
//! let (left, right) = model.forward_pair(&images, &images, false)?;
//! assert_eq!(left.to_vec2::<f32>()?, right.to_vec2::<f32>()?);
//!
//! // Checkpoints carry their config: loading needs only the file.
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("model.safetensors");
//! siamese_model::checkpoint::save(&path, &varmap, &config, &Default::default())?;
//! let (loaded, _, _) = siamese_model::checkpoint::load_tower(&path, &Device::Cpu, 0)?;
//! assert_eq!(loaded.forward_t(&images, false)?.to_vec2::<f32>()?, left.to_vec2::<f32>()?);
//! # Ok::<(), siamese_model::ModelError>(())
//! ```
//!
//! # Loading a checkpoint in PyTorch
//!
//! Tensor names and layouts are PyTorch's, so `safetensors.torch.load_file(path)` gives
//! a state dict for this module (reference defaults shown):
//!
//! | checkpoint tensors | PyTorch module |
//! |---|---|
//! | `conv{i}.weight` `[out, in, k, k]`, `conv{i}.bias` | `nn.Conv2d(in, out, k, stride)` |
//! | `fc{j}.weight` `[out, in]`, `fc{j}.bias` | `nn.Linear(in, out)` |
//! | `bn{j}.weight`, `.bias`, `.running_mean`, `.running_var` | `nn.BatchNorm1d(width, eps=1e-3, momentum=0.01)` |
//!
//! The forward pass is: each conv, then ReLU; flatten (NCHW order, `x.flatten(1)`);
//! for each hidden layer `fc{j}`, ReLU, dropout, `bn{j}`; then the last `fc` (the
//! embedding). The config (`json.loads(metadata["model_config"])`, from
//! `safetensors.safe_open(path, "pt").metadata()`) gives the sizes. With the default
//! `padding: "tf_same"`, a stride-2 convolution of an even input pads one row and column
//! at the bottom and right only (TensorFlow's `SAME`): in PyTorch, `F.pad(x, (0, 1, 0, 1))`
//! then `nn.Conv2d(..., padding=0)`; stride-1 convolutions use `padding=1`. With
//! `padding: "symmetric"`, every conv is `nn.Conv2d(..., padding=k // 2)`.

pub mod checkpoint;
pub mod config;
pub mod data_parallel;
pub mod error;
pub mod init;
pub mod kernels;
pub mod pair;
pub mod tower;
pub mod uniform_shift;

pub use checkpoint::Checkpoint;
pub use config::{Padding, TowerConfig, TowerLayer};
pub use error::ModelError;
pub use pair::SiameseModel;
/// The state protocol the tower implements, re-exported so a custom embedder needs no
/// other dependency.
pub use siamese_state::{StateDict, StateError, Stateful};
pub use tower::{ConvTower, DropoutState, Embedder, OneView};
pub use uniform_shift::ShiftActivity;
