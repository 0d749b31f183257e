//! Language models behind one trait, and loading them from a file, a directory or the hub.

pub mod attention;
pub mod chatglm6b;
pub mod decoder;
pub mod directory;
pub mod families;
pub mod gguf;
pub mod glm;
pub mod layers;
pub mod load;

pub use load::load_model;

use candle_core::Tensor;

use crate::error::GeneratorError;
use crate::template::ChatTemplate;
use crate::tokenizer::GenTokenizer;

/// A causal language model with a KV cache.
pub trait CausalLm: Send {
    /// Feeds `tokens` at positions `pos..pos + tokens.len()` and returns the logits of the
    /// last one, shape `[vocab]`. `pos == 0` starts a new sequence (the cache is dropped).
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, GeneratorError>;

    /// Frees the KV cache.
    fn reset(&mut self);

    /// Selects an unmerged LoRA adapter for the next sequence (None = the base model).
    fn set_adapter(&mut self, adapter: Option<&str>) -> Result<(), GeneratorError> {
        match adapter {
            None => Ok(()),
            Some(name) => Err(GeneratorError::UnknownAdapter(name.to_owned())),
        }
    }
}

/// An adapter the model can apply (see `lora`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSummary {
    pub name: String,
    pub rank: usize,
    pub alpha: f32,
    pub target_modules: Vec<String>,
    pub merged: bool,
}

/// Facts about the loaded model, for Info and logs.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model_id: String,
    pub architecture: String,
    pub dtype: String,
    pub device: String,
    pub context_length: usize,
    pub adapters: Vec<AdapterSummary>,
}

/// How the engine runs a model.
pub enum ModelKind {
    /// Our decoder: continuous batching over the engine's KV cache.
    Batched(std::sync::Arc<dyn decoder::BatchModel>),
    /// A model with its own single-sequence cache (ChatGLM-6B).
    Single(Box<dyn CausalLm>),
}

impl ModelKind {
    /// The batched decoder, if the model is one.
    pub fn batched(&self) -> Option<&std::sync::Arc<dyn decoder::BatchModel>> {
        match self {
            ModelKind::Batched(m) => Some(m),
            ModelKind::Single(_) => None,
        }
    }
}

/// A model ready to generate: weights, tokenizer, template.
pub struct LoadedModel {
    pub model: ModelKind,
    pub tokenizer: GenTokenizer,
    pub template: ChatTemplate,
    pub info: ModelInfo,
    /// Unmerged adapters of a batched model, applied per request (named in `info.adapters`).
    pub adapter_weights: Vec<crate::lora::LoraAdapter>,
}
