//! PDF pages rendered for the OCR where their images are not enough: text drawn as vector
//! paths or Type3 glyphs, images cut into many tiles, images in no encoding we extract, or
//! every page with `--ocr always`. hayro (pure Rust, MIT/Apache-2.0, its own parser beside
//! lopdf) renders them on the CPU.

use hayro::hayro_interpret::InterpreterSettings;
use hayro::hayro_syntax::Pdf;
use hayro::vello_cpu::color::palette::css::WHITE;
use hayro::{PixmapSettings, RenderCache, RenderSettings};

use super::{ScanLimits, pdf_filters};

/// The resolution pages are rendered at: 200 dpi puts 10-point text about 28 pixels tall,
/// inside the 20–40 pixel line height PP-OCR's detector and recogniser read best.
pub(super) const DPI: f32 = 200.0;

/// The most pixels a rendering has on its long side: the OCR scales larger pages down to
/// 2000 anyway (PP-OCR's limit), so an A4 page comes out at about 171 dpi.
pub(super) const MAX_SIDE: f32 = 2000.0;

/// A PDF opened for rendering, once, the first time a page needs it.
pub(super) struct Renderer<'a> {
    bytes: &'a [u8],
    pdf: Option<Result<Pdf, String>>,
}

impl<'a> Renderer<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pdf: None }
    }

    /// Page `index` (from 0, in page order) as a gray PNG.
    pub fn page_png(&mut self, index: usize, limits: &ScanLimits) -> Result<Vec<u8>, String> {
        let bytes = self.bytes;
        let pdf = self
            .pdf
            .get_or_insert_with(|| {
                Pdf::new(bytes.to_vec())
                    .map_err(|e| format!("the renderer cannot open the pdf: {e:?}"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let page = pdf
            .pages()
            .get(index)
            .ok_or_else(|| format!("the renderer finds no page {}", index + 1))?;
        let (width, height) = page.render_dimensions();
        if !(width > 0.0 && height > 0.0) {
            return Err("the page has no area to render".into());
        }
        let scale = (DPI / 72.0).min(MAX_SIDE / width.max(height));
        let (w, h) = ((width * scale) as u64, (height * scale) as u64);
        if w == 0 || h == 0 || w * h > limits.max_pixels {
            return Err(format!("the page renders to {w}x{h} pixels, out of bounds"));
        }
        let cache = RenderCache::new();
        let pixmap = hayro::render(
            page,
            &cache,
            &InterpreterSettings::default(),
            &RenderSettings::default(),
            &PixmapSettings {
                x_scale: scale,
                y_scale: scale,
                bg_color: WHITE,
            },
        );
        // On white, every pixel is opaque: premultiplied is plain RGB. Text needs no colour.
        let gray: Vec<u8> = pixmap
            .data()
            .iter()
            .map(|p| {
                ((77 * u32::from(p.r) + 150 * u32::from(p.g) + 29 * u32::from(p.b)) >> 8) as u8
            })
            .collect();
        pdf_filters::png_of(
            u32::from(pixmap.width()),
            u32::from(pixmap.height()),
            1,
            false,
            &gray,
        )
    }
}
