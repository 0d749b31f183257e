//! A tiny GGUF GLM-4 the test writes (the metadata keys and tensor names candle's
//! `quantized_glm4` reads, Q8_0 matrices and F32 norms/biases, and a byte-level BPE
//! vocabulary in `tokenizer.ggml.*`), loaded through the GGUF loader like a real file.

mod common;

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use zhiku_generator::{GeneratorArgs, GeneratorState};

use common::tiny_gguf::vocabulary;
use common::{GLM4_SPECIALS, Seeded, ask};

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const INTERMEDIATE: usize = 64;
const LAYERS: usize = 2;

fn write_gguf(path: &Path, seed: u64) {
    let (tokens, merges, types) = vocabulary();
    let vocab = tokens.len();
    let mut rng = Seeded(seed);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, shape: &[usize], kind: &str, rng: &mut Seeded| {
        let (t, dtype) = match kind {
            "norm" => (rng.tensor(shape, 0.1, 1.0), GgmlDType::F32),
            "bias" => (rng.tensor(shape, 0.02, 0.0), GgmlDType::F32),
            _ => (rng.tensor(shape, 0.3, 0.0), GgmlDType::Q8_0),
        };
        tensors.push((name, QTensor::quantize(&t, dtype).unwrap()));
    };
    add("token_embd.weight".into(), &[vocab, HIDDEN], "w", &mut rng);
    for i in 0..LAYERS {
        let p = format!("blk.{i}");
        for norm in [
            "attn_norm",
            "ffn_norm",
            "post_ffw_norm",
            "post_attention_norm",
        ] {
            add(format!("{p}.{norm}.weight"), &[HIDDEN], "norm", &mut rng);
        }
        for (proj, out) in [
            ("attn_q", HEADS * HEAD_DIM),
            ("attn_k", KV_HEADS * HEAD_DIM),
            ("attn_v", KV_HEADS * HEAD_DIM),
        ] {
            add(format!("{p}.{proj}.weight"), &[out, HIDDEN], "w", &mut rng);
            add(format!("{p}.{proj}.bias"), &[out], "bias", &mut rng);
        }
        add(
            format!("{p}.attn_output.weight"),
            &[HIDDEN, HEADS * HEAD_DIM],
            "w",
            &mut rng,
        );
        add(
            format!("{p}.ffn_up.weight"),
            &[2 * INTERMEDIATE, HIDDEN],
            "w",
            &mut rng,
        );
        add(
            format!("{p}.ffn_down.weight"),
            &[HIDDEN, INTERMEDIATE],
            "w",
            &mut rng,
        );
    }
    add("output_norm.weight".into(), &[HIDDEN], "norm", &mut rng);
    add("output.weight".into(), &[vocab, HIDDEN], "w", &mut rng);

    use gguf_file::Value;
    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("glm4".into())),
        ("glm4.attention.head_count", Value::U32(HEADS as u32)),
        ("glm4.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("glm4.attention.key_length", Value::U32(HEAD_DIM as u32)),
        ("glm4.block_count", Value::U32(LAYERS as u32)),
        ("glm4.embedding_length", Value::U32(HIDDEN as u32)),
        ("glm4.context_length", Value::U32(128)),
        ("glm4.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("glm4.rope.freq_base", Value::F32(10_000.0)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("glm4".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.merges", strings(&merges)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            Value::U32((vocab - GLM4_SPECIALS.len()) as u32),
        ),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

#[test]
fn tiny_gguf_glm4_loads_and_generates_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-glm4-q8_0.gguf");
    write_gguf(&path, 21);
    let args = GeneratorArgs::for_model(path.to_string_lossy().into_owned());

    let loaded = args.load_model().expect("the tiny GGUF loads");
    assert_eq!(loaded.info.architecture, "quantized-glm4");
    assert_eq!(loaded.info.dtype, "q8_0");
    assert_eq!(loaded.info.context_length, 128);
    assert_eq!(loaded.template.name(), "glm4");
    // The GGUF vocabulary: merges apply, GLM-4's special tokens are matched whole.
    let ids = loaded
        .tokenizer
        .encode("[gMASK]<sop><|user|>\nhello world<|assistant|>")
        .unwrap();
    let base = 256 + 9;
    assert_eq!(ids.first(), Some(&(base + 2)));
    assert_eq!(ids.last(), Some(&(base + 8)));
    assert!(
        ids.contains(&(256 + 3)) && ids.contains(&(256 + 8)),
        "{ids:?}"
    );
    // Generation stops at <|endoftext|> and at the next turn.
    assert!(loaded.tokenizer.eos_ids.contains(&base));
    assert!(loaded.tokenizer.eos_ids.contains(&(base + 7)));
    drop(loaded);

    let state = GeneratorState::load(&args).unwrap();
    let first = ask(&state, "hello world", 12);
    let again = ask(&state, "hello world", 12);
    assert!(first.generated_tokens > 0, "{first:?}");
    assert_eq!(first.text, again.text);
    assert_eq!(first.generated_tokens, again.generated_tokens);
}
