//! PDF pages whose text is drawn as filled paths (glyph outlines written as PDF path
//! operators here, no font, no image, no text layer) are rendered for the OCR, and their
//! text comes back through zhiku-ocr. The rendering needs nothing; the OCR part needs the
//! PP-OCR models (`scripts/fetch-models ppocr`) and a CJK font, and prints SKIPPED without
//! them.

mod common;
#[path = "../../zhiku-ocr/tests/corpus/mod.rs"]
#[allow(dead_code, clippy::all)]
mod corpus;

use ab_glyph::{Font, FontVec, OutlineCurve, Point};
use common::pdf_of;
use zhiku_text::{Loaded, OcrMode, ScanLimits, load_for_ocr};

const LINES: [&str; 3] = [
    "矢量路径绘制的文字没有文本层。",
    "合同编号：HT-2024-0815，金额12580元。",
    "渲染后由光学字符识别读出。",
];
/// A4 in points.
const PAGE: (f32, f32) = (595.0, 842.0);
const SIZE: f32 = 20.0;

/// PDF path operators filling the glyphs of `text` at `size` points, its baseline at
/// (`x`, `y`) (PDF space, y up).
fn glyph_paths(font: &FontVec, text: &str, size: f32, x: f32, y: f32) -> String {
    let scale = size / font.units_per_em().unwrap_or(1000.0);
    let mut ops = String::new();
    let mut pen = x;
    for c in text.chars() {
        let id = font.glyph_id(c);
        let at = |p: Point| (pen + p.x * scale, y + p.y * scale);
        if let Some(outline) = font.outline(id) {
            let mut last: Option<Point> = None;
            for curve in &outline.curves {
                let start = match curve {
                    OutlineCurve::Line(a, _) | OutlineCurve::Quad(a, _, _) => *a,
                    OutlineCurve::Cubic(a, _, _, _) => *a,
                };
                if last != Some(start) {
                    if last.is_some() {
                        ops.push_str("h\n");
                    }
                    let (sx, sy) = at(start);
                    ops.push_str(&format!("{sx:.2} {sy:.2} m\n"));
                }
                let end = match curve {
                    OutlineCurve::Line(_, b) => {
                        let (bx, by) = at(*b);
                        ops.push_str(&format!("{bx:.2} {by:.2} l\n"));
                        *b
                    }
                    OutlineCurve::Quad(a, b, c) => {
                        // A quadratic as the cubic that traces it.
                        let c1 = Point {
                            x: a.x + 2.0 / 3.0 * (b.x - a.x),
                            y: a.y + 2.0 / 3.0 * (b.y - a.y),
                        };
                        let c2 = Point {
                            x: c.x + 2.0 / 3.0 * (b.x - c.x),
                            y: c.y + 2.0 / 3.0 * (b.y - c.y),
                        };
                        let (p1, p2, p3) = (at(c1), at(c2), at(*c));
                        ops.push_str(&format!(
                            "{:.2} {:.2} {:.2} {:.2} {:.2} {:.2} c\n",
                            p1.0, p1.1, p2.0, p2.1, p3.0, p3.1
                        ));
                        *c
                    }
                    OutlineCurve::Cubic(_, b, c, d) => {
                        let (p1, p2, p3) = (at(*b), at(*c), at(*d));
                        ops.push_str(&format!(
                            "{:.2} {:.2} {:.2} {:.2} {:.2} {:.2} c\n",
                            p1.0, p1.1, p2.0, p2.1, p3.0, p3.1
                        ));
                        *d
                    }
                };
                last = Some(end);
            }
            if last.is_some() {
                ops.push_str("h\n");
            }
        }
        pen += font.h_advance_unscaled(id) * scale;
    }
    ops
}

/// One A4 page: the lines as filled glyph outlines, and nothing else.
fn vector_text_pdf(font: &FontVec) -> Vec<u8> {
    let mut content = String::from("0 g\n");
    for (i, line) in LINES.iter().enumerate() {
        let baseline = PAGE.1 - 100.0 - i as f32 * 1.8 * SIZE;
        content.push_str(&glyph_paths(font, line, SIZE, 60.0, baseline));
        // Nonzero winding, as TrueType outlines are drawn.
        content.push_str("f\n");
    }
    pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {} {}] /Contents 4 0 R >>",
            PAGE.0, PAGE.1
        )
        .into_bytes(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        )
        .into_bytes(),
    ])
}

#[test]
fn text_drawn_as_paths_is_rendered_and_read_by_ocr() {
    let Some(font) = corpus::find_font() else {
        println!(
            "SKIPPED text_drawn_as_paths_is_rendered_and_read_by_ocr: no CJK font (fonts-wqy-microhei, or ZHIKU_CJK_FONT)"
        );
        return;
    };
    let pdf = vector_text_pdf(&font);
    let scan = match load_for_ocr("vector.pdf", &pdf, OcrMode::Auto, &ScanLimits::default()) {
        Ok(Loaded::Scan(scan)) => scan,
        other => panic!("a scan: {other:?}"),
    };
    assert_eq!(scan.pages.len(), 1);
    assert!(scan.pages[0].text.is_empty(), "no text layer");
    assert_eq!(scan.pages[0].images.len(), 1, "the page, rendered");
    let png = &scan.pages[0].images[0];
    let image = zhiku_ocr::decode_image(png, &Default::default()).expect("the rendering");
    // 200 dpi, the long side held to 2000 pixels: A4 at 2000 / 842 pixels a point (the
    // renderer truncates, so a pixel may go).
    assert!(image.height().abs_diff(2000) <= 1, "{}", image.height());
    assert!(
        image.width().abs_diff((PAGE.0 * 2000.0 / PAGE.1) as u32) <= 1,
        "{}",
        image.width()
    );
    let dark = image.pixels().filter(|p| p[0] < 128).count();
    assert!(dark > 2000, "{dark} dark pixels: the glyphs were not drawn");

    let models = corpus::models_dir();
    if !models.join(zhiku_ocr::DETECTION_MODEL).is_file() {
        println!(
            "SKIPPED the OCR of the rendering: no OCR models in {} (scripts/fetch-models ppocr)",
            models.display()
        );
        return;
    }
    let engine = zhiku_ocr::OcrEngine::load(
        models.to_str().expect("utf-8 path"),
        None,
        zhiku_ocr::OcrOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .expect("the OCR models");
    let page = engine.recognize(&image).expect("recognition");
    let truth = LINES.join("\n");
    let cer = corpus::cer(&truth, &page.text());
    println!("read {:?}: CER {:.2}%", page.text(), 100.0 * cer);
    assert!(cer < 0.05, "read {:?}, expected {truth:?}", page.text());
}

#[test]
fn always_renders_a_typed_page_without_images() {
    // A text layer in a standard font: `auto` keeps it, `always` reads the page rendered.
    let content = "BT /F1 24 Tf 72 720 Td (Rendered for the OCR.) Tj ET";
    let pdf = pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()).into_bytes(),
    ]);
    match load_for_ocr("typed.pdf", &pdf, OcrMode::Auto, &ScanLimits::default()) {
        Ok(Loaded::Document(document)) => assert!(document.text.contains("Rendered for the OCR.")),
        other => panic!("auto keeps the text layer: {other:?}"),
    }
    let scan = match load_for_ocr("typed.pdf", &pdf, OcrMode::Always, &ScanLimits::default()) {
        Ok(Loaded::Scan(scan)) => scan,
        other => panic!("always: a scan: {other:?}"),
    };
    let image = zhiku_ocr::decode_image(&scan.pages[0].images[0], &Default::default())
        .expect("the rendering");
    assert!(image.height().abs_diff(2000) <= 1, "{}", image.height());
    // Helvetica (hayro's embedded standard font) drew the line near the top.
    let dark_top = image
        .enumerate_pixels()
        .filter(|(_, y, p)| *y < 300 && p[0] < 128)
        .count();
    assert!(dark_top > 200, "{dark_top} dark pixels near the top");
}
