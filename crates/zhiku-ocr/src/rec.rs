//! Text recognition: PP-OCR's CRNN-style model read by greedy CTC decoding, and the
//! direction classifier that turns upside-down lines before it.

use image::RgbImage;

use crate::OcrError;
use crate::imgproc::resize_normalize_bgr;
use crate::onnx::Model;

/// Input height of both line models.
const LINE_HEIGHT: usize = 48;
/// The recogniser's narrowest input width (PP-OCRv4's 3 × 48 × 320).
const REC_MIN_WIDTH: usize = 320;
/// The direction classifier's fixed input width.
const CLS_WIDTH: usize = 192;
/// A line is turned when the classifier says "180°" with at least this probability.
const CLS_THRESH: f32 = 0.9;

/// The width a line image is resized to at the models' height: its aspect ratio kept,
/// rounded up, at most `max_width`.
fn resized_width(image: &RgbImage, max_width: usize) -> usize {
    let ratio = f64::from(image.width()) / f64::from(image.height().max(1));
    ((LINE_HEIGHT as f64 * ratio).ceil() as usize).clamp(1, max_width.max(1))
}

fn aspect(image: &RgbImage) -> f64 {
    f64::from(image.width()) / f64::from(image.height().max(1))
}

/// Indices of `images` in order of aspect ratio: batches of similar widths pad least.
fn by_aspect(images: &[RgbImage]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by(|&a, &b| aspect(&images[a]).total_cmp(&aspect(&images[b])));
    order
}

/// Packs images into a zero-padded batch tensor of `width`.
fn batch_tensor(images: &[&RgbImage], width: usize) -> Vec<f32> {
    let plane = LINE_HEIGHT * width;
    let mut data = vec![0.0f32; images.len() * 3 * plane];
    for (i, image) in images.iter().enumerate() {
        let w = resized_width(image, width);
        resize_normalize_bgr(
            image,
            w,
            LINE_HEIGHT,
            &mut data[i * 3 * plane..(i + 1) * 3 * plane],
            plane,
            width,
        );
    }
    data
}

/// Turns the lines the classifier finds upside down; `batch` lines per model call.
pub(crate) fn fix_direction(
    model: &Model,
    lines: &mut [RgbImage],
    batch: usize,
) -> Result<(), OcrError> {
    let order = by_aspect(lines);
    for chunk in order.chunks(batch.max(1)) {
        let images: Vec<&RgbImage> = chunk.iter().map(|&i| &lines[i]).collect();
        let data = batch_tensor(&images, CLS_WIDTH);
        let (shape, probs) = model.run([chunk.len(), 3, LINE_HEIGHT, CLS_WIDTH], data)?;
        let classes = shape.get(1).copied().unwrap_or(0);
        if shape.first() != Some(&chunk.len()) || classes < 2 || probs.len() < chunk.len() * classes
        {
            return Err(OcrError::Inference {
                model: "direction classifier",
                reason: format!("unexpected output shape {shape:?}"),
            });
        }
        for (row, &i) in chunk.iter().enumerate() {
            let p = &probs[row * classes..(row + 1) * classes];
            let best = argmax(p);
            if best == 1 && p[1] > CLS_THRESH {
                image::imageops::rotate180_in_place(&mut lines[i]);
            }
        }
    }
    Ok(())
}

/// The recogniser's vocabulary: index 0 is CTC's blank, then the model's characters, then
/// a space (PaddleOCR appends it when `use_space_char` is on, as for these models).
#[derive(Debug, Clone)]
pub(crate) struct Charset {
    chars: Vec<String>,
}

impl Charset {
    /// From the `character` metadata of the recognition model: one character a line, split
    /// as Python's `str.splitlines` splits (the list was written by it).
    pub fn from_metadata(text: &str) -> Self {
        let mut chars = vec![String::new()];
        chars.extend(python_splitlines(text).map(str::to_owned));
        chars.push(" ".to_owned());
        Self { chars }
    }

    /// Classes the model's output must have: blank, characters, space.
    pub fn classes(&self) -> usize {
        self.chars.len()
    }
}

fn python_splitlines(text: &str) -> impl Iterator<Item = &str> {
    let breaks = |c: char| {
        matches!(
            c,
            '\n' | '\r'
                | '\u{0b}'
                | '\u{0c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    };
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.find(breaks) {
            Some(i) => {
                let line = &rest[..i];
                let after = &rest[i..];
                let skip = if after.starts_with("\r\n") {
                    2
                } else {
                    after.chars().next().map_or(1, char::len_utf8)
                };
                rest = &after[skip..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = "";
                Some(line)
            }
        }
    })
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Greedy CTC: the most likely class at each step, repeats merged, blanks dropped. The
/// confidence is the mean probability of the kept steps (0 for an empty line).
pub(crate) fn ctc_greedy(probs: &[f32], steps: usize, charset: &Charset) -> (String, f32) {
    let classes = charset.classes();
    let mut text = String::new();
    let (mut sum, mut kept) = (0.0f32, 0usize);
    let mut previous = usize::MAX;
    for t in 0..steps {
        let Some(step) = probs.get(t * classes..(t + 1) * classes) else {
            break;
        };
        let best = argmax(step);
        if best != 0 && best != previous {
            if let Some(c) = charset.chars.get(best) {
                text.push_str(c);
            }
            sum += step[best];
            kept += 1;
        }
        previous = best;
    }
    let confidence = if kept == 0 { 0.0 } else { sum / kept as f32 };
    (text, confidence)
}

/// Reads each line image: batches of `batch` lines of similar width, each batch as wide as
/// its widest line (and at least the model's 320).
pub(crate) fn recognize_lines(
    model: &Model,
    charset: &Charset,
    lines: &[RgbImage],
    batch: usize,
) -> Result<Vec<(String, f32)>, OcrError> {
    let mut out = vec![(String::new(), 0.0); lines.len()];
    let order = by_aspect(lines);
    for chunk in order.chunks(batch.max(1)) {
        let max_ratio = chunk
            .iter()
            .map(|&i| aspect(&lines[i]))
            .fold(REC_MIN_WIDTH as f64 / LINE_HEIGHT as f64, f64::max);
        let width = (LINE_HEIGHT as f64 * max_ratio) as usize;
        let images: Vec<&RgbImage> = chunk.iter().map(|&i| &lines[i]).collect();
        let data = batch_tensor(&images, width);
        let (shape, probs) = model.run([chunk.len(), 3, LINE_HEIGHT, width], data)?;
        let (n, steps, classes) = match shape[..] {
            [n, steps, classes] => (n, steps, classes),
            _ => (0, 0, 0),
        };
        if n != chunk.len() || classes != charset.classes() || probs.len() < n * steps * classes {
            return Err(OcrError::Inference {
                model: "recognizer",
                reason: format!(
                    "unexpected output shape {shape:?} for {} lines and {} classes",
                    chunk.len(),
                    charset.classes()
                ),
            });
        }
        for (row, &i) in chunk.iter().enumerate() {
            out[i] = ctc_greedy(
                &probs[row * steps * classes..(row + 1) * steps * classes],
                steps,
                charset,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctc_merges_repeats_and_drops_blanks() {
        let charset = Charset::from_metadata("a\nb\nc");
        assert_eq!(charset.classes(), 5);
        // Steps: a a blank a b space (c is never best).
        let mut probs = Vec::new();
        for best in [1usize, 1, 0, 1, 2, 4] {
            let mut step = vec![0.0; 5];
            step[best] = 0.8;
            probs.extend(step);
        }
        let (text, confidence) = ctc_greedy(&probs, 6, &charset);
        assert_eq!(text, "aab ");
        assert!((confidence - 0.8).abs() < 1e-6);
        assert_eq!(
            ctc_greedy(&[1.0, 0.0, 0.0, 0.0, 0.0], 1, &charset),
            (String::new(), 0.0)
        );
        // A short buffer stops decoding instead of panicking.
        assert_eq!(ctc_greedy(&[0.0, 1.0], 3, &charset).0, "");
    }

    #[test]
    fn splitlines_like_python() {
        let lines: Vec<&str> = python_splitlines("a\r\nb\rc\u{2028}d\n").collect();
        assert_eq!(lines, ["a", "b", "c", "d"]);
        assert_eq!(python_splitlines("").count(), 0);
        assert_eq!(
            python_splitlines("x\n\ny").collect::<Vec<_>>(),
            ["x", "", "y"]
        );
    }

    #[test]
    fn widths_keep_aspect_within_limits() {
        let wide = RgbImage::new(1000, 10);
        assert_eq!(resized_width(&wide, 320), 320);
        let small = RgbImage::new(24, 48);
        assert_eq!(resized_width(&small, 320), 24);
        let degenerate = RgbImage::new(0, 0);
        assert_eq!(resized_width(&degenerate, 320), 1);
    }
}
