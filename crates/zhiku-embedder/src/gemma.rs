//! EmbeddingGemma's encoder: Gemma-3 (`model_type` `gemma3_text`) with bidirectional
//! attention, on candle.
//!
//! The layers are Gemma-3's: token embeddings scaled by √hidden; per layer an RMSNorm before
//! and after attention and before and after the feed-forward (Gemma's norm multiplies by
//! 1 + w); grouped-query attention whose queries and keys are RMS-normalised per head, then
//! rotated, with the local rotary base on sliding-window layers and the global one on full
//! layers, scaled by `query_pre_attn_scalar`^-½; a gated GELU (tanh) feed-forward; a final
//! RMSNorm. EmbeddingGemma sets `use_bidirectional_attention`: every token attends to every
//! other of its text (no causal mask), and a sliding-window layer to those at most
//! `sliding_window / 2` positions away on either side, a span of `sliding_window + 1`
//! (transformers halves the window of a bidirectional Gemma-3 config: its
//! `sliding_window // 2 + 1`, exclusive; EmbeddingGemma's 512 gives 256 each side).
//!
//! Batches are packed as in [`crate::encoder`]: projections and feed-forward run over the
//! real tokens only; attention runs per run of equal-length texts, so padding never exists
//! and needs no mask. Pooling and the dense layers after it are the sentence encoder's
//! ([`crate::model`]).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Activation, Embedding, VarBuilder, embedding, linear_no_bias};
use serde::Deserialize;

use crate::encoder::{Dense, MASKED, runs_of};

/// The fields of a `gemma3_text` `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct GemmaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "default_act")]
    pub hidden_activation: Activation,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_local_theta")]
    pub rope_local_base_freq: f64,
    pub query_pre_attn_scalar: f64,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// `sliding_attention` / `full_attention` per layer (transformers ≥ 4.53).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Every n-th layer is a full one (older configs, without `layer_types`).
    #[serde(default, alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub use_bidirectional_attention: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_act() -> Activation {
    Activation::GeluPytorchTanh
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    1_000_000.0
}
fn default_local_theta() -> f64 {
    10_000.0
}

impl GemmaConfig {
    /// Whether layer `i` attends within the sliding window.
    fn is_sliding(&self, i: usize) -> Result<bool> {
        if let Some(types) = &self.layer_types {
            return match types.get(i).map(String::as_str) {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                Some(other) => candle_core::bail!("layer_types[{i}] `{other}` is not supported"),
                None => candle_core::bail!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                ),
            };
        }
        // transformers: layer i is full when (i + 1) is a multiple of the pattern.
        let pattern = self.sliding_window_pattern.unwrap_or(6).max(1);
        Ok(!(i + 1).is_multiple_of(pattern))
    }
}

/// Gemma's RMSNorm, x / rms(x) · (1 + w), computed in f32 whatever the model's dtype (as
/// transformers does). `alpha` holds 1 + w, times any scale folded in.
struct GemmaRmsNorm {
    alpha: Tensor,
    eps: f32,
}

impl GemmaRmsNorm {
    fn load(dim: usize, eps: f64, scale: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        Ok(Self {
            alpha: ((weight + 1.0)? * scale)?,
            eps: eps as f32,
        })
    }

    /// Normalises over the last dimension.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        candle_nn::ops::rms_norm(&xs, &self.alpha, self.eps)?.to_dtype(dtype)
    }
}

/// cos and sin of position × frequency for every position, [positions, head_dim / 2].
struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTable {
    fn new(base: f64, head_dim: usize, positions: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for i in 0..half {
                let inv_freq = 1.0 / base.powf((2 * i) as f64 / head_dim as f64);
                let angle = p as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (positions, half), device)?,
            sin: Tensor::from_vec(sin, (positions, half), device)?,
        })
    }

    /// The rows of `positions`, in `dtype`.
    fn gather(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?.to_dtype(dtype)?,
            self.sin.index_select(positions, 0)?.to_dtype(dtype)?,
        ))
    }
}

/// Per forward pass: the rotary rows of the packed tokens for both bases.
struct Rotations {
    local: (Tensor, Tensor),
    global: (Tensor, Tensor),
}

struct Attention {
    /// Query, key and value projections fused: [hidden] → [(heads + 2 · kv_heads) · head_dim].
    qkv: Dense,
    output: Dense,
    /// The query norm, with query_pre_attn_scalar^-½ folded into its weights.
    q_norm: GemmaRmsNorm,
    k_norm: GemmaRmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Keys further than this from the query (either side) are hidden; `None`: a full layer.
    reach: Option<usize>,
    softcap: Option<f64>,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &GemmaConfig, reach: Option<usize>) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            candle_core::bail!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            );
        }
        if cfg.attention_bias {
            candle_core::bail!("attention_bias is not supported (Gemma-3 has none)");
        }
        let q = linear_no_bias(h, heads * d, vb.pp("q_proj"))?;
        let k = linear_no_bias(h, kv_heads * d, vb.pp("k_proj"))?;
        let v = linear_no_bias(h, kv_heads * d, vb.pp("v_proj"))?;
        let weight = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
        let o = linear_no_bias(heads * d, h, vb.pp("o_proj"))?;
        let scale = 1.0 / cfg.query_pre_attn_scalar.sqrt();
        Ok(Self {
            qkv: Dense::new(&weight, None)?,
            output: Dense::new(o.weight(), None)?,
            q_norm: GemmaRmsNorm::load(d, cfg.rms_norm_eps, scale, vb.pp("q_norm"))?,
            k_norm: GemmaRmsNorm::load(d, cfg.rms_norm_eps, 1.0, vb.pp("k_norm"))?,
            heads,
            kv_heads,
            head_dim: d,
            reach,
            softcap: cfg.attn_logit_softcapping,
        })
    }

    /// `xs`: [tokens, hidden], the texts of `runs` end to end → [tokens, hidden].
    fn forward(
        &self,
        xs: &Tensor,
        runs: &[(usize, usize)],
        rotations: &Rotations,
        masks: &mut MaskCache,
    ) -> Result<Tensor> {
        let (tokens, _) = xs.dims2()?;
        let d = self.head_dim;
        let qkv = self.qkv.forward(xs)?;
        let q = qkv.narrow(1, 0, self.heads * d)?;
        let k = qkv.narrow(1, self.heads * d, self.kv_heads * d)?;
        let v = qkv.narrow(1, (self.heads + self.kv_heads) * d, self.kv_heads * d)?;
        let q = self.q_norm.forward(&q.reshape((tokens, self.heads, d))?)?;
        let k = self
            .k_norm
            .forward(&k.reshape((tokens, self.kv_heads, d))?)?;
        let (cos, sin) = match self.reach {
            Some(_) => &rotations.local,
            None => &rotations.global,
        };
        // rope_thd: [batch, tokens, heads, head_dim], one rotary row per token.
        let q = candle_nn::rotary_emb::rope_thd(&q.unsqueeze(0)?.contiguous()?, cos, sin)?
            .squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_thd(&k.unsqueeze(0)?.contiguous()?, cos, sin)?
            .squeeze(0)?;
        let v = v.reshape((tokens, self.kv_heads, d))?;

        let mut parts = Vec::with_capacity(runs.len());
        let mut offset = 0;
        for &(len, count) in runs {
            let rows = len * count;
            let take = |t: &Tensor| t.narrow(0, offset, rows);
            let mask = match self.reach {
                Some(reach) if len > reach + 1 => Some(masks.get(len, reach, self.groups())?),
                _ => None,
            };
            parts.push(self.attend(
                &take(&q)?,
                &take(&k)?,
                &take(&v)?,
                len,
                count,
                mask.as_ref(),
            )?);
            offset += rows;
        }
        let context = match parts.len() {
            1 => parts.swap_remove(0),
            _ => Tensor::cat(&parts, 0)?,
        };
        self.output.forward(&context)
    }

    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// `count` texts of `len` tokens: q [count·len, heads, d], k and v [count·len, kv_heads,
    /// d] → context [count·len, heads·d]. The query heads that share a key head are stacked
    /// along the sequence, so keys and values are never copied per head; `mask` is
    /// [groups·len, len].
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        len: usize,
        count: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (d, kv, g) = (self.head_dim, self.kv_heads, self.groups());
        // Query head h uses key head h / groups (transformers' repeat_kv).
        let q = q
            .reshape((count, len, kv, g, d))?
            .permute((0, 2, 3, 1, 4))?
            .contiguous()?
            .reshape((count, kv, g * len, d))?;
        let k = k
            .reshape((count, len, kv, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v
            .reshape((count, len, kv, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(cap) = self.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs
            .matmul(&v)?
            .reshape((count, kv, g, len, d))?
            .permute((0, 3, 1, 2, 4))?
            .contiguous()?
            .reshape((count * len, self.heads * d))
    }
}

/// Sliding-window masks by text length, built once per forward pass.
struct MaskCache {
    dtype: DType,
    device: Device,
    masks: Vec<(usize, Tensor)>,
}

impl MaskCache {
    /// [groups·len, len]: 0 where |query − key| ≤ reach, else [`MASKED`].
    fn get(&mut self, len: usize, reach: usize, groups: usize) -> Result<Tensor> {
        if let Some((_, mask)) = self.masks.iter().find(|(n, _)| *n == len) {
            return Ok(mask.clone());
        }
        let values: Vec<f32> = (0..groups * len)
            .flat_map(|row| {
                let i = row % len;
                (0..len).map(move |j| if i.abs_diff(j) <= reach { 0.0 } else { MASKED })
            })
            .collect();
        let mask =
            Tensor::from_vec(values, (groups * len, len), &self.device)?.to_dtype(self.dtype)?;
        self.masks.push((len, mask.clone()));
        Ok(mask)
    }
}

/// The gated feed-forward: down(act(gate(x)) · up(x)), gate and up fused.
struct Mlp {
    gate_up: Dense,
    down: Dense,
    act: Activation,
    intermediate: usize,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &GemmaConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let gate = linear_no_bias(h, i, vb.pp("gate_proj"))?;
        let up = linear_no_bias(h, i, vb.pp("up_proj"))?;
        let down = linear_no_bias(i, h, vb.pp("down_proj"))?;
        Ok(Self {
            gate_up: Dense::new(&Tensor::cat(&[gate.weight(), up.weight()], 0)?, None)?,
            down: Dense::new(down.weight(), None)?,
            act: cfg.hidden_activation,
            intermediate: i,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(xs)?;
        let gate = gate_up.narrow(1, 0, self.intermediate)?;
        let up = gate_up.narrow(1, self.intermediate, self.intermediate)?;
        let inner = (self.act.forward(&gate)? * up)?;
        self.down.forward(&inner)
    }
}

struct Layer {
    input_norm: GemmaRmsNorm,
    attention: Attention,
    post_attention_norm: GemmaRmsNorm,
    pre_feedforward_norm: GemmaRmsNorm,
    mlp: Mlp,
    post_feedforward_norm: GemmaRmsNorm,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &GemmaConfig, reach: Option<usize>) -> Result<Self> {
        let norm =
            |name: &str| GemmaRmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, 1.0, vb.pp(name));
        Ok(Self {
            input_norm: norm("input_layernorm")?,
            attention: Attention::load(vb.pp("self_attn"), cfg, reach)?,
            post_attention_norm: norm("post_attention_layernorm")?,
            pre_feedforward_norm: norm("pre_feedforward_layernorm")?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
            post_feedforward_norm: norm("post_feedforward_layernorm")?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        runs: &[(usize, usize)],
        rotations: &Rotations,
        masks: &mut MaskCache,
    ) -> Result<Tensor> {
        let attended =
            self.attention
                .forward(&self.input_norm.forward(xs)?, runs, rotations, masks)?;
        let xs = (xs + self.post_attention_norm.forward(&attended)?)?;
        let inner = self.mlp.forward(&self.pre_feedforward_norm.forward(&xs)?)?;
        xs + self.post_feedforward_norm.forward(&inner)?
    }
}

/// A bidirectional Gemma-3 encoder: token ids in, one hidden state per token out.
pub struct GemmaEncoder {
    embeddings: Embedding,
    embed_scale: f64,
    layers: Vec<Layer>,
    norm: GemmaRmsNorm,
    local: RotaryTable,
    global: RotaryTable,
    max_positions: usize,
    device: Device,
}

impl GemmaEncoder {
    /// Loads the weights at the root (`embed_tokens`, `layers.N`, `norm`, as
    /// Gemma3TextModel saves them) or under `model.`.
    pub fn load(vb: VarBuilder, cfg: &GemmaConfig) -> Result<Self> {
        if !cfg.use_bidirectional_attention {
            candle_core::bail!(
                "config.json does not set use_bidirectional_attention: a causal Gemma-3 is a \
                 language model, not a sentence encoder (EmbeddingGemma sets it)"
            );
        }
        if cfg.rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
            candle_core::bail!("rope_scaling is not supported");
        }
        if !cfg.head_dim.is_multiple_of(2) {
            candle_core::bail!("head_dim {} is odd", cfg.head_dim);
        }
        let vb = if vb.contains_tensor("model.embed_tokens.weight") {
            vb.pp("model")
        } else {
            vb
        };
        let reach = cfg.sliding_window.map(|w| w / 2);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let reach = if cfg.is_sliding(i)? { reach } else { None };
                Layer::load(vb.pp(format!("layers.{i}")), cfg, reach)
            })
            .collect::<Result<Vec<_>>>()?;
        let device = vb.device().clone();
        Ok(Self {
            embeddings: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?,
            embed_scale: (cfg.hidden_size as f64).sqrt(),
            layers,
            norm: GemmaRmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, 1.0, vb.pp("norm"))?,
            local: RotaryTable::new(
                cfg.rope_local_base_freq,
                cfg.head_dim,
                cfg.max_position_embeddings,
                &device,
            )?,
            global: RotaryTable::new(
                cfg.rope_theta,
                cfg.head_dim,
                cfg.max_position_embeddings,
                &device,
            )?,
            max_positions: cfg.max_position_embeddings,
            device,
        })
    }

    /// Longest sequence the rotary tables cover.
    pub fn max_sequence_length(&self) -> usize {
        self.max_positions
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes sequences packed end to end (as [`crate::encoder::TransformerEncoder::forward_packed`]):
    /// `ids` holds every sequence's tokens in order, `lengths[i]` the length of sequence i.
    /// Returns [tokens, hidden] in the model's dtype, rows in the order of `ids`.
    pub fn forward_packed(&self, ids: &[u32], lengths: &[usize]) -> Result<Tensor> {
        let total: usize = lengths.iter().sum();
        if lengths.is_empty() || total != ids.len() || lengths.contains(&0) {
            candle_core::bail!(
                "lengths {lengths:?} do not partition {} tokens into non-empty sequences",
                ids.len()
            );
        }
        if let Some(n) = lengths.iter().find(|&&n| n > self.max_positions) {
            candle_core::bail!(
                "sequence of {n} tokens is longer than the model's {} positions",
                self.max_positions
            );
        }
        let positions: Vec<u32> = lengths.iter().flat_map(|&n| 0..n as u32).collect();
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let input_ids = Tensor::from_slice(ids, total, &self.device)?;
        let mut xs = (self.embeddings.forward(&input_ids)? * self.embed_scale)?;
        let dtype = xs.dtype();
        let rotations = Rotations {
            local: self.local.gather(&positions, dtype)?,
            global: self.global.gather(&positions, dtype)?,
        };
        let runs = runs_of(lengths);
        let mut masks = MaskCache {
            dtype,
            device: self.device.clone(),
            masks: Vec::new(),
        };
        for layer in &self.layers {
            xs = layer.forward(&xs, &runs, &rotations, &mut masks)?;
        }
        self.norm.forward(&xs)
    }
}
