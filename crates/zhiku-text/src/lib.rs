//! zhiku-text: turning files into passages, with pure functions only (no gRPC, no models).
//!
//! - [`PassageSplitter`] cuts text into [`Passage`]s that fit the embedder, Chinese-aware.
//! - The loaders ([`load`], [`load_path`]) turn a file's bytes into a [`Document`].
//! - [`Walker`] finds the files of a list of files and directories, with their document ids.
//! - [`markdown`] has the line tests (a table's delimiter row, a code fence) that the splitter
//!   and answer verification share.
//!
//! ```
//! use zhiku_text::{PassageSplitter, SplitterConfig, load};
//!
//! let md = "# 指南\n\n## 安装\n\n运行安装脚本。需要 6GB 显存。\n";
//! let document = load("guide.md", md.as_bytes())?;
//! let splitter = PassageSplitter::new(SplitterConfig { chunk_size: 250, overlap: 50 })?;
//! let passages = splitter.split_document(&document);
//! assert_eq!(passages[0].indexed_text(), "指南 > 安装\n运行安装脚本。需要 6GB 显存。");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The orchestrator runs `load → split → embed → upsert`; the retriever may use the splitter's
//! types for its BM25 tokens. Nothing here knows about models or services.

mod load;
pub mod markdown;
mod split;
pub mod terms;
mod title;
pub mod walk;

pub use load::{
    LoadError, Loaded, OcrMode, Scan, ScanLimits, ScanPage, load, load_for_ocr, load_path,
    load_paths,
};
pub use split::{
    MAX_CAPTION_CHARS, Passage, PassageSplitter, SplitterConfig, SplitterError, readable_text,
};
pub use title::document_title;
pub use walk::{Walk, WalkError, WalkedFile, Walker};

/// Whether `c` is a Han character of the CJK Unified Ideographs block (U+4E00–U+9FFF): the
/// characters Chinese words are written in, where questions, answers and passages are told
/// apart from figures, names and punctuation.
///
/// ```
/// assert!(zhiku_text::is_han('显'));
/// assert!(!zhiku_text::is_han('6') && !zhiku_text::is_han('，') && !zhiku_text::is_han('B'));
/// ```
pub fn is_han(c: char) -> bool {
    ('\u{4e00}'..='\u{9fff}').contains(&c)
}

/// What [`Document::text`] puts between two records: a blank line, the paragraph break, so
/// that the text still reads as one record per paragraph.
pub const RECORD_SEPARATOR: &str = "\n\n";

/// The file formats the loaders read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Plain text (`.txt`): UTF-8, UTF-16 with a BOM, or GB18030/GBK.
    Text,
    /// Markdown (`.md`, `.markdown`), kept as written so its headings open sections.
    Markdown,
    /// HTML (`.html`, `.htm`): the visible text, headings rendered as markdown headings.
    Html,
    /// PDF (`.pdf`): the text layer.
    Pdf,
    /// Word (`.docx`): the paragraphs, heading styles rendered as markdown headings.
    Docx,
    /// OFD (`.ofd`, GB/T 33190): the pages' text in reading order.
    Ofd,
    /// Comma- or tab-separated values (`.csv`, `.tsv`): one record per row.
    Csv,
    /// A picture of pages (`.png`, `.jpg`, `.jpeg`, `.bmp`, `.tif`, `.tiff`, `.webp`): its
    /// text comes from OCR ([`load_for_ocr`]).
    Image,
}

impl Format {
    /// The format a file name's extension names (case-insensitive), if it is one we read.
    pub fn from_file_name(file_name: &str) -> Option<Self> {
        let extension = std::path::Path::new(file_name).extension()?.to_str()?;
        Some(match extension.to_ascii_lowercase().as_str() {
            "txt" | "text" => Self::Text,
            "md" | "markdown" => Self::Markdown,
            "html" | "htm" | "xhtml" => Self::Html,
            "pdf" => Self::Pdf,
            "docx" => Self::Docx,
            "ofd" => Self::Ofd,
            "csv" | "tsv" => Self::Csv,
            "png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff" | "webp" => Self::Image,
            _ => return None,
        })
    }

    /// A short lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
            Self::Html => "html",
            Self::Pdf => "pdf",
            Self::Docx => "docx",
            Self::Ofd => "ofd",
            Self::Csv => "csv",
            Self::Image => "image",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A loaded file: its text, and for tabular files its records.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file name it came from, as given to the loader: errors and citations name it.
    pub source: String,
    /// The format it was read as.
    pub format: Format,
    /// The whole text. For markdown, html and docx it is markdown (headings as `#` lines), so
    /// that [`PassageSplitter::split_document`] can carry heading paths.
    pub text: String,
    /// For csv: one entry per row, each rendered `header: value` per line. `text` is then
    /// these records joined by [`RECORD_SEPARATOR`], and a passage never spans two of them.
    pub records: Option<Vec<String>>,
    /// For paged formats (pdf, ofd, images): where each page's text lies in `text`, in order;
    /// empty otherwise. Pages without text have none.
    pub pages: Vec<PageSpan>,
    /// For text read by OCR in a document without pages (a DOCX's pictures): where each
    /// picture's text lies in `text`, with the recogniser's confidence, in order.
    pub ocr_spans: Vec<OcrSpan>,
}

/// Text read by OCR inside a document without pages: `[char_start, char_end)` of
/// [`Document::text`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OcrSpan {
    pub char_start: usize,
    pub char_end: usize,
    /// The recogniser's confidence, 0 to 1.
    pub confidence: f32,
}

/// One page's share of a [`Document::text`].
#[derive(Debug, Clone, PartialEq)]
pub struct PageSpan {
    /// The page number, from 1.
    pub number: u32,
    /// Its characters in the document's text, `[char_start, char_end)`.
    pub char_start: usize,
    pub char_end: usize,
    /// For text read by OCR: the recogniser's confidence, 0 to 1.
    pub confidence: Option<f32>,
}

/// One page's text, as a text layer or OCR gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct PageText {
    /// The page number, from 1.
    pub number: u32,
    pub text: String,
    /// For text read by OCR: the recogniser's confidence, 0 to 1.
    pub confidence: Option<f32>,
}

impl Document {
    /// A paged document: its pages' text joined by blank lines (pages with no text left
    /// out), with each page's span.
    pub fn from_pages(source: String, format: Format, pages: Vec<PageText>) -> Self {
        let mut text = String::new();
        let mut chars = 0;
        let mut spans = Vec::with_capacity(pages.len());
        for page in pages {
            let page_text = page.text.trim();
            if page_text.is_empty() {
                continue;
            }
            if !text.is_empty() {
                text.push_str(RECORD_SEPARATOR);
                chars += RECORD_SEPARATOR.chars().count();
            }
            let start = chars;
            text.push_str(page_text);
            chars += page_text.chars().count();
            spans.push(PageSpan {
                number: page.number,
                char_start: start,
                char_end: chars,
                confidence: page.confidence,
            });
        }
        Self {
            source,
            format,
            text,
            records: None,
            pages: spans,
            ocr_spans: Vec::new(),
        }
    }

    /// The OCR confidence of the text in `[char_start, char_end)`: for a paged document its
    /// first page's, otherwise the mean over the OCR spans it overlaps, weighted by the
    /// characters in common. `None` when none of it was read by OCR.
    pub fn ocr_confidence(&self, char_start: usize, char_end: usize) -> Option<f32> {
        if !self.pages.is_empty() {
            return self.page_at(char_start).and_then(|page| page.confidence);
        }
        let (mut weighted, mut chars) = (0.0f32, 0usize);
        for span in &self.ocr_spans {
            let common = char_end
                .min(span.char_end)
                .saturating_sub(char_start.max(span.char_start));
            weighted += span.confidence * common as f32;
            chars += common;
        }
        (chars > 0).then(|| weighted / chars as f32)
    }

    /// The page a passage starting at character `char_start` of the text begins on.
    pub fn page_at(&self, char_start: usize) -> Option<&PageSpan> {
        let i = self.pages.partition_point(|p| p.char_end <= char_start);
        self.pages.get(i)
    }
}
