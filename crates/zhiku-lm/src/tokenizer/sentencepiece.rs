//! SentencePiece `tokenizer.model` files, which the ChatGLM family ships instead of a
//! `tokenizer.json`. The file is a `ModelProto` protobuf; we read the few fields a tokenizer
//! needs with hand-written prost messages (no protoc, no generated code) and build the
//! equivalent `tokenizers` pipeline, as `transformers`' SentencePiece converters do:
//!
//! - model: Unigram (`model_type` 1, SentencePiece's default) from the pieces' scores, or BPE
//!   (`model_type` 2, ChatGLM2/3) with merges recovered from the vocabulary: a piece that
//!   splits into two pieces is their merge, ranked by the piece's id (SentencePiece stores
//!   BPE pieces in merge order);
//! - normalizer: spaces become "▁", with one prepended when `add_dummy_prefix`;
//! - decoder: "▁" back to spaces, `<0xNN>` byte pieces back to bytes (byte fallback);
//! - control and user-defined pieces are matched whole, and `added` tokens (the specials
//!   ChatGLM's Python tokenizer appends after the vocabulary) get the ids after it.
//!
//! ChatGLM-6B's `ice_text.model` ([`chatglm6b_tokenizer_from_model_bytes`]) adds its Python
//! tokenizer's text rules on top: "\n" is the piece `<n>`, a tab `<|tab|>`, a run of 2 to 80
//! spaces `<|blank_N|>`, and every id is shifted by `num_image_tokens` (the ids below it were
//! image tokens of the multimodal vocabulary; see [`crate::tokenizer::GenTokenizer`]).

use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, Tokenizer};

use crate::error::LmError;

/// `sentencepiece_model.proto`'s `ModelProto`, only the fields read here (prost skips the
/// others).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
}

/// One vocabulary entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// [`piece_type`]; absent means NORMAL.
    #[prost(int32, optional, tag = "3")]
    pub r#type: Option<i32>,
}

/// SentencePiece's `SentencePiece.Type` values.
pub mod piece_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TrainerSpec {
    /// 1 = UNIGRAM (the default), 2 = BPE, 3 = WORD, 4 = CHAR.
    #[prost(int32, optional, tag = "3")]
    pub model_type: Option<i32>,
    #[prost(bool, optional, tag = "35")]
    pub byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    pub unk_id: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NormalizerSpec {
    /// Default true: "hello" is encoded as "▁hello".
    #[prost(bool, optional, tag = "3")]
    pub add_dummy_prefix: Option<bool>,
}

const SPACE: &str = "\u{2581}";

/// Reads `path` (a SentencePiece model) and builds its tokenizer, with `added` special
/// tokens appended after the vocabulary.
pub fn tokenizer_from_model_file(path: &Path, added: &[&str]) -> Result<Tokenizer, LmError> {
    let bytes = std::fs::read(path)
        .map_err(|e| LmError::Load(format!("cannot read {}: {e}", path.display())))?;
    tokenizer_from_model_bytes(&bytes, added)
        .map_err(|e| LmError::Load(format!("{}: {e}", path.display())))
}

/// [`tokenizer_from_model_file`] on the file's bytes; errors are plain messages.
pub fn tokenizer_from_model_bytes(bytes: &[u8], added: &[&str]) -> Result<Tokenizer, String> {
    build(&decode(bytes)?, added, false)
}

/// [`tokenizer_from_model_bytes`] on an already decoded model (a GGUF SentencePiece
/// vocabulary arrives as pieces, scores and types, not as protobuf).
pub fn tokenizer_from_proto(proto: &ModelProto, added: &[&str]) -> Result<Tokenizer, String> {
    if proto.pieces.is_empty() {
        return Err("no pieces".into());
    }
    build(proto, added, false)
}

/// Longest run of spaces ChatGLM-6B encodes as one `<|blank_N|>` piece.
pub const CHATGLM6B_MAX_BLANK: usize = 80;

/// ChatGLM-6B's `ice_text.model`: the SentencePiece model plus its Python tokenizer's text
/// rules, "\n" → `<n>`, tab → `<|tab|>` and runs of spaces → `<|blank_N|>` (longest first),
/// undone when decoding. Only pieces the vocabulary holds are used. Ids are the model's own;
/// the caller shifts them by `num_image_tokens`.
pub fn chatglm6b_tokenizer_from_model_bytes(bytes: &[u8]) -> Result<Tokenizer, String> {
    build(&decode(bytes)?, &[], true)
}

/// ChatGLM-6B's text rules as (text, piece) pairs, longest runs of spaces first.
fn chatglm6b_whitespace() -> Vec<(String, String)> {
    let mut rules = vec![
        ("\n".to_owned(), "<n>".to_owned()),
        ("\t".to_owned(), "<|tab|>".to_owned()),
    ];
    for n in (2..=CHATGLM6B_MAX_BLANK).rev() {
        rules.push((" ".repeat(n), format!("<|blank_{n}|>")));
    }
    rules
}

/// A `tokenizer.model` file's bytes as a `ModelProto` with pieces.
fn decode(bytes: &[u8]) -> Result<ModelProto, String> {
    let not_sentencepiece = |why: String| {
        format!(
            "not a SentencePiece model ({why}), nor a tiktoken vocabulary (`base64 rank` lines); \
             give the model's tokenizer.json"
        )
    };
    let proto = <ModelProto as prost::Message>::decode(bytes)
        .map_err(|e| not_sentencepiece(e.to_string()))?;
    if proto.pieces.is_empty() {
        return Err(not_sentencepiece("no pieces".into()));
    }
    Ok(proto)
}

fn build(proto: &ModelProto, added: &[&str], chatglm6b: bool) -> Result<Tokenizer, String> {
    let trainer = proto.trainer_spec.clone().unwrap_or_default();
    let byte_fallback = trainer.byte_fallback.unwrap_or(false);
    let kind = |p: &SentencePiece| p.r#type.unwrap_or(piece_type::NORMAL);
    let text = |p: &SentencePiece| p.piece.clone().unwrap_or_default();
    let unk_id = proto
        .pieces
        .iter()
        .position(|p| kind(p) == piece_type::UNKNOWN)
        .or_else(|| trainer.unk_id.and_then(|i| usize::try_from(i).ok()))
        .filter(|i| *i < proto.pieces.len());

    let mut tokenizer = match trainer.model_type.unwrap_or(1) {
        1 => {
            let vocab: Vec<(String, f64)> = proto
                .pieces
                .iter()
                .map(|p| (text(p), f64::from(p.score.unwrap_or(0.0))))
                .collect();
            let unigram = Unigram::from(vocab, unk_id, byte_fallback)
                .map_err(|e| format!("unigram model: {e}"))?;
            Tokenizer::new(unigram)
        }
        2 => {
            let bpe = bpe_from_pieces(&proto.pieces, unk_id, byte_fallback)?;
            Tokenizer::new(bpe)
        }
        other => {
            return Err(format!(
                "SentencePiece model_type {other}: only unigram (1) and BPE (2) models are read"
            ));
        }
    };

    let dummy_prefix = proto
        .normalizer_spec
        .as_ref()
        .and_then(|n| n.add_dummy_prefix)
        .unwrap_or(true);
    let replace =
        |from: &str, to: &str| Replace::new(from, to).map_err(|e| format!("normalizer: {e}"));
    let mut normalizers = Vec::new();
    // ChatGLM-6B's rules run before SentencePiece's own normalisation, as its Python
    // tokenizer rewrites the text before calling SentencePiece.
    let whitespace: Vec<(String, String)> = if chatglm6b {
        let known: std::collections::HashSet<&str> = proto
            .pieces
            .iter()
            .filter_map(|p| p.piece.as_deref())
            .collect();
        chatglm6b_whitespace()
            .into_iter()
            .filter(|(_, piece)| known.contains(piece.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    for (from, to) in &whitespace {
        normalizers.push(NormalizerWrapper::Replace(replace(from, to)?));
    }
    if dummy_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new(SPACE.into())));
    }
    normalizers.push(NormalizerWrapper::Replace(replace(" ", SPACE)?));
    tokenizer.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(
        normalizers,
    ))));
    let mut decoders = vec![
        DecoderWrapper::Replace(replace(SPACE, " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if dummy_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    // After the strip: a leading `<|blank_2|>` is two real spaces, not the dummy prefix.
    for (text, piece) in &whitespace {
        decoders.push(DecoderWrapper::Replace(replace(piece, text)?));
    }
    tokenizer.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
        decoders,
    ))));

    // Control (<s>, </s>) and user-defined pieces are matched whole, never split: control
    // pieces as special tokens (only in trusted text, see `crate::tokenizer`), user-defined
    // ones as ordinary vocabulary, matched everywhere in the text as it was written
    // (SentencePiece's and llama.cpp's rule). The whitespace pieces are matched in the
    // normalised text, where the rules above put them.
    let is_whitespace = |p: &SentencePiece| {
        whitespace
            .iter()
            .any(|(_, piece)| p.piece.as_deref() == Some(piece.as_str()))
    };
    let of_kind = |wanted: i32| -> Vec<AddedToken> {
        proto
            .pieces
            .iter()
            .filter(|p| kind(p) == wanted && !is_whitespace(p))
            .map(|p| AddedToken::from(text(p), wanted == piece_type::CONTROL).normalized(false))
            .collect()
    };
    tokenizer.add_special_tokens(&of_kind(piece_type::CONTROL));
    tokenizer.add_tokens(&of_kind(piece_type::USER_DEFINED));
    let whitespace_tokens: Vec<AddedToken> = whitespace
        .iter()
        .map(|(_, piece)| AddedToken::from(piece.clone(), false).normalized(true))
        .collect();
    tokenizer.add_tokens(&whitespace_tokens);
    let appended: Vec<AddedToken> = added
        .iter()
        .map(|t| {
            // "sop" and "eop" are plain words: match them only as whole words, so that
            // "sophisticated" stays a word.
            let word = t.chars().all(char::is_alphanumeric);
            AddedToken::from(*t, true).single_word(word)
        })
        .collect();
    tokenizer.add_special_tokens(&appended);
    for (i, name) in added.iter().enumerate() {
        let expected = (proto.pieces.len() + i) as u32;
        if tokenizer.token_to_id(name) != Some(expected) {
            return Err(format!(
                "special token {name} should have id {expected} (after the {} pieces) but has \
                 {:?}",
                proto.pieces.len(),
                tokenizer.token_to_id(name)
            ));
        }
    }
    Ok(tokenizer)
}

/// A BPE model from SentencePiece BPE pieces: merges are recovered from the vocabulary (a
/// piece that is the concatenation of two pieces is their merge), ranked by the merged
/// piece's score, best first (SentencePiece and llama.cpp merge the best-scored pair), then
/// by its id and its halves' ids. Files store BPE pieces in merge order with falling
/// scores, so both orders agree there.
fn bpe_from_pieces(
    pieces: &[SentencePiece],
    unk_id: Option<usize>,
    byte_fallback: bool,
) -> Result<BPE, String> {
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (i, p) in pieces.iter().enumerate() {
        vocab
            .entry(p.piece.clone().unwrap_or_default())
            .or_insert(i as u32);
    }
    let mut ranked: Vec<(f32, u32, u32, u32, String, String)> = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let kind = p.r#type.unwrap_or(piece_type::NORMAL);
        if kind != piece_type::NORMAL && kind != piece_type::USER_DEFINED {
            continue;
        }
        let piece = p.piece.as_deref().unwrap_or_default();
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            if let (Some(l), Some(r)) = (vocab.get(left), vocab.get(right)) {
                let score = p.score.unwrap_or(0.0);
                ranked.push((score, i as u32, *l, *r, left.to_owned(), right.to_owned()));
            }
        }
    }
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| (a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
    });
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(_, _, _, _, l, r)| (l, r))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(byte_fallback);
    if let Some(unk) = unk_id
        .and_then(|i| pieces.get(i))
        .and_then(|p| p.piece.clone())
    {
        builder = builder.unk_token(unk);
    }
    builder.build().map_err(|e| format!("BPE model: {e}"))
}
