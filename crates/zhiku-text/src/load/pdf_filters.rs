//! The image encodings of PDF scans beyond JPEG and Flate, decoded to PNG for the OCR:
//! JPEG 2000 (`JPXDecode`), CCITT fax (`CCITTFaxDecode`, Group 3 and 4) and JBIG2
//! (`JBIG2Decode`). The decoders are the hayro project's (pure Rust, no unsafe code of
//! their own, MIT/Apache-2.0), the ones its PDF renderer uses; they run under the PDF
//! loader's `catch_unwind` like lopdf does.

use lopdf::{Dictionary, Document, Object, Stream};

use super::ScanLimits;

/// Pixels written out as a PNG file: `components` of 8 bits (1 gray, 3 RGB), or 1-bit
/// gray rows when `one_bit`.
pub(super) fn png_of(
    width: u32,
    height: u32,
    components: usize,
    one_bit: bool,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let color = match components {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        n => return Err(format!("its image has {n} colour components")),
    };
    let failed = |e: png::EncodingError| format!("its image cannot be re-encoded: {e}");
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(if one_bit {
        png::BitDepth::One
    } else {
        png::BitDepth::Eight
    });
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(data).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(out)
}

/// CMYK samples as RGB, without a colour profile (enough for reading text).
pub(super) fn cmyk_to_rgb(samples: &[u8]) -> Vec<u8> {
    samples
        .chunks_exact(4)
        .flat_map(|p| {
            let k = 255 - u16::from(p[3]);
            [0, 1, 2].map(|i| ((255 - u16::from(p[i])) * k / 255) as u8)
        })
        .collect()
}

fn check_pixels(width: u32, height: u32, limits: &ScanLimits) -> Result<(), String> {
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(format!(
            "its image of {width}x{height} pixels is over the limit of {} pixels",
            limits.max_pixels
        ));
    }
    if width == 0 || height == 0 {
        return Err("its image is empty".into());
    }
    Ok(())
}

/// A JPEG 2000 image (a JP2 file or a bare codestream) as PNG: gray or RGB, CMYK turned
/// to RGB, alpha dropped (paper has none).
pub(super) fn jpx_to_png(data: &[u8], limits: &ScanLimits) -> Result<Vec<u8>, String> {
    use hayro_jpeg2000::{ColorSpace, DecodeSettings, DecoderContext, Image};
    let bad = |e: hayro_jpeg2000::DecodeError| format!("its JPEG 2000 image is corrupt: {e}");
    let image = Image::new(data, &DecodeSettings::default()).map_err(bad)?;
    let (width, height) = (image.width(), image.height());
    check_pixels(width, height, limits)?;
    let channels = usize::from(image.color_space().num_channels());
    let stride = channels + usize::from(image.has_alpha());
    let cmyk = matches!(image.color_space(), ColorSpace::CMYK)
        || matches!(
            image.color_space(),
            ColorSpace::Icc {
                num_channels: 4,
                ..
            }
        );
    let mut context = DecoderContext::default();
    let samples = image.decode(&mut context).map_err(bad)?.data_u8();
    let pixels = width as usize * height as usize;
    if samples.len() < pixels * stride {
        return Err("its JPEG 2000 image decoded to fewer samples than its size".into());
    }
    let colour: Vec<u8> = if stride == channels {
        samples
    } else {
        samples
            .chunks_exact(stride)
            .flat_map(|p| p[..channels].iter().copied())
            .collect()
    };
    match channels {
        1 | 3 => png_of(width, height, channels, false, &colour),
        4 if cmyk => png_of(width, height, 3, false, &cmyk_to_rgb(&colour)),
        n => Err(format!(
            "its JPEG 2000 image has {n} colour components, which zhiku does not read"
        )),
    }
}

/// Whether the decoded black pixels of a bilevel image show dark on the page: the filter
/// writes them as `black_bit` (1 with CCITT's `BlackIs1 true`, else 0; JBIG2 always 0),
/// and the image's `/Decode [1 0]` inverts the bits. A 0 is black in DeviceGray, and the
/// painted (fill colour, taken as dark) bit of an `/ImageMask` too.
fn black_is_dark(dict: &Dictionary, black_bit: bool) -> bool {
    let inverted = dict
        .get(b"Decode")
        .and_then(Object::as_array)
        .ok()
        .and_then(|d| d.first())
        .and_then(|first| first.as_float().ok())
        .is_some_and(|first| first >= 0.5);
    !(black_bit ^ inverted)
}

/// Rows of decoded pixels (`true`: black) as a 1-bit gray PNG, the black ones dark when
/// `dark_is_black` (else the white ones).
fn bilevel_png(
    width: u32,
    height: u32,
    black: &[bool],
    dark_is_black: bool,
) -> Result<Vec<u8>, String> {
    let row_bytes = (width as usize).div_ceil(8);
    let mut data = vec![0u8; row_bytes * height as usize];
    for (y, row) in black
        .chunks(width as usize)
        .take(height as usize)
        .enumerate()
    {
        for (x, &b) in row.iter().enumerate() {
            // In a gray PNG a 1 bit is white.
            if b != dark_is_black {
                data[y * row_bytes + x / 8] |= 0x80 >> (x % 8);
            }
        }
    }
    png_of(width, height, 1, true, &data)
}

/// The `/DecodeParms` dictionary of a single-filter stream (a dictionary, or an array
/// of one).
fn decode_parms<'a>(document: &'a Document, dict: &'a Dictionary) -> Option<&'a Dictionary> {
    let parms = dict.get(b"DecodeParms").or_else(|_| dict.get(b"DP")).ok()?;
    let parms = document.dereference(parms).ok()?.1;
    match parms {
        Object::Dictionary(d) => Some(d),
        Object::Array(items) => items
            .first()
            .and_then(|first| document.dereference(first).ok())
            .and_then(|(_, o)| o.as_dict().ok()),
        _ => None,
    }
}

/// A CCITT fax image (Group 3 one- or two-dimensional, Group 4) as a 1-bit PNG.
pub(super) fn ccitt_to_png(
    document: &Document,
    stream: &Stream,
    height: u32,
    limits: &ScanLimits,
) -> Result<Vec<u8>, String> {
    use hayro_ccitt::{DecodeSettings, DecoderContext, EncodingMode};
    let empty = Dictionary::new();
    let parms = decode_parms(document, &stream.dict).unwrap_or(&empty);
    let int = |key: &[u8], default: i64| parms.get(key).and_then(Object::as_i64).unwrap_or(default);
    let flag =
        |key: &[u8], default: bool| parms.get(key).and_then(Object::as_bool).unwrap_or(default);
    let columns = u32::try_from(int(b"Columns", 1728))
        .map_err(|_| "its CCITT fax image has a bad /Columns".to_string())?;
    let rows = match u32::try_from(int(b"Rows", 0)) {
        Ok(0) | Err(_) => height,
        Ok(rows) => rows,
    };
    check_pixels(columns, rows, limits)?;
    let k = int(b"K", 0);
    let settings = DecodeSettings {
        columns,
        rows,
        end_of_block: flag(b"EndOfBlock", true),
        end_of_line: flag(b"EndOfLine", false),
        rows_are_byte_aligned: flag(b"EncodedByteAlign", false),
        encoding: match k {
            k if k < 0 => EncodingMode::Group4,
            0 => EncodingMode::Group3_1D,
            _ => EncodingMode::Group3_2D,
        },
        strict: false,
    };
    let mut sink = Rows {
        width: columns as usize,
        rows: rows as usize,
        black: Vec::new(),
    };
    let mut context = DecoderContext::new(settings);
    let result = hayro_ccitt::decode(&stream.content, &mut sink, &mut context);
    // A stream cut short still gives the rows before the cut; none at all is an error.
    if sink.black.is_empty() {
        return Err(match result {
            Err(e) => format!("its CCITT fax image is corrupt: {e}"),
            Ok(_) => "its CCITT fax image holds no rows".into(),
        });
    }
    let decoded_rows = (sink.black.len() / columns as usize) as u32;
    let dark = black_is_dark(&stream.dict, flag(b"BlackIs1", false));
    bilevel_png(columns, decoded_rows, &sink.black, dark)
}

/// Collects CCITT rows (colour changes) as pixels, at most `rows` of them.
struct Rows {
    width: usize,
    rows: usize,
    black: Vec<bool>,
}

impl hayro_ccitt::Decoder for Rows {
    fn push_row(&mut self, changes: &[u32]) {
        if self.black.len() >= self.width * self.rows {
            return;
        }
        let start = self.black.len();
        self.black.resize(start + self.width, false);
        let row = &mut self.black[start..];
        for pair in changes.chunks(2) {
            let from = (pair[0] as usize).min(self.width);
            let to = pair
                .get(1)
                .map_or(self.width, |&e| (e as usize).min(self.width));
            row[from..to.max(from)].fill(true);
        }
    }
}

/// A JBIG2 image (PDF's embedded organisation, with its `/JBIG2Globals` when it has them)
/// as a 1-bit PNG.
pub(super) fn jbig2_to_png(
    document: &Document,
    stream: &Stream,
    limits: &ScanLimits,
) -> Result<Vec<u8>, String> {
    use hayro_jbig2::{DecodeSettings, Globals, Page};
    let bad = |e: hayro_jbig2::DecodeError| format!("its JBIG2 image is corrupt: {e}");
    let settings = DecodeSettings::default();
    let globals = match decode_parms(document, &stream.dict)
        .and_then(|p| p.get(b"JBIG2Globals").ok())
        .and_then(|g| document.dereference(g).ok())
        .and_then(|(_, o)| o.as_stream().ok())
    {
        Some(globals) => Some(Globals::new(&globals.content, &settings).map_err(bad)?),
        None => None,
    };
    let page = Page::new_embedded(&stream.content, globals.as_ref(), &settings).map_err(bad)?;
    let (width, height) = (page.width(), page.height());
    check_pixels(width, height, limits)?;
    let mut sink = Pixels {
        limit: width as usize * height as usize,
        black: Vec::new(),
    };
    page.decode(&mut sink).map_err(bad)?;
    if sink.black.len() < sink.limit {
        return Err("its JBIG2 image decoded to fewer pixels than its size".into());
    }
    // JBIG2Decode's output has black as 0, as CCITT's default.
    bilevel_png(
        width,
        height,
        &sink.black,
        black_is_dark(&stream.dict, false),
    )
}

/// Collects JBIG2 pixels, at most `limit` of them.
struct Pixels {
    limit: usize,
    black: Vec<bool>,
}

impl hayro_jbig2::Decoder for Pixels {
    fn push_pixel(&mut self, black: bool) {
        if self.black.len() < self.limit {
            self.black.push(black);
        }
    }

    fn push_pixel_chunk(&mut self, black: bool, chunk_count: u32) {
        let n = (8 * chunk_count as usize).min(self.limit - self.black.len());
        self.black.extend(std::iter::repeat_n(black, n));
    }

    fn next_line(&mut self) {}
}
