//! Random affine distortions of training images (rotation, scaling, shift), drawn from
//! this crate's seeded generator, so a run stays reproducible and resumable.
//!
//! Each image is warped about its centre with bilinear interpolation; what falls
//! outside the source is 0 (background). The output keeps the image's size, and, as
//! an interpolation of values in `[0, 1]`, stays in `[0, 1]`. The sines and cosines are
//! computed here with a fixed series, not the platform's `libm`, so the same seed gives
//! the same pixels on every machine.

use serde::{Deserialize, Serialize};
use siamese_state::{StateDict, StateError, Stateful};

use crate::error::DataError;
use crate::rng::Rng;

/// How far images are distorted: each parameter is drawn uniformly in its range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Rotation in `[-max, max]` degrees.
    pub max_rotation_degrees: f64,
    /// Scale factor in `[min, max]`.
    pub scale: [f64; 2],
    /// Shift in `[-max, max]` pixels, rows and columns drawn apart.
    pub max_shift: f64,
    /// Mirror left to right with probability 1/2 (faces, not characters: a mirrored
    /// letter can be another letter).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub horizontal_flip: bool,
}

impl Default for AugmentConfig {
    /// Small distortions that keep a digit a digit: 15 degrees, 0.9-1.1, 2 pixels.
    fn default() -> Self {
        Self {
            max_rotation_degrees: 15.0,
            scale: [0.9, 1.1],
            max_shift: 2.0,
            horizontal_flip: false,
        }
    }
}

impl AugmentConfig {
    /// Checks the ranges: finite, rotation at most 180 degrees, scales in (0, 10],
    /// shift at least 0 and at most 1,000 pixels.
    pub fn validate(&self) -> Result<(), DataError> {
        let [lo, hi] = self.scale;
        let ok = [self.max_rotation_degrees, lo, hi, self.max_shift]
            .iter()
            .all(|v| v.is_finite())
            && (0.0..=180.0).contains(&self.max_rotation_degrees)
            && lo > 0.0
            && lo <= hi
            && hi <= 10.0
            && (0.0..=1000.0).contains(&self.max_shift);
        if ok {
            Ok(())
        } else {
            Err(DataError::Unexpected {
                what: "augmentation".into(),
                expected: "max_rotation_degrees in [0, 180], 0 < scale[0] <= scale[1] <= 10, \
                           max_shift in [0, 1000]"
                    .into(),
                found: format!("{self:?}"),
            })
        }
    }
}

/// The augmenter's state is its generator (`rng`): a resumed run draws the same
/// distortions.
impl Stateful for Augmenter {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        let mut state = StateDict::new();
        state.insert_json("rng", &self.rng);
        Ok(state)
    }

    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        self.rng = state.json("rng")?;
        Ok(())
    }
}

/// Distorts images with parameters drawn from its own generator.
#[derive(Debug, Clone)]
pub struct Augmenter {
    config: AugmentConfig,
    rng: Rng,
}

impl Augmenter {
    /// An augmenter whose sequence of distortions is fixed by `seed`.
    pub fn new(config: AugmentConfig, seed: u64) -> Result<Self, DataError> {
        config.validate()?;
        Ok(Self {
            config,
            rng: Rng::new(seed),
        })
    }

    /// Writes a random distortion of `image` (`rows x cols` u8 pixels) into `out` as
    /// f32 in `[0, 1]`.
    pub fn apply(&mut self, image: &[u8], rows: usize, cols: usize, out: &mut [f32]) {
        assert_eq!(image.len(), rows * cols, "one image of rows x cols");
        assert_eq!(out.len(), rows * cols, "an output of rows x cols");
        let c = self.config;
        let mut uniform = |lo: f64, hi: f64| lo + (hi - lo) * self.rng.unit_f64();
        let angle = uniform(-1.0, 1.0) * c.max_rotation_degrees.to_radians();
        let scale = uniform(c.scale[0], c.scale[1]);
        let shift = (
            uniform(-c.max_shift, c.max_shift),
            uniform(-c.max_shift, c.max_shift),
        );
        // The coin is drawn only when flips are on, so a configuration without them
        // draws the same distortions as before flips existed.
        let flip = c.horizontal_flip && self.rng.unit_f64() < 0.5;
        let (sin, cos) = sin_cos(angle);
        warp(
            image,
            rows,
            cols,
            out,
            [cos / scale, sin / scale],
            shift,
            flip,
        );
    }
}

/// Output pixel `p` reads the source at `R(-angle) (p - centre - shift) / scale +
/// centre`: `inverse = [cos, sin] / scale`, then mirrored left to right when `flip`.
/// Bilinear, zero outside.
fn warp(
    image: &[u8],
    rows: usize,
    cols: usize,
    out: &mut [f32],
    inverse: [f64; 2],
    shift: (f64, f64),
    flip: bool,
) {
    let [a, b] = inverse;
    let (cy, cx) = ((rows as f64 - 1.0) / 2.0, (cols as f64 - 1.0) / 2.0);
    let pixel = |y: isize, x: isize| -> f64 {
        if y < 0 || x < 0 || y >= rows as isize || x >= cols as isize {
            0.0
        } else {
            f64::from(image[y as usize * cols + x as usize])
        }
    };
    for y in 0..rows {
        for x in 0..cols {
            let (dy, dx) = (y as f64 - cy - shift.0, x as f64 - cx - shift.1);
            let sy = a * dy - b * dx + cy;
            let sx = b * dy + a * dx + cx;
            let sx = if flip { 2.0 * cx - sx } else { sx };
            let (y0, x0) = (sy.floor(), sx.floor());
            let (fy, fx) = (sy - y0, sx - x0);
            let (y0, x0) = (y0 as isize, x0 as isize);
            let v = (1.0 - fy) * ((1.0 - fx) * pixel(y0, x0) + fx * pixel(y0, x0 + 1))
                + fy * ((1.0 - fx) * pixel(y0 + 1, x0) + fx * pixel(y0 + 1, x0 + 1));
            out[y * cols + x] = (v / 255.0).clamp(0.0, 1.0) as f32;
        }
    }
}

/// Sine and cosine of `angle` (|angle| <= pi) by their Taylor series to 20 terms: only
/// IEEE-exact operations, so every machine gets the same bits.
fn sin_cos(angle: f64) -> (f64, f64) {
    let (mut sin, mut cos) = (0.0, 0.0);
    let mut term = 1.0; // angle^k / k!
    for k in 0..40 {
        match k % 4 {
            0 => cos += term,
            1 => sin += term,
            2 => cos -= term,
            _ => sin -= term,
        }
        term *= angle / f64::from(k + 1);
    }
    (sin, cos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit() -> Vec<u8> {
        // A 9x9 image with a bright plus sign in the middle.
        let mut img = vec![0u8; 81];
        for i in 2..7 {
            img[4 * 9 + i] = 255;
            img[i * 9 + 4] = 200;
        }
        img
    }

    #[test]
    fn same_seed_same_pixels_and_range_kept() {
        let img = digit();
        let mut a = Augmenter::new(AugmentConfig::default(), 3).unwrap();
        let mut b = Augmenter::new(AugmentConfig::default(), 3).unwrap();
        let (mut x, mut y) = (vec![0f32; 81], vec![0f32; 81]);
        let mut differs = false;
        for _ in 0..20 {
            a.apply(&img, 9, 9, &mut x);
            b.apply(&img, 9, 9, &mut y);
            assert_eq!(x, y);
            assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
            let plain: Vec<f32> = img.iter().map(|&p| f32::from(p) / 255.0).collect();
            differs |= x != plain;
        }
        assert!(differs, "20 draws never changed the image");
        // A restored state continues the sequence.
        let saved = a.state_dict().unwrap();
        a.apply(&img, 9, 9, &mut x);
        let mut c = Augmenter::new(AugmentConfig::default(), 99).unwrap();
        c.load_state_dict(&saved).unwrap();
        c.apply(&img, 9, 9, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn no_distortion_is_the_identity_and_a_shift_moves_pixels() {
        let img = digit();
        let none = AugmentConfig {
            max_rotation_degrees: 0.0,
            scale: [1.0, 1.0],
            max_shift: 0.0,
            horizontal_flip: false,
        };
        let mut out = vec![0f32; 81];
        Augmenter::new(none, 1).unwrap().apply(&img, 9, 9, &mut out);
        let plain: Vec<f32> = img.iter().map(|&p| f32::from(p) / 255.0).collect();
        assert_eq!(out, plain);
        // A shift of one column to the right, exactly.
        warp(&img, 9, 9, &mut out, [1.0, 0.0], (0.0, 1.0), false);
        for y in 0..9 {
            assert_eq!(out[y * 9], 0.0);
            for x in 1..9 {
                assert_eq!(out[y * 9 + x], plain[y * 9 + x - 1]);
            }
        }
        // A quarter turn maps the horizontal bar onto the vertical one's place.
        let (s, c) = sin_cos(std::f64::consts::FRAC_PI_2);
        warp(&img, 9, 9, &mut out, [c, s], (0.0, 0.0), false);
        assert!((out[2 * 9 + 4] - 1.0).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn flips_mirror_about_half_the_images_exactly() {
        // An asymmetric 5x4 image: pixel value from its position.
        let img: Vec<u8> = (0..20u8).map(|i| i * 12).collect();
        let plain: Vec<f32> = img.iter().map(|&p| f32::from(p) / 255.0).collect();
        let mirror: Vec<f32> = (0..20).map(|i| plain[(i / 4) * 4 + (3 - i % 4)]).collect();
        let config = AugmentConfig {
            max_rotation_degrees: 0.0,
            scale: [1.0, 1.0],
            max_shift: 0.0,
            horizontal_flip: true,
        };
        let mut augmenter = Augmenter::new(config, 5).unwrap();
        let (mut flipped, mut kept) = (0, 0);
        let mut out = vec![0f32; 20];
        for _ in 0..400 {
            augmenter.apply(&img, 5, 4, &mut out);
            if out == mirror {
                flipped += 1;
            } else {
                assert_eq!(out, plain, "neither the image nor its mirror");
                kept += 1;
            }
        }
        assert!((160..=240).contains(&flipped), "{flipped} of 400 flipped");
        assert_eq!(flipped + kept, 400);
        // Without flips the configuration's JSON is what it was before flips existed.
        let json = serde_json::to_string(&AugmentConfig::default()).unwrap();
        assert!(!json.contains("flip"), "{json}");
    }

    #[test]
    fn series_matches_the_library_and_bad_ranges_are_refused() {
        for i in -30..=30 {
            let a = f64::from(i) * std::f64::consts::PI / 30.0;
            let (s, c) = sin_cos(a);
            assert!(
                (s - a.sin()).abs() < 1e-12 && (c - a.cos()).abs() < 1e-12,
                "{a}"
            );
        }
        for bad in [
            AugmentConfig {
                max_rotation_degrees: f64::NAN,
                ..AugmentConfig::default()
            },
            AugmentConfig {
                scale: [1.2, 1.1],
                ..AugmentConfig::default()
            },
            AugmentConfig {
                scale: [0.0, 1.1],
                ..AugmentConfig::default()
            },
            AugmentConfig {
                max_shift: -1.0,
                ..AugmentConfig::default()
            },
        ] {
            assert!(Augmenter::new(bad, 0).is_err(), "{bad:?}");
        }
    }
}
