//! `zhiku tune`: trains a LoRA adapter on the chat model the stack serves, from a dataset in
//! the formats users already have (alpaca, sharegpt), and writes it in PEFT's layout for the
//! generator's `--lora NAME=DIR` (or PEFT, or vLLM).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::DType;
use zhiku_lm::{ComputePath, ModelSpec};
use zhiku_tuner::dataset::{
    LengthPolicy, read_conversations, render_dataset, split_train_validation,
};
use zhiku_tuner::peft::{BaseModel, read_adapter, write_adapter};
use zhiku_tuner::{CheckpointPlan, StepReport, TrainConfig, Trainer};
use zhiku_tuner::{LoraInit, LoraSpec, TuneError};

use crate::stack::StackArgs;

/// How A starts (B always starts at zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitArg {
    /// A ~ N(0, 1/r), as the article describes.
    Gaussian,
    /// Kaiming-uniform, PEFT's default.
    Kaiming,
}

/// What to do with an example longer than --max-seq-len.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TooLong {
    Truncate,
    Skip,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TuneArgs {
    /// Training data: alpaca (instruction/input/output) or sharegpt (conversations or
    /// messages) records, as a JSON array or JSON lines. Without it, --kb NAME makes the
    /// examples from that knowledge base (see --examples).
    #[arg(long, env = "ZHIKU_TUNE_DATA")]
    pub data: Option<PathBuf>,
    /// Where to write the adapter (adapter_config.json + adapter_model.safetensors). An
    /// adapter already there is replaced once the new one is complete.
    #[arg(long, env = "ZHIKU_TUNE_OUT")]
    pub out: PathBuf,
    /// LoRA rank r.
    #[arg(long, env = "ZHIKU_TUNE_RANK", default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha: the update is (alpha/r)·B·A.
    #[arg(long, env = "ZHIKU_TUNE_ALPHA", default_value_t = 16.0)]
    pub alpha: f64,
    /// Dropout on the LoRA branch's input while training.
    #[arg(long, env = "ZHIKU_TUNE_DROPOUT", default_value_t = 0.05)]
    pub dropout: f64,
    /// Layers that get adapters: q, k, v, o, gate, up, down (comma-separated).
    #[arg(
        long,
        env = "ZHIKU_TUNE_TARGET",
        value_delimiter = ',',
        default_value = "q,v"
    )]
    pub target: Vec<String>,
    /// How A is initialised.
    #[arg(long, env = "ZHIKU_TUNE_INIT", value_enum, default_value_t = InitArg::Gaussian)]
    pub init: InitArg,
    /// Start from this PEFT adapter (same rank and targets) instead of B = 0.
    #[arg(long, env = "ZHIKU_TUNE_INIT_ADAPTER")]
    pub init_adapter: Option<PathBuf>,
    /// Peak learning rate (AdamW), reached after the warm-up, then a cosine decay to 0.
    #[arg(long, env = "ZHIKU_TUNE_LEARNING_RATE", default_value_t = 2e-4)]
    pub learning_rate: f64,
    /// Optimizer steps of linear warm-up.
    #[arg(long, env = "ZHIKU_TUNE_WARMUP_STEPS", default_value_t = 0)]
    pub warmup_steps: usize,
    /// AdamW weight decay.
    #[arg(long, env = "ZHIKU_TUNE_WEIGHT_DECAY", default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Passes over the training examples.
    #[arg(long, env = "ZHIKU_TUNE_EPOCHS", default_value_t = 3)]
    pub epochs: usize,
    /// Examples per forward (padded to the longest).
    #[arg(long, env = "ZHIKU_TUNE_BATCH_SIZE", default_value_t = 1)]
    pub batch_size: usize,
    /// Forwards whose gradients add up to one optimizer step.
    #[arg(long, env = "ZHIKU_TUNE_GRAD_ACCUMULATION", default_value_t = 4)]
    pub grad_accumulation: usize,
    /// Gradients are scaled to this global L2 norm at most (0: no clipping).
    #[arg(long, env = "ZHIKU_TUNE_MAX_GRAD_NORM", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Longest example in tokens, prompt and answer together.
    #[arg(long, env = "ZHIKU_TUNE_MAX_SEQ_LEN", default_value_t = 1024)]
    pub max_seq_len: usize,
    /// Examples longer than --max-seq-len: cut (kept when an answer token is left) or left out.
    #[arg(long, env = "ZHIKU_TUNE_TOO_LONG", value_enum, default_value_t = TooLong::Truncate)]
    pub too_long: TooLong,
    /// Share of the records held out for the validation loss after each epoch (0: none).
    #[arg(long, env = "ZHIKU_TUNE_VALIDATION", default_value_t = 0.1)]
    pub validation: f64,
    /// Stop when the validation loss has not improved for this many epochs (0: never); the
    /// adapter of the best epoch is the one written.
    #[arg(long, env = "ZHIKU_TUNE_EARLY_STOP", default_value_t = 1)]
    pub early_stop: usize,
    /// Seeds A's initialisation, dropout, the split and the order of examples.
    #[arg(long, env = "ZHIKU_TUNE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// CPU threads for training (default: every core).
    #[arg(long, env = "ZHIKU_TUNE_THREADS")]
    pub threads: Option<usize>,
    /// One JSON object per line (steps, epochs, the result) instead of the progress bar.
    #[arg(long, env = "ZHIKU_TUNE_JSON")]
    pub json: bool,
    /// Write a checkpoint (A/B, the optimizer's state, the data cursor) every N optimizer
    /// steps (0: none); --resume continues from one.
    #[arg(long, env = "ZHIKU_TUNE_CHECKPOINT_EVERY", default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Where checkpoints go (default: OUT.checkpoints beside the adapter).
    #[arg(long, env = "ZHIKU_TUNE_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// How many of the newest checkpoints to keep.
    #[arg(long, env = "ZHIKU_TUNE_KEEP_CHECKPOINTS", default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Continue the run whose checkpoint is DIR (a step-N directory) or the newest under
    /// DIR; the data and every training flag must be the same (the error names what
    /// differs).
    #[arg(long, env = "ZHIKU_TUNE_RESUME")]
    pub resume: Option<PathBuf>,
    /// Recompute each block's activations in the backward pass instead of keeping them:
    /// less memory for about a third more compute; the same gradients.
    #[arg(long, env = "ZHIKU_TUNE_GRADIENT_CHECKPOINTING")]
    pub gradient_checkpointing: bool,
    /// The evaluation gate and the binding to a knowledge base (tune_gate.rs).
    #[command(flatten)]
    pub gate: crate::tune_gate::GateArgs,
    /// Examples made from the knowledge base (--kb) when there is no --data (tune_examples.rs).
    #[command(flatten)]
    pub from_kb: crate::tune_examples::ExampleArgs,
}

/// Runs `zhiku tune`; errors print as one line and exit 1 (2 for bad input).
pub fn run(stack: &StackArgs, args: &TuneArgs) -> ExitCode {
    match train(stack, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zhiku tune: {e}");
            match e {
                TuneError::Validation(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn spec(args: &TuneArgs) -> LoraSpec {
    LoraSpec {
        rank: args.rank,
        alpha: args.alpha,
        dropout: args.dropout,
        targets: args.target.iter().map(|t| t.trim().to_owned()).collect(),
        init: match args.init {
            InitArg::Gaussian => LoraInit::Gaussian,
            InitArg::Kaiming => LoraInit::Kaiming,
        },
    }
}

/// The GGUF file the chat model resolves to, when it is one on this machine (its SHA-256
/// goes into the adapter's config).
fn gguf_path(model: &str, gguf_file: &str, models_dir: &Path) -> Option<PathBuf> {
    let path = Path::new(model);
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    match zhiku_models::ModelSource::resolve(model, Some(models_dir)).ok()? {
        zhiku_models::ModelSource::Local(dir) => {
            let named = dir.join(gguf_file);
            named.is_file().then_some(named)
        }
        _ => None,
    }
}

fn emit(args: &TuneArgs, value: serde_json::Value, human: impl FnOnce() -> String) {
    if args.json {
        println!("{value}");
    } else {
        eprintln!("{}", human());
    }
}

fn train(stack: &StackArgs, args: &TuneArgs) -> Result<(), TuneError> {
    if !(0.0..1.0).contains(&args.validation) {
        return Err(TuneError::Validation(format!(
            "--validation {} is not a share in [0, 1)",
            args.validation
        )));
    }
    if args.epochs == 0 {
        return Err(TuneError::Validation("--epochs must be at least 1".into()));
    }
    let models = stack.models();
    let (device, _) = zhiku_models::parse_device(&stack.device).map_err(TuneError::Validation)?;
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let data = args.data.as_deref().ok_or_else(|| {
        TuneError::Validation("no training data: give --data FILE, or --kb NAME".into())
    })?;
    let conversations = read_conversations(data)?;
    let (train_records, validation_records) =
        split_train_validation(&conversations, args.validation, args.seed)?;

    let started = Instant::now();
    let mut model_spec = ModelSpec::cpu(models.chat.clone(), models.gguf_file.clone());
    model_spec.models_dir = stack.models_dir.clone();
    model_spec.device = device.clone();
    model_spec.dtype = dtype;
    model_spec.compute = ComputePath::Tensors;
    let model = zhiku_lm::load_model(&model_spec)?.into_trainable()?;
    let policy = match args.too_long {
        TooLong::Truncate => LengthPolicy::Truncate,
        TooLong::Skip => LengthPolicy::Skip,
    };
    let (train_set, report) = render_dataset(
        &train_records,
        &model.template,
        &model.tokenizer,
        args.max_seq_len,
        policy,
    )?;
    let (validation_set, _) = render_dataset(
        &validation_records,
        &model.template,
        &model.tokenizer,
        args.max_seq_len,
        policy,
    )?;
    if train_set.is_empty() {
        return Err(TuneError::Validation(format!(
            "{}: no training example is left ({} records read, {} longer than --max-seq-len {})",
            data.display(),
            report.read,
            report.skipped_too_long,
            args.max_seq_len
        )));
    }
    emit(
        args,
        serde_json::json!({"event": "data", "model": models.chat, "train": train_set.len(),
            "validation": validation_set.len(), "report": report,
            "load_seconds": started.elapsed().as_secs_f64()}),
        || {
            format!(
                "model {} ({}); {} training and {} validation examples; {} truncated, {} \
                 skipped as longer than {} tokens",
                models.chat,
                model.info.architecture,
                train_set.len(),
                validation_set.len(),
                report.truncated,
                report.skipped_too_long,
                args.max_seq_len
            )
        },
    );

    let per_step = args.batch_size.max(1) * args.grad_accumulation.max(1);
    let steps_per_epoch = train_set.len().div_ceil(per_step);
    let config = TrainConfig {
        lora: spec(args),
        learning_rate: args.learning_rate,
        warmup_steps: args.warmup_steps,
        total_steps: steps_per_epoch * args.epochs,
        weight_decay: args.weight_decay,
        batch_size: args.batch_size,
        grad_accumulation: args.grad_accumulation,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        seed: args.seed,
        threads: args.threads,
        dtype,
        gradient_checkpointing: args.gradient_checkpointing,
        ..TrainConfig::default()
    };
    let lora = config.lora.clone();
    let mut trainer = Trainer::new(model.decoder, config)?;
    if let Some(dir) = &args.init_adapter {
        let init = read_adapter(dir, &device)?;
        trainer.load_pairs(&init.pairs)?;
    }
    if let Some(dir) = &args.resume {
        let from = trainer.resume(dir, &train_set, args.epochs)?;
        let (epoch, step) = trainer.cursor();
        emit(
            args,
            serde_json::json!({"event": "resume", "checkpoint": from,
                "step": trainer.steps_done(), "epoch": epoch + 1}),
            || {
                format!(
                    "resumed from {} at step {} (epoch {}, its step {step})",
                    from.display(),
                    trainer.steps_done(),
                    epoch + 1
                )
            },
        );
    }
    if args.checkpoint_every > 0 {
        let dir = args.checkpoint_dir.clone().unwrap_or_else(|| {
            let mut name = args.out.file_name().unwrap_or_default().to_os_string();
            name.push(".checkpoints");
            args.out.with_file_name(name)
        });
        trainer.set_checkpoints(Some(CheckpointPlan {
            dir,
            every: args.checkpoint_every,
            keep: args.keep_checkpoints.max(1),
        }));
    }

    let bar = (!args.json).then(|| {
        let bar = indicatif::ProgressBar::new((steps_per_epoch * args.epochs) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut best: Option<(f64, usize, Vec<zhiku_tuner::TrainedPair>)> = None;
    let mut since_best = 0usize;
    let first_epoch = trainer.cursor().0;
    if let Some(bar) = &bar {
        bar.set_position(trainer.steps_done() as u64);
    }
    for epoch in first_epoch..args.epochs {
        let mut on_step = |r: &StepReport| {
            match &bar {
                Some(bar) => {
                    bar.set_position(r.step as u64);
                    bar.set_message(format!(
                        "epoch {} loss {:.4} lr {:.2e} {:.0} tok/s",
                        epoch + 1,
                        r.loss,
                        r.lr,
                        r.tokens_per_second
                    ));
                }
                None => println!(
                    "{}",
                    serde_json::json!({"event": "step", "epoch": epoch + 1, "step": r.step,
                        "total_steps": r.total_steps, "loss": r.loss, "lr": r.lr,
                        "grad_norm": r.grad_norm, "tokens": r.tokens,
                        "tokens_per_second": r.tokens_per_second,
                        "checkpoint": r.checkpoint})
                ),
            }
            ControlFlow::Continue(())
        };
        // Up to the end of this epoch (a resumed run finishes the epoch it stopped in).
        let reports = trainer.train(&train_set, epoch + 1, &mut on_step)?;
        let train_loss = reports.iter().map(|r| r.loss).sum::<f64>() / reports.len().max(1) as f64;
        let validation_loss = if validation_set.is_empty() {
            None
        } else {
            Some(trainer.evaluate(&validation_set)?)
        };
        let line = format!(
            "epoch {}: train loss {train_loss:.4}{}",
            epoch + 1,
            validation_loss.map_or_else(String::new, |v| format!(", validation loss {v:.4}"))
        );
        match &bar {
            Some(bar) => bar.println(line),
            None => println!(
                "{}",
                serde_json::json!({"event": "epoch", "epoch": epoch + 1,
                    "train_loss": train_loss, "validation_loss": validation_loss})
            ),
        }
        let Some(v) = validation_loss else { continue };
        if best.as_ref().is_none_or(|(b, _, _)| v < *b) {
            best = Some((v, epoch + 1, trainer.pairs()?));
            since_best = 0;
        } else {
            since_best += 1;
            if args.early_stop > 0 && since_best >= args.early_stop {
                if let Some(bar) = &bar {
                    bar.println(format!(
                        "early stop: no better validation loss for {since_best} epoch(s)"
                    ));
                }
                break;
            }
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (pairs, epoch, validation_loss) = match best {
        Some((v, epoch, pairs)) => (pairs, epoch, Some(v)),
        None => (trainer.pairs()?, args.epochs, None),
    };
    let file = gguf_path(&models.chat, &models.gguf_file, &stack.models_dir);
    let base = BaseModel::new(models.chat.clone(), file.as_deref())?;
    write_adapter(&args.out, &pairs, &lora, &base)?;
    emit(
        args,
        serde_json::json!({"event": "done", "adapter": args.out, "epoch": epoch,
            "validation_loss": validation_loss, "seconds": started.elapsed().as_secs_f64()}),
        || {
            format!(
                "adapter written to {} (epoch {epoch}{}); serve it with \
                 zhiku-generator --lora NAME={}",
                args.out.display(),
                validation_loss.map_or_else(String::new, |v| format!(", validation loss {v:.4}")),
                args.out.display()
            )
        },
    );
    Ok(())
}
