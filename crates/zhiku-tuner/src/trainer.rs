//! The LoRA trainer on candle's autograd: A and B of every targeted layer are `Var`s, the
//! model is zhiku-lm's serving [`Decoder`] run through its training forward (W0 frozen, never
//! merged nor copied per step), the loss is the mean cross-entropy over the tokens that the
//! examples' loss masks select, and AdamW ([`crate::optimizer`], candle-nn's update with its
//! state exposed) steps on a warm-up + cosine schedule with gradient accumulation and
//! global-norm clipping. Seeded: the same seed, data and configuration give the same
//! adapter, and a run resumed from a checkpoint ([`Trainer::checkpoint`],
//! [`Trainer::restore`]) continues exactly as if it had not stopped. With gradient
//! checkpointing a block keeps only its input for the backward pass and is recomputed there
//! ([`crate::recompute`]).
//!
//! Batches: the unit of an epoch is a row, one example or (with packing) several examples
//! side by side ([`pack_rows`]: first-fit decreasing up to `packing` tokens). A step's rows
//! are sorted by length and cut into micro-batches of `batch_size` rows, each right-padded
//! to its longest row. Right padding needs no attention mask (a token never attends to a
//! later one) and pads never count in the loss. A packed row's examples attend each only to
//! itself, from position 0 ([`Segments`]), so a packed step's loss and gradients are those
//! of the same examples unpacked. ChatGLM-6B's examples give the part of their prompt read
//! both ways ([`TrainExample::bidirectional`]); their rows always go through [`Segments`],
//! which carry it to the attention.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use zhiku_lm::attention::Segments;
use zhiku_lm::autograd::cross_entropy_sum;
use zhiku_lm::decoder::{BatchModel, Decoder, Qkv};
use zhiku_lm::layers::{Linear, Mlp};
use zhiku_lm::lora::LoraPair;
use zhiku_lm::seeded::SplitMix64;

use crate::checkpoint::{
    Checkpoint, Hyperparameters, ModuleState, Progress, find_checkpoint, load_checkpoint,
    save_checkpoint,
};
use crate::dataset::pack_rows;
use crate::error::TuneError;
use crate::optimizer::{AdamW, AdamWParams};
use crate::recompute::{GradientSink, checkpointed_block, train_block};
use crate::spec::{LayerSelection, LoraInit, LoraSpec, TrainExample, TrainedPair};
use crate::view::LoraView;

/// How to train: LoRA's shape, the optimizer, the schedule, batching, seeds, threads.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub lora: LoraSpec,
    /// Peak learning rate (after warm-up).
    pub learning_rate: f64,
    /// Optimizer steps of linear warm-up from 0.
    pub warmup_steps: usize,
    /// Optimizer steps the cosine decays over (to 0 at the last); 0: as many as
    /// [`Trainer::train`] will take (and no decay for [`Trainer::step`] alone).
    pub total_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Rows per micro-batch (one forward and backward): examples, or packed rows.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accumulation: usize,
    /// Pack examples side by side into rows of at most this many tokens (each attends only
    /// to itself, from position 0); None: one example per row, padded.
    pub packing: Option<usize>,
    /// Gradients are scaled so that their global L2 norm is at most this (None: unclipped).
    pub max_grad_norm: Option<f64>,
    /// Seeds A's initialisation, dropout and the order of examples.
    pub seed: u64,
    /// CPU threads of the matmuls (None: candle's default, every core).
    pub threads: Option<usize>,
    /// The dtype of weights, activations and A/B while training (f32 on the CPU, bf16 on a
    /// GPU; f64 for gradient checks).
    pub dtype: DType,
    /// Keep only each block's input through the forward pass and recompute the block in the
    /// backward pass: activation memory of one block instead of all, for about one more
    /// forward of compute. The gradients are the same.
    pub gradient_checkpointing: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraSpec {
                rank: 8,
                alpha: 16.0,
                dropout: 0.05,
                targets: vec!["q".into(), "v".into()],
                init: LoraInit::Gaussian,
                layers: LayerSelection::All,
            },
            learning_rate: 2e-4,
            warmup_steps: 0,
            total_steps: 0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            batch_size: 1,
            grad_accumulation: 1,
            packing: None,
            max_grad_norm: Some(1.0),
            seed: 42,
            threads: None,
            dtype: DType::F32,
            gradient_checkpointing: false,
        }
    }
}

impl TrainConfig {
    /// The learning rate of optimizer step `step` (0-based) when training takes `total`
    /// steps: transformers' `get_cosine_schedule_with_warmup` (step/warmup during warm-up,
    /// then half a cosine from the peak to 0); with `total` 0, the peak after warm-up.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * step as f64 / self.warmup_steps.max(1) as f64;
        }
        if total == 0 {
            return self.learning_rate;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What one optimizer step did: for a progress bar and `--json` lines.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Optimizer steps done, this one included.
    pub step: usize,
    /// Steps training will take (0 when [`Trainer::step`] runs alone with no total).
    pub total_steps: usize,
    /// 0-based epoch ([`Trainer::train`]; 0 for [`Trainer::step`]).
    pub epoch: usize,
    /// Mean cross-entropy over the step's counted tokens, before the update.
    pub loss: f64,
    /// The learning rate the update used.
    pub lr: f64,
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Tokens the forward ran on (pads excluded) and tokens the loss counted.
    pub tokens: usize,
    pub loss_tokens: usize,
    pub tokens_per_second: f64,
    pub seconds: f64,
    /// The checkpoint written after this step, if one was due.
    pub checkpoint: Option<PathBuf>,
}

/// Where and how often [`Trainer::train`] writes checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPlan {
    /// The run's checkpoint directory (`step-N/` directories go under it).
    pub dir: PathBuf,
    /// A checkpoint after every this many optimizer steps (0: none).
    pub every: usize,
    /// How many of the newest checkpoints to keep (at least 1).
    pub keep: usize,
}

/// The gradients of one batch ([`Trainer::gradients`]).
#[derive(Debug, Clone)]
pub struct Gradients {
    /// Mean cross-entropy over the counted tokens.
    pub loss: f64,
    /// Global L2 norm before clipping.
    pub norm: f64,
    /// dLoss/dA and dLoss/dB per module (after clipping), B's rows in checkpoint order.
    pub pairs: Vec<TrainedPair>,
}

/// A row of a micro-batch: its examples side by side (one unless packed).
type Row<'e> = Vec<&'e TrainExample>;

fn row_tokens(row: &Row<'_>) -> usize {
    row.iter().map(|e| e.tokens.len()).sum()
}

/// The rows an epoch of `examples` is made of, as indices into `examples`: one example
/// each, or (`packing`) examples packed into rows of at most that many tokens with
/// [`pack_rows`] (seeded by `seed`). The trainer and the planning of a run share it.
pub fn layout_rows(
    examples: &[TrainExample],
    packing: Option<usize>,
    seed: u64,
) -> Vec<Vec<usize>> {
    match packing {
        Some(capacity) => {
            let lengths: Vec<usize> = examples.iter().map(|e| e.tokens.len()).collect();
            pack_rows(&lengths, capacity, seed)
        }
        None => (0..examples.len()).map(|i| vec![i]).collect(),
    }
}

/// Micro-batches of a step: its rows sorted by length (`len`), `batch_size` each.
fn micro_batches<T>(mut rows: Vec<T>, len: impl Fn(&T) -> usize, batch_size: usize) -> Vec<Vec<T>> {
    // Stable: rows of equal length keep their order.
    rows.sort_by_key(|r| len(r));
    let mut out = Vec::with_capacity(rows.len().div_ceil(batch_size.max(1)));
    let mut rest = rows.into_iter().peekable();
    while rest.peek().is_some() {
        out.push(rest.by_ref().take(batch_size.max(1)).collect());
    }
    out
}

/// How an epoch's forwards are filled: what [`epoch_padding`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Rows (examples, or packed rows).
    pub rows: usize,
    /// Forwards (micro-batches).
    pub forwards: usize,
    /// The examples' tokens.
    pub tokens: usize,
    /// Token slots the forwards run: rows × their micro-batch's longest row, summed.
    pub slots: usize,
}

impl Padding {
    /// The share of the slots that are padding.
    pub fn share(&self) -> f64 {
        if self.slots == 0 {
            0.0
        } else {
            (self.slots - self.tokens) as f64 / self.slots as f64
        }
    }

    /// "packed into R rows of up to N tokens, P % padding" (or one example a row).
    pub fn summary(&self, packing: Option<usize>) -> String {
        let rows = match packing {
            Some(n) => format!("packed into {} rows of up to {n} tokens", self.rows),
            None => format!("{} rows, one example each", self.rows),
        };
        format!(
            "{rows}, {:.1} % of the tokens a forward runs are padding",
            100.0 * self.share()
        )
    }
}

/// The padding of epoch `epoch` of `examples` as the trainer lays it out with `config`
/// (its packing, seed, batch size and accumulation): the same rows, steps and
/// micro-batches as [`Trainer::train`].
pub fn epoch_padding(examples: &[TrainExample], config: &TrainConfig, epoch: usize) -> Padding {
    let rows = layout_rows(examples, config.packing, config.seed);
    let length = |row: &Vec<usize>| row.iter().map(|&i| examples[i].tokens.len()).sum::<usize>();
    let per_step = (config.batch_size * config.grad_accumulation).max(1);
    let order = epoch_order(config.seed, epoch, rows.len());
    let mut padding = Padding {
        rows: rows.len(),
        forwards: 0,
        tokens: examples.iter().map(|e| e.tokens.len()).sum(),
        slots: 0,
    };
    for step in order.chunks(per_step) {
        let step: Vec<&Vec<usize>> = step.iter().map(|&i| &rows[i]).collect();
        for batch in micro_batches(step, |r| length(r), config.batch_size) {
            padding.forwards += 1;
            padding.slots += batch.len() * batch.iter().map(|r| length(r)).max().unwrap_or(0);
        }
    }
    padding
}

/// One targeted layer's trainable pair.
struct TrainVar {
    module: String,
    a: Var,
    b: Var,
}

/// The trainable adapter: the pairs the forward applies (tensors of the Vars, so that the
/// optimizer's in-place updates show through; and the same detached, for forwards that
/// need no gradient), and dropout's generator.
struct TrainableLora {
    vars: Vec<TrainVar>,
    pairs: Arc<HashMap<String, LoraPair>>,
    detached: Arc<HashMap<String, LoraPair>>,
    dropout: f64,
    rng: Arc<Mutex<SplitMix64>>,
}

impl TrainableLora {
    /// The adapter as a forward sees it: tracked for gradients or detached, with dropout
    /// (training) or without (evaluation).
    fn view(&self, tracked: bool, dropout: bool) -> LoraView {
        LoraView {
            pairs: if tracked {
                self.pairs.clone()
            } else {
                self.detached.clone()
            },
            dropout: if dropout { self.dropout } else { 0.0 },
            rng: self.rng.clone(),
        }
    }

    fn rng_state(&self) -> Result<u64, TuneError> {
        Ok(self
            .rng
            .lock()
            .map_err(|_| TuneError::Training("dropout generator poisoned".into()))?
            .0)
    }
}

/// The short names of the layers LoRA can target.
const LORA_TARGETS: [&str; 8] = ["q", "k", "v", "qkv", "o", "gate", "up", "down"];

/// Refuses a target name that is not one of [`LORA_TARGETS`] (before any model is loaded).
pub fn check_targets(targets: &[String]) -> Result<(), TuneError> {
    match targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
        Some(t) => Err(TuneError::Validation(format!(
            "LoRA target `{t}` is not one of {}",
            LORA_TARGETS.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The layers that `targets` (q, k, v, qkv, o, gate, up, down) name in the blocks of
/// `model` that `layers` selects, with (in, out): a fused projection is targeted when any of
/// its parts is.
pub fn target_modules(
    model: &Decoder,
    targets: &[String],
    layers: &LayerSelection,
) -> Result<Vec<(String, usize, usize)>, TuneError> {
    check_targets(targets)?;
    modules_in_blocks(model, targets, &layers.resolve(model.blocks.len())?)
}

/// [`target_modules`] in the blocks `selected` (resolved indices, each below the model's
/// block count); the caller has checked the targets.
fn modules_in_blocks(
    model: &Decoder,
    targets: &[String],
    selected: &[usize],
) -> Result<Vec<(String, usize, usize)>, TuneError> {
    let wants = |names: &[&str]| names.iter().any(|n| targets.iter().any(|t| t == n));
    let mut out: Vec<&Linear> = Vec::new();
    for block in selected.iter().map(|&i| &model.blocks[i]) {
        match &block.qkv {
            Qkv::Split { q, k, v } => {
                for (name, l) in [("q", q), ("k", k), ("v", v)] {
                    if wants(&[name, "qkv"]) {
                        out.push(l);
                    }
                }
            }
            Qkv::Fused(l) => {
                if wants(&["q", "k", "v", "qkv"]) {
                    out.push(l);
                }
            }
        }
        if wants(&["o"]) {
            out.push(&block.o);
        }
        match &block.mlp {
            Mlp::SwiGlu { gate, up, down } => {
                for (name, l) in [("gate", gate), ("up", up), ("down", down)] {
                    if wants(&[name]) {
                        out.push(l);
                    }
                }
            }
            Mlp::SwiGluFused { gate_up, down } => {
                if wants(&["gate", "up"]) {
                    out.push(gate_up);
                }
                if wants(&["down"]) {
                    out.push(down);
                }
            }
            Mlp::Gelu { up, down } => {
                for (name, l) in [("up", up), ("down", down)] {
                    if wants(&[name]) {
                        out.push(l);
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err(TuneError::Validation(format!(
            "LoRA targets {targets:?} name no layer of the model"
        )));
    }
    Ok(out
        .into_iter()
        .map(|l| (l.module().to_owned(), l.in_features(), l.out_features()))
        .collect())
}

/// A LoRA training run over one model.
pub struct Trainer {
    model: Arc<Decoder>,
    config: TrainConfig,
    lora: TrainableLora,
    optimizer: AdamW,
    steps_done: usize,
    /// The data cursor: the epoch being trained and the next step in it.
    epoch: usize,
    step_in_epoch: usize,
    checkpoints: Option<CheckpointPlan>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// The lowest block with an adapter: the blocks below it hold nothing to train, so
    /// their forward builds no graph and the backward pass stops there.
    first_adapted: usize,
}

impl Trainer {
    /// Readies `model` (as a loader built it for serving) for training: dense weights in
    /// `config.dtype`; A per `config.lora.init`, B = 0 on every targeted layer.
    pub fn new(model: Decoder, mut config: TrainConfig) -> Result<Self, TuneError> {
        let spec = &config.lora;
        if spec.rank == 0 {
            return Err(TuneError::Validation("LoRA rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&spec.dropout) {
            return Err(TuneError::Validation(format!(
                "LoRA dropout {} is not in [0, 1)",
                spec.dropout
            )));
        }
        if config.batch_size == 0 || config.grad_accumulation == 0 {
            return Err(TuneError::Validation(
                "batch size and gradient accumulation must be at least 1".into(),
            ));
        }
        if !matches!(
            config.dtype,
            DType::F64 | DType::F32 | DType::BF16 | DType::F16
        ) {
            return Err(TuneError::Validation(format!(
                "cannot train in {:?}",
                config.dtype
            )));
        }
        let pool = match config.threads {
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .build()
                    .map_err(|e| TuneError::Training(format!("thread pool: {e}")))?,
            )),
            None => None,
        };
        let model = model.into_training(config.dtype)?;
        if let Some(capacity) = config.packing {
            let context = model.spec.context_length.min(model.rotary.max_positions);
            if capacity < 2 || capacity > context {
                return Err(TuneError::Validation(format!(
                    "packing fills rows of up to {capacity} tokens (--max-seq-len), which \
                     must be from 2 to the model's context of {context} tokens"
                )));
            }
        }
        check_targets(&spec.targets)?;
        let blocks = model.blocks.len();
        let selected = spec.layers.resolve(blocks)?;
        let modules = modules_in_blocks(&model, &spec.targets, &selected)?;
        let mut init_rng = SplitMix64(config.seed);
        let device = model.device.clone();
        let mut vars = Vec::with_capacity(modules.len());
        let mut pairs = HashMap::new();
        let mut detached = HashMap::new();
        for (module, inp, out) in modules {
            let values: Vec<f64> = match spec.init {
                LoraInit::Gaussian => {
                    let std = 1.0 / (spec.rank as f64).sqrt();
                    (0..spec.rank * inp)
                        .map(|_| init_rng.normal() * std)
                        .collect()
                }
                LoraInit::Kaiming => {
                    // kaiming_uniform_(a = sqrt(5)) on [r, in]: U(-1/sqrt(in), 1/sqrt(in)).
                    let bound = 1.0 / (inp as f64).sqrt();
                    (0..spec.rank * inp)
                        .map(|_| (init_rng.uniform() * 2.0 - 1.0) * bound)
                        .collect()
                }
            };
            let a = Tensor::from_vec(values, (spec.rank, inp), &device)?.to_dtype(config.dtype)?;
            let a = Var::from_tensor(&a)?;
            let b = Var::zeros((out, spec.rank), config.dtype, &device)?;
            let pair = LoraPair {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: spec.scale(),
            };
            // The same storage without gradient tracking.
            let frozen = LoraPair {
                a: pair.a.detach(),
                b: pair.b.detach(),
                scale: pair.scale,
            };
            pairs.insert(module.clone(), pair);
            detached.insert(module.clone(), frozen);
            vars.push(TrainVar { module, a, b });
        }
        let params = AdamWParams {
            lr: config.learning_rate,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
        };
        let all: Vec<Var> = vars
            .iter()
            .flat_map(|v| [v.a.clone(), v.b.clone()])
            .collect();
        let optimizer = AdamW::new(all, params)?;
        let dropout = spec.dropout;
        // Resolved (`last:8` as the indices it names in this model), so that the checkpoint
        // and the adapter's `layers_to_transform` record the blocks themselves.
        let first_adapted = selected.first().copied().unwrap_or(0);
        config.lora.layers = if selected.len() == blocks {
            LayerSelection::All
        } else {
            LayerSelection::Only(selected)
        };
        Ok(Self {
            model: Arc::new(model),
            lora: TrainableLora {
                vars,
                pairs: Arc::new(pairs),
                detached: Arc::new(detached),
                dropout,
                rng: Arc::new(Mutex::new(SplitMix64(config.seed ^ 0xD0D0_D0D0_D0D0_D0D0))),
            },
            first_adapted,
            optimizer,
            steps_done: 0,
            epoch: 0,
            step_in_epoch: 0,
            checkpoints: None,
            pool,
            config,
        })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model being trained (dense, in the training dtype; its weights never change).
    pub fn model(&self) -> &Decoder {
        &self.model
    }

    /// Optimizer steps done.
    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    /// The data cursor: (epoch, step in that epoch) that training continues from.
    pub fn cursor(&self) -> (usize, usize) {
        (self.epoch, self.step_in_epoch)
    }

    /// Writes checkpoints while [`Trainer::train`] runs (None: none).
    pub fn set_checkpoints(&mut self, plan: Option<CheckpointPlan>) {
        self.checkpoints = plan;
    }

    /// The modules being trained, in order.
    pub fn modules(&self) -> Vec<String> {
        self.lora.vars.iter().map(|v| v.module.clone()).collect()
    }

    /// Runs `f` in the trainer's thread pool, always on its first worker: a step's tensors
    /// are allocated by the thread that runs it, and glibc gives each thread its own
    /// arena, so steps run on changing workers would each keep their own freed graph
    /// (`install` picks any worker; `broadcast` runs on each, and only worker 0 runs `f`).
    fn run<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        let Some(pool) = self.pool.clone() else {
            return f(self);
        };
        let job = Mutex::new(Some((f, self)));
        let mut results = pool.broadcast(|ctx| {
            if ctx.index() != 0 {
                return None;
            }
            let taken = job.lock().ok().and_then(|mut j| j.take());
            taken.map(|(f, this)| f(this))
        });
        match results.iter_mut().find_map(Option::take) {
            Some(r) => r,
            // Worker 0 always runs the job; should it not have, run it here.
            None => match job.into_inner().ok().flatten() {
                Some((f, this)) => f(this),
                None => unreachable!("the job ran on worker 0 but returned nothing"),
            },
        }
    }

    /// Checks an example against the model: same-length tokens and mask, at least two
    /// tokens, inside the context and the vocabulary, a bidirectional part inside the
    /// example where the model reads its prompts both ways (ChatGLM-6B) and none elsewhere.
    fn check(&self, index: usize, e: &TrainExample) -> Result<(), TuneError> {
        let bad = |m: String| Err(TuneError::Validation(format!("example {index}: {m}")));
        if e.tokens.len() != e.loss_mask.len() {
            return bad(format!(
                "{} tokens but {} loss-mask entries",
                e.tokens.len(),
                e.loss_mask.len()
            ));
        }
        if e.tokens.len() < 2 {
            return bad("fewer than 2 tokens: nothing to predict".into());
        }
        let context = self
            .model
            .spec
            .context_length
            .min(self.model.rotary.max_positions);
        if e.tokens.len() > context {
            return bad(format!(
                "{} tokens exceed the model's context of {context}",
                e.tokens.len()
            ));
        }
        if let Some(t) = e
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.model.spec.vocab)
        {
            return bad(format!(
                "token {t} is outside the vocabulary of {}",
                self.model.spec.vocab
            ));
        }
        match (self.model.infilling.is_some(), e.bidirectional) {
            (true, 0) => bad(
                "the model (ChatGLM-6B) reads its prompt both ways, but the example gives no \
                 bidirectional part (render it with the model's prompt suffix)"
                    .into(),
            ),
            (true, n) if n >= e.tokens.len() => bad(format!(
                "a bidirectional part of {n} tokens leaves none of its {} tokens to answer",
                e.tokens.len()
            )),
            (false, n) if n > 0 => bad(format!(
                "a bidirectional part of {n} tokens, but the model reads its prompts causally"
            )),
            _ => Ok(()),
        }
    }

    /// The summed cross-entropy of one micro-batch (rows right-padded) over its counted
    /// tokens, and how many tokens it counted; tracked for gradients or not (evaluation).
    /// With gradient checkpointing, the recomputed blocks' gradients of A and B go to
    /// `sink`.
    fn batch_nll(
        &self,
        batch: &[Row<'_>],
        dropout: bool,
        gradients: bool,
        sink: Option<&GradientSink>,
    ) -> Result<(Tensor, usize), TuneError> {
        let len = batch.iter().map(row_tokens).max().unwrap_or(0);
        let device = &self.model.device;
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (b, row) in batch.iter().enumerate() {
            let mut at = b * len;
            for e in row {
                ids.extend_from_slice(&e.tokens);
                // The logits of position i predict token i + 1 (of the same example).
                for i in 1..e.tokens.len() {
                    if e.loss_mask[i] {
                        rows.push((at + i - 1) as u32);
                        targets.push(e.tokens[i]);
                    }
                }
                at += e.tokens.len();
            }
            ids.extend(std::iter::repeat_n(0, len - row_tokens(row)));
        }
        if rows.is_empty() {
            return Ok((Tensor::zeros((), self.config.dtype, device)?, 0));
        }
        // Packed rows attend within each example, and a prompt read both ways (ChatGLM-6B's)
        // is given by its example; causal rows of one example need no segments.
        let segments = if batch
            .iter()
            .any(|row| row.len() > 1 || row.iter().any(|e| e.bidirectional > 0))
        {
            let examples: Vec<Vec<(usize, usize)>> = batch
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|e| (e.tokens.len(), e.bidirectional))
                        .collect()
                })
                .collect();
            Some(Arc::new(Segments::from_examples(len, &examples)?))
        } else {
            None
        };
        let tokens = Tensor::from_vec(ids, (batch.len(), len), device)?;
        let view = self.lora.view(gradients, dropout);
        let shape = (batch.len(), len);
        let mut x = self.model.embed_train(&tokens)?;
        if gradients && self.config.gradient_checkpointing {
            let sink = sink.ok_or_else(|| {
                TuneError::Training("gradient checkpointing needs a gradient sink".into())
            })?;
            // The blocks below the first adapter run plain: nothing under them trains.
            for index in 0..self.first_adapted {
                x = train_block(&self.model, index, &x, &view, shape, segments.as_deref())?;
            }
            // Tracked, so that the first checkpointed block's recomputation is on the graph.
            x = Var::from_tensor(&x)?.into_inner();
            for index in self.first_adapted..self.model.blocks.len() {
                x = checkpointed_block(
                    &self.model,
                    index,
                    &x,
                    &self.lora.view(false, dropout),
                    &view,
                    shape,
                    segments.clone(),
                    sink,
                )?;
            }
        } else {
            for index in 0..self.model.blocks.len() {
                x = train_block(&self.model, index, &x, &view, shape, segments.as_deref())?;
            }
        }
        // Only the rows whose logits the loss needs go through the head.
        let count = rows.len();
        let rows = Tensor::from_vec(rows, count, device)?;
        let logits = self.model.head_train(&x.index_select(&rows, 0)?, &view)?;
        // log-sum-exp − the target's logit, one node that keeps only the logits.
        let targets = Tensor::from_vec(targets, (count, 1), device)?;
        Ok((cross_entropy_sum(&logits, &targets)?, count))
    }

    /// The rows `examples` are laid out in ([`layout_rows`] with this run's packing and
    /// seed), as indices into `examples`.
    pub fn rows(&self, examples: &[TrainExample]) -> Vec<Vec<usize>> {
        layout_rows(examples, self.config.packing, self.config.seed)
    }

    fn row_refs<'e>(&self, examples: &'e [TrainExample]) -> Vec<Row<'e>> {
        self.rows(examples)
            .into_iter()
            .map(|row| row.into_iter().map(|i| &examples[i]).collect())
            .collect()
    }

    fn micro_batches<'e>(&self, rows: Vec<Row<'e>>) -> Vec<Vec<Row<'e>>> {
        micro_batches(rows, row_tokens, self.config.batch_size)
    }

    /// One optimizer step over `examples` (laid out in rows, packed with packing, split
    /// into micro-batches of `batch_size` rows, their gradients summed): loss = mean
    /// cross-entropy over every counted token of the step.
    pub fn step(&mut self, examples: &[TrainExample]) -> Result<StepReport, TuneError> {
        let total = self.config.total_steps;
        let rows = self.row_refs(examples);
        self.run(|t| t.step_inner(&rows, total, 0))
    }

    fn step_inner(
        &mut self,
        rows: &[Row<'_>],
        total_steps: usize,
        epoch: usize,
    ) -> Result<StepReport, TuneError> {
        let started = Instant::now();
        let (loss, mut grads, loss_tokens) = self.accumulate(rows, true)?;
        let grad_norm = self.clip(&mut grads)?;
        let lr = self.config.lr_at(self.steps_done, total_steps);
        self.optimizer.set_learning_rate(lr);
        self.optimizer.step(&grads)?;
        self.steps_done += 1;
        let seconds = started.elapsed().as_secs_f64();
        let tokens: usize = rows.iter().map(row_tokens).sum();
        Ok(StepReport {
            step: self.steps_done,
            total_steps,
            epoch,
            loss,
            lr,
            grad_norm,
            tokens,
            loss_tokens,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
            seconds,
            checkpoint: None,
        })
    }

    /// The step's loss (mean over its counted tokens) and the gradients of A and B summed
    /// over its micro-batches, each micro-batch's loss divided by the step's count so that
    /// accumulation gives the gradient of the whole step's mean.
    fn accumulate(
        &self,
        rows: &[Row<'_>],
        dropout: bool,
    ) -> Result<(f64, GradStore, usize), TuneError> {
        for (i, e) in rows.iter().flatten().enumerate() {
            self.check(i, e)?;
        }
        let loss_tokens: usize = rows
            .iter()
            .flatten()
            .map(|e| e.loss_mask.iter().skip(1).filter(|&&m| m).count())
            .sum();
        if loss_tokens == 0 {
            return Err(TuneError::Validation(
                "no token of the step counts in the loss (every loss mask is false)".into(),
            ));
        }
        let mut loss = 0f64;
        let mut acc: Option<GradStore> = None;
        let sink = GradientSink::default();
        for batch in self.micro_batches(rows.to_vec()) {
            let trace = crate::memtrace::enabled();
            if trace {
                crate::memtrace::point("before forward");
            }
            let (nll, counted) = self.batch_nll(&batch, dropout, true, Some(&sink))?;
            if counted == 0 {
                continue;
            }
            let part = (nll / loss_tokens as f64)?;
            loss += part.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if trace {
                crate::memtrace::graph(&part);
            }
            let mut grads = part.backward()?;
            if trace {
                crate::memtrace::point("after backward");
            }
            drop(part);
            if trace {
                crate::memtrace::point("graph dropped");
            }
            sink.drain_into(&mut grads)?;
            acc = Some(match acc {
                None => grads,
                Some(mut acc) => {
                    for v in self.lora.vars.iter().flat_map(|v| [&v.a, &v.b]) {
                        if let Some(g) = grads.get(v) {
                            let sum = match acc.get(v) {
                                Some(a) => (a + g)?,
                                None => g.clone(),
                            };
                            acc.insert(v, sum);
                        }
                    }
                    acc
                }
            });
        }
        let grads = acc.ok_or_else(|| TuneError::Training("no gradient was computed".into()))?;
        Ok((loss, grads, loss_tokens))
    }

    /// The loss of `examples` and the gradients of every A and B (clipped as a step clips
    /// them; no dropout, no update), in the checkpoint's row order, with the norm before
    /// clipping: for gradient checks.
    pub fn gradients(&mut self, examples: &[TrainExample]) -> Result<Gradients, TuneError> {
        let rows = self.row_refs(examples);
        self.run(|t| {
            let (loss, mut grads, _) = t.accumulate(&rows, false)?;
            let norm = t.clip(&mut grads)?;
            let mut pairs = Vec::with_capacity(t.lora.vars.len());
            for v in &t.lora.vars {
                let zeros = |x: &Var| x.as_tensor().zeros_like();
                let a = match grads.get(&v.a) {
                    Some(g) => g.clone(),
                    None => zeros(&v.a)?,
                };
                let b = match grads.get(&v.b) {
                    Some(g) => g.clone(),
                    None => zeros(&v.b)?,
                };
                pairs.push(TrainedPair {
                    module: v.module.clone(),
                    a,
                    b: t.checkpoint_rows(&v.module, &b)?,
                });
            }
            pairs.sort_by(|x, y| x.module.cmp(&y.module));
            Ok(Gradients { loss, norm, pairs })
        })
    }

    /// B's rows in the checkpoint's order (where the file permutes q/k rows, llama.cpp, or the
    /// loader reorders ChatGLM-6B's query_key_value).
    fn checkpoint_rows(&self, module: &str, b: &Tensor) -> Result<Tensor, TuneError> {
        let Some(perm) = self.model.lora_output_permutation(module) else {
            return Ok(b.clone());
        };
        let mut inverse = vec![0u32; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p as usize] = i as u32;
        }
        let inverse = Tensor::from_vec(inverse, perm.len(), b.device())?;
        Ok(b.index_select(&inverse, 0)?)
    }

    /// The gradients' global L2 norm; scales them to `max_grad_norm` when above it (as
    /// torch's `clip_grad_norm_`: by max / (norm + 1e-6)).
    fn clip(&self, grads: &mut GradStore) -> Result<f64, TuneError> {
        let mut sq = 0f64;
        for v in self.lora.vars.iter().flat_map(|v| [&v.a, &v.b]) {
            if let Some(g) = grads.get(v) {
                sq += g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        if let Some(max) = self.config.max_grad_norm {
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                for v in self.lora.vars.iter().flat_map(|v| [&v.a, &v.b]) {
                    if let Some(g) = grads.remove(v) {
                        grads.insert(v, (g * coef)?);
                    }
                }
            }
        }
        Ok(norm)
    }

    /// Trains up to the end of epoch `epochs` (counted from the run's start: a trainer
    /// restored from a checkpoint continues from its data cursor), each epoch's examples
    /// shuffled by (seed, epoch), one optimizer step per `batch_size × grad_accumulation`
    /// examples; writes checkpoints per [`Trainer::set_checkpoints`] (a failed write stops
    /// training with the error; the checkpoints before it stay). `on_step` sees every step
    /// and may stop training (`ControlFlow::Break`). Returns this call's reports.
    pub fn train(
        &mut self,
        examples: &[TrainExample],
        epochs: usize,
        on_step: &mut dyn FnMut(&StepReport) -> ControlFlow<()>,
    ) -> Result<Vec<StepReport>, TuneError> {
        if examples.is_empty() {
            return Err(TuneError::Validation("no training examples".into()));
        }
        for (i, e) in examples.iter().enumerate() {
            self.check(i, e)?;
        }
        let rows = self.row_refs(examples);
        let per_step = self.config.batch_size * self.config.grad_accumulation;
        let steps_per_epoch = rows.len().div_ceil(per_step);
        let total = self.planned_steps(rows.len(), epochs);
        if self.step_in_epoch >= steps_per_epoch {
            return Err(TuneError::Validation(format!(
                "the data cursor (epoch {}, step {}) is past the {steps_per_epoch} steps of an \
                 epoch of these examples",
                self.epoch + 1,
                self.step_in_epoch
            )));
        }
        let fingerprint = match self.checkpoints {
            Some(ref plan) if plan.every > 0 => crate::dataset::fingerprint(examples),
            _ => String::new(),
        };
        let mut reports = Vec::new();
        while self.epoch < epochs {
            let epoch = self.epoch;
            let order = epoch_order(self.config.seed, epoch, rows.len());
            let steps: Vec<&[usize]> = order.chunks(per_step).collect();
            for (index, chunk) in steps.iter().enumerate().skip(self.step_in_epoch) {
                let step: Vec<Row<'_>> = chunk.iter().map(|&i| rows[i].clone()).collect();
                let mut report = self.run(|t| t.step_inner(&step, total, epoch))?;
                if index + 1 == steps.len() {
                    self.epoch += 1;
                    self.step_in_epoch = 0;
                } else {
                    self.step_in_epoch = index + 1;
                }
                if let Some(plan) = &self.checkpoints
                    && plan.every > 0
                    && self.steps_done.is_multiple_of(plan.every)
                {
                    let plan = plan.clone();
                    let checkpoint = self.checkpoint(&fingerprint, total)?;
                    report.checkpoint = Some(save_checkpoint(&plan.dir, &checkpoint, plan.keep)?);
                }
                let flow = on_step(&report);
                reports.push(report);
                if flow.is_break() {
                    return Ok(reports);
                }
            }
        }
        Ok(reports)
    }

    /// The optimizer steps a run of `epochs` over `rows` rows takes (examples, or packed
    /// rows: [`Trainer::rows`]): the configured total, or as many as the epochs hold.
    pub fn planned_steps(&self, rows: usize, epochs: usize) -> usize {
        let per_step = self.config.batch_size * self.config.grad_accumulation;
        match self.config.total_steps {
            0 => rows.div_ceil(per_step) * epochs,
            n => n,
        }
    }

    /// The hyper-parameters a resumed run must share with its checkpoint.
    fn hyperparameters(&self, total_steps: usize) -> Hyperparameters {
        let c = &self.config;
        Hyperparameters {
            learning_rate: c.learning_rate,
            warmup_steps: c.warmup_steps as u64,
            total_steps: total_steps as u64,
            weight_decay: c.weight_decay,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            batch_size: c.batch_size as u64,
            grad_accumulation: c.grad_accumulation as u64,
            max_grad_norm: c.max_grad_norm,
            seed: c.seed,
            packing: c.packing.map(|n| n as u64),
        }
    }

    /// The whole training state (A/B as trained, AdamW's moments and step, the schedule's
    /// step, the data cursor, dropout's generator), for examples whose
    /// [`crate::dataset::fingerprint`] is `data_fingerprint` and a run of `total_steps`
    /// optimizer steps ([`Trainer::planned_steps`]). B and its moments keep the trainer's row
    /// order (a checkpoint is read back only by the trainer, on the same model).
    pub fn checkpoint(
        &self,
        data_fingerprint: &str,
        total_steps: usize,
    ) -> Result<Checkpoint, TuneError> {
        let mut modules = Vec::with_capacity(self.lora.vars.len());
        for (i, v) in self.lora.vars.iter().enumerate() {
            let moments = |k: usize| {
                self.optimizer
                    .moments(k)
                    .ok_or_else(|| TuneError::Training("the optimizer lost a parameter".into()))
            };
            let (am, av) = moments(2 * i)?;
            let (bm, bv) = moments(2 * i + 1)?;
            modules.push(ModuleState {
                module: v.module.clone(),
                a: v.a.as_tensor().copy()?,
                b: v.b.as_tensor().copy()?,
                a_first_moment: am.clone(),
                a_second_moment: av.clone(),
                b_first_moment: bm.clone(),
                b_second_moment: bv.clone(),
            });
        }
        Ok(Checkpoint {
            progress: Progress {
                optimizer_step: self.optimizer.step_count() as u64,
                schedule_step: self.steps_done as u64,
                epoch: self.epoch as u64,
                batch_index: self.step_in_epoch as u64,
                rng_state: self.lora.rng_state()?,
            },
            spec: self.config.lora.clone(),
            hyperparameters: self.hyperparameters(total_steps),
            data_fingerprint: data_fingerprint.to_owned(),
            modules,
        })
    }

    /// Continues from `checkpoint`: refuses one made with another LoRA spec, other
    /// hyper-parameters, another run length (`total_steps`) or other data (saying what
    /// differs), then restores A/B, AdamW's state, the schedule, the data cursor and
    /// dropout's generator.
    pub fn restore(
        &mut self,
        checkpoint: &Checkpoint,
        data_fingerprint: &str,
        total_steps: usize,
    ) -> Result<(), TuneError> {
        checkpoint.check_resumable(
            &self.config.lora,
            &self.hyperparameters(total_steps),
            data_fingerprint,
        )?;
        let device = self.model.device.clone();
        let dtype = self.config.dtype;
        let mut values = Vec::with_capacity(self.lora.vars.len());
        let mut moments = Vec::with_capacity(2 * self.lora.vars.len());
        for v in &self.lora.vars {
            let Some(m) = checkpoint.modules.iter().find(|m| m.module == v.module) else {
                return Err(TuneError::Validation(format!(
                    "cannot resume: the checkpoint has no state for `{}`",
                    v.module
                )));
            };
            if m.a.dims() != v.a.dims() || m.b.dims() != v.b.dims() {
                return Err(TuneError::Validation(format!(
                    "cannot resume: `{}` is A {:?} / B {:?} in the checkpoint and {:?} / {:?} \
                     in this model",
                    v.module,
                    m.a.dims(),
                    m.b.dims(),
                    v.a.dims(),
                    v.b.dims()
                )));
            }
            let fit = |t: &Tensor| t.to_device(&device)?.to_dtype(dtype);
            values.push((fit(&m.a)?, fit(&m.b)?));
            moments.push((m.a_first_moment.clone(), m.a_second_moment.clone()));
            moments.push((m.b_first_moment.clone(), m.b_second_moment.clone()));
        }
        let p = checkpoint.progress;
        self.optimizer.restore(p.optimizer_step as usize, moments)?;
        for (v, (a, b)) in self.lora.vars.iter().zip(values) {
            v.a.set(&a)?;
            v.b.set(&b)?;
        }
        self.steps_done = p.schedule_step as usize;
        self.epoch = p.epoch as usize;
        self.step_in_epoch = p.batch_index as usize;
        *self
            .lora
            .rng
            .lock()
            .map_err(|_| TuneError::Training("dropout generator poisoned".into()))? =
            SplitMix64(p.rng_state);
        Ok(())
    }

    /// `--resume`: restores the checkpoint at `dir` (one `step-N` directory) or the newest
    /// one under it, for a run of `epochs` over `examples` ([`Trainer::restore`]'s checks).
    /// Returns the checkpoint's directory; an error when `dir` holds none.
    pub fn resume(
        &mut self,
        dir: &Path,
        examples: &[TrainExample],
        epochs: usize,
    ) -> Result<PathBuf, TuneError> {
        let path = find_checkpoint(dir)?.ok_or_else(|| {
            TuneError::Validation(format!(
                "--resume {}: no checkpoint there (a step-N directory, or a directory holding \
                 them)",
                dir.display()
            ))
        })?;
        let checkpoint = load_checkpoint(&path, &self.model.device)?;
        let total = self.planned_steps(self.rows(examples).len(), epochs);
        self.restore(&checkpoint, &crate::dataset::fingerprint(examples), total)
            .map_err(|e| match e {
                TuneError::Validation(m) => {
                    TuneError::Validation(format!("{}: {m}", path.display()))
                }
                other => other,
            })?;
        Ok(path)
    }

    /// Mean cross-entropy over the counted tokens of `examples`, without dropout or
    /// gradients (validation loss).
    pub fn evaluate(&mut self, examples: &[TrainExample]) -> Result<f64, TuneError> {
        for (i, e) in examples.iter().enumerate() {
            self.check(i, e)?;
        }
        let rows = self.row_refs(examples);
        self.run(|t| {
            let mut sum = 0f64;
            let mut count = 0usize;
            for batch in t.micro_batches(rows) {
                let (nll, n) = t.batch_nll(&batch, false, false, None)?;
                sum += nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                count += n;
            }
            if count == 0 {
                return Err(TuneError::Validation(
                    "no token of the examples counts in the loss".into(),
                ));
            }
            Ok(sum / count as f64)
        })
    }

    /// Logits [batch, tokens, vocab] of the model with the adapter as it stands (no dropout).
    pub fn logits(&self, tokens: &Tensor) -> Result<Tensor, TuneError> {
        Ok(self
            .model
            .forward_train(tokens, &self.lora.view(false, false))?)
    }

    /// [`Trainer::logits`] of rows of packed examples ([`Segments`]).
    pub fn logits_segments(
        &self,
        tokens: &Tensor,
        segments: &Segments,
    ) -> Result<Tensor, TuneError> {
        Ok(self
            .model
            .forward_train_segments(tokens, &self.lora.view(false, false), segments)?)
    }

    /// The trained pairs, by module, in the checkpoint's row order (B un-permuted where the
    /// file stores q/k rows in llama.cpp's order), in the training dtype.
    pub fn pairs(&self) -> Result<Vec<TrainedPair>, TuneError> {
        let mut out = Vec::with_capacity(self.lora.vars.len());
        for v in &self.lora.vars {
            let b = self.checkpoint_rows(&v.module, &v.b.as_tensor().copy()?)?;
            out.push(TrainedPair {
                module: v.module.clone(),
                a: v.a.as_tensor().copy()?,
                b,
            });
        }
        out.sort_by(|x, y| x.module.cmp(&y.module));
        Ok(out)
    }

    /// Starts from existing pairs (an adapter to continue, `--init-adapter`), given in the
    /// checkpoint's row order; every trained module must be among them, with its shapes.
    pub fn load_pairs(&mut self, pairs: &[TrainedPair]) -> Result<(), TuneError> {
        for v in &self.lora.vars {
            let Some(p) = pairs.iter().find(|p| p.module == v.module) else {
                return Err(TuneError::Validation(format!(
                    "the initial adapter has no pair for `{}`",
                    v.module
                )));
            };
            if p.a.dims() != v.a.dims() || p.b.dims() != v.b.dims() {
                return Err(TuneError::Validation(format!(
                    "`{}`: the initial adapter's A {:?} / B {:?} do not fit {:?} / {:?}",
                    v.module,
                    p.a.dims(),
                    p.b.dims(),
                    v.a.dims(),
                    v.b.dims()
                )));
            }
            let device = &self.model.device;
            let mut b = p.b.to_device(device)?.to_dtype(self.config.dtype)?;
            if let Some(perm) = self.model.lora_output_permutation(&v.module) {
                let n = perm.len();
                b = b.index_select(&Tensor::from_vec(perm, n, device)?, 0)?;
            }
            v.a.set(&p.a.to_device(device)?.to_dtype(self.config.dtype)?)?;
            v.b.set(&b)?;
        }
        Ok(())
    }
}

/// The order of the examples in epoch `epoch`: a pure function of (seed, epoch), so that a
/// resumed run rebuilds it from its data cursor.
fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut rng =
        SplitMix64(seed ^ 0x5EED_0F0D_E5E5 ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_follows_a_cosine_to_zero() {
        let c = TrainConfig {
            learning_rate: 1.0,
            warmup_steps: 4,
            ..TrainConfig::default()
        };
        assert_eq!(c.lr_at(0, 14), 0.0);
        assert_eq!(c.lr_at(2, 14), 0.5);
        assert_eq!(c.lr_at(4, 14), 1.0);
        assert!((c.lr_at(9, 14) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(14, 14).abs() < 1e-12);
        assert!(c.lr_at(20, 14).abs() < 1e-12);
        let flat = TrainConfig {
            learning_rate: 1.0,
            ..TrainConfig::default()
        };
        assert_eq!(flat.lr_at(0, 10), 1.0);
        assert_eq!(flat.lr_at(5, 0), 1.0);
    }
}
