//! Checkpoints of a real model's shape with seeded random weights, for benchmarks that need a
//! model's size and layout but not its answers (a GPU's decode speed against its memory
//! bandwidth): ChatGLM-format safetensors with GLM-4-9B-chat's tensor names and config.json,
//! a word-level `tokenizer.json`, and PEFT LoRA adapters. Weights are bf16, generated on
//! every core and streamed to disk, so that a 19 GB checkpoint never sits in memory; the same
//! seed gives the same bytes whatever the thread count.

use std::io::Write;
use std::path::Path;

use crate::error::LmError;
use crate::seeded::SplitMix64;

/// The sizes of a ChatGLM2/3 / GLM-4-9B-chat checkpoint (`model_type` "chatglm": fused
/// query_key_value with bias, multi-query groups, SwiGLU in dense_h_to_4h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatGlmShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub vocab: usize,
    pub context: usize,
}

/// One tensor of a checkpoint: its name, shape, and the range its seeded values fill.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Values are uniform in `offset ± scale`.
    pub scale: f32,
    pub offset: f32,
}

impl ChatGlmShape {
    /// THUDM/glm-4-9b-chat's config.json.
    pub const GLM4_9B: ChatGlmShape = ChatGlmShape {
        hidden: 4096,
        heads: 32,
        kv_heads: 2,
        head_dim: 128,
        intermediate: 13696,
        layers: 40,
        vocab: 151_552,
        context: 131_072,
    };

    /// The sizes of the tests' tiny checkpoints (`crate::tiny` takes its sizes from here),
    /// with room for a 4096-token prompt (the rotary table is the one thing the context
    /// sizes).
    pub const TINY: ChatGlmShape = ChatGlmShape {
        hidden: 32,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        intermediate: 48,
        layers: 2,
        vocab: 48,
        context: 8192,
    };

    fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Every tensor of the checkpoint, in file order (layer by layer, then the final norm,
    /// the head and the embedding), as (name, shape).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, q) = (self.hidden, self.heads * self.head_dim);
        let e = "transformer.encoder";
        let mut t = Vec::new();
        for i in 0..self.layers {
            let p = format!("{e}.layers.{i}");
            let qkv = format!("{p}.self_attention.query_key_value");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{qkv}.weight"), vec![self.qkv_width(), h]));
            t.push((format!("{qkv}.bias"), vec![self.qkv_width()]));
            t.push((format!("{p}.self_attention.dense.weight"), vec![h, q]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            t.push((
                format!("{p}.mlp.dense_h_to_4h.weight"),
                vec![2 * self.intermediate, h],
            ));
            t.push((
                format!("{p}.mlp.dense_4h_to_h.weight"),
                vec![h, self.intermediate],
            ));
        }
        t.push((format!("{e}.final_layernorm.weight"), vec![h]));
        t.push((
            "transformer.output_layer.weight".into(),
            vec![self.vocab, h],
        ));
        t.push((
            "transformer.embedding.word_embeddings.weight".into(),
            vec![self.vocab, h],
        ));
        t
    }

    /// The checkpoint's tensors with the ranges of their values: norms near 1, biases near 0,
    /// matrices with unit-variance outputs for unit-variance inputs (so that 40 random
    /// layers neither vanish nor overflow in bf16).
    pub fn tensor_specs(&self) -> Vec<TensorSpec> {
        self.tensors()
            .into_iter()
            .map(|(name, shape)| {
                let (scale, offset) = match shape.as_slice() {
                    [_] if name.contains("norm") => (0.1, 1.0),
                    [_] => (0.02, 0.0),
                    [_, inp] => ((3.0 / *inp as f32).sqrt(), 0.0),
                    _ => (0.02, 0.0),
                };
                TensorSpec {
                    name,
                    shape,
                    scale,
                    offset,
                }
            })
            .collect()
    }

    /// Parameters of every tensor.
    pub fn parameters(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    }

    /// Parameters a decode step reads: all but the embedding table, of which a step reads
    /// only its tokens' rows.
    pub fn parameters_read_per_step(&self) -> u64 {
        self.parameters() - (self.vocab * self.hidden) as u64
    }

    /// GLM-4-9B-chat's config.json with these sizes (`_name_or_path` tells the loader the
    /// family; the end-of-turn ids are GLM-4's, or the last ids of a smaller vocabulary).
    pub fn config(&self) -> serde_json::Value {
        let eos: Vec<usize> = if self.vocab == Self::GLM4_9B.vocab {
            vec![151_329, 151_336, 151_338]
        } else {
            vec![self.vocab - 1]
        };
        serde_json::json!({
            "model_type": "chatglm",
            "_name_or_path": "THUDM/glm-4-9b-chat",
            "architectures": ["ChatGLMModel"],
            "add_bias_linear": false,
            "add_qkv_bias": true,
            "ffn_hidden_size": self.intermediate,
            "hidden_size": self.hidden,
            "kv_channels": self.head_dim,
            "layernorm_epsilon": 1.5625e-07,
            "multi_query_attention": true,
            "multi_query_group_num": self.kv_heads,
            "num_attention_heads": self.heads,
            "num_layers": self.layers,
            "num_hidden_layers": self.layers,
            "padded_vocab_size": self.vocab,
            "post_layer_norm": true,
            "rmsnorm": true,
            "rope_ratio": 500,
            "seq_length": self.context,
            "torch_dtype": "bfloat16",
            "eos_token_id": eos,
            "pad_token_id": eos[0]
        })
    }

    /// The Linear layers a LoRA adapter targets, as (module path, in, out).
    pub fn lora_modules(&self) -> Vec<(String, usize, usize)> {
        let (h, q) = (self.hidden, self.heads * self.head_dim);
        (0..self.layers)
            .flat_map(|i| {
                let p = format!("transformer.encoder.layers.{i}");
                [
                    (
                        format!("{p}.self_attention.query_key_value"),
                        h,
                        self.qkv_width(),
                    ),
                    (format!("{p}.self_attention.dense"), q, h),
                    (format!("{p}.mlp.dense_h_to_4h"), h, 2 * self.intermediate),
                    (format!("{p}.mlp.dense_4h_to_h"), self.intermediate, h),
                ]
            })
            .collect()
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> LmError + '_ {
    move |e| LmError::Load(format!("{}: {e}", path.display()))
}

/// Elements per seeded block: each block has its own generator, so blocks fill in parallel
/// and the bytes do not depend on how many threads fill them.
const BLOCK: usize = 1 << 20;
/// Blocks generated per write.
const BLOCKS_PER_WRITE: usize = 16;

/// Fills `out` (little-endian bf16) with block `first_block`, `first_block + 1`, … of tensor
/// `index`.
fn fill_blocks(out: &mut [u8], seed: u64, index: usize, first_block: usize, spec: &TensorSpec) {
    for (k, block) in out.chunks_mut(2 * BLOCK).enumerate() {
        let mut rng = SplitMix64(
            seed ^ ((index as u64) << 40) ^ ((first_block + k) as u64).wrapping_mul(0x9E37_79B9),
        );
        for four in block.chunks_mut(8) {
            let bits = rng.next_u64();
            for (j, v) in four.chunks_mut(2).enumerate() {
                let r = (bits >> (16 * j)) as u16;
                let x = spec.offset + spec.scale * (r as f32 / 32768.0 - 1.0);
                v.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes());
            }
        }
    }
}

/// Writes `specs` as one bf16 safetensors file, values seeded by `seed`, on `threads`
/// threads. Returns the bytes of tensor data.
pub fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    seed: u64,
    threads: usize,
) -> Result<u64, LmError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for s in specs {
        let bytes = 2 * s.shape.iter().product::<usize>() as u64;
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": s.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    // The data starts 8-byte aligned, as safetensors' own writer pads it.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(io_error(path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .map_err(io_error(path))?;
    let threads = threads.max(1);
    let mut buf = vec![0u8; 2 * BLOCK * BLOCKS_PER_WRITE];
    for (index, spec) in specs.iter().enumerate() {
        let n: usize = spec.shape.iter().product();
        let mut done = 0;
        while done < n {
            let len = (n - done).min(BLOCK * BLOCKS_PER_WRITE);
            let chunk = &mut buf[..2 * len];
            let first_block = done / BLOCK;
            // Whole blocks per thread, so each block has one generator.
            let per_thread = len.div_ceil(BLOCK).div_ceil(threads) * BLOCK;
            std::thread::scope(|scope| {
                for (t, part) in chunk.chunks_mut(2 * per_thread).enumerate() {
                    let first = first_block + t * per_thread / BLOCK;
                    scope.spawn(move || fill_blocks(part, seed, index, first, spec));
                }
            });
            out.write_all(chunk).map_err(io_error(path))?;
            done += len;
        }
    }
    out.flush().map_err(io_error(path))?;
    Ok(offset)
}

/// A word-level `tokenizer.json`: `specials` (ids 0, 1, …, special tokens), then `w0`, `w1`,
/// … up to `vocab` tokens, split on whitespace and punctuation.
pub fn word_level_tokenizer(specials: &[&str], vocab: usize) -> serde_json::Value {
    let words = (0..vocab.saturating_sub(specials.len())).map(|i| format!("w{i}"));
    let ids: serde_json::Map<String, serde_json::Value> = specials
        .iter()
        .map(|s| s.to_string())
        .chain(words)
        .enumerate()
        .map(|(id, token)| (token, id.into()))
        .collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, content)| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": ids, "unk_token": specials.first().copied().unwrap_or("<unk>")}
    })
}

/// Writes a checkpoint of `shape` under `dir` that [`crate::load_model`] reads as
/// GLM-4-9B-chat: config.json, model.safetensors (bf16, seeded by `seed`) and a word-level
/// tokenizer.json. Returns the bytes of the weights.
pub fn write_checkpoint(
    dir: &Path,
    shape: &ChatGlmShape,
    seed: u64,
    threads: usize,
) -> Result<u64, LmError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let config = dir.join("config.json");
    std::fs::write(&config, shape.config().to_string()).map_err(io_error(&config))?;
    let tokenizer = dir.join("tokenizer.json");
    let specials = ["<unk>"];
    std::fs::write(
        &tokenizer,
        word_level_tokenizer(&specials, shape.vocab).to_string(),
    )
    .map_err(io_error(&tokenizer))?;
    write_safetensors(
        &dir.join("model.safetensors"),
        &shape.tensor_specs(),
        seed,
        threads,
    )
}

/// Writes a PEFT LoRA adapter of rank `rank` on every Linear layer of `shape` under `dir`
/// (adapter_config.json + adapter_model.safetensors, PEFT's names), seeded by `seed`. B is
/// random too, not LoRA's zero initialisation, so the adapter changes the outputs.
pub fn write_adapter(
    dir: &Path,
    shape: &ChatGlmShape,
    rank: usize,
    seed: u64,
) -> Result<(), LmError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let modules = shape.lora_modules();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "base_model_name_or_path": "THUDM/glm-4-9b-chat",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "task_type": "CAUSAL_LM",
        "target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    });
    let path = dir.join("adapter_config.json");
    std::fs::write(&path, config.to_string()).map_err(io_error(&path))?;
    let specs: Vec<TensorSpec> = modules
        .iter()
        .flat_map(|(module, inp, out)| {
            let p = format!("base_model.model.{module}");
            [
                TensorSpec {
                    name: format!("{p}.lora_A.weight"),
                    shape: vec![rank, *inp],
                    scale: (3.0 / *inp as f32).sqrt(),
                    offset: 0.0,
                },
                TensorSpec {
                    name: format!("{p}.lora_B.weight"),
                    shape: vec![*out, rank],
                    scale: 0.01,
                    offset: 0.0,
                },
            ]
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    write_safetensors(
        &dir.join("adapter_model.safetensors"),
        &specs,
        seed,
        threads,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glm4_9b_has_nine_billion_parameters() {
        let p = ChatGlmShape::GLM4_9B.parameters();
        assert!((9_300_000_000..9_500_000_000).contains(&p), "{p}");
    }

    #[test]
    fn the_bytes_do_not_depend_on_the_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let specs = vec![TensorSpec {
            name: "w".into(),
            shape: vec![3, BLOCK + 5],
            scale: 0.5,
            offset: 0.0,
        }];
        let (one, many) = (dir.path().join("1"), dir.path().join("7"));
        write_safetensors(&one, &specs, 3, 1).unwrap();
        write_safetensors(&many, &specs, 3, 7).unwrap();
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&many).unwrap());
        let t = candle_core::safetensors::load(&one, &candle_core::Device::Cpu).unwrap();
        let w = t["w"].to_dtype(candle_core::DType::F32).unwrap();
        assert_eq!(w.dims(), &[3, BLOCK + 5]);
        let max = w
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max > 0.4 && max <= 0.5, "{max}");
    }
}
