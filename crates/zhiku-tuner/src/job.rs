//! One training job, from dataset records to a written adapter: the base model loaded for
//! training, the records rendered with its template, epochs with a validation loss and
//! early stop, the best epoch's adapter written in PEFT's layout (complete or not at all).
//! `zhiku tune --data` and the `Tuner` service both run this; each shows the job's
//! [`JobEvent`]s its own way (a progress bar, JSON lines, a gRPC stream) and may stop it.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use zhiku_lm::decoder::BatchModel;
use zhiku_lm::{ComputePath, ModelSpec};

use crate::dataset::{
    Conversation, CounterfactualReport, DatasetReport, LengthPolicy, render_dataset,
    split_train_validation, swap_figures,
};
use crate::error::TuneError;
use crate::peft::{BaseModel, read_adapter, write_adapter};
use crate::spec::{LoraSpec, TrainExample, TrainedPair};
use crate::trainer::{
    CheckpointPlan, Padding, StepReport, TrainConfig, Trainer, check_targets, epoch_padding,
    layout_rows,
};

/// The model a job trains an adapter for: the chat model as the generator is configured.
#[derive(Debug, Clone)]
pub struct JobBase {
    /// A hub id, a directory or a file (as `--chat-model` / `--model` take it).
    pub model: String,
    /// The GGUF file to pick in a directory or hub repository ("" for the only one).
    pub gguf_file: String,
    pub models_dir: PathBuf,
    pub device: Device,
}

impl JobBase {
    /// Trains in f32 on the CPU and bf16 on a GPU.
    pub fn dtype(&self) -> DType {
        if self.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        }
    }

    /// The GGUF file the model resolves to, when it is one on this machine (its SHA-256
    /// goes into the adapter's config).
    pub fn gguf_path(&self) -> Option<PathBuf> {
        let path = Path::new(&self.model);
        if path.is_file() {
            return Some(path.to_path_buf());
        }
        match zhiku_models::ModelSource::resolve(&self.model, Some(&self.models_dir)).ok()? {
            zhiku_models::ModelSource::Local(dir) => {
                let named = dir.join(&self.gguf_file);
                named.is_file().then_some(named)
            }
            _ => None,
        }
    }
}

/// A job's hyper-parameters (the CLI's flags of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct JobParams {
    pub lora: LoraSpec,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accumulation: usize,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    pub max_seq_len: usize,
    pub too_long: LengthPolicy,
    /// Pack examples side by side into rows of up to `max_seq_len` tokens (each attends
    /// only to itself); `batch_size` then counts rows.
    pub packing: bool,
    /// Share of the records held out for the validation loss (0: none).
    pub validation: f64,
    /// Epochs without a better validation loss before stopping (0: never).
    pub early_stop: usize,
    /// Share (0-1) of the training records whose answers' figures, where the prompt states
    /// them too, are swapped for other figures of the same shape in every turn
    /// ([`crate::dataset::swap_figures`]; drawn with the seed). 0: none. Validation records
    /// keep theirs.
    pub counterfactual_share: f64,
    pub seed: u64,
    pub threads: Option<usize>,
    pub gradient_checkpointing: bool,
    /// A PEFT adapter to start from instead of B = 0.
    pub init_adapter: Option<PathBuf>,
    /// A checkpoint (or a directory of them) to continue from.
    pub resume: Option<PathBuf>,
    pub checkpoints: Option<CheckpointPlan>,
}

impl Default for JobParams {
    fn default() -> Self {
        let train = TrainConfig::default();
        Self {
            lora: train.lora,
            learning_rate: train.learning_rate,
            warmup_steps: 0,
            weight_decay: 0.0,
            epochs: 3,
            batch_size: 1,
            grad_accumulation: 4,
            max_grad_norm: 1.0,
            max_seq_len: 1024,
            too_long: LengthPolicy::Truncate,
            packing: false,
            validation: 0.1,
            early_stop: 1,
            counterfactual_share: 0.0,
            seed: 42,
            threads: None,
            gradient_checkpointing: false,
            init_adapter: None,
            resume: None,
            checkpoints: None,
        }
    }
}

impl JobParams {
    /// Refuses what no training could run with, before anything is loaded.
    pub fn check(&self) -> Result<(), TuneError> {
        let fail = |m: String| Err(TuneError::Validation(m));
        if !(0.0..1.0).contains(&self.validation) {
            return fail(format!(
                "--validation {} is not a share in [0, 1)",
                self.validation
            ));
        }
        if !(0.0..=1.0).contains(&self.counterfactual_share) {
            return fail(format!(
                "--counterfactual-share {} is not a share in [0, 1]",
                self.counterfactual_share
            ));
        }
        if self.epochs == 0 {
            return fail("--epochs must be at least 1".into());
        }
        if self.lora.rank == 0 {
            return fail("LoRA rank must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return fail(format!(
                "LoRA dropout {} is not in [0, 1)",
                self.lora.dropout
            ));
        }
        if self.batch_size == 0 || self.grad_accumulation == 0 {
            return fail("batch size and gradient accumulation must be at least 1".into());
        }
        if self.max_seq_len == 0 {
            return fail("the longest example (max_seq_len) must be at least 1 token".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return fail(format!(
                "learning rate {} is not a positive number",
                self.learning_rate
            ));
        }
        check_targets(&self.lora.targets)
    }

    /// Optimizer steps in one epoch of `rows` rows (examples, or packed rows:
    /// [`JobParams::rows`]).
    pub fn steps_per_epoch(&self, rows: usize) -> usize {
        rows.div_ceil(self.batch_size.max(1) * self.grad_accumulation.max(1))
    }

    /// The rows the trainer lays `examples` out in: one each, or packed up to
    /// `max_seq_len` tokens with `packing`.
    pub fn rows(&self, examples: &[TrainExample]) -> Vec<Vec<usize>> {
        layout_rows(examples, self.packing_capacity(), self.seed)
    }

    /// The rows' length with packing.
    pub fn packing_capacity(&self) -> Option<usize> {
        self.packing.then_some(self.max_seq_len)
    }
}

/// What a job reports on its way; the receiver returns `Break` to stop the job, which then
/// ends with [`TuneError::Cancelled`] and writes nothing.
#[derive(Debug)]
pub enum JobEvent<'a> {
    /// The model is loaded and the records rendered.
    Data {
        architecture: &'a str,
        train: usize,
        validation: usize,
        report: &'a DatasetReport,
        total_steps: usize,
        load_seconds: f64,
        /// How the first epoch's forwards are filled (rows: packed rows with packing).
        padding: Padding,
    },
    /// Continuing from a checkpoint, at this optimizer step and (1-based) epoch.
    Resumed {
        checkpoint: &'a Path,
        step: usize,
        epoch: usize,
        step_in_epoch: usize,
    },
    /// One optimizer step of (1-based) `epoch`.
    Step {
        epoch: usize,
        report: &'a StepReport,
    },
    /// The end of an epoch.
    Epoch {
        epoch: usize,
        train_loss: f64,
        validation_loss: Option<f64>,
    },
    /// Stopping early: the validation loss has not improved for this many epochs.
    EarlyStop { epochs_without_improvement: usize },
}

/// What a finished job wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub adapter: PathBuf,
    /// The epoch whose adapter was written (the best validation loss's).
    pub epoch: usize,
    pub validation_loss: Option<f64>,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub seconds: f64,
}

/// Runs a job: trains an adapter of `base` on `records` (`source` names them in errors) and
/// writes it to `out`, replacing an adapter there only once the new one is complete.
pub fn run_job(
    base: &JobBase,
    records: &[Conversation],
    source: &str,
    params: &JobParams,
    out: &Path,
    on_event: &mut dyn FnMut(JobEvent<'_>) -> ControlFlow<()>,
) -> Result<JobOutcome, TuneError> {
    params.check()?;
    let started = Instant::now();
    let (train_records, validation_records) =
        split_train_validation(records, params.validation, params.seed)?;
    let dtype = base.dtype();
    let mut model_spec = ModelSpec::cpu(base.model.clone(), base.gguf_file.clone());
    model_spec.models_dir = base.models_dir.clone();
    model_spec.device = base.device.clone();
    model_spec.dtype = dtype;
    model_spec.compute = ComputePath::Tensors;
    let model = zhiku_lm::load_model(&model_spec)?.into_trainable()?;
    let render = |records: &[Conversation]| {
        render_dataset(
            records,
            &model.template,
            &model.tokenizer,
            model.decoder.prompt_suffix(),
            params.max_seq_len,
            params.too_long,
        )
    };
    let (train_records, counterfactual) = if params.counterfactual_share > 0.0 {
        swap_figures(&train_records, params.counterfactual_share, params.seed)
    } else {
        (train_records, CounterfactualReport::default())
    };
    let (train_set, mut report) = render(&train_records)?;
    report.counterfactual = counterfactual;
    let (validation_set, _) = render(&validation_records)?;
    if train_set.is_empty() {
        return Err(TuneError::Validation(format!(
            "{source}: no training example is left ({} records read, {} longer than \
             --max-seq-len {})",
            report.read, report.skipped_too_long, params.max_seq_len
        )));
    }
    let rows = params.rows(&train_set);
    let steps_per_epoch = params.steps_per_epoch(rows.len());
    let total_steps = steps_per_epoch * params.epochs;
    let config = TrainConfig {
        lora: params.lora.clone(),
        learning_rate: params.learning_rate,
        warmup_steps: params.warmup_steps,
        total_steps,
        weight_decay: params.weight_decay,
        batch_size: params.batch_size,
        grad_accumulation: params.grad_accumulation,
        packing: params.packing_capacity(),
        max_grad_norm: (params.max_grad_norm > 0.0).then_some(params.max_grad_norm),
        seed: params.seed,
        threads: params.threads,
        dtype,
        gradient_checkpointing: params.gradient_checkpointing,
        ..TrainConfig::default()
    };
    go_on(on_event(JobEvent::Data {
        architecture: &model.info.architecture,
        train: train_set.len(),
        validation: validation_set.len(),
        report: &report,
        total_steps,
        load_seconds: started.elapsed().as_secs_f64(),
        padding: epoch_padding(&train_set, &config, 0),
    }))?;
    let mut trainer = Trainer::new(model.decoder, config)?;
    if let Some(dir) = &params.init_adapter {
        let init = read_adapter(dir, &base.device)?;
        // A pair this run does not train would be dropped from the adapter it writes.
        let trained = trainer.modules();
        if let Some(extra) = init.pairs.iter().find(|p| !trained.contains(&p.module)) {
            return Err(TuneError::Validation(format!(
                "the initial adapter {} has a pair for `{}`, which this run does not train; \
                 give the --target and --layers it was trained with",
                dir.display(),
                extra.module
            )));
        }
        trainer.load_pairs(&init.pairs)?;
    }
    if let Some(dir) = &params.resume {
        let from = trainer.resume(dir, &train_set, params.epochs)?;
        let (epoch, step_in_epoch) = trainer.cursor();
        go_on(on_event(JobEvent::Resumed {
            checkpoint: &from,
            step: trainer.steps_done(),
            epoch: epoch + 1,
            step_in_epoch,
        }))?;
    }
    trainer.set_checkpoints(params.checkpoints.clone());

    let mut best: Option<(f64, usize, Vec<TrainedPair>)> = None;
    let mut since_best = 0usize;
    let first_epoch = trainer.cursor().0;
    for epoch in first_epoch..params.epochs {
        let mut stopped = false;
        let mut on_step = |r: &StepReport| {
            let flow = on_event(JobEvent::Step {
                epoch: epoch + 1,
                report: r,
            });
            stopped |= flow.is_break();
            flow
        };
        // Up to the end of this epoch (a resumed run finishes the epoch it stopped in).
        let reports = trainer.train(&train_set, epoch + 1, &mut on_step)?;
        if stopped {
            return Err(TuneError::Cancelled);
        }
        let train_loss = reports.iter().map(|r| r.loss).sum::<f64>() / reports.len().max(1) as f64;
        let validation_loss = if validation_set.is_empty() {
            None
        } else {
            Some(trainer.evaluate(&validation_set)?)
        };
        go_on(on_event(JobEvent::Epoch {
            epoch: epoch + 1,
            train_loss,
            validation_loss,
        }))?;
        let Some(v) = validation_loss else { continue };
        if best.as_ref().is_none_or(|(b, _, _)| v < *b) {
            best = Some((v, epoch + 1, trainer.pairs()?));
            since_best = 0;
        } else {
            since_best += 1;
            if params.early_stop > 0 && since_best >= params.early_stop {
                go_on(on_event(JobEvent::EarlyStop {
                    epochs_without_improvement: since_best,
                }))?;
                break;
            }
        }
    }
    let (pairs, epoch, validation_loss) = match best {
        Some((v, epoch, pairs)) => (pairs, epoch, Some(v)),
        None => (trainer.pairs()?, params.epochs, None),
    };
    let base_model = BaseModel::new(base.model.clone(), base.gguf_path().as_deref())?;
    // The trainer's spec: --layers resolved to the blocks it trained.
    write_adapter(out, &pairs, &trainer.config().lora, &base_model)?;
    Ok(JobOutcome {
        adapter: out.to_path_buf(),
        epoch,
        validation_loss,
        train_examples: train_set.len(),
        validation_examples: validation_set.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn go_on(flow: ControlFlow<()>) -> Result<(), TuneError> {
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(TuneError::Cancelled),
    }
}
