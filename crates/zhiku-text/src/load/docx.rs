//! The paragraphs of a Word (.docx) file.
//!
//! A .docx is a zip archive whose `word/document.xml` holds the body: `w:p` paragraphs of
//! `w:r` runs of `w:t` text. zip (deflate only, the one method Word writes) and quick-xml
//! (no dependencies but memchr) read it; a full docx crate would add a writer and styles
//! model we do not need.

use std::io::Cursor;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// The most bytes `word/document.xml` may inflate to: a real document is a few MiB, and the
/// bound stops a zip bomb from taking the memory.
const MAX_XML_BYTES: u64 = 256 << 20;

/// The text of the document: paragraphs separated by blank lines, heading paragraphs as
/// markdown `#` lines, table rows as `cell | cell` lines.
pub(super) fn text(bytes: &[u8]) -> Result<String, String> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))?;
    let xml = super::zip_entry(&mut archive, "word/document.xml", MAX_XML_BYTES).map_err(|e| {
        if e.ends_with("is missing") {
            "word/document.xml is missing: not a Word document".to_string()
        } else {
            e
        }
    })?;
    let xml = String::from_utf8(xml).map_err(|_| "word/document.xml is not UTF-8".to_string())?;
    paragraphs(&xml).map_err(|e| format!("word/document.xml: {e}"))
}

/// What the walk over the XML is inside of.
#[derive(Default)]
struct State {
    blocks: Vec<String>,
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

fn paragraphs(xml: &str) -> Result<String, quick_xml::Error> {
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
    Ok(state.blocks.join("\n\n"))
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
            _ => {}
        }
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
                if self.table_depth == 0 && !self.rows.is_empty() {
                    let rows = std::mem::take(&mut self.rows).join("\n");
                    self.blocks.push(rows);
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
        if text.is_empty() {
            return;
        }
        if self.table_depth > 0 {
            self.cell.push(text.replace('\n', " "));
        } else if let Some(level) = heading {
            let level = level.clamp(1, 6);
            let title = text.replace(['\n', '\t'], " ");
            self.blocks.push(format!("{} {title}", "#".repeat(level)));
        } else {
            self.blocks.push(text.to_string());
        }
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
