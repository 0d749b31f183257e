//! One causal decoder that every batched family is an instance of: Llama (SmolLM2), Qwen2,
//! GLM-4 (GGUF `glm4`, GLM-4-0414 safetensors) and ChatGLM2/3 / GLM-4-9B-chat. They differ
//! only in what [`DecoderSpec`] says and in the names of their tensors (see `families`).
//!
//! A forward takes a [`Batch`]: the new tokens of several sequences, flattened into rows,
//! each sequence with its positions, its KV blocks and its adapter. Every matmul runs once
//! per layer for the whole batch; attention goes per sequence over the engine's cache.

use candle_core::{DType, Device, Tensor};

use crate::ComputePath;
use crate::attention::{
    AttnShape, Segments, SeqRows, StepRows, TensorStep, attention, causal_attention_train,
    causal_attention_train_segments,
};
use crate::error::LmError;
use crate::kv::{KvCache, KvShape, LayerKv};
use crate::layers::{Adapters, Embedding, Linear, Mlp, Norm, RowAdapters};
use crate::lora::{LoraAdapter, TrainLora};
use crate::rotary::Rotary;
use crate::transfer;

/// The new tokens of one step, for several sequences.
#[derive(Clone, Default)]
pub struct Batch {
    /// Token of every row.
    pub tokens: Vec<u32>,
    /// Position of every row in its sequence.
    pub positions: Vec<u32>,
    /// The sequences, in row order.
    pub seqs: Vec<SeqRows>,
    /// Adapter of every run of rows.
    pub adapters: Adapters,
    /// Rows whose next-token logits are wanted, in the order they are returned.
    pub logit_rows: Vec<u32>,
}

impl Batch {
    /// Appends a sequence's new tokens; `logits`: return the logits of its last row.
    pub fn push(
        &mut self,
        tokens: &[u32],
        first_pos: usize,
        blocks: &[u32],
        adapter: Option<std::sync::Arc<crate::lora::LoraAdapter>>,
        logits: bool,
    ) {
        let start = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        self.positions
            .extend((first_pos..first_pos + tokens.len()).map(|p| p as u32));
        self.seqs.push(SeqRows {
            start,
            len: tokens.len(),
            first_pos,
            blocks: blocks.to_vec(),
            bidirectional: 0,
        });
        self.adapters.groups.push(crate::layers::RowGroup {
            start,
            len: tokens.len(),
            adapter,
        });
        if logits {
            self.logit_rows.push((start + tokens.len() - 1) as u32);
        }
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Makes the first `tokens` tokens of the sequence pushed last see each other
    /// (ChatGLM-6B's prompt; give it with every step of the sequence, its 2-D positions
    /// follow from it). The whole part must be in the cache by the end of the step.
    pub fn bidirectional(&mut self, tokens: usize) {
        if let Some(s) = self.seqs.last_mut() {
            s.bidirectional = tokens;
        }
    }
}

/// A model the engine can batch.
pub trait BatchModel: Send + Sync {
    /// Runs one step; returns f32 logits [batch.logit_rows.len(), vocab].
    fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor, LmError>;
    /// What the KV cache must hold per token.
    fn kv_shape(&self) -> KvShape;
    /// Tokens every prompt must start with (ChatGLM2/3's `[gMASK] sop`).
    fn prompt_prefix(&self) -> &[u32] {
        &[]
    }
    /// Tokens every prompt must end with (ChatGLM-6B's `[gMASK] <sop>`).
    fn prompt_suffix(&self) -> &[u32] {
        &[]
    }
    /// The prompt up to its suffix's last token but one is read bidirectionally
    /// ([`Batch::bidirectional`]): it must be prefilled in one step, and its K/V depend
    /// on all of it, so no prefix of it can be shared.
    fn bidirectional_prompt(&self) -> bool {
        false
    }
    fn device(&self) -> &Device;
    /// The dtype K/V take on the tensor path.
    fn kv_dtype(&self) -> DType;
    /// Which code runs its forward; the KV cache must be laid out for it.
    fn compute_path(&self) -> ComputePath;
    /// Names of every linear module (PEFT's), with (in, out) features: adapters are
    /// checked against them when loaded.
    fn linear_modules(&self) -> Vec<(String, usize, usize)>;
    /// For a layer whose output rows the file stores in another order than the Hugging Face
    /// checkpoint: row i of the layer is row `perm[i]` of the checkpoint's.
    fn lora_output_permutation(&self, _module: &str) -> Option<Vec<u32>> {
        None
    }
    /// The model as `Any`, so that a trainer can take back the [`Decoder`] a loader built.
    fn into_any(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn std::any::Any + Send + Sync>;
}

/// Sizes and variants of a decoder.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
}

/// Query, key and value projections.
pub enum Qkv {
    Split {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// One matrix giving [q | k | v] (the GLM family's query_key_value).
    Fused(Linear),
}

/// One transformer block: x + post_attn(attn(attn_norm(x))), then h + post_ffn(mlp(ffn_norm(h))).
pub struct Block {
    pub attn_norm: Norm,
    pub qkv: Qkv,
    pub o: Linear,
    pub post_attn_norm: Option<Norm>,
    pub ffn_norm: Norm,
    pub mlp: Mlp,
    pub post_ffn_norm: Option<Norm>,
}

/// ChatGLM-6B's departures from a causal decoder (with [`Rotary::two_d`] positions).
#[derive(Debug, Clone)]
pub struct BlankInfilling {
    /// `[gMASK] <sop>`, appended to every prompt; the prompt through `[gMASK]` is read
    /// bidirectionally, what follows `<sop>` fills the blank.
    pub suffix: Vec<u32>,
    /// DeepNorm: each sub-layer's residual is its normalised input times this, not its
    /// input.
    pub alpha: f64,
    /// The fused query_key_value gives each head's [q | k | v] in turn; the loader put
    /// its rows in [all q | all k | all v] order, and an adapter's B rows follow.
    pub head_major_qkv: bool,
}

/// What every block of a step reads on the device, uploaded before the first.
struct DeviceStep {
    adapters: RowAdapters,
    /// On a cache of tensors, what every layer's attention reads.
    tensors: Option<TensorStep>,
}

pub struct Decoder {
    pub spec: DecoderSpec,
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub final_norm: Option<Norm>,
    pub lm_head: Linear,
    pub rotary: Rotary,
    pub device: Device,
    /// Activations' dtype (f32 on the CPU).
    pub act_dtype: DType,
    /// Kernels or tensor ops (always tensors off the CPU).
    pub compute: ComputePath,
    pub prefix: Vec<u32>,
    /// GGUF Llama: llama.cpp stores q/k rows permuted so that rotary pairs are adjacent.
    pub permuted_qk: bool,
    /// ChatGLM-6B.
    pub infilling: Option<BlankInfilling>,
}

impl Decoder {
    /// The same decoder on `compute` (tensors always off the CPU).
    pub fn with_compute(mut self, compute: ComputePath) -> Self {
        self.compute = ComputePath::on(compute, &self.device);
        self
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            heads: self.spec.heads,
            kv_heads: self.spec.kv_heads,
            head_dim: self.spec.head_dim,
        }
    }

    fn block_forward(
        &self,
        index: usize,
        block: &Block,
        x: &Tensor,
        batch: &Batch,
        step: &DeviceStep,
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let a = &step.adapters;
        let shape = self.attn_shape();
        let rotary_positions = self.rotary_positions(batch);
        self.block_apply(
            block,
            x,
            &|l, x| l.forward(x, a),
            &|n, x| n.forward(x),
            &|m, x| m.forward(x, a, self.compute),
            &mut |q, k, v| {
                attention(
                    index,
                    (q, k, v),
                    StepRows {
                        positions: &batch.positions,
                        rotary_positions: rotary_positions.as_deref(),
                        seqs: &batch.seqs,
                        tensors: step.tensors.as_ref(),
                    },
                    shape,
                    &self.rotary,
                    cache,
                )
            },
        )
    }

    /// A block's structure, once for serving and for training: the closures say how a
    /// linear layer, a norm, the MLP and attention run.
    #[allow(clippy::type_complexity)]
    fn block_apply(
        &self,
        block: &Block,
        x: &Tensor,
        linear: &dyn Fn(&Linear, &Tensor) -> candle_core::Result<Tensor>,
        norm: &dyn Fn(&Norm, &Tensor) -> candle_core::Result<Tensor>,
        mlp: &dyn Fn(&Mlp, &Tensor) -> candle_core::Result<Tensor>,
        attend: &mut dyn FnMut(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let h = norm(&block.attn_norm, x)?;
        let (q, k, v) = match &block.qkv {
            Qkv::Split { q, k, v } => (linear(q, &h)?, linear(k, &h)?, linear(v, &h)?),
            Qkv::Fused(qkv) => {
                let y = linear(qkv, &h)?;
                let qw = self.spec.heads * self.spec.head_dim;
                let kw = self.spec.kv_heads * self.spec.head_dim;
                (
                    y.narrow(1, 0, qw)?,
                    y.narrow(1, qw, kw)?,
                    y.narrow(1, qw + kw, kw)?,
                )
            }
        };
        let ctx = attend(&q, &k, &v)?;
        let mut attn = linear(&block.o, &ctx.to_dtype(self.act_dtype)?)?;
        if let Some(n) = &block.post_attn_norm {
            attn = norm(n, &attn)?;
        }
        // The residual: the input, or with DeepNorm the normalised input scaled.
        let residual = |x: &Tensor, h: &Tensor| match &self.infilling {
            Some(b) => h.to_dtype(x.dtype())? * b.alpha,
            None => Ok(x.clone()),
        };
        let dtype = x.dtype();
        let x = (residual(x, &h)? + attn.to_dtype(dtype)?)?;
        let h = norm(&block.ffn_norm, &x)?;
        let mut m = mlp(&block.mlp, &h)?;
        if let Some(n) = &block.post_ffn_norm {
            m = norm(n, &m)?;
        }
        let dtype = x.dtype();
        residual(&x, &h)? + m.to_dtype(dtype)?
    }

    /// The training forward: logits [batch, tokens, vocab] of `tokens` [batch, tokens] (u32),
    /// every sequence from position 0, causal, without a KV cache, on differentiable ops only,
    /// with `lora`'s pairs added to the layers they target. The same blocks as
    /// [`BatchModel::forward`]; the weights must be dense ([`Decoder::into_training`]).
    /// Right-padded batches need no attention mask (a token never sees a later one).
    /// ChatGLM-6B's rows here have no bidirectional part; give its prompts' with
    /// [`Decoder::forward_train_segments`].
    /// It is [`Decoder::embed_train`], [`Decoder::block_train`] for every block, then
    /// [`Decoder::head_train`]: a trainer may run the blocks one by one (to recompute them in
    /// the backward pass instead of keeping their activations).
    pub fn forward_train(&self, tokens: &Tensor, lora: &dyn TrainLora) -> Result<Tensor, LmError> {
        let (batch, len) = tokens.dims2()?;
        let mut x = self.embed_train(tokens)?;
        for index in 0..self.blocks.len() {
            x = self.block_train(index, &x, lora, (batch, len))?;
        }
        let logits = self.head_train(&x, lora)?;
        Ok(logits.reshape((batch, len, self.spec.vocab))?)
    }

    /// The hidden states [batch·tokens, hidden] that enter the first block, for `tokens`
    /// [batch, tokens] (checked against the context and the vocabulary).
    pub fn embed_train(&self, tokens: &Tensor) -> Result<Tensor, LmError> {
        let (batch, len) = tokens.dims2()?;
        if batch == 0 || len == 0 {
            return Err(LmError::Validation("an empty training batch".into()));
        }
        if len > self.spec.context_length.min(self.rotary.max_positions) {
            return Err(LmError::Validation(format!(
                "{len} tokens are past the model's context of {} tokens",
                self.spec.context_length
            )));
        }
        let ids = transfer::read_back::<u32>(&tokens.flatten_all()?)?;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.spec.vocab) {
            return Err(LmError::Validation(format!(
                "token id {id} is outside the vocabulary of {}",
                self.spec.vocab
            )));
        }
        Ok(self
            .embed
            .forward(&ids, &self.device)?
            .to_dtype(self.act_dtype)?)
    }

    /// Block `index` of the training forward on hidden states `x` [batch·tokens, hidden] of
    /// a (batch, tokens) batch.
    pub fn block_train(
        &self,
        index: usize,
        x: &Tensor,
        lora: &dyn TrainLora,
        (batch, len): (usize, usize),
    ) -> Result<Tensor, LmError> {
        let shape = self.attn_shape();
        self.block_train_with(index, x, lora, &mut |q, k, v| {
            causal_attention_train((q, k, v), (batch, len), shape, &self.rotary)
        })
    }

    /// Block `index` of the training forward with the given attention.
    #[allow(clippy::type_complexity)]
    fn block_train_with(
        &self,
        index: usize,
        x: &Tensor,
        lora: &dyn TrainLora,
        attend: &mut dyn FnMut(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Tensor, LmError> {
        let block = self.blocks.get(index).ok_or_else(|| {
            LmError::Validation(format!(
                "block {index} of a model with {} blocks",
                self.blocks.len()
            ))
        })?;
        Ok(self.block_apply(
            block,
            x,
            &|l, x| l.forward_train(x, lora),
            &|n, x| n.forward_train(x),
            &|m, x| m.forward_train(x, lora),
            attend,
        )?)
    }

    /// [`Decoder::block_train`] on rows of packed examples ([`Segments`]): each example
    /// attends only to itself, from position 0, as it would alone in a row. ChatGLM-6B's
    /// examples give their prompts' bidirectional parts there ([`Segments::from_examples`],
    /// [`Segments::rows`]): the part serving reads both ways ([`Batch::bidirectional`]), and
    /// the 2-D positions that follow from it.
    pub fn block_train_segments(
        &self,
        index: usize,
        x: &Tensor,
        lora: &dyn TrainLora,
        segments: &Segments,
    ) -> Result<Tensor, LmError> {
        let shape = self.attn_shape();
        self.block_train_with(index, x, lora, &mut |q, k, v| {
            causal_attention_train_segments((q, k, v), shape, &self.rotary, segments)
        })
    }

    /// [`Decoder::forward_train`] on rows of packed examples ([`Segments`], one row of
    /// `tokens` per row of the segments).
    pub fn forward_train_segments(
        &self,
        tokens: &Tensor,
        lora: &dyn TrainLora,
        segments: &Segments,
    ) -> Result<Tensor, LmError> {
        let (batch, len) = tokens.dims2()?;
        if (batch, len) != (segments.batch(), segments.tokens()) {
            return Err(LmError::Validation(format!(
                "{batch} rows of {len} tokens, but segments for {} rows of {}",
                segments.batch(),
                segments.tokens()
            )));
        }
        let mut x = self.embed_train(tokens)?;
        for index in 0..self.blocks.len() {
            x = self.block_train_segments(index, &x, lora, segments)?;
        }
        let logits = self.head_train(&x, lora)?;
        Ok(logits.reshape((batch, len, self.spec.vocab))?)
    }

    /// The final norm and the LM head on hidden states [rows, hidden]: logits [rows, vocab]
    /// (a trainer may pass only the rows whose logits the loss needs).
    pub fn head_train(&self, x: &Tensor, lora: &dyn TrainLora) -> Result<Tensor, LmError> {
        let x = match &self.final_norm {
            Some(n) => n.forward_train(x)?,
            None => x.clone(),
        };
        Ok(self.lm_head.forward_train(&x, lora)?)
    }

    /// The same model made trainable: every weight dense in `dtype` (GGUF blocks
    /// dequantized, the token table too), activations in `dtype`, on the tensor path.
    /// What [`Decoder::forward_train`] needs; f64 on the CPU for gradient checks.
    pub fn into_training(mut self, dtype: DType) -> Result<Self, LmError> {
        let device = self.device.clone();
        self.embed = self.embed.to_dense(dtype, &device)?;
        for l in self.linears_mut() {
            l.make_dense(dtype, &device)?;
        }
        // A tied output layer (its weight the token table, value for value) shares the
        // embedding's dense table: one copy, not two.
        if let Some(table) = self.embed.dense_table()
            && self.lm_head.dense_weight_is(table)?
        {
            let table = table.clone();
            self.lm_head.share_dense_table(&table)?;
        }
        for b in &mut self.blocks {
            for n in [Some(&mut b.attn_norm), b.post_attn_norm.as_mut()]
                .into_iter()
                .chain([Some(&mut b.ffn_norm), b.post_ffn_norm.as_mut()])
                .flatten()
            {
                n.to_dtype(dtype)?;
            }
        }
        if let Some(n) = &mut self.final_norm {
            n.to_dtype(dtype)?;
        }
        self.act_dtype = dtype;
        self.compute = ComputePath::Tensors;
        Ok(self)
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = Vec::new();
        for b in &mut self.blocks {
            match &mut b.qkv {
                Qkv::Split { q, k, v } => all.extend([q, k, v]),
                Qkv::Fused(l) => all.push(l),
            }
            all.push(&mut b.o);
            all.extend(b.mlp.linears_mut());
        }
        all.push(&mut self.lm_head);
        all
    }

    /// With 2-D positions, every row's first positions then its second ones.
    fn rotary_positions(&self, batch: &Batch) -> Option<Vec<u32>> {
        if !self.rotary.two_d {
            return None;
        }
        let rows = batch.rows();
        let mut out = vec![0; 2 * rows];
        for s in &batch.seqs {
            for i in 0..s.len {
                let (first, second) = Rotary::two_d_positions(s.first_pos + i, s.bidirectional);
                out[s.start + i] = first;
                out[rows + s.start + i] = second;
            }
        }
        Some(out)
    }

    /// The logit rows (None: no row wants logits) and every row's adapter, on the device in
    /// one upload: a step with adapters costs no upload more than one without. The kernel
    /// path keeps the runs of rows on the host ([`RowAdapters::runs`]).
    fn step_rows(&self, batch: &Batch) -> candle_core::Result<(Option<Tensor>, RowAdapters)> {
        let (rows, wanted) = (batch.rows(), batch.logit_rows.len());
        let slots = match self.compute {
            ComputePath::Kernels => None,
            ComputePath::Tensors => batch.adapters.row_slots(rows)?,
        };
        let Some(slots) = slots else {
            let adapters = match self.compute {
                ComputePath::Kernels => RowAdapters::runs(&batch.adapters, rows)?,
                ComputePath::Tensors => RowAdapters::none(),
            };
            let logit_rows = match wanted {
                0 => None,
                n => Some(transfer::upload_slice(&batch.logit_rows, n, &self.device)?),
            };
            return Ok((logit_rows, adapters));
        };
        let mut ids = Vec::with_capacity(wanted + rows);
        ids.extend_from_slice(&batch.logit_rows);
        ids.extend_from_slice(&slots.slots);
        let ids = transfer::upload(ids, wanted + rows, &self.device)?;
        let logit_rows = match wanted {
            0 => None,
            n => Some(ids.narrow(0, 0, n)?),
        };
        let adapters = RowAdapters::new(slots.adapters, ids.narrow(0, wanted, rows)?)?;
        Ok((logit_rows, adapters))
    }

    fn forward_inner(&self, batch: &Batch, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let (logit_rows, adapters) = self.step_rows(batch)?;
        let mut x = self
            .embed
            .forward(&batch.tokens, &self.device)?
            .to_dtype(self.act_dtype)?;
        // On a cache of tensors, what every layer's attention reads on the device is
        // uploaded here, once for the step.
        let tensors = match cache.layers.first() {
            Some(LayerKv::Tensor { .. }) => Some(TensorStep::new(
                &batch.positions,
                self.rotary_positions(batch).as_deref(),
                &batch.seqs,
                &self.rotary,
                self.act_dtype,
                &self.device,
            )?),
            _ => None,
        };
        let step = DeviceStep { adapters, tensors };
        for (i, block) in self.blocks.iter().enumerate() {
            x = self.block_forward(i, block, &x, batch, &step, cache)?;
        }
        let Some(rows) = logit_rows else {
            return Tensor::zeros((0, self.spec.vocab), DType::F32, &self.device);
        };
        let mut last = x.index_select(&rows, 0)?;
        if let Some(n) = &self.final_norm {
            last = n.forward(&last)?;
        }
        // The adapters of the logit rows, picked on the device.
        self.lm_head
            .forward(&last, &step.adapters.select(&rows, &batch.logit_rows)?)?
            .to_dtype(DType::F32)
    }

    pub fn linears(&self) -> Vec<&Linear> {
        let mut all = Vec::new();
        for b in &self.blocks {
            match &b.qkv {
                Qkv::Split { q, k, v } => all.extend([q, k, v]),
                Qkv::Fused(l) => all.push(l),
            }
            all.push(&b.o);
            all.extend(b.mlp.linears());
        }
        all.push(&self.lm_head);
        all
    }
}

impl BatchModel for Decoder {
    fn into_any(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor, LmError> {
        if batch.rows() == 0 {
            return Err(LmError::Inference("an empty batch".into()));
        }
        if let Some(&p) = batch.positions.iter().max()
            && p as usize >= self.spec.context_length.min(self.rotary.max_positions)
        {
            return Err(LmError::Validation(format!(
                "position {p} is past the model's context of {} tokens",
                self.spec.context_length
            )));
        }
        Ok(self.forward_inner(batch, cache)?)
    }

    fn kv_shape(&self) -> KvShape {
        KvShape {
            layers: self.blocks.len(),
            kv_heads: self.spec.kv_heads,
            head_dim: self.spec.head_dim,
        }
    }

    fn prompt_prefix(&self) -> &[u32] {
        &self.prefix
    }

    fn prompt_suffix(&self) -> &[u32] {
        self.infilling.as_ref().map_or(&[], |b| &b.suffix)
    }

    fn bidirectional_prompt(&self) -> bool {
        self.infilling.is_some()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn kv_dtype(&self) -> DType {
        self.act_dtype
    }

    fn compute_path(&self) -> ComputePath {
        self.compute
    }

    fn linear_modules(&self) -> Vec<(String, usize, usize)> {
        self.linears()
            .into_iter()
            .map(|l| (l.module().to_owned(), l.in_features(), l.out_features()))
            .collect()
    }

    fn lora_output_permutation(&self, module: &str) -> Option<Vec<u32>> {
        if self
            .infilling
            .as_ref()
            .is_some_and(|b| b.head_major_qkv && module.ends_with("attention.query_key_value"))
        {
            return Some(head_major_qkv_rows(self.spec.heads, self.spec.head_dim));
        }
        if !self.permuted_qk {
            return None;
        }
        let heads = if module.ends_with("self_attn.q_proj") {
            self.spec.heads
        } else if module.ends_with("self_attn.k_proj") {
            self.spec.kv_heads
        } else {
            return None;
        };
        Some(qk_permutation(heads, self.spec.head_dim))
    }
}

/// Checks every module of `adapter` against the layers of `model` (names and shapes), and
/// readies its weights for them: on the model's device, in the activations' dtype, with
/// B's rows in the order the model's layer produces them.
pub fn prepare_adapter(
    mut adapter: LoraAdapter,
    model: &dyn BatchModel,
) -> Result<LoraAdapter, LmError> {
    let modules = model.linear_modules();
    let device = model.device().clone();
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        model.kv_dtype()
    };
    let mut names: Vec<String> = adapter.pairs.keys().cloned().collect();
    names.sort();
    for name in names {
        let Some((_, inp, out)) = modules.iter().find(|(m, _, _)| *m == name) else {
            let example = modules.first().map(|m| m.0.as_str()).unwrap_or_default();
            return Err(LmError::Validation(format!(
                "adapter `{}`: module `{name}` matches no layer of the model (its modules are \
                 named like `{example}`)",
                adapter.name
            )));
        };
        let Some(pair) = adapter.pairs.get_mut(&name) else {
            continue;
        };
        let (_, a_in) = pair.a.dims2()?;
        let (b_out, _) = pair.b.dims2()?;
        if a_in != *inp || b_out != *out {
            return Err(LmError::Validation(format!(
                "adapter `{}`: module `{name}` is [{out}, {inp}] in the model, but its A takes \
                 {a_in} inputs and its B gives {b_out} outputs",
                adapter.name
            )));
        }
        // host: an adapter's pairs move to the device once, when it loads.
        pair.a = pair.a.to_device(&device)?.to_dtype(dtype)?;
        let mut b = pair.b.to_device(&device)?.to_dtype(dtype)?; // host: the same
        if let Some(perm) = model.lora_output_permutation(&name) {
            let perm = Tensor::from_vec(perm, b_out, &device)?; // host: the same
            b = b.index_select(&perm, 0)?;
        }
        pair.b = b;
    }
    Ok(adapter)
}

/// [all q | all k | all v] rows of a query_key_value that gives each head's [q | k | v] in
/// turn (ChatGLM-6B): row `p·heads·head_dim + h·head_dim + j` is the checkpoint's row
/// `h·3·head_dim + p·head_dim + j`.
pub fn head_major_qkv_rows(heads: usize, head_dim: usize) -> Vec<u32> {
    (0..3 * heads * head_dim)
        .map(|row| {
            let (part, rest) = (row / (heads * head_dim), row % (heads * head_dim));
            let (h, j) = (rest / head_dim, rest % head_dim);
            (h * 3 * head_dim + part * head_dim + j) as u32
        })
        .collect()
}

/// llama.cpp's q/k row order for `heads` heads of `head_dim`: within a head, row 2i + j of
/// the file is row j·head_dim/2 + i of the checkpoint.
pub fn qk_permutation(heads: usize, head_dim: usize) -> Vec<u32> {
    (0..heads * head_dim)
        .map(|row| {
            let (h, r) = (row / head_dim, row % head_dim);
            (h * head_dim + (r % 2) * (head_dim / 2) + r / 2) as u32
        })
        .collect()
}

/// One sequence run straight on a model with a cache of its own, outside the engine: for
/// tests (logits against reference implementations) and benchmarks.
pub struct Solo {
    cache: KvCache,
    blocks: Vec<u32>,
    len: usize,
    adapter: Option<std::sync::Arc<crate::lora::LoraAdapter>>,
    bidirectional: usize,
}

impl Solo {
    /// Room for `max_tokens` tokens, in an f32 cache on the CPU (the tensor path's cache
    /// on a model that takes that path).
    pub fn new(model: &dyn BatchModel, max_tokens: usize) -> Result<Self, LmError> {
        Self::with_kv_dtype(model, max_tokens, crate::kv::KvDtype::F32)
    }

    /// Room for `max_tokens` tokens, in a host cache of `dtype` (kernel path) or the tensor
    /// path's cache.
    pub fn with_kv_dtype(
        model: &dyn BatchModel,
        max_tokens: usize,
        dtype: crate::kv::KvDtype,
    ) -> Result<Self, LmError> {
        let cache = KvCache::new(
            model.kv_shape(),
            max_tokens,
            dtype,
            model.device(),
            model.kv_dtype(),
            model.compute_path(),
        )?;
        let blocks = (0..cache.num_blocks as u32).collect();
        Ok(Self {
            cache,
            blocks,
            len: 0,
            adapter: None,
            bidirectional: 0,
        })
    }

    /// The first `tokens` tokens see each other ([`Batch::bidirectional`]).
    pub fn with_bidirectional(mut self, tokens: usize) -> Self {
        self.bidirectional = tokens;
        self
    }

    pub fn with_adapter(
        mut self,
        adapter: Option<std::sync::Arc<crate::lora::LoraAdapter>>,
    ) -> Self {
        self.adapter = adapter;
        self
    }

    /// Feeds `tokens` after what was fed before; the logits [vocab] of the last one.
    pub fn feed(&mut self, model: &dyn BatchModel, tokens: &[u32]) -> Result<Tensor, LmError> {
        if self.len + tokens.len() > self.cache.capacity_tokens() {
            return Err(LmError::Validation("the Solo cache is full".into()));
        }
        let mut batch = Batch::default();
        batch.push(tokens, self.len, &self.blocks, self.adapter.clone(), true);
        batch.bidirectional(self.bidirectional);
        let logits = model.forward(&batch, &mut self.cache)?;
        self.len += tokens.len();
        Ok(logits.get(0)?)
    }

    /// Tokens fed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
