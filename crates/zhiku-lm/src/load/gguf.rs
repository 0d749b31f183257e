//! GGUF (quantized) models: Llama, Qwen2 and GLM-4 on zhiku's decoder. INT4/INT8 weights
//! are what let a 6B-9B model fit on a consumer card or a laptop. candle-transformers'
//! networks for the same files are in `crate::reference`.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};

use super::directory::AdapterRequest;
use crate::ComputePath;
use crate::error::LmError;
use crate::families::{GgufTensors, gguf_decoder};
use crate::lora::LoraAdapter;
use crate::model::{LoadedModel, ModelInfo, ModelKind};
use crate::template::ChatTemplate;
use crate::tokenizer::GenTokenizer;

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

pub(crate) fn architecture(content: &gguf_file::Content) -> Result<String, LmError> {
    content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| LmError::Load("GGUF has no general.architecture".into()))
}

/// Loads a GGUF file into zhiku's batched decoder; the tokenizer is `tokenizer.json` beside
/// it when there is one, else the vocabulary inside the file. `--lora` adapters are kept
/// beside the quantized weights and applied per request.
pub fn load(
    path: &Path,
    model_id: String,
    device: &Device,
    adapters: &AdapterRequest,
    compute: ComputePath,
) -> Result<LoadedModel, LmError> {
    if !adapters.merge.is_empty() {
        return Err(LmError::UnsupportedModel(
            "--merge-lora folds an adapter into full-precision weights, which a quantized GGUF \
             file does not have; serve the adapter unmerged with --lora NAME=DIR instead"
                .into(),
        ));
    }
    let mut gg = GgufTensors::open(path, device, compute)?;
    let architecture = architecture(&gg.content)?;
    let md = &gg.content.metadata;
    let dtype = quantization_name(&gg.content);
    let mut tokenizer = GenTokenizer::from_gguf(&gg.content)?;
    if let Some(json) = path
        .parent()
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.is_file())
    {
        tokenizer.set_tokenizer(GenTokenizer::from_file(&json)?);
    }
    let embedded_template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let arch = match architecture.as_str() {
        "chatglm" => "glm4",
        other => other,
    };
    let family_template = match arch {
        "glm4" => ChatTemplate::Glm4,
        _ => ChatTemplate::ChatMl,
    };
    let decoder = gguf_decoder(&mut gg, arch)?;
    let context_length = decoder.spec.context_length;
    let template = match embedded_template {
        Some(source) => ChatTemplate::Jinja {
            source,
            bos: tokenizer.bos.clone().unwrap_or_default(),
            eos: tokenizer.eos.clone().unwrap_or_default(),
        },
        None => family_template,
    };
    let architecture = match arch {
        "glm4" => "quantized-glm4".to_owned(),
        other => other.to_owned(),
    };
    let mut summaries = Vec::new();
    let mut weights = Vec::new();
    for (name, dir) in &adapters.attach {
        let adapter = LoraAdapter::load(name, dir, DType::F32, &Device::Cpu)?;
        let adapter = crate::decoder::prepare_adapter(adapter, &decoder)?;
        summaries.push(adapter.summary(false));
        weights.push(adapter);
    }
    Ok(LoadedModel {
        model: ModelKind::Batched(std::sync::Arc::new(decoder)),
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
            adapters: summaries,
        },
        adapter_weights: weights,
    })
}
