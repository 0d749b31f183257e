//! Corrupt, truncated and hostile image bytes: every one is an error or an image within the
//! limits, never a panic (property tests on the stable toolchain).

use std::io::Cursor;
use std::sync::OnceLock;

use proptest::prelude::*;
use zhiku_ocr::image::{ImageFormat, Rgb, RgbImage};
use zhiku_ocr::{DecodeLimits, OcrError, decode_image};

/// A small page-like image in each format read.
fn samples() -> &'static Vec<(ImageFormat, Vec<u8>)> {
    static SAMPLES: OnceLock<Vec<(ImageFormat, Vec<u8>)>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let image = RgbImage::from_fn(37, 23, |x, y| {
            let ink = (x / 3 + y / 4) % 3 == 0;
            Rgb(if ink { [20, 20, 20] } else { [250, 248, 240] })
        });
        [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
            ImageFormat::WebP,
        ]
        .into_iter()
        .map(|format| {
            let mut bytes = Vec::new();
            image
                .write_to(&mut Cursor::new(&mut bytes), format)
                .expect("encoding a sample");
            (format, bytes)
        })
        .collect()
    })
}

const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 4_000_000,
    max_alloc: 64 << 20,
};

fn check(bytes: &[u8]) {
    match decode_image(bytes, &LIMITS) {
        Ok(image) => {
            let (w, h) = image.dimensions();
            assert!(w > 0 && h > 0 && u64::from(w) * u64::from(h) <= LIMITS.max_pixels);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[test]
fn every_sample_decodes() {
    for (format, bytes) in samples() {
        let image = decode_image(bytes, &LIMITS).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(image.dimensions(), (37, 23), "{format:?}");
    }
}

#[test]
fn every_truncation_is_an_error_or_an_image() {
    for (format, bytes) in samples() {
        for len in 0..bytes.len() {
            check(&bytes[..len]);
        }
        let err = decode_image(&bytes[..bytes.len().min(8)], &LIMITS).unwrap_err();
        assert!(
            matches!(err, OcrError::Corrupt(_) | OcrError::UnsupportedFormat),
            "{format:?}: {err}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_images_never_panic(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let (_, original) = &samples()[which];
        let mut bytes = original.clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        check(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_real_header_never_panic(
        which in 0usize..5,
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let (_, original) = &samples()[which];
        let mut bytes = original[..original.len().min(16)].to_vec();
        bytes.extend(tail);
        check(&bytes);
    }
}

/// tract is a build option (`--features tract`, for `ocr-bench`); asking a build without it
/// says how to get it instead of failing on a missing library.
#[test]
fn tract_in_a_build_without_it_says_how_to_get_it() {
    let options = zhiku_ocr::OcrOptions {
        runtime: zhiku_ocr::OcrRuntime::Tract,
        ..Default::default()
    };
    let result = zhiku_ocr::OcrEngine::load("/no/such/ppocr", None, options);
    match result {
        Err(e @ OcrError::TractNotBuilt) if cfg!(not(feature = "tract")) => {
            assert!(e.to_string().contains("--features tract"), "{e}");
        }
        Err(OcrError::Model(_)) if cfg!(feature = "tract") => {}
        other => panic!("unexpected: {other:?}"),
    }
}
