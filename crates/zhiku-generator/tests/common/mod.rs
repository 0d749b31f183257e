//! Helpers shared by the tests that write tiny checkpoints: seeded weights (our own
//! xorshift, so the same seed gives the same model on every machine), a word-level
//! tokenizer.json, and generation through the engine exactly as the gRPC handlers drive it.

#![allow(dead_code)]

pub mod tiny_gguf;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use prost::Message as _;
use serde_json::json;
use tokio::sync::mpsc;
use zhiku_generator::GeneratorState;
use zhiku_generator::engine::{Completion, Event, Job};
use zhiku_generator::sampling::SamplingConfig;
use zhiku_lm::template::{Message, Role};
use zhiku_lm::tokenizer::sentencepiece::{
    ModelProto, NormalizerSpec, SentencePiece, TrainerSpec, piece_type,
};

/// The tiny vocabulary's words (after each family's special tokens).
pub const WORDS: &[&str] = &[
    "小拾",
    "喜欢",
    "玩手机",
    "打游戏",
    "看电影",
    "知识",
    "库",
    "问",
    "答",
    "模型",
    "的",
    "是",
    "我",
    "你",
    "他",
    "好",
    "天气",
    "今天",
    "明天",
    "学习",
    "工作",
    "吃饭",
    "睡觉",
    "跑步",
    "读书",
    "写字",
    "唱歌",
    "跳舞",
    "画画",
    "旅行",
    "音乐",
    "电影",
    "游戏",
    "手机",
    "电脑",
];

/// GLM-4's special tokens, in the order of its vocabulary (after the words in the real one).
pub const GLM4_SPECIALS: &[&str] = &[
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

/// A deterministic stream of numbers in [-1, 1) (xorshift): the weights' seed.
pub struct Seeded(pub u64);

impl Seeded {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| offset + scale * self.next()).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }
}

/// The largest absolute difference between two tensors (logits, hidden states).
/// The largest [`max_abs_diff`] over pairs of logits.
pub fn worst(a: &[Tensor], b: &[Tensor]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Writes seeded values for every variable a model created in `varmap` (built through a
/// VarBuilder over it, so names and shapes are exactly the loader's) to `path`: norms near 1,
/// biases small, other weights uniform in ±0.3. Names are visited sorted, so a seed always
/// gives the same tensors.
pub fn write_seeded_weights(varmap: &VarMap, seed: u64, path: &Path) {
    let mut rng = Seeded(seed);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut tensors = HashMap::new();
    for name in names {
        let shape = data[name].shape().dims().to_vec();
        let t = if name.contains("norm") && name.ends_with("weight") {
            rng.tensor(&shape, 0.1, 1.0)
        } else if name.ends_with("bias") {
            rng.tensor(&shape, 0.02, 0.0)
        } else {
            rng.tensor(&shape, 0.3, 0.0)
        };
        tensors.insert(name.clone(), t);
    }
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// Writes a WordLevel tokenizer.json: `specials` (ids 0..) matched whole, then [`WORDS`],
/// split on whitespace. Returns the vocabulary size.
pub fn write_wordlevel_tokenizer(dir: &Path, specials: &[&str]) -> usize {
    let mut vocab = serde_json::Map::new();
    for (i, t) in specials.iter().chain(WORDS).enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": specials.iter().enumerate().map(|(i, t)| json!({
            "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true
        })).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": specials[0]}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    specials.len() + WORDS.len()
}

/// Writes a PEFT LoRA adapter: `modules` are (module path as in the checkpoint, in, out).
/// `b_scale` 0 is LoRA's initialisation (B = 0).
pub fn write_adapter(
    dir: &Path,
    seed: u64,
    b_scale: f32,
    targets: &[&str],
    modules: &[(String, usize, usize)],
) {
    std::fs::create_dir_all(dir).unwrap();
    let r = 4;
    std::fs::write(
        dir.join("adapter_config.json"),
        json!({"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": targets})
            .to_string(),
    )
    .unwrap();
    let mut rng = Seeded(seed);
    let mut tensors = HashMap::new();
    for (module, inp, out) in modules {
        let p = format!("base_model.model.{module}");
        tensors.insert(
            format!("{p}.lora_A.weight"),
            rng.tensor(&[r, *inp], 0.5, 0.0),
        );
        tensors.insert(
            format!("{p}.lora_B.weight"),
            rng.tensor(&[*out, r], b_scale, 0.0),
        );
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
}

/// Greedy generation from prompt ids through the engine; the engine's error as it is.
pub fn try_generate_ids(
    state: &GeneratorState,
    prompt: Vec<u32>,
    max_new_tokens: usize,
) -> Result<Completion, zhiku_generator::GeneratorError> {
    let sampling = SamplingConfig {
        max_new_tokens,
        repetition_penalty: 1.0,
        ..Default::default()
    };
    try_generate(state, prompt, sampling, None)
}

/// Generation from prompt ids with `sampling` and `adapter` through the engine.
pub fn try_generate(
    state: &GeneratorState,
    prompt: Vec<u32>,
    sampling: SamplingConfig,
    adapter: Option<&str>,
) -> Result<Completion, zhiku_generator::GeneratorError> {
    let (events, rx) = mpsc::unbounded_channel();
    state.engine.submit(Job {
        prompt,
        sampling,
        adapter: adapter.map(str::to_owned),
        deadline: None,
        events,
    })?;
    wait(rx)
}

/// The completion a submitted job's events end with.
pub fn wait(
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Result<Completion, zhiku_generator::GeneratorError> {
    loop {
        match rx.blocking_recv() {
            Some(Event::Chunk { .. }) => continue,
            Some(Event::Done(c)) => return Ok(c),
            Some(Event::Failed(e)) => return Err(e),
            None => panic!("the engine dropped the request"),
        }
    }
}

/// [`wait`]'s text, which must come.
pub fn completion(rx: mpsc::UnboundedReceiver<Event>) -> String {
    wait(rx).expect("generation succeeds").text
}

/// [`try_generate_ids`] that must succeed.
pub fn generate_ids(state: &GeneratorState, prompt: Vec<u32>, max_new_tokens: usize) -> Completion {
    try_generate_ids(state, prompt, max_new_tokens).expect("generation succeeds")
}

/// Greedy generation of an answer to `question` (rendered with the model's chat template),
/// through the engine as the gRPC handlers drive it. Call outside an async runtime.
pub fn ask(state: &GeneratorState, question: &str, max_new_tokens: usize) -> Completion {
    let text = state
        .shared
        .template
        .render(&[Message::new(Role::User, question)])
        .unwrap();
    let prompt = state.shared.tokenizer.encode(&text).unwrap();
    generate_ids(state, prompt, max_new_tokens)
}

/// A SentencePiece piece for [`sentencepiece_model`].
pub fn piece(text: &str, score: f32, kind: i32) -> SentencePiece {
    SentencePiece {
        piece: Some(text.to_owned()),
        score: Some(score),
        r#type: Some(kind),
    }
}

/// Encodes a SentencePiece `ModelProto` (as `tokenizer.model` holds it): `model_type` 1 =
/// unigram, 2 = BPE.
pub fn sentencepiece_model(
    pieces: Vec<SentencePiece>,
    model_type: i32,
    byte_fallback: bool,
) -> Vec<u8> {
    ModelProto {
        pieces,
        trainer_spec: Some(TrainerSpec {
            model_type: Some(model_type),
            byte_fallback: Some(byte_fallback),
            unk_id: Some(0),
        }),
        normalizer_spec: Some(NormalizerSpec {
            add_dummy_prefix: Some(true),
        }),
    }
    .encode_to_vec()
}

/// A BPE `tokenizer.model` like ChatGLM2/3's (byte fallback): `<unk> <s> </s>`, the 256
/// byte pieces, then "hello" / "world" and their merges in merge order, then the characters.
pub fn chatglm_style_bpe_model() -> (Vec<u8>, usize) {
    let mut pieces = vec![
        piece("<unk>", 0.0, piece_type::UNKNOWN),
        piece("<s>", 0.0, piece_type::CONTROL),
        piece("</s>", 0.0, piece_type::CONTROL),
    ];
    for b in 0..=255u8 {
        pieces.push(piece(&format!("<0x{b:02X}>"), 0.0, piece_type::BYTE));
    }
    let merged = [
        "▁h", "▁he", "ll", "▁hell", "▁hello", "▁w", "or", "▁wor", "ld", "▁world",
    ];
    let chars = ["▁", "h", "e", "l", "o", "w", "r", "d"];
    for (i, p) in merged.iter().chain(&chars).enumerate() {
        pieces.push(piece(p, -(i as f32), piece_type::NORMAL));
    }
    let n = pieces.len();
    (sentencepiece_model(pieces, 2, true), n)
}

/// A tiktoken vocabulary: the 256 single bytes (ranks 0..=255), then each of `words` built up
/// byte by byte (every prefix a token, the merge of the shorter prefix and one byte), then
/// `extra` tokens whose halves are not tokens (reachable only as a whole pre-token).
pub fn tiktoken_ranks(words: &[&str], extra: &[&str]) -> Vec<Vec<u8>> {
    let mut ranks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for word in words {
        let bytes = word.as_bytes();
        for end in 2..=bytes.len() {
            let prefix = bytes[..end].to_vec();
            if !ranks.contains(&prefix) {
                ranks.push(prefix);
            }
        }
    }
    for token in extra {
        ranks.push(token.as_bytes().to_vec());
    }
    ranks
}

/// `ranks` as a tiktoken file: `base64(token) rank` per line.
pub fn tiktoken_file(ranks: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    ranks
        .iter()
        .enumerate()
        .map(|(rank, token)| {
            format!(
                "{} {rank}\n",
                base64::engine::general_purpose::STANDARD.encode(token)
            )
        })
        .collect()
}

/// A tokenizer_config.json whose `added_tokens_decoder` gives `specials` the ids from `first`.
pub fn added_tokens_config(specials: &[&str], first: usize) -> String {
    let decoder: serde_json::Map<String, serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                (first + i).to_string(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                       "single_word": false, "special": true}),
            )
        })
        .collect();
    json!({"added_tokens_decoder": decoder, "tokenizer_class": "ChatGLM4Tokenizer"}).to_string()
}

/// Writes a GGUF that holds only `metadata` (a vocabulary, no tensors) and reads it back as
/// the loader reads a model file.
pub fn gguf_vocab(
    metadata: &[(&str, candle_core::quantized::gguf_file::Value)],
) -> candle_core::quantized::gguf_file::Content {
    use candle_core::quantized::gguf_file;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    let entries: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &entries, &[]).unwrap();
    drop(file);
    let mut file = std::fs::File::open(&path).unwrap();
    gguf_file::Content::read(&mut file).unwrap()
}

/// A GGUF string array.
pub fn gguf_strings<S: AsRef<str>>(items: &[S]) -> candle_core::quantized::gguf_file::Value {
    use candle_core::quantized::gguf_file::Value;
    Value::Array(
        items
            .iter()
            .map(|s| Value::String(s.as_ref().to_owned()))
            .collect(),
    )
}

/// A tiny byte-level BPE vocabulary as GGUF metadata (`tokenizer.ggml.model = gpt2`): the 256
/// byte characters, the tokens `merges` build, then `controls` (type 3) and `user_defined`
/// (type 4).
pub fn byte_level_gguf_vocab(
    pre: &str,
    merges: &[&str],
    controls: &[&str],
    user_defined: &[&str],
) -> Vec<(&'static str, candle_core::quantized::gguf_file::Value)> {
    use candle_core::quantized::gguf_file::Value;
    let mut bytes: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    bytes.sort();
    let mut tokens: Vec<String> = bytes.into_iter().map(String::from).collect();
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![1; tokens.len()];
    for (list, kind) in [(controls, 3), (user_defined, 4)] {
        for t in list {
            tokens.push((*t).to_owned());
            types.push(kind);
        }
    }
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", gguf_strings(&tokens)),
        ("tokenizer.ggml.merges", gguf_strings(merges)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
    ]
}
