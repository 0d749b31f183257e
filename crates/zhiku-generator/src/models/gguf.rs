//! GGUF (quantized) models: Llama, Qwen2 and GLM-4, as candle-transformers implements them.
//! INT4/INT8 weights are what let a 6B-9B model fit on a consumer card or a laptop.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_glm4, quantized_llama, quantized_qwen2};

use super::{CausalLm, LoadedModel, ModelInfo};
use crate::error::GeneratorError;
use crate::template::ChatTemplate;
use crate::tokenizer::GenTokenizer;

enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Glm4(quantized_glm4::ModelWeights),
}

pub struct GgufModel {
    weights: Weights,
    device: Device,
}

impl CausalLm for GgufModel {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, GeneratorError> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.weights {
            Weights::Llama(m) => m.forward(&input, pos)?,
            Weights::Qwen2(m) => m.forward(&input, pos)?,
            Weights::Glm4(m) => m.forward(&input, pos)?,
        };
        // [1, vocab] (or [1, 1, vocab]) -> [vocab], in f32 for sampling.
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }

    fn reset(&mut self) {
        // Llama and Qwen2 drop their cache when a sequence starts at position 0; GLM-4 too.
        match &mut self.weights {
            Weights::Llama(m) => m.clear_kv_cache(),
            Weights::Qwen2(m) => m.clear_kv_cache(),
            Weights::Glm4(_) => {}
        }
    }
}

fn quantization_name(content: &gguf_file::Content) -> String {
    // The most common dtype among the weight matrices names the file's quantisation. Norms
    // and biases (1-D) stay F32 in every GGUF and outnumber the matrices in GLM-4's layers
    // (four norms and three biases beside six matrices), so they do not count.
    let mut counts = std::collections::HashMap::new();
    for info in content
        .tensor_infos
        .values()
        .filter(|info| info.shape.rank() >= 2)
    {
        *counts
            .entry(format!("{:?}", info.ggml_dtype))
            .or_insert(0usize) += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(name, _)| name.to_lowercase())
        .unwrap_or_else(|| "gguf".into())
}

/// Loads a GGUF file; the tokenizer is `tokenizer.json` beside it when there is one, else the
/// vocabulary inside the file.
pub fn load(path: &Path, model_id: String, device: &Device) -> Result<LoadedModel, GeneratorError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| GeneratorError::Load(format!("cannot open {}: {e}", path.display())))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| GeneratorError::Load(format!("{} is not a GGUF file: {e}", path.display())))?;
    let md = &content.metadata;
    let architecture = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| GeneratorError::Load("GGUF has no general.architecture".into()))?;
    let context_length = md
        .get(&format!("{architecture}.context_length"))
        .and_then(|v| v.to_u32().ok())
        .unwrap_or(2048) as usize;
    let dtype = quantization_name(&content);

    let mut tokenizer = GenTokenizer::from_gguf(&content)?;
    if let Some(json) = path
        .parent()
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.is_file())
    {
        tokenizer.inner = GenTokenizer::from_file(&json)?;
    }
    let embedded_template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();

    let (weights, family_template) = match architecture.as_str() {
        "llama" => (
            Weights::Llama(quantized_llama::ModelWeights::from_gguf(
                content, &mut file, device,
            )?),
            ChatTemplate::ChatMl,
        ),
        "qwen2" => (
            Weights::Qwen2(quantized_qwen2::ModelWeights::from_gguf(
                content, &mut file, device,
            )?),
            ChatTemplate::ChatMl,
        ),
        "glm4" | "chatglm" => (
            Weights::Glm4(quantized_glm4::ModelWeights::from_gguf(
                content,
                &mut file,
                device,
                DType::F32,
            )?),
            ChatTemplate::Glm4,
        ),
        other => {
            return Err(GeneratorError::UnsupportedModel(format!(
                "GGUF architecture `{other}`; zhiku runs GGUF `llama`, `qwen2` and `glm4`"
            )));
        }
    };
    let template = match embedded_template {
        Some(source) => ChatTemplate::Jinja {
            source,
            bos: tokenizer.bos.clone().unwrap_or_default(),
            eos: tokenizer.eos.clone().unwrap_or_default(),
        },
        None => family_template,
    };
    let architecture = match architecture.as_str() {
        "glm4" | "chatglm" => "quantized-glm4".to_owned(),
        other => other.to_owned(),
    };
    Ok(LoadedModel {
        model: Box::new(GgufModel {
            weights,
            device: device.clone(),
        }),
        tokenizer,
        template,
        info: ModelInfo {
            model_id,
            architecture,
            dtype,
            device: if device.is_cpu() {
                "cpu".into()
            } else {
                "cuda".into()
            },
            context_length,
            adapters: Vec::new(),
        },
    })
}
