//! ChatGLM-6B, the article's model: GLM's blank-infilling transformer, written here because
//! candle has only its successors.
//!
//! What makes GLM different from a plain decoder:
//! - **Two-part attention.** The prompt (Part A, ending with `[gMASK]`) is read
//!   bidirectionally: every prompt token sees every other. What is generated (Part B, from
//!   `<sop>` on) is causal: each token sees Part A and the Part B tokens before it.
//! - **2-D positions.** Each token has a position and a block position. Part A: positions
//!   0..n, block position 0. Part B: every token takes the position of the `[gMASK]` it fills,
//!   with block positions 1, 2, 3, …; the rotary embedding is applied to one half of each head
//!   with the first id and to the other half with the second.
//! - **DeepNorm residuals.** Each sub-layer adds its output to its *normalised* input scaled
//!   by alpha = sqrt(2 · layers): x' = LN(x)·alpha + f(LN(x)).
//!
//! The server runs ChatGLM-6B on the shared decoder (`families::chatglm6b_decoder`: the
//! same departures, expressed in `decoder.rs`, `attention.rs` and `rotary.rs`), batched
//! like every family. The single-sequence network below (feature `reference`) is the
//! reference the tests hold the shared decoder to, and what they write tiny checkpoints
//! with; its linear layers are `LoraLinear`s, adapters merged or chosen per request.

#[cfg(feature = "reference")]
use std::collections::HashMap;

#[cfg(feature = "reference")]
use candle_core::{D, DType, Device, Module, Tensor};
#[cfg(feature = "reference")]
use candle_nn::{Embedding, LayerNorm, VarBuilder, embedding, layer_norm, linear, linear_no_bias};
use serde::Deserialize;

#[cfg(feature = "reference")]
use crate::error::LmError;
#[cfg(feature = "reference")]
use crate::lora::{LoraAdapter, LoraLinear};
#[cfg(feature = "reference")]
use crate::model::CausalLm;

/// ChatGLM-6B's `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatGlm6bConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_eps")]
    pub layernorm_epsilon: f64,
    pub inner_hidden_size: usize,
    #[serde(default = "default_max_seq")]
    pub max_sequence_length: usize,
    #[serde(default = "default_true")]
    pub position_encoding_2d: bool,
    /// `<sop>`: starts Part B.
    pub bos_token_id: u32,
    /// `<eop>`: ends the answer.
    pub eos_token_id: u32,
    #[serde(default = "default_mask")]
    pub mask_token_id: u32,
    /// `[gMASK]`: the blank the answer fills.
    pub gmask_token_id: u32,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_max_seq() -> usize {
    2048
}
fn default_true() -> bool {
    true
}
fn default_mask() -> u32 {
    130_000
}

/// Position and block position of every token of a sequence whose Part B starts at
/// `context_length` (the index of `<sop>`) and whose blank is at `mask_position`.
pub fn position_ids(
    len: usize,
    context_length: usize,
    mask_position: usize,
) -> (Vec<u32>, Vec<u32>) {
    let positions = (0..len)
        .map(|i| if i < context_length { i } else { mask_position } as u32)
        .collect();
    let blocks = (0..len)
        .map(|i| if i < context_length { 0 } else { i - context_length + 1 } as u32)
        .collect();
    (positions, blocks)
}

#[cfg(feature = "reference")]
struct Layer {
    input_layernorm: LayerNorm,
    query_key_value: LoraLinear,
    dense: LoraLinear,
    post_attention_layernorm: LayerNorm,
    dense_h_to_4h: LoraLinear,
    dense_4h_to_h: LoraLinear,
    cache: Option<(Tensor, Tensor)>,
}

/// Where the sequence being generated stands.
#[cfg(feature = "reference")]
#[derive(Debug, Clone, Copy, Default)]
struct SequenceState {
    len: usize,
    context_length: usize,
    mask_position: usize,
}

#[cfg(feature = "reference")]
pub struct ChatGlm6b {
    cfg: ChatGlm6bConfig,
    word_embeddings: Embedding,
    layers: Vec<Layer>,
    final_layernorm: LayerNorm,
    lm_head: LoraLinear,
    /// cos/sin tables [max_positions, rotary_dim / 2].
    cos: Tensor,
    sin: Tensor,
    state: SequenceState,
    adapter: Option<String>,
    adapters: Vec<String>,
    device: Device,
}

#[cfg(feature = "reference")]
impl ChatGlm6b {
    pub fn load(cfg: &ChatGlm6bConfig, vb: VarBuilder) -> Result<Self, LmError> {
        if !cfg.position_encoding_2d {
            return Err(LmError::UnsupportedModel(
                "ChatGLM-6B with position_encoding_2d = false".into(),
            ));
        }
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        if heads == 0 || !h.is_multiple_of(heads) || !(h / heads).is_multiple_of(4) {
            return Err(LmError::Load(format!(
                "hidden_size {h} must split into {heads} heads whose size is a multiple of 4"
            )));
        }
        let t = vb.pp("transformer");
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let l = t.pp(format!("layers.{i}"));
                Ok(Layer {
                    input_layernorm: layer_norm(h, cfg.layernorm_epsilon, l.pp("input_layernorm"))?,
                    query_key_value: LoraLinear::new(linear(
                        h,
                        3 * h,
                        l.pp("attention.query_key_value"),
                    )?),
                    dense: LoraLinear::new(linear(h, h, l.pp("attention.dense"))?),
                    post_attention_layernorm: layer_norm(
                        h,
                        cfg.layernorm_epsilon,
                        l.pp("post_attention_layernorm"),
                    )?,
                    dense_h_to_4h: LoraLinear::new(linear(
                        h,
                        cfg.inner_hidden_size,
                        l.pp("mlp.dense_h_to_4h"),
                    )?),
                    dense_4h_to_h: LoraLinear::new(linear(
                        cfg.inner_hidden_size,
                        h,
                        l.pp("mlp.dense_4h_to_h"),
                    )?),
                    cache: None,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Rotary over one half of each head (the other half takes the block position).
        let rotary_dim = h / heads / 2;
        let inv_freq: Vec<f32> = (0..rotary_dim)
            .step_by(2)
            .map(|i| 1.0 / 10_000f32.powf(i as f32 / rotary_dim as f32))
            .collect();
        let device = vb.device().clone();
        let inv_freq = Tensor::new(inv_freq.as_slice(), &device)?;
        let t_pos = Tensor::arange(0u32, cfg.max_sequence_length as u32, &device)?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?;
        let freqs = t_pos.broadcast_mul(&inv_freq.unsqueeze(0)?)?;
        let dtype = vb.dtype();
        Ok(Self {
            cfg: cfg.clone(),
            word_embeddings: embedding(cfg.vocab_size, h, t.pp("word_embeddings"))?,
            layers,
            final_layernorm: layer_norm(h, cfg.layernorm_epsilon, t.pp("final_layernorm"))?,
            lm_head: LoraLinear::new(linear_no_bias(h, cfg.vocab_size, vb.pp("lm_head"))?),
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            state: SequenceState::default(),
            adapter: None,
            adapters: Vec::new(),
            device,
        })
    }

    pub fn config(&self) -> &ChatGlm6bConfig {
        &self.cfg
    }

    /// Calls `f` on every linear layer with its module path, as PEFT names them.
    fn for_each_linear(
        &mut self,
        mut f: impl FnMut(&str, &mut LoraLinear) -> Result<(), LmError>,
    ) -> Result<(), LmError> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("transformer.layers.{i}");
            f(
                &format!("{p}.attention.query_key_value"),
                &mut layer.query_key_value,
            )?;
            f(&format!("{p}.attention.dense"), &mut layer.dense)?;
            f(&format!("{p}.mlp.dense_h_to_4h"), &mut layer.dense_h_to_4h)?;
            f(&format!("{p}.mlp.dense_4h_to_h"), &mut layer.dense_4h_to_h)?;
        }
        f("lm_head", &mut self.lm_head)
    }

    /// Folds an adapter into the weights (it then applies to every request).
    pub fn merge_adapter(&mut self, adapter: &LoraAdapter) -> Result<(), LmError> {
        let mut used = 0;
        self.for_each_linear(|path, linear| {
            if let Some(pair) = adapter.pairs.get(path) {
                linear.merge(pair)?;
                used += 1;
            }
            Ok(())
        })?;
        check_all_used(adapter, used)
    }

    /// Keeps an adapter beside the weights, selectable per request by its name.
    pub fn attach_adapter(&mut self, adapter: &LoraAdapter) -> Result<(), LmError> {
        let mut used = 0;
        self.for_each_linear(|path, linear| {
            if let Some(pair) = adapter.pairs.get(path) {
                linear.attach(&adapter.name, pair.clone())?;
                used += 1;
            }
            Ok(())
        })?;
        check_all_used(adapter, used)?;
        self.adapters.push(adapter.name.clone());
        Ok(())
    }

    fn clear_cache(&mut self) {
        for layer in &mut self.layers {
            layer.cache = None;
        }
        self.state = SequenceState::default();
    }

    /// Runs `ids` (appended to the cached sequence) at the given 2-D positions with an
    /// additive `mask` [new, total] (None: attend to everything). Returns hidden states
    /// [new, hidden] after the final layer norm.
    fn run(
        &mut self,
        ids: &[u32],
        positions: &[u32],
        blocks: &[u32],
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let n = ids.len();
        let heads = self.cfg.num_attention_heads;
        let head_dim = self.cfg.hidden_size / heads;
        let alpha = (2.0 * self.cfg.num_layers as f64).sqrt();
        let adapter = self.adapter.clone();
        let adapter = adapter.as_deref();

        let input = Tensor::new(ids, &self.device)?;
        let pos = Tensor::new(positions, &self.device)?;
        let block = Tensor::new(blocks, &self.device)?;
        let (cos_a, sin_a) = (
            self.cos.index_select(&pos, 0)?,
            self.sin.index_select(&pos, 0)?,
        );
        let (cos_b, sin_b) = (
            self.cos.index_select(&block, 0)?,
            self.sin.index_select(&block, 0)?,
        );

        let mut xs = self.word_embeddings.forward(&input)?;
        for layer in &mut self.layers {
            let ln = layer.input_layernorm.forward(&xs)?;
            // [n, 3h] -> [n, heads, 3 * head_dim] -> q, k, v [1, heads, n, head_dim]
            let qkv =
                layer
                    .query_key_value
                    .forward(&ln, adapter)?
                    .reshape((n, heads, 3 * head_dim))?;
            let part = |i: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(D::Minus1, i * head_dim, head_dim)?
                    .transpose(0, 1)?
                    .unsqueeze(0)?
                    .contiguous()
            };
            let (q, k, v) = (part(0)?, part(1)?, part(2)?);
            let rotate = |x: &Tensor| -> candle_core::Result<Tensor> {
                let half = head_dim / 2;
                let x1 = x.narrow(D::Minus1, 0, half)?.contiguous()?;
                let x2 = x.narrow(D::Minus1, half, half)?.contiguous()?;
                let x1 = candle_nn::rotary_emb::rope(&x1, &cos_a, &sin_a)?;
                let x2 = candle_nn::rotary_emb::rope(&x2, &cos_b, &sin_b)?;
                Tensor::cat(&[x1, x2], D::Minus1)
            };
            let (q, k) = (rotate(&q)?, rotate(&k)?);
            let (k, v) = match &layer.cache {
                Some((ck, cv)) => (Tensor::cat(&[ck, &k], 2)?, Tensor::cat(&[cv, &v], 2)?),
                None => (k, v),
            };
            layer.cache = Some((k.clone(), v.clone()));

            let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
            let scores = match mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
                .to_dtype(v.dtype())?;
            let context = probs
                .matmul(&v)?
                .squeeze(0)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((n, heads * head_dim))?;
            let attention = layer.dense.forward(&context, adapter)?;
            // DeepNorm: the residual is the normalised input, scaled by alpha.
            let xs_mid = ((ln * alpha)? + attention)?;
            let ln2 = layer.post_attention_layernorm.forward(&xs_mid)?;
            let inner = layer.dense_h_to_4h.forward(&ln2, adapter)?.gelu()?;
            let mlp = layer.dense_4h_to_h.forward(&inner, adapter)?;
            xs = ((ln2 * alpha)? + mlp)?;
        }
        self.final_layernorm.forward(&xs)
    }

    /// The additive mask of a fresh sequence: everything before `<sop>` is visible to all
    /// (bidirectional Part A), Part B is causal.
    fn prefix_mask(&self, len: usize, context_length: usize) -> candle_core::Result<Tensor> {
        let data: Vec<f32> = (0..len)
            .flat_map(|i| {
                (0..len).map(move |j| {
                    if j < context_length || j <= i {
                        0.0
                    } else {
                        -10_000.0
                    }
                })
            })
            .collect();
        Tensor::from_vec(data, (len, len), &self.device)?.to_dtype(self.cos.dtype())
    }

    /// Runs a whole fresh sequence whose Part B starts at `context_length` (the index of
    /// `<sop>`) and whose blank is at `mask_position`; returns hidden states [len, hidden].
    /// For tests of the attention pattern; generation goes through [`CausalLm::forward`].
    pub fn hidden_states(
        &mut self,
        ids: &[u32],
        context_length: usize,
        mask_position: usize,
    ) -> Result<Tensor, LmError> {
        self.clear_cache();
        let (positions, blocks) = position_ids(ids.len(), context_length, mask_position);
        let mask = self.prefix_mask(ids.len(), context_length)?;
        let hidden = self.run(ids, &positions, &blocks, Some(&mask))?;
        self.clear_cache();
        Ok(hidden)
    }

    /// Logits of every position of a fresh sequence (see [`Self::hidden_states`]).
    pub fn all_logits(
        &mut self,
        ids: &[u32],
        context_length: usize,
        mask_position: usize,
    ) -> Result<Tensor, LmError> {
        let hidden = self.hidden_states(ids, context_length, mask_position)?;
        let adapter = self.adapter.clone();
        Ok(self
            .lm_head
            .forward(&hidden, adapter.as_deref())?
            .to_dtype(DType::F32)?)
    }
}

#[cfg(feature = "reference")]
fn check_all_used(adapter: &LoraAdapter, used: usize) -> Result<(), LmError> {
    if used != adapter.pairs.len() {
        let mut names: Vec<&String> = adapter.pairs.keys().collect();
        names.sort();
        return Err(LmError::Load(format!(
            "adapter `{}`: {} of its {} modules match no layer of the model (modules: {names:?})",
            adapter.name,
            adapter.pairs.len() - used,
            adapter.pairs.len()
        )));
    }
    Ok(())
}

#[cfg(feature = "reference")]
impl CausalLm for ChatGlm6b {
    /// At `pos == 0` the prompt gets `[gMASK] <sop>` appended and becomes Part A; every later
    /// token continues Part B.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, LmError> {
        if tokens.is_empty() {
            return Err(LmError::Validation("no tokens to run".into()));
        }
        let hidden = if pos == 0 {
            self.clear_cache();
            let mut ids = tokens.to_vec();
            ids.push(self.cfg.gmask_token_id);
            ids.push(self.cfg.bos_token_id);
            if ids.len() > self.cfg.max_sequence_length {
                return Err(LmError::Validation(format!(
                    "the prompt is {} tokens; ChatGLM-6B takes at most {}",
                    ids.len(),
                    self.cfg.max_sequence_length
                )));
            }
            let context_length = ids.len() - 1;
            let mask_position = ids.len() - 2;
            let (positions, blocks) = position_ids(ids.len(), context_length, mask_position);
            let mask = self.prefix_mask(ids.len(), context_length)?;
            let hidden = self.run(&ids, &positions, &blocks, Some(&mask))?;
            self.state = SequenceState {
                len: ids.len(),
                context_length,
                mask_position,
            };
            hidden
        } else {
            let SequenceState {
                len,
                context_length,
                mask_position,
            } = self.state;
            if len + tokens.len() > self.cfg.max_sequence_length {
                return Err(LmError::Validation(format!(
                    "the sequence reached ChatGLM-6B's {} tokens",
                    self.cfg.max_sequence_length
                )));
            }
            let positions = vec![mask_position as u32; tokens.len()];
            let blocks: Vec<u32> = (0..tokens.len())
                .map(|i| (len + i - context_length + 1) as u32)
                .collect();
            // New tokens see everything cached and, among themselves, only what came before.
            let total = len + tokens.len();
            let data: Vec<f32> = (0..tokens.len())
                .flat_map(|i| (0..total).map(move |j| if j <= len + i { 0.0 } else { -10_000.0 }))
                .collect();
            let mask = Tensor::from_vec(data, (tokens.len(), total), &self.device)?
                .to_dtype(self.cos.dtype())?;
            let hidden = self.run(tokens, &positions, &blocks, Some(&mask))?;
            self.state.len = total;
            hidden
        };
        let last = hidden.get(hidden.dim(0)? - 1)?.unsqueeze(0)?;
        let adapter = self.adapter.clone();
        Ok(self
            .lm_head
            .forward(&last, adapter.as_deref())?
            .flatten_all()?
            .to_dtype(DType::F32)?)
    }

    fn reset(&mut self) {
        self.clear_cache();
    }

    fn set_adapter(&mut self, adapter: Option<&str>) -> Result<(), LmError> {
        match adapter {
            None => {
                self.adapter = None;
                Ok(())
            }
            Some(name) if self.adapters.iter().any(|a| a == name) => {
                self.adapter = Some(name.to_owned());
                Ok(())
            }
            Some(name) => Err(LmError::UnknownAdapter(name.to_owned())),
        }
    }
}

/// The adapters a ChatGLM-6B checkpoint is served with.
#[cfg(feature = "reference")]
#[derive(Debug, Default, Clone)]
pub struct AdapterPlan {
    /// Merged into the weights at load.
    pub merge: Vec<LoraAdapter>,
    /// Kept beside the weights, chosen per request.
    pub attach: Vec<LoraAdapter>,
}

#[cfg(feature = "reference")]
impl AdapterPlan {
    pub fn apply(&self, model: &mut ChatGlm6b) -> Result<HashMap<String, bool>, LmError> {
        let mut applied = HashMap::new();
        for a in &self.merge {
            model.merge_adapter(a)?;
            applied.insert(a.name.clone(), true);
        }
        for a in &self.attach {
            model.attach_adapter(a)?;
            applied.insert(a.name.clone(), false);
        }
        Ok(applied)
    }
}
