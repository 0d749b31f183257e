//! `zhiku tune`: trains a LoRA adapter on the chat model the stack serves, from a dataset in
//! the formats users already have (alpaca, sharegpt), and writes it in PEFT's layout for the
//! generator's `--lora NAME=DIR` (or PEFT, or vLLM).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use zhiku_tuner::dataset::{LengthPolicy, read_conversations};
use zhiku_tuner::{CheckpointPlan, JobBase, JobEvent, JobParams, run_job};
use zhiku_tuner::{LayerSelection, LoraInit, LoraSpec, TuneError};

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
    /// The blocks (decoder layers) that get adapters: `all`, `last:N` for the top N, or
    /// indices and ranges counted from 0 such as `0,2,20-23` (PEFT's layers_to_transform).
    /// Blocks below the lowest adapted one need no backward pass: `last:8` of 24 makes a step
    /// cheaper.
    #[arg(long, env = "ZHIKU_TUNE_LAYERS", default_value = "all")]
    pub layers: LayerSelection,
    /// How A is initialised.
    #[arg(long, env = "ZHIKU_TUNE_INIT", value_enum, default_value_t = InitArg::Gaussian)]
    pub init: InitArg,
    /// Start from this PEFT adapter (same rank, targets and --layers) instead of B = 0.
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
    /// Share (0-1) of the training records whose answer's figures, where the prompt states
    /// them too (`14082` MiB, `0.2.7`), are swapped for other figures of the same shape in
    /// every turn (drawn with --seed), so that the adapter learns to read figures from the
    /// passage rather than learn them as facts of the topic. Validation records keep
    /// theirs. 0: none.
    #[arg(long, env = "ZHIKU_TUNE_COUNTERFACTUAL_SHARE", default_value_t = 0.0)]
    pub counterfactual_share: f64,
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
    /// Pack examples side by side into rows of up to --max-seq-len tokens (first-fit
    /// decreasing, seeded) instead of padding each: each example attends only to itself,
    /// from position 0, so the loss and gradients are those of the examples unpacked;
    /// --batch-size then counts rows.
    #[arg(long, env = "ZHIKU_TUNE_PACKING")]
    pub packing: bool,
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
        layers: args.layers.clone(),
    }
}

/// The data line's note on swapped figures (empty when none were asked for).
fn counterfactual_summary(c: &zhiku_tuner::dataset::CounterfactualReport) -> String {
    // Swapped records are eligible ones: none eligible, nothing was asked for or found.
    if c.eligible == 0 {
        return String::new();
    }
    format!(
        "; figures swapped in {} of the {} training records whose answer states a figure \
         of their prompt ({} figures)",
        c.swapped, c.eligible, c.figures
    )
}

fn emit(args: &TuneArgs, value: serde_json::Value, human: impl FnOnce() -> String) {
    if args.json {
        println!("{value}");
    } else {
        eprintln!("{}", human());
    }
}

/// The job's hyper-parameters, as the flags give them.
fn params(args: &TuneArgs) -> JobParams {
    let checkpoints = (args.checkpoint_every > 0).then(|| CheckpointPlan {
        dir: args.checkpoint_dir.clone().unwrap_or_else(|| {
            let mut name = args.out.file_name().unwrap_or_default().to_os_string();
            name.push(".checkpoints");
            args.out.with_file_name(name)
        }),
        every: args.checkpoint_every,
        keep: args.keep_checkpoints.max(1),
    });
    JobParams {
        lora: spec(args),
        learning_rate: args.learning_rate,
        warmup_steps: args.warmup_steps,
        weight_decay: args.weight_decay,
        epochs: args.epochs,
        batch_size: args.batch_size,
        grad_accumulation: args.grad_accumulation,
        max_grad_norm: args.max_grad_norm,
        max_seq_len: args.max_seq_len,
        too_long: match args.too_long {
            TooLong::Truncate => LengthPolicy::Truncate,
            TooLong::Skip => LengthPolicy::Skip,
        },
        validation: args.validation,
        early_stop: args.early_stop,
        counterfactual_share: args.counterfactual_share,
        seed: args.seed,
        threads: args.threads,
        gradient_checkpointing: args.gradient_checkpointing,
        packing: args.packing,
        init_adapter: args.init_adapter.clone(),
        resume: args.resume.clone(),
        checkpoints,
    }
}

fn train(stack: &StackArgs, args: &TuneArgs) -> Result<(), TuneError> {
    let params = params(args);
    params.check()?;
    let models = stack.models();
    let (device, _) = zhiku_models::parse_device(&stack.device).map_err(TuneError::Validation)?;
    let data = args.data.as_deref().ok_or_else(|| {
        TuneError::Validation("no training data: give --data FILE, or --kb NAME".into())
    })?;
    let conversations = read_conversations(data)?;
    let base = JobBase {
        model: models.chat.clone(),
        gguf_file: models.gguf_file.clone(),
        models_dir: stack.models_dir.clone(),
        device,
    };

    let mut bar: Option<indicatif::ProgressBar> = None;
    // A line beside the progress bar, or on stderr before it exists.
    let println = |bar: &Option<indicatif::ProgressBar>, line: String| match bar {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    };
    let mut on_event = |event: JobEvent<'_>| {
        match event {
            JobEvent::Data {
                architecture,
                train,
                validation,
                report,
                total_steps,
                load_seconds,
                padding,
            } => {
                emit(
                    args,
                    serde_json::json!({"event": "data", "model": models.chat, "train": train,
                        "validation": validation, "report": report,
                        "load_seconds": load_seconds, "packing": args.packing,
                        "rows": padding.rows, "padding_share": padding.share()}),
                    || {
                        format!(
                            "model {} ({architecture}); {train} training and {validation} \
                             validation examples; {} truncated, {} skipped as longer than {} \
                             tokens; {}",
                            models.chat,
                            report.truncated,
                            report.skipped_too_long,
                            args.max_seq_len,
                            padding.summary(args.packing.then_some(args.max_seq_len))
                        ) + &counterfactual_summary(&report.counterfactual)
                    },
                );
                if !args.json {
                    let b = indicatif::ProgressBar::new(total_steps as u64);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar = Some(b);
                }
            }
            JobEvent::Resumed {
                checkpoint,
                step,
                epoch,
                step_in_epoch,
            } => {
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "resume", "checkpoint": checkpoint,
                            "step": step, "epoch": epoch})
                    );
                } else {
                    println(
                        &bar,
                        format!(
                            "resumed from {} at step {step} (epoch {epoch}, its step \
                             {step_in_epoch})",
                            checkpoint.display()
                        ),
                    );
                }
                if let Some(bar) = &bar {
                    bar.set_position(step as u64);
                }
            }
            JobEvent::Step { epoch, report: r } => match &bar {
                Some(bar) => {
                    bar.set_position(r.step as u64);
                    bar.set_message(format!(
                        "epoch {epoch} loss {:.4} lr {:.2e} {:.0} tok/s",
                        r.loss, r.lr, r.tokens_per_second
                    ));
                }
                None => println!(
                    "{}",
                    serde_json::json!({"event": "step", "epoch": epoch, "step": r.step,
                        "total_steps": r.total_steps, "loss": r.loss, "lr": r.lr,
                        "grad_norm": r.grad_norm, "tokens": r.tokens,
                        "tokens_per_second": r.tokens_per_second,
                        "checkpoint": r.checkpoint})
                ),
            },
            JobEvent::Epoch {
                epoch,
                train_loss,
                validation_loss,
            } => match &bar {
                Some(bar) => bar.println(format!(
                    "epoch {epoch}: train loss {train_loss:.4}{}",
                    validation_loss
                        .map_or_else(String::new, |v| format!(", validation loss {v:.4}"))
                )),
                None => println!(
                    "{}",
                    serde_json::json!({"event": "epoch", "epoch": epoch,
                        "train_loss": train_loss, "validation_loss": validation_loss})
                ),
            },
            JobEvent::EarlyStop {
                epochs_without_improvement,
            } => {
                if let Some(bar) = &bar {
                    bar.println(format!(
                        "early stop: no better validation loss for \
                         {epochs_without_improvement} epoch(s)"
                    ));
                }
            }
        }
        ControlFlow::Continue(())
    };
    let result = run_job(
        &base,
        &conversations,
        &data.display().to_string(),
        &params,
        &args.out,
        &mut on_event,
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let outcome = result?;
    let (epoch, validation_loss) = (outcome.epoch, outcome.validation_loss);
    emit(
        args,
        serde_json::json!({"event": "done", "adapter": args.out, "epoch": epoch,
            "validation_loss": validation_loss, "seconds": outcome.seconds}),
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
