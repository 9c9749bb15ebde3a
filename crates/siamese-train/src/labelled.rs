//! Labelled embeddings with what a viewer shows beside them: the one description the
//! explorer page ([`crate::explore`]) and TensorBoard's projector files
//! ([`crate::projector`]) are both made from.

use crate::error::TrainError;

/// `labels.len()` rows of `dim` values, each row's class name through its label, and
/// optionally each row's file path and grayscale image.
#[derive(Debug, Clone, Copy)]
pub struct LabelledEmbeddings<'a> {
    /// The embeddings, row-major.
    pub embeddings: &'a [f32],
    /// Values per row.
    pub dim: usize,
    /// One label per row.
    pub labels: &'a [u32],
    /// Class names by label (a label without a name is shown as its number).
    pub class_names: &'a [String],
    /// One path per row, or none.
    pub paths: &'a [String],
    /// `(pixels, height, width)` of every row's image, in row order, or none.
    pub images: Option<(&'a [u8], usize, usize)>,
}

impl LabelledEmbeddings<'_> {
    /// Rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Checks that the parts agree (`what` names the caller in the error): at least one
    /// row, `dim` values per label, a path per row or none, an image per row or none,
    /// and only finite values.
    pub fn check(&self, what: &str) -> Result<(), TrainError> {
        let n = self.len();
        let pixels_fit = self.images.is_none_or(|(px, h, w)| {
            h.checked_mul(w)
                .and_then(|hw| hw.checked_mul(n))
                .is_some_and(|len| len == px.len())
        });
        if self.dim == 0
            || n == 0
            || Some(self.embeddings.len()) != n.checked_mul(self.dim)
            || !(self.paths.is_empty() || self.paths.len() == n)
            || !pixels_fit
        {
            return Err(TrainError::Input(format!(
                "{what}: {} values, {n} labels, {} paths and {} pixels do not make rows of {}",
                self.embeddings.len(),
                self.paths.len(),
                self.images.map_or(0, |(px, _, _)| px.len()),
                self.dim
            )));
        }
        if self.embeddings.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::Input(format!(
                "{what}: the embeddings hold non-finite values"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_that_disagree_are_refused() {
        let paths = ["a".to_string()];
        let good = LabelledEmbeddings {
            embeddings: &[0.0, 1.0, 2.0, 3.0],
            dim: 2,
            labels: &[0, 1],
            class_names: &[],
            paths: &[],
            images: Some((&[0; 18], 3, 3)),
        };
        good.check("t").unwrap();
        let bad = [
            LabelledEmbeddings { dim: 3, ..good },
            LabelledEmbeddings { dim: 0, ..good },
            LabelledEmbeddings {
                labels: &[],
                embeddings: &[],
                ..good
            },
            LabelledEmbeddings {
                paths: &paths,
                ..good
            },
            LabelledEmbeddings {
                images: Some((&[0; 17], 3, 3)),
                ..good
            },
            LabelledEmbeddings {
                images: Some((&[0; 18], usize::MAX, 3)),
                ..good
            },
            LabelledEmbeddings {
                embeddings: &[0.0, f32::NAN, 2.0, 3.0],
                ..good
            },
        ];
        for (i, b) in bad.iter().enumerate() {
            let err = b.check("viewer").unwrap_err().to_string();
            // Named by what was handed over; not a training-config error.
            assert!(err.starts_with("viewer: "), "case {i}: {err}");
        }
    }
}
