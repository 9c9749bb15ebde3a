//! Which entries of a shift parameter moved every embedding of a batch by one common
//! vector, so that a loss seeing only differences of embeddings gave them a zero true
//! gradient in that step.
//!
//! A shift before a ReLU (a convolution's bias, or batch norm's) reaches an output cell
//! only where the ReLU passed. When the cells after it go linearly to the embedding (the
//! last convolution straight to the linear head), an entry that, at every cell, passed
//! for every image of the batch or for none adds the same vector to every embedding:
//! its true gradient under a translation-invariant loss is zero, and the computed one is
//! rounding noise, which Adam (dividing each gradient by its own size) would turn into
//! steps that differ between one process and several ranks. Which entries those are
//! depends on the batch, so the tower reports the pattern after each training forward
//! ([`crate::Embedder::shift_activity`]) and the trainer leaves them out of that step.
//!
//! ```
//! use siamese_model::ShiftActivity;
//!
//! // Two entries, two cells each. Entry 0 passed at cell 0 for every image and at cell
//! // 1 for none: a common shift. Entry 1 passed at cell 1 for some images only.
//! let activity = ShiftActivity {
//!     name: "conv4.bias".into(),
//!     cells: 2,
//!     every_image: vec![true, false, true, false],
//!     no_image: vec![false, true, false, false],
//! };
//! assert_eq!(activity.uniform(), [true, false]);
//! ```

/// How the entries of one shift parameter reached a batch's outputs, cell by cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftActivity {
    /// The parameter (one entry per channel).
    pub name: String,
    /// Output cells per entry (a channel's positions).
    pub cells: usize,
    /// Per entry and cell (entry-major): whether the entry reached that cell's output
    /// for every image of the batch.
    pub every_image: Vec<bool>,
    /// Per entry and cell: whether it reached it for no image.
    pub no_image: Vec<bool>,
}

impl ShiftActivity {
    /// The pattern of a batch `[images, entries, cells...]` of outputs after a ReLU
    /// (an output above zero is a cell the shift reached).
    pub fn of_outputs(
        name: impl Into<String>,
        outputs: &candle_core::Tensor,
    ) -> candle_core::Result<Self> {
        let images = outputs.dim(0)?;
        let reached = outputs
            .detach()
            .gt(0.0)?
            .to_dtype(candle_core::DType::F32)?
            .sum(0)?;
        let cells = reached.elem_count() / reached.dim(0)?.max(1);
        let counts = reached.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            name: name.into(),
            cells,
            every_image: counts.iter().map(|&c| c as usize == images).collect(),
            no_image: counts.iter().map(|&c| c == 0.0).collect(),
        })
    }

    /// Per entry, whether it moved every output of the batch by one common vector: at
    /// each of its cells it reached every image or none.
    pub fn uniform(&self) -> Vec<bool> {
        self.every_image
            .chunks(self.cells.max(1))
            .zip(self.no_image.chunks(self.cells.max(1)))
            .map(|(every, none)| every.iter().zip(none).all(|(&e, &n)| e || n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn an_entry_is_uniform_when_each_cell_passed_for_all_images_or_none() {
        // 3 images, 3 channels, 2 cells. Channel 0: cell 0 on for all, cell 1 off for
        // all. Channel 1: on everywhere. Channel 2: cell 1 on for two images only.
        let x = Tensor::from_vec(
            vec![
                1f32, -1., 2., 3., 0., 0., // image 0
                4., -2., 5., 6., 0., 1., // image 1
                7., 0., 8., 9., 0., 2., // image 2
            ],
            (3, 3, 2),
            &Device::Cpu,
        )
        .unwrap();
        let a = ShiftActivity::of_outputs("conv4.bias", &x).unwrap();
        assert_eq!(a.cells, 2);
        assert_eq!(a.every_image, [true, false, true, true, false, false]);
        assert_eq!(a.no_image, [false, true, false, false, true, false]);
        assert_eq!(a.uniform(), [true, true, false]);
    }
}
