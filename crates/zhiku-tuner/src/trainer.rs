//! The LoRA trainer on candle's autograd: A and B of every targeted layer are `Var`s, the
//! model is zhiku-lm's serving [`Decoder`] run through its training forward (W0 frozen, never
//! merged nor copied per step), the loss is the mean cross-entropy over the tokens that the
//! examples' loss masks select, and candle-nn's AdamW steps on a warm-up + cosine schedule
//! with gradient accumulation and global-norm clipping. Seeded: the same seed, data and
//! configuration give the same adapter.
//!
//! Batches: a step's examples are sorted by length and cut into micro-batches of
//! `batch_size`, each right-padded to its longest example. Right padding needs no attention
//! mask (a token never attends to a later one) and pads never count in the loss.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use zhiku_lm::decoder::{BatchModel, Decoder, Qkv};
use zhiku_lm::layers::{Linear, Mlp};
use zhiku_lm::lora::{LoraPair, TrainLora};
use zhiku_lm::seeded::SplitMix64;

use crate::error::TuneError;
use crate::spec::{LoraInit, LoraSpec, TrainExample, TrainedPair};

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
    /// Examples per micro-batch (one forward and backward).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accumulation: usize,
    /// Gradients are scaled so that their global L2 norm is at most this (None: unclipped).
    pub max_grad_norm: Option<f64>,
    /// Seeds A's initialisation, dropout and the order of examples.
    pub seed: u64,
    /// CPU threads of the matmuls (None: candle's default, every core).
    pub threads: Option<usize>,
    /// The dtype of weights, activations and A/B while training (f32 on the CPU, bf16 on a
    /// GPU; f64 for gradient checks).
    pub dtype: DType,
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
            max_grad_norm: Some(1.0),
            seed: 42,
            threads: None,
            dtype: DType::F32,
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

/// One targeted layer's trainable pair.
struct TrainVar {
    module: String,
    a: Var,
    b: Var,
}

/// The trainable adapter: the pairs the forward applies (tensors of the Vars, so that the
/// optimizer's in-place updates show through), and dropout's generator.
struct TrainableLora {
    vars: Vec<TrainVar>,
    pairs: HashMap<String, LoraPair>,
    dropout: f64,
    rng: Mutex<SplitMix64>,
}

/// The adapter as one forward sees it: with dropout (training) or without (evaluation).
struct LoraView<'a> {
    lora: &'a TrainableLora,
    dropout: bool,
}

impl TrainLora for LoraView<'_> {
    fn pair(&self, module: &str) -> Option<&LoraPair> {
        self.lora.pairs.get(module)
    }

    fn lora_input(&self, _module: &str, x: &Tensor) -> candle_core::Result<Tensor> {
        let p = self.lora.dropout;
        if !self.dropout || p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - p);
        let n = x.elem_count();
        let mask: Vec<f64> = {
            let mut rng = self
                .lora
                .rng
                .lock()
                .map_err(|_| candle_core::Error::Msg("dropout generator poisoned".into()))?;
            (0..n)
                .map(|_| if rng.uniform() < p { 0.0 } else { keep })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// The layers that `targets` (q, k, v, qkv, o, gate, up, down) name in `model`, with
/// (in, out): a fused projection is targeted when any of its parts is.
pub fn target_modules(
    model: &Decoder,
    targets: &[String],
) -> Result<Vec<(String, usize, usize)>, TuneError> {
    const KNOWN: [&str; 8] = ["q", "k", "v", "qkv", "o", "gate", "up", "down"];
    if let Some(t) = targets.iter().find(|t| !KNOWN.contains(&t.as_str())) {
        return Err(TuneError::Validation(format!(
            "LoRA target `{t}` is not one of {}",
            KNOWN.join(", ")
        )));
    }
    let wants = |names: &[&str]| names.iter().any(|n| targets.iter().any(|t| t == n));
    let mut out: Vec<&Linear> = Vec::new();
    for block in &model.blocks {
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
    model: Decoder,
    config: TrainConfig,
    lora: TrainableLora,
    optimizer: AdamW,
    steps_done: usize,
    order_rng: SplitMix64,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Trainer {
    /// Readies `model` (as a loader built it for serving) for training: dense weights in
    /// `config.dtype`; A per `config.lora.init`, B = 0 on every targeted layer.
    pub fn new(model: Decoder, config: TrainConfig) -> Result<Self, TuneError> {
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
        let modules = target_modules(&model, &spec.targets)?;
        let mut init_rng = SplitMix64(config.seed);
        let device = model.device.clone();
        let mut vars = Vec::with_capacity(modules.len());
        let mut pairs = HashMap::new();
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
            pairs.insert(
                module.clone(),
                LoraPair {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scale: spec.scale(),
                },
            );
            vars.push(TrainVar { module, a, b });
        }
        let params = ParamsAdamW {
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
        Ok(Self {
            model,
            lora: TrainableLora {
                vars,
                pairs,
                dropout: spec.dropout,
                rng: Mutex::new(SplitMix64(config.seed ^ 0xD0D0_D0D0_D0D0_D0D0)),
            },
            optimizer,
            steps_done: 0,
            order_rng: SplitMix64(config.seed ^ 0x5EED_0F0D_E5E5),
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

    /// The modules being trained, in order.
    pub fn modules(&self) -> Vec<String> {
        self.lora.vars.iter().map(|v| v.module.clone()).collect()
    }

    fn run<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        match self.pool.clone() {
            Some(pool) => pool.install(|| f(self)),
            None => f(self),
        }
    }

    /// Checks an example against the model: same-length tokens and mask, at least two
    /// tokens, inside the context and the vocabulary.
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
        Ok(())
    }

    /// The summed cross-entropy of one micro-batch (right-padded) over its counted tokens,
    /// and how many tokens it counted.
    fn batch_nll(
        &self,
        batch: &[&TrainExample],
        dropout: bool,
    ) -> Result<(Tensor, usize), TuneError> {
        let len = batch.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
        let device = &self.model.device;
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (b, e) in batch.iter().enumerate() {
            ids.extend_from_slice(&e.tokens);
            ids.extend(std::iter::repeat_n(0, len - e.tokens.len()));
            // The logits of position i predict token i + 1.
            for i in 1..e.tokens.len() {
                if e.loss_mask[i] {
                    rows.push((b * len + i - 1) as u32);
                    targets.push(e.tokens[i]);
                }
            }
        }
        let vocab = self.model.spec.vocab;
        if rows.is_empty() {
            return Ok((Tensor::zeros((), self.config.dtype, device)?, 0));
        }
        let tokens = Tensor::from_vec(ids, (batch.len(), len), device)?;
        let view = LoraView {
            lora: &self.lora,
            dropout,
        };
        let logits = self
            .model
            .forward_train(&tokens, &view)?
            .reshape((batch.len() * len, vocab))?;
        let count = rows.len();
        let rows = Tensor::from_vec(rows, count, device)?;
        let logits = logits.index_select(&rows, 0)?;
        // log-sum-exp with the row maximum held constant (it cancels in the value).
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let lse = logits
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .log()?
            .add(&max)?;
        let targets = Tensor::from_vec(targets, (count, 1), device)?;
        let picked = logits.gather(&targets, 1)?;
        Ok(((lse - picked)?.sum_all()?, count))
    }

    /// Micro-batches of a step: sorted by length, `batch_size` each.
    fn micro_batches<'e>(&self, examples: &'e [TrainExample]) -> Vec<Vec<&'e TrainExample>> {
        let mut sorted: Vec<&TrainExample> = examples.iter().collect();
        sorted.sort_by_key(|e| e.tokens.len());
        sorted
            .chunks(self.config.batch_size)
            .map(|c| c.to_vec())
            .collect()
    }

    /// One optimizer step over `examples` (split into micro-batches of `batch_size`, their
    /// gradients summed): loss = mean cross-entropy over every counted token of the step.
    pub fn step(&mut self, examples: &[TrainExample]) -> Result<StepReport, TuneError> {
        let total = self.config.total_steps;
        self.run(|t| t.step_inner(examples, total, 0))
    }

    fn step_inner(
        &mut self,
        examples: &[TrainExample],
        total_steps: usize,
        epoch: usize,
    ) -> Result<StepReport, TuneError> {
        let started = Instant::now();
        let (loss, mut grads, loss_tokens) = self.accumulate(examples, true)?;
        let grad_norm = self.clip(&mut grads)?;
        let lr = self.config.lr_at(self.steps_done, total_steps);
        self.optimizer.set_learning_rate(lr);
        self.optimizer.step(&grads)?;
        self.steps_done += 1;
        let seconds = started.elapsed().as_secs_f64();
        let tokens: usize = examples.iter().map(|e| e.tokens.len()).sum();
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
        })
    }

    /// The step's loss (mean over its counted tokens) and the gradients of A and B summed
    /// over its micro-batches, each micro-batch's loss divided by the step's count so that
    /// accumulation gives the gradient of the whole step's mean.
    fn accumulate(
        &self,
        examples: &[TrainExample],
        dropout: bool,
    ) -> Result<(f64, GradStore, usize), TuneError> {
        for (i, e) in examples.iter().enumerate() {
            self.check(i, e)?;
        }
        let loss_tokens: usize = examples
            .iter()
            .map(|e| e.loss_mask.iter().skip(1).filter(|&&m| m).count())
            .sum();
        if loss_tokens == 0 {
            return Err(TuneError::Validation(
                "no token of the step counts in the loss (every loss mask is false)".into(),
            ));
        }
        let mut loss = 0f64;
        let mut acc: Option<GradStore> = None;
        for batch in self.micro_batches(examples) {
            let (nll, counted) = self.batch_nll(&batch, dropout)?;
            if counted == 0 {
                continue;
            }
            let part = (nll / loss_tokens as f64)?;
            loss += part.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let grads = part.backward()?;
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
        self.run(|t| {
            let (loss, mut grads, _) = t.accumulate(examples, false)?;
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

    /// B's rows in the checkpoint's order (where the file permutes q/k rows, llama.cpp).
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

    /// Trains `epochs` passes over `examples`, shuffled per epoch by the seed, one optimizer
    /// step per `batch_size × grad_accumulation` examples; `on_step` sees every step and
    /// may stop training (`ControlFlow::Break`). Returns the reports.
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
        let per_step = self.config.batch_size * self.config.grad_accumulation;
        let total = match self.config.total_steps {
            0 => examples.len().div_ceil(per_step) * epochs,
            n => n,
        };
        let mut reports = Vec::new();
        for epoch in 0..epochs {
            let mut order: Vec<usize> = (0..examples.len()).collect();
            for i in (1..order.len()).rev() {
                let j = (self.order_rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            for chunk in order.chunks(per_step) {
                let step: Vec<TrainExample> = chunk.iter().map(|&i| examples[i].clone()).collect();
                let report = self.run(|t| t.step_inner(&step, total, epoch))?;
                let flow = on_step(&report);
                reports.push(report);
                if flow.is_break() {
                    return Ok(reports);
                }
            }
        }
        Ok(reports)
    }

    /// Mean cross-entropy over the counted tokens of `examples`, without dropout or
    /// gradients (validation loss).
    pub fn evaluate(&mut self, examples: &[TrainExample]) -> Result<f64, TuneError> {
        for (i, e) in examples.iter().enumerate() {
            self.check(i, e)?;
        }
        self.run(|t| {
            let mut sum = 0f64;
            let mut count = 0usize;
            for batch in t.micro_batches(examples) {
                let (nll, n) = t.batch_nll(&batch, false)?;
                sum += nll.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
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
        let view = LoraView {
            lora: &self.lora,
            dropout: false,
        };
        Ok(self.model.forward_train(tokens, &view)?)
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
