//! Tiny GGUF files of the families zhiku's decoder serves (`llama`, `qwen2`, `glm4`), with
//! the metadata keys and tensor names of real files and seeded weights, so the GGUF loader,
//! zhiku's decoder and candle's reference networks all read them as they read real ones.

use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use zhiku_lm::tiny::{GgufSizes, write_gguf_with};

use super::{GLM4_SPECIALS, Seeded};

pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 16;
pub const INTERMEDIATE: usize = 128;
pub const LAYERS: usize = 2;
pub const CONTEXT: usize = 256;

/// A byte-level BPE vocabulary: every byte, a few merges, then GLM-4's special tokens.
pub fn vocabulary() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = {
        let mut bytes: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        bytes.sort();
        bytes.into_iter().map(String::from).collect()
    };
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![1; tokens.len()];
    for s in GLM4_SPECIALS {
        tokens.push((*s).to_owned());
        types.push(3);
    }
    (
        tokens,
        merges.iter().map(|m| (*m).to_owned()).collect(),
        types,
    )
}

/// The weight matrices of a tiny model of `arch`, by GGUF name, as f32 [out, in] (norms and
/// biases 1-D), in file order. Seeded: the same seed gives the same model.
pub fn tiny_weights(arch: &str, seed: u64) -> Vec<(String, candle_core::Tensor)> {
    let (tokens, _, _) = vocabulary();
    let vocab = tokens.len();
    let mut rng = Seeded(seed);
    let mut out = Vec::new();
    let mut add = |name: String, shape: &[usize], kind: &str, rng: &mut Seeded| {
        let t = match kind {
            "norm" => rng.tensor(shape, 0.1, 1.0),
            "bias" => rng.tensor(shape, 0.02, 0.0),
            _ => rng.tensor(shape, 0.3, 0.0),
        };
        out.push((name, t));
    };
    let glm = arch == "glm4";
    add("token_embd.weight".into(), &[vocab, HIDDEN], "w", &mut rng);
    for i in 0..LAYERS {
        let p = format!("blk.{i}");
        let mut norms = vec!["attn_norm", "ffn_norm"];
        if glm {
            norms.extend(["post_ffw_norm", "post_attention_norm"]);
        }
        for norm in norms {
            add(format!("{p}.{norm}.weight"), &[HIDDEN], "norm", &mut rng);
        }
        for (proj, width) in [
            ("attn_q", HEADS * HEAD_DIM),
            ("attn_k", KV_HEADS * HEAD_DIM),
            ("attn_v", KV_HEADS * HEAD_DIM),
        ] {
            add(
                format!("{p}.{proj}.weight"),
                &[width, HIDDEN],
                "w",
                &mut rng,
            );
            if arch != "llama" {
                add(format!("{p}.{proj}.bias"), &[width], "bias", &mut rng);
            }
        }
        add(
            format!("{p}.attn_output.weight"),
            &[HIDDEN, HEADS * HEAD_DIM],
            "w",
            &mut rng,
        );
        if glm {
            add(
                format!("{p}.ffn_up.weight"),
                &[2 * INTERMEDIATE, HIDDEN],
                "w",
                &mut rng,
            );
        } else {
            add(
                format!("{p}.ffn_gate.weight"),
                &[INTERMEDIATE, HIDDEN],
                "w",
                &mut rng,
            );
            add(
                format!("{p}.ffn_up.weight"),
                &[INTERMEDIATE, HIDDEN],
                "w",
                &mut rng,
            );
        }
        add(
            format!("{p}.ffn_down.weight"),
            &[HIDDEN, INTERMEDIATE],
            "w",
            &mut rng,
        );
    }
    add("output_norm.weight".into(), &[HIDDEN], "norm", &mut rng);
    add("output.weight".into(), &[vocab, HIDDEN], "w", &mut rng);
    out
}

/// Writes `weights` (see [`tiny_weights`]) as a GGUF file of `arch`: matrices in `dtype`,
/// norms and biases in F32, the metadata and tokenizer candle's reference networks need.
pub fn write_tiny_gguf(
    path: &Path,
    arch: &str,
    weights: &[(String, candle_core::Tensor)],
    dtype: GgmlDType,
) {
    let (tokens, merges, types) = vocabulary();
    let vocab = tokens.len();
    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    let mut extra: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(arch.into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        ("tokenizer.ggml.merges".into(), strings(&merges)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32((vocab - GLM4_SPECIALS.len()) as u32),
        ),
    ];
    if arch == "llama" {
        extra.push((
            "llama.feed_forward_length".into(),
            Value::U32(INTERMEDIATE as u32),
        ));
    }
    let sizes = GgufSizes {
        hidden: HIDDEN,
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        layers: LAYERS,
        context: CONTEXT,
    };
    write_gguf_with(path, arch, &sizes, weights, dtype, extra).expect("write the tiny GGUF");
}
