//! The GLM successors of ChatGLM-6B, as candle-transformers implements them, behind
//! [`CausalLm`]:
//!
//! - ChatGLM2-6B / ChatGLM3-6B: `chatglm` (GLM v2: causal decoder, multi-query attention,
//!   RMSNorm, rotary on half of each head);
//! - GLM-4-9B-chat: `glm4` (the same network with a rope base scaled by `rope_ratio` and a
//!   151k vocabulary);
//! - GLM-4-0414 (`model_type` "glm4"): `glm4_new` (Llama-like names, partial rotary, extra
//!   post-attention and post-MLP norms).
//!
//! candle's `chatglm::Config` is hard-coded (`glm3_6b()`): we build it from config.json, so
//! that any checkpoint of the family (and the tests' tiny ones) loads with its own sizes.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{chatglm, glm4, glm4_new};
use serde::Deserialize;

use super::CausalLm;
use crate::error::GeneratorError;

/// Which network a `config.json` describes (ChatGLM-6B, our own, is not among these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlmFamily {
    ChatGlm2,
    ChatGlm3,
    /// GLM-4-9B-chat and its variants (model_type "chatglm", 151k vocabulary).
    Glm4,
    /// GLM-4-0414 (model_type "glm4").
    Glm4_0414,
}

impl GlmFamily {
    /// The `ModelInfo.architecture` name.
    pub fn architecture(self) -> &'static str {
        match self {
            GlmFamily::ChatGlm2 => "chatglm2",
            GlmFamily::ChatGlm3 => "chatglm3",
            GlmFamily::Glm4 => "glm4",
            GlmFamily::Glm4_0414 => "glm4-0414",
        }
    }
}

/// ChatGLM2/3 and GLM-4-9B ship the 6B's vocabulary size or GLM-4's 151,552 (padded).
const CHATGLM2_VOCAB: usize = 65_024;

/// The config.json fields that tell the GLM families apart.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GlmHead {
    pub model_type: Option<String>,
    pub position_encoding_2d: Option<bool>,
    pub padded_vocab_size: Option<usize>,
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
}

/// Picks the family of a `model_type` "chatglm" or "glm4" checkpoint; `None` for ChatGLM-6B
/// (2-D positions, served by our own implementation) and anything else.
///
/// The rule, in order (the configs of the families share `model_type` "chatglm"):
/// 1. `model_type` "glm4" → GLM-4-0414;
/// 2. `position_encoding_2d` → ChatGLM-6B (None here);
/// 3. `_name_or_path` naming glm-4 / chatglm3 / chatglm2 → that family (real configs name
///    their hub repository there);
/// 4. a padded vocabulary larger than ChatGLM2/3's 65,024 → GLM-4-9B (151,552);
/// 5. otherwise ChatGLM3 when the tokenizer knows ChatGLM3's role tokens (`<|user|>`), which
///    ChatGLM2 lacks, else ChatGLM2.
pub fn detect_family(head: &GlmHead, tokenizer_has_role_tokens: bool) -> Option<GlmFamily> {
    match head.model_type.as_deref() {
        Some("glm4") => return Some(GlmFamily::Glm4_0414),
        Some("chatglm") => {}
        _ => return None,
    }
    if head.position_encoding_2d == Some(true) {
        return None;
    }
    let name = head
        .name_or_path
        .as_deref()
        .unwrap_or_default()
        .to_lowercase();
    if name.contains("glm-4") || name.contains("glm4") {
        return Some(GlmFamily::Glm4);
    }
    if name.contains("chatglm3") {
        return Some(GlmFamily::ChatGlm3);
    }
    if name.contains("chatglm2") {
        return Some(GlmFamily::ChatGlm2);
    }
    if head.padded_vocab_size.is_some_and(|v| v > CHATGLM2_VOCAB) {
        return Some(GlmFamily::Glm4);
    }
    if tokenizer_has_role_tokens {
        Some(GlmFamily::ChatGlm3)
    } else {
        Some(GlmFamily::ChatGlm2)
    }
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
    pub fn new(
        family: GlmFamily,
        config_json: &str,
        vb: VarBuilder,
    ) -> Result<Self, GeneratorError> {
        let device = vb.device().clone();
        let bad = |e: serde_json::Error| {
            GeneratorError::Load(format!("{} config.json: {e}", family.architecture()))
        };
        let (net, max_len) = match family {
            GlmFamily::ChatGlm2 | GlmFamily::ChatGlm3 => {
                let c: glm4::Config = serde_json::from_str(config_json).map_err(bad)?;
                if !c.multi_query_attention {
                    return Err(GeneratorError::UnsupportedModel(
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
                    return Err(GeneratorError::UnsupportedModel(
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
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, GeneratorError> {
        if tokens.is_empty() {
            return Err(GeneratorError::Validation("no tokens to run".into()));
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
            return Err(GeneratorError::Validation(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(model_type: &str, vocab: Option<usize>, name: Option<&str>) -> GlmHead {
        GlmHead {
            model_type: Some(model_type.into()),
            position_encoding_2d: None,
            padded_vocab_size: vocab,
            name_or_path: name.map(str::to_owned),
        }
    }

    #[test]
    fn families_are_told_apart() {
        use GlmFamily::*;
        assert_eq!(
            detect_family(&head("glm4", None, None), false),
            Some(Glm4_0414)
        );
        let mut glm6b = head("chatglm", Some(130_528), None);
        glm6b.position_encoding_2d = Some(true);
        assert_eq!(detect_family(&glm6b, false), None);
        assert_eq!(
            detect_family(&head("chatglm", Some(151_552), None), false),
            Some(Glm4)
        );
        assert_eq!(
            detect_family(
                &head("chatglm", Some(65_024), Some("THUDM/glm-4-9b-chat")),
                false
            ),
            Some(Glm4)
        );
        assert_eq!(
            detect_family(
                &head("chatglm", Some(65_024), Some("THUDM/chatglm3-6b")),
                false
            ),
            Some(ChatGlm3)
        );
        assert_eq!(
            detect_family(
                &head("chatglm", Some(65_024), Some("THUDM/chatglm2-6b")),
                true
            ),
            Some(ChatGlm2)
        );
        assert_eq!(
            detect_family(&head("chatglm", Some(65_024), None), true),
            Some(ChatGlm3)
        );
        assert_eq!(
            detect_family(&head("chatglm", Some(65_024), None), false),
            Some(ChatGlm2)
        );
        assert_eq!(detect_family(&head("llama", None, None), false), None);
    }
}
