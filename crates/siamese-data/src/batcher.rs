//! The one place where tensors are made: pixels become `f32` in `[0, 1]` shaped
//! `[B, 1, H, W]`.
//!
//! A training step takes its batch as a [`LabelledBatch`]: the step's images in one
//! tensor with one label per image, laid out as a [`Layout`] says, so the loss side
//! (which pairs to score, which rows are views of one image) needs nothing else.

use candle_core::{Device, Tensor};

use crate::augment::Augmenter;
use crate::dataset::ImageSet;
use crate::episode::{Draw, Episode};
use crate::error::DataError;
use crate::sampler::PairBatch;

/// How a pair batch's images are laid out in a [`LabelledBatch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Each pair's first image, then each pair's second image: `2B` rows, rows `i` and
    /// `i + B` the `i`-th drawn pair (the reference program's two batches, as one).
    #[default]
    Pairs,
    /// Two augmented views of each of those `2B` images: `4B` rows, rows `i` and
    /// `i + 2B` two views of one image (for a self-supervised term). Needs an augmenter.
    TwoViews,
}

/// A training step's images with one label per image: everything the loss side needs.
#[derive(Debug, Clone)]
pub struct LabelledBatch {
    /// `[N, 1, H, W]` f32 in `[0, 1]`.
    pub images: Tensor,
    /// The class of each image, `N` of them.
    pub labels: Vec<u32>,
}

/// A pixel as the network sees it: `p / 255` in `[0, 1]`. Division rather than a
/// multiplication by 1/255: exact rounding, so 51 -> 0.2. Every path from bytes to the
/// network (batches, the pixel baseline, `verify`'s image files) goes through it.
pub fn unit_pixel(p: u8) -> f32 {
    f32::from(p) / 255.0
}

/// Turns index batches into tensors on one device.
#[derive(Debug, Clone)]
pub struct Batcher {
    device: Device,
}

impl Batcher {
    /// A batcher that puts its tensors on `device`.
    pub fn new(device: Device) -> Self {
        Self { device }
    }

    /// The device tensors are put on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The images at `indices`, as `[B, 1, H, W]` f32 in `[0, 1]`.
    pub fn images(&self, set: &ImageSet, indices: &[usize]) -> Result<Tensor, DataError> {
        let n = set.image_len();
        let mut data = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            check_index(set, i)?;
            data.extend(set.image(i).iter().copied().map(unit_pixel));
        }
        Ok(Tensor::from_vec(
            data,
            (indices.len(), 1, set.rows(), set.cols()),
            &self.device,
        )?)
    }

    /// Images given as bytes (`rows * cols` per image, one after another, as
    /// [`read_image`](crate::read_image) returns them), as `[B, 1, H, W]` f32 in `[0, 1]`.
    pub fn raw_images(&self, pixels: &[u8], rows: usize, cols: usize) -> Result<Tensor, DataError> {
        let per_image = rows * cols;
        if per_image == 0 || !pixels.len().is_multiple_of(per_image) {
            return Err(DataError::Unexpected {
                what: "image bytes".into(),
                expected: format!("whole {rows}x{cols} images"),
                found: format!("{} bytes", pixels.len()),
            });
        }
        let data: Vec<f32> = pixels.iter().copied().map(unit_pixel).collect();
        Ok(Tensor::from_vec(
            data,
            (pixels.len() / per_image, 1, rows, cols),
            &self.device,
        )?)
    }

    /// The images at `indices`, each distorted by `augmenter`, as `[B, 1, H, W]` f32
    /// in `[0, 1]`.
    pub fn images_augmented(
        &self,
        set: &ImageSet,
        indices: &[usize],
        augmenter: &mut Augmenter,
    ) -> Result<Tensor, DataError> {
        let n = set.image_len();
        let mut data = vec![0f32; indices.len() * n];
        for (&i, out) in indices.iter().zip(data.chunks_exact_mut(n)) {
            check_index(set, i)?;
            augmenter.apply(set.image(i), set.rows(), set.cols(), out);
        }
        Ok(Tensor::from_vec(
            data,
            (indices.len(), 1, set.rows(), set.cols()),
            &self.device,
        )?)
    }

    /// The images of `pairs` laid out as `layout` says, each with its class; each image
    /// distorted by `augmenter` when one is given (in row order, so the same seed gives
    /// the same distortions).
    pub fn labelled(
        &self,
        set: &ImageSet,
        pairs: &PairBatch,
        layout: Layout,
        augmenter: Option<&mut Augmenter>,
    ) -> Result<LabelledBatch, DataError> {
        let sides = pairs.left.iter().chain(&pairs.right).copied();
        let rows: Vec<usize> = match layout {
            Layout::Pairs => sides.collect(),
            Layout::TwoViews => sides.clone().chain(sides).collect(),
        };
        let images = match (layout, augmenter) {
            (_, Some(augmenter)) => self.images_augmented(set, &rows, augmenter)?,
            (Layout::Pairs, None) => self.images(set, &rows)?,
            (Layout::TwoViews, None) => {
                return Err(DataError::Sampler(
                    "two views of each image need an augmenter: without one both views \
                     are the same image"
                        .into(),
                ))
            }
        };
        let labels = rows.iter().map(|&i| set.labels()[i]).collect();
        Ok(LabelledBatch { images, labels })
    }

    /// The images of `episode`: its support rows, then its query rows (each class-major,
    /// as the prototypical loss reads them), each with its class; distorted by
    /// `augmenter` when one is given.
    pub fn episode(
        &self,
        set: &ImageSet,
        episode: &Episode,
        augmenter: Option<&mut Augmenter>,
    ) -> Result<LabelledBatch, DataError> {
        let rows: Vec<usize> = episode
            .support
            .iter()
            .chain(&episode.query)
            .copied()
            .collect();
        let images = match augmenter {
            Some(augmenter) => self.images_augmented(set, &rows, augmenter)?,
            None => self.images(set, &rows)?,
        };
        let labels = rows.iter().map(|&i| set.labels()[i]).collect();
        Ok(LabelledBatch { images, labels })
    }

    /// The images a training step drew: pairs laid out as `layout` says, or an episode.
    pub fn drawn(
        &self,
        set: &ImageSet,
        draw: &Draw,
        layout: Layout,
        augmenter: Option<&mut Augmenter>,
    ) -> Result<LabelledBatch, DataError> {
        match draw {
            Draw::Pairs(pairs) => self.labelled(set, pairs, layout, augmenter),
            Draw::Episode(episode) => self.episode(set, episode, augmenter),
        }
    }
}

fn check_index(set: &ImageSet, i: usize) -> Result<(), DataError> {
    if i >= set.len() {
        return Err(DataError::Unexpected {
            what: "image index".into(),
            expected: format!("below {}", set.len()),
            found: i.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn pixels_are_scaled_and_shaped() {
        let set =
            ImageSet::new(1, 2, 2, vec![0, 255, 51, 102], vec![0, 1], Path::new("t")).unwrap();
        let batcher = Batcher::new(Device::Cpu);
        let batch = PairBatch {
            left: vec![1, 0],
            right: vec![0, 0],
            same: vec![false, true],
        };
        let t = batcher.labelled(&set, &batch, Layout::Pairs, None).unwrap();
        assert_eq!(t.images.dims(), &[4, 1, 1, 2]);
        let pixels: Vec<f32> = t.images.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(pixels, vec![0.2, 0.4, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        assert_eq!(t.labels, vec![1, 0, 0, 0]);
        let err = batcher.images(&set, &[2]).unwrap_err().to_string();
        assert!(err.contains("below 2"), "{err}");
    }

    /// The labelled layouts hold each pair's first images, then its second images (and
    /// for two views, all of them twice), with each image's class beside it.
    #[test]
    fn labelled_batches_lay_out_pairs_and_views() {
        let pixels: Vec<u8> = (0..16).map(|i| i * 16).collect();
        let set = ImageSet::new(2, 2, 3, pixels, vec![0, 2, 1, 2], Path::new("t")).unwrap();
        let batcher = Batcher::new(Device::Cpu);
        let pairs = PairBatch {
            left: vec![3, 0],
            right: vec![1, 2],
            same: vec![true, false],
        };
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let batch = batcher.labelled(&set, &pairs, Layout::Pairs, None).unwrap();
        let (left, right) = (
            batcher.images(&set, &pairs.left).unwrap(),
            batcher.images(&set, &pairs.right).unwrap(),
        );
        assert_eq!(batch.images.dims(), &[4, 1, 2, 2]);
        assert_eq!(flat(&batch.images), [flat(&left), flat(&right)].concat());
        assert_eq!(batch.labels, [2, 0, 2, 1]);

        // Two views: the same draws as augmenting the 2B images twice in a row.
        let config = crate::AugmentConfig::default();
        let mut a = Augmenter::new(config, 9).unwrap();
        let mut b = Augmenter::new(config, 9).unwrap();
        let views = batcher
            .labelled(&set, &pairs, Layout::TwoViews, Some(&mut a))
            .unwrap();
        let once = batcher
            .images_augmented(&set, &[3, 0, 1, 2], &mut b)
            .unwrap();
        let twice = batcher
            .images_augmented(&set, &[3, 0, 1, 2], &mut b)
            .unwrap();
        assert_eq!(views.images.dims(), &[8, 1, 2, 2]);
        assert_eq!(flat(&views.images), [flat(&once), flat(&twice)].concat());
        assert_eq!(views.labels, [2, 0, 2, 1, 2, 0, 2, 1]);
        let err = batcher
            .labelled(&set, &pairs, Layout::TwoViews, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("augmenter"), "{err}");
    }
}
