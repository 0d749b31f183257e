//! A test corpus the tests make themselves: Chinese and mixed text rendered to page images
//! with a CJK font, clean and degraded (noise, blur, skew, JPEG). The ground truth is the
//! text that was rendered. Shared by the accuracy tests and the `ocr-bench` example.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use image::{Rgb, RgbImage};

/// Paragraphs of Chinese with Latin words and numbers, as enterprise documents have.
pub const PARAGRAPHS: [&str; 6] = [
    "知识库问答系统先把文档切分成段落，再用向量模型把每个段落编码成向量，保存到向量数据库中。用户提问时，系统检索最相关的段落，交给大语言模型生成答案。",
    "扫描件和图片中的文字需要先经过光学字符识别。本系统使用PP-OCRv4模型，检测模型找出文本行的位置，方向分类器判断文字是否倒置，识别模型输出每一行的文字和置信度。",
    "2024年第三季度，公司共处理合同12580份，其中电子合同占比达到67.5%。财务部门要求在10月15日之前完成全部归档工作，并提交季度报告。",
    "部署时建议使用至少16GB内存的服务器。若使用GPU推理，显存不低于8GB即可满足大部分场景的需求，单张显卡每秒可以处理约30页文档。",
    "为了保证数据安全，所有上传的文件都在本地处理，不会发送到外部服务。管理员可以为每个知识库设置访问权限，并定期审计查询记录。",
    "如果识别结果出现错误，用户可以在网页上直接修改，系统会保存修改后的版本，并在下一次检索时使用新的文本内容。",
];

pub const TITLE: &str = "企业知识库建设指南（第2版）";

/// A CJK font: `ZHIKU_CJK_FONT`, else Debian's WenQuanYi Micro Hei or Noto Sans CJK.
pub fn find_font() -> Option<FontVec> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("ZHIKU_CJK_FONT") {
        candidates.push(path.into());
    }
    for path in [
        "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    ] {
        candidates.push(path.into());
    }
    candidates
        .iter()
        .find_map(|path| FontVec::try_from_vec_and_index(std::fs::read(path).ok()?, 0).ok())
}

/// The OCR model directory: `$ZHIKU_MODELS_DIR/ppocr`, else the workspace's `models/ppocr`.
pub fn models_dir() -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    base.join("ppocr")
}

/// A rendered page and what it says.
pub struct RenderedPage {
    pub image: RgbImage,
    /// The text of each paragraph (the title is one), in reading order.
    pub paragraphs: Vec<String>,
    /// Each rendered line: its text and its box (left, top, right, bottom).
    pub lines: Vec<(String, [f32; 4])>,
}

impl RenderedPage {
    pub fn text(&self) -> String {
        self.paragraphs.join("\n")
    }
}

/// How a page is laid out.
pub struct Layout<'a> {
    pub width: u32,
    pub font_px: f32,
    pub columns: u32,
    pub title: Option<&'a str>,
    pub paragraphs: &'a [&'a str],
}

fn draw_text(
    image: &mut RgbImage,
    font: &FontVec,
    px: f32,
    x: f32,
    baseline: f32,
    text: &str,
) -> f32 {
    let scaled = font.as_scaled(PxScale::from(px));
    let mut pen = x;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        let glyph = id.with_scale_and_position(PxScale::from(px), point(pen, baseline));
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (x, y) = (
                    bounds.min.x as i64 + i64::from(gx),
                    bounds.min.y as i64 + i64::from(gy),
                );
                if x >= 0 && y >= 0 && (x as u32) < image.width() && (y as u32) < image.height() {
                    let p = image.get_pixel_mut(x as u32, y as u32);
                    let ink = (255.0 * (1.0 - coverage.clamp(0.0, 1.0))) as u8;
                    for c in 0..3 {
                        p[c] = p[c].min(ink);
                    }
                }
            });
        }
        pen += scaled.h_advance(id);
    }
    pen - x
}

fn advance(font: &FontVec, px: f32, text: &str) -> f32 {
    let scaled = font.as_scaled(PxScale::from(px));
    text.chars()
        .map(|c| scaled.h_advance(scaled.glyph_id(c)))
        .sum()
}

/// Wraps a paragraph to `width` pixels, its first line indented by two characters.
fn wrap(font: &FontVec, px: f32, width: f32, text: &str) -> Vec<(f32, String)> {
    let mut lines = Vec::new();
    let mut indent = 2.0 * px;
    let mut line = String::new();
    for c in text.chars() {
        let mut next = line.clone();
        next.push(c);
        if indent + advance(font, px, &next) > width && !line.is_empty() {
            lines.push((indent, std::mem::take(&mut line)));
            indent = 0.0;
        }
        line.push(c);
    }
    if !line.is_empty() {
        lines.push((indent, line));
    }
    lines
}

/// Renders black text on a white page.
pub fn render(font: &FontVec, layout: &Layout) -> RenderedPage {
    let px = layout.font_px;
    let margin = (2.5 * px).max(40.0);
    let gutter = 3.0 * px;
    let line_height = 1.6 * px;
    let columns = layout.columns.max(1);
    let column_width =
        (layout.width as f32 - 2.0 * margin - gutter * (columns - 1) as f32) / columns as f32;
    let wrapped: Vec<Vec<(f32, String)>> = layout
        .paragraphs
        .iter()
        .map(|p| wrap(font, px, column_width, p))
        .collect();
    let total_lines: usize = wrapped.iter().map(Vec::len).sum();
    // Lines per column: paragraphs flow into the next column when this many are used.
    let per_column = total_lines.div_ceil(columns as usize);
    let title_height = if layout.title.is_some() {
        2.5 * px
    } else {
        0.0
    };
    let body_height = (per_column + layout.paragraphs.len()) as f32 * line_height;
    let height = (2.0 * margin + title_height + body_height + line_height).ceil() as u32;
    let mut image = RgbImage::from_pixel(layout.width, height, Rgb([255, 255, 255]));
    let scaled = font.as_scaled(PxScale::from(px));
    let mut lines = Vec::new();
    let mut paragraphs = Vec::new();
    let mut y = margin;
    if let Some(title) = layout.title {
        let title_px = 1.4 * px;
        let w = advance(font, title_px, title);
        let x = (layout.width as f32 - w) / 2.0;
        let ascent = font.as_scaled(PxScale::from(title_px)).ascent();
        draw_text(&mut image, font, title_px, x, y + ascent, title);
        lines.push((title.to_string(), [x, y, x + w, y + title_px]));
        paragraphs.push(title.to_string());
        y += title_height;
    }
    let body_top = y;
    let (mut column, mut used) = (0u32, 0usize);
    for para in &wrapped {
        let mut text = String::new();
        for (indent, line) in para {
            if used >= per_column && column + 1 < columns {
                column += 1;
                used = 0;
                y = body_top;
            }
            let x = margin + column as f32 * (column_width + gutter) + indent;
            let w = draw_text(&mut image, font, px, x, y + scaled.ascent(), line);
            lines.push((line.clone(), [x, y, x + w, y + px]));
            text.push_str(line);
            y += line_height;
            used += 1;
        }
        y += 0.6 * px;
        paragraphs.push(text);
    }
    RenderedPage {
        image,
        paragraphs,
        lines,
    }
}

/// A small deterministic generator (xorshift64*), so pages are the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Adds grey noise of up to ±`amplitude` levels to every pixel.
pub fn noise(image: &RgbImage, amplitude: f32, seed: u64) -> RgbImage {
    let mut rng = Rng::new(seed);
    let mut out = image.clone();
    for p in out.pixels_mut() {
        let d = rng.signed() * amplitude;
        for c in 0..3 {
            p[c] = (f32::from(p[c]) + d).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// A box blur of `radius`, applied twice (close to a Gaussian).
pub fn blur(image: &RgbImage, radius: u32) -> RgbImage {
    let pass = |src: &RgbImage, horizontal: bool| {
        let (w, h) = src.dimensions();
        RgbImage::from_fn(w, h, |x, y| {
            let mut acc = [0u32; 3];
            let mut n = 0;
            for d in -(radius as i64)..=radius as i64 {
                let (sx, sy) = if horizontal {
                    (x as i64 + d, y as i64)
                } else {
                    (x as i64, y as i64 + d)
                };
                if sx >= 0 && sy >= 0 && (sx as u32) < w && (sy as u32) < h {
                    let p = src.get_pixel(sx as u32, sy as u32);
                    for c in 0..3 {
                        acc[c] += u32::from(p[c]);
                    }
                    n += 1;
                }
            }
            Rgb(acc.map(|v| (v / n.max(1)) as u8))
        })
    };
    let mut out = image.clone();
    for _ in 0..2 {
        out = pass(&pass(&out, true), false);
    }
    out
}

/// Turns the page by `degrees` about its centre (white where nothing was), bilinear.
pub fn rotate(image: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let (sx, sy) = (c * dx + s * dy + cx, -s * dx + c * dy + cy);
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let at = |x: f32, y: f32| -> [f32; 3] {
            if x < 0.0 || y < 0.0 || x >= w as f32 || y >= h as f32 {
                [255.0; 3]
            } else {
                image.get_pixel(x as u32, y as u32).0.map(f32::from)
            }
        };
        let (a, b, cc, d) = (
            at(x0, y0),
            at(x0 + 1.0, y0),
            at(x0, y0 + 1.0),
            at(x0 + 1.0, y0 + 1.0),
        );
        Rgb(std::array::from_fn(|k| {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bottom = cc[k] + (d[k] - cc[k]) * fx;
            (top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// Encodes to JPEG at `quality` and decodes back.
pub fn jpeg(image: &RgbImage, quality: u8) -> RgbImage {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(image)
        .expect("JPEG encoding of an in-memory image");
    image::load_from_memory(&bytes)
        .expect("decoding our own JPEG")
        .into_rgb8()
}

/// The named test conditions: (name, page).
pub fn conditions(font: &FontVec) -> Vec<(&'static str, RenderedPage)> {
    let page = |px: f32, columns: u32, title: bool| {
        render(
            font,
            &Layout {
                width: if columns > 1 { 1400 } else { 1000 },
                font_px: px,
                columns,
                title: title.then_some(TITLE),
                paragraphs: &PARAGRAPHS,
            },
        )
    };
    let degraded = |f: &dyn Fn(&RgbImage) -> RgbImage| {
        let mut p = page(24.0, 1, true);
        p.image = f(&p.image);
        p
    };
    vec![
        ("clean-24px", page(24.0, 1, true)),
        ("small-16px", page(16.0, 1, true)),
        ("large-40px", page(40.0, 1, true)),
        ("noise", degraded(&|i| noise(i, 60.0, 7))),
        ("blur", degraded(&|i| blur(i, 1))),
        ("skew-2deg", degraded(&|i| rotate(i, 2.0))),
        ("jpeg-q25", degraded(&|i| jpeg(i, 25))),
        ("two-column", page(22.0, 2, true)),
    ]
}

/// Folds what OCR cannot tell apart: whitespace is dropped, full-width ASCII forms become
/// ASCII (the recogniser writes `,` or `，` for the same glyph shape at small sizes).
pub fn normalize(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '。' => '.',
            '、' => ',',
            _ => c,
        })
        .collect()
}

/// Character error rate: edit distance over the reference's length, after [`normalize`].
pub fn cer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (normalize(reference), normalize(hypothesis));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rc) in r.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, hc) in h.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(rc != hc));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[h.len()] as f64 / r.len() as f64
}
