//! Attention over the engine's paged KV cache, for a batch of sequences at once.
//!
//! Every row of the batch is one new token of some sequence, at its own position. New K/V
//! are rotated and written into the sequence's cache slots, then each row attends to every
//! cached token of its sequence up to its own position (causal). Grouped-query heads read
//! each key and value once for their whole group, straight from the cache: nothing is
//! copied or repeated per head.
//!
//! Two paths: on the CPU, the kernels' loops over the cache's own memory, split over rows,
//! KV groups and (for few long rows) chunks of tokens on the kernel pool;
//! on a GPU, candle ops (slot gather, one matmul per sequence and KV head group).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::kv::{BLOCK_SIZE, KvCache, LayerKv};
use crate::layers::cpu_f32;
use crate::rotary::{Rotary, RotaryAt, RotaryTables};
use crate::transfer;

/// One sequence's rows in a batch.
#[derive(Debug, Clone)]
pub struct SeqRows {
    /// First row of the batch that belongs to it.
    pub start: usize,
    /// Its rows (new tokens) in this step.
    pub len: usize,
    /// Position of its first new token (tokens already cached before this step).
    pub first_pos: usize,
    /// Its block table.
    pub blocks: Vec<u32>,
    /// Its first `bidirectional` tokens see each other (ChatGLM-6B's prompt, which must be
    /// in the cache by the end of the step that brings its first row); 0: causal.
    pub bidirectional: usize,
}

impl SeqRows {
    #[inline]
    pub fn slot(&self, pos: usize) -> usize {
        self.blocks[pos / BLOCK_SIZE] as usize * BLOCK_SIZE + pos % BLOCK_SIZE
    }

    /// How many of its tokens the row at `pos` sees: those up to its own, or the whole
    /// bidirectional part when it lies in it.
    #[inline]
    pub fn visible(&self, pos: usize) -> usize {
        (pos + 1).max(self.bidirectional.min(self.first_pos + self.len))
    }
}

/// Heads of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Element of a CPU cache.
trait KvElem: Copy + Send + Sync {
    fn store(x: f32) -> Self;
    /// The cache as the kernels read it.
    fn rows(cache: &[Self]) -> zhiku_kernels::KvRows<'_>;
}

impl KvElem for f32 {
    #[inline]
    fn store(x: f32) -> Self {
        x
    }
    fn rows(cache: &[Self]) -> zhiku_kernels::KvRows<'_> {
        zhiku_kernels::KvRows::F32(cache)
    }
}

impl KvElem for f16 {
    #[inline]
    fn store(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn rows(cache: &[Self]) -> zhiku_kernels::KvRows<'_> {
        use half::slice::HalfFloatSliceExt;
        zhiku_kernels::KvRows::F16(cache.reinterpret_cast())
    }
}

/// The rows of one step: every row's position and the sequences they belong to, and on the
/// tensor path what every layer's attention reads on the device ([`TensorStep`], uploaded
/// once per step).
#[derive(Clone, Copy)]
pub struct StepRows<'a> {
    pub positions: &'a [u32],
    /// Where each row rotates, if not at `positions`: with 2-D positions, every row's first
    /// position, then every row's second ([`Rotary::two_d_positions`]).
    pub rotary_positions: Option<&'a [u32]>,
    pub seqs: &'a [SeqRows],
    pub tensors: Option<&'a TensorStep>,
}

/// Rotates the new q/k rows, writes k/v to the cache, attends. q [rows, heads·head_dim],
/// k, v [rows, kv_heads·head_dim]; returns [rows, heads·head_dim].
pub fn attention(
    layer: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    step: StepRows<'_>,
    shape: AttnShape,
    rotary: &Rotary,
    cache: &mut KvCache,
) -> candle_core::Result<Tensor> {
    let device = q.device().clone();
    match &mut cache.layers[layer] {
        LayerKv::F32 { k: kc, v: vc } => {
            cpu_attention((q, k, v), step, shape, rotary, (kc, vc), &device)
        }
        LayerKv::F16 { k: kc, v: vc } => {
            cpu_attention((q, k, v), step, shape, rotary, (kc, vc), &device)
        }
        LayerKv::Tensor { k: kc, v: vc } => {
            let inputs = step.tensors.ok_or_else(|| {
                candle_core::Error::Msg(
                    "a KV cache of tensors needs the step's device inputs (TensorStep)".into(),
                )
            })?;
            tensor_attention((q, k, v), step.seqs, inputs, shape, (kc, vc))
        }
    }
}

fn cpu_attention<T: KvElem>(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    step: StepRows<'_>,
    shape: AttnShape,
    rotary: &Rotary,
    (kc, vc): (&mut [T], &mut [T]),
    device: &Device,
) -> candle_core::Result<Tensor> {
    let StepRows {
        positions,
        rotary_positions,
        seqs,
        ..
    } = step;
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let rows = positions.len();
    let width = kv_heads * d;
    let mut qv = cpu_f32(q)?;
    let mut kv = cpu_f32(k)?;
    let vv = cpu_f32(v)?;
    if qv.len() != rows * heads * d || kv.len() != rows * width || vv.len() != rows * width {
        candle_core::bail!("attention: q/k/v do not match {rows} rows of {shape:?}");
    }
    // Rotary on every head of q and k, each row at its own position(s).
    let at = |r: usize| -> (usize, usize) {
        match rotary_positions {
            Some(p) if p.len() == 2 * rows => (p[r] as usize, p[rows + r] as usize),
            Some(p) => (p[r] as usize, 0),
            None => (positions[r] as usize, 0),
        }
    };
    for r in 0..rows {
        let (first, second) = at(r);
        for h in qv[r * heads * d..(r + 1) * heads * d].chunks_exact_mut(d) {
            rotary.apply_at(h, first, second);
        }
        for h in kv[r * width..(r + 1) * width].chunks_exact_mut(d) {
            rotary.apply_at(h, first, second);
        }
    }
    // New K/V into their slots.
    for s in seqs {
        for i in 0..s.len {
            let r = s.start + i;
            let slot = s.slot(s.first_pos + i);
            let (src_k, src_v) = (
                &kv[r * width..(r + 1) * width],
                &vv[r * width..(r + 1) * width],
            );
            for (dst, x) in kc[slot * width..(slot + 1) * width].iter_mut().zip(src_k) {
                *dst = T::store(*x);
            }
            for (dst, x) in vc[slot * width..(slot + 1) * width].iter_mut().zip(src_v) {
                *dst = T::store(*x);
            }
        }
    }
    // Which sequence each row belongs to.
    let mut owner = vec![0usize; rows];
    for (si, s) in seqs.iter().enumerate() {
        owner[s.start..s.start + s.len].fill(si);
    }
    // Where each cached token's K/V row starts, per sequence, up to its last new token.
    let starts: Vec<Vec<usize>> = seqs
        .iter()
        .map(|s| {
            (0..s.first_pos + s.len)
                .map(|j| s.slot(j) * width)
                .collect()
        })
        .collect();
    // Each row attends to its sequence's tokens up to its own position (causal), or to
    // its sequence's whole bidirectional part.
    let tokens = (0..rows)
        .map(|r| {
            let n = seqs[owner[r]].visible(positions[r] as usize);
            starts[owner[r]].get(..n).ok_or_else(|| {
                candle_core::Error::Msg(format!("attention: row {r} at position {}", n - 1))
            })
        })
        .collect::<candle_core::Result<Vec<&[usize]>>>()?;
    let batch = zhiku_kernels::AttnBatch {
        q: &qv,
        heads,
        kv_heads,
        d,
        keys: T::rows(kc),
        values: T::rows(vc),
        tokens: &tokens,
        scale: 1.0 / (d as f32).sqrt(),
    };
    let mut out = vec![0f32; rows * heads * d];
    zhiku_kernels::attend_batch(&batch, &mut out).map_err(candle_core::Error::wrap)?;
    Tensor::from_vec(out, (rows, heads * d), device) // host: the kernel path, CPU only
}

/// What every layer's attention of one step reads on the device, made once per step
/// (each a single upload, see [`crate::transfer`]): the rotary tables gathered at the rows'
/// positions, every sequence's cache slots, and the causal masks of its prompt chunks
/// (a bidirectional part seen whole). A decode row (one new token) sees every cached token
/// of its sequence, so it needs no mask.
pub struct TensorStep {
    /// The rotary tables at each row's position, in the activations' dtype.
    rotary: RotaryAt,
    /// Every sequence's slots 0..total, one after another.
    slots: Tensor,
    seqs: Vec<SeqTensors>,
}

/// One sequence's part of a [`TensorStep`].
struct SeqTensors {
    /// Where its slots start in [`TensorStep::slots`], and how many (tokens cached after
    /// this step).
    slots_at: usize,
    total: usize,
    /// [1, rows, 1, total] f32: 0 where a row may look, −∞ past its position.
    mask: Option<Tensor>,
}

impl TensorStep {
    /// `rotary_positions`: where the rows rotate ([`StepRows::rotary_positions`]), if not
    /// at `positions`.
    pub fn new(
        positions: &[u32],
        rotary_positions: Option<&[u32]>,
        seqs: &[SeqRows],
        rotary: &Rotary,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let at = rotary_positions.unwrap_or(positions);
        let pos = transfer::upload_slice(at, at.len(), device)?;
        let rotary = rotary.at(&pos, dtype)?;
        let mut slots = Vec::new();
        let mut masks = Vec::new();
        let mut parts = Vec::with_capacity(seqs.len());
        for s in seqs {
            let total = s.first_pos + s.len;
            let slots_at = slots.len();
            slots.extend((0..total).map(|p| s.slot(p) as u32));
            let mask_at = (s.len > 1).then(|| {
                let at = masks.len();
                for i in 0..s.len {
                    let seen = s.visible(s.first_pos + i);
                    masks
                        .extend((0..total).map(|j| if j < seen { 0.0 } else { f32::NEG_INFINITY }));
                }
                at
            });
            parts.push((slots_at, total, mask_at));
        }
        let slot_count = slots.len();
        let slots = transfer::upload(slots, slot_count, device)?;
        let mask_count = masks.len();
        let masks = if mask_count > 0 {
            Some(transfer::upload(masks, mask_count, device)?)
        } else {
            None
        };
        let seqs = parts
            .into_iter()
            .zip(seqs)
            .map(|((slots_at, total, mask_at), s)| {
                let mask = match (mask_at, &masks) {
                    (Some(at), Some(m)) => Some(
                        m.narrow(0, at, s.len * total)?
                            .reshape((1, s.len, 1, total))?,
                    ),
                    _ => None,
                };
                Ok(SeqTensors {
                    slots_at,
                    total,
                    mask,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            rotary,
            slots,
            seqs,
        })
    }
}

fn tensor_attention(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    seqs: &[SeqRows],
    step: &TensorStep,
    shape: AttnShape,
    (kc, vc): (&Tensor, &Tensor),
) -> candle_core::Result<Tensor> {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let rows = q.dim(0)?;
    let q = step.rotary.apply(&q.reshape((rows, heads, d))?)?;
    let k = step
        .rotary
        .apply(&k.reshape((rows, kv_heads, d))?)?
        .reshape((rows, kv_heads * d))?
        .to_dtype(kc.dtype())?;
    let v = v.reshape((rows, kv_heads * d))?.to_dtype(vc.dtype())?;
    // Write new K/V: one copy per run of consecutive slots.
    for s in seqs {
        let mut i = 0;
        while i < s.len {
            let slot = s.slot(s.first_pos + i);
            let mut run = 1;
            while i + run < s.len && s.slot(s.first_pos + i + run) == slot + run {
                run += 1;
            }
            kc.slice_set(&k.narrow(0, s.start + i, run)?.contiguous()?, 0, slot)?;
            vc.slice_set(&v.narrow(0, s.start + i, run)?.contiguous()?, 0, slot)?;
            i += run;
        }
    }
    let group = heads / kv_heads;
    let mut outs = Vec::with_capacity(seqs.len());
    for (s, inputs) in seqs.iter().zip(&step.seqs) {
        let total = inputs.total;
        let slots = step.slots.narrow(0, inputs.slots_at, total)?;
        // [total, kv, d] -> [kv, total, d]
        let ks = kc
            .index_select(&slots, 0)?
            .reshape((total, kv_heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        let vs = vc
            .index_select(&slots, 0)?
            .reshape((total, kv_heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        // q rows of this sequence: [n, kv, group, d] -> [kv, n·group, d]
        let n = s.len;
        let qs = q
            .narrow(0, s.start, n)?
            .reshape((n, kv_heads, group, d))?
            .transpose(0, 1)?
            .reshape((kv_heads, n * group, d))?
            .to_dtype(ks.dtype())?;
        let mut scores =
            (qs.matmul(&ks.t()?)? * (1.0 / (d as f64).sqrt()))?.to_dtype(DType::F32)?;
        if let Some(mask) = &inputs.mask {
            scores = scores
                .reshape((kv_heads, n, group, total))?
                .broadcast_add(mask)?
                .reshape((kv_heads, n * group, total))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(vs.dtype())?;
        let ctx = probs
            .matmul(&vs)?
            .reshape((kv_heads, n, group, d))?
            .transpose(0, 1)?
            .reshape((n, heads * d))?;
        outs.push(ctx);
    }
    Tensor::cat(&outs, 0)?.to_dtype(q.dtype())
}

/// The examples packed side by side in the rows of a training batch: every token's position
/// in its own example, row-major [batch·tokens], a position 0 starting an example. Each
/// example attends only to itself (causally, but for its bidirectional part) and is rotated
/// from position 0, so that a packed row computes for each of its examples what a row of
/// its own would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    batch: usize,
    tokens: usize,
    positions: Vec<u32>,
    /// The bidirectional part of every token's example ([`SeqRows::bidirectional`]: its
    /// first so many tokens see each other, ChatGLM-6B's prompt through `[gMASK]`),
    /// row-major; 0: causal.
    bidirectional: Vec<u32>,
}

impl Segments {
    /// Rows of `tokens` tokens, row b holding examples of the lengths `rows[b]`, in order;
    /// the rest of a row (padding) is one more segment, which no real token sees.
    pub fn from_lengths(tokens: usize, rows: &[Vec<usize>]) -> candle_core::Result<Self> {
        let rows: Vec<Vec<(usize, usize)>> = rows
            .iter()
            .map(|lengths| lengths.iter().map(|&n| (n, 0)).collect())
            .collect();
        Self::from_examples(tokens, &rows)
    }

    /// [`Segments::from_lengths`] with each example's bidirectional part: `rows[b]` holds
    /// (length, bidirectional tokens) of row b's examples, in order.
    pub fn from_examples(tokens: usize, rows: &[Vec<(usize, usize)>]) -> candle_core::Result<Self> {
        let mut positions = Vec::with_capacity(rows.len() * tokens);
        let mut bidirectional = Vec::with_capacity(rows.len() * tokens);
        for (b, examples) in rows.iter().enumerate() {
            let used: usize = examples.iter().map(|&(n, _)| n).sum();
            if used > tokens || examples.iter().any(|&(n, p)| n == 0 || p > n) {
                candle_core::bail!(
                    "row {b}: examples of {examples:?} (tokens, bidirectional) do not fit a \
                     row of {tokens}"
                );
            }
            for &(n, p) in examples {
                positions.extend(0..n as u32);
                bidirectional.extend(std::iter::repeat_n(p as u32, n));
            }
            positions.extend(0..(tokens - used) as u32);
            bidirectional.extend(std::iter::repeat_n(0, tokens - used));
        }
        Ok(Self {
            batch: rows.len(),
            tokens,
            positions,
            bidirectional,
        })
    }

    /// One example per row, filling it (padding after an example is its own, and never
    /// seen by its real tokens), with the given bidirectional parts.
    pub fn rows(tokens: usize, bidirectional: &[usize]) -> candle_core::Result<Self> {
        let rows: Vec<Vec<(usize, usize)>> =
            bidirectional.iter().map(|&p| vec![(tokens, p)]).collect();
        Self::from_examples(tokens, &rows)
    }

    /// Rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per row.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Every token's position in its example, row-major.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    fn row(&self, b: usize) -> &[u32] {
        &self.positions[b * self.tokens..(b + 1) * self.tokens]
    }

    fn row_bidirectional(&self, b: usize) -> &[u32] {
        &self.bidirectional[b * self.tokens..(b + 1) * self.tokens]
    }

    /// The additive mask [batch, 1, group·tokens, tokens]: 0 where query token i may see key
    /// token j (in the same example, starting at i − position(i), up to i or to the end of
    /// the example's bidirectional part, as [`SeqRows::visible`] says), −∞ elsewhere.
    fn mask(&self, group: usize, device: &Device, dtype: DType) -> candle_core::Result<Tensor> {
        let t = self.tokens;
        let mut mask = Vec::with_capacity(self.batch * group * t * t);
        for b in 0..self.batch {
            let (pos, both) = (self.row(b), self.row_bidirectional(b));
            for r in 0..group * t {
                let i = r % t;
                let first = i - pos[i] as usize;
                let last = first + (pos[i] as usize).max((both[i] as usize).saturating_sub(1));
                mask.extend((0..t).map(|j| {
                    if (first..=last).contains(&j) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                }));
            }
        }
        transfer::upload(mask, (self.batch, 1, group * t, t), device)?.to_dtype(dtype)
    }
}

/// How one row's q and k rotate in a training forward: at its tokens' positions, or with
/// 2-D positions ([`Rotary::two_d`]) each half of a head at its own.
#[derive(Debug, Clone)]
struct RowRotation {
    first: RotaryTables,
    second: Option<RotaryTables>,
}

impl RowRotation {
    /// x [rows, heads, tokens, head_dim] rotated, or (`inverse`) rotated back.
    fn apply(&self, x: &Tensor, inverse: bool) -> candle_core::Result<Tensor> {
        let apply = |tables: &RotaryTables, x: &Tensor| {
            if inverse {
                tables.inverse()?.apply(x)
            } else {
                tables.apply(x)
            }
        };
        match &self.second {
            None => apply(&self.first, x),
            Some(second) => {
                let half = x.dim(candle_core::D::Minus1)? / 2;
                Tensor::cat(
                    &[
                        apply(&self.first, &x.narrow(candle_core::D::Minus1, 0, half)?)?,
                        apply(second, &x.narrow(candle_core::D::Minus1, half, half)?)?,
                    ],
                    candle_core::D::Minus1,
                )
            }
        }
    }
}

/// How the rows of a training batch are laid out: each one sequence from position 0
/// (causal), or packed examples and examples with a bidirectional part ([`Segments`]).
#[derive(Debug, Clone)]
struct TrainLayout {
    batch: usize,
    tokens: usize,
    /// One rotation for every row, or (segments) one per row.
    tables: Vec<RowRotation>,
    segments: Option<Arc<Segments>>,
}

impl TrainLayout {
    fn causal(batch: usize, tokens: usize, rotary: &Rotary) -> candle_core::Result<Self> {
        // 2-D positions depend on the bidirectional part, even when it is empty.
        if rotary.two_d {
            return Self::packed(&Segments::rows(tokens, &vec![0; batch])?, rotary);
        }
        Ok(Self {
            batch,
            tokens,
            tables: vec![RowRotation {
                first: rotary.train_tables(tokens)?,
                second: None,
            }],
            segments: None,
        })
    }

    fn packed(segments: &Segments, rotary: &Rotary) -> candle_core::Result<Self> {
        let tables = (0..segments.batch)
            .map(|b| {
                let positions = segments.row(b);
                if !rotary.two_d {
                    return Ok(RowRotation {
                        first: rotary.tables_at(positions)?,
                        second: None,
                    });
                }
                let (first, second): (Vec<u32>, Vec<u32>) = positions
                    .iter()
                    .zip(segments.row_bidirectional(b))
                    .map(|(&p, &both)| Rotary::two_d_positions(p as usize, both as usize))
                    .unzip();
                Ok(RowRotation {
                    first: rotary.tables_at(&first)?,
                    second: Some(rotary.tables_at(&second)?),
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            batch: segments.batch,
            tokens: segments.tokens,
            tables,
            segments: Some(Arc::new(segments.clone())),
        })
    }

    /// x [batch, heads, tokens, head_dim] rotated, or (`inverse`) rotated back.
    fn rotate(&self, x: &Tensor, inverse: bool) -> candle_core::Result<Tensor> {
        match self.tables.as_slice() {
            [shared] => shared.apply(x, inverse),
            per_row => {
                let rows = per_row
                    .iter()
                    .enumerate()
                    .map(|(b, rotation)| rotation.apply(&x.narrow(0, b, 1)?, inverse))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)
            }
        }
    }

    /// The additive mask over scores [batch, kv_heads, group·tokens, tokens]: causal, or
    /// as the segments say.
    fn mask(&self, group: usize, device: &Device, dtype: DType) -> candle_core::Result<Tensor> {
        if let Some(segments) = &self.segments {
            return segments.mask(group, device, dtype);
        }
        let tokens = self.tokens;
        let mask: Vec<f32> = (0..group * tokens)
            .flat_map(|row| {
                let limit = row % tokens;
                (0..tokens).map(move |j| if j <= limit { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        transfer::upload(mask, (group * tokens, tokens), device)?.to_dtype(dtype)
    }
}

/// Causal self-attention of a training forward, without a cache: q [batch·tokens,
/// heads·head_dim], k, v [batch·tokens, kv_heads·head_dim], every sequence `tokens` long from
/// position 0 (with 2-D positions, an empty bidirectional part); returns [batch·tokens, heads·head_dim]. One node of the graph that keeps q,
/// k, v and the result ([`crate::autograd::with_backward_n`]; its value is the composed
/// ops', bit for bit); its backward recomputes the rotation and the probabilities and gives
/// the gradients in closed form ([`causal_attention_backward`]). Right-padded sequences need no pad mask: a real token never
/// attends to a later one.
pub fn causal_attention_train(
    qkv: (&Tensor, &Tensor, &Tensor),
    (batch, tokens): (usize, usize),
    shape: AttnShape,
    rotary: &Rotary,
) -> candle_core::Result<Tensor> {
    attention_train_node(qkv, shape, TrainLayout::causal(batch, tokens, rotary)?)
}

/// [`causal_attention_train`] over rows of packed examples: each example attends only to
/// itself, causally but for its bidirectional part, rotated from position 0 (with 2-D
/// positions, from its bidirectional part as serving does) ([`Segments`]), so that its
/// outputs are those of the example alone in a row.
pub fn causal_attention_train_segments(
    qkv: (&Tensor, &Tensor, &Tensor),
    shape: AttnShape,
    rotary: &Rotary,
    segments: &Segments,
) -> candle_core::Result<Tensor> {
    attention_train_node(qkv, shape, TrainLayout::packed(segments, rotary)?)
}

fn attention_train_node(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    shape: AttnShape,
    layout: TrainLayout,
) -> candle_core::Result<Tensor> {
    let value = causal_attention_composed((&q.detach(), &k.detach(), &v.detach()), shape, &layout)?;
    crate::autograd::with_backward_n(
        &[q, k, v],
        value,
        Box::new(move |args, grad| {
            let (dq, dk, dv) = causal_attention_backward(
                (&args[0].detach(), &args[1].detach(), &args[2].detach()),
                &grad.detach(),
                shape,
                &layout,
            )?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        }),
    )
}

/// The gradients of q, k, v through [`causal_attention_composed`] for the output's gradient
/// `grad` [batch·tokens, heads·head_dim], in closed form: the probabilities P recomputed
/// (candle's fused softmax), dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P⊙(dP − rowsum(dP⊙P))/√d,
/// dQ = dS·K, dK = dSᵀ·Q, and the rotation undone on dQ and dK (its transpose is its inverse).
fn causal_attention_backward(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    grad: &Tensor,
    shape: AttnShape,
    layout: &TrainLayout,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let (batch, tokens) = (layout.batch, layout.tokens);
    let group = heads / kv_heads;
    let split = |x: &Tensor, n: usize| {
        x.reshape((batch, tokens, n, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let merge = |x: &Tensor, n: usize| {
        x.reshape((batch, n, tokens, d))?
            .transpose(1, 2)?
            .reshape((batch * tokens, n * d))
    };
    let scale = 1.0 / (d as f64).sqrt();
    let q =
        layout
            .rotate(&split(q, heads)?, false)?
            .reshape((batch, kv_heads, group * tokens, d))?;
    let k = layout.rotate(&split(k, kv_heads)?, false)?;
    let v = split(v, kv_heads)?;
    let mask = layout.mask(group, q.device(), q.dtype())?;
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
    let p = candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?;
    drop(scores);
    let d_out = split(grad, heads)?.reshape((batch, kv_heads, group * tokens, d))?;
    let dv = p.t()?.matmul(&d_out)?;
    let dp = d_out.matmul(&v.t()?)?;
    let row = (&dp * &p)?.sum_keepdim(candle_core::D::Minus1)?;
    let ds = ((p * dp.broadcast_sub(&row)?)? * scale)?;
    let dq = ds.matmul(&k)?.reshape((batch, heads, tokens, d))?;
    let dk = ds.t()?.matmul(&q)?;
    let dq = merge(&layout.rotate(&dq, true)?, heads)?;
    let dk = merge(&layout.rotate(&dk, true)?, kv_heads)?;
    let dv = merge(&dv, kv_heads)?;
    Ok((dq, dk, dv))
}

/// [`causal_attention_train`]'s ops.
fn causal_attention_composed(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    shape: AttnShape,
    layout: &TrainLayout,
) -> candle_core::Result<Tensor> {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let (batch, tokens) = (layout.batch, layout.tokens);
    let group = heads / kv_heads;
    let split = |x: &Tensor, n: usize| {
        x.reshape((batch, tokens, n, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = layout.rotate(&split(q, heads)?, false)?;
    let k = layout.rotate(&split(k, kv_heads)?, false)?;
    let v = split(v, kv_heads)?;
    // Query heads of one KV group side by side: [batch, kv_heads, group·tokens, d].
    let q = q.reshape((batch, kv_heads, group * tokens, d))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let mask = layout.mask(group, q.device(), q.dtype())?;
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, candle_core::D::Minus1)?;
    probs
        .matmul(&v)?
        .reshape((batch, heads, tokens, d))?
        .transpose(1, 2)?
        .reshape((batch * tokens, heads * d))
}

#[cfg(test)]
mod train_tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::autograd::grad_check::{probed, rel_diff, seeded, values};

    const SHAPE: AttnShape = AttnShape {
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
    };

    /// Half-split and interleaved rotary, and partial rotary.
    const ROTARIES: [(usize, bool); 3] = [(8, false), (8, true), (4, true)];

    fn rotary(rotary_dim: usize, interleaved: bool) -> Rotary {
        Rotary::new(rotary_dim, 10000.0, interleaved, 16, &Device::Cpu).unwrap()
    }

    /// q, k, v of `rows` rows as variables, and a probe of the output's shape.
    fn qkv_probe(rows: usize, seed: f64) -> (Var, Var, Var, Tensor) {
        let var = |cols, s| Var::from_tensor(&seeded((rows, cols), s)).unwrap();
        (
            var(32, seed + 0.1),
            var(16, seed + 0.5),
            var(16, seed + 0.9),
            seeded((rows, 32), seed + 1.7),
        )
    }

    /// The attention node against candle's autograd of the same ops: the same value, and
    /// the gradients of q, k and v within 1e-12 of the largest (f64; half-split and
    /// interleaved rotary, grouped KV heads, partial rotary), for rows each from position 0
    /// and for rows of packed examples (with padding after them).
    #[test]
    fn recomputed_attention_has_the_compositions_value_and_gradients() {
        let (batch, tokens) = (2, 5);
        let segments = Segments::from_lengths(tokens, &[vec![2, 3], vec![1, 2]]).unwrap();
        for (rotary_dim, interleaved) in ROTARIES {
            let rotary = rotary(rotary_dim, interleaved);
            let layouts = [
                TrainLayout::causal(batch, tokens, &rotary).unwrap(),
                TrainLayout::packed(&segments, &rotary).unwrap(),
            ];
            for layout in layouts {
                assert_node_is_composition(&layout, 0.0, &|qkv| match layout.segments {
                    None => causal_attention_train(qkv, (batch, tokens), SHAPE, &rotary),
                    Some(_) => causal_attention_train_segments(qkv, SHAPE, &rotary, &segments),
                });
            }
        }
    }

    /// The attention `node` gives on q, k, v (seeded from `seed`) against candle's
    /// autograd of the composed ops on `layout`: the same value, gradients within 1e-12
    /// of the largest.
    #[allow(clippy::type_complexity)]
    fn assert_node_is_composition(
        layout: &TrainLayout,
        seed: f64,
        node: &dyn Fn((&Tensor, &Tensor, &Tensor)) -> candle_core::Result<Tensor>,
    ) {
        let (q, k, v, probe) = qkv_probe(layout.batch * layout.tokens, seed);
        let qkv = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let composed = causal_attention_composed(qkv, SHAPE, layout).unwrap();
        let node = node(qkv).unwrap();
        assert_eq!(values(&composed), values(&node));
        let g1 = probed(composed, &probe);
        let g2 = probed(node, &probe);
        for t in [&q, &k, &v] {
            let d = rel_diff(
                g2.get(t.as_tensor()).unwrap(),
                g1.get(t.as_tensor()).unwrap(),
            );
            assert!(
                d <= 1e-12,
                "gradient off by {d:e} (relative to the largest)"
            );
        }
    }

    /// The same with ChatGLM-6B's attention: 2-D positions (each half of a head rotated at
    /// its own position) and bidirectional parts, per row and per packed example, and
    /// rows with none (2-D positions all the same).
    #[test]
    fn bidirectional_attention_with_2d_positions_has_the_compositions_gradients() {
        let tokens = 5;
        let rotary = rotary(4, false).with_two_d();
        let layouts = [
            TrainLayout::causal(2, tokens, &rotary).unwrap(),
            TrainLayout::packed(&Segments::rows(tokens, &[3, 5]).unwrap(), &rotary).unwrap(),
            TrainLayout::packed(
                &Segments::from_examples(tokens, &[vec![(2, 1), (3, 2)], vec![(4, 3)]]).unwrap(),
                &rotary,
            )
            .unwrap(),
        ];
        for layout in layouts {
            assert_node_is_composition(&layout, 0.2, &|qkv| {
                attention_train_node(qkv, SHAPE, layout.clone())
            });
        }
    }

    /// A bidirectional part: its tokens see each other, those after it see it and
    /// themselves, and a packed example sees nothing of its neighbours.
    #[test]
    fn a_bidirectional_part_is_seen_both_ways() {
        let segments = Segments::from_examples(6, &[vec![(4, 2), (2, 0)]]).unwrap();
        let mask = values(&segments.mask(1, &Device::Cpu, DType::F64).unwrap());
        let seen: Vec<Vec<usize>> = mask
            .chunks(6)
            .map(|row| (0..6).filter(|&j| row[j] == 0.0).collect())
            .collect();
        assert_eq!(
            seen,
            [
                vec![0, 1],
                vec![0, 1],
                vec![0, 1, 2],
                vec![0, 1, 2, 3],
                vec![4],
                vec![4, 5]
            ]
        );
        assert!(Segments::from_examples(6, &[vec![(2, 3)]]).is_err());
    }

    /// A packed row computes each of its examples as the example alone would: the
    /// output rows and the gradients of q, k and v of every example equal those of the
    /// example in a row of its own (f64, within 1e-12 of the largest), whatever shares
    /// its row, before or after it.
    #[test]
    fn a_packed_row_computes_each_example_as_if_alone() {
        let tokens = 9;
        let rows = [vec![3, 4], vec![2, 5, 2]];
        let segments = Segments::from_lengths(tokens, &rows).unwrap();
        for (rotary_dim, interleaved) in ROTARIES {
            let rotary = rotary(rotary_dim, interleaved);
            let (q, k, v, probe) = qkv_probe(rows.len() * tokens, 0.3);
            let packed = causal_attention_train_segments(
                (q.as_tensor(), k.as_tensor(), v.as_tensor()),
                SHAPE,
                &rotary,
                &segments,
            )
            .unwrap();
            let packed_grads = probed(packed.clone(), &probe);
            for (b, lengths) in rows.iter().enumerate() {
                let mut start = b * tokens;
                for &n in lengths {
                    let part = |t: &Tensor| t.narrow(0, start, n).unwrap();
                    let alone = [&q, &k, &v].map(|t| Var::from_tensor(&part(t)).unwrap());
                    let out = causal_attention_train(
                        (
                            alone[0].as_tensor(),
                            alone[1].as_tensor(),
                            alone[2].as_tensor(),
                        ),
                        (1, n),
                        SHAPE,
                        &rotary,
                    )
                    .unwrap();
                    let d = rel_diff(&part(&packed), &out);
                    assert!(
                        d <= 1e-12,
                        "row {b}, example at {start}: output off by {d:e}"
                    );
                    let grads = probed(out, &part(&probe));
                    for (whole, alone) in [&q, &k, &v].iter().zip(&alone) {
                        let d = rel_diff(
                            &part(packed_grads.get(whole.as_tensor()).unwrap()),
                            grads.get(alone.as_tensor()).unwrap(),
                        );
                        assert!(
                            d <= 1e-12,
                            "row {b}, example at {start}: gradient off by {d:e}"
                        );
                    }
                    start += n;
                }
            }
        }
    }

    /// Positions restart at 0 for each packed example: the rotation of an example's
    /// q and k in a packed row is the rotation of the example alone, exactly, and not the
    /// one at the positions the row would run on to (which a relative-position attention
    /// could not tell apart in its output, so this is checked where it is applied).
    #[test]
    fn packed_examples_are_rotated_from_position_zero() {
        let tokens = 8;
        let segments = Segments::from_lengths(tokens, &[vec![3, 4]]).unwrap();
        assert_eq!(segments.positions(), &[0, 1, 2, 0, 1, 2, 3, 0]);
        for (rotary_dim, interleaved) in ROTARIES {
            let rotary = rotary(rotary_dim, interleaved);
            let x = seeded((tokens, 2 * 8), 0.4)
                .reshape((1, tokens, 2, 8))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let packed = TrainLayout::packed(&segments, &rotary).unwrap();
            let rotated = packed.rotate(&x, false).unwrap();
            let second = |t: &Tensor| t.narrow(2, 3, 4).unwrap().contiguous().unwrap();
            let alone = TrainLayout::causal(1, 4, &rotary)
                .unwrap()
                .rotate(&second(&x), false)
                .unwrap();
            assert_eq!(values(&second(&rotated)), values(&alone));
            let running_on = TrainLayout::causal(1, tokens, &rotary)
                .unwrap()
                .rotate(&x, false)
                .unwrap();
            assert!(rel_diff(&second(&running_on), &alone) > 1e-3);
            // And the inverse undoes it (up to the f32 tables' cos² + sin² ≠ 1).
            let back = packed.rotate(&rotated, true).unwrap();
            assert!(rel_diff(&back, &x) <= 1e-6);
        }
    }

    #[test]
    fn segments_that_do_not_fit_their_row_are_refused() {
        assert!(Segments::from_lengths(4, &[vec![3, 2]]).is_err());
        assert!(Segments::from_lengths(4, &[vec![0, 2]]).is_err());
        let padded = Segments::from_lengths(4, &[vec![1], vec![4]]).unwrap();
        assert_eq!(padded.positions(), &[0, 0, 1, 2, 0, 1, 2, 3]);
    }
}
