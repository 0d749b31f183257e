//! Image bytes to RGB pixels, with limits against decompression bombs.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbImage};

use crate::OcrError;

/// Limits on what [`decode_image`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most pixels (width × height) an image may have.
    pub max_pixels: u64,
    /// The most bytes a decoder may allocate at once.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// An A3 page at 600 dpi is about 70 megapixels; 100 leaves room and still stops bombs.
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_alloc: 1 << 30,
        }
    }
}

/// The formats read: the ones scanners and cameras write.
const FORMATS: [ImageFormat; 5] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::WebP,
];

/// Decodes PNG, JPEG, BMP, TIFF (first page) or WebP bytes into RGB. Transparent pixels
/// are laid over white, as paper is. Never panics: every failure is an [`OcrError`].
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, OcrError> {
    let format = image::guess_format(bytes).map_err(|_| OcrError::UnsupportedFormat)?;
    if !FORMATS.contains(&format) {
        return Err(OcrError::UnsupportedFormat);
    }
    let reader = || {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        let mut image_limits = image::Limits::default();
        image_limits.max_alloc = Some(limits.max_alloc);
        reader.limits(image_limits);
        reader
    };
    // The header first: a bomb is refused before anything is allocated for its pixels.
    let (width, height) = reader().into_dimensions().map_err(map_image_error)?;
    check_size(width, height, limits)?;
    // A decoder bug must not take the process down with one bad file: a panic inside it is
    // reported as a corrupt image.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader().decode()))
        .map_err(|_| OcrError::Corrupt("the image decoder failed on this file".into()))?
        .map_err(map_image_error)?;
    check_size(decoded.width(), decoded.height(), limits)?;
    Ok(flatten_on_white(decoded))
}

fn check_size(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), OcrError> {
    if width == 0 || height == 0 {
        return Err(OcrError::Empty { width, height });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(OcrError::TooLarge {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

fn map_image_error(e: image::ImageError) -> OcrError {
    match e {
        image::ImageError::Unsupported(_) => OcrError::UnsupportedFormat,
        image::ImageError::Limits(l) => {
            OcrError::Corrupt(format!("over the decoder's limits: {l}"))
        }
        other => OcrError::Corrupt(other.to_string()),
    }
}

/// RGB with any alpha composited over white.
fn flatten_on_white(image: image::DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            let v = (u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255;
            dst[c] = v as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbaImage::from_pixel(width, height, image::Rgba([0, 0, 0, 0]))
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn transparent_pixels_become_white() {
        let image = decode_image(&png(3, 2), &DecodeLimits::default()).unwrap();
        assert_eq!(image.dimensions(), (3, 2));
        assert!(image.pixels().all(|p| p.0 == [255, 255, 255]));
    }

    #[test]
    fn pixel_limit_refuses_before_decoding() {
        let limits = DecodeLimits {
            max_pixels: 5,
            ..DecodeLimits::default()
        };
        let err = decode_image(&png(3, 2), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                OcrError::TooLarge {
                    width: 3,
                    height: 2,
                    max_pixels: 5
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_and_unsupported_formats() {
        let err = decode_image(b"not an image at all", &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, OcrError::UnsupportedFormat), "{err}");
        // A GIF header: a format `image` knows but this crate does not read.
        let err = decode_image(b"GIF89a\x01\x00\x01\x00", &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, OcrError::UnsupportedFormat), "{err}");
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let bytes = png(40, 40);
        let err = decode_image(&bytes[..bytes.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, OcrError::Corrupt(_)), "{err}");
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn bomb_header_is_refused() {
        // A valid PNG header (CRC fixed) claiming 100000 x 100000 pixels, with 1 x 1 of data.
        let mut bytes = png(1, 1);
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_image(&bytes, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                OcrError::TooLarge {
                    width: 100_000,
                    height: 100_000,
                    ..
                }
            ),
            "{err}"
        );
    }
}
