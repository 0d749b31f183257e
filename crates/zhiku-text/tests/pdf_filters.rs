//! The image encodings of scanned PDFs beyond JPEG and Flate: JPEG 2000, CCITT fax (Group
//! 4) and JBIG2 images in PDFs written here, decoded to PNG for the OCR and compared pixel
//! by pixel with the pattern they encode; corrupt ones give an error naming the file, the
//! page and the encoding, never a panic. The encoded pattern comes from `samples/` (see
//! `samples/make_samples.py`); the JBIG2 stream is built here around the Group 4 data (a
//! JBIG2 generic region may be MMR-coded, which is Group 4).

mod common;

use common::pdf_of;
use zhiku_text::{LoadError, Loaded, OcrMode, ScanLimits, load_for_ocr};

const J2K: &[u8] = include_bytes!("samples/pattern.j2k");
const G4: &[u8] = include_bytes!("samples/pattern.g4");
const W: u32 = 64;
const H: u32 = 48;

/// The samples' pattern: black where this holds.
fn black(x: u32, y: u32) -> bool {
    (x / 8 + y / 6).is_multiple_of(3)
}

/// A one-page PDF whose page is one image stream with `dict` and `data`, and no text.
fn image_pdf(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut image = format!(
        "<< /Type /XObject /Subtype /Image {dict} /Length {} >>\nstream\n",
        data.len()
    )
    .into_bytes();
    image.extend(data);
    image.extend(b"\nendstream");
    let draw = format!("q {W} 0 0 {H} 0 0 cm /Im0 Do Q");
    pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {W} {H}] /Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>").into_bytes(),
        image,
        format!("<< /Length {} >>\nstream\n{draw}\nendstream", draw.len()).into_bytes(),
    ])
}

/// The one image the scan hands to OCR, decoded: (width, height, gray pixels).
fn scanned_image(file: &str, pdf: &[u8]) -> (u32, u32, Vec<u8>) {
    let scan = match load_for_ocr(file, pdf, OcrMode::Auto, &ScanLimits::default()) {
        Ok(Loaded::Scan(scan)) => scan,
        other => panic!("{file}: {other:?}"),
    };
    assert_eq!(scan.pages.len(), 1);
    assert_eq!(scan.pages[0].images.len(), 1, "{file}: one image");
    let png = &scan.pages[0].images[0];
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png.as_slice()));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("its pixels");
    assert_eq!(info.color_type, png::ColorType::Grayscale, "{file}");
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{file}: expanded");
    pixels.truncate(info.buffer_size());
    (info.width, info.height, pixels)
}

fn assert_pattern(file: &str, pdf: &[u8], invert: bool) {
    let (w, h, pixels) = scanned_image(file, pdf);
    assert_eq!((w, h), (W, H), "{file}");
    for y in 0..H {
        for x in 0..W {
            let dark = pixels[(y * W + x) as usize] < 128;
            assert_eq!(dark, black(x, y) != invert, "{file}: pixel {x},{y}");
        }
    }
}

fn refused(file: &str, pdf: &[u8]) -> String {
    match load_for_ocr(file, pdf, OcrMode::Auto, &ScanLimits::default()) {
        Err(err @ LoadError::UnreadablePage { page: 1, .. }) => {
            assert_eq!(err.file(), file);
            err.to_string()
        }
        other => panic!("{file}: {other:?}"),
    }
}

#[test]
fn jpeg_2000_images_are_decoded() {
    let dict =
        "/Width 64 /Height 48 /ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /JPXDecode";
    assert_pattern("jpx.pdf", &image_pdf(dict, J2K), false);
    // Corrupt: no JPEG 2000 signature, or a codestream cut inside its header. (Cut later,
    // the decoder gives what the data holds, as viewers do.)
    for (file, data) in [
        ("garbage-jpx.pdf", &b"not a JPEG 2000 codestream at all"[..]),
        ("cut-jpx.pdf", &J2K[..20]),
    ] {
        let err = refused(file, &image_pdf(dict, data));
        assert!(err.contains("JPEG 2000"), "{err}");
        assert!(err.contains("page 1"), "{err}");
    }
}

#[test]
fn ccitt_group_4_images_are_decoded() {
    let dict = "/Width 64 /Height 48 /ColorSpace /DeviceGray /BitsPerComponent 1 /Filter /CCITTFaxDecode /DecodeParms << /K -1 /Columns 64 /Rows 48 >>";
    assert_pattern("g4.pdf", &image_pdf(dict, G4), false);
    // BlackIs1 with /Decode [1 0] shows the same page; BlackIs1 alone inverts it.
    let both = dict.replace("/Rows 48", "/Rows 48 /BlackIs1 true") + " /Decode [1 0]";
    assert_pattern("g4-black-is-1.pdf", &image_pdf(&both, G4), false);
    let inverted = dict.replace("/Rows 48", "/Rows 48 /BlackIs1 true");
    assert_pattern("g4-inverted.pdf", &image_pdf(&inverted, G4), true);
    // As scanners often write it: a stencil mask painted black.
    let mask = "/Width 64 /Height 48 /ImageMask true /Filter /CCITTFaxDecode /DecodeParms << /K -1 /Columns 64 /Rows 48 >>";
    assert_pattern("g4-mask.pdf", &image_pdf(mask, G4), false);
    // Garbage instead of fax codes: an error naming the encoding.
    let err = refused("bad-g4.pdf", &image_pdf(dict, &[0u8; 40]));
    assert!(err.contains("CCITT"), "{err}");
}

/// A JBIG2 stream in PDF's embedded organisation: a page information segment and one
/// immediate generic region holding `mmr` (Group 4 data) over the whole page.
fn jbig2_of(mmr: &[u8]) -> Vec<u8> {
    let segment = |number: u32, kind: u8, data: &[u8]| {
        let mut out = number.to_be_bytes().to_vec();
        // Flags: the type, a one-byte page association; no referred-to segments; page 1.
        out.extend([kind, 0, 1]);
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(data);
        out
    };
    let mut page_info = Vec::new();
    for v in [W, H, 0, 0] {
        page_info.extend(v.to_be_bytes());
    }
    page_info.extend([0, 0, 0]); // flags, striping
    let mut region = Vec::new();
    for v in [W, H, 0, 0] {
        region.extend(v.to_be_bytes());
    }
    region.push(0); // combination operator OR
    region.push(1); // MMR
    region.extend(mmr);
    let mut out = segment(0, 48, &page_info);
    out.extend(segment(1, 38, &region));
    out.extend(segment(2, 49, &[]));
    out
}

#[test]
fn jbig2_images_are_decoded() {
    let dict =
        "/Width 64 /Height 48 /ColorSpace /DeviceGray /BitsPerComponent 1 /Filter /JBIG2Decode";
    assert_pattern("jbig2.pdf", &image_pdf(dict, &jbig2_of(G4)), false);
    let err = refused(
        "bad-jbig2.pdf",
        &image_pdf(dict, b"\x00\x00\x00\x00\x30garbage"),
    );
    assert!(err.contains("JBIG2"), "{err}");
}

#[test]
fn chains_ending_in_an_image_codec_are_refused_naming_them() {
    let dict = "/Width 64 /Height 48 /ColorSpace /DeviceGray /BitsPerComponent 8 /Filter [/FlateDecode /JPXDecode]";
    let err = refused("chain.pdf", &image_pdf(dict, J2K));
    assert!(err.contains("FlateDecode, JPXDecode"), "{err}");
}

#[test]
fn damaged_encoded_images_never_panic() {
    let pdfs = [
        (
            "jpx.pdf",
            image_pdf(
                "/Width 64 /Height 48 /ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /JPXDecode",
                J2K,
            ),
        ),
        (
            "g4.pdf",
            image_pdf(
                "/Width 64 /Height 48 /ColorSpace /DeviceGray /BitsPerComponent 1 /Filter /CCITTFaxDecode /DecodeParms << /K -1 /Columns 64 >>",
                G4,
            ),
        ),
        (
            "jbig2.pdf",
            image_pdf(
                "/Width 64 /Height 48 /ColorSpace /DeviceGray /BitsPerComponent 1 /Filter /JBIG2Decode",
                &jbig2_of(G4),
            ),
        ),
    ];
    for (name, pdf) in pdfs {
        // The image data sits after the page objects: flip bytes all through the file.
        for at in (0..pdf.len()).step_by(3) {
            let mut damaged = pdf.clone();
            damaged[at] ^= 0x5A;
            let file = format!("flipped-{name}");
            if let Err(err) = load_for_ocr(&file, &damaged, OcrMode::Always, &ScanLimits::default())
            {
                assert_eq!(err.file(), file);
            }
        }
    }
}
