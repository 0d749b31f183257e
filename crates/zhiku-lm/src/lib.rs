//! zhiku's language-model code, apart from any engine or transport: what the generator
//! serves and what a trainer differentiates through.
//!
//! - [`layers`], [`rotary`], [`attention`], [`decoder`]: one batched causal decoder on
//!   shared layers (Linear dense / quantized + LoRA, norms, RoPE, GQA attention over a paged
//!   KV cache), with two compute paths ([`ComputePath`]): zhiku's CPU kernels, or candle
//!   tensor ops on any device (the only path on a GPU, and the differentiable one);
//! - [`autograd`]: custom backward passes for training (frozen matmuls, recomputation);
//! - [`kv`]: the KV cache's storage (which blocks a sequence holds is the engine's business);
//! - [`families`]: Llama / Qwen2 / GLM-4 GGUF and ChatGLM2/3, GLM-4-9B, GLM-4-0414
//!   safetensors as instances of the decoder; [`chatglm6b`]: ChatGLM-6B's 2-D-position
//!   network;
//! - [`load`]: a model from a file, a directory or the hub, described by a [`ModelSpec`];
//! - [`lora`]: PEFT LoRA adapters, merged at load or applied per row;
//! - [`tokenizer`]: `tokenizer.json`, GGUF vocabularies, SentencePiece and tiktoken files;
//! - [`template`]: chat templates per family, the model's own Jinja template first;
//! - [`tiny`], [`synthetic`]: seeded checkpoints for tests, and of a real model's shape
//!   (GLM-4-9B) for benchmarks;
//! - `reference` (feature `reference`): candle-transformers' networks of the same families,
//!   which the tests compare the decoder against.

pub mod attention;
pub mod autograd;
pub mod chatglm6b;
pub mod decoder;
pub mod error;
pub mod families;
pub mod glm;
pub mod kv;
pub mod layers;
pub mod load;
pub mod lora;
pub mod lora_rows;
pub mod model;
#[cfg(feature = "reference")]
pub mod reference;
pub mod rotary;
pub mod seeded;
pub mod synthetic;
pub mod template;
pub mod tiny;
pub mod tokenizer;
pub mod transfer;

pub use error::LmError;
pub use load::{ModelSpec, load_model};
pub use model::{CausalLm, LoadedModel, ModelInfo, ModelKind, TrainableModel};

/// Which code runs a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputePath {
    /// zhiku's CPU kernels over host memory where the model allows it (GGUF weights, the
    /// host KV cache); candle tensor ops for the rest. The CPU default.
    #[default]
    Kernels,
    /// candle tensor ops only, on whatever device the model is on: the only path on a
    /// GPU, and the one a trainer differentiates through. On the CPU it exists so that
    /// the GPU's code runs, and is tested, on every machine.
    Tensors,
}

impl ComputePath {
    /// The path a model on `device` takes when `requested` asks for kernels: tensors on
    /// anything but the CPU.
    pub fn on(requested: ComputePath, device: &candle_core::Device) -> ComputePath {
        if device.is_cpu() {
            requested
        } else {
            ComputePath::Tensors
        }
    }
}
