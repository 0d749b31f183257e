//! zhiku's decoder against candle-transformers' networks on tiny GGUF files the tests write
//! (Llama, Qwen2, GLM-4), LoRA on quantized weights, and batching: a batch of sequences
//! with different positions and adapters gives each the logits it gets alone.

mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use zhiku_lm::CausalLm;
use zhiku_lm::decoder::prepare_adapter;
use zhiku_lm::decoder::{Batch, BatchModel, Decoder, Solo, qk_permutation};
use zhiku_lm::families::{GgufTensors, gguf_decoder};
use zhiku_lm::kv::{KvCache, KvDtype};
use zhiku_lm::lora::LoraAdapter;
use zhiku_lm::reference::load_reference;

use common::tiny_gguf::{HEAD_DIM, HEADS, HIDDEN, KV_HEADS, LAYERS, tiny_weights, write_tiny_gguf};
use common::{max_abs_diff, worst, write_adapter};

const PROMPT: &[u32] = &[17, 104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 3];
const FOLLOW: &[u32] = &[44, 200, 7, 99];

fn ours(path: &Path, arch: &str) -> Decoder {
    let mut gg = GgufTensors::open(path, &Device::Cpu, zhiku_lm::ComputePath::Kernels).unwrap();
    gguf_decoder(&mut gg, arch).unwrap()
}

/// Logits after the prompt, then after each follow-up token, on our decoder.
fn our_logits(model: &Decoder, adapter: Option<Arc<LoraAdapter>>) -> Vec<Tensor> {
    let mut solo = Solo::new(model, 64).unwrap().with_adapter(adapter);
    let mut out = vec![solo.feed(model, PROMPT).unwrap()];
    for t in FOLLOW {
        out.push(solo.feed(model, &[*t]).unwrap());
    }
    out
}

fn reference_logits(path: &Path) -> Vec<Tensor> {
    let mut reference = load_reference(path, &Device::Cpu).unwrap();
    let mut out = vec![reference.forward(PROMPT, 0).unwrap()];
    for (i, t) in FOLLOW.iter().enumerate() {
        out.push(reference.forward(&[*t], PROMPT.len() + i).unwrap());
    }
    out
}

/// In f32, zhiku's decoder and candle's networks compute the same function: only
/// attention and rotary are summed in another order.
#[test]
fn gguf_families_match_candles_networks() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2", "glm4"] {
        let path = dir.path().join(format!("{arch}-f32.gguf"));
        write_tiny_gguf(&path, arch, &tiny_weights(arch, 7), GgmlDType::F32);
        let diff = worst(
            &our_logits(&ours(&path, arch), None),
            &reference_logits(&path),
        );
        assert!(diff < 1e-3, "{arch} f32: logits differ by {diff}");
    }
}

/// Quantized, both sides round activations to 8-bit blocks for every matmul (zhiku's
/// kernels and candle's each in their own way), so neither equals the f32 function exactly.
/// zhiku's logits must be as close to the exact (dequantized, f32) model as candle's are.
#[test]
fn quantized_gguf_logits_are_as_exact_as_candles() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2", "glm4"] {
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4_1,
        ] {
            let q = dir.path().join(format!("{arch}-{dtype:?}.gguf"));
            write_tiny_gguf(&q, arch, &tiny_weights(arch, 7), dtype);
            // The same quantized weights, dequantized, in an f32 file: the exact function.
            let exact_path = dir.path().join(format!("{arch}-{dtype:?}-f32.gguf"));
            let dequantized = dequantized_weights(&q);
            write_tiny_gguf(&exact_path, arch, &dequantized, GgmlDType::F32);
            let exact = our_logits(&ours(&exact_path, arch), None);
            let zhiku = worst(&our_logits(&ours(&q, arch), None), &exact);
            let candle = worst(&reference_logits(&q), &exact);
            println!("{arch} {dtype:?}: zhiku {zhiku:.2e}, candle {candle:.2e} from exact");
            assert!(
                zhiku <= 1.5 * candle + 1e-4,
                "{arch} {dtype:?}: zhiku is {zhiku} from the exact logits, candle {candle}"
            );
        }
    }
}

/// Every tensor of a GGUF file, dequantized to f32, in file order.
fn dequantized_weights(path: &Path) -> Vec<(String, Tensor)> {
    merged_weights(path, &LoraAdapter::none())
}

/// The adapter's modules: q, v and down of every layer, with their (in, out).
fn adapter_modules() -> Vec<(String, usize, usize)> {
    let mut m = Vec::new();
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        m.push((format!("{p}.self_attn.q_proj"), HIDDEN, HEADS * HEAD_DIM));
        m.push((format!("{p}.self_attn.v_proj"), HIDDEN, KV_HEADS * HEAD_DIM));
        m.push((format!("{p}.mlp.down_proj"), 128, HIDDEN));
    }
    m
}

fn adapter(dir: &Path, name: &str, seed: u64, b_scale: f32, model: &Decoder) -> Arc<LoraAdapter> {
    let path = dir.join(name);
    write_adapter(
        &path,
        seed,
        b_scale,
        &["q_proj", "v_proj", "down_proj"],
        &adapter_modules(),
    );
    let a = LoraAdapter::load(name, &path, candle_core::DType::F32, &Device::Cpu).unwrap();
    Arc::new(prepare_adapter(a, model).unwrap())
}

/// The GGUF name of a Hugging Face module of the tiny Llama.
fn gguf_name(module: &str) -> String {
    let rest = module.strip_prefix("model.layers.").unwrap();
    let (layer, what) = rest.split_once('.').unwrap();
    let short = match what {
        "self_attn.q_proj" => "attn_q",
        "self_attn.v_proj" => "attn_v",
        "mlp.down_proj" => "ffn_down",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{short}.weight")
}

/// The tiny Llama's weights as the Q8_0 file holds them, dequantized, with `adapter`
/// merged in (W = W0 + (alpha/r)·B·A, B's rows in the file's q order).
fn merged_weights(q8_path: &Path, adapter: &LoraAdapter) -> Vec<(String, Tensor)> {
    let mut file = std::fs::File::open(q8_path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut names: Vec<(u64, String)> = content
        .tensor_infos
        .iter()
        .map(|(n, i)| (i.offset, n.clone()))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for (_, name) in names {
        let t: QTensor = content.tensor(&mut file, &name, &Device::Cpu).unwrap();
        let mut w = t.dequantize(&Device::Cpu).unwrap();
        for (module, pair) in &adapter.pairs {
            if gguf_name(module) == name {
                // `pair.b` was permuted for the file's row order by `prepare_for`.
                w = (w + pair.delta().unwrap()).unwrap();
            }
        }
        out.push((name, w));
    }
    out
}

#[test]
fn lora_on_a_quantized_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("llama-q8.gguf");
    write_tiny_gguf(&q8, "llama", &tiny_weights("llama", 11), GgmlDType::Q8_0);
    let model = ours(&q8, "llama");
    let base = our_logits(&model, None);

    // B = 0 (LoRA's initialisation) changes nothing, exactly.
    let zero = adapter(dir.path(), "zero", 1, 0.0, &model);
    assert_eq!(worst(&our_logits(&model, Some(zero)), &base), 0.0);

    // A trained adapter changes the logits, and equals the same adapter merged into the
    // dequantized weights. The quantized side also rounds its activations to Q8_0 blocks
    // for W0·x; how far that alone moves the logits is the yardstick.
    let legal = adapter(dir.path(), "legal", 2, 0.3, &model);
    let with = our_logits(&model, Some(legal.clone()));
    assert!(
        worst(&with, &base) > 1e-2,
        "the adapter must change the logits"
    );
    let dequantized = dir.path().join("llama-dequantized.gguf");
    let plain: Vec<(String, Tensor)> = merged_weights(
        &q8,
        &LoraAdapter {
            pairs: Default::default(),
            ..(*legal).clone()
        },
    );
    write_tiny_gguf(&dequantized, "llama", &plain, GgmlDType::F32);
    let rounding = worst(&our_logits(&ours(&dequantized, "llama"), None), &base);
    let merged = dir.path().join("llama-merged.gguf");
    write_tiny_gguf(
        &merged,
        "llama",
        &merged_weights(&q8, &legal),
        GgmlDType::F32,
    );
    let diff = worst(&our_logits(&ours(&merged, "llama"), None), &with);
    println!("adapter vs merged: {diff:.2e} (activation rounding alone: {rounding:.2e})");
    assert!(
        diff <= 2.0 * rounding + 1e-4,
        "adapter vs merged differ by {diff}, rounding alone by {rounding}"
    );
}

#[test]
fn a_batch_gives_each_sequence_the_logits_it_gets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen2.gguf");
    write_tiny_gguf(&path, "llama", &tiny_weights("llama", 5), GgmlDType::Q8_0);
    let model = ours(&path, "llama");
    let a = adapter(dir.path(), "a", 3, 0.3, &model);
    let b = adapter(dir.path(), "b", 4, 0.3, &model);
    let prompts: Vec<(Vec<u32>, Option<Arc<LoraAdapter>>)> = vec![
        (PROMPT.to_vec(), None),
        (vec![5, 6, 7], Some(a.clone())),
        ((20..60).collect(), Some(b.clone())),
        (vec![9], None),
        (PROMPT[..5].to_vec(), Some(b.clone())),
    ];
    // Alone: each prompt, then one more token.
    let alone: Vec<(Tensor, Tensor)> = prompts
        .iter()
        .map(|(p, ad)| {
            let mut solo = Solo::new(&model, 64).unwrap().with_adapter(ad.clone());
            let first = solo.feed(&model, p).unwrap();
            (first, solo.feed(&model, &[42]).unwrap())
        })
        .collect();
    // Together: all prompts in one step (each in its own blocks), then all next tokens.
    let mut cache = KvCache::new(
        model.kv_shape(),
        16 * 4 * prompts.len(),
        KvDtype::F32,
        &Device::Cpu,
        candle_core::DType::F32,
        model.compute_path(),
    )
    .unwrap();
    let tables: Vec<Vec<u32>> = (0..prompts.len() as u32)
        .map(|s| (s * 4..s * 4 + 4).rev().collect()) // scattered, not in order
        .collect();
    let mut batch = Batch::default();
    for ((p, ad), blocks) in prompts.iter().zip(&tables) {
        batch.push(p, 0, blocks, ad.clone(), true);
    }
    let first = model.forward(&batch, &mut cache).unwrap();
    let mut batch = Batch::default();
    for ((p, ad), blocks) in prompts.iter().zip(&tables).rev() {
        batch.push(&[42], p.len(), blocks, ad.clone(), true);
    }
    let second = model.forward(&batch, &mut cache).unwrap();
    let n = prompts.len();
    for (i, (one, two)) in alone.iter().enumerate() {
        let together_first = first.get(i).unwrap();
        let together_second = second.get(n - 1 - i).unwrap();
        assert_eq!(
            max_abs_diff(one, &together_first),
            0.0,
            "prompt {i}, prefill"
        );
        assert_eq!(
            max_abs_diff(two, &together_second),
            0.0,
            "prompt {i}, decode"
        );
    }
}

#[test]
fn llama_qk_rows_are_permuted_as_llama_cpp_stores_them() {
    // Two heads of 4: the file's rows (0, 1, 2, 3) are the checkpoint's (0, 2, 1, 3).
    assert_eq!(qk_permutation(2, 4), vec![0, 2, 1, 3, 4, 6, 5, 7]);
}

#[test]
fn an_adapter_that_does_not_fit_is_refused_with_its_module() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama.gguf");
    write_tiny_gguf(&path, "llama", &tiny_weights("llama", 5), GgmlDType::Q8_0);
    let model = ours(&path, "llama");
    let bad = dir.path().join("bad");
    write_adapter(
        &bad,
        1,
        0.1,
        &["q_proj"],
        &[("model.layers.0.self_attn.q_proj".into(), HIDDEN + 1, 64)],
    );
    let a = LoraAdapter::load("bad", &bad, candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = prepare_adapter(a, &model).unwrap_err().to_string();
    assert!(err.contains("model.layers.0.self_attn.q_proj"), "{err}");
    let missing = dir.path().join("missing");
    write_adapter(
        &missing,
        1,
        0.1,
        &["q_proj"],
        &[("transformer.h.0.attn.c_attn".into(), HIDDEN, 64)],
    );
    let a = LoraAdapter::load("m", &missing, candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = prepare_adapter(a, &model).unwrap_err().to_string();
    assert!(err.contains("matches no layer"), "{err}");
}
