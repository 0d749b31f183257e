//! Document loaders: a file's name and bytes in, a [`Document`] out.
//!
//! The extension picks the loader. Every failure is a [`LoadError`] that names the file, so
//! that one bad file in a batch is reported and skipped while the rest load
//! ([`load_paths`]). No loader panics on any input: the one parser that can (lopdf) runs
//! under `catch_unwind`.

mod decode;
mod docx;
mod html;
mod pdf;
mod table;

use std::path::Path;

use crate::{Document, Format, RECORD_SEPARATOR};

/// Why a file could not be loaded. Every variant names the file, as given to the loader.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The extension names no format we read.
    #[error(
        "{file}: unsupported file type (zhiku reads .txt, .md, .markdown, .html, .htm, .xhtml, .pdf, .docx, .csv and .tsv)"
    )]
    Unsupported {
        /// The file.
        file: String,
    },
    /// The file could not be read from disk.
    #[error("{file}: cannot read the file: {source}")]
    Io {
        /// The file.
        file: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A text format whose bytes are no text we can decode: binary data, or an encoding other
    /// than UTF-8, UTF-16 with a byte-order mark, and GB18030/GBK.
    #[error("{file}: not a {format} file: {reason}")]
    NotText {
        /// The file.
        file: String,
        /// The format its extension names.
        format: Format,
        /// What gave it away.
        reason: String,
    },
    /// A structured file (pdf, docx, csv) that its parser refused.
    #[error("{file}: corrupt {format} file: {reason}")]
    Corrupt {
        /// The file.
        file: String,
        /// The format its extension names.
        format: Format,
        /// What the parser said.
        reason: String,
    },
    /// The file is over the size limit; nothing of it was read.
    #[error("{file}: too large ({size} bytes; the limit is {limit})")]
    TooLarge {
        /// The file.
        file: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The path names another file than when it was listed (replaced in between).
    #[error("{file}: the file changed between listing and reading; not read")]
    Changed {
        /// The file.
        file: String,
    },
    /// A PDF with pages but no text layer: a scan, which would need OCR.
    #[error(
        "{file}: the pdf has no text layer (a scanned document needs OCR, which zhiku does not do)"
    )]
    NoTextLayer {
        /// The file.
        file: String,
    },
}

impl LoadError {
    /// The file the error is about.
    pub fn file(&self) -> &str {
        match self {
            Self::Unsupported { file }
            | Self::Io { file, .. }
            | Self::NotText { file, .. }
            | Self::Corrupt { file, .. }
            | Self::TooLarge { file, .. }
            | Self::Changed { file }
            | Self::NoTextLayer { file } => file,
        }
    }
}

/// Loads a file from its name (which picks the format by extension) and its bytes.
///
/// - txt, md: UTF-8, UTF-16 with a byte-order mark, or else GB18030 (a superset of GBK and
///   GB2312, the legacy encodings of Chinese files); a BOM is stripped and line ends become
///   `\n`. Markdown stays markdown, so its headings reach the splitter.
/// - html: the visible text (no script, style, head or hidden elements); block elements
///   become line breaks and `h1`–`h6` become markdown headings.
/// - pdf: the text layer of every page, pages separated by a blank line.
/// - docx: the paragraphs of `word/document.xml`; heading styles become markdown headings,
///   table rows become `cell | cell` lines.
/// - csv, tsv: one record per data row, rendered `header: value` per line (empty values left
///   out), in [`Document::records`].
pub fn load(file_name: &str, bytes: &[u8]) -> Result<Document, LoadError> {
    let file = || file_name.to_string();
    let format =
        Format::from_file_name(file_name).ok_or_else(|| LoadError::Unsupported { file: file() })?;
    let corrupt = |reason: String| LoadError::Corrupt {
        file: file(),
        format,
        reason,
    };
    let decoded = || {
        decode::decode(bytes).map_err(|reason| LoadError::NotText {
            file: file(),
            format,
            reason,
        })
    };
    let mut records = None;
    let text = match format {
        Format::Text | Format::Markdown => decoded()?,
        Format::Html => html::visible_text(&decoded()?),
        Format::Pdf => match pdf::text(bytes) {
            Ok(text) => text,
            Err(pdf::PdfError::NoTextLayer) => return Err(LoadError::NoTextLayer { file: file() }),
            Err(pdf::PdfError::Corrupt(reason)) => return Err(corrupt(reason)),
        },
        Format::Docx => docx::text(bytes).map_err(corrupt)?,
        Format::Csv => {
            let delimiter = if has_extension(file_name, "tsv") {
                b'\t'
            } else {
                b','
            };
            let rows = table::records(&decoded()?, delimiter).map_err(corrupt)?;
            let text = rows.join(RECORD_SEPARATOR);
            records = Some(rows);
            text
        }
    };
    Ok(Document {
        source: file(),
        format,
        text,
        records,
    })
}

/// Reads and loads one file; errors name it by its path.
pub fn load_path(path: &Path) -> Result<Document, LoadError> {
    let file = path.display().to_string();
    if Format::from_file_name(&file).is_none() {
        // Refuse before reading: an unsupported file may be large.
        return Err(LoadError::Unsupported { file });
    }
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        file: file.clone(),
        source,
    })?;
    load(&file, &bytes)
}

/// Loads every file of a batch: a file that fails gives its error in its place, and the
/// rest still load.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Vec<Result<Document, LoadError>> {
    paths.iter().map(|p| load_path(p.as_ref())).collect()
}

fn has_extension(file_name: &str, extension: &str) -> bool {
    Path::new(file_name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(extension))
}
