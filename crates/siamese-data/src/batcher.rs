//! The one place where tensors are made: pixels become `f32` in `[0, 1]` shaped
//! `[B, 1, H, W]`, and pair labels become `same [B]` (1.0 = same class).

use candle_core::{Device, Tensor};

use crate::augment::Augmenter;
use crate::dataset::ImageSet;
use crate::error::DataError;
use crate::sampler::PairBatch;

/// A batch of pairs as tensors.
#[derive(Debug, Clone)]
pub struct PairTensors {
    /// First images, `[B, 1, H, W]` f32 in `[0, 1]`.
    pub left: Tensor,
    /// Second images, `[B, 1, H, W]` f32 in `[0, 1]`.
    pub right: Tensor,
    /// `[B]` f32: 1.0 when the pair is from the same class, else 0.0.
    pub same: Tensor,
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

    /// Both sides of a pair batch, and its labels; each image distorted by `augmenter`
    /// when one is given.
    pub fn pairs(
        &self,
        set: &ImageSet,
        batch: &PairBatch,
        augmenter: Option<&mut Augmenter>,
    ) -> Result<PairTensors, DataError> {
        let same: Vec<f32> = batch.same.iter().map(|&s| f32::from(u8::from(s))).collect();
        let (left, right) = match augmenter {
            Some(a) => (
                self.images_augmented(set, &batch.left, a)?,
                self.images_augmented(set, &batch.right, a)?,
            ),
            None => (
                self.images(set, &batch.left)?,
                self.images(set, &batch.right)?,
            ),
        };
        Ok(PairTensors {
            left,
            right,
            same: Tensor::from_vec(same, batch.len(), &self.device)?,
        })
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
        let t = batcher.pairs(&set, &batch, None).unwrap();
        assert_eq!(t.left.dims(), &[2, 1, 1, 2]);
        let left: Vec<f32> = t.left.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(left, vec![0.2, 0.4, 0.0, 1.0]);
        assert_eq!(t.same.to_vec1::<f32>().unwrap(), vec![0.0, 1.0]);
        let err = batcher.images(&set, &[2]).unwrap_err().to_string();
        assert!(err.contains("below 2"), "{err}");
    }
}
