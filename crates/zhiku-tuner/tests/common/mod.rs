//! Helpers shared by the tests.

use candle_core::{DType, Device, Tensor};
use zhiku_lm::ComputePath;
use zhiku_lm::decoder::Decoder;
use zhiku_lm::tiny::{self, TinyFamily};
use zhiku_tuner::{LoraInit, LoraSpec, TrainConfig, TrainExample, TrainedPair};

/// A tensor's values as f32, in row-major order.
#[allow(dead_code)] // not every test binary uses both
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A tensor's values as f64, in row-major order (the trainer's f64 checks).
#[allow(dead_code)]
pub fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap()
}

/// The largest absolute difference between two tensors' values.
#[allow(dead_code)]
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    values_f64(a)
        .iter()
        .zip(values_f64(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The LoRA targets of every layer kind.
#[allow(dead_code)]
pub const ALL_TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

/// A tiny checkpoint of `family` written and loaded as it serves (kernels where the file
/// allows); the trainer readies it.
#[allow(dead_code)]
pub fn model(family: TinyFamily, seed: u64) -> Decoder {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(family, dir.path(), seed).unwrap();
    tiny::load(family, &path, ComputePath::Kernels).unwrap()
}

/// Rank 4 on every layer kind, no dropout, no clipping, in `dtype`.
#[allow(dead_code)]
pub fn config(dtype: DType) -> TrainConfig {
    TrainConfig {
        lora: LoraSpec {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
            init: LoraInit::Gaussian,
            layers: zhiku_tuner::LayerSelection::All,
        },
        learning_rate: 1e-2,
        max_grad_norm: None,
        dtype,
        ..TrainConfig::default()
    }
}

/// A prompt whose answer (the last tokens) counts in the loss.
#[allow(dead_code)]
pub fn example(tokens: &[u32], answer: usize) -> TrainExample {
    let n = tokens.len();
    TrainExample {
        tokens: tokens.to_vec(),
        loss_mask: (0..n).map(|i| i >= n - answer).collect(),
        bidirectional: 0,
    }
}

/// Every family the trainer trains: [`TinyFamily::ALL`] and ChatGLM-6B, whose examples
/// [`for_family`] lays out.
#[allow(dead_code)]
pub const TRAINED: [TinyFamily; 6] = [
    TinyFamily::Llama,
    TinyFamily::Qwen2,
    TinyFamily::Glm4Gguf,
    TinyFamily::ChatGlm,
    TinyFamily::Glm4_0414,
    TinyFamily::ChatGlm6b,
];

/// `examples` as `family` reads them: for ChatGLM-6B, `[gMASK] <sop>` (2, 3 in the tiny
/// checkpoint's vocabulary) between each prompt and its answer, the prompt through
/// `[gMASK]` read both ways, as the dataset renders them; the others unchanged.
#[allow(dead_code)]
pub fn for_family(family: TinyFamily, examples: Vec<TrainExample>) -> Vec<TrainExample> {
    if family != TinyFamily::ChatGlm6b {
        return examples;
    }
    examples
        .into_iter()
        .map(|e| {
            let prompt = e.loss_mask.iter().take_while(|&&m| !m).count();
            let mut tokens = e.tokens[..prompt].to_vec();
            tokens.extend([2, 3]);
            tokens.extend_from_slice(&e.tokens[prompt..]);
            let n = tokens.len();
            TrainExample {
                loss_mask: (0..n).map(|i| i >= prompt + 2).collect(),
                tokens,
                bidirectional: prompt + 1,
            }
        })
        .collect()
}

/// Seeded pairs with B ≠ 0 (at B = 0 the gradient of A is 0 and proves nothing).
#[allow(dead_code)]
pub fn perturbed(pairs: &[TrainedPair], seed: u32) -> Vec<TrainedPair> {
    let mut s = seed;
    let mut noise = |t: &Tensor| {
        let v: Vec<f64> = (0..t.elem_count())
            .map(|_| {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((s >> 8) as f64 / (1u32 << 24) as f64 - 0.5) * 0.2
            })
            .collect();
        Tensor::from_vec(v, t.shape(), &Device::Cpu)
            .unwrap()
            .to_dtype(t.dtype())
            .unwrap()
    };
    pairs
        .iter()
        .map(|p| TrainedPair {
            module: p.module.clone(),
            a: (&p.a + noise(&p.a)).unwrap(),
            b: noise(&p.b),
        })
        .collect()
}
