//! SentencePiece `tokenizer.model` files.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::GeneratorError;

/// Builds a tokenizer from a SentencePiece model file, with `added` special tokens appended.
pub fn tokenizer_from_model_file(
    path: &Path,
    _added: &[&str],
) -> Result<Tokenizer, GeneratorError> {
    Err(GeneratorError::Load(format!(
        "{}: SentencePiece tokenizer.model files are not read yet; add tokenizer.json",
        path.display()
    )))
}
