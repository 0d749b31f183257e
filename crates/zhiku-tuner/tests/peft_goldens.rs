//! One step of zhiku's trainer against one step of PyTorch + PEFT (recorded by
//! `scripts/record-peft-goldens` into tests/data): the same tiny Llama / Qwen2 weights (the
//! test writes them as the GGUF zhiku loads, q/k rows permuted as llama.cpp stores Llama's),
//! the same A and B, data and AdamW settings, in f64. Compared: the loss, the gradients of
//! every A and B, the losses of two steps and A/B after them.
//!
//! Tolerances: transformers computes RMSNorm, the rotary tables and the loss in f32 even in
//! an f64 model, so the figures agree to f32's precision, not f64's: losses within 1e-5
//! relative; each gradient and each A/B after two AdamW steps within the tolerances below,
//! relative to the tensor's largest entry.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::values_f64 as values;
use zhiku_lm::ComputePath;
use zhiku_lm::decoder::qk_permutation;
use zhiku_lm::tiny::{self, TinyFamily};
use zhiku_tuner::{LoraInit, LoraSpec, TrainConfig, TrainExample, TrainedPair, Trainer};

const GRAD_TOLERANCE: f64 = 1e-5;
const STEP_TOLERANCE: f64 = 1e-4;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A checkpoint tensor name → its GGUF name.
fn gguf_name(hf: &str) -> String {
    let renames = [
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
        ("model.layers.", "blk."),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    let mut name = hf.to_owned();
    for (from, to) in renames {
        name = name.replace(from, to);
    }
    name
}

/// Largest |a - b| over the elements, relative to the largest |b| (transformers' f32 loss
/// makes every element as precise as the largest, not each to its own size).
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let b = values(b);
    let scale = b.iter().fold(1e-30, |m, x| x.abs().max(m));
    values(a)
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

fn pairs(t: &HashMap<String, Tensor>, prefix: &str) -> Vec<TrainedPair> {
    let mut out: Vec<TrainedPair> = t
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.strip_suffix(".A"))
        .map(|m| TrainedPair {
            module: m.to_owned(),
            a: t[&format!("{prefix}{m}.A")].clone(),
            b: t[&format!("{prefix}{m}.B")].clone(),
        })
        .collect();
    out.sort_by(|x, y| x.module.cmp(&y.module));
    out
}

fn check(family: &str) {
    let dir = data_dir();
    let (st, meta) = (
        dir.join(format!("peft-{family}.safetensors")),
        dir.join(format!("peft-{family}.json")),
    );
    if !st.exists() || !meta.exists() {
        eprintln!(
            "SKIPPED: {} is missing (scripts/record-peft-goldens)",
            st.display()
        );
        return;
    }
    let t = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    // The base weights as a GGUF.
    let mut weights = Vec::new();
    for (name, w) in &t {
        let Some(hf) = name.strip_prefix("base.") else {
            continue;
        };
        let mut w = w.to_dtype(DType::F32).unwrap();
        if family == "llama" && (hf.contains("q_proj") || hf.contains("k_proj")) {
            let heads = if hf.contains("q_proj") {
                tiny::HEADS
            } else {
                tiny::KV_HEADS
            };
            let perm = qk_permutation(heads, tiny::HEAD_DIM);
            let n = perm.len();
            w = w
                .index_select(&Tensor::from_vec(perm, n, &Device::Cpu).unwrap(), 0)
                .unwrap();
        }
        weights.push((gguf_name(hf), w));
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("peft.gguf");
    tiny::write_gguf(&path, family, &weights).unwrap();
    let tiny_family = if family == "llama" {
        TinyFamily::Llama
    } else {
        TinyFamily::Qwen2
    };
    let model = tiny::load(tiny_family, &path, ComputePath::Kernels).unwrap();
    let config = TrainConfig {
        lora: LoraSpec {
            rank: meta["rank"].as_u64().unwrap() as usize,
            alpha: meta["alpha"].as_f64().unwrap(),
            dropout: 0.0,
            targets: ["q", "k", "v", "o", "gate", "up", "down"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            init: LoraInit::Gaussian,
            layers: zhiku_tuner::LayerSelection::All,
        },
        learning_rate: meta["lr"].as_f64().unwrap(),
        weight_decay: 0.0,
        max_grad_norm: None,
        batch_size: 2,
        dtype: DType::F64,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, config).unwrap();
    trainer.load_pairs(&pairs(&t, "initial.")).unwrap();
    let examples: Vec<TrainExample> = meta["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let tokens: Vec<u32> = serde_json::from_value(e["tokens"].clone()).unwrap();
            let answer = e["answer"].as_u64().unwrap() as usize;
            let n = tokens.len();
            TrainExample {
                loss_mask: (0..n).map(|i| i >= n - answer).collect(),
                tokens,
                bidirectional: 0,
            }
        })
        .collect();
    let losses: Vec<f64> = serde_json::from_value(meta["losses"].clone()).unwrap();
    let grads = trainer.gradients(&examples).unwrap();
    let close = |ours: f64, theirs: f64| (ours - theirs).abs() <= 1e-9 + 1e-5 * theirs.abs();
    assert!(
        close(grads.loss, losses[0]),
        "{family}: loss {} vs PEFT {}",
        grads.loss,
        losses[0]
    );
    let want = pairs(&t, "grad.");
    let (mut worst_grad, mut worst_step) = (0f64, 0f64);
    assert_eq!(grads.pairs.len(), want.len(), "{family}: modules");
    for (g, w) in grads.pairs.iter().zip(&want) {
        assert_eq!(g.module, w.module);
        for (ours, theirs, which) in [(&g.a, &w.a, "A"), (&g.b, &w.b, "B")] {
            let e = relative(ours, theirs);
            worst_grad = worst_grad.max(e);
            assert!(
                e <= GRAD_TOLERANCE,
                "{family} {} grad {which}: off by {e:.2e}",
                g.module
            );
        }
    }
    for (i, want) in losses.iter().enumerate() {
        let r = trainer.step(&examples).unwrap();
        assert!(
            close(r.loss, *want),
            "{family}: step {i} loss {} vs PEFT {want}",
            r.loss
        );
    }
    for (p, w) in trainer.pairs().unwrap().iter().zip(pairs(&t, "final.")) {
        assert_eq!(p.module, w.module);
        for (ours, theirs, which) in [(&p.a, &w.a, "A"), (&p.b, &w.b, "B")] {
            let e = relative(ours, theirs);
            worst_step = worst_step.max(e);
            assert!(
                e <= STEP_TOLERANCE,
                "{family} {} {which} after 2 steps: off by {e:.2e}",
                p.module
            );
        }
    }
    eprintln!(
        "{family}: loss {:.7} (PEFT {:.7}); worst gradient {worst_grad:.1e}, worst A/B after \
         2 steps {worst_step:.1e}, relative to each tensor's largest entry",
        grads.loss, losses[0]
    );
}

#[test]
fn one_step_matches_pytorch_and_peft_on_llama() {
    check("llama");
}

#[test]
fn one_step_matches_pytorch_and_peft_on_qwen2() {
    check("qwen2");
}
