//! The BERT-family transformer encoder (BERT, XLM-RoBERTa) on candle.
//!
//! Written here rather than taken from candle-transformers 0.11 because its encoders cannot
//! run in half precision: BERT builds the attention mask as `(1 - mask) * f32::MIN`, which is
//! `0 * -inf = NaN` once cast to f16/bf16, and XLM-RoBERTa adds an f32 mask to f16 scores.
//! Both families share one architecture here; they differ only in where positions start
//! (XLM-RoBERTa counts from `padding_idx + 1`) and in the weight-name prefix.
//!
//! Batches are packed, not padded (see [`TransformerEncoder::forward_packed`]): only
//! attention may see padding, and only when that is cheaper than running it per sequence.

use std::borrow::Cow;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{
    Activation, Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear,
};
use serde::Deserialize;

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
    /// Row 0 of the token-type table: a sentence is one segment, so one row serves all.
    token_type: Tensor,
    /// The whole table, for pairs (a cross-encoder's second segment is type 1 in BERT).
    token_types: Embedding,
    norm: LayerNorm,
}

/// A linear layer, y = x·Wᵀ + b, that keeps W transposed: [in, out], contiguous.
///
/// candle hands x·Wᵀ to gemm with W as stored, [out, in], a layout gemm repacks on every
/// call (15% of the time for 8 questions). Stored as [in, out], W is already in the
/// column order gemm's kernels read, and gemm's AVX-512 kernels then beat its AVX2 ones at
/// every batch size (see the x86-v4 note in Cargo.toml). Forward passes, best of 30,
/// MiniLM, 2 cores: one question 8.2 → 5.8 ms, one passage 12.0 → 8.6 ms, 32 questions
/// 102 → 93 ms.
pub(crate) struct Dense {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    pub(crate) fn new(weight: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    fn load(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let l = linear(in_dim, out_dim, vb)?;
        Self::new(l.weight(), l.bias().cloned())
    }

    /// `xs`: [tokens, in] → [tokens, out].
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.matmul(&self.weight_t)?;
        match &self.bias {
            Some(bias) => ys.broadcast_add(bias),
            None => Ok(ys),
        }
    }
}

/// Self-attention with the query, key and value projections fused into one matmul, and the
/// 1/sqrt(head_dim) scale folded into the query weights at load.
struct SelfAttention {
    qkv: Dense,
    output: Dense,
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
        let head_dim = h / cfg.num_attention_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let query = linear(h, h, vb.pp("self.query"))?;
        let key = linear(h, h, vb.pp("self.key"))?;
        let value = linear(h, h, vb.pp("self.value"))?;
        let bias = |l: &Linear| {
            l.bias()
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("attention projection without bias".into()))
        };
        let weight = Tensor::cat(
            &[
                (query.weight() * scale)?,
                key.weight().clone(),
                value.weight().clone(),
            ],
            0,
        )?;
        let bias = Tensor::cat(&[(bias(&query)? * scale)?, bias(&key)?, bias(&value)?], 0)?;
        Ok(Self {
            qkv: Dense::new(&weight, Some(bias))?,
            output: Dense::load(h, h, vb.pp("output.dense"))?,
            norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim,
        })
    }

    /// `xs`: [tokens, hidden], the sequences of `plan` end to end.
    fn forward(&self, xs: &Tensor, plan: &AttentionPlan) -> Result<Tensor> {
        let qkv = self.qkv.forward(xs)?;
        let context = match plan {
            AttentionPlan::Padded {
                batch,
                longest,
                gather,
                scatter,
                bias,
            } => {
                let padded = qkv
                    .index_select(gather, 0)?
                    .reshape((*batch, *longest, ()))?;
                self.attend(&padded, Some(bias))?.index_select(scatter, 0)?
            }
            AttentionPlan::Runs { runs } => {
                let mut parts = Vec::with_capacity(runs.len());
                let mut offset = 0;
                for &(len, count) in runs {
                    let rows = len * count;
                    let run = qkv.narrow(0, offset, rows)?.reshape((count, len, ()))?;
                    parts.push(self.attend(&run, None)?);
                    offset += rows;
                }
                match parts.len() {
                    1 => parts.swap_remove(0),
                    _ => Tensor::cat(&parts, 0)?,
                }
            }
        };
        self.norm.forward(&(self.output.forward(&context)? + xs)?)
    }

    /// `qkv`: [batch, len, 3 * hidden] → context [batch * len, hidden]. `bias` ([batch, heads,
    /// len, len], 0 or [`MASKED`]) hides padding from every query.
    fn attend(&self, qkv: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, _) = qkv.dims3()?;
        let qkv = qkv.reshape((b, l, 3, self.heads, self.head_dim))?;
        let part = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * l, self.heads * self.head_dim))
    }
}

/// Added to attention scores of padding: softmax gives it 0, and it stays finite in f16.
pub(crate) const MASKED: f32 = -10_000.0;

/// What running one more attention batch costs beyond its arithmetic, in floating-point
/// operations of the same time: about ten small kernels per batch and layer, each ~20 µs of
/// launch and dispatch.
const PER_SEQUENCE_OVERHEAD_FLOPS: f64 = 20e6;

/// How a batch's attention is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMode {
    /// Sequences sorted by length, each length's sequences batched together, never padded.
    /// Fastest on the CPU; measured with MiniLM on 2 cores (best of interleaved runs):
    /// 32 texts of 35 tokens took 249 ms batched against 282 ms one by one, while 32 texts
    /// of 18-52 tokens took 328 ms one by one against 417 ms padded into one masked block.
    ByLength,
    /// Equal lengths batched, mixed lengths padded into one masked block unless padding
    /// wastes more than running the lengths apart: for devices where every kernel launch
    /// counts (CUDA).
    Batched,
}

impl AttentionMode {
    /// The faster mode for `device`.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            Self::ByLength
        } else {
            Self::Batched
        }
    }
}

/// (length, count) runs of consecutive equal-length sequences.
pub(crate) fn runs_of(lengths: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &n in lengths {
        match runs.last_mut() {
            Some((len, count)) if *len == n => *count += 1,
            _ => runs.push((n, 1)),
        }
    }
    runs
}

/// How attention runs over a packed batch, chosen once per forward pass.
enum AttentionPlan {
    /// Mixed lengths, gathered into a padded [batch, longest] block for attention only (the
    /// projections and feed-forward stay packed); padding is masked as keys and dropped as
    /// queries.
    Padded {
        batch: usize,
        longest: usize,
        /// Packed row of each padded slot (padding points at any valid row).
        gather: Tensor,
        /// Padded slot of each packed row.
        scatter: Tensor,
        bias: Tensor,
    },
    /// (length, count) runs of consecutive equal-length sequences, each run's attention one
    /// batch: a reshape, nothing masked. One run when all lengths are equal (always so for
    /// one text).
    Runs { runs: Vec<(usize, usize)> },
}

impl AttentionPlan {
    fn new(
        lengths: &[usize],
        mode: AttentionMode,
        hidden: usize,
        heads: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let batch = lengths.len();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let runs = runs_of(lengths);
        if mode == AttentionMode::ByLength || runs.len() == 1 {
            return Ok(Self::Runs { runs });
        }
        // Attention arithmetic (scores and context, 4·len²·hidden) spent on padding, against
        // the fixed cost of running each sequence alone.
        let squares: f64 = lengths.iter().map(|&n| (n * n) as f64).sum();
        let wasted = 4.0 * hidden as f64 * (batch as f64 * (longest * longest) as f64 - squares);
        if wasted > runs.len() as f64 * PER_SEQUENCE_OVERHEAD_FLOPS {
            return Ok(Self::Runs { runs });
        }
        let mut gather = Vec::with_capacity(batch * longest);
        let mut scatter = Vec::with_capacity(lengths.iter().sum());
        let mut bias = Vec::with_capacity(batch * longest);
        let mut offset = 0u32;
        for (i, &n) in lengths.iter().enumerate() {
            for j in 0..longest {
                let real = j < n;
                gather.push(if real { offset + j as u32 } else { 0 });
                bias.push(if real { 0.0 } else { MASKED });
            }
            scatter.extend((0..n).map(|j| (i * longest + j) as u32));
            offset += n as u32;
        }
        Ok(Self::Padded {
            batch,
            longest,
            gather: Tensor::from_vec(gather, batch * longest, device)?,
            scatter: Tensor::from_slice(&scatter, scatter.len(), device)?,
            // Expanded once to the scores' shape: a same-shape add is candle's fast path, a
            // broadcast add over [batch, heads, len, len] is many times slower.
            bias: Tensor::from_vec(bias, (batch, 1, 1, longest), device)?
                .to_dtype(dtype)?
                .broadcast_as((batch, heads, longest, longest))?
                .contiguous()?,
        })
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Dense,
    act: Activation,
    output: Dense,
    norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        Ok(Self {
            attention: SelfAttention::load(vb.pp("attention"), cfg)?,
            intermediate: Dense::load(
                cfg.hidden_size,
                cfg.intermediate_size,
                vb.pp("intermediate.dense"),
            )?,
            act: cfg.hidden_act,
            output: Dense::load(
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

    fn forward(&self, xs: &Tensor, plan: &AttentionPlan) -> Result<Tensor> {
        let attended = self.attention.forward(xs, plan)?;
        let inner = self.intermediate.forward(&attended)?;
        let inner = match self.act {
            Activation::Gelu => crate::kernels::gelu_erf(inner)?,
            act => act.forward(&inner)?,
        };
        self.norm
            .forward(&(self.output.forward(&inner)? + attended)?)
    }
}

/// Token ids, their types (pairs only) and the sequence lengths, in the order attention runs.
type Sorted<'a> = (Cow<'a, [u32]>, Option<Cow<'a, [u32]>>, Cow<'a, [usize]>);

/// A BERT-family encoder: token ids in, one hidden state per token out.
pub struct TransformerEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    positions: Positions,
    pad_id: u32,
    max_positions: usize,
    hidden_size: usize,
    heads: usize,
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
        let token_types = embedding(
            cfg.type_vocab_size,
            cfg.hidden_size,
            e.pp("token_type_embeddings"),
        )?;
        let embeddings = Embeddings {
            word: embedding(cfg.vocab_size, cfg.hidden_size, e.pp("word_embeddings"))?,
            position: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                e.pp("position_embeddings"),
            )?,
            token_type: token_types.embeddings().get(0)?,
            token_types,
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
            hidden_size: cfg.hidden_size,
            heads: cfg.num_attention_heads,
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

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes sequences packed end to end, without padding: `ids` holds every sequence's
    /// tokens in order and `lengths[i]` the number of tokens of sequence i. Returns
    /// [tokens, hidden] in the model's dtype, rows in the order of `ids`.
    ///
    /// Packing keeps padding out of the projections and the feed-forward layers (nearly all
    /// the work): they run on the real tokens only. Attention runs as [`AttentionMode`] says
    /// for the device: batched by length on the CPU, batched (padded and masked where
    /// lengths differ) elsewhere.
    pub fn forward_packed(&self, ids: &[u32], lengths: &[usize]) -> Result<Tensor> {
        self.forward_packed_with(ids, lengths, AttentionMode::for_device(&self.device))
    }

    /// [`Self::forward_packed`] with attention computed as `mode` says (both give the same
    /// hidden states; tests compare them).
    pub fn forward_packed_with(
        &self,
        ids: &[u32],
        lengths: &[usize],
        mode: AttentionMode,
    ) -> Result<Tensor> {
        self.forward_segments(ids, None, lengths, mode)
    }

    /// [`Self::forward_packed`] for pairs: `type_ids[i]` is the segment (token type) of
    /// `ids[i]`, as the tokenizer's pair template gives it.
    pub fn forward_packed_pairs(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        lengths: &[usize],
    ) -> Result<Tensor> {
        if type_ids.len() != ids.len() {
            candle_core::bail!("{} type ids for {} tokens", type_ids.len(), ids.len());
        }
        self.forward_segments(
            ids,
            Some(type_ids),
            lengths,
            AttentionMode::for_device(&self.device),
        )
    }

    fn forward_segments(
        &self,
        ids: &[u32],
        type_ids: Option<&[u32]>,
        lengths: &[usize],
        mode: AttentionMode,
    ) -> Result<Tensor> {
        let total: usize = lengths.iter().sum();
        if lengths.is_empty() || total != ids.len() || lengths.contains(&0) {
            candle_core::bail!(
                "lengths {lengths:?} do not partition {} tokens into non-empty sequences",
                ids.len()
            );
        }
        let window = self.max_sequence_length();
        if let Some(n) = lengths.iter().find(|&&n| n > window) {
            candle_core::bail!(
                "sequence of {n} tokens is longer than the model's {window} positions"
            );
        }
        // ByLength: sort the sequences by length (stably) so that each length's sequences
        // are adjacent and share one attention batch; the rows are put back at the end.
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        if mode == AttentionMode::ByLength {
            order.sort_by_key(|&i| lengths[i]);
        }
        let sorted = order.iter().enumerate().any(|(at, &i)| at != i);
        let caller_lengths = lengths;
        let (ids, type_ids, lengths): Sorted = if sorted {
            let offsets: Vec<usize> = lengths
                .iter()
                .scan(0, |at, &n| {
                    let start = *at;
                    *at += n;
                    Some(start)
                })
                .collect();
            let reorder = |values: &[u32]| -> Vec<u32> {
                order
                    .iter()
                    .flat_map(|&i| &values[offsets[i]..offsets[i] + lengths[i]])
                    .copied()
                    .collect()
            };
            (
                reorder(ids).into(),
                type_ids.map(|t| reorder(t).into()),
                order.iter().map(|&i| lengths[i]).collect(),
            )
        } else {
            (ids.into(), type_ids.map(Cow::from), lengths.into())
        };
        let lengths: &[usize] = &lengths;

        let mut positions = Vec::with_capacity(total);
        for &n in lengths {
            positions.extend((0..n as u32).map(|j| match self.positions {
                Positions::FromZero => j,
                Positions::AfterPadding => self.pad_id + 1 + j,
            }));
        }
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let input_ids = Tensor::from_slice(&ids, total, &self.device)?;

        let e = &self.embeddings;
        let xs = (e.word.forward(&input_ids)? + e.position.forward(&positions)?)?;
        let xs = match &type_ids {
            Some(types) => {
                let types = Tensor::from_slice(types, total, &self.device)?;
                (xs + e.token_types.forward(&types)?)?
            }
            None => xs.broadcast_add(&e.token_type)?,
        };
        let mut xs = e.norm.forward(&xs)?;
        let plan = AttentionPlan::new(
            lengths,
            mode,
            self.hidden_size,
            self.heads,
            xs.dtype(),
            &self.device,
        )?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &plan)?;
        }
        if !sorted {
            return Ok(xs);
        }
        // Back to the caller's order: sequence i's rows start where the sorted packing put it.
        let mut sorted_offset = vec![0usize; order.len()];
        let mut at = 0;
        for &i in &order {
            sorted_offset[i] = at;
            at += caller_lengths[i];
        }
        let rows: Vec<u32> = (0..order.len())
            .flat_map(|i| {
                (sorted_offset[i]..sorted_offset[i] + caller_lengths[i]).map(|r| r as u32)
            })
            .collect();
        xs.index_select(&Tensor::from_vec(rows, total, &self.device)?, 0)
    }
}
