//! Tokenizers for generation: `tokenizer.json` where the model has one, else built from the
//! vocabulary inside a GGUF file (`tokenizer.ggml.*`), as llama.cpp reads it:
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE, pre-tokenized with the regexes that
//!   `tokenizer.ggml.pre` names ([`bpe_pre_tokenizer`]);
//! - `tokenizer.ggml.model = llama`: SentencePiece (tokens, scores, token types, `<0xNN>`
//!   byte fallback, "▁" for spaces, `add_space_prefix`), built by [`sentencepiece`].
//!
//! **Control tokens come only from trusted text.** A prompt is a [`Prompt`]: the chat
//! template's text (trusted: `<|im_start|>`, `[gMASK]`, … become their control tokens) and
//! the messages' contents (plain text: `<|im_end|>` written in a document is the characters
//! `<`, `|`, `im`, …, never the control token). The tokenizer's own added-token matching
//! is switched off for special tokens (`set_encode_special_tokens`), and
//! [`GenTokenizer::encode_prompt`] finds control tokens itself, in trusted spans only.
//! User-defined tokens (GGUF token type 4, `tokenizer.json`'s non-special added tokens) are
//! ordinary vocabulary and are matched everywhere, as llama.cpp and `tokenizers` do.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::LmError;
pub mod sentencepiece;
pub mod tiktoken;

use crate::template::Prompt;
use sentencepiece::{ModelProto, NormalizerSpec, SentencePiece, TrainerSpec};

/// GPT-2's split, as llama.cpp writes it.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's split (also GLM-4's and DBRX's): digits in threes. Case-insensitive contractions
/// are spelled out, as llama.cpp does, so that no Unicode case folding (`ſ` for `s`) applies.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o's (and Llama 4's) split: words keep their case shape and contraction.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// DeepSeek-V3's word split (after its digit and CJK splits).
const DEEPSEEK3_WORDS: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;

/// How a GGUF BPE vocabulary is pre-tokenized: llama.cpp's regexes for its
/// `tokenizer.ggml.pre` name, applied one after another (each splits the pieces the previous
/// one left), and whether a pre-token that is itself in the vocabulary is one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizer {
    /// The name this was chosen for: `default` when the GGUF's name is unknown or missing.
    pub name: &'static str,
    pub regexes: &'static [&'static str],
    pub ignore_merges: bool,
    /// Whether the vocabulary starts prompts with BOS when its GGUF does not say.
    pub add_bos: bool,
}

/// llama.cpp's pre-tokenizer for `pre`; `None` for a name it does not know (the caller falls
/// back to [`DEFAULT_PRE`], as llama.cpp does for a missing name).
pub fn bpe_pre_tokenizer(pre: &str) -> Option<PreTokenizer> {
    let p = |name, regexes, ignore_merges, add_bos| PreTokenizer {
        name,
        regexes,
        ignore_merges,
        add_bos,
    };
    Some(match pre {
        "default" => DEFAULT_PRE,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" => {
            p("llama3", &[LLAMA3], true, true)
        }
        "dbrx" | "smaug-bpe" => p("llama3", &[LLAMA3], false, false),
        "glm4" | "chatglm-bpe" => p("glm4", &[LLAMA3], false, false),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" => {
            p("qwen2", &[QWEN2], false, false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            p("smollm", &[r"\p{N}", GPT2], false, false)
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "mpt" | "olmo" | "jais" | "exaone4" | "roberta-bpe" | "jina-v1-en" | "jina-v2-code" => {
            p("gpt-2", &[GPT2], false, false)
        }
        "gpt-4o" | "llama4" => p("gpt-4o", &[GPT4O], false, false),
        "falcon" => p(
            "falcon",
            &[
                r"[\p{P}\$\+<=>\^~\|`]+",
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                r"[0-9][0-9][0-9]",
            ],
            false,
            false,
        ),
        "deepseek-coder" => p(
            "deepseek-coder",
            &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                r"[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ],
            false,
            false,
        ),
        "deepseek-v3" => p(
            "deepseek-v3",
            &[r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3_WORDS],
            false,
            false,
        ),
        _ => return None,
    })
}

/// llama.cpp's pre-tokenizer for a BPE vocabulary whose GGUF names none (or one it does not
/// know).
pub const DEFAULT_PRE: PreTokenizer = PreTokenizer {
    name: "default",
    regexes: &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    ignore_merges: false,
    add_bos: false,
};

/// A byte-level BPE tokenizer (GPT-2's byte alphabet) whose pre-tokenizer splits with each of
/// `patterns` in turn. `ignore_merges`: a pre-token that is itself in the vocabulary is one
/// token (tiktoken's rule).
pub(crate) fn byte_level_bpe(
    vocab: tokenizers::models::bpe::Vocab,
    merges: Vec<(String, String)>,
    patterns: &[&str],
    ignore_merges: bool,
) -> Result<Tokenizer, String> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| format!("BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let mut steps = Vec::with_capacity(patterns.len() + 1);
    for pattern in patterns {
        let split = Split::new(
            SplitPattern::Regex((*pattern).into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("pre-tokenizer regex `{pattern}`: {e}"))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(steps))));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// GGUF token types (llama.cpp's `llama_token_type`, SentencePiece's piece types).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
}

/// Tokens llama.cpp treats as control tokens whatever type the GGUF gives them (it
/// recognises end-of-turn and fill-in-the-middle tokens by their text).
const CONTROL_BY_NAME: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<EOT>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|fim_pad|>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<|file_sep|>",
];

/// One control token as [`GenTokenizer::encode_prompt`] matches it in trusted text.
#[derive(Debug, Clone)]
struct Control {
    text: String,
    id: u32,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
}

/// What [`GenTokenizer`] derives from its tokenizer at first use.
struct Derived {
    /// Control tokens by their first byte, longest first (leftmost-longest matching).
    controls: Vec<Vec<Control>>,
    /// A copy of `inner` with special-token matching off, only when `inner` came with it on
    /// (a `tokenizer.json` put in place after construction).
    plain: Option<Tokenizer>,
}

/// A tokenizer plus the ids generation needs.
pub struct GenTokenizer {
    /// The tokenizer. Its special added tokens are not matched by `inner.encode` (they are
    /// matched by [`GenTokenizer::encode_prompt`], in trusted text only).
    pub inner: Tokenizer,
    /// Tokens that end generation (eos may be a list).
    pub eos_ids: Vec<u32>,
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// Added to every id `inner` gives (and taken off before decoding): ChatGLM-6B's model
    /// ids are its SentencePiece ids plus `num_image_tokens`. Ids below it decode to nothing.
    id_offset: u32,
    /// Every prompt starts with this id (GGUF `tokenizer.ggml.add_bos_token`), unless its
    /// text already does.
    add_bos: Option<u32>,
    derived: OnceLock<Derived>,
}

impl GenTokenizer {
    /// A `tokenizer.json` and the ids that end generation.
    pub fn from_json(path: &Path, eos_ids: Vec<u32>) -> Result<Self, LmError> {
        Ok(Self::with_stops(Self::from_file(path)?, eos_ids))
    }

    /// A built tokenizer and the ids that end generation.
    pub fn with_stops(inner: Tokenizer, eos_ids: Vec<u32>) -> Self {
        Self::with_offset(inner, eos_ids, 0)
    }

    /// [`Self::with_stops`] for a model whose ids are the tokenizer's plus `id_offset`;
    /// `eos_ids` are model ids.
    pub fn with_offset(mut inner: Tokenizer, eos_ids: Vec<u32>, id_offset: u32) -> Self {
        inner.set_encode_special_tokens(true);
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
            add_bos: None,
            derived: OnceLock::new(),
        }
    }

    /// Puts `inner` in place of the tokenizer (a `tokenizer.json` beside a GGUF), keeping the
    /// stop ids and BOS rule.
    pub fn set_tokenizer(&mut self, mut inner: Tokenizer) {
        inner.set_encode_special_tokens(true);
        self.inner = inner;
        self.derived = OnceLock::new();
    }

    /// The model id of `token`, if the vocabulary holds it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner
            .token_to_id(token)
            .and_then(|id| id.checked_add(self.id_offset))
    }

    /// The model ids of the control (special) tokens: what only a chat template, or a
    /// trusted raw prompt, can put into a prompt.
    pub fn control_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .derived()
            .controls
            .iter()
            .flatten()
            .filter_map(|c| c.id.checked_add(self.id_offset))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn from_file(path: &Path) -> Result<Tokenizer, LmError> {
        Tokenizer::from_file(path).map_err(|e| LmError::Load(format!("{}: {e}", path.display())))
    }

    /// Builds the tokenizer of a GGUF vocabulary: byte-level BPE (`tokenizer.ggml.model` =
    /// gpt2) or SentencePiece (`llama`).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, LmError> {
        let md = &content.metadata;
        let load = |e: String| LmError::Load(e);
        let get = |key: &str| {
            md.get(key)
                .ok_or_else(|| LmError::Load(format!("GGUF has no `{key}`")))
        };
        let string = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
        let flag = |key: &str| md.get(key).and_then(|v| v.to_bool().ok());
        let model = string("tokenizer.ggml.model")
            .ok_or_else(|| load("GGUF has no string `tokenizer.ggml.model`".into()))?;
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
            .to_vec()
            .map_err(|e| load(e.to_string()))?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()
            .map_err(|e| load(format!("tokenizer.ggml.tokens: {e}")))?;
        let mut types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| load(e.to_string()))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(token_type::NORMAL))
                .collect(),
            None => Vec::new(),
        };
        types.resize(tokens.len(), token_type::NORMAL);
        for (token, kind) in tokens.iter().zip(types.iter_mut()) {
            if *kind == token_type::NORMAL && CONTROL_BY_NAME.contains(&token.as_str()) {
                *kind = token_type::CONTROL;
            }
        }

        let (mut tokenizer, default_add_bos) = match model.as_str() {
            "gpt2" => {
                let pre = string("tokenizer.ggml.pre").unwrap_or_default();
                let spec = bpe_pre_tokenizer(&pre).unwrap_or_else(|| {
                    tracing::warn!(
                        pre = %pre,
                        "GGUF pre-tokenizer unknown or missing: using llama.cpp's default \
                         split, which may tokenize text unlike the model's own tokenizer"
                    );
                    DEFAULT_PRE
                });
                let merges = gguf_merges(md)?;
                let mut vocab = tokenizers::models::bpe::Vocab::default();
                for (i, t) in tokens.iter().enumerate() {
                    vocab.entry(t.clone()).or_insert(i as u32);
                }
                let tokenizer = byte_level_bpe(vocab, merges, spec.regexes, spec.ignore_merges)
                    .map_err(|e| load(format!("GGUF vocabulary: {e}")))?;
                (tokenizer, spec.add_bos)
            }
            "llama" => (sentencepiece_from_gguf(md, &tokens, &types)?, true),
            other => {
                return Err(LmError::UnsupportedModel(format!(
                    "GGUF tokenizer `{other}`: zhiku builds byte-level BPE (`gpt2`) and \
                     SentencePiece (`llama`) vocabularies from GGUF; put the model's \
                     tokenizer.json beside it"
                )));
            }
        };
        // Control tokens are matched whole in trusted text; user-defined ones everywhere, as
        // ordinary vocabulary (llama.cpp's rule). SentencePiece vocabularies have them already.
        if model == "gpt2" {
            let specials: Vec<AddedToken> = tokens
                .iter()
                .zip(&types)
                .filter(|(_, t)| **t == token_type::CONTROL)
                .map(|(token, _)| AddedToken::from(token.clone(), true))
                .collect();
            tokenizer.add_special_tokens(&specials);
            let user: Vec<AddedToken> = tokens
                .iter()
                .zip(&types)
                .filter(|(_, t)| **t == token_type::USER_DEFINED)
                .map(|(token, _)| AddedToken::from(token.clone(), false).normalized(false))
                .collect();
            tokenizer.add_tokens(&user);
        }

        let id_of = |key: &str| {
            md.get(key)
                .and_then(|v| v.to_u32().ok())
                .filter(|id| (*id as usize) < tokens.len())
        };
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
        let add_bos = flag("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_add_bos)
            .then_some(bos_id)
            .flatten();
        let mut this = Self::with_stops(tokenizer, eos_ids);
        this.bos = name_of(bos_id);
        this.eos = name_of(eos_id);
        this.add_bos = add_bos;
        Ok(this)
    }

    /// Model ids of trusted `text`: control tokens written in it are matched (a raw prompt,
    /// a template's text). No BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LmError> {
        let mut matches = Vec::new();
        self.find_controls(text, 0..text.len(), &mut matches);
        let mut ids = Vec::new();
        self.encode_around(text, &matches, &mut ids)?;
        Ok(ids)
    }

    /// Model ids of plain `text`: control tokens written in it are text, never control ids.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, LmError> {
        let mut ids = Vec::new();
        self.encode_piece(text, &mut ids)?;
        Ok(ids)
    }

    /// Model ids of a prompt, as generation feeds them: BOS when the vocabulary asks for it,
    /// control tokens matched in the trusted text only, contents plain.
    ///
    /// Text between two control tokens is encoded as one piece, whatever mix of template and
    /// content it holds, so that the ids equal those of the whole prompt text wherever the
    /// contents hold no control token.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, LmError> {
        let text = prompt.text.as_str();
        let mut matches = Vec::new();
        let mut cursor = 0;
        for range in prompt.content_ranges() {
            self.find_controls(text, cursor..range.start, &mut matches);
            cursor = range.end;
        }
        self.find_controls(text, cursor..text.len(), &mut matches);

        let mut ids = Vec::new();
        if let Some(bos) = self.add_bos
            && matches
                .first()
                .is_none_or(|(start, _, id)| *id != bos || *start != 0)
        {
            ids.push(bos.checked_add(self.id_offset).ok_or_else(overflow)?);
        }
        self.encode_around(text, &matches, &mut ids)?;
        Ok(ids)
    }

    /// Encodes `text` into `ids`: the control tokens `matches` (start, end, id) found, and
    /// the text between them as plain pieces.
    fn encode_around(
        &self,
        text: &str,
        matches: &[(usize, usize, u32)],
        ids: &mut Vec<u32>,
    ) -> Result<(), LmError> {
        let mut cursor = 0;
        for &(start, end, id) in matches {
            self.encode_piece(&text[cursor..start], ids)?;
            ids.push(id.checked_add(self.id_offset).ok_or_else(overflow)?);
            cursor = end;
        }
        self.encode_piece(&text[cursor..], ids)
    }

    /// Appends the control tokens found in `span` of `text` (leftmost-longest, with each
    /// token's single-word and strip rules) as (start, end, id).
    fn find_controls(
        &self,
        text: &str,
        span: std::ops::Range<usize>,
        out: &mut Vec<(usize, usize, u32)>,
    ) {
        let controls = &self.derived().controls;
        let bytes = text.as_bytes();
        // A previous token's strip may have taken text past the start of this span.
        let floor = out.last().map_or(0, |m| m.1);
        let mut i = span.start.max(floor);
        while i < span.end {
            let found = controls[bytes[i] as usize].iter().find(|c| {
                let end = i + c.text.len();
                // A token's first byte never continues a character: a match starts and
                // ends on character boundaries.
                end <= span.end
                    && bytes[i..].starts_with(c.text.as_bytes())
                    && (!c.single_word
                        || (!ends_with_word(&text[..i]) && !starts_with_word(&text[end..])))
            });
            let Some(c) = found else {
                i += 1;
                continue;
            };
            let mut start = i;
            let mut end = i + c.text.len();
            if c.lstrip {
                let kept = text[..start].trim_end_matches(char::is_whitespace).len();
                start = kept.max(out.last().map_or(0, |m| m.1));
            }
            if c.rstrip {
                end = text.len() - text[end..].trim_start_matches(char::is_whitespace).len();
            }
            out.push((start, end, c.id));
            i = end.max(i + 1);
        }
    }

    /// Encodes `piece` (no control tokens matched) into `ids`.
    fn encode_piece(&self, piece: &str, ids: &mut Vec<u32>) -> Result<(), LmError> {
        if piece.is_empty() {
            return Ok(());
        }
        let tokenizer = self.derived().plain.as_ref().unwrap_or(&self.inner);
        let encoding = tokenizer
            .encode_fast(piece, false)
            .map_err(|e| LmError::Tokenizer(e.to_string()))?;
        for id in encoding.get_ids() {
            ids.push(id.checked_add(self.id_offset).ok_or_else(overflow)?);
        }
        Ok(())
    }

    fn derived(&self) -> &Derived {
        self.derived.get_or_init(|| {
            let mut controls: Vec<Vec<Control>> = vec![Vec::new(); 256];
            for (id, token) in self.inner.get_added_tokens_decoder() {
                if !token.special || token.content.is_empty() {
                    continue;
                }
                controls[token.content.as_bytes()[0] as usize].push(Control {
                    text: token.content.clone(),
                    id,
                    single_word: token.single_word,
                    lstrip: token.lstrip,
                    rstrip: token.rstrip,
                });
            }
            for list in &mut controls {
                list.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
            }
            let plain = (!self.inner.get_encode_special_tokens()).then(|| {
                let mut plain = self.inner.clone();
                plain.set_encode_special_tokens(true);
                plain
            });
            Derived { controls, plain }
        })
    }

    /// Text of model ids; special tokens and ids below the offset are left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LmError> {
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
            .map_err(|e| LmError::Tokenizer(e.to_string()))
    }
}

fn overflow() -> LmError {
    LmError::Tokenizer("a token id overflows with the model's id offset".into())
}

/// `tokenizers`' word characters (`\w`) for single-word tokens.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ends_with_word(text: &str) -> bool {
    text.chars().next_back().is_some_and(is_word)
}

fn starts_with_word(text: &str) -> bool {
    text.chars().next().is_some_and(is_word)
}

/// `tokenizer.ggml.merges` as pairs.
fn gguf_merges(md: &HashMap<String, gguf_file::Value>) -> Result<Vec<(String, String)>, LmError> {
    let merges = md
        .get("tokenizer.ggml.merges")
        .ok_or_else(|| LmError::Load("GGUF has no `tokenizer.ggml.merges`".into()))?
        .to_vec()
        .map_err(|e| LmError::Load(e.to_string()))?;
    merges
        .iter()
        .map(|v| {
            let merge = v
                .to_string()
                .map_err(|e| LmError::Load(format!("tokenizer.ggml.merges: {e}")))?;
            // llama.cpp splits at the first space after the first byte: a merge's left half
            // may itself be a space. A space is one byte, so the cut is a char boundary.
            merge
                .as_bytes()
                .iter()
                .skip(1)
                .position(|b| *b == b' ')
                .map(|i| (merge[..i + 1].to_owned(), merge[i + 2..].to_owned()))
                .ok_or_else(|| LmError::Load(format!("bad merge `{merge}`")))
        })
        .collect()
}

/// A SentencePiece vocabulary from GGUF (`tokenizer.ggml.model = llama`): pieces, scores and
/// types as a `ModelProto`, merged by score as llama.cpp does, with byte fallback when the
/// vocabulary has `<0xNN>` pieces.
fn sentencepiece_from_gguf(
    md: &HashMap<String, gguf_file::Value>,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer, LmError> {
    let load = |e: String| LmError::Load(format!("GGUF SentencePiece vocabulary: {e}"));
    let mut scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
        Some(v) => v
            .to_vec()
            .map_err(|e| load(e.to_string()))?
            .iter()
            .map(|s| s.to_f32().or_else(|_| s.to_i32().map(|i| i as f32)))
            .collect::<Result<_, _>>()
            .map_err(|e| load(format!("tokenizer.ggml.scores: {e}")))?,
        None => Vec::new(),
    };
    scores.resize(tokens.len(), 0.0);
    let unk_id = md
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .map(|id| id as i32);
    let add_space_prefix = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    if md
        .get("tokenizer.ggml.remove_extra_whitespaces")
        .and_then(|v| v.to_bool().ok())
        == Some(true)
    {
        tracing::warn!("GGUF asks to remove extra whitespace: zhiku keeps the text as it is");
    }
    let byte_fallback = types.contains(&sentencepiece::piece_type::BYTE);
    let proto = ModelProto {
        pieces: tokens
            .iter()
            .zip(&scores)
            .zip(types)
            .map(|((piece, score), kind)| SentencePiece {
                piece: Some(piece.clone()),
                score: Some(*score),
                r#type: Some(*kind),
            })
            .collect(),
        trainer_spec: Some(TrainerSpec {
            // llama.cpp encodes every SentencePiece vocabulary by merging the best-scored
            // pair of pieces: SentencePiece's BPE.
            model_type: Some(2),
            byte_fallback: Some(byte_fallback),
            unk_id,
        }),
        normalizer_spec: Some(NormalizerSpec {
            add_dummy_prefix: Some(add_space_prefix),
        }),
    };
    sentencepiece::tokenizer_from_proto(&proto, &[]).map_err(load)
}
