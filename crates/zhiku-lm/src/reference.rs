//! candle-transformers' own networks of the families zhiku serves, behind [`CausalLm`]: the
//! references the tests compare zhiku's decoder against (feature `reference`; nothing
//! serves them).
//!
//! - GGUF Llama / Qwen2 / GLM-4: `quantized_llama`, `quantized_qwen2`, `quantized_glm4`;
//! - ChatGLM2/3: `chatglm`; GLM-4-9B-chat: `glm4` (a rope base scaled by `rope_ratio`);
//!   GLM-4-0414: `glm4_new`.
//!
//! candle's `chatglm::Config` is hard-coded (`glm3_6b()`): it is built from config.json
//! here, so that the tests' tiny checkpoints load with their own sizes.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{chatglm, glm4, glm4_new};
use candle_transformers::models::{quantized_glm4, quantized_llama, quantized_qwen2};

use crate::error::LmError;
use crate::glm::GlmFamily;
use crate::load::gguf::architecture;
use crate::model::CausalLm;

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
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, LmError> {
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

/// candle-transformers' own network for a GGUF file: the reference our decoder is tested
/// against (never the serving path).
pub fn load_reference(path: &Path, device: &Device) -> Result<GgufModel, LmError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| LmError::Load(format!("cannot open {}: {e}", path.display())))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| LmError::Load(format!("{} is not a GGUF file: {e}", path.display())))?;
    let architecture = architecture(&content)?;
    let weights = match architecture.as_str() {
        "llama" => Weights::Llama(quantized_llama::ModelWeights::from_gguf(
            content, &mut file, device,
        )?),
        "qwen2" => Weights::Qwen2(quantized_qwen2::ModelWeights::from_gguf(
            content, &mut file, device,
        )?),
        "glm4" | "chatglm" => Weights::Glm4(quantized_glm4::ModelWeights::from_gguf(
            content,
            &mut file,
            device,
            DType::F32,
        )?),
        other => {
            return Err(LmError::UnsupportedModel(format!(
                "GGUF architecture `{other}`"
            )));
        }
    };
    Ok(GgufModel {
        weights,
        device: device.clone(),
    })
}

/// candle's ChatGLM2/3 config from the fields of config.json (the same fields GLM-4-9B's
/// config carries, which candle's `glm4::Config` reads).
pub fn chatglm_config(c: &glm4::Config) -> chatglm::Config {
    chatglm::Config {
        num_layers: c.num_layers,
        padded_vocab_size: c.padded_vocab_size,
        hidden_size: c.hidden_size,
        ffn_hidden_size: c.ffn_hidden_size,
        kv_channels: c.kv_channels,
        num_attention_heads: c.num_attention_heads,
        seq_length: c.seq_length,
        layernorm_epsilon: c.layernorm_epsilon,
        rmsnorm: c.rmsnorm,
        apply_residual_connection_post_layernorm: c.apply_residual_connection_post_layernorm,
        post_layer_norm: c.post_layer_norm,
        add_bias_linear: c.add_bias_linear,
        add_qkv_bias: c.add_qkv_bias,
        bias_dropout_fusion: c.bias_dropout_fusion,
        multi_query_attention: c.multi_query_attention,
        multi_query_group_num: c.multi_query_group_num,
        apply_query_key_layer_scaling: c.apply_query_key_layer_scaling,
        attention_softmax_in_fp32: c.attention_softmax_in_fp32,
        fp32_residual_connection: c.fp32_residual_connection,
    }
}

enum Net {
    ChatGlm(chatglm::Model),
    Glm4(glm4::Model),
    /// Always run with batch 1: candle 0.11.1's `glm4_new` builds its additive causal mask
    /// wrongly for batch > 1 (fixed upstream after the release). zhiku never batches (one
    /// sequence at a time per engine), so the bug cannot bite here; batching on this family
    /// would need the fix in our own code first.
    Glm4New(glm4_new::ModelForCausalLM),
}

/// A GLM-family network with its KV cache, fed one sequence at a time.
pub struct GlmModel {
    net: Net,
    family: GlmFamily,
    device: Device,
    /// Tokens every sequence starts with (ChatGLM2/3's `[gMASK] sop`), added at position 0
    /// unless the prompt already starts with them (a Jinja template that writes them).
    prefix: Vec<u32>,
    /// Tokens in the KV cache: the positions candle continues from.
    len: usize,
    max_len: usize,
}

impl GlmModel {
    /// Builds the network `family` from config.json's text and the weights in `vb`.
    pub fn new(family: GlmFamily, config_json: &str, vb: VarBuilder) -> Result<Self, LmError> {
        let device = vb.device().clone();
        let bad = |e: serde_json::Error| {
            LmError::Load(format!("{} config.json: {e}", family.architecture()))
        };
        let (net, max_len) = match family {
            GlmFamily::ChatGlm2 | GlmFamily::ChatGlm3 => {
                let c: glm4::Config = serde_json::from_str(config_json).map_err(bad)?;
                if !c.multi_query_attention {
                    return Err(LmError::UnsupportedModel(
                        "ChatGLM2/3 without multi_query_attention".into(),
                    ));
                }
                // ChatGLM3-6B-32k scales its rope base (`rope_ratio`), which only candle's
                // glm4 network reads; otherwise the two are the same network.
                if c.rope_ratio == 1 {
                    (
                        Net::ChatGlm(chatglm::Model::new(&chatglm_config(&c), vb)?),
                        c.seq_length,
                    )
                } else {
                    (Net::Glm4(glm4::Model::new(&c, vb)?), c.seq_length)
                }
            }
            GlmFamily::Glm4 => {
                let c: glm4::Config = serde_json::from_str(config_json).map_err(bad)?;
                if !c.multi_query_attention {
                    return Err(LmError::UnsupportedModel(
                        "GLM-4 without multi_query_attention".into(),
                    ));
                }
                (Net::Glm4(glm4::Model::new(&c, vb)?), c.seq_length)
            }
            GlmFamily::Glm4_0414 => {
                let c: glm4_new::Config = serde_json::from_str(config_json).map_err(bad)?;
                (
                    Net::Glm4New(glm4_new::ModelForCausalLM::new(&c, vb)?),
                    c.max_position_embeddings,
                )
            }
        };
        Ok(Self {
            net,
            family,
            device,
            prefix: Vec::new(),
            len: 0,
            max_len,
        })
    }

    /// Sets the tokens each sequence starts with.
    pub fn with_prefix(mut self, prefix: Vec<u32>) -> Self {
        self.prefix = prefix;
        self
    }

    pub fn family(&self) -> GlmFamily {
        self.family
    }

    /// The longest sequence the network's rotary tables cover.
    pub fn context_length(&self) -> usize {
        self.max_len
    }

    fn clear_cache(&mut self) {
        match &mut self.net {
            Net::ChatGlm(m) => m.reset_kv_cache(),
            Net::Glm4(m) => m.reset_kv_cache(),
            Net::Glm4New(m) => m.clear_kv_cache(),
        }
        self.len = 0;
    }
}

impl CausalLm for GlmModel {
    /// candle's GLM networks continue from their own cache length, so `pos` only marks a new
    /// sequence (0); the engine always feeds tokens in order.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, LmError> {
        if tokens.is_empty() {
            return Err(LmError::Validation("no tokens to run".into()));
        }
        let ids: Vec<u32> = if pos == 0 {
            self.clear_cache();
            if self.prefix.is_empty() || tokens.starts_with(&self.prefix) {
                tokens.to_vec()
            } else {
                self.prefix.iter().chain(tokens).copied().collect()
            }
        } else {
            tokens.to_vec()
        };
        if self.len + ids.len() > self.max_len {
            return Err(LmError::Validation(format!(
                "the sequence would reach {} tokens; {} takes at most {}",
                self.len + ids.len(),
                self.family.architecture(),
                self.max_len
            )));
        }
        let input = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.net {
            Net::ChatGlm(m) => m.forward(&input)?,
            Net::Glm4(m) => m.forward(&input)?,
            Net::Glm4New(m) => m.forward(&input, self.len)?,
        };
        self.len += ids.len();
        // [1, vocab] or [1, 1, vocab] -> [vocab], in f32 for sampling.
        Ok(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?)
    }

    fn reset(&mut self) {
        self.clear_cache();
    }
}
