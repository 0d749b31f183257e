//! Safetensors checkpoints in a directory (`config.json` + `model.safetensors` or shards +
//! `tokenizer.json`, or the SentencePiece `tokenizer.model` the ChatGLM family ships):
//!
//! - ChatGLM-6B (`model_type` "chatglm" with `position_encoding_2d`): our own implementation,
//!   with LoRA adapters merged at load or kept per request;
//! - ChatGLM2/3-6B, GLM-4-9B-chat and GLM-4-0414: zhiku's batched decoder (see
//!   [`crate::families`]), with LoRA adapters merged at load or applied per request.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::ComputePath;
use crate::chatglm6b::ChatGlm6bConfig;
use crate::error::LmError;
use crate::families::{SafetensorsWeights, chatglm_decoder, chatglm6b_decoder, glm4_0414_decoder};
use crate::glm::{GlmFamily, GlmHead, detect_family};
use crate::lora::AdapterSummary;
use crate::lora::LoraAdapter;
use crate::model::{LoadedModel, ModelInfo, ModelKind};
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

/// The special tokens ChatGLM2's tokenizer appends after its SentencePiece vocabulary, in
/// id order (`[gMASK]` and `sop` start every prompt).
const CHATGLM2_SPECIALS: &[&str] = &["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"];
/// ChatGLM3 appends its role tokens after ChatGLM2's.
const CHATGLM3_ROLES: &[&str] = &["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"];

/// The shard files a `model.safetensors.index.json` names in its `weight_map`, sorted, each
/// once.
pub(super) fn index_shards(index: &Path) -> Result<Vec<String>, LmError> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| LmError::Load(format!("{}: {e}", index.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LmError::Load(format!("{}: {e}", index.display())))?;
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
    Ok(files)
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LmError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let files = index_shards(&index)?;
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    Err(LmError::Load(format!(
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

/// The ids that end generation: config.json's `eos_token_id` and `generation_config.json`'s
/// (chat models often list their end-of-turn tokens only there), without repeats.
fn stop_ids(dir: &Path, config_eos: Option<&serde_json::Value>) -> Vec<u32> {
    let mut ids = eos_ids(config_eos);
    let generation = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    if let Some(g) = generation {
        for id in eos_ids(g.get("eos_token_id")) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// The first bytes of `path`, enough to tell its format.
fn read_head(path: &Path) -> Result<Vec<u8>, LmError> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| LmError::Load(format!("cannot read {}: {e}", path.display())))?;
    Ok(head)
}

/// `tokenizer.json` when present, else `tokenizer.model`: GLM-4's tiktoken vocabulary (with
/// tokenizer_config.json's special tokens), or a SentencePiece model with `added`
/// appended after its vocabulary (as ChatGLM2/3's Python tokenizer appends them).
fn read_tokenizer(dir: &Path, added: &[&str]) -> Result<Tokenizer, LmError> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return GenTokenizer::from_file(&json);
    }
    let model = dir.join("tokenizer.model");
    if model.is_file() {
        // GLM-4-9B-chat's tokenizer.model is a tiktoken text file, the others SentencePiece.
        let head = read_head(&model)?;
        if crate::tokenizer::tiktoken::looks_like_tiktoken(&head) {
            return crate::tokenizer::tiktoken::tokenizer_from_tiktoken_file(&model);
        }
        return crate::tokenizer::sentencepiece::tokenizer_from_model_file(&model, added);
    }
    Err(LmError::Load(format!(
        "{} has neither tokenizer.json nor tokenizer.model",
        dir.display()
    )))
}

/// ChatGLM-6B's tokenizer: `tokenizer.json` when present, else the SentencePiece
/// `ice_text.model` (or `tokenizer.model`) with the Python tokenizer's whitespace pieces and
/// its id offset. The offset is tokenizer_config.json's `num_image_tokens`, else what
/// config.json's vocabulary has beyond the pieces (20,000 image tokens in the first release,
/// none later); `[gMASK]` must then land on config.json's `gmask_token_id`.
fn chatglm6b_tokenizer(
    dir: &Path,
    config: &ChatGlm6bConfig,
    stop: Vec<u32>,
) -> Result<GenTokenizer, LmError> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return Ok(GenTokenizer::with_stops(
            GenTokenizer::from_file(&json)?,
            stop,
        ));
    }
    let Some(path) = ["ice_text.model", "tokenizer.model"]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
    else {
        return Err(LmError::Load(format!(
            "{} has no tokenizer.json, ice_text.model or tokenizer.model",
            dir.display()
        )));
    };
    let bytes = std::fs::read(&path)
        .map_err(|e| LmError::Load(format!("cannot read {}: {e}", path.display())))?;
    let inner = crate::tokenizer::sentencepiece::chatglm6b_tokenizer_from_model_bytes(&bytes)
        .map_err(|e| LmError::Load(format!("{}: {e}", path.display())))?;
    let pieces = inner.get_vocab_size(false);
    let declared = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("num_image_tokens").and_then(|n| n.as_u64()));
    let offset = match declared {
        Some(n) => u32::try_from(n).map_err(|_| {
            LmError::Load(format!(
                "tokenizer_config.json: num_image_tokens {n} is too large"
            ))
        })?,
        None => config.vocab_size.saturating_sub(pieces) as u32,
    };
    if offset as usize + pieces > config.vocab_size {
        return Err(LmError::Load(format!(
            "{}: {pieces} pieces after {offset} image tokens exceed config.json's vocab_size {}",
            path.display(),
            config.vocab_size
        )));
    }
    let tokenizer = GenTokenizer::with_offset(inner, stop, offset);
    match tokenizer.token_to_id("[gMASK]") {
        Some(id) if id == config.gmask_token_id => Ok(tokenizer),
        found => Err(LmError::Load(format!(
            "{}: [gMASK] has id {found:?} after {offset} image tokens, but config.json's \
             gmask_token_id is {}; set num_image_tokens in tokenizer_config.json to the \
             checkpoint's",
            path.display(),
            config.gmask_token_id
        ))),
    }
}

/// The model's own chat template (tokenizer_config.json) when it has one, else `family`.
fn chat_template(dir: &Path, tokenizer: &GenTokenizer, family: ChatTemplate) -> ChatTemplate {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<TokenizerConfig>(&t).ok())
        .and_then(|c| c.chat_template)
        .map(|source| ChatTemplate::Jinja {
            source,
            bos: tokenizer.bos.clone().unwrap_or_default(),
            eos: tokenizer.eos.clone().unwrap_or_default(),
        })
        .unwrap_or(family)
}

fn device_name(device: &Device) -> String {
    if device.is_cpu() {
        "cpu".into()
    } else {
        "cuda".into()
    }
}

fn adapter_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".into())
}

pub fn load(
    dir: &Path,
    model_id: String,
    device: &Device,
    dtype: DType,
    adapters: &AdapterRequest,
    compute: ComputePath,
) -> Result<LoadedModel, LmError> {
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path)
        .map_err(|e| LmError::Load(format!("cannot read {}: {e}", config_path.display())))?;
    let head: Head = serde_json::from_str(&config_text)
        .map_err(|e| LmError::Load(format!("{}: {e}", config_path.display())))?;
    let model_type = head.model_type.clone().unwrap_or_default();
    let stop = stop_ids(dir, head.eos_token_id.as_ref());
    let model = ModelFiles {
        dir,
        model_id,
        device,
        dtype,
        compute,
        config_text: &config_text,
        stop,
    };
    match model_type.as_str() {
        "chatglm" if head.position_encoding_2d == Some(true) => model.chatglm6b(adapters),
        "chatglm" | "glm4" => model.glm(adapters),
        other => Err(LmError::UnsupportedModel(format!(
            "config.json model_type `{other}`: zhiku serves safetensors checkpoints of \
             ChatGLM-6B, ChatGLM2/3-6B, GLM-4-9B-chat (`chatglm`) and GLM-4-0414 (`glm4`), \
             and GGUF files (llama, qwen2, glm4)"
        ))),
    }
}

/// What every family's loader starts from.
struct ModelFiles<'a> {
    dir: &'a Path,
    model_id: String,
    device: &'a Device,
    dtype: DType,
    compute: ComputePath,
    config_text: &'a str,
    /// Stop ids from config.json and generation_config.json.
    stop: Vec<u32>,
}

impl ModelFiles<'_> {
    fn info(
        &self,
        architecture: &str,
        context_length: usize,
        adapters: Vec<AdapterSummary>,
    ) -> ModelInfo {
        ModelInfo {
            model_id: self.model_id.clone(),
            architecture: architecture.into(),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            device: device_name(self.device),
            context_length,
            adapters,
        }
    }

    /// ChatGLM-6B: the shared decoder with its 2-D positions and bidirectional prompt;
    /// adapters merged at load or attached per request, as for every batched family.
    fn chatglm6b(self, adapters: &AdapterRequest) -> Result<LoadedModel, LmError> {
        let config: ChatGlm6bConfig = serde_json::from_str(self.config_text)
            .map_err(|e| LmError::Load(format!("ChatGLM-6B config.json: {e}")))?;
        let mut stop = self.stop.clone();
        if stop.is_empty() {
            stop.push(config.eos_token_id);
        }
        let tokenizer = chatglm6b_tokenizer(self.dir, &config, stop)?;
        let mut summaries = Vec::new();
        let mut merged = Vec::new();
        for path in &adapters.merge {
            let adapter = LoraAdapter::load(&adapter_name(path), path, self.dtype, self.device)?;
            summaries.push(adapter.summary(true));
            merged.push(adapter);
        }
        let mut weights =
            SafetensorsWeights::open(&weight_files(self.dir)?, self.device, self.dtype, &merged)?;
        let decoder = chatglm6b_decoder(&config, &mut weights)?.with_compute(self.compute);
        let mut attached = Vec::new();
        for (name, path) in &adapters.attach {
            let adapter = LoraAdapter::load(name, path, self.dtype, self.device)?;
            let adapter = crate::decoder::prepare_adapter(adapter, &decoder)?;
            summaries.push(adapter.summary(false));
            attached.push(adapter);
        }
        let template = chat_template(self.dir, &tokenizer, ChatTemplate::ChatGlm6b);
        // The engine counts the `[gMASK] <sop>` it appends against this.
        let info = self.info("chatglm", decoder.spec.context_length, summaries);
        Ok(LoadedModel {
            model: ModelKind::Batched(std::sync::Arc::new(decoder)),
            tokenizer,
            template,
            info,
            adapter_weights: attached,
        })
    }

    /// ChatGLM2/3, GLM-4-9B-chat, GLM-4-0414: candle's networks; adapters merged only.
    fn glm(self, adapters: &AdapterRequest) -> Result<LoadedModel, LmError> {
        let head: GlmHead = serde_json::from_str(self.config_text)
            .map_err(|e| LmError::Load(format!("config.json: {e}")))?;
        // Rule 5 of `detect_family` asks whether the tokenizer knows ChatGLM3's role tokens;
        // a SentencePiece tokenizer.model never holds them (the Python code appends them), so
        // only tokenizer.json can answer yes.
        let json_tokenizer = self.dir.join("tokenizer.json");
        let json_tokenizer = if json_tokenizer.is_file() {
            Some(GenTokenizer::from_file(&json_tokenizer)?)
        } else {
            None
        };
        let has_roles = json_tokenizer
            .as_ref()
            .is_some_and(|t| t.token_to_id("<|user|>").is_some());
        let family = detect_family(&head, has_roles).ok_or_else(|| {
            LmError::UnsupportedModel(format!(
                "config.json model_type `{}` is not a GLM family zhiku knows",
                head.model_type.as_deref().unwrap_or_default()
            ))
        })?;
        let inner = match json_tokenizer {
            Some(t) => t,
            None => {
                let added: Vec<&str> = match family {
                    GlmFamily::ChatGlm2 => CHATGLM2_SPECIALS.to_vec(),
                    GlmFamily::ChatGlm3 => CHATGLM2_SPECIALS
                        .iter()
                        .chain(CHATGLM3_ROLES)
                        .copied()
                        .collect(),
                    GlmFamily::Glm4 | GlmFamily::Glm4_0414 => Vec::new(),
                };
                read_tokenizer(self.dir, &added)?
            }
        };
        let mut stop = self.stop.clone();
        let (template, prefix) = match family {
            GlmFamily::ChatGlm2 | GlmFamily::ChatGlm3 => {
                // Every ChatGLM2/3 prompt starts with `[gMASK] sop` (the Python tokenizer's
                // prefix tokens); the model wrapper adds them.
                let id = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
                let prefix = match (id(&["[gMASK]"]), id(&["sop", "<sop>"])) {
                    (Some(g), Some(s)) => vec![g, s],
                    _ => {
                        return Err(LmError::Load(format!(
                            "{}: the tokenizer has no [gMASK]/sop tokens, which every prompt \
                             of this family starts with",
                            family.architecture()
                        )));
                    }
                };
                if family == GlmFamily::ChatGlm3 {
                    // ChatGLM3 ends its turn by starting the next one.
                    for name in ["<|user|>", "<|observation|>"] {
                        if let Some(i) = inner.token_to_id(name)
                            && !stop.contains(&i)
                        {
                            stop.push(i);
                        }
                    }
                    (ChatTemplate::ChatGlm3, prefix)
                } else {
                    (ChatTemplate::ChatGlm2, prefix)
                }
            }
            GlmFamily::Glm4 | GlmFamily::Glm4_0414 => (ChatTemplate::Glm4, Vec::new()),
        };
        if stop.is_empty() {
            return Err(LmError::Load(format!(
                "{}: neither config.json nor generation_config.json gives eos_token_id",
                family.architecture()
            )));
        }
        let tokenizer = GenTokenizer::with_stops(inner, stop);
        let template = chat_template(self.dir, &tokenizer, template);

        let mut summaries = Vec::new();
        let mut merged = Vec::new();
        for path in &adapters.merge {
            let adapter = LoraAdapter::load(&adapter_name(path), path, self.dtype, self.device)?;
            summaries.push(adapter.summary(true));
            merged.push(adapter);
        }
        let mut weights =
            SafetensorsWeights::open(&weight_files(self.dir)?, self.device, self.dtype, &merged)?;
        let mut decoder = match family {
            GlmFamily::Glm4_0414 => glm4_0414_decoder(self.config_text, &mut weights)?,
            _ => chatglm_decoder(self.config_text, &mut weights)?,
        }
        .with_compute(self.compute);
        decoder.prefix = prefix;
        let mut attached = Vec::new();
        for (name, path) in &adapters.attach {
            let adapter = LoraAdapter::load(name, path, self.dtype, self.device)?;
            let adapter = crate::decoder::prepare_adapter(adapter, &decoder)?;
            summaries.push(adapter.summary(false));
            attached.push(adapter);
        }
        let info = self.info(
            family.architecture(),
            decoder.spec.context_length,
            summaries,
        );
        Ok(LoadedModel {
            model: ModelKind::Batched(std::sync::Arc::new(decoder)),
            tokenizer,
            template,
            info,
            adapter_weights: attached,
        })
    }
}
