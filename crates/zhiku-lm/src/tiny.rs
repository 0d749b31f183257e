//! Tiny checkpoints of every family the decoder serves, written with seeded weights in each
//! family's real file format (GGUF metadata and tensor names, safetensors with a real
//! config.json): the fixtures of tests that load a model the way a user's file loads, here
//! and in the crates built on this one (the trainer's gradient checks).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};

use crate::ComputePath;
use crate::chatglm6b::ChatGlm6bConfig;
use crate::decoder::Decoder;
use crate::error::LmError;
use crate::families::{
    GgufTensors, SafetensorsWeights, chatglm_decoder, chatglm6b_decoder, gguf_decoder,
    glm4_0414_decoder,
};
use crate::seeded::SplitMix64;

use crate::synthetic::ChatGlmShape;

pub const HIDDEN: usize = ChatGlmShape::TINY.hidden;
pub const HEADS: usize = ChatGlmShape::TINY.heads;
pub const KV_HEADS: usize = ChatGlmShape::TINY.kv_heads;
pub const HEAD_DIM: usize = ChatGlmShape::TINY.head_dim;
pub const INTERMEDIATE: usize = ChatGlmShape::TINY.intermediate;
pub const LAYERS: usize = ChatGlmShape::TINY.layers;
pub const VOCAB: usize = ChatGlmShape::TINY.vocab;
pub const CONTEXT: usize = 64;

/// A family of the decoder, in the file format it loads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyFamily {
    /// GGUF `llama` (q/k rows permuted as llama.cpp stores them).
    Llama,
    /// GGUF `qwen2` (q/k/v biases).
    Qwen2,
    /// GGUF `glm4` (fused gate/up, post-attention and post-MLP norms).
    Glm4Gguf,
    /// ChatGLM2/3 safetensors (fused query_key_value with bias, multi-query groups).
    ChatGlm,
    /// GLM-4-0414 safetensors (partial rotary, extra norms).
    Glm4_0414,
    /// ChatGLM-6B safetensors (2-D positions, a bidirectional prompt, DeepNorm, GELU). Not
    /// in [`TinyFamily::ALL`]: its prompts need their bidirectional part, which the tests
    /// of every family do not give.
    ChatGlm6b,
}

impl TinyFamily {
    pub const ALL: [TinyFamily; 5] = [
        TinyFamily::Llama,
        TinyFamily::Qwen2,
        TinyFamily::Glm4Gguf,
        TinyFamily::ChatGlm,
        TinyFamily::Glm4_0414,
    ];

    fn gguf_arch(self) -> Option<&'static str> {
        match self {
            TinyFamily::Llama => Some("llama"),
            TinyFamily::Qwen2 => Some("qwen2"),
            TinyFamily::Glm4Gguf => Some("glm4"),
            TinyFamily::ChatGlm | TinyFamily::Glm4_0414 | TinyFamily::ChatGlm6b => None,
        }
    }
}

/// Seeded weights: the same seed gives the same model on every machine.
struct Seeded(SplitMix64);

impl Seeded {
    fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> candle_core::Result<Tensor> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| offset + scale * (self.0.uniform() as f32 * 2.0 - 1.0))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// Appends a weight named `name`: norms near 1, biases and matrices near 0.
    fn weight(
        &mut self,
        out: &mut Vec<(String, Tensor)>,
        name: String,
        shape: &[usize],
    ) -> Result<(), LmError> {
        let (scale, offset) = match shape.len() {
            1 if name.contains("norm") => (0.1, 1.0),
            1 => (0.05, 0.0),
            _ => (0.3, 0.0),
        };
        out.push((name, self.tensor(shape, scale, offset)?));
        Ok(())
    }
}

/// Writes a tiny checkpoint of `family` under `dir`; returns what [`load`] takes (the GGUF
/// file, or the directory of config.json and model.safetensors).
pub fn write(family: TinyFamily, dir: &Path, seed: u64) -> Result<PathBuf, LmError> {
    let mut rng = Seeded(SplitMix64(seed));
    let mut t = Vec::<(String, Tensor)>::new();
    let mut add = |name: String, shape: &[usize], rng: &mut Seeded| rng.weight(&mut t, name, shape);
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    if let Some(arch) = family.gguf_arch() {
        let t = gguf_weights(arch, VOCAB, &mut rng)?;
        let path = dir.join(format!("tiny-{arch}.gguf"));
        write_gguf(&path, arch, &t)?;
        return Ok(path);
    }
    let config = if family == TinyFamily::ChatGlm6b {
        chatglm6b_weights(&mut |name, shape| add(name, shape, &mut rng))?;
        chatglm6b_config()
    } else if family == TinyFamily::ChatGlm {
        for (name, shape) in ChatGlmShape::TINY.tensors() {
            add(name, &shape, &mut rng)?;
        }
        serde_json::json!({
            "model_type": "chatglm",
            "_name_or_path": "THUDM/chatglm3-6b",
            "add_qkv_bias": true,
            "ffn_hidden_size": INTERMEDIATE,
            "hidden_size": HIDDEN,
            "kv_channels": HEAD_DIM,
            "layernorm_epsilon": 1e-5,
            "multi_query_attention": true,
            "multi_query_group_num": KV_HEADS,
            "num_attention_heads": HEADS,
            "num_layers": LAYERS,
            "padded_vocab_size": VOCAB,
            "post_layer_norm": true,
            "rmsnorm": true,
            "seq_length": CONTEXT,
            "torch_dtype": "float32"
        })
    } else {
        for i in 0..LAYERS {
            let p = format!("model.layers.{i}");
            for n in [
                "input_layernorm",
                "post_self_attn_layernorm",
                "post_attention_layernorm",
                "post_mlp_layernorm",
            ] {
                add(format!("{p}.{n}.weight"), &[HIDDEN], &mut rng)?;
            }
            for (proj, width) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                add(
                    format!("{p}.self_attn.{proj}.weight"),
                    &[width, HIDDEN],
                    &mut rng,
                )?;
                add(format!("{p}.self_attn.{proj}.bias"), &[width], &mut rng)?;
            }
            add(
                format!("{p}.self_attn.o_proj.weight"),
                &[HIDDEN, q],
                &mut rng,
            )?;
            add(
                format!("{p}.mlp.gate_up_proj.weight"),
                &[2 * INTERMEDIATE, HIDDEN],
                &mut rng,
            )?;
            add(
                format!("{p}.mlp.down_proj.weight"),
                &[HIDDEN, INTERMEDIATE],
                &mut rng,
            )?;
        }
        add("model.norm.weight".into(), &[HIDDEN], &mut rng)?;
        add(
            "model.embed_tokens.weight".into(),
            &[VOCAB, HIDDEN],
            &mut rng,
        )?;
        add("lm_head.weight".into(), &[VOCAB, HIDDEN], &mut rng)?;
        serde_json::json!({
            "model_type": "glm4",
            "attention_bias": true,
            "head_dim": HEAD_DIM,
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "max_position_embeddings": CONTEXT,
            "num_attention_heads": HEADS,
            "num_hidden_layers": LAYERS,
            "num_key_value_heads": KV_HEADS,
            "partial_rotary_factor": 0.5,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "torch_dtype": "float32",
            "vocab_size": VOCAB
        })
    };
    let io = |e: std::io::Error| LmError::Load(format!("{}: {e}", dir.display()));
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(io)?;
    let map: HashMap<String, Tensor> = t.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
    Ok(dir.to_path_buf())
}

/// The tiny ChatGLM-6B's `config.json`: `[MASK]` 1, `[gMASK]` 2, `<sop>` 3, `<eop>` 4.
fn chatglm6b_config() -> serde_json::Value {
    serde_json::json!({
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_layers": LAYERS,
        "num_attention_heads": HEADS,
        "inner_hidden_size": INTERMEDIATE,
        "layernorm_epsilon": 1e-5,
        "max_sequence_length": CONTEXT,
        "position_encoding_2d": true,
        "bos_token_id": 3,
        "eos_token_id": 4,
        "mask_token_id": 1,
        "gmask_token_id": 2,
        "pad_token_id": 0
    })
}

/// Adds a weight of the given name and shape.
type AddWeight<'a> = dyn FnMut(String, &[usize]) -> Result<(), LmError> + 'a;

/// ChatGLM-6B's tensors, as its checkpoints name them (LayerNorms with biases, every linear
/// layer but the head with a bias, query_key_value giving each head's [q | k | v] in turn).
fn chatglm6b_weights(add: &mut AddWeight<'_>) -> Result<(), LmError> {
    let layer_norm = |add: &mut AddWeight<'_>, name: &str| {
        add(format!("{name}.weight"), &[HIDDEN])?;
        add(format!("{name}.bias"), &[HIDDEN])
    };
    let linear = |add: &mut AddWeight<'_>, name: &str, (out, inp): (usize, usize)| {
        add(format!("{name}.weight"), &[out, inp])?;
        add(format!("{name}.bias"), &[out])
    };
    let t = "transformer";
    add(format!("{t}.word_embeddings.weight"), &[VOCAB, HIDDEN])?;
    for i in 0..LAYERS {
        let p = format!("{t}.layers.{i}");
        layer_norm(add, &format!("{p}.input_layernorm"))?;
        let qkv = format!("{p}.attention.query_key_value");
        linear(add, &qkv, (3 * HIDDEN, HIDDEN))?;
        linear(add, &format!("{p}.attention.dense"), (HIDDEN, HIDDEN))?;
        layer_norm(add, &format!("{p}.post_attention_layernorm"))?;
        linear(
            add,
            &format!("{p}.mlp.dense_h_to_4h"),
            (INTERMEDIATE, HIDDEN),
        )?;
        linear(
            add,
            &format!("{p}.mlp.dense_4h_to_h"),
            (HIDDEN, INTERMEDIATE),
        )?;
    }
    layer_norm(add, &format!("{t}.final_layernorm"))?;
    add("lm_head.weight".into(), &[VOCAB, HIDDEN])
}

/// ChatGLM-6B's special tokens (ids 0..5, as [`chatglm6b_config`] names them).
const CHATGLM6B_SPECIALS: [&str; 5] = ["<unk>", "[MASK]", "[gMASK]", "<sop>", "<eop>"];

/// Writes a tiny ChatGLM-6B that [`crate::load_model`] reads as a whole chat model from
/// `dir`: [`write`]'s checkpoint and a word-level `tokenizer.json` (its special tokens, then
/// `w0`, `w1`, … up to the vocabulary's size, split on whitespace and punctuation). The
/// fixture of tests that train ChatGLM-6B through the loaders.
pub fn write_chatglm6b_model(dir: &Path, seed: u64) -> Result<PathBuf, LmError> {
    write(TinyFamily::ChatGlm6b, dir, seed)?;
    let tokenizer = crate::synthetic::word_level_tokenizer(&CHATGLM6B_SPECIALS, VOCAB);
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string())
        .map_err(|e| LmError::Load(format!("{}: {e}", dir.display())))?;
    Ok(dir.to_path_buf())
}

/// The sizes a GGUF file's metadata declares.
#[derive(Debug, Clone, Copy)]
pub struct GgufSizes {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub context: usize,
}

/// The sizes of this module's checkpoints.
pub const TINY_SIZES: GgufSizes = GgufSizes {
    hidden: HIDDEN,
    heads: HEADS,
    kv_heads: KV_HEADS,
    head_dim: HEAD_DIM,
    layers: LAYERS,
    context: CONTEXT,
};

/// ChatML's special tokens, after the bytes in [`write_chat_model`]'s vocabulary.
const CHATML_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Writes a tiny Qwen2 GGUF that [`crate::load_model`] reads as a whole chat model, as a
/// user's file reads: a byte-level BPE vocabulary (every byte, a few merges, ChatML's special
/// tokens, `<|im_end|>` the end of a turn) and ChatML, the family's template. The fixture of
/// tests that train or serve through the loaders (the Tuner service's) without a real model.
/// Returns the file's path (alone in `dir`).
pub fn write_chat_model(dir: &Path, seed: u64) -> Result<PathBuf, LmError> {
    use gguf_file::Value;
    let mut tokens: Vec<String> = {
        let mut bytes: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .collect();
        bytes.sort_unstable();
        bytes.into_iter().map(String::from).collect()
    };
    let merges = ["Ġ t", "h e", "Ġt he", "i s", "Ġ a"];
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![1i32; tokens.len()];
    for special in CHATML_SPECIALS {
        tokens.push(special.to_owned());
        types.push(3);
    }
    let vocab = tokens.len();
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let extra = vec![
        (
            "tokenizer.ggml.model".to_owned(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_owned(),
            Value::String("qwen2".into()),
        ),
        ("tokenizer.ggml.tokens".to_owned(), strings(tokens)),
        (
            "tokenizer.ggml.merges".to_owned(),
            strings(merges.iter().map(|m| (*m).to_owned()).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_owned(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.eos_token_id".to_owned(),
            Value::U32((vocab - 1) as u32),
        ),
    ];
    let weights = gguf_weights("qwen2", vocab, &mut Seeded(SplitMix64(seed)))?;
    let path = dir.join("tiny-chat-qwen2.gguf");
    write_gguf_with(&path, "qwen2", &TINY_SIZES, &weights, GgmlDType::F32, extra)?;
    Ok(path)
}

/// The weights of a tiny GGUF checkpoint of `arch` with a vocabulary of `vocab` tokens, by
/// GGUF name, in file order.
fn gguf_weights(
    arch: &str,
    vocab: usize,
    rng: &mut Seeded,
) -> Result<Vec<(String, Tensor)>, LmError> {
    let mut t = Vec::<(String, Tensor)>::new();
    let mut add = |name: String, shape: &[usize], rng: &mut Seeded| rng.weight(&mut t, name, shape);
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let glm = arch == "glm4";
    add("token_embd.weight".into(), &[vocab, HIDDEN], rng)?;
    for i in 0..LAYERS {
        let p = format!("blk.{i}");
        let mut norms = vec!["attn_norm", "ffn_norm"];
        if glm {
            norms.extend(["post_attention_norm", "post_ffw_norm"]);
        }
        for n in norms {
            add(format!("{p}.{n}.weight"), &[HIDDEN], rng)?;
        }
        for (proj, width) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
            add(format!("{p}.{proj}.weight"), &[width, HIDDEN], rng)?;
            if arch != "llama" {
                add(format!("{p}.{proj}.bias"), &[width], rng)?;
            }
        }
        add(format!("{p}.attn_output.weight"), &[HIDDEN, q], rng)?;
        if glm {
            add(
                format!("{p}.ffn_up.weight"),
                &[2 * INTERMEDIATE, HIDDEN],
                rng,
            )?;
        } else {
            add(format!("{p}.ffn_gate.weight"), &[INTERMEDIATE, HIDDEN], rng)?;
            add(format!("{p}.ffn_up.weight"), &[INTERMEDIATE, HIDDEN], rng)?;
        }
        add(format!("{p}.ffn_down.weight"), &[HIDDEN, INTERMEDIATE], rng)?;
    }
    add("output_norm.weight".into(), &[HIDDEN], rng)?;
    add("output.weight".into(), &[vocab, HIDDEN], rng)?;
    Ok(t)
}

/// Writes `weights` (GGUF names, f32 [out, in] as checkpoints hold them) as a GGUF file of
/// `arch` with the sizes of this module.
pub fn write_gguf(path: &Path, arch: &str, weights: &[(String, Tensor)]) -> Result<(), LmError> {
    write_gguf_with(path, arch, &TINY_SIZES, weights, GgmlDType::F32, Vec::new())
}

/// Writes `weights` as a GGUF file of `arch` declaring `sizes`: matrices stored as
/// `matrix_dtype`, norms and biases (1-D) as F32, and `extra` metadata (a tokenizer, say)
/// after the architecture's keys.
pub fn write_gguf_with(
    path: &Path,
    arch: &str,
    sizes: &GgufSizes,
    weights: &[(String, Tensor)],
    matrix_dtype: GgmlDType,
    extra: Vec<(String, gguf_file::Value)>,
) -> Result<(), LmError> {
    use gguf_file::Value;
    let tensors = weights
        .iter()
        .map(|(name, t)| {
            let dtype = if t.rank() == 1 {
                GgmlDType::F32
            } else {
                matrix_dtype
            };
            Ok((name.as_str(), QTensor::quantize(t, dtype)?))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let key = |k: &str| format!("{arch}.{k}");
    let u32_of = |n: usize| Value::U32(n as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (key("attention.head_count"), u32_of(sizes.heads)),
        (key("attention.head_count_kv"), u32_of(sizes.kv_heads)),
        (key("attention.key_length"), u32_of(sizes.head_dim)),
        (key("block_count"), u32_of(sizes.layers)),
        (key("embedding_length"), u32_of(sizes.hidden)),
        (key("context_length"), u32_of(sizes.context)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        (key("rope.dimension_count"), u32_of(sizes.head_dim)),
    ];
    metadata.extend(extra);
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = std::fs::File::create(path)
        .map_err(|e| LmError::Load(format!("{}: {e}", path.display())))?;
    gguf_file::write(&mut file, &metadata, &tensors)?;
    Ok(())
}

/// Loads what [`write`] wrote, as the serving loaders do, on `compute`.
pub fn load(family: TinyFamily, path: &Path, compute: ComputePath) -> Result<Decoder, LmError> {
    let device = Device::Cpu;
    if let Some(arch) = family.gguf_arch() {
        let mut gg = GgufTensors::open(path, &device, compute)?;
        return gguf_decoder(&mut gg, arch);
    }
    let config = std::fs::read_to_string(path.join("config.json"))
        .map_err(|e| LmError::Load(format!("{}: {e}", path.display())))?;
    let files = [path.join("model.safetensors")];
    let mut w = SafetensorsWeights::open(&files, &device, DType::F32, &[])?;
    let decoder = match family {
        TinyFamily::ChatGlm => chatglm_decoder(&config, &mut w)?,
        TinyFamily::ChatGlm6b => {
            let c: ChatGlm6bConfig = serde_json::from_str(&config)
                .map_err(|e| LmError::Load(format!("config.json: {e}")))?;
            chatglm6b_decoder(&c, &mut w)?
        }
        _ => glm4_0414_decoder(&config, &mut w)?,
    };
    Ok(decoder.with_compute(compute))
}
