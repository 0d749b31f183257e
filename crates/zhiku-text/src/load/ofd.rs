//! OFD (GB/T 33190), the Chinese e-document format: a zip of XML. `OFD.xml` names the
//! document (`DocBody/DocRoot`), whose `Document.xml` lists the pages (`Pages/Page@BaseLoc`)
//! and the resource files (`PublicRes`, `DocumentRes`: `MultiMedia` images by ID). Each
//! page's `Content.xml` holds `TextObject`s (a `Boundary` origin, `TextCode`s at X, Y
//! within it) and `ImageObject`s (a `ResourceID`). The text is put in reading order by
//! position: rows top to bottom, each row left to right.

use std::collections::HashMap;
use std::io::Cursor;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::ScanLimits;
use super::docx::predefined_entity;
use super::pdf::join_wrapped_lines;
use crate::PageText;

/// The most bytes one XML part may inflate to (against zip bombs).
const MAX_XML_BYTES: u64 = 64 << 20;
/// The most bytes one embedded image may inflate to.
const MAX_IMAGE_BYTES: u64 = 128 << 20;

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

/// One page: its text in reading order, and its images (image files) when asked for.
pub(super) struct OfdPage {
    pub text: PageText,
    pub images: Vec<Vec<u8>>,
}

/// Every page of the file; the images of a page are read when `wants_images(has_text)`.
pub(super) fn pages(
    bytes: &[u8],
    wants_images: impl Fn(bool) -> bool,
    limits: &ScanLimits,
) -> Result<Vec<OfdPage>, String> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))?;
    let root = read_xml(&mut archive, "OFD.xml")?;
    let doc_root =
        element_text(&root, "DocRoot")?.ok_or("OFD.xml names no DocRoot: not an OFD document")?;
    let doc_path = resolve("", &doc_root);
    let doc_dir = parent(&doc_path);
    let document = read_xml(&mut archive, &doc_path)?;
    let page_locs = attributes(&document, "Page", "BaseLoc")?;
    if page_locs.is_empty() {
        return Err(format!("{doc_path} lists no pages"));
    }
    let mut media = HashMap::new();
    for res in element_texts(&document, &["PublicRes", "DocumentRes"])? {
        let res_path = resolve(&doc_dir, &res);
        let Ok(xml) = read_xml(&mut archive, &res_path) else {
            continue;
        };
        let base = attributes(&xml, "Res", "BaseLoc")?
            .into_iter()
            .next()
            .unwrap_or_default();
        let base = resolve(&parent(&res_path), &base);
        for (id, file) in media_files(&xml)? {
            media.insert(id, resolve(&base, &file));
        }
    }
    let mut out = Vec::with_capacity(page_locs.len());
    for (i, loc) in page_locs.iter().enumerate() {
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let mut path = resolve(&doc_dir, loc);
        if !path.ends_with(".xml") {
            path = format!("{}/Content.xml", path.trim_end_matches('/'));
        }
        let content = read_xml(&mut archive, &path)?;
        let (runs, image_ids) = page_content(&content).map_err(|e| format!("{path}: {e}"))?;
        let text = reading_order(runs);
        let images = if wants_images(!text.is_empty()) {
            let mut images = Vec::new();
            for id in image_ids {
                let Some(file) = media.get(&id) else {
                    continue;
                };
                images.push(super::zip_entry(&mut archive, file, MAX_IMAGE_BYTES)?);
            }
            images
        } else {
            Vec::new()
        };
        out.push(OfdPage {
            text: PageText {
                number,
                text,
                confidence: None,
            },
            images,
        });
    }
    let to_ocr = out.iter().filter(|p| !p.images.is_empty()).count();
    if to_ocr > limits.max_pages {
        return Err(format!(
            "{to_ocr} pages need OCR, over the limit of {}",
            limits.max_pages
        ));
    }
    Ok(out)
}

/// `rel` from the directory `base` (an OFD path starting with `/` is from the root).
fn resolve(base: &str, rel: &str) -> String {
    let rel = rel.trim();
    let mut parts: Vec<&str> = if rel.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

fn parent(path: &str) -> String {
    path.rsplit_once('/')
        .map(|(dir, _)| dir.to_string())
        .unwrap_or_default()
}

fn read_xml(archive: &mut Archive, name: &str) -> Result<String, String> {
    let bytes = super::zip_entry(archive, name, MAX_XML_BYTES)?;
    String::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))
}

fn attribute(e: &BytesStart, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .map(|a| a.value.into_owned())
}

/// The text of every element named one of `names` (local names).
fn element_texts(xml: &str, names: &[&str]) -> Result<Vec<String>, String> {
    let mut reader = Reader::from_str(xml);
    let mut out = Vec::new();
    let mut open: Option<String> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) if names.contains(&e.local_name().as_ref()) => {
                open = Some(String::new());
            }
            Event::Text(t) => {
                if let Some(text) = open.as_mut() {
                    text.push_str(&t.xml10_content());
                }
            }
            Event::End(e) if names.contains(&e.local_name().as_ref()) => {
                if let Some(text) = open.take() {
                    out.push(text.trim().to_string());
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

fn element_text(xml: &str, name: &str) -> Result<Option<String>, String> {
    Ok(element_texts(xml, &[name])?.into_iter().next())
}

/// The `attr` of every element named `name`, in document order.
fn attributes(xml: &str, name: &str, attr: &str) -> Result<Vec<String>, String> {
    let mut reader = Reader::from_str(xml);
    let mut out = Vec::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == name => {
                if let Some(value) = attribute(&e, attr) {
                    out.push(value);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// `MultiMedia@ID` → its `MediaFile`.
fn media_files(xml: &str) -> Result<Vec<(String, String)>, String> {
    let mut reader = Reader::from_str(xml);
    let mut out = Vec::new();
    let mut id = None;
    let mut file: Option<String> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) if e.local_name().as_ref() == "MultiMedia" => {
                id = attribute(&e, "ID");
            }
            Event::Start(e) if e.local_name().as_ref() == "MediaFile" => {
                file = Some(String::new());
            }
            Event::Text(t) => {
                if let Some(f) = file.as_mut() {
                    f.push_str(&t.xml10_content());
                }
            }
            Event::End(e) if e.local_name().as_ref() == "MediaFile" => {
                if let (Some(id), Some(f)) = (id.clone(), file.take()) {
                    out.push((id, f.trim().to_string()));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// A run of text at a position on the page (millimetres, y down), with its font size.
struct Run {
    x: f64,
    y: f64,
    size: f64,
    text: String,
}

fn numbers(value: &str) -> Vec<f64> {
    value
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// The page's text runs and the resource ids of its images.
fn page_content(xml: &str) -> Result<(Vec<Run>, Vec<String>), quick_xml::Error> {
    let mut reader = Reader::from_str(xml);
    let mut runs = Vec::new();
    let mut images = Vec::new();
    // The open TextObject's origin and font size, and the open TextCode's position.
    let mut object: Option<(f64, f64, f64)> = None;
    let mut code: Option<Run> = None;
    loop {
        match reader.read_event()? {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                "TextObject" => {
                    let boundary = attribute(&e, "Boundary")
                        .map(|b| numbers(&b))
                        .unwrap_or_default();
                    let size = attribute(&e, "Size")
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(3.5);
                    object = Some((
                        boundary.first().copied().unwrap_or(0.0),
                        boundary.get(1).copied().unwrap_or(0.0),
                        size,
                    ));
                }
                "TextCode" => {
                    let (ox, oy, size) = object.unwrap_or((0.0, 0.0, 3.5));
                    let at = |name: &str| {
                        attribute(&e, name)
                            .and_then(|v| v.trim().parse::<f64>().ok())
                            .unwrap_or(0.0)
                    };
                    code = Some(Run {
                        x: ox + at("X"),
                        y: oy + at("Y"),
                        size,
                        text: String::new(),
                    });
                }
                "ImageObject" => {
                    if let Some(id) = attribute(&e, "ResourceID") {
                        images.push(id);
                    }
                }
                _ => {}
            },
            Event::Text(t) => {
                if let Some(run) = code.as_mut() {
                    run.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if let Some(run) = code.as_mut() {
                    let c = match r.resolve_char_ref()? {
                        Some(c) => Some(c),
                        None => predefined_entity(&r),
                    };
                    if let Some(c) = c {
                        run.text.push(c);
                    }
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                "TextCode" => {
                    if let Some(run) = code.take().filter(|r| !r.text.trim().is_empty()) {
                        runs.push(run);
                    }
                }
                "TextObject" => object = None,
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    Ok((runs, images))
}

/// Runs into rows (a run joins the row whose baseline is within half its size), rows top
/// to bottom, each left to right; wrapped lines of one font size joined as in a PDF.
fn reading_order(mut runs: Vec<Run>) -> String {
    runs.sort_by(|a, b| a.y.total_cmp(&b.y).then(a.x.total_cmp(&b.x)));
    let mut rows: Vec<(f64, Vec<Run>)> = Vec::new();
    for run in runs {
        match rows.last_mut() {
            Some((y, row)) if (run.y - *y).abs() <= run.size / 2.0 => row.push(run),
            _ => rows.push((run.y, vec![run])),
        }
    }
    // Rows of one font size form a block whose wrapped lines are joined; a change of size
    // (a title above its text) keeps its line break.
    let mut blocks: Vec<(f64, Vec<String>)> = Vec::new();
    for (_, mut row) in rows {
        row.sort_by(|a, b| a.x.total_cmp(&b.x));
        let size = row.first().map_or(0.0, |r| r.size);
        let line: String = row.into_iter().map(|r| r.text).collect();
        match blocks.last_mut() {
            Some((block_size, lines)) if (*block_size - size).abs() < 0.01 => lines.push(line),
            _ => blocks.push((size, vec![line])),
        }
    }
    let text: Vec<String> = blocks
        .into_iter()
        .map(|(_, lines)| join_wrapped_lines(lines.join("\n").trim()))
        .collect();
    text.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_from_their_directory() {
        assert_eq!(resolve("", "Doc_0/Document.xml"), "Doc_0/Document.xml");
        assert_eq!(
            resolve("Doc_0", "Pages/Page_0/Content.xml"),
            "Doc_0/Pages/Page_0/Content.xml"
        );
        assert_eq!(resolve("Doc_0", "/Doc_0/Res/a.png"), "Doc_0/Res/a.png");
        assert_eq!(
            resolve("Doc_0/Res", "../Pages/./x.xml"),
            "Doc_0/Pages/x.xml"
        );
        assert_eq!(parent("Doc_0/Document.xml"), "Doc_0");
    }

    #[test]
    fn runs_are_read_row_by_row() {
        let run = |x: f64, y: f64, text: &str| Run {
            x,
            y,
            size: 4.0,
            text: text.into(),
        };
        // Written out of order; the second row's runs a little off its baseline.
        let text = reading_order(vec![
            run(60.0, 30.5, "第二行右"),
            run(10.0, 20.0, "第一行，"),
            run(10.0, 30.0, "第二行左"),
            run(40.0, 20.0, "接着写。"),
        ]);
        assert_eq!(text, "第一行，接着写。\n第二行左第二行右");
    }
}
