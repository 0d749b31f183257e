//! Document loaders: a file's name and bytes in, a [`Document`] out.
//!
//! The extension picks the loader. Every failure is a [`LoadError`] that names the file, so
//! that one bad file in a batch is reported and skipped while the rest load
//! ([`load_paths`]). No loader panics on any input: the one parser that can (lopdf) runs
//! under `catch_unwind`.

mod decode;
mod docx;
mod html;
mod ofd;
mod pdf;
mod pdf_filters;
mod pdf_images;
mod pdf_render;
mod table;

use std::path::Path;

use crate::{Document, Format, OcrSpan, PageText, RECORD_SEPARATOR};

/// Why a file could not be loaded. Every variant names the file, as given to the loader.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The extension names no format we read.
    #[error(
        "{file}: unsupported file type (zhiku reads .txt, .md, .markdown, .html, .htm, .xhtml, .pdf, .ofd, .docx, .csv and .tsv, and with OCR .png, .jpg, .jpeg, .bmp, .tif, .tiff and .webp)"
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
    /// A PDF or OFD with pages but no text layer: a scan, which needs OCR.
    #[error(
        "{file}: the {format} has no text layer (a scanned document needs OCR: ingest it \
         with --ocr auto, with an embedder that has the OCR models)"
    )]
    NoTextLayer {
        /// The file.
        file: String,
        /// Pdf or ofd.
        format: Format,
    },
    /// An image, read without OCR.
    #[error(
        "{file}: an image's text needs OCR, which is off: ingest it with --ocr auto, with an \
         embedder that has the OCR models"
    )]
    NeedsOcr {
        /// The file.
        file: String,
    },
    /// A PDF protected by a password.
    #[error(
        "{file}: the pdf is encrypted: save it without its password (e.g. `qpdf --decrypt \
         in.pdf out.pdf`) and ingest that"
    )]
    Encrypted {
        /// The file.
        file: String,
    },
    /// More pages (or pictures) to OCR than the limit.
    #[error(
        "{file}: {pages} pages or pictures need OCR, over the limit of {limit}: split the \
         file into smaller ones"
    )]
    TooManyPages {
        /// The file.
        file: String,
        /// Pages that need OCR.
        pages: usize,
        /// The limit.
        limit: usize,
    },
    /// A page with no text layer whose images are in no form the OCR reads.
    #[error("{file}: page {page} has no text layer and no image the OCR can read: {reason}")]
    UnreadablePage {
        /// The file.
        file: String,
        /// The page, from 1.
        page: u32,
        /// Why its images cannot be read.
        reason: String,
    },
}

/// Whether a load reads text from images (the caller runs the OCR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OcrMode {
    /// Images, and the PDF pages without a text layer.
    #[default]
    Auto,
    /// As `Auto`, and the pictures embedded in a DOCX, their text put at their place.
    Images,
    /// As `Images`, and every PDF page with images is read from them.
    Always,
    /// None: images are refused and a PDF without a text layer fails.
    Off,
}

/// Limits on what a scan hands to OCR (against decompression bombs and runaway files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// The most pixels (width × height) of one embedded image.
    pub max_pixels: u64,
    /// The most pages (or DOCX pictures) of one file that need OCR.
    pub max_pages: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_pages: 1_000,
        }
    }
}

/// What [`load_for_ocr`] gives: a document, or pages whose images need OCR first.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    Document(Document),
    Scan(Scan),
}

/// A file some of whose text is in images.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// The file name, as given to the loader.
    pub source: String,
    pub format: Format,
    /// Every page, in order. For an image file, one entry holding the whole file (a TIFF
    /// may hold several pages: the OCR numbers them). For a DOCX, its body in order: blocks
    /// of text (numbered 0) and pictures (one image each, numbered from 1).
    pub pages: Vec<ScanPage>,
}

/// One page of a [`Scan`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage {
    /// The page number, from 1 (for a DOCX, the picture's).
    pub number: u32,
    /// Its text layer; kept when `images` is empty.
    pub text: String,
    /// Image files (JPEG, PNG) whose OCR text replaces the text layer; empty when the page
    /// needs no OCR.
    pub images: Vec<Vec<u8>>,
}

impl Scan {
    /// The document, once each page that needs it was read: `ocr` gives, for each page with
    /// images, the text of its images (joined in order) and their confidence. A DOCX's
    /// pictures become blocks of its text, where they stood (it has no pages).
    pub fn into_document(
        self,
        mut ocr: impl FnMut(&ScanPage) -> Option<(String, f32)>,
    ) -> Document {
        if self.format == Format::Docx {
            // The blocks as `docx::text` joins them, keeping where pictures' text lies.
            let mut text = String::new();
            let mut chars = 0;
            let mut ocr_spans = Vec::new();
            for part in &self.pages {
                let (block, confidence) = if part.images.is_empty() {
                    (part.text.clone(), None)
                } else {
                    match ocr(part) {
                        Some((text, confidence)) => (text.trim().to_string(), Some(confidence)),
                        None => continue,
                    }
                };
                if block.is_empty() {
                    continue;
                }
                if !text.is_empty() {
                    text.push_str(docx::BLOCK_SEPARATOR);
                    chars += docx::BLOCK_SEPARATOR.chars().count();
                }
                let start = chars;
                text.push_str(&block);
                chars += block.chars().count();
                if let Some(confidence) = confidence {
                    ocr_spans.push(OcrSpan {
                        char_start: start,
                        char_end: chars,
                        confidence,
                    });
                }
            }
            return Document {
                source: self.source,
                format: self.format,
                text,
                records: None,
                pages: Vec::new(),
                ocr_spans,
            };
        }
        let pages = self
            .pages
            .iter()
            .map(|page| {
                if page.images.is_empty() {
                    return PageText {
                        number: page.number,
                        text: page.text.clone(),
                        confidence: None,
                    };
                }
                match ocr(page) {
                    Some((text, confidence)) => PageText {
                        number: page.number,
                        text,
                        confidence: Some(confidence),
                    },
                    None => PageText {
                        number: page.number,
                        text: page.text.clone(),
                        confidence: None,
                    },
                }
            })
            .collect();
        Document::from_pages(self.source, self.format, pages)
    }
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
            | Self::NoTextLayer { file, .. }
            | Self::NeedsOcr { file }
            | Self::Encrypted { file }
            | Self::TooManyPages { file, .. }
            | Self::UnreadablePage { file, .. } => file,
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
/// - ofd: each page's text (`TextCode`s) in reading order, pages separated by a blank
///   line.
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
        Format::Pdf => {
            let pages = pdf::text_pages(bytes).map_err(|e| pdf_error(file_name, e))?;
            return Ok(Document::from_pages(file(), format, pages));
        }
        Format::Ofd => {
            let pages = ofd::pages(bytes, |_| false, &ScanLimits::default()).map_err(corrupt)?;
            if pages.iter().all(|p| p.text.text.is_empty()) {
                return Err(LoadError::NoTextLayer {
                    file: file(),
                    format,
                });
            }
            let pages = pages.into_iter().map(|p| p.text).collect();
            return Ok(Document::from_pages(file(), format, pages));
        }
        Format::Image => return Err(LoadError::NeedsOcr { file: file() }),
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
        pages: Vec::new(),
        ocr_spans: Vec::new(),
    })
}

/// Loads a file as [`load`] does, except that with OCR on, images and the PDF pages that
/// need it come back as a [`Scan`]: the caller reads their images (zhiku-text runs no
/// models) and then calls [`Scan::into_document`]. PDF page images are the ones scanners
/// embed (JPEG as stored; Flate-compressed gray, RGB or CMYK samples, JPEG 2000, CCITT fax
/// and JBIG2 images as PNG), taken without rendering the page.
pub fn load_for_ocr(
    file_name: &str,
    bytes: &[u8],
    mode: OcrMode,
    limits: &ScanLimits,
) -> Result<Loaded, LoadError> {
    let format = Format::from_file_name(file_name);
    match (format, mode) {
        (_, OcrMode::Off) | (None, _) => load(file_name, bytes).map(Loaded::Document),
        (Some(Format::Image), _) => Ok(Loaded::Scan(Scan {
            source: file_name.to_string(),
            format: Format::Image,
            pages: vec![ScanPage {
                number: 1,
                text: String::new(),
                images: vec![bytes.to_vec()],
            }],
        })),
        (Some(Format::Docx), OcrMode::Images | OcrMode::Always) => {
            docx_scan(file_name, bytes, limits)
        }
        (Some(format @ (Format::Pdf | Format::Ofd)), _) => {
            let always = mode == OcrMode::Always;
            let pages = if format == Format::Pdf {
                pdf::scan_pages(bytes, always, limits).map_err(|e| pdf_error(file_name, e))?
            } else {
                ofd_scan(file_name, bytes, always, limits)?
            };
            let needs_ocr = pages.iter().filter(|p| !p.images.is_empty()).count();
            if needs_ocr > limits.max_pages {
                return Err(LoadError::TooManyPages {
                    file: file_name.to_string(),
                    pages: needs_ocr,
                    limit: limits.max_pages,
                });
            }
            let scan = Scan {
                source: file_name.to_string(),
                format,
                pages,
            };
            if needs_ocr == 0 {
                Ok(Loaded::Document(scan.into_document(|_| None)))
            } else {
                Ok(Loaded::Scan(scan))
            }
        }
        _ => load(file_name, bytes).map(Loaded::Document),
    }
}

/// A DOCX whose pictures are read by OCR: a [`Scan`] of its text blocks and pictures, or
/// the document as [`load`] gives it when it has no picture to read.
fn docx_scan(file_name: &str, bytes: &[u8], limits: &ScanLimits) -> Result<Loaded, LoadError> {
    let corrupt = |reason| LoadError::Corrupt {
        file: file_name.to_string(),
        format: Format::Docx,
        reason,
    };
    let parts = docx::parts(bytes).map_err(corrupt)?;
    let count = parts
        .iter()
        .filter(|p| matches!(p, docx::Part::Picture(_)))
        .count();
    if count > limits.max_pages {
        return Err(LoadError::TooManyPages {
            file: file_name.to_string(),
            pages: count,
            limit: limits.max_pages,
        });
    }
    let parts = docx::read_pictures(bytes, parts).map_err(corrupt)?;
    let mut pictures = 0;
    let pages: Vec<ScanPage> = parts
        .into_iter()
        .map(|part| match part {
            docx::Part::Text(text) => ScanPage {
                number: 0,
                text,
                images: Vec::new(),
            },
            docx::Part::Picture(image) => {
                pictures += 1;
                ScanPage {
                    number: pictures,
                    text: String::new(),
                    images: vec![image],
                }
            }
        })
        .collect();
    let scan = Scan {
        source: file_name.to_string(),
        format: Format::Docx,
        pages,
    };
    Ok(if pictures == 0 {
        Loaded::Document(scan.into_document(|_| None))
    } else {
        Loaded::Scan(scan)
    })
}

/// An OFD's pages, with the images of those without text (of all, when `always`).
fn ofd_scan(
    file_name: &str,
    bytes: &[u8],
    always: bool,
    limits: &ScanLimits,
) -> Result<Vec<ScanPage>, LoadError> {
    let file = || file_name.to_string();
    let pages = ofd::pages(bytes, |has_text| always || !has_text, limits).map_err(|reason| {
        LoadError::Corrupt {
            file: file(),
            format: Format::Ofd,
            reason,
        }
    })?;
    if pages
        .iter()
        .all(|p| p.text.text.is_empty() && p.images.is_empty())
    {
        return Err(LoadError::NoTextLayer {
            file: file(),
            format: Format::Ofd,
        });
    }
    Ok(pages
        .into_iter()
        .map(|p| ScanPage {
            number: p.text.number,
            text: p.text.text,
            images: p.images,
        })
        .collect())
}

/// A zip entry's bytes, at most `max` of them (a zip bomb stops there).
fn zip_entry(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    max: u64,
) -> Result<Vec<u8>, String> {
    use std::io::Read;
    // Some writers store paths with a leading slash.
    let stored = if archive.index_for_name(name).is_some() {
        name.to_string()
    } else {
        format!("/{name}")
    };
    let entry = archive
        .by_name(&stored)
        .map_err(|_| format!("{name} is missing"))?;
    let mut out = Vec::new();
    entry
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{name} cannot be inflated: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("{name} inflates past {max} bytes"));
    }
    Ok(out)
}

fn pdf_error(file_name: &str, e: pdf::PdfError) -> LoadError {
    let file = file_name.to_string();
    match e {
        pdf::PdfError::NoTextLayer => LoadError::NoTextLayer {
            file,
            format: Format::Pdf,
        },
        pdf::PdfError::Encrypted => LoadError::Encrypted { file },
        pdf::PdfError::UnreadablePage { page, reason } => {
            LoadError::UnreadablePage { file, page, reason }
        }
        pdf::PdfError::Corrupt(reason) => LoadError::Corrupt {
            file,
            format: Format::Pdf,
            reason,
        },
    }
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
