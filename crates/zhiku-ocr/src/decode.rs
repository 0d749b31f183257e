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

/// Decodes every page of image bytes: each page of a multi-page TIFF (scanners and fax
/// software write them), the one page of the other formats. More than `max_pages` pages
/// is an error; each page is held to `limits`. Never panics.
pub fn decode_pages(
    bytes: &[u8],
    limits: &DecodeLimits,
    max_pages: usize,
) -> Result<Vec<RgbImage>, OcrError> {
    if image::guess_format(bytes).ok() != Some(ImageFormat::Tiff) {
        return Ok(vec![decode_image(bytes, limits)?]);
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tiff_pages(bytes, limits, max_pages.max(1))
    }))
    .map_err(|_| OcrError::Corrupt("the TIFF decoder failed on this file".into()))?
}

/// The first page through `image` (every colour type it reads), the next ones through the
/// `tiff` decoder, which steps from page to page.
fn tiff_pages(
    bytes: &[u8],
    limits: &DecodeLimits,
    max_pages: usize,
) -> Result<Vec<RgbImage>, OcrError> {
    let mut pages = vec![decode_image(bytes, limits)?];
    let corrupt = |e: tiff::TiffError| OcrError::Corrupt(e.to_string());
    let mut tiff_limits = tiff::decoder::Limits::default();
    tiff_limits.decoding_buffer_size = usize::try_from(limits.max_alloc).unwrap_or(usize::MAX);
    let mut decoder = tiff::decoder::Decoder::new(Cursor::new(bytes))
        .map_err(corrupt)?
        .with_limits(tiff_limits);
    while decoder.more_images() {
        if pages.len() >= max_pages {
            return Err(OcrError::TooManyPages { max: max_pages });
        }
        decoder.next_image().map_err(corrupt)?;
        let (width, height) = decoder.dimensions().map_err(corrupt)?;
        check_size(width, height, limits)?;
        let color = decoder.colortype().map_err(corrupt)?;
        let data = decoder.read_image().map_err(corrupt)?;
        let page = tiff_rgb(width, height, color, data).ok_or_else(|| {
            OcrError::Corrupt(format!(
                "page {} of the TIFF is {color:?}, which the OCR does not read",
                pages.len() + 1
            ))
        })?;
        pages.push(page);
    }
    Ok(pages)
}

/// A decoded TIFF page as RGB: gray (1, 8 or 16 bits), RGB and RGBA (8 bits); `None` for
/// the rest, or when the samples are fewer than the dimensions need. White-is-zero pages
/// arrive inverted by the decoder already.
fn tiff_rgb(
    width: u32,
    height: u32,
    color: tiff::ColorType,
    data: tiff::decoder::DecodingResult,
) -> Option<RgbImage> {
    use tiff::ColorType as C;
    use tiff::decoder::DecodingResult as D;
    let (w, h) = (width as usize, height as usize);
    let n = w.checked_mul(h)?;
    let gray = |g: u8| [g, g, g];
    let pixels: Vec<u8> = match (color, data) {
        (C::Gray(8), D::U8(v)) => v.get(..n)?.iter().flat_map(|&g| gray(g)).collect(),
        (C::Gray(16), D::U16(v)) => v
            .get(..n)?
            .iter()
            .flat_map(|&g| gray((g >> 8) as u8))
            .collect(),
        (C::Gray(1), D::U8(v)) => {
            let stride = w.div_ceil(8);
            let mut out = Vec::with_capacity(n * 3);
            for y in 0..h {
                let row = v.get(y * stride..(y + 1) * stride)?;
                for x in 0..w {
                    let white = (row[x / 8] >> (7 - x % 8)) & 1 == 1;
                    out.extend(gray(if white { 255 } else { 0 }));
                }
            }
            out
        }
        (C::RGB(8), D::U8(v)) => v.get(..n * 3)?.to_vec(),
        (C::RGBA(8), D::U8(v)) => v
            .get(..n * 4)?
            .chunks_exact(4)
            .flat_map(|p| {
                let a = u32::from(p[3]);
                [0, 1, 2].map(|i| ((u32::from(p[i]) * a + 255 * (255 - a) + 127) / 255) as u8)
            })
            .collect(),
        _ => return None,
    };
    RgbImage::from_raw(width, height, pixels)
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

    /// A TIFF of `pages` (width, height, gray level) written by the `tiff` encoder.
    fn tiff(pages: &[(u32, u32, u8)]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut encoder = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
        for &(w, h, level) in pages {
            let data = vec![level; (w * h) as usize];
            encoder
                .write_image::<tiff::encoder::colortype::Gray8>(w, h, &data)
                .unwrap();
        }
        out.into_inner()
    }

    #[test]
    fn every_page_of_a_multi_page_tiff() {
        let bytes = tiff(&[(30, 20, 10), (40, 25, 200), (8, 9, 128)]);
        let pages = decode_pages(&bytes, &DecodeLimits::default(), 10).unwrap();
        let shapes: Vec<(u32, u32, u8)> = pages
            .iter()
            .map(|p| (p.width(), p.height(), p.get_pixel(0, 0)[0]))
            .collect();
        assert_eq!(shapes, [(30, 20, 10), (40, 25, 200), (8, 9, 128)]);
        // Other formats: one page.
        assert_eq!(
            decode_pages(&png(3, 2), &DecodeLimits::default(), 1)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn multi_page_tiff_limits_and_damage() {
        let bytes = tiff(&[(30, 20, 10), (40, 25, 200), (8, 9, 128)]);
        let err = decode_pages(&bytes, &DecodeLimits::default(), 2).unwrap_err();
        assert!(matches!(err, OcrError::TooManyPages { max: 2 }), "{err}");
        let small = DecodeLimits {
            max_pixels: 700,
            ..DecodeLimits::default()
        };
        let err = decode_pages(&bytes, &small, 10).unwrap_err();
        assert!(matches!(err, OcrError::TooLarge { width: 40, .. }), "{err}");
        // Every truncation and flipped byte: pages or an error, never a panic.
        for cut in 0..bytes.len() {
            let _ = decode_pages(&bytes[..cut], &DecodeLimits::default(), 10);
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0xA5;
            if let Ok(pages) = decode_pages(&flipped, &DecodeLimits::default(), 10) {
                assert!(pages.len() <= 10);
            }
        }
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
