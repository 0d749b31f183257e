//! The model's tokenizer, with the prefix and truncation the embedder applies.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::EmbedderError;

/// What a text is for; selects the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Query,
    Passage,
}

/// Token ids of one text, ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedInput {
    pub ids: Vec<u32>,
    /// The text was longer than the model's window and its end was cut.
    pub truncated: bool,
}

/// Token ids of a (query, passage) pair as the tokenizer's pair template joins them, with
/// the segment (token type) of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairInput {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The pair was longer than the model's window and the longer side was cut.
    pub truncated: bool,
}

/// One token with its place in the text, in Unicode characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpan {
    pub id: u32,
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub special: bool,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    max_input_tokens: usize,
    query_prefix: String,
    passage_prefix: String,
}

impl TextTokenizer {
    pub fn from_file(
        path: &Path,
        max_input_tokens: usize,
        query_prefix: String,
        passage_prefix: String,
    ) -> Result<Self, EmbedderError> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| EmbedderError::Load(format!("{}: {e}", path.display())))?;
        // tokenizer.json often carries its own padding/truncation settings (MiniLM's says 128
        // tokens); the embedder decides both itself.
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_input_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedderError::Load(format!("tokenizer truncation: {e}")))?;
        Ok(Self {
            inner,
            max_input_tokens,
            query_prefix,
            passage_prefix,
        })
    }

    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    pub fn prefix(&self, kind: TextKind) -> &str {
        match kind {
            TextKind::Query => &self.query_prefix,
            TextKind::Passage => &self.passage_prefix,
        }
    }

    fn with_prefix(&self, text: &str, kind: TextKind) -> String {
        let prefix = self.prefix(kind);
        let mut out = String::with_capacity(prefix.len() + text.len());
        out.push_str(prefix);
        out.push_str(text);
        out
    }

    fn encode_raw(
        &self,
        text: &str,
        kind: TextKind,
    ) -> Result<tokenizers::Encoding, EmbedderError> {
        self.inner
            .encode(self.with_prefix(text, kind), true)
            .map_err(|e| EmbedderError::Tokenizer(e.to_string()))
    }

    pub fn encode(&self, text: &str, kind: TextKind) -> Result<TokenizedInput, EmbedderError> {
        let encoding = self.encode_raw(text, kind)?;
        Ok(TokenizedInput {
            truncated: !encoding.get_overflowing().is_empty(),
            ids: encoding.get_ids().to_vec(),
        })
    }

    /// Encodes `(first, second)` with the pair template (`[CLS] a [SEP] b [SEP]`, `<s> a
    /// </s></s> b </s>`), truncated longest side first to the window; no prefixes.
    pub fn encode_pair(&self, first: &str, second: &str) -> Result<PairInput, EmbedderError> {
        let encoding = self
            .inner
            .encode((first, second), true)
            .map_err(|e| EmbedderError::Tokenizer(e.to_string()))?;
        Ok(PairInput {
            truncated: !encoding.get_overflowing().is_empty(),
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
        })
    }

    /// Tokens with their character offsets in `prefix + text`.
    pub fn tokenize(
        &self,
        text: &str,
        kind: TextKind,
    ) -> Result<(Vec<TokenSpan>, bool), EmbedderError> {
        let full = self.with_prefix(text, kind);
        let encoding = self.encode_raw(text, kind)?;
        let truncated = !encoding.get_overflowing().is_empty();
        let to_char = char_indices_at(&full, encoding.get_offsets());
        let spans = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_offsets())
            .zip(encoding.get_special_tokens_mask())
            .map(|(((&id, token), &(start, end)), &special)| TokenSpan {
                id,
                text: token.clone(),
                start: if special == 1 { 0 } else { to_char(start) },
                end: if special == 1 { 0 } else { to_char(end) },
                special: special == 1,
            })
            .collect();
        Ok((spans, truncated))
    }
}

/// Byte offset -> character index, for the offsets a tokenization gives: memory in the
/// number of tokens, not of bytes (the request's text may be large).
fn char_indices_at(text: &str, offsets: &[(usize, usize)]) -> impl Fn(usize) -> usize {
    let mut bytes: Vec<usize> = offsets.iter().flat_map(|&(s, e)| [s, e]).collect();
    bytes.sort_unstable();
    bytes.dedup();
    let mut chars = Vec::with_capacity(bytes.len());
    let mut wanted = bytes.iter().peekable();
    let mut count = 0;
    for (byte, _) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        // A wanted offset inside a character maps to the character that holds it.
        while wanted.next_if(|&&b| b < byte).is_some() {
            chars.push(count.max(1) - 1);
        }
        if wanted.next_if(|&&b| b == byte).is_some() {
            chars.push(count);
        }
        count += 1;
    }
    let total = count - 1;
    chars.resize(bytes.len(), total);
    move |byte| match bytes.binary_search(&byte) {
        Ok(i) => chars[i],
        Err(_) => total,
    }
}

impl TextTokenizer {
    /// Length of `prefix + text` without truncation, for error messages.
    pub fn count_untruncated(&self, text: &str, kind: TextKind) -> Result<usize, EmbedderError> {
        let encoding = self.encode_raw(text, kind)?;
        Ok(encoding.get_ids().len()
            + encoding
                .get_overflowing()
                .iter()
                .map(|o| o.get_ids().len())
                .sum::<usize>())
    }
}

#[cfg(test)]
mod tests {
    use super::char_indices_at;

    #[test]
    fn byte_offsets_become_character_indices() {
        // "a知b": bytes 0, 1..4, 4; characters 0, 1, 2.
        let text = "a知b";
        let to_char = char_indices_at(text, &[(0, 1), (1, 4), (4, 5), (2, 3)]);
        assert_eq!(
            [0, 1, 4, 5].map(&to_char),
            [0, 1, 2, 3],
            "boundaries and the end"
        );
        // Inside a character: the character that holds it; past the end: the end.
        assert_eq!(to_char(2), 1);
        assert_eq!(to_char(3), 1);
        assert_eq!(to_char(99), 3);
    }
}
