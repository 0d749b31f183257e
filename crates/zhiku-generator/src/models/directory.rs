//! Safetensors checkpoints in a directory (`config.json` + `model.safetensors` or shards +
//! `tokenizer.json`): ChatGLM-6B, with LoRA adapters merged at load or kept per request.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::chatglm6b::{ChatGlm6b, ChatGlm6bConfig};
use super::{LoadedModel, ModelInfo};
use crate::error::GeneratorError;
use crate::lora::LoraAdapter;
use crate::template::ChatTemplate;
use crate::tokenizer::GenTokenizer;

/// LoRA adapters to serve with a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct AdapterRequest {
    /// Merged into the weights at load, in order.
    pub merge: Vec<PathBuf>,
    /// (name, directory): kept unmerged, chosen per request by name.
    pub attach: Vec<(String, PathBuf)>,
}

#[derive(Deserialize)]
struct Head {
    model_type: Option<String>,
    position_encoding_2d: Option<bool>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    chat_template: Option<String>,
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, GeneratorError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| GeneratorError::Load(format!("{}: {e}", index.display())))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| GeneratorError::Load(format!("{}: {e}", index.display())))?;
        let mut files: Vec<String> = value["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    Err(GeneratorError::Load(format!(
        "{} has no model.safetensors (or model.safetensors.index.json); convert .bin \
         checkpoints to safetensors first",
        dir.display()
    )))
}

/// Token ids in `eos_token_id`: a number or a list.
fn eos_ids(value: Option<&serde_json::Value>) -> Vec<u32> {
    match value {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

pub fn load(
    dir: &Path,
    model_id: String,
    device: &Device,
    dtype: DType,
    adapters: &AdapterRequest,
) -> Result<LoadedModel, GeneratorError> {
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path)
        .map_err(|e| GeneratorError::Load(format!("cannot read {}: {e}", config_path.display())))?;
    let head: Head = serde_json::from_str(&config_text)
        .map_err(|e| GeneratorError::Load(format!("{}: {e}", config_path.display())))?;
    let model_type = head.model_type.clone().unwrap_or_default();
    if !(model_type == "chatglm" && head.position_encoding_2d == Some(true)) {
        return Err(GeneratorError::UnsupportedModel(format!(
            "config.json model_type `{model_type}`: this build serves ChatGLM-6B safetensors \
             checkpoints and GGUF files (llama, qwen2, glm4); ChatGLM2/3 and GLM-4 safetensors \
             are not wired yet"
        )));
    }
    let config: ChatGlm6bConfig = serde_json::from_str(&config_text)
        .map_err(|e| GeneratorError::Load(format!("ChatGLM-6B config.json: {e}")))?;

    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(GeneratorError::Load(format!(
            "{} has no tokenizer.json; SentencePiece tokenizer.model files are not read yet",
            dir.display()
        )));
    }
    let mut stop = eos_ids(head.eos_token_id.as_ref());
    if stop.is_empty() {
        stop.push(config.eos_token_id);
    }
    let tokenizer = GenTokenizer::from_json(&tokenizer_path, stop)?;

    let files = weight_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; zhiku never writes model files while
    // serving them.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }?;
    let mut model = ChatGlm6b::load(&config, vb)?;

    let mut summaries = Vec::new();
    for path in &adapters.merge {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "merged".into());
        let adapter = LoraAdapter::load(&name, path, dtype, device)?;
        model.merge_adapter(&adapter)?;
        summaries.push(adapter.summary(true));
    }
    for (name, path) in &adapters.attach {
        let adapter = LoraAdapter::load(name, path, dtype, device)?;
        model.attach_adapter(&adapter)?;
        summaries.push(adapter.summary(false));
    }

    let template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<TokenizerConfig>(&t).ok())
        .and_then(|c| c.chat_template)
        .map(|source| ChatTemplate::Jinja {
            source,
            bos: tokenizer.bos.clone().unwrap_or_default(),
            eos: tokenizer.eos.clone().unwrap_or_default(),
        })
        .unwrap_or(ChatTemplate::ChatGlm6b);
    let context_length = config.max_sequence_length.saturating_sub(2);
    Ok(LoadedModel {
        model: Box::new(model),
        tokenizer,
        template,
        info: ModelInfo {
            model_id,
            architecture: "chatglm".into(),
            dtype: format!("{dtype:?}").to_lowercase(),
            device: if device.is_cpu() {
                "cpu".into()
            } else {
                "cuda".into()
            },
            context_length,
            adapters: summaries,
        },
    })
}
