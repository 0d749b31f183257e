//! Tokenizers for generation: `tokenizer.json` where the model has one, else built from the
//! vocabulary inside a GGUF file (`tokenizer.ggml.*`).

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::GeneratorError;

/// Qwen2's pre-tokenizer split, as in its tokenizer.json, so that GGUF-built tokenizers cut
/// text exactly as upstream does.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split (llama.cpp's default for BPE vocabularies), with digits one by one as
/// SmolLM's tokenizer does.
const SMOLLM_SPLIT: &str =
    r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// A byte-level BPE tokenizer (GPT-2's byte alphabet) whose pre-tokenizer splits on
/// `pattern`. `ignore_merges`: a pre-token that is itself in the vocabulary is one token
/// (tiktoken's rule).
pub(crate) fn byte_level_bpe(
    vocab: tokenizers::models::bpe::Vocab,
    merges: Vec<(String, String)>,
    pattern: &str,
    ignore_merges: bool,
) -> Result<Tokenizer, String> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| format!("BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let split = Split::new(
        SplitPattern::Regex(pattern.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| format!("pre-tokenizer regex: {e}"))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]))));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// A tokenizer plus the ids generation needs.
pub struct GenTokenizer {
    pub inner: Tokenizer,
    /// Tokens that end generation (eos may be a list).
    pub eos_ids: Vec<u32>,
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// Added to every id `inner` gives (and taken off before decoding): ChatGLM-6B's model
    /// ids are its SentencePiece ids plus `num_image_tokens`. Ids below it decode to nothing.
    id_offset: u32,
}

impl GenTokenizer {
    /// A `tokenizer.json` and the ids that end generation.
    pub fn from_json(path: &Path, eos_ids: Vec<u32>) -> Result<Self, GeneratorError> {
        Ok(Self::with_stops(Self::from_file(path)?, eos_ids))
    }

    /// A built tokenizer and the ids that end generation.
    pub fn with_stops(inner: Tokenizer, eos_ids: Vec<u32>) -> Self {
        Self::with_offset(inner, eos_ids, 0)
    }

    /// [`Self::with_stops`] for a model whose ids are the tokenizer's plus `id_offset`;
    /// `eos_ids` are model ids.
    pub fn with_offset(inner: Tokenizer, eos_ids: Vec<u32>, id_offset: u32) -> Self {
        let eos = eos_ids
            .first()
            .and_then(|id| id.checked_sub(id_offset))
            .and_then(|id| inner.id_to_token(id));
        Self {
            inner,
            eos_ids,
            bos: None,
            eos,
            id_offset,
        }
    }

    /// The model id of `token`, if the vocabulary holds it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner
            .token_to_id(token)
            .and_then(|id| id.checked_add(self.id_offset))
    }

    pub fn from_file(path: &Path) -> Result<Tokenizer, GeneratorError> {
        Tokenizer::from_file(path)
            .map_err(|e| GeneratorError::Load(format!("{}: {e}", path.display())))
    }

    /// Builds a byte-level BPE tokenizer from GGUF metadata (`tokenizer.ggml.model` = gpt2).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, GeneratorError> {
        let md = &content.metadata;
        let get = |key: &str| {
            md.get(key)
                .ok_or_else(|| GeneratorError::Load(format!("GGUF has no `{key}`")))
        };
        let model = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| GeneratorError::Load(e.to_string()))?
            .clone();
        if model != "gpt2" {
            return Err(GeneratorError::UnsupportedModel(format!(
                "GGUF tokenizer `{model}`: only byte-level BPE (`gpt2`) vocabularies are built \
                 from GGUF; put the model's tokenizer.json beside it"
            )));
        }
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
            .to_vec()
            .map_err(|e| GeneratorError::Load(e.to_string()))?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()
            .map_err(|e| GeneratorError::Load(format!("tokenizer.ggml.tokens: {e}")))?;
        let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
            .to_vec()
            .map_err(|e| GeneratorError::Load(e.to_string()))?
            .iter()
            .map(|v| {
                let merge = v
                    .to_string()
                    .map_err(|e| GeneratorError::Load(format!("tokenizer.ggml.merges: {e}")))?;
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| GeneratorError::Load(format!("bad merge `{merge}`")))
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| GeneratorError::Load(e.to_string()))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();

        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        let pattern = if pre == "qwen2" {
            QWEN2_SPLIT
        } else {
            SMOLLM_SPLIT
        };
        let mut tokenizer = byte_level_bpe(vocab, merges, pattern, false)
            .map_err(|e| GeneratorError::Load(format!("GGUF vocabulary: {e}")))?;
        // Control (3) and user-defined (4) tokens are matched whole, before BPE.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        tokenizer.add_special_tokens(&specials);

        let id_of = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
        let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
        let eos_id = id_of("tokenizer.ggml.eos_token_id");
        let bos_id = id_of("tokenizer.ggml.bos_token_id");
        let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
        // Chat models end a turn with their end-of-turn token even when eos says otherwise.
        for name in [
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "<|user|>",
            "<|observation|>",
        ] {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                let i = i as u32;
                if !eos_ids.contains(&i) {
                    eos_ids.push(i);
                }
            }
        }
        Ok(Self {
            inner: tokenizer,
            eos_ids,
            bos: name_of(bos_id),
            eos: name_of(eos_id),
            id_offset: 0,
        })
    }

    /// Model ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GeneratorError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| GeneratorError::Tokenizer(e.to_string()))?;
        encoding
            .get_ids()
            .iter()
            .map(|id| {
                id.checked_add(self.id_offset).ok_or_else(|| {
                    GeneratorError::Tokenizer(format!("token id {id} overflows with its offset"))
                })
            })
            .collect()
    }

    /// Text of model ids; special tokens and ids below the offset are left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, GeneratorError> {
        let shifted: Vec<u32>;
        let ids = if self.id_offset == 0 {
            ids
        } else {
            shifted = ids
                .iter()
                .filter_map(|id| id.checked_sub(self.id_offset))
                .collect();
            &shifted
        };
        self.inner
            .decode(ids, true)
            .map_err(|e| GeneratorError::Tokenizer(e.to_string()))
    }
}
