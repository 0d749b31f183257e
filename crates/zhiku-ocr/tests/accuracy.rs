//! The pipeline on pages the tests render themselves (see `corpus`): character error rate
//! ceilings, reading order on a two-column page, boxes, confidences, upside-down lines,
//! and images that hold no text. Needs the PP-OCR models (`scripts/fetch-models ppocr`)
//! and a CJK font (`fonts-wqy-microhei`); prints SKIPPED without them.

mod corpus;

use std::sync::OnceLock;

use zhiku_ocr::image::{Rgb, RgbImage};
use zhiku_ocr::{OcrEngine, OcrOptions};

fn engine() -> Option<&'static OcrEngine> {
    static ENGINE: OnceLock<Option<OcrEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let dir = corpus::models_dir();
            if !dir.join(zhiku_ocr::DETECTION_MODEL).is_file() {
                return None;
            }
            let options = OcrOptions {
                threads: 2,
                ..OcrOptions::default()
            };
            Some(
                OcrEngine::load(dir.to_str().expect("utf-8 path"), None, options)
                    .expect("loading the OCR models"),
            )
        })
        .as_ref()
}

fn setup(test: &str) -> Option<(&'static OcrEngine, ab_glyph::FontVec)> {
    let Some(engine) = engine() else {
        println!(
            "SKIPPED {test}: no OCR models in {} (scripts/fetch-models ppocr)",
            corpus::models_dir().display()
        );
        return None;
    };
    let Some(font) = corpus::find_font() else {
        println!(
            "SKIPPED {test}: no CJK font (apt-get install fonts-wqy-microhei, or set ZHIKU_CJK_FONT)"
        );
        return None;
    };
    Some((engine, font))
}

fn condition(font: &ab_glyph::FontVec, name: &str) -> corpus::RenderedPage {
    corpus::conditions(font)
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, page)| page)
        .expect("a known condition")
}

fn check_cer(engine: &OcrEngine, font: &ab_glyph::FontVec, name: &str, ceiling: f64) {
    let page = condition(font, name);
    let result = engine.recognize(&page.image).expect("recognition");
    let cer = corpus::cer(&page.text(), &result.text());
    println!(
        "{name}: CER {:.2}% over {} lines",
        100.0 * cer,
        result.lines.len()
    );
    if cer > ceiling {
        for line in &result.lines {
            println!(
                "  {:?} {:.3} {:?}",
                line.bbox.map(|p| (p.x, p.y)),
                line.confidence,
                line.text
            );
        }
    }
    assert!(
        cer <= ceiling,
        "{name}: CER {cer:.4} above {ceiling}\nread:\n{}\nexpected:\n{}",
        result.text(),
        page.text()
    );
}

#[test]
fn clean_pages_read_within_cer_ceiling() {
    let Some((engine, font)) = setup("clean_pages_read_within_cer_ceiling") else {
        return;
    };
    check_cer(engine, &font, "clean-24px", 0.02);
    check_cer(engine, &font, "small-16px", 0.03);
}

#[test]
fn degraded_pages_read_within_cer_ceiling() {
    let Some((engine, font)) = setup("degraded_pages_read_within_cer_ceiling") else {
        return;
    };
    check_cer(engine, &font, "noise", 0.04);
    check_cer(engine, &font, "skew-2deg", 0.04);
    check_cer(engine, &font, "jpeg-q25", 0.04);
}

#[test]
fn two_column_page_is_read_column_by_column() {
    let Some((engine, font)) = setup("two_column_page_is_read_column_by_column") else {
        return;
    };
    // Reading across the columns would interleave their lines: far above this ceiling.
    check_cer(engine, &font, "two-column", 0.03);
    let page = condition(&font, "two-column");
    let result = engine.recognize(&page.image).expect("recognition");
    // Paragraphs never mix the columns (the one that flows from the left column into the
    // right one is two), and each is a run of one rendered paragraph.
    let middle = page.image.width() as f32 / 2.0;
    assert!(
        result.paragraphs.len() >= page.paragraphs.len(),
        "{:#?}",
        result.paragraphs
    );
    assert!(
        result.paragraphs.len() <= page.paragraphs.len() + 2,
        "{:#?}",
        result.paragraphs
    );
    for paragraph in &result.paragraphs[1..] {
        let sides: Vec<bool> = paragraph
            .lines
            .iter()
            .map(|&i| result.lines[i].bbox[0].x < middle)
            .collect();
        assert!(
            sides.iter().all(|&s| s == sides[0]),
            "paragraph across columns: {:?}",
            paragraph.text
        );
        let text: String = corpus::normalize(&paragraph.text).into_iter().collect();
        let head: String = text.chars().take(3).collect();
        let tail: String = text
            .chars()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let found = page.paragraphs.iter().any(|p| {
            let want: String = corpus::normalize(p).into_iter().collect();
            want.contains(&head) && want.contains(&tail)
        });
        assert!(
            found,
            "paragraph {:?} is no run of a rendered one",
            paragraph.text
        );
    }
}

#[test]
fn lines_have_boxes_and_confidences() {
    let Some((engine, font)) = setup("lines_have_boxes_and_confidences") else {
        return;
    };
    let page = condition(&font, "clean-24px");
    let result = engine.recognize(&page.image).expect("recognition");
    assert_eq!((result.width, result.height), page.image.dimensions());
    assert_eq!(
        result.lines.len(),
        page.lines.len(),
        "one box per rendered line"
    );
    for (line, (text, [left, top, right, bottom])) in result.lines.iter().zip(&page.lines) {
        assert!(line.confidence > 0.5 && line.confidence <= 1.0, "{line:?}");
        assert!(!line.vertical);
        assert!(
            corpus::cer(text, &line.text) < 0.15,
            "{text:?} read as {:?}",
            line.text
        );
        // The box holds the rendered line, with the detector's margin.
        let xs = line.bbox.map(|p| p.x);
        let ys = line.bbox.map(|p| p.y);
        let slack = bottom - top;
        let (bl, bt) = (
            xs.iter().copied().fold(f32::MAX, f32::min),
            ys.iter().copied().fold(f32::MAX, f32::min),
        );
        let (br, bb) = (
            xs.iter().copied().fold(f32::MIN, f32::max),
            ys.iter().copied().fold(f32::MIN, f32::max),
        );
        assert!(
            (bl - left).abs() < slack && (br - right).abs() < slack,
            "{line:?} vs {left}..{right}"
        );
        assert!(
            (bt - top).abs() < slack && (bb - bottom).abs() < slack,
            "{line:?} vs {top}..{bottom}"
        );
    }
}

#[test]
fn upside_down_lines_are_turned() {
    let Some((engine, font)) = setup("upside_down_lines_are_turned") else {
        return;
    };
    let text = "合同编号：2024-0815，金额为人民币12580元。";
    let page = corpus::render(
        &font,
        &corpus::Layout {
            width: 900,
            font_px: 28.0,
            columns: 1,
            title: None,
            paragraphs: &[text],
        },
    );
    let upside_down = zhiku_ocr::image::imageops::rotate180(&page.image);
    let result = engine.recognize(&upside_down).expect("recognition");
    let cer = corpus::cer(text, &result.text());
    assert!(cer < 0.05, "read {:?}", result.text());
}

#[test]
fn images_without_text_give_empty_pages() {
    let Some((engine, _)) = setup("images_without_text_give_empty_pages") else {
        return;
    };
    for (w, h) in [(1, 1), (800, 600), (3000, 12), (12, 3000), (31, 29)] {
        let blank = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
        let page = engine.recognize(&blank).expect("recognition");
        assert!(page.lines.is_empty(), "{w}x{h}: {:?}", page.lines);
    }
    // Noise: whatever is read, it is read without error and with boxes inside the image.
    let mut rng = corpus::Rng::new(3);
    for (w, h) in [(640, 480), (50, 900)] {
        let image = RgbImage::from_fn(w, h, |_, _| Rgb([(rng.next_u64() & 0xff) as u8; 3]));
        let page = engine.recognize(&image).expect("recognition");
        for line in &page.lines {
            assert!(
                line.bbox
                    .iter()
                    .all(|p| p.x >= 0.0 && p.y >= 0.0 && p.x <= w as f32 && p.y <= h as f32)
            );
        }
    }
}

#[test]
fn missing_models_are_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("zhiku-ocr-no-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let err =
        OcrEngine::load(dir.to_str().expect("utf-8"), None, OcrOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(zhiku_ocr::DETECTION_MODEL), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Loads the models with `options` (2 threads) and reads the fixed clean page with them
/// and with the default engine: the same text, and line confidences within 1e-3.
fn reads_as_the_default_engine(test: &str, options: OcrOptions) {
    let Some((engine, font)) = setup(test) else {
        return;
    };
    let other = OcrEngine::load(
        corpus::models_dir().to_str().expect("utf-8 path"),
        None,
        OcrOptions {
            threads: 2,
            ..options
        },
    )
    .expect("the models");
    let page = condition(&font, "clean-24px");
    let a = engine.recognize(&page.image).expect("the default engine");
    let b = other.recognize(&page.image).expect("the other engine");
    assert_eq!(a.text(), b.text());
    for (x, y) in a.lines.iter().zip(&b.lines) {
        assert!((x.confidence - y.confidence).abs() < 1e-3, "{x:?} / {y:?}");
    }
}

/// Both runtimes run the same pipeline on the same models: tract reads the fixed page as
/// ONNX Runtime does (a build with `--features tract`).
#[cfg(feature = "tract")]
#[test]
fn tract_reads_what_onnx_runtime_reads() {
    reads_as_the_default_engine(
        "tract_reads_what_onnx_runtime_reads",
        OcrOptions {
            runtime: zhiku_ocr::OcrRuntime::Tract,
            ..OcrOptions::default()
        },
    );
}

/// A CUDA device that ONNX Runtime cannot use here (a build without `cuda`, or the CPU
/// library loaded) leaves the models on the CPU: the engine loads and reads as on the CPU.
#[test]
fn a_cuda_device_without_its_provider_reads_on_the_cpu() {
    reads_as_the_default_engine(
        "a_cuda_device_without_its_provider_reads_on_the_cpu",
        OcrOptions {
            cuda_device: Some(0),
            ..OcrOptions::default()
        },
    );
}
