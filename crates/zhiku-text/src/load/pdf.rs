//! The text layer of a PDF, through lopdf.
//!
//! lopdf (default features off: no rayon, no chrono) parses the file and decodes each page's
//! text operators through the page fonts' encodings and ToUnicode maps; pdf-extract would add
//! layout on top of the same lopdf at several times the build. lopdf indexes into
//! attacker-shaped data and can panic on a corrupt file, so all of it runs under
//! `catch_unwind`, and a panic becomes a "corrupt" error.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Why a PDF gave no text.
#[derive(Debug)]
pub(super) enum PdfError {
    /// The parser refused the file (or panicked on it).
    Corrupt(String),
    /// The file parsed, but its pages carry no text: a scan.
    NoTextLayer,
}

/// The text of every page, pages separated by a blank line.
pub(super) fn text(bytes: &[u8]) -> Result<String, PdfError> {
    guarded(|| extract(bytes))
}

/// Runs the parser, turning a panic into [`PdfError::Corrupt`] with the panic's message.
fn guarded(parse: impl FnOnce() -> Result<String, PdfError>) -> Result<String, PdfError> {
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

fn extract(bytes: &[u8]) -> Result<String, PdfError> {
    let document =
        lopdf::Document::load_mem(bytes).map_err(|e| PdfError::Corrupt(e.to_string()))?;
    let pages = document.get_pages();
    if pages.is_empty() {
        return Err(PdfError::Corrupt("it has no pages".to_string()));
    }
    let mut text_pages = Vec::new();
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
        let page = join_wrapped_lines(page.trim());
        if !page.is_empty() {
            text_pages.push(page);
        }
    }
    if text_pages.is_empty() {
        return Err(first_error.map_or(PdfError::NoTextLayer, PdfError::Corrupt));
    }
    Ok(text_pages.join("\n\n"))
}

/// PDFs store lines, not paragraphs: a sentence wrapped at the margin arrives as two lines,
/// and the splitter (which prefers line breaks to sentence ends) would cut it there. A line
/// break between two CJK characters, where the first ends no sentence, is such a wrap and is
/// removed; between two Latin letters (or a comma and a lower-case letter) it becomes a space.
fn join_wrapped_lines(page: &str) -> String {
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
        let result = guarded(|| panic!("index out of bounds"));
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
