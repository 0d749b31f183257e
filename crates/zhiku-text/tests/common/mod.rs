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
