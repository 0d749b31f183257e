//! tiktoken vocabularies: GLM-4-9B-chat's `tokenizer.model` is not SentencePiece but a text
//! file of `base64(token bytes) rank` lines, read by its Python tokenizer with `tiktoken`.
//! We build the equivalent `tokenizers` pipeline, as `transformers`' tiktoken converter does:
//!
//! - model: byte-level BPE; the vocabulary is each token's bytes in GPT-2's byte-to-character
//!   alphabet, and the merges are recovered from the ranks (a token that splits into two
//!   tokens is their merge, ranked by the token's rank). A pre-token that is itself in the
//!   vocabulary is one token, as tiktoken does (`ignore_merges`);
//! - pre-tokenizer: GLM-4's split pattern, then the byte-level mapping;
//! - special tokens: tokenizer_config.json's `added_tokens_decoder`, which must continue the
//!   ranks (GLM-4: `<|endoftext|>` = 151329, `[gMASK]` = 151331, …).

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::LmError;

/// GLM-4's pre-tokenizer split (its tokenization_chatglm.py `pat_str`): digits in threes.
pub const GLM4_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Whether `bytes` look like a tiktoken file: the first line is `base64 rank`.
pub fn looks_like_tiktoken(bytes: &[u8]) -> bool {
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(first) else {
        return false;
    };
    let mut parts = line.split_whitespace();
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(token), Some(rank), None)
            if rank.parse::<u32>().is_ok() && STANDARD.decode(token).is_ok()
    )
}

/// Reads a tiktoken file into (token bytes, rank) pairs; ranks must be 0..n without gaps.
pub fn read_ranks(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: `{line}`", n + 1);
        let (token, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `base64 rank`"))?;
        let rank: usize = rank
            .trim()
            .parse()
            .map_err(|_| bad("rank is not a number"))?;
        let token = STANDARD
            .decode(token)
            .map_err(|e| bad(&format!("bad base64 ({e})")))?;
        if rank >= by_rank.len() {
            // Ranks beyond a few million are not a vocabulary; refuse before allocating.
            if rank > 16 * 1024 * 1024 {
                return Err(bad("rank is implausibly large"));
            }
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].replace(token).is_some() {
            return Err(bad("rank given twice"));
        }
    }
    if by_rank.is_empty() {
        return Err("no tokens".into());
    }
    by_rank
        .into_iter()
        .enumerate()
        .map(|(rank, t)| t.ok_or_else(|| format!("rank {rank} is missing")))
        .collect()
}

/// GPT-2's map from bytes to printable characters (the byte-level BPE alphabet).
fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    map
}

/// Builds the tokenizer of a tiktoken vocabulary (`text`) with `specials` (id, content) after
/// it; each special must have the id it is given.
pub fn tokenizer_from_tiktoken(
    text: &str,
    specials: &[(u32, String)],
) -> Result<Tokenizer, String> {
    let ranks = read_ranks(text)?;
    let alphabet = byte_to_char();
    let as_chars =
        |bytes: &[u8]| -> String { bytes.iter().map(|b| alphabet[*b as usize]).collect() };
    let rank_of: HashMap<&[u8], u32> = ranks
        .iter()
        .enumerate()
        .map(|(rank, bytes)| (bytes.as_slice(), rank as u32))
        .collect();
    if rank_of.len() != ranks.len() {
        return Err("a token is listed under two ranks".into());
    }

    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (rank, bytes) in ranks.iter().enumerate() {
        vocab.insert(as_chars(bytes), rank as u32);
    }
    // A token of rank r is the merge of its two halves; ties broken by the halves' ranks.
    let mut ranked: Vec<(u32, u32, u32, usize)> = Vec::new();
    for (rank, bytes) in ranks.iter().enumerate() {
        for cut in 1..bytes.len() {
            let (left, right) = bytes.split_at(cut);
            if let (Some(l), Some(r)) = (rank_of.get(left), rank_of.get(right)) {
                ranked.push((rank as u32, *l, *r, cut));
            }
        }
    }
    ranked.sort_unstable();
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(rank, _, _, cut)| {
            let (left, right) = ranks[rank as usize].split_at(cut);
            (as_chars(left), as_chars(right))
        })
        .collect();
    let mut tokenizer = crate::tokenizer::byte_level_bpe(vocab, merges, &[GLM4_SPLIT], true)?;

    let mut specials = specials.to_vec();
    specials.sort();
    for (id, content) in &specials {
        tokenizer.add_special_tokens(&[AddedToken::from(content.clone(), true)]);
        let got = tokenizer.token_to_id(content);
        if got != Some(*id) {
            return Err(format!(
                "special token {content} should have id {id} but follows the {} ranks as \
                 {got:?}; tokenizer_config.json's added_tokens_decoder must continue the ranks \
                 without gaps",
                ranks.len()
            ));
        }
    }
    Ok(tokenizer)
}

/// [`tokenizer_from_tiktoken`] on a file, with the special tokens of the
/// `tokenizer_config.json` beside it (`added_tokens_decoder`).
pub fn tokenizer_from_tiktoken_file(path: &Path) -> Result<Tokenizer, LmError> {
    let load = |why: String| LmError::Load(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| load(format!("cannot read: {e}")))?;
    let specials = match path.parent().map(|d| d.join("tokenizer_config.json")) {
        Some(config) if config.is_file() => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| load(format!("cannot read {}: {e}", config.display())))?;
            added_tokens(&text).map_err(|e| load(format!("tokenizer_config.json: {e}")))?
        }
        _ => Vec::new(),
    };
    tokenizer_from_tiktoken(&text, &specials).map_err(load)
}

/// tokenizer_config.json's `added_tokens_decoder`: `{"151329": {"content": "<|endoftext|>",
/// …}, …}`.
pub fn added_tokens(config: &str) -> Result<Vec<(u32, String)>, String> {
    let value: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    let Some(decoder) = value.get("added_tokens_decoder") else {
        return Ok(Vec::new());
    };
    let decoder = decoder
        .as_object()
        .ok_or("added_tokens_decoder is not an object")?;
    decoder
        .iter()
        .map(|(id, token)| {
            let id: u32 = id
                .parse()
                .map_err(|_| format!("added_tokens_decoder key `{id}` is not an id"))?;
            let content = token
                .get("content")
                .and_then(|c| c.as_str())
                .ok_or_else(|| format!("added token {id} has no content"))?;
            Ok((id, content.to_owned()))
        })
        .collect()
}
