//! The training forward is the serving forward: on a tiny checkpoint of every family, the
//! logits of `Decoder::forward_train` (no cache, differentiable ops, dense weights) equal the
//! logits the generator's path (`Solo::feed`, kernels and KV cache) gives token by token,
//! without an adapter and with one. ChatGLM-6B too, on prompts read both ways: its
//! training forward (the prompts' bidirectional parts given as `Segments`) equals the
//! serving decoder's prefill and decode.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use zhiku_lm::ComputePath;
use zhiku_lm::attention::Segments;
use zhiku_lm::decoder::{Batch, BatchModel, Decoder, Solo, prepare_adapter};
use zhiku_lm::kv::{KvCache, KvDtype};
use zhiku_lm::lora::{LoraAdapter, LoraPair};
use zhiku_lm::tiny::{self, TinyFamily};

/// Logits agree within this, relative to the largest logit (f32 on both paths; the
/// kernels accumulate in another order than candle's matmul).
const TOLERANCE: f32 = 1e-4;

fn sequences() -> [Vec<u32>; 2] {
    [
        vec![3, 17, 5, 40, 22, 9, 31, 2, 11, 46],
        vec![8, 1, 44, 13, 27, 6, 35, 19, 0, 21],
    ]
}

/// An adapter on q, v, o and the MLP's first layer of every block, seeded.
fn adapter(model: &Decoder) -> LoraAdapter {
    let mut pairs = HashMap::new();
    let mut seed = 1u32;
    for (module, inp, out) in model.linear_modules() {
        let wanted = [
            "q_proj",
            "v_proj",
            "o_proj",
            "query_key_value",
            "dense_h_to_4h",
        ]
        .iter()
        .any(|s| module.ends_with(s))
            || module.ends_with("gate_up_proj")
            || module.ends_with("gate_proj");
        if !wanted {
            continue;
        }
        let mut next = |n: usize| {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.4
                })
                .collect::<Vec<f32>>()
        };
        let a = Tensor::from_vec(next(4 * inp), (4, inp), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(next(out * 4), (out, 4), &Device::Cpu).unwrap();
        pairs.insert(module, LoraPair { a, b, scale: 2.0 });
    }
    LoraAdapter {
        name: "test".into(),
        id: 7,
        rank: 4,
        alpha: 8.0,
        target_modules: Vec::new(),
        pairs,
    }
}

fn served_logits(model: &Decoder, tokens: &[u32], adapter: Option<Arc<LoraAdapter>>) -> Tensor {
    let mut solo = Solo::new(model, tokens.len())
        .unwrap()
        .with_adapter(adapter);
    let rows: Vec<Tensor> = tokens
        .iter()
        .map(|&t| solo.feed(model, &[t]).unwrap())
        .collect();
    Tensor::stack(&rows, 0).unwrap()
}

/// Largest |x| of a tensor.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar::<f32>())
        .unwrap()
}

/// The largest difference, and the scale it is judged against (the largest logit, ≥ 1).
fn worst(a: &Tensor, b: &Tensor) -> (f32, f32) {
    (max_abs(&(a - b).unwrap()), max_abs(a).max(1.0))
}

/// A tiny checkpoint of `family` loaded to serve on `serving_path` and to train (f32).
fn served_and_trained(family: TinyFamily, serving_path: ComputePath) -> (Decoder, Decoder) {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(family, dir.path(), 11).unwrap();
    let served = tiny::load(family, &path, serving_path).unwrap();
    let trained = tiny::load(family, &path, ComputePath::Tensors)
        .unwrap()
        .into_training(DType::F32)
        .unwrap();
    (served, trained)
}

fn check(family: TinyFamily, serving_path: ComputePath) {
    let (served, trained) = served_and_trained(family, serving_path);
    let adapter = Arc::new(prepare_adapter(adapter(&served), &served).unwrap());
    let seqs = sequences();
    let batch = Tensor::from_vec(seqs.concat(), (2, 10), &Device::Cpu).unwrap();
    for with_adapter in [false, true] {
        let lora = if with_adapter {
            (*adapter).clone()
        } else {
            LoraAdapter::none()
        };
        let logits = trained.forward_train(&batch, &lora).unwrap();
        assert_eq!(logits.dims(), &[2, 10, tiny::VOCAB]);
        for (i, seq) in seqs.iter().enumerate() {
            let want = served_logits(&served, seq, with_adapter.then(|| adapter.clone()));
            let got = logits.get(i).unwrap();
            let (diff, scale) = worst(&want, &got);
            assert!(
                diff <= TOLERANCE * scale,
                "{family:?} ({serving_path:?}, adapter {with_adapter}): sequence {i} differs \
                 by {diff} (largest logit {scale})"
            );
        }
    }
}

#[test]
fn training_forward_equals_serving_forward_in_every_family() {
    for family in TinyFamily::ALL {
        check(family, ComputePath::Kernels);
        check(family, ComputePath::Tensors);
    }
}

#[test]
fn training_forward_refuses_quantized_weights_and_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(TinyFamily::Qwen2, dir.path(), 3).unwrap();
    let tokens = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let kernels = tiny::load(TinyFamily::Qwen2, &path, ComputePath::Kernels).unwrap();
    let err = kernels
        .forward_train(&tokens, &LoraAdapter::none())
        .unwrap_err();
    assert!(err.to_string().contains("into_training"), "{err}");
    let model = kernels.into_training(DType::F64).unwrap();
    let bad = Tensor::new(&[[1u32, tiny::VOCAB as u32]], &Device::Cpu).unwrap();
    assert!(model.forward_train(&bad, &LoraAdapter::none()).is_err());
    let logits = model.forward_train(&tokens, &LoraAdapter::none()).unwrap();
    assert_eq!(logits.dtype(), DType::F64);
}

/// ChatGLM-6B examples: prompt tokens, `[gMASK]` (2), `<sop>` (3), then the answer; each
/// with its bidirectional part (the prompt through `[gMASK]`, as the generator sets it).
fn chatglm6b_examples() -> [(Vec<u32>, usize); 2] {
    [
        (vec![5, 17, 9, 40, 22, 2, 3, 11, 30, 7], 6),
        (vec![8, 44, 13, 2, 3, 27, 6, 35], 4),
    ]
}

/// The serving decoder's logits of every row of `tokens` prefilled in one step, the first
/// `bidirectional` read both ways.
fn prefill_logits(
    model: &Decoder,
    tokens: &[u32],
    bidirectional: usize,
    adapter: Option<Arc<LoraAdapter>>,
) -> Tensor {
    let mut cache = KvCache::new(
        model.kv_shape(),
        tokens.len(),
        KvDtype::F32,
        model.device(),
        model.kv_dtype(),
        model.compute_path(),
    )
    .unwrap();
    let blocks: Vec<u32> = (0..cache.num_blocks as u32).collect();
    let mut batch = Batch::default();
    batch.push(tokens, 0, &blocks, adapter, false);
    batch.bidirectional(bidirectional);
    batch.logit_rows = (0..tokens.len() as u32).collect();
    model.forward(&batch, &mut cache).unwrap()
}

/// The serving decoder's logits from `<sop>` on, decoding: the prompt through `<sop>` in
/// one step, then the answer token by token.
fn decode_logits(
    model: &Decoder,
    tokens: &[u32],
    bidirectional: usize,
    adapter: Option<Arc<LoraAdapter>>,
) -> Tensor {
    let mut solo = Solo::new(model, tokens.len())
        .unwrap()
        .with_adapter(adapter)
        .with_bidirectional(bidirectional);
    let mut rows = vec![solo.feed(model, &tokens[..=bidirectional]).unwrap()];
    for &t in &tokens[bidirectional + 1..] {
        rows.push(solo.feed(model, &[t]).unwrap());
    }
    Tensor::stack(&rows, 0).unwrap()
}

fn assert_close(want: &Tensor, got: &Tensor, what: &str) {
    let (diff, scale) = worst(want, got);
    eprintln!("{what}: differs by {diff:.2e} (largest logit {scale:.2})");
    assert!(
        diff <= TOLERANCE * scale,
        "{what}: differs by {diff} (largest logit {scale})"
    );
}

fn check_chatglm6b(serving_path: ComputePath) {
    let (served, trained) = served_and_trained(TinyFamily::ChatGlm6b, serving_path);
    let adapter = Arc::new(prepare_adapter(adapter(&served), &served).unwrap());
    let examples = chatglm6b_examples();
    let len = examples.iter().map(|(t, _)| t.len()).max().unwrap();
    // One example per row, right-padded, and both examples packed in one row.
    let mut padded = Vec::new();
    for (tokens, _) in &examples {
        padded.extend_from_slice(tokens);
        padded.resize(padded.len().div_ceil(len) * len, 0);
    }
    let padded = Tensor::from_vec(padded, (2, len), &Device::Cpu).unwrap();
    let parts: Vec<usize> = examples.iter().map(|(_, p)| *p).collect();
    let rows = Segments::rows(len, &parts).unwrap();
    let packed_len: usize = examples.iter().map(|(t, _)| t.len()).sum();
    let packed = Tensor::from_vec(
        examples.iter().flat_map(|(t, _)| t.clone()).collect(),
        (1, packed_len),
        &Device::Cpu,
    )
    .unwrap();
    let packing = Segments::from_examples(
        packed_len,
        &[examples.iter().map(|(t, p)| (t.len(), *p)).collect()],
    )
    .unwrap();
    for with_adapter in [false, true] {
        let lora = if with_adapter {
            (*adapter).clone()
        } else {
            LoraAdapter::none()
        };
        let served_adapter = || with_adapter.then(|| adapter.clone());
        let by_row = trained
            .forward_train_segments(&padded, &lora, &rows)
            .unwrap();
        let in_one = trained
            .forward_train_segments(&packed, &lora, &packing)
            .unwrap()
            .get(0)
            .unwrap();
        let mut at = 0;
        for (i, (tokens, both)) in examples.iter().enumerate() {
            let n = tokens.len();
            let what =
                format!("ChatGLM-6B ({serving_path:?}, adapter {with_adapter}), example {i}");
            let prefill = prefill_logits(&served, tokens, *both, served_adapter());
            let row = by_row.get(i).unwrap().narrow(0, 0, n).unwrap();
            assert_close(&prefill, &row, &format!("{what}, a row of its own"));
            let part = in_one.narrow(0, at, n).unwrap();
            assert_close(&prefill, &part, &format!("{what}, packed"));
            let decode = decode_logits(&served, tokens, *both, served_adapter());
            let answer = row.narrow(0, *both, n - *both).unwrap();
            assert_close(&decode, &answer, &format!("{what}, decoded"));
            at += n;
        }
    }
}

/// ChatGLM-6B's training forward, its prompts read both ways and its 2-D positions from
/// their bidirectional parts, equals the serving decoder's prefill on every row and its
/// decode from `<sop>` on (kernels and tensors, with and without an adapter on
/// query_key_value and dense_h_to_4h), each example in a row of its own or both in one
/// packed row. And the prompt is read both ways: without its bidirectional part (a
/// causal prompt) the training logits differ.
#[test]
fn chatglm6b_training_forward_equals_serving_prefill_and_decode() {
    check_chatglm6b(ComputePath::Kernels);
    check_chatglm6b(ComputePath::Tensors);
    let (_, trained) = served_and_trained(TinyFamily::ChatGlm6b, ComputePath::Tensors);
    let (tokens, both) = &chatglm6b_examples()[0];
    let n = tokens.len();
    let batch = Tensor::from_vec(tokens.clone(), (1, n), &Device::Cpu).unwrap();
    let none = LoraAdapter::none();
    let read_both_ways = trained
        .forward_train_segments(&batch, &none, &Segments::rows(n, &[*both]).unwrap())
        .unwrap();
    let causal = trained.forward_train(&batch, &none).unwrap();
    let (diff, scale) = worst(&read_both_ways, &causal);
    assert!(
        diff > 1e-3 * scale,
        "a bidirectional prompt changed nothing"
    );
}
