//! The training forward is the serving forward: on a tiny checkpoint of every family, the
//! logits of `Decoder::forward_train` (no cache, differentiable ops, dense weights) equal the
//! logits the generator's path (`Solo::feed`, kernels and KV cache) gives token by token,
//! without an adapter and with one.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use zhiku_lm::ComputePath;
use zhiku_lm::decoder::{BatchModel, Decoder, Solo, prepare_adapter};
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

fn check(family: TinyFamily, serving_path: ComputePath) {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(family, dir.path(), 11).unwrap();
    let served = tiny::load(family, &path, serving_path).unwrap();
    let trained = tiny::load(family, &path, ComputePath::Tensors)
        .unwrap()
        .into_training(DType::F32)
        .unwrap();
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
