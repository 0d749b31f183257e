//! The paragraphs of a Word (.docx) file.
//!
//! A .docx is a zip archive whose `word/document.xml` holds the body: `w:p` paragraphs of
//! `w:r` runs of `w:t` text. zip (deflate only, the one method Word writes) and quick-xml
//! (no dependencies but memchr) read it; a full docx crate would add a writer and styles
//! model we do not need.
//!
//! Pictures (`a:blip r:embed` in a drawing, `v:imagedata r:id` in old-Word markup) name an
//! image part through `word/_rels/document.xml.rels`; [`parts`] hands the raster ones to
//! OCR at their place in the body.

use std::io::Cursor;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// The most bytes `word/document.xml` may inflate to: a real document is a few MiB, and the
/// bound stops a zip bomb from taking the memory.
const MAX_XML_BYTES: u64 = 256 << 20;

/// The most bytes one picture may inflate to (the pixel limit is the OCR's to enforce).
const MAX_PICTURE_BYTES: u64 = 64 << 20;

/// Picture parts the OCR decodes, by extension; vector ones (EMF, WMF, SVG) are skipped.
const RASTER_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "jpe", "bmp", "tif", "tiff", "webp"];

/// One piece of the body, in document order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Part<P> {
    /// A block of text (a paragraph, a heading, a table).
    Text(String),
    /// A picture: its relationship id while parsing, its bytes in [`parts`].
    Picture(P),
}

/// The text of the document: paragraphs separated by blank lines, heading paragraphs as
/// markdown `#` lines, table rows as `cell | cell` lines.
pub(super) fn text(bytes: &[u8]) -> Result<String, String> {
    let mut archive = open(bytes)?;
    let blocks = body(&mut archive)?;
    Ok(join_text(blocks.iter().filter_map(|part| match part {
        Part::Text(text) => Some(text.as_str()),
        Part::Picture(_) => None,
    })))
}

/// What goes between two blocks of text.
pub(super) const BLOCK_SEPARATOR: &str = "\n\n";

/// Blocks of text joined as [`text`] joins them.
fn join_text<'a>(blocks: impl Iterator<Item = &'a str>) -> String {
    blocks.collect::<Vec<_>>().join(BLOCK_SEPARATOR)
}

/// The body as text blocks and the raster pictures between them, each picture as the
/// path of its image file in the archive ([`read_pictures`] reads them).
pub(super) fn parts(bytes: &[u8]) -> Result<Vec<Part<String>>, String> {
    let mut archive = open(bytes)?;
    let blocks = body(&mut archive)?;
    if !blocks.iter().any(|p| matches!(p, Part::Picture(_))) {
        return Ok(blocks);
    }
    let targets = match super::zip_entry(&mut archive, RELATIONSHIPS, MAX_XML_BYTES) {
        Ok(xml) => image_targets(&String::from_utf8_lossy(&xml))
            .map_err(|e| format!("{RELATIONSHIPS}: {e}"))?,
        // No relationships: nothing a picture could name.
        Err(e) if e.ends_with("is missing") => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(blocks
        .into_iter()
        .filter_map(|part| match part {
            Part::Text(text) => Some(Part::Text(text)),
            Part::Picture(id) => {
                let (_, path) = targets.iter().find(|(rid, _)| *rid == id)?;
                let raster = path.rsplit_once('.').is_some_and(|(_, ext)| {
                    RASTER_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
                });
                // A missing file is a broken frame in Word too: left out.
                let present = archive.index_for_name(path).is_some()
                    || archive.index_for_name(&format!("/{path}")).is_some();
                (raster && present).then(|| Part::Picture(path.clone()))
            }
        })
        .collect())
}

/// The parts with each picture's image file read from the archive.
pub(super) fn read_pictures(
    bytes: &[u8],
    parts: Vec<Part<String>>,
) -> Result<Vec<Part<Vec<u8>>>, String> {
    let mut archive = open(bytes)?;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Part::Text(text) => out.push(Part::Text(text)),
            Part::Picture(path) => match super::zip_entry(&mut archive, &path, MAX_PICTURE_BYTES) {
                Ok(image) => out.push(Part::Picture(image)),
                Err(e) => return Err(e),
            },
        }
    }
    Ok(out)
}

const DOCUMENT: &str = "word/document.xml";
const RELATIONSHIPS: &str = "word/_rels/document.xml.rels";

fn open(bytes: &[u8]) -> Result<zip::ZipArchive<Cursor<&[u8]>>, String> {
    zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))
}

/// The body's blocks, pictures as their relationship ids.
fn body(archive: &mut zip::ZipArchive<Cursor<&[u8]>>) -> Result<Vec<Part<String>>, String> {
    let xml = super::zip_entry(archive, DOCUMENT, MAX_XML_BYTES).map_err(|e| {
        if e.ends_with("is missing") {
            format!("{DOCUMENT} is missing: not a Word document")
        } else {
            e
        }
    })?;
    let xml = String::from_utf8(xml).map_err(|_| format!("{DOCUMENT} is not UTF-8"))?;
    blocks(&xml).map_err(|e| format!("{DOCUMENT}: {e}"))
}

/// The image relationships of the document part: (id, path in the zip). Targets are
/// relative to `word/` unless they start with `/`; external ones (links) are left out.
fn image_targets(xml: &str) -> Result<Vec<(String, String)>, quick_xml::Error> {
    let mut reader = Reader::from_str(xml);
    let mut out = Vec::new();
    loop {
        match reader.read_event()? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "Relationship" => {
                let (mut id, mut target, mut image, mut external) =
                    (String::new(), String::new(), false, false);
                for a in e.attributes().flatten() {
                    let value = a.value.into_owned();
                    match a.key.local_name().as_ref() {
                        "Id" => id = value,
                        "Target" => target = value,
                        "Type" => image = value.ends_with("/image"),
                        "TargetMode" => external = value == "External",
                        _ => {}
                    }
                }
                if image && !external && !target.is_empty() {
                    let path = match target.strip_prefix('/') {
                        Some(absolute) => absolute.to_string(),
                        None => resolve("word", &target),
                    };
                    out.push((id, path));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// `target` relative to the folder `base`, `..` and `.` resolved.
fn resolve(base: &str, target: &str) -> String {
    let mut path: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for segment in target.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                path.pop();
            }
            s => path.push(s),
        }
    }
    path.join("/")
}

/// What the walk over the XML is inside of.
#[derive(Default)]
struct State {
    blocks: Vec<Part<String>>,
    /// Pictures seen since the last block was written, by relationship id: they follow the
    /// paragraph or table they sit in.
    pictures: Vec<String>,
    /// The open paragraphs, innermost last (a text box's paragraphs sit inside a run of
    /// another paragraph), each with its heading level.
    paragraphs: Vec<(String, Option<usize>)>,
    in_text: bool,
    in_properties: bool,
    /// Inside `mc:Fallback`: the old-Word copy of content the `mc:Choice` beside it already
    /// holds (text boxes), which would otherwise be read twice.
    fallback: usize,
    table_depth: usize,
    cell: Vec<String>,
    row: Vec<String>,
    rows: Vec<String>,
}

fn blocks(xml: &str) -> Result<Vec<Part<String>>, quick_xml::Error> {
    let mut reader = Reader::from_str(xml);
    let mut state = State::default();
    loop {
        match reader.read_event()? {
            Event::Start(e) => state.open(&e, false),
            Event::Empty(e) => state.open(&e, true),
            Event::End(e) => state.close(e.local_name().as_ref()),
            Event::Text(t) if state.in_text => state.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if state.in_text => {
                let c = match r.resolve_char_ref()? {
                    Some(c) => Some(c),
                    None => predefined_entity(&r),
                };
                if let Some(c) = c {
                    state.push_str(c.encode_utf8(&mut [0; 4]));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    state.flush_pictures();
    Ok(state.blocks)
}

impl State {
    fn push_str(&mut self, text: &str) {
        if let Some((paragraph, _)) = self.paragraphs.last_mut() {
            paragraph.push_str(text);
        }
    }

    fn set_heading(&mut self, level: Option<usize>) {
        if let (Some((_, heading)), Some(level)) = (self.paragraphs.last_mut(), level) {
            *heading = Some(level);
        }
    }

    fn open(&mut self, e: &BytesStart<'_>, empty: bool) {
        let name = e.local_name();
        let name = name.as_ref();
        if name == "Fallback" && !empty {
            self.fallback += 1;
        }
        if self.fallback > 0 {
            return;
        }
        match name {
            "p" if !empty => self.paragraphs.push((String::new(), None)),
            "pPr" if !empty => self.in_properties = true,
            "pStyle" => self.set_heading(style_level(&value(e))),
            // Word's own mark of a heading paragraph, whatever the style is called.
            "outlineLvl" => self.set_heading(
                value(e)
                    .parse::<usize>()
                    .ok()
                    .filter(|&l| l < 9)
                    .map(|l| l + 1),
            ),
            "t" if !empty => self.in_text = true,
            "tab" if !self.in_properties => self.push_str("\t"),
            "br" | "cr" if !self.in_properties => self.push_str("\n"),
            "tbl" if !empty => self.table_depth += 1,
            // A DrawingML picture (`r:embed`) or an old-Word one (`r:id`).
            "blip" | "imagedata" => {
                let id = e.attributes().flatten().find(|a| {
                    let key = a.key.local_name();
                    key.as_ref() == "embed" || (name == "imagedata" && key.as_ref() == "id")
                });
                if let Some(id) = id {
                    self.pictures.push(id.value.into_owned());
                }
            }
            _ => {}
        }
    }

    fn flush_pictures(&mut self) {
        let pictures = std::mem::take(&mut self.pictures);
        self.blocks.extend(pictures.into_iter().map(Part::Picture));
    }

    fn close(&mut self, name: &str) {
        if name == "Fallback" {
            self.fallback = self.fallback.saturating_sub(1);
            return;
        }
        if self.fallback > 0 {
            return;
        }
        match name {
            "t" => self.in_text = false,
            "pPr" => self.in_properties = false,
            "p" => self.end_paragraph(),
            "tc" => {
                let cell = std::mem::take(&mut self.cell).join(" ");
                self.row.push(cell);
            }
            "tr" => {
                let row = std::mem::take(&mut self.row);
                if row.iter().any(|c| !c.is_empty()) {
                    self.rows.push(row.join(" | "));
                }
            }
            "tbl" => {
                self.table_depth = self.table_depth.saturating_sub(1);
                if self.table_depth == 0 {
                    if !self.rows.is_empty() {
                        let rows = std::mem::take(&mut self.rows).join("\n");
                        self.blocks.push(Part::Text(rows));
                    }
                    self.flush_pictures();
                }
            }
            _ => {}
        }
    }

    fn end_paragraph(&mut self) {
        let Some((text, heading)) = self.paragraphs.pop() else {
            return;
        };
        let text = text.trim();
        if self.table_depth > 0 {
            if !text.is_empty() {
                self.cell.push(text.replace('\n', " "));
            }
            return;
        }
        if let Some(level) = heading.filter(|_| !text.is_empty()) {
            let level = level.clamp(1, 6);
            let title = text.replace(['\n', '\t'], " ");
            self.blocks
                .push(Part::Text(format!("{} {title}", "#".repeat(level))));
        } else if !text.is_empty() {
            self.blocks.push(Part::Text(text.to_string()));
        }
        self.flush_pictures();
    }
}

/// The `w:val` attribute of an element, or "" without one.
fn value(e: &BytesStart<'_>) -> String {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == "val")
        .map(|a| a.value.into_owned())
        .unwrap_or_default()
}

/// The heading level a paragraph style names: `Heading1`, `heading 2` (English Word), `Title`.
/// Localised Word names heading styles by number only ("1" for 标题 1), which could be any
/// style; those headings are found by their `outlineLvl` instead.
fn style_level(style: &str) -> Option<usize> {
    let lower = style.to_ascii_lowercase();
    if lower == "title" {
        return Some(1);
    }
    let level = lower.strip_prefix("heading")?.trim_start();
    level.parse().ok().filter(|l| (1..=9).contains(l))
}

pub(super) fn predefined_entity(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => return None,
    })
}
