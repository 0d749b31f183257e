//! A loaded model as the engine takes it: the network, its tokenizer and template, facts.

use candle_core::Tensor;

use crate::error::LmError;
use crate::lora::AdapterSummary;
use crate::template::ChatTemplate;
use crate::tokenizer::GenTokenizer;

/// A causal language model with a KV cache.
pub trait CausalLm: Send {
    /// Feeds `tokens` at positions `pos..pos + tokens.len()` and returns the logits of the
    /// last one, shape `[vocab]`. `pos == 0` starts a new sequence (the cache is dropped).
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, LmError>;

    /// Frees the KV cache.
    fn reset(&mut self);

    /// Selects an unmerged LoRA adapter for the next sequence (None = the base model).
    fn set_adapter(&mut self, adapter: Option<&str>) -> Result<(), LmError> {
        match adapter {
            None => Ok(()),
            Some(name) => Err(LmError::UnknownAdapter(name.to_owned())),
        }
    }
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
    /// Our decoder: continuous batching over the engine's KV cache (every family,
    /// ChatGLM-6B included).
    Batched(std::sync::Arc<dyn crate::decoder::BatchModel>),
}

impl ModelKind {
    /// The batched decoder.
    pub fn batched(&self) -> Option<&std::sync::Arc<dyn crate::decoder::BatchModel>> {
        let ModelKind::Batched(m) = self;
        Some(m)
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

/// A loaded decoder taken apart for training: the same network, tokenizer and template the
/// generator serves.
pub struct TrainableModel {
    pub decoder: crate::decoder::Decoder,
    pub tokenizer: GenTokenizer,
    pub template: ChatTemplate,
    pub info: ModelInfo,
}

impl LoadedModel {
    /// The decoder itself, for a trainer. Adapters loaded beside the weights are refused
    /// with a message.
    pub fn into_trainable(self) -> Result<TrainableModel, LmError> {
        let ModelKind::Batched(model) = self.model;
        let decoder = model
            .into_any()
            .downcast::<crate::decoder::Decoder>()
            .ok()
            .and_then(std::sync::Arc::into_inner)
            .ok_or_else(|| {
                LmError::UnsupportedModel(format!(
                    "{} is not zhiku's decoder, or is shared, and cannot be trained",
                    self.info.architecture
                ))
            })?;
        Ok(TrainableModel {
            decoder,
            tokenizer: self.tokenizer,
            template: self.template,
            info: self.info,
        })
    }
}
