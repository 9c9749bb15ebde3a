//! Issue #14: checkpoints mutated at random (header bytes, metadata values, tensor
//! bytes, truncations) go through the loader, which must return an error or a model
//! whose every value is finite, never panic or abort, and never allocate beyond the
//! bounds a config may ask for ([`siamese_model::config::limits`]).

use std::collections::BTreeMap;

use candle_core::Device;
use proptest::prelude::*;
use siamese_model::checkpoint::{load_tower, save};
use siamese_model::{ConvTower, TowerConfig};

fn small() -> TowerConfig {
    TowerConfig {
        input_height: 8,
        input_width: 8,
        conv_channels: vec![2],
        conv_strides: vec![2],
        fc_widths: vec![4],
        embedding_dim: 2,
        ..Default::default()
    }
}

fn valid_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let (_, varmap) = ConvTower::init(&small(), &Device::Cpu, 1).unwrap();
    let meta = BTreeMap::from([("threshold".to_string(), "0.5".to_string())]);
    save(&path, &varmap, &small(), &meta).unwrap();
    std::fs::read(path).unwrap()
}

/// One way of breaking a file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite the byte at this fraction of the file.
    Byte(f64, u8),
    /// Overwrite a byte of the header (JSON and its length).
    HeaderByte(f64, u8),
    /// Cut the file at this fraction.
    Truncate(f64),
    /// Replace a number in the header text by another.
    Number(f64, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0f64, any::<u8>()).prop_map(|(at, b)| Mutation::Byte(at, b)),
        (0.0..1.0f64, any::<u8>()).prop_map(|(at, b)| Mutation::HeaderByte(at, b)),
        (0.0..1.0f64).prop_map(Mutation::Truncate),
        (
            0.0..1.0f64,
            prop_oneof![Just(0u64), Just(1 << 40), Just(u64::MAX), 0..100_000u64]
        )
            .prop_map(|(at, n)| Mutation::Number(at, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    // Earlier mutations may have broken the length: stay inside the file.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let header_end = 8 + header_len.min((bytes.len() - 8) as u64) as usize;
    let index = |at: f64, len: usize| ((at * len as f64) as usize).min(len - 1);
    match *m {
        Mutation::Byte(at, b) => {
            let i = index(at, bytes.len());
            bytes[i] = b;
        }
        Mutation::HeaderByte(at, b) => {
            let i = index(at, header_end);
            bytes[i] = b;
        }
        Mutation::Truncate(at) => bytes.truncate(index(at, bytes.len())),
        Mutation::Number(..) if header_end <= 8 => {}
        Mutation::Number(at, n) => {
            // The first run of digits at or after the chosen place in the header.
            let text = &bytes[8..header_end];
            let start = index(at, text.len());
            let Some(first) = (start..text.len()).find(|&i| text[i].is_ascii_digit()) else {
                return;
            };
            let last = (first..text.len())
                .find(|&i| !text[i].is_ascii_digit())
                .unwrap_or(text.len());
            let mut header = text[..first].to_vec();
            header.extend_from_slice(n.to_string().as_bytes());
            header.extend_from_slice(&text[last..]);
            let mut out = (header.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&header);
            out.extend_from_slice(&bytes[header_end..]);
            *bytes = out;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_checkpoints_load_or_fail_cleanly(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let mut bytes = valid_bytes();
        for m in &mutations {
            if bytes.len() > 8 {
                apply(&mut bytes, m);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        match load_tower(&path, &Device::Cpu, 0) {
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.is_empty());
            }
            Ok((_, _, ckpt)) => {
                ckpt.config.validate().unwrap();
                for (name, t) in &ckpt.tensors {
                    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    prop_assert!(v.iter().all(|x| x.is_finite()), "{} loaded non-finite", name);
                }
            }
        }
    }
}
