//! The BERT-family transformer encoder (BERT, XLM-RoBERTa) on candle.
//!
//! Written here rather than taken from candle-transformers 0.11 because its encoders cannot
//! run in half precision: BERT builds the attention mask as `(1 - mask) * f32::MIN`, which is
//! `0 * -inf = NaN` once cast to f16/bf16, and XLM-RoBERTa adds an f32 mask to f16 scores.
//! Both families share one architecture here; they differ only in where positions start
//! (XLM-RoBERTa counts from `padding_idx + 1`) and in the weight-name prefix.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{
    Activation, Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear,
};
use serde::Deserialize;

/// Added to attention scores of padding: small enough that softmax gives 0, finite in f16.
const MASKED: f64 = -10_000.0;

/// The fields of a Hugging Face `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// Where the positions of a sequence start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, … (BERT).
    FromZero,
    /// padding_idx + 1, padding_idx + 2, … (RoBERTa / XLM-RoBERTa).
    AfterPadding,
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(vb: VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                cfg.num_attention_heads
            );
        }
        Ok(Self {
            query: linear(h, h, vb.pp("self.query"))?,
            key: linear(h, h, vb.pp("self.key"))?,
            value: linear(h, h, vb.pp("self.value"))?,
            output: linear(h, h, vb.pp("output.dense"))?,
            norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    /// `bias`: [batch, 1, 1, len], 0 for tokens and MASKED for padding.
    fn forward(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, l, h) = xs.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(xs)?)?;
        let k = split(self.key.forward(xs)?)?;
        let v = split(self.value.forward(xs)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, h))?;
        self.norm.forward(&(self.output.forward(&context)? + xs)?)
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    act: Activation,
    output: Linear,
    norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        Ok(Self {
            attention: SelfAttention::load(vb.pp("attention"), cfg)?,
            intermediate: linear(
                cfg.hidden_size,
                cfg.intermediate_size,
                vb.pp("intermediate.dense"),
            )?,
            act: cfg.hidden_act,
            output: linear(
                cfg.intermediate_size,
                cfg.hidden_size,
                vb.pp("output.dense"),
            )?,
            norm: layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("output.LayerNorm"),
            )?,
        })
    }

    fn forward(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let attended = self.attention.forward(xs, bias)?;
        let inner = self.act.forward(&self.intermediate.forward(&attended)?)?;
        self.norm
            .forward(&(self.output.forward(&inner)? + attended)?)
    }
}

/// A BERT-family encoder: token ids in, one hidden state per token out.
pub struct TransformerEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    positions: Positions,
    pad_id: u32,
    max_positions: usize,
    dtype: DType,
    device: Device,
}

impl TransformerEncoder {
    /// Loads the weights under `prefix` (`bert`, `roberta`, …) when present, else at the root.
    pub fn load(vb: VarBuilder, cfg: &EncoderConfig, positions: Positions) -> Result<Self> {
        if let Some(kind) = cfg.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            candle_core::bail!("position_embedding_type `{kind}` is not supported (absolute only)");
        }
        let vb = ["bert", "roberta", "model"]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")))
            .map(|p| vb.pp(p))
            .unwrap_or(vb);
        let e = vb.pp("embeddings");
        let embeddings = Embeddings {
            word: embedding(cfg.vocab_size, cfg.hidden_size, e.pp("word_embeddings"))?,
            position: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(
                cfg.type_vocab_size,
                cfg.hidden_size,
                e.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, e.pp("LayerNorm"))?,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            positions,
            pad_id: cfg.pad_token_id,
            max_positions: cfg.max_position_embeddings,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Longest sequence the position table allows.
    pub fn max_sequence_length(&self) -> usize {
        match self.positions {
            Positions::FromZero => self.max_positions,
            Positions::AfterPadding => self.max_positions.saturating_sub(self.pad_id as usize + 1),
        }
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes right-padded sequences. `lengths[i]` is the number of real tokens of row i;
    /// returns [batch, len, hidden] in the model's dtype.
    pub fn forward(&self, input_ids: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        if lengths.len() != b || lengths.iter().any(|&n| n > l) {
            candle_core::bail!("lengths {lengths:?} do not fit input of shape ({b}, {l})");
        }
        if l > self.max_sequence_length() {
            candle_core::bail!(
                "sequence of {l} tokens is longer than the model's {} positions",
                self.max_sequence_length()
            );
        }
        let mut positions = Vec::with_capacity(b * l);
        let mut bias = Vec::with_capacity(b * l);
        for &n in lengths {
            for j in 0..l {
                let real = j < n;
                positions.push(match (self.positions, real) {
                    (Positions::FromZero, _) => j as u32,
                    (Positions::AfterPadding, true) => self.pad_id + 1 + j as u32,
                    (Positions::AfterPadding, false) => self.pad_id,
                });
                bias.push(if real { 0f32 } else { MASKED as f32 });
            }
        }
        let positions = Tensor::from_vec(positions, (b, l), &self.device)?;
        let bias = Tensor::from_vec(bias, (b, 1, 1, l), &self.device)?.to_dtype(self.dtype)?;
        let token_types = input_ids.zeros_like()?;

        let e = &self.embeddings;
        let xs = (e.word.forward(input_ids)?
            + e.position.forward(&positions)?
            + e.token_type.forward(&token_types)?)?;
        let mut xs = e.norm.forward(&xs)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &bias)?;
        }
        Ok(xs)
    }
}
