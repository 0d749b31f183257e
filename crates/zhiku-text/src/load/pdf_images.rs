//! The images a scanner embeds in a PDF page, as image files the OCR reads, without
//! rendering the page: JPEG (DCTDecode) streams as stored; Flate (or uncompressed) samples
//! in gray, RGB or CMYK, JPEG 2000, CCITT fax and JBIG2 images decoded and written out as
//! PNG ([`pdf_filters`]). Other encodings (indexed colours, chains of filters ending in an
//! image codec) are reported, not read.

use lopdf::{Document, Object, ObjectId};

use super::{ScanLimits, pdf_filters};

/// An image over the pixel limit: the file is refused (a decompression bomb, or a scan far
/// finer than OCR needs), not just the image skipped.
pub(super) struct OverLimit(pub String);

/// Images smaller than this on a side are logos, bullets or rules, not text.
const MIN_SIDE: i64 = 16;

/// A page's readable images in the order its resources list them, and why any other
/// image was left out.
pub(super) fn page_images(
    document: &Document,
    page_id: ObjectId,
    limits: &ScanLimits,
) -> Result<(Vec<Vec<u8>>, Option<String>), OverLimit> {
    let images = match document.get_page_images(page_id) {
        Ok(images) => images,
        Err(e) => {
            return Ok((
                Vec::new(),
                Some(format!("its images cannot be listed: {e}")),
            ));
        }
    };
    let mut out = Vec::new();
    let mut skipped = None;
    for image in images {
        let (width, height) = (image.width, image.height);
        if width < MIN_SIDE || height < MIN_SIDE {
            continue;
        }
        let pixels = u64::try_from(width)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::try_from(height).unwrap_or(u64::MAX));
        if pixels > limits.max_pixels {
            return Err(OverLimit(format!(
                "an image of {width}x{height} pixels is over the limit of {} pixels",
                limits.max_pixels
            )));
        }
        let Ok(stream) = document.get_object(image.id).and_then(Object::as_stream) else {
            continue;
        };
        let filters = image.filters.clone().unwrap_or_default();
        let single = filters.len() == 1;
        let mask = stream
            .dict
            .get(b"ImageMask")
            .and_then(Object::as_bool)
            .unwrap_or(false);
        // Stencil masks are logos and rules, except the bilevel ones scanners write as
        // masks (CCITT, JBIG2): those are the page.
        let bilevel = single && matches!(filters[0].as_str(), "CCITTFaxDecode" | "JBIG2Decode");
        if mask && !bilevel {
            continue;
        }
        let result = match filters.last().map(String::as_str) {
            Some("DCTDecode") if single => Ok(image.content.to_vec()),
            Some("JPXDecode") if single => pdf_filters::jpx_to_png(image.content, limits),
            Some("CCITTFaxDecode") if single => {
                pdf_filters::ccitt_to_png(document, stream, height as u32, limits)
            }
            Some("JBIG2Decode") if single => pdf_filters::jbig2_to_png(document, stream, limits),
            Some("JPXDecode" | "CCITTFaxDecode" | "JBIG2Decode" | "DCTDecode") => Err(format!(
                "its image is {} encoded (a chain of filters), which zhiku does not decode",
                filters.join(", ")
            )),
            _ => samples_to_png(document, stream, width as u32, height as u32, limits),
        };
        match result {
            Ok(bytes) => out.push(bytes),
            Err(reason) => {
                skipped.get_or_insert(reason);
            }
        }
    }
    Ok((out, skipped))
}

/// Decoded samples (Flate, LZW, run-length or none) written out as a PNG file.
fn samples_to_png(
    document: &Document,
    stream: &lopdf::Stream,
    width: u32,
    height: u32,
    limits: &ScanLimits,
) -> Result<Vec<u8>, String> {
    let bits = stream
        .dict
        .get(b"BitsPerComponent")
        .and_then(Object::as_i64)
        .unwrap_or(8);
    let components = components(document, stream.dict.get(b"ColorSpace").ok())?;
    if !(bits == 8 || (bits == 1 && components == 1)) {
        return Err(format!(
            "its image has {bits} bits per sample in {components} components, which zhiku \
             does not decode"
        ));
    }
    let row_bytes = (width as usize * components * bits as usize).div_ceil(8);
    let expected = row_bytes.saturating_mul(height as usize);
    // The pixel limit bounds what a decompression may produce.
    let cap = usize::try_from(limits.max_pixels.saturating_mul(4)).unwrap_or(usize::MAX);
    if expected > cap {
        return Err("its image is over the size limit".into());
    }
    let samples = stream
        .decompressed_content_with_limit(expected.saturating_add(row_bytes))
        .map_err(|e| format!("its image cannot be decompressed: {e}"))?;
    if samples.len() < expected {
        return Err(format!(
            "its image is truncated ({} of {expected} bytes)",
            samples.len()
        ));
    }
    let samples = &samples[..expected];
    match (components, bits) {
        (1, 1) => pdf_filters::png_of(width, height, 1, true, samples),
        (1 | 3, _) => pdf_filters::png_of(width, height, components, false, samples),
        (4, _) => pdf_filters::png_of(width, height, 3, false, &pdf_filters::cmyk_to_rgb(samples)),
        _ => Err(format!("its image has {components} colour components")),
    }
}

/// Colour components of a colour space: DeviceGray 1, DeviceRGB 3, DeviceCMYK 4, ICCBased
/// its /N; others (Indexed, Separation, DeviceN) are not read.
fn components(document: &Document, space: Option<&Object>) -> Result<usize, String> {
    let Some(space) = space else {
        return Ok(1);
    };
    let space = document
        .dereference(space)
        .map(|(_, o)| o)
        .map_err(|e| e.to_string())?;
    let (name, rest) = match space {
        Object::Name(name) => (name.as_slice(), None),
        Object::Array(items) => match items.first() {
            Some(Object::Name(name)) => (name.as_slice(), items.get(1)),
            _ => return Err("its image has a colour space zhiku does not read".into()),
        },
        _ => return Err("its image has a colour space zhiku does not read".into()),
    };
    match name {
        b"DeviceGray" | b"CalGray" | b"G" => Ok(1),
        b"DeviceRGB" | b"CalRGB" | b"RGB" => Ok(3),
        b"DeviceCMYK" | b"CMYK" => Ok(4),
        b"ICCBased" => {
            let n = rest
                .and_then(|r| document.dereference(r).ok())
                .and_then(|(_, o)| o.as_stream().ok())
                .and_then(|s| s.dict.get(b"N").and_then(Object::as_i64).ok())
                .unwrap_or(3);
            match n {
                1 | 3 | 4 => Ok(n as usize),
                _ => Err(format!("its image's ICC profile has {n} components")),
            }
        }
        other => Err(format!(
            "its image is in the {} colour space, which zhiku does not read",
            String::from_utf8_lossy(other)
        )),
    }
}
