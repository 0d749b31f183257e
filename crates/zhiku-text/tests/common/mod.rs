//! Helpers shared by the integration tests.

use zhiku_text::Passage;

/// Each passage as (heading path, text): the shape the golden expectations are written in.
pub fn headed(passages: &[Passage]) -> Vec<(String, &str)> {
    passages
        .iter()
        .map(|p| (p.heading(), p.text.as_str()))
        .collect()
}
