//! Scans handed to OCR ([`load_for_ocr`]): images as documents, the images of PDF pages
//! without a text layer (JPEG as stored, raw samples as PNG), page numbers and their spans,
//! and the bad inputs (encrypted, over the pixel limit, truncated, mutated) that must give
//! an error naming the file and never a panic. PDFs are written here byte by byte.

mod common;

use common::{pdf_of, zip_of};
use zhiku_text::{
    Document, Format, LoadError, Loaded, OcrMode, PageText, Scan, ScanLimits, load, load_for_ocr,
};

fn stream_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
    out.extend(data);
    out.extend(b"\nendstream");
    out
}

/// A stand-in for a JPEG file: the loader hands DCT streams on as they are stored.
const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0fake jpeg bytes\xFF\xD9";

/// Three pages: a text layer; a scanned page (a JPEG); a page of raw 8-bit gray samples
/// (32x20, a gradient) with no text layer.
fn mixed_pdf() -> Vec<u8> {
    let gray: Vec<u8> = (0..32 * 20).map(|i| (i % 251) as u8).collect();
    pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R 6 0 R 8 0 R] /Count 3 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec(),
        stream_bytes("", b"BT /F1 12 Tf 72 720 Td (Typed page one.) Tj ET"),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 7 0 R >> >> /Contents 10 0 R >>".to_vec(),
        stream_bytes(
            "/Type /XObject /Subtype /Image /Width 40 /Height 30 /ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode",
            JPEG,
        ),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im2 9 0 R >> >> /Contents 11 0 R >>".to_vec(),
        stream_bytes(
            "/Type /XObject /Subtype /Image /Width 32 /Height 20 /ColorSpace /DeviceGray /BitsPerComponent 8",
            &gray,
        ),
        stream_bytes("", b"q 612 0 0 792 0 0 cm /Im1 Do Q"),
        stream_bytes("", b"q 612 0 0 792 0 0 cm /Im2 Do Q"),
    ])
}

fn scan_of(file: &str, bytes: &[u8], mode: OcrMode) -> Scan {
    match load_for_ocr(file, bytes, mode, &ScanLimits::default()) {
        Ok(Loaded::Scan(scan)) => scan,
        other => panic!("{file}: {other:?}"),
    }
}

fn refused(file: &str, bytes: &[u8], limits: &ScanLimits) -> LoadError {
    let err = match load_for_ocr(file, bytes, OcrMode::Auto, limits) {
        Ok(loaded) => panic!("{file} loaded: {loaded:?}"),
        Err(err) => err,
    };
    assert_eq!(err.file(), file);
    assert!(err.to_string().starts_with(&format!("{file}: ")), "{err}");
    err
}

#[test]
fn pages_without_a_text_layer_hand_their_images_to_ocr() {
    let scan = scan_of("mixed.pdf", &mixed_pdf(), OcrMode::Auto);
    assert_eq!(scan.format, Format::Pdf);
    let numbers: Vec<u32> = scan.pages.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(scan.pages[0].text, "Typed page one.");
    assert!(scan.pages[0].images.is_empty());
    // The JPEG as stored.
    assert_eq!(scan.pages[1].images, vec![JPEG.to_vec()]);
    // The raw samples as a PNG of the same pixels.
    let [png_bytes] = &scan.pages[2].images[..] else {
        panic!("{:?}", scan.pages[2]);
    };
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes.as_slice()));
    let mut reader = decoder.read_info().expect("a png");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    assert_eq!((info.width, info.height), (32, 20));
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    assert_eq!(pixels[..5], [0, 1, 2, 3, 4]);

    // Reading the images gives a document whose pages keep their numbers and spans.
    let document = scan.into_document(|page| Some((format!("第{}页的文字", page.number), 0.9)));
    assert_eq!(
        document.text,
        "Typed page one.\n\n第2页的文字\n\n第3页的文字"
    );
    let pages: Vec<(u32, Option<f32>)> = document
        .pages
        .iter()
        .map(|p| (p.number, p.confidence))
        .collect();
    assert_eq!(pages, [(1, None), (2, Some(0.9)), (3, Some(0.9))]);
    let start_of_three = document.text.chars().count() - "第3页的文字".chars().count();
    assert_eq!(document.page_at(0).map(|p| p.number), Some(1));
    assert_eq!(document.page_at(start_of_three).map(|p| p.number), Some(3));
}

#[test]
fn always_reads_every_page_from_its_images_or_its_rendering() {
    let scan = scan_of("mixed.pdf", &mixed_pdf(), OcrMode::Always);
    // Page 1 has no image: it is rendered (a PNG of the page) for the OCR.
    assert_eq!(scan.pages[0].images.len(), 1);
    assert!(scan.pages[0].images[0].starts_with(b"\x89PNG"));
    assert!(scan.pages.iter().skip(1).all(|p| p.images.len() == 1));
}

#[test]
fn text_layer_pdfs_need_no_ocr_and_carry_page_numbers() {
    let pdf = pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 6 0 R >>".to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 7 0 R >>".to_vec(),
        stream_bytes("", b"BT /F1 12 Tf 72 720 Td (One.) Tj ET"),
        stream_bytes("", b"BT /F1 12 Tf 72 720 Td (Two.) Tj ET"),
    ]);
    let Ok(Loaded::Document(document)) =
        load_for_ocr("typed.pdf", &pdf, OcrMode::Auto, &ScanLimits::default())
    else {
        panic!("a text-layer pdf needs no OCR");
    };
    // The same document as without OCR.
    assert_eq!(document, load("typed.pdf", &pdf).unwrap());
    assert_eq!(document.text, "One.\n\nTwo.");
    assert_eq!(document.page_at(6).map(|p| p.number), Some(2));
}

#[test]
fn images_are_documents_for_ocr_and_refused_without_it() {
    let scan = scan_of("photo.JPG", JPEG, OcrMode::Auto);
    assert_eq!(scan.format, Format::Image);
    assert_eq!(scan.pages.len(), 1);
    assert_eq!(scan.pages[0].images, vec![JPEG.to_vec()]);
    for name in ["a.png", "a.bmp", "a.tif", "a.tiff", "a.webp", "a.jpeg"] {
        assert_eq!(Format::from_file_name(name), Some(Format::Image), "{name}");
    }
    let err =
        load_for_ocr("photo.png", JPEG, OcrMode::Off, &ScanLimits::default()).expect_err("no OCR");
    assert!(matches!(err, LoadError::NeedsOcr { .. }), "{err}");
    assert!(err.to_string().contains("--ocr auto"), "{err}");
    // With OCR off, a scan fails as before, saying how to read it.
    let err = load_for_ocr(
        "scan.pdf",
        &scan_only_pdf(),
        OcrMode::Off,
        &ScanLimits::default(),
    )
    .expect_err("no text layer");
    assert!(matches!(err, LoadError::NoTextLayer { .. }), "{err}");
}

fn scan_only_pdf() -> Vec<u8> {
    pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 4 0 R >> >> /Contents 5 0 R >>".to_vec(),
        stream_bytes(
            "/Type /XObject /Subtype /Image /Width 2480 /Height 3508 /ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /DCTDecode",
            JPEG,
        ),
        stream_bytes("", b"q 612 0 0 792 0 0 cm /Im1 Do Q"),
    ])
}

#[test]
fn bad_scans_give_errors_naming_the_file() {
    // Over the pixel limit: refused before anything is decoded.
    let small = ScanLimits {
        max_pixels: 1_000_000,
        ..ScanLimits::default()
    };
    let err = refused("bomb.pdf", &scan_only_pdf(), &small);
    assert!(err.to_string().contains("over the limit"), "{err}");
    // More pages to OCR than allowed.
    let few = ScanLimits {
        max_pages: 1,
        ..ScanLimits::default()
    };
    let err = refused("long.pdf", &mixed_pdf(), &few);
    assert!(
        matches!(
            err,
            LoadError::TooManyPages {
                pages: 2,
                limit: 1,
                ..
            }
        ),
        "{err}"
    );
    // Images in an encoding zhiku does not decode, and nothing else on the page.
    let fax = String::from_utf8_lossy(&scan_only_pdf())
        .replace("/DCTDecode", "/CCITTFaxDecode")
        .into_bytes();
    let err = refused("fax.pdf", &fax, &ScanLimits::default());
    assert!(
        matches!(err, LoadError::UnreadablePage { page: 1, .. }),
        "{err}"
    );
    // A raw image shorter than its dimensions say.
    let truncated = pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 4 0 R >> >> >>".to_vec(),
        stream_bytes(
            "/Type /XObject /Subtype /Image /Width 64 /Height 64 /ColorSpace /DeviceGray /BitsPerComponent 8",
            &[0u8; 100],
        ),
    ]);
    let err = refused("short.pdf", &truncated, &ScanLimits::default());
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn encrypted_pdfs_say_so() {
    // An /Encrypt dictionary with a user password lopdf cannot guess.
    let mut pdf = mixed_pdf();
    let trailer = b"trailer\n<< /Size 12 /Root 1 0 R >>";
    let at = pdf
        .windows(trailer.len())
        .position(|w| w == trailer)
        .expect("the trailer");
    let encrypted = b"trailer\n<< /Size 12 /Root 1 0 R /Encrypt << /Filter /Standard /V 2 /R 3 /Length 128 /O <00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff> /U <ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100> /P -4 >> /ID [<0123456789abcdef0123456789abcdef> <0123456789abcdef0123456789abcdef>] >>";
    pdf.splice(at..at + trailer.len(), encrypted.iter().copied());
    let err = refused("locked.pdf", &pdf, &ScanLimits::default());
    assert!(matches!(err, LoadError::Encrypted { .. }), "{err}");
    assert!(err.to_string().contains("qpdf --decrypt"), "{err}");
}

/// Truncations (every `step`-th) and flipped bytes of `good`, loaded as `name` (its
/// extension picks the loader): a document, a scan or an error naming the file, never a
/// panic.
fn damaged_never_panic(name: &str, good: &[u8], step: usize) {
    let cut = format!("cut-{name}");
    for end in (0..good.len()).step_by(step) {
        if let Err(err) = load_for_ocr(&cut, &good[..end], OcrMode::Auto, &ScanLimits::default()) {
            assert_eq!(err.file(), cut);
        }
    }
    let flipped_name = format!("flipped-{name}");
    for at in (0..good.len()).step_by(step.div_ceil(2)) {
        let mut flipped = good.to_vec();
        flipped[at] ^= 0x5A;
        if let Err(err) = load_for_ocr(
            &flipped_name,
            &flipped,
            OcrMode::Always,
            &ScanLimits::default(),
        ) {
            assert_eq!(err.file(), flipped_name);
        }
    }
}

#[test]
fn truncated_and_mutated_scans_never_panic() {
    damaged_never_panic("scan.pdf", &mixed_pdf(), 5);
}

#[test]
fn documents_from_pages_skip_empty_pages() {
    let document = Document::from_pages(
        "scan.tiff".into(),
        Format::Image,
        vec![
            PageText {
                number: 1,
                text: " 甲 ".into(),
                confidence: Some(0.5),
            },
            PageText {
                number: 2,
                text: String::new(),
                confidence: Some(0.0),
            },
            PageText {
                number: 3,
                text: "乙丙".into(),
                confidence: Some(1.0),
            },
        ],
    );
    assert_eq!(document.text, "甲\n\n乙丙");
    let spans: Vec<(u32, usize, usize)> = document
        .pages
        .iter()
        .map(|p| (p.number, p.char_start, p.char_end))
        .collect();
    assert_eq!(spans, [(1, 0, 1), (3, 3, 5)]);
    assert_eq!(document.page_at(1).map(|p| p.number), Some(3));
    assert_eq!(document.page_at(5), None);
}

#[test]
fn passages_of_a_paged_document_never_span_two_pages() {
    let document = Document::from_pages(
        "scan.pdf".into(),
        Format::Pdf,
        (1..=3)
            .map(|number| PageText {
                number,
                text: format!("第{number}页很短。"),
                confidence: None,
            })
            .collect(),
    );
    let splitter = zhiku_text::PassageSplitter::new(zhiku_text::SplitterConfig {
        chunk_size: 250,
        overlap: 50,
    })
    .unwrap();
    let passages = splitter.split_document(&document);
    let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["第1页很短。", "第2页很短。", "第3页很短。"]);
    let pages: Vec<u32> = passages
        .iter()
        .map(|p| document.page_at(p.char_start).unwrap().number)
        .collect();
    assert_eq!(pages, [1, 2, 3]);
    assert_eq!(
        passages.iter().map(|p| p.index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
}

// ----------------------------------------------------------------------------------- ofd --

const OFD_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ofd:OFD xmlns:ofd="http://www.ofdspec.org/2016" Version="1.0" DocType="OFD">
<ofd:DocBody><ofd:DocInfo><ofd:DocID>x</ofd:DocID></ofd:DocInfo>
<ofd:DocRoot>Doc_0/Document.xml</ofd:DocRoot></ofd:DocBody></ofd:OFD>"#;

const DOCUMENT_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ofd:Document xmlns:ofd="http://www.ofdspec.org/2016">
<ofd:CommonData><ofd:PageArea><ofd:PhysicalBox>0 0 210 297</ofd:PhysicalBox></ofd:PageArea>
<ofd:DocumentRes>DocumentRes.xml</ofd:DocumentRes></ofd:CommonData>
<ofd:Pages>
<ofd:Page ID="1" BaseLoc="Pages/Page_0/Content.xml"/>
<ofd:Page ID="2" BaseLoc="Pages/Page_1/Content.xml"/>
</ofd:Pages></ofd:Document>"#;

const DOCUMENT_RES_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ofd:Res xmlns:ofd="http://www.ofdspec.org/2016" BaseLoc="Res">
<ofd:MultiMedias><ofd:MultiMedia ID="10" Type="Image"><ofd:MediaFile>image_10.png</ofd:MediaFile></ofd:MultiMedia></ofd:MultiMedias>
</ofd:Res>"#;

/// Text objects written out of reading order: the second line first, the title last, a
/// line wrapped mid-sentence, and an entity.
const PAGE_0_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ofd:Page xmlns:ofd="http://www.ofdspec.org/2016"><ofd:Content><ofd:Layer ID="3">
<ofd:TextObject ID="4" Boundary="20 60 170 10" Font="1" Size="5"><ofd:TextCode X="0" Y="5">合同金额为人民币&lt;十万&gt;元，</ofd:TextCode></ofd:TextObject>
<ofd:TextObject ID="5" Boundary="20 70 170 10" Font="1" Size="5"><ofd:TextCode X="0" Y="5">付款期限三十天。</ofd:TextCode></ofd:TextObject>
<ofd:TextObject ID="6" Boundary="20 20 170 10" Font="1" Size="8"><ofd:TextCode X="0" Y="8">采购合同</ofd:TextCode></ofd:TextObject>
<ofd:TextObject ID="7" Boundary="120 40 70 10" Font="1" Size="5"><ofd:TextCode X="0" Y="5">编号：A-17</ofd:TextCode></ofd:TextObject>
<ofd:TextObject ID="8" Boundary="20 40 90 10" Font="1" Size="5"><ofd:TextCode X="0" Y="5">甲方：华东公司</ofd:TextCode></ofd:TextObject>
</ofd:Layer></ofd:Content></ofd:Page>"#;

/// A scanned page: one image, no text.
const PAGE_1_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ofd:Page xmlns:ofd="http://www.ofdspec.org/2016"><ofd:Content><ofd:Layer ID="9">
<ofd:ImageObject ID="11" ResourceID="10" Boundary="0 0 210 297" CTM="210 0 0 297 0 0"/>
</ofd:Layer></ofd:Content></ofd:Page>"#;

const PNG_STAND_IN: &[u8] = b"\x89PNG stand-in";

fn ofd() -> Vec<u8> {
    zip_of(&[
        ("OFD.xml", OFD_XML.as_bytes()),
        ("Doc_0/Document.xml", DOCUMENT_XML.as_bytes()),
        ("Doc_0/DocumentRes.xml", DOCUMENT_RES_XML.as_bytes()),
        ("Doc_0/Pages/Page_0/Content.xml", PAGE_0_XML.as_bytes()),
        ("Doc_0/Pages/Page_1/Content.xml", PAGE_1_XML.as_bytes()),
        ("Doc_0/Res/image_10.png", PNG_STAND_IN),
    ])
}

const OFD_PAGE_0: &str =
    "采购合同\n甲方：华东公司编号：A-17\n合同金额为人民币<十万>元，付款期限三十天。";

#[test]
fn ofd_text_in_reading_order_with_pages() {
    let document = load("contract.ofd", &ofd()).expect("an ofd");
    assert_eq!(document.format, Format::Ofd);
    assert_eq!(document.text, OFD_PAGE_0);
    assert_eq!(document.page_at(0).map(|p| p.number), Some(1));
    // With OCR, the scanned page hands its image over; the typed one needs none.
    let scan = scan_of("contract.ofd", &ofd(), OcrMode::Auto);
    assert_eq!(scan.format, Format::Ofd);
    assert!(scan.pages[0].images.is_empty());
    assert_eq!(scan.pages[1].images, vec![PNG_STAND_IN.to_vec()]);
    let document = scan.into_document(|_| Some(("扫描页的文字".into(), 0.8)));
    assert_eq!(document.text, format!("{OFD_PAGE_0}\n\n扫描页的文字"));
    let last = document.text.chars().count() - 1;
    assert_eq!(document.page_at(last).map(|p| p.number), Some(2));
    // OCR off: the text pages alone.
    let Ok(Loaded::Document(document)) =
        load_for_ocr("contract.ofd", &ofd(), OcrMode::Off, &ScanLimits::default())
    else {
        panic!("an ofd without OCR");
    };
    assert_eq!(document.text, OFD_PAGE_0);
}

#[test]
fn bad_ofd_files_give_errors_naming_the_file() {
    let not_ofd = zip_of(&[("hello.txt", "hi")]);
    let err = load("a.ofd", &not_ofd).expect_err("no OFD.xml");
    assert_eq!(err.file(), "a.ofd");
    assert!(err.to_string().contains("OFD.xml is missing"), "{err}");
    let scanned_only = zip_of(&[
        ("OFD.xml", OFD_XML),
        (
            "Doc_0/Document.xml",
            &DOCUMENT_XML.replace(
                "<ofd:Page ID=\"1\" BaseLoc=\"Pages/Page_0/Content.xml\"/>",
                "",
            ),
        ),
        ("Doc_0/DocumentRes.xml", DOCUMENT_RES_XML),
        ("Doc_0/Pages/Page_1/Content.xml", PAGE_1_XML),
        ("Doc_0/Res/image_10.png", "x"),
    ]);
    let err = load("scan.ofd", &scanned_only).expect_err("no text");
    assert!(
        matches!(
            err,
            LoadError::NoTextLayer {
                format: Format::Ofd,
                ..
            }
        ),
        "{err}"
    );
    damaged_never_panic("contract.ofd", &ofd(), 2);
}

/// A body with pictures: one in its own paragraph (DrawingML), one inside a table cell, one
/// inside a text paragraph in old-Word markup, an old-Word copy in `mc:Fallback` (read
/// once), a vector picture (EMF: skipped), a linked one (external: skipped) and one whose
/// file is missing (skipped).
const PICTURE_DOCUMENT_XML: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" xmlns:v="urn:schemas-microsoft-com:vml">
<w:body>
<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>扫描附件</w:t></w:r></w:p>
<w:p><w:r><w:t>下图是合同首页。</w:t></w:r></w:p>
<w:p><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><a:graphic><a:graphicData><a:blip r:embed="rId7"/></a:graphicData></a:graphic></w:drawing></mc:Choice><mc:Fallback><w:pict><v:shape><v:imagedata r:id="rId7"/></v:shape></w:pict></mc:Fallback></mc:AlternateContent></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>印章</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:drawing><a:blip r:embed="rId8"/></w:drawing></w:r></w:p></w:tc></w:tr></w:tbl>
<w:p><w:r><w:t>图示：</w:t></w:r><w:r><w:pict><v:shape><v:imagedata r:id="rId9" o:title=""/></v:shape></w:pict></w:r><w:r><w:t>如上。</w:t></w:r></w:p>
<w:p><w:r><w:drawing><a:blip r:embed="rId10"/></w:drawing><w:drawing><a:blip r:embed="rId11"/></w:drawing><w:drawing><a:blip r:embed="rId12"/></w:drawing></w:r></w:p>
<w:p><w:r><w:t>结束。</w:t></w:r></w:p>
</w:body>
</w:document>"#;

const PICTURE_RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/>
<Relationship Id="rId7" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/image" Target="media/image1.png"/>
<Relationship Id="rId8" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/image" Target="/word/media/image2.JPEG"/>
<Relationship Id="rId9" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/image" Target="./media/../media/image3.png"/>
<Relationship Id="rId10" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/image" Target="media/image4.emf"/>
<Relationship Id="rId11" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/image" Target="https://example.com/a.png" TargetMode="External"/>
<Relationship Id="rId12" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/image" Target="media/missing.png"/>
</Relationships>"#;

fn picture_docx() -> Vec<u8> {
    zip_of(&[
        ("word/document.xml", PICTURE_DOCUMENT_XML.as_bytes()),
        ("word/_rels/document.xml.rels", PICTURE_RELS.as_bytes()),
        ("word/media/image1.png", b"\x89PNG first"),
        ("word/media/image2.JPEG", b"\xFF\xD8second"),
        ("word/media/image3.png", b"\x89PNG third"),
        ("word/media/image4.emf", b"EMF vector"),
    ])
}

const DOCX_TEXT: &str = "# 扫描附件\n\n下图是合同首页。\n\n印章 | \n\n图示：如上。\n\n结束。";

#[test]
fn docx_pictures_are_read_at_their_place_with_images_mode() {
    // Without `images`, the pictures are skipped as they always were.
    for mode in [OcrMode::Off, OcrMode::Auto] {
        let Ok(Loaded::Document(document)) =
            load_for_ocr("附件.docx", &picture_docx(), mode, &ScanLimits::default())
        else {
            panic!("{mode:?}: a document");
        };
        assert_eq!(document.text, DOCX_TEXT, "{mode:?}");
    }
    for mode in [OcrMode::Images, OcrMode::Always] {
        let scan = scan_of("附件.docx", &picture_docx(), mode);
        assert_eq!(scan.format, Format::Docx);
        let pictures: Vec<(u32, &[u8])> = scan
            .pages
            .iter()
            .filter(|p| !p.images.is_empty())
            .map(|p| (p.number, p.images[0].as_slice()))
            .collect();
        assert_eq!(
            pictures,
            [
                (1, &b"\x89PNG first"[..]),
                (2, b"\xFF\xD8second"),
                (3, b"\x89PNG third")
            ]
        );
        let document = scan.into_document(|page| match page.number {
            1 => Some(("甲方：华东公司".into(), 0.9)),
            // A picture with nothing readable adds no block.
            2 => Some((" ".into(), 0.0)),
            _ => Some(("流程图文字".into(), 0.8)),
        });
        assert_eq!(
            document.text,
            "# 扫描附件\n\n下图是合同首页。\n\n甲方：华东公司\n\n印章 | \n\n图示：如上。\n\n流程图文字\n\n结束。"
        );
        assert!(document.pages.is_empty(), "a docx has no pages");
        // Each picture's text keeps its confidence, where it lies in the text.
        let spans: Vec<(String, f32)> = document
            .ocr_spans
            .iter()
            .map(|span| {
                let text: String = document
                    .text
                    .chars()
                    .skip(span.char_start)
                    .take(span.char_end - span.char_start)
                    .collect();
                (text, span.confidence)
            })
            .collect();
        assert_eq!(
            spans,
            [
                ("甲方：华东公司".to_string(), 0.9),
                ("流程图文字".to_string(), 0.8)
            ]
        );
        let (first, second) = (document.ocr_spans[0], document.ocr_spans[1]);
        assert_eq!(document.ocr_confidence(0, 10), None, "the heading is text");
        assert_eq!(
            document.ocr_confidence(first.char_start, first.char_end),
            Some(0.9)
        );
        // A passage over both pictures: their confidences weighted by the characters in it
        // (7 at 0.9, 5 at 0.8).
        let both = document
            .ocr_confidence(0, document.text.chars().count())
            .expect("OCR text in it");
        assert!(
            (both - (7.0 * 0.9 + 5.0 * 0.8) / 12.0).abs() < 1e-6,
            "{both}"
        );
        assert_eq!(
            document.ocr_confidence(first.char_end, second.char_start),
            None
        );
    }
}

#[test]
fn docx_without_pictures_or_over_the_limit() {
    // No picture: the document as `load` gives it, with `images` too.
    let plain = zip_of(&[(
        "word/document.xml",
        PICTURE_DOCUMENT_XML
            .replace("r:embed", "r:other")
            .replace("r:id", "r:other"),
    )]);
    let Ok(Loaded::Document(document)) = load_for_ocr(
        "plain.docx",
        &plain,
        OcrMode::Images,
        &ScanLimits::default(),
    ) else {
        panic!("a document");
    };
    assert_eq!(document.text, DOCX_TEXT);
    let limits = ScanLimits {
        max_pages: 2,
        ..ScanLimits::default()
    };
    let err = load_for_ocr("many.docx", &picture_docx(), OcrMode::Images, &limits)
        .expect_err("three pictures over a limit of two");
    assert!(
        matches!(
            err,
            LoadError::TooManyPages {
                pages: 3,
                limit: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.file(), "many.docx");
}

#[test]
fn truncated_and_mutated_docx_never_panic() {
    damaged_never_panic("pictures.docx", &picture_docx(), 7);
}
