//! Page images to lines of text, on PaddleOCR's PP-OCR models.
//!
//! The pipeline: detection (DB: a text probability map, binarised, its regions boxed by
//! minimum-area rectangles and grown back), direction classification (lines upside down are
//! turned), recognition (batched by width, greedy CTC over the model's own character list),
//! and reading order (columns, rows, paragraphs, vertical text). The models run on ONNX
//! Runtime, whose library is loaded at run time (`scripts/fetch-models ppocr` puts it beside
//! the models).
//!
//! ```no_run
//! # fn main() -> Result<(), zhiku_ocr::OcrError> {
//! let engine = zhiku_ocr::OcrEngine::load("ppocr", Some("models".as_ref()), Default::default())?;
//! let image = zhiku_ocr::decode_image(&std::fs::read("scan.png").unwrap(), &Default::default())?;
//! let page = engine.recognize(&image)?;
//! println!("{}", page.text());
//! # Ok(())
//! # }
//! ```

mod decode;
mod det;
mod error;
mod geometry;
mod imgproc;
pub mod layout;
mod onnx;
mod rec;

use std::path::{Path, PathBuf};

pub use decode::{DecodeLimits, decode_image, decode_pages};
pub use error::OcrError;
pub use geometry::Point;
pub use image;
use image::RgbImage;
use zhiku_models::ModelSource;

use crate::det::DbParams;
use crate::onnx::{Model, Runtime};
use crate::rec::Charset;

/// The model files, as `scripts/fetch-models ppocr` lays them out.
pub const DETECTION_MODEL: &str = "ch_PP-OCRv4_det_infer.onnx";
pub const RECOGNITION_MODEL: &str = "ch_PP-OCRv4_rec_infer.onnx";
pub const DIRECTION_MODEL: &str = "ch_ppocr_mobile_v2.0_cls_infer.onnx";
/// ONNX Runtime's library as the `onnxruntime` wheel ships it.
pub const RUNTIME_LIBRARY: &str = "libonnxruntime.so.1.31.1";

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct OcrOptions {
    /// Threads each model computes with.
    pub threads: usize,
    /// Whether lines are checked for being upside down.
    pub use_direction: bool,
    /// Lines recognised with a lower confidence are dropped.
    pub min_confidence: f32,
    /// Lines per recognition batch (lines of similar width go together).
    pub batch: usize,
    /// ONNX Runtime's library; by default `ORT_DYLIB_PATH`, else the one beside the models.
    pub runtime_library: Option<PathBuf>,
    /// Which ONNX runtime runs the models.
    pub runtime: OcrRuntime,
    /// Run the models on this CUDA device through ONNX Runtime's CUDA execution provider (a
    /// build with the `cuda` feature, and ONNX Runtime's GPU library at run time); where the
    /// provider cannot be had, the models run on the CPU and a warning says why. Untested:
    /// no GPU has run it.
    pub cuda_device: Option<u32>,
}

/// The ONNX runtime that runs the models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OcrRuntime {
    /// ONNX Runtime through `ort`, its library loaded at run time (the default).
    #[default]
    OnnxRuntime,
    /// tract, pure Rust: only where zhiku-ocr is built with its `tract` feature (for the
    /// runtime comparison in `ocr-bench`).
    Tract,
}

impl Default for OcrOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            use_direction: true,
            min_confidence: 0.5,
            batch: 6,
            runtime_library: None,
            runtime: OcrRuntime::OnnxRuntime,
            cuda_device: None,
        }
    }
}

/// One line of recognised text.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub text: String,
    /// The line's corners in the image, clockwise from top-left as read.
    pub bbox: [Point; 4],
    /// The recogniser's mean probability over the line's characters, 0 to 1.
    pub confidence: f32,
    /// Whether the text runs top to bottom.
    pub vertical: bool,
}

impl Line {
    fn extent(&self) -> layout::LineBox {
        let xs = self.bbox.map(|p| p.x);
        let ys = self.bbox.map(|p| p.y);
        layout::LineBox {
            left: xs.iter().copied().fold(f32::MAX, f32::min),
            top: ys.iter().copied().fold(f32::MAX, f32::min),
            right: xs.iter().copied().fold(f32::MIN, f32::max),
            bottom: ys.iter().copied().fold(f32::MIN, f32::max),
            text_height: {
                let [a, b, c, d] = self.bbox;
                let side = |p: Point, q: Point| (p.x - q.x).hypot(p.y - q.y);
                if self.vertical {
                    side(a, b).max(side(d, c))
                } else {
                    side(a, d).max(side(b, c))
                }
            },
            vertical: self.vertical,
        }
    }
}

/// Consecutive lines that form a paragraph.
#[derive(Debug, Clone, PartialEq)]
pub struct Paragraph {
    /// Indices into [`Page::lines`], in reading order.
    pub lines: Vec<usize>,
    /// The lines' text joined (a space only between two Latin letters or digits).
    pub text: String,
    /// The mean confidence of its lines, weighted by their length.
    pub confidence: f32,
}

/// What a page image says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub width: u32,
    pub height: u32,
    /// The lines in reading order.
    pub lines: Vec<Line>,
    /// The paragraphs in reading order.
    pub paragraphs: Vec<Paragraph>,
}

impl Page {
    /// The page's text: paragraphs in reading order, one a line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for p in &self.paragraphs {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&p.text);
        }
        out
    }

    /// Builds a page from lines in any order: puts them in reading order and finds the
    /// paragraphs.
    pub fn from_lines(width: u32, height: u32, lines: Vec<Line>) -> Self {
        let boxes: Vec<layout::LineBox> = lines.iter().map(Line::extent).collect();
        let groups = layout::paragraphs(&boxes);
        let mut slots: Vec<Option<Line>> = lines.into_iter().map(Some).collect();
        let mut ordered = Vec::with_capacity(slots.len());
        let mut paragraphs = Vec::with_capacity(groups.len());
        for group in groups {
            let mut indices = Vec::with_capacity(group.len());
            let mut text = String::new();
            let (mut weighted, mut chars) = (0.0f32, 0usize);
            for i in group {
                let Some(line) = slots.get_mut(i).and_then(Option::take) else {
                    continue;
                };
                if let (Some(a), Some(b)) = (text.chars().last(), line.text.chars().next())
                    && a.is_ascii_alphanumeric()
                    && b.is_ascii_alphanumeric()
                {
                    text.push(' ');
                }
                text.push_str(&line.text);
                let n = line.text.chars().count().max(1);
                weighted += line.confidence * n as f32;
                chars += n;
                indices.push(ordered.len());
                ordered.push(line);
            }
            if !indices.is_empty() {
                paragraphs.push(Paragraph {
                    lines: indices,
                    text,
                    confidence: weighted / chars.max(1) as f32,
                });
            }
        }
        Self {
            width,
            height,
            lines: ordered,
            paragraphs,
        }
    }
}

/// The loaded models.
#[derive(Debug)]
pub struct OcrEngine {
    detector: Model,
    direction: Model,
    recognizer: Model,
    charset: Charset,
    options: OcrOptions,
    db: DbParams,
}

/// Pages larger than this on their long side are scaled down first (PaddleOCR's limit:
/// detection cost grows with the area, and text stays readable).
const MAX_SIDE: u32 = 2000;
/// Pages smaller than this on their short side are scaled up first.
const MIN_SIDE: u32 = 30;
/// The detector's short side is raised to this.
const DET_LIMIT_SIDE: u32 = 736;
/// An image wider than this many heights (a single line) is padded to a taller one: the
/// detector finds lines on page-like images.
const MAX_ASPECT: u32 = 8;

impl OcrEngine {
    /// Loads the models from a directory, or a hub id resolved as `zhiku-models` resolves
    /// them (a name under `models_dir` first, e.g. `ppocr` for `models/ppocr`).
    pub fn load(
        model: &str,
        models_dir: Option<&Path>,
        options: OcrOptions,
    ) -> Result<Self, OcrError> {
        if cfg!(not(feature = "tract")) && options.runtime == OcrRuntime::Tract {
            return Err(OcrError::TractNotBuilt);
        }
        let source = ModelSource::resolve(model, models_dir)?;
        let det = source.get(DETECTION_MODEL)?;
        let rec = source.get(RECOGNITION_MODEL)?;
        let cls = source.get(DIRECTION_MODEL)?;
        let runtime = match options.runtime {
            OcrRuntime::OnnxRuntime => Runtime::OnnxRuntime {
                cuda_device: options.cuda_device,
                library: match (&options.runtime_library, std::env::var_os("ORT_DYLIB_PATH")) {
                    (Some(path), _) => path.clone(),
                    (None, Some(path)) if !path.is_empty() => PathBuf::from(path),
                    _ => source.get_optional(RUNTIME_LIBRARY).ok_or_else(|| {
                        OcrError::NoRuntime(det.parent().map(Path::to_path_buf).unwrap_or_default())
                    })?,
                },
            },
            #[cfg(feature = "tract")]
            OcrRuntime::Tract if options.cuda_device.is_some() => {
                return Err(OcrError::BadModel {
                    model: model.to_string(),
                    reason: "tract runs on the CPU only: use ONNX Runtime for a CUDA device".into(),
                });
            }
            #[cfg(feature = "tract")]
            OcrRuntime::Tract => Runtime::Tract,
            #[cfg(not(feature = "tract"))]
            OcrRuntime::Tract => return Err(OcrError::TractNotBuilt),
        };
        let detector = Model::load("detector", &det, &runtime, options.threads, 32)?;
        let direction = Model::load("direction classifier", &cls, &runtime, options.threads, 1)?;
        let recognizer = Model::load("recognizer", &rec, &runtime, options.threads, 1)?;
        let characters = recognizer
            .metadata("character")
            .ok_or_else(|| OcrError::BadModel {
                model: rec.display().to_string(),
                reason: "no `character` list in its metadata".into(),
            })?;
        let charset = Charset::from_metadata(&characters);
        tracing::debug!(model = %source.id(), characters = charset.classes() - 2, "OCR models loaded");
        Ok(Self {
            detector,
            direction,
            recognizer,
            charset,
            options,
            db: DbParams::default(),
        })
    }

    /// Decodes image bytes (with `limits`) and reads them.
    pub fn recognize_bytes(&self, bytes: &[u8], limits: &DecodeLimits) -> Result<Page, OcrError> {
        self.recognize(&decode_image(bytes, limits)?)
    }

    /// Reads a page image.
    pub fn recognize(&self, image: &RgbImage) -> Result<Page, OcrError> {
        let (raw_w, raw_h) = image.dimensions();
        if raw_w == 0 || raw_h == 0 {
            return Ok(Page {
                width: raw_w,
                height: raw_h,
                ..Page::default()
            });
        }
        // Scale into the detector's range, as PaddleOCR does (sides rounded to 32).
        let (mut work, mut scale_x, mut scale_y) = (None, 1.0f64, 1.0f64);
        let long = raw_w.max(raw_h);
        let short = raw_w.min(raw_h);
        let target = if long > MAX_SIDE {
            Some(f64::from(MAX_SIDE) / f64::from(long))
        } else if short < MIN_SIDE {
            Some(f64::from(MIN_SIDE) / f64::from(short))
        } else {
            None
        };
        if let Some(ratio) = target {
            let round32 =
                |v: u32| ((((f64::from(v) * ratio).trunc()) / 32.0).round() as u32 * 32).max(32);
            let (w, h) = (round32(raw_w), round32(raw_h));
            work = Some(imgproc::resize_rgb(image, w, h));
            scale_x = f64::from(raw_w) / f64::from(w);
            scale_y = f64::from(raw_h) / f64::from(h);
        }
        let scaled: &RgbImage = work.as_ref().unwrap_or(image);
        let (w, h) = scaled.dimensions();
        let pad = if h <= MIN_SIDE || f64::from(w) / f64::from(h) > f64::from(MAX_ASPECT) {
            let target_h = (w / MAX_ASPECT).max(MIN_SIDE) * 2;
            target_h.abs_diff(h) / 2
        } else {
            0
        };
        let padded;
        let page = if pad > 0 {
            padded = imgproc::pad_vertical(scaled, pad);
            &padded
        } else {
            scaled
        };

        let mut boxes = self.detect(page)?;
        let mut crops = Vec::with_capacity(boxes.len());
        let mut vertical = Vec::with_capacity(boxes.len());
        boxes.retain(|quad| {
            let cw = geometry::distance(quad[0], quad[1]).max(geometry::distance(quad[2], quad[3]))
                as u32;
            let ch = geometry::distance(quad[0], quad[3]).max(geometry::distance(quad[1], quad[2]))
                as u32;
            if cw == 0 || ch == 0 {
                return false;
            }
            let crop = imgproc::warp_crop(page, quad, cw, ch);
            // Tall crops hold vertical text: turned to run left to right.
            let tall = f64::from(ch) / f64::from(cw) >= 1.5;
            crops.push(if tall {
                image::imageops::rotate270(&crop)
            } else {
                crop
            });
            vertical.push(tall);
            true
        });
        if self.options.use_direction && !crops.is_empty() {
            rec::fix_direction(&self.direction, &mut crops, self.options.batch)?;
        }
        let texts = if crops.is_empty() {
            Vec::new()
        } else {
            rec::recognize_lines(&self.recognizer, &self.charset, &crops, self.options.batch)?
        };
        let mut lines = Vec::new();
        for ((quad, (text, confidence)), vertical) in boxes.iter().zip(texts).zip(vertical) {
            if text.trim().is_empty() || confidence < self.options.min_confidence {
                continue;
            }
            let bbox = quad.map(|[x, y]| Point {
                x: (x * scale_x).clamp(0.0, f64::from(raw_w)) as f32,
                y: ((y - f64::from(pad)) * scale_y).clamp(0.0, f64::from(raw_h)) as f32,
            });
            lines.push(Line {
                text,
                bbox,
                confidence,
                vertical,
            });
        }
        Ok(Page::from_lines(raw_w, raw_h, lines))
    }

    /// Line boxes on the (scaled, padded) page.
    fn detect(&self, page: &RgbImage) -> Result<Vec<[[f64; 2]; 4]>, OcrError> {
        let (w, h) = det::input_size(page.width(), page.height(), DET_LIMIT_SIDE);
        let plane = w * h;
        let mut data = vec![0.0f32; 3 * plane];
        imgproc::resize_normalize_bgr(page, w, h, &mut data, plane, w);
        let (shape, prob) = self.detector.run([1, 3, h, w], data)?;
        let (map_h, map_w) = match shape[..] {
            [1, 1, mh, mw] => (mh, mw),
            _ => {
                return Err(OcrError::Inference {
                    model: "detector",
                    reason: format!("unexpected output shape {shape:?}"),
                });
            }
        };
        Ok(det::boxes_from_map(
            &prob,
            map_w,
            map_h,
            page.width(),
            page.height(),
            &self.db,
        ))
    }
}
