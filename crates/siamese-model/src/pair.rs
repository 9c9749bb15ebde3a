//! The Siamese pair model: one tower, run once over both sides concatenated along the
//! batch, so the weights are shared by construction and batch-norm statistics are
//! computed and updated once per step over all the step's images.

use candle_core::Tensor;

use crate::error::ModelError;
use crate::tower::Embedder;

/// Two images in, two embeddings out, through one shared tower.
#[derive(Debug)]
pub struct SiameseModel<E> {
    /// The shared tower.
    pub tower: E,
}

impl<E: Embedder> SiameseModel<E> {
    /// Wraps a tower.
    pub fn new(tower: E) -> Self {
        Self { tower }
    }

    /// Embeds both sides of a pair batch (`[B, C, H, W]` each) in one pass of the tower.
    pub fn forward_pair(
        &self,
        left: &Tensor,
        right: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor), ModelError> {
        if left.dims() != right.dims() {
            return Err(ModelError::Input {
                what: "right images",
                expected: format!("{:?}, the shape of the left images", left.dims()),
                found: right.dims().to_vec(),
            });
        }
        let b = left.dim(0)?;
        let both = Tensor::cat(&[left, right], 0)?;
        let embeddings = self.tower.forward_t(&both, train)?;
        Ok((embeddings.narrow(0, 0, b)?, embeddings.narrow(0, b, b)?))
    }
}
