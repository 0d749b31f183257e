//! Helpers shared by the integration tests.

use zhiku_text::Passage;

/// Each passage as (heading path, text): the shape the golden expectations are written in.
#[allow(dead_code)]
pub fn headed(passages: &[Passage]) -> Vec<(String, &str)> {
    passages
        .iter()
        .map(|p| (p.heading(), p.text.as_str()))
        .collect()
}

pub mod pdf;
#[allow(unused_imports)]
pub use pdf::pdf_of;

/// A zip archive (deflated) of the given entries.
#[allow(dead_code)]
pub fn zip_of<C: AsRef<[u8]>>(entries: &[(&str, C)]) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in entries {
        zip.start_file(*name, options).expect("start entry");
        zip.write_all(content.as_ref()).expect("write entry");
    }
    zip.finish().expect("finish zip").into_inner()
}
