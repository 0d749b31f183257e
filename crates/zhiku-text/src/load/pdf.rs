//! The text layer of a PDF, through lopdf.
//!
//! lopdf (default features off: no rayon, no chrono) parses the file and decodes each page's
//! text operators through the page fonts' encodings and ToUnicode maps; pdf-extract would add
//! layout on top of the same lopdf at several times the build. lopdf indexes into
//! attacker-shaped data and can panic on a corrupt file, so all of it runs under
//! `catch_unwind`, and a panic becomes a "corrupt" error.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::PageText;
use crate::load::{ScanLimits, ScanPage};

/// Why a PDF gave no text.
#[derive(Debug)]
pub(super) enum PdfError {
    /// The parser refused the file (or panicked on it).
    Corrupt(String),
    /// The file parsed, but its pages carry no text: a scan.
    NoTextLayer,
    /// The file is protected by a password.
    Encrypted,
    /// A page that needs OCR has no image the OCR can read.
    UnreadablePage { page: u32, reason: String },
}

/// The text layer of every page (pages without one give empty text).
pub(super) fn text_pages(bytes: &[u8]) -> Result<Vec<PageText>, PdfError> {
    guarded(|| {
        let document = parse(bytes)?;
        let (pages, first_error) = text_layer(&document)?;
        if pages.iter().all(|p| p.text.is_empty()) {
            return Err(first_error.map_or(PdfError::NoTextLayer, PdfError::Corrupt));
        }
        Ok(pages)
    })
}

/// A page with more images than this is read from its rendering: a scan cut into tiles (or
/// strips) reads badly tile by tile, its lines cut at the tiles' edges.
const MAX_TILES: usize = 8;

/// Every page with its text layer, and for the pages without one (every page, when
/// `always`) their images for OCR: the images a scanner embeds, or the page rendered when
/// it has none we read (text drawn as paths, Type3 glyphs, an unread encoding) or more than
/// [`MAX_TILES`]. An image that cannot be decoded is not rendered over: its page's error
/// names the encoding.
pub(super) fn scan_pages(
    bytes: &[u8],
    always: bool,
    limits: &ScanLimits,
) -> Result<Vec<ScanPage>, PdfError> {
    guarded(|| {
        let document = parse(bytes)?;
        let (pages, first_error) = text_layer(&document)?;
        let ids = document.get_pages();
        let mut out = Vec::with_capacity(pages.len());
        let mut unreadable = None;
        let mut renderer = super::pdf_render::Renderer::new(bytes);
        for (index, page) in pages.into_iter().enumerate() {
            let wanted = always || page.text.is_empty();
            let images = match ids.get(&page.number) {
                Some(&id) if wanted => {
                    let (images, skipped) = super::pdf_images::page_images(&document, id, limits)
                        .map_err(|over| PdfError::UnreadablePage {
                        page: page.number,
                        reason: over.0,
                    })?;
                    // Text as paths or Type3 glyphs (no image), or tiles: the page itself,
                    // rendered. An image that could not be decoded is not rendered either:
                    // its error stands.
                    let render =
                        (images.is_empty() && skipped.is_none()) || images.len() > MAX_TILES;
                    if render {
                        match renderer.page_png(index, limits) {
                            Ok(png) => vec![png],
                            // Tiles are still read one by one.
                            Err(reason) => {
                                if images.is_empty() {
                                    unreadable.get_or_insert((page.number, reason));
                                }
                                images
                            }
                        }
                    } else {
                        if let (true, Some(reason)) = (images.is_empty(), skipped) {
                            unreadable.get_or_insert((page.number, reason));
                        }
                        images
                    }
                }
                _ => Vec::new(),
            };
            out.push(ScanPage {
                number: page.number,
                text: page.text,
                images,
            });
        }
        if out.iter().all(|p| p.text.is_empty() && p.images.is_empty()) {
            return Err(match (unreadable, first_error) {
                (Some((page, reason)), _) => PdfError::UnreadablePage { page, reason },
                (None, Some(error)) => PdfError::Corrupt(error),
                (None, None) => PdfError::NoTextLayer,
            });
        }
        Ok(out)
    })
}

/// Runs the parser, turning a panic into [`PdfError::Corrupt`] with the panic's message.
fn guarded<T>(parse: impl FnOnce() -> Result<T, PdfError>) -> Result<T, PdfError> {
    catch_unwind(AssertUnwindSafe(parse)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(PdfError::Corrupt(format!(
            "the pdf parser failed: {message}"
        )))
    })
}

fn parse(bytes: &[u8]) -> Result<lopdf::Document, PdfError> {
    let document = match lopdf::Document::load_mem(bytes) {
        Ok(document) => document,
        // lopdf opens a file encrypted with an empty user password itself; any other
        // encrypted file fails to load, or loads without pages.
        Err(_) if declares_encryption(bytes) => return Err(PdfError::Encrypted),
        Err(e) => return Err(PdfError::Corrupt(e.to_string())),
    };
    if document.is_encrypted() {
        return Err(PdfError::Encrypted);
    }
    if document.get_pages().is_empty() {
        // What lopdf gives for a file it could not decrypt.
        if declares_encryption(bytes) {
            return Err(PdfError::Encrypted);
        }
        return Err(PdfError::Corrupt("it has no pages".to_string()));
    }
    Ok(document)
}

/// Whether the file's trailer names an encryption dictionary.
fn declares_encryption(bytes: &[u8]) -> bool {
    bytes.windows(8).any(|w| w == b"/Encrypt")
}

/// Each page's text layer, numbered from 1 in page order, and the first decoding error.
fn text_layer(document: &lopdf::Document) -> Result<(Vec<PageText>, Option<String>), PdfError> {
    let pages = document.get_pages();
    let mut text_pages = Vec::with_capacity(pages.len());
    let mut first_error = None;
    for &number in pages.keys() {
        // A page with one undecodable font still gives the text of its other fonts.
        let mut page = String::new();
        for chunk in document.extract_text_chunks(&[number]) {
            match chunk {
                Ok(chunk) => page.push_str(&chunk),
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("page {number}: {e}"));
                }
            }
        }
        text_pages.push(PageText {
            number,
            text: join_wrapped_lines(page.trim()),
            confidence: None,
        });
    }
    Ok((text_pages, first_error))
}

/// PDFs store lines, not paragraphs: a sentence wrapped at the margin arrives as two lines,
/// and the splitter (which prefers line breaks to sentence ends) would cut it there. A line
/// break between two CJK characters, where the first ends no sentence, is such a wrap and is
/// removed; between two Latin letters (or a comma and a lower-case letter) it becomes a space.
pub(super) fn join_wrapped_lines(page: &str) -> String {
    let chars: Vec<char> = page.chars().collect();
    let mut out = String::with_capacity(page.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n'
            && let (Some(&before), Some(&after)) = (chars.get(i.wrapping_sub(1)), chars.get(i + 1))
        {
            if is_cjk(before) && is_cjk(after) {
                continue;
            }
            if (before.is_alphabetic() || before == ',') && after.is_lowercase() {
                out.push(' ');
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// CJK ideographs and the in-sentence CJK punctuation a wrapped line may end with; not the
/// sentence ends (。！？), after which a line break may be a real one.
fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{4E00}'..='\u{9FFF}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{2FA1F}'
        | '，' | '、' | '；' | '：' | '（' | '“' | '「')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parser_panic_is_a_corrupt_file() {
        let result: Result<(), _> = guarded(|| panic!("index out of bounds"));
        match result {
            Err(PdfError::Corrupt(reason)) => {
                assert_eq!(reason, "the pdf parser failed: index out of bounds");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrapped_lines_are_joined() {
        assert_eq!(
            join_wrapped_lines(
                "基于本地知识库的\n问答系统。\n下一句，\n继续。\nLine one\nwraps here.\nNext"
            ),
            "基于本地知识库的问答系统。\n下一句，继续。\nLine one wraps here.\nNext"
        );
    }
}
