//! Fuzzing the IDX decoder: arbitrary bytes and mutated or truncated valid files, plain
//! and gzip, must give `Ok` or `Err`, never a panic; a header that claims billions of
//! images must fail on the missing bytes rather than try to allocate for them.

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use siamese_data::idx::{decode_images, decode_labels, encode_images, encode_labels, IdxImages};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn images() -> impl Strategy<Value = IdxImages> {
    (0usize..6, 1usize..6, 1usize..6).prop_flat_map(|(count, rows, cols)| {
        proptest::collection::vec(any::<u8>(), count * rows * cols).prop_map(move |pixels| {
            IdxImages {
                count,
                rows,
                cols,
                pixels,
            }
        })
    })
}

/// Applies byte flips and an optional truncation to `bytes`.
fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(at, xor) in flips {
            let i = at % bytes.len();
            bytes[i] ^= xor;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_images(&bytes, Path::new("fuzz"));
        let _ = decode_labels(&bytes, Path::new("fuzz"));
        let _ = decode_images(&gzip(&bytes), Path::new("fuzz.gz"));
    }

    #[test]
    fn valid_files_round_trip(img in images(), compress in any::<bool>()) {
        let bytes = encode_images(&img);
        let bytes = if compress { gzip(&bytes) } else { bytes };
        prop_assert_eq!(decode_images(&bytes, Path::new("ok")).unwrap(), img.clone());
        let labels: Vec<u8> = img.pixels.iter().take(7).copied().collect();
        prop_assert_eq!(decode_labels(&encode_labels(&labels), Path::new("ok")).unwrap(), labels);
    }

    #[test]
    fn mutated_or_truncated_files_never_panic(
        img in images(),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
        cut in proptest::option::of(any::<usize>()),
        compress in any::<bool>(),
        mutate_compressed in any::<bool>(),
    ) {
        let plain = encode_images(&img);
        let bytes = if compress && mutate_compressed {
            mutate(gzip(&plain), &flips, cut)
        } else if compress {
            gzip(&mutate(plain, &flips, cut))
        } else {
            mutate(plain, &flips, cut)
        };
        match decode_images(&bytes, Path::new("mutated")) {
            // Only an unchanged file, or a flip that lands harmlessly in the pixels,
            // may still decode; then the header must describe the payload exactly.
            Ok(decoded) => prop_assert_eq!(decoded.pixels.len(), decoded.count * decoded.rows * decoded.cols),
            Err(e) => prop_assert!(e.to_string().contains("mutated")),
        }
    }

    #[test]
    fn huge_claims_fail_cleanly(count in 1_000_000u32.., rows in 1u32..=4096, compress in any::<bool>()) {
        let mut bytes = 0x0803u32.to_be_bytes().to_vec();
        for d in [count, rows, 28] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&[7; 64]);
        let bytes = if compress { gzip(&bytes) } else { bytes };
        let err = decode_images(&bytes, Path::new("huge")).unwrap_err();
        prop_assert!(err.to_string().contains("truncated"), "{}", err);
    }
}
