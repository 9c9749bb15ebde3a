//! The synthetic data set the run tests train on: small, quick to learn, made in
//! memory (tests never read the shared data or the network).

// Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::path::Path;

use siamese_data::{Dataset, DatasetSpec, ImageSet, Rng};

pub const SIDE: usize = 8;
pub const CLASSES: usize = 4;

/// Class c is a bright 4x4 square in quadrant c, on noise.
pub fn synthetic(n: usize, seed: u64) -> ImageSet {
    let mut rng = Rng::new(seed);
    let mut pixels = Vec::with_capacity(n * SIDE * SIDE);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % CLASSES;
        let (oy, ox) = ((c / 2) * 4, (c % 2) * 4);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let inside = (oy..oy + 4).contains(&y) && (ox..ox + 4).contains(&x);
                let base = if inside { 180 } else { 20 };
                pixels.push((base + rng.below(60)) as u8);
            }
        }
        labels.push(c as u32);
    }
    ImageSet::new(SIDE, SIDE, CLASSES, pixels, labels, Path::new("synthetic")).unwrap()
}

pub fn dataset() -> Dataset {
    let mut spec = DatasetSpec::mnist();
    spec.name = "synthetic".into();
    spec.rows = SIDE;
    spec.cols = SIDE;
    spec.class_names = (0..CLASSES).map(|c| c.to_string()).collect();
    spec.validation_size = 200;
    Dataset::from_parts(spec, synthetic(1000, 1), synthetic(400, 2))
}
