//! tune-bench: LoRA training throughput on the CPU, zhiku's trainer beside PyTorch + PEFT on
//! the same GGUF model (transformers dequantizes it as zhiku does), the same token ids,
//! sequence length, batch, rank, alpha, dropout, targets, optimizer and threads, measured in
//! one run. Prints tokens/s of each (median and mean over the timed steps), their ratio, the
//! first step's loss of each (the same weights and data: they agree), and the peak resident
//! memory of each process.
//!
//! ```text
//! cargo run --release -p zhiku-tuner --bin tune-bench -- \
//!   --python /work/.venv-peft/bin/python --threads 2
//! ```
//! The Python side is `scripts/tune-bench.py` (torch, transformers, peft, gguf).
//!
//! With `--packing`, the steps hold `--examples-per-step` examples of varied lengths
//! (random ids of seq-len/8 to seq-len tokens, or the records of `--data` rendered with the
//! model's template) and zhiku runs them twice, padded by length and packed into rows of
//! `--seq-len`, beside PyTorch + PEFT padded by length; tokens/s counts the examples' tokens
//! (never padding), and each row says what share of the tokens its forwards ran was padding.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use candle_core::DType;
use clap::Parser;
use zhiku_lm::decoder::BatchModel;
use zhiku_lm::seeded::SplitMix64;
use zhiku_lm::{ComputePath, ModelSpec, TrainableModel};
use zhiku_tuner::dataset::{LengthPolicy, read_conversations, render_dataset};
use zhiku_tuner::{
    LayerSelection, LoraInit, LoraSpec, Padding, TrainConfig, TrainExample, Trainer, epoch_padding,
    layout_rows,
};

#[derive(Debug, Parser)]
#[command(
    name = "tune-bench",
    about = "LoRA training tokens/s on the CPU: zhiku beside PyTorch + PEFT"
)]
struct Args {
    /// The GGUF model: a .gguf file, or a directory holding one.
    #[arg(
        long,
        env = "ZHIKU_TUNE_BENCH_MODEL",
        default_value = "models/SmolLM2-135M-Instruct-GGUF"
    )]
    model: PathBuf,
    /// The Python that has torch, transformers, peft and gguf (e.g. a venv's bin/python).
    #[arg(long, env = "ZHIKU_TUNE_BENCH_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// The Python side of the benchmark.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_SCRIPT", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/tune-bench.py"))]
    script: PathBuf,
    /// Measure zhiku only.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_NO_PYTHON")]
    no_python: bool,
    /// Tokens per sequence (the loss counts the second half of each).
    #[arg(long, env = "ZHIKU_TUNE_BENCH_SEQ_LEN", default_value_t = 256)]
    seq_len: usize,
    /// Sequences per optimizer step (one forward and backward).
    #[arg(long, env = "ZHIKU_TUNE_BENCH_BATCH_SIZE", default_value_t = 2)]
    batch_size: usize,
    #[arg(long, env = "ZHIKU_TUNE_BENCH_RANK", default_value_t = 8)]
    rank: usize,
    #[arg(long, env = "ZHIKU_TUNE_BENCH_ALPHA", default_value_t = 16.0)]
    alpha: f64,
    #[arg(long, env = "ZHIKU_TUNE_BENCH_DROPOUT", default_value_t = 0.05)]
    dropout: f64,
    /// LoRA targets: q, k, v, o, gate, up, down.
    #[arg(
        long,
        env = "ZHIKU_TUNE_BENCH_TARGET",
        value_delimiter = ',',
        default_value = "q,v"
    )]
    target: Vec<String>,
    /// The blocks that get adapters, as `zhiku tune --layers` reads them (`all`, `last:N`,
    /// `0,2,20-23`); PEFT gets the same blocks as `layers_to_transform`.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_LAYERS", default_value = "all")]
    layers: LayerSelection,
    /// CPU threads of each side.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_THREADS", default_value_t = 2)]
    threads: usize,
    /// Untimed steps first.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_WARMUP", default_value_t = 1)]
    warmup: usize,
    /// Timed optimizer steps.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_STEPS", default_value_t = 5)]
    steps: usize,
    /// Both sides recompute activations in the backward pass.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_GRADIENT_CHECKPOINTING")]
    gradient_checkpointing: bool,
    /// Seeds the token ids.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_SEED", default_value_t = 7)]
    seed: u64,
    /// Examples of varied lengths, zhiku padded and packed (rows of --seq-len tokens,
    /// --batch-size rows a forward) beside PyTorch + PEFT padded.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_PACKING")]
    packing: bool,
    /// With --packing: the examples of each optimizer step.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_EXAMPLES_PER_STEP", default_value_t = 16)]
    examples_per_step: usize,
    /// With --packing: train on these records (alpaca or sharegpt, as `zhiku tune --data`
    /// reads them, truncated to --seq-len) instead of random ids, in file order.
    #[arg(long, env = "ZHIKU_TUNE_BENCH_DATA", requires = "packing")]
    data: Option<PathBuf>,
}

/// What one side measured.
struct Side {
    step_seconds: Vec<f64>,
    first_loss: f64,
    peak_rss_bytes: Option<u64>,
    load_seconds: f64,
}

impl Side {
    /// (median of each step's tokens/s, all tokens / all seconds) over the timed steps,
    /// whose examples' tokens are `tokens` (step by step).
    fn tokens_per_second(&self, tokens: &[usize]) -> (f64, f64) {
        let mut rates: Vec<f64> = self
            .step_seconds
            .iter()
            .zip(tokens)
            .map(|(s, &n)| n as f64 / s)
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = if rates.is_empty() {
            f64::NAN
        } else if rates.len() % 2 == 1 {
            rates[rates.len() / 2]
        } else {
            (rates[rates.len() / 2 - 1] + rates[rates.len() / 2]) / 2.0
        };
        let seconds: f64 = self.step_seconds.iter().sum();
        let all: usize = tokens.iter().take(self.step_seconds.len()).sum();
        (median, all as f64 / seconds)
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tune-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The .gguf file `model` names.
fn gguf_file(model: &Path) -> BenchResult<PathBuf> {
    if model.is_file() {
        return Ok(model.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(model)
        .map_err(|e| format!("{}: {e}", model.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "{}: name the .gguf file ({} found)",
            model.display(),
            found.len()
        )
        .into()),
    }
}

/// The same seeded token ids for both sides: `steps` steps of `batch` sequences.
fn examples(args: &Args, vocab: usize, steps: usize) -> Vec<Vec<TrainExample>> {
    let mut rng = SplitMix64(args.seed);
    (0..steps)
        .map(|_| {
            (0..args.batch_size)
                .map(|_| TrainExample {
                    tokens: (0..args.seq_len)
                        .map(|_| (rng.next_u64() % vocab as u64) as u32)
                        .collect(),
                    loss_mask: (0..args.seq_len).map(|i| i >= args.seq_len / 2).collect(),
                    bidirectional: 0,
                })
                .collect()
        })
        .collect()
}

/// `--packing` without `--data`: steps of `--examples-per-step` random examples of
/// seq-len/8 to seq-len tokens, the loss on the second half of each.
fn varied_examples(args: &Args, vocab: usize, steps: usize) -> Vec<Vec<TrainExample>> {
    let mut rng = SplitMix64(args.seed);
    let shortest = (args.seq_len / 8).max(2);
    (0..steps)
        .map(|_| {
            (0..args.examples_per_step)
                .map(|_| {
                    let len =
                        shortest + (rng.next_u64() % (args.seq_len - shortest + 1) as u64) as usize;
                    TrainExample {
                        tokens: (0..len)
                            .map(|_| (rng.next_u64() % vocab as u64) as u32)
                            .collect(),
                        loss_mask: (0..len).map(|i| i >= len / 2).collect(),
                        bidirectional: 0,
                    }
                })
                .collect()
        })
        .collect()
}

/// The packed side's steps: the examples of every step packed together into rows of
/// --seq-len tokens, as an epoch packs them, and the rows dealt in order into as many steps
/// (packing each step's few examples alone would leave each step's last row part empty,
/// which a whole epoch's packing does not).
fn packed_steps(args: &Args, data: &[Vec<TrainExample>]) -> Vec<Vec<TrainExample>> {
    let all: Vec<TrainExample> = data.iter().flatten().cloned().collect();
    let rows = layout_rows(&all, Some(args.seq_len), args.seed);
    let per_step = rows.len().div_ceil(data.len().max(1)).max(1);
    rows.chunks(per_step)
        .map(|step| step.iter().flatten().map(|&i| all[i].clone()).collect())
        .collect()
}

/// The examples' tokens of each timed step (padding never counts).
fn timed_tokens(args: &Args, data: &[Vec<TrainExample>]) -> Vec<usize> {
    data.iter()
        .skip(args.warmup)
        .map(|step| step.iter().map(|e| e.tokens.len()).sum())
        .collect()
}

/// `--data`: the records rendered with the model's template and tokenizer, truncated to
/// --seq-len, `--examples-per-step` a step in file order (from the start again when they
/// run out).
fn dataset_examples(
    args: &Args,
    path: &Path,
    model: &TrainableModel,
    steps: usize,
) -> BenchResult<Vec<Vec<TrainExample>>> {
    let records = read_conversations(path)?;
    let (examples, report) = render_dataset(
        &records,
        &model.template,
        &model.tokenizer,
        model.decoder.prompt_suffix(),
        args.seq_len,
        LengthPolicy::Truncate,
    )?;
    if examples.is_empty() {
        return Err(format!("{}: no example", path.display()).into());
    }
    eprintln!(
        "{}: {} records, {} examples ({} truncated to {} tokens, {} left out: no answer \
         token within them)",
        path.display(),
        records.len(),
        examples.len(),
        report.truncated,
        args.seq_len,
        report.skipped_too_long
    );
    let mut cycle = examples.iter().cycle();
    Ok((0..steps)
        .map(|_| {
            cycle
                .by_ref()
                .take(args.examples_per_step)
                .cloned()
                .collect()
        })
        .collect())
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loads the model for training: (model, load seconds).
fn load(file: &Path) -> BenchResult<(TrainableModel, f64)> {
    let started = Instant::now();
    let mut spec = ModelSpec::cpu(file.to_string_lossy(), "");
    spec.compute = ComputePath::Tensors;
    let model = zhiku_lm::load_model(&spec)?.into_trainable()?;
    Ok((model, started.elapsed().as_secs_f64()))
}

/// zhiku's training configuration: packed into rows of `packing` tokens or padded.
fn zhiku_config(args: &Args, packing: Option<usize>) -> TrainConfig {
    TrainConfig {
        lora: LoraSpec {
            rank: args.rank,
            alpha: args.alpha,
            dropout: args.dropout,
            targets: args.target.clone(),
            init: LoraInit::Kaiming,
            layers: args.layers.clone(),
        },
        batch_size: args.batch_size,
        grad_accumulation: 1,
        max_grad_norm: Some(1.0),
        threads: Some(args.threads),
        dtype: DType::F32,
        gradient_checkpointing: args.gradient_checkpointing,
        packing,
        ..TrainConfig::default()
    }
}

/// The share of padding in the forwards of `data`'s steps under `config` (a step is one
/// `Trainer::step`: its rows sorted by length, `batch_size` a forward).
fn padding_share(data: &[Vec<TrainExample>], config: &TrainConfig) -> f64 {
    let mut all = Padding {
        rows: 0,
        forwards: 0,
        tokens: 0,
        slots: 0,
    };
    for step in data {
        let whole_step = TrainConfig {
            grad_accumulation: step.len(),
            ..config.clone()
        };
        let padding = epoch_padding(step, &whole_step, 0);
        all.tokens += padding.tokens;
        all.slots += padding.slots;
    }
    all.share()
}

fn run_zhiku(
    args: &Args,
    name: &str,
    trainer: &mut Trainer,
    load_seconds: f64,
    data: &[Vec<TrainExample>],
) -> BenchResult<Side> {
    let mut step_seconds = Vec::new();
    let mut first_loss = f64::NAN;
    for (i, step) in data.iter().enumerate() {
        let t = Instant::now();
        let report = trainer.step(step)?;
        let seconds = t.elapsed().as_secs_f64();
        if i == 0 {
            first_loss = report.loss;
        }
        if i >= args.warmup {
            step_seconds.push(seconds);
        }
        eprintln!(
            "{name} step {}: {seconds:.2} s, loss {:.4}",
            i + 1,
            report.loss
        );
    }
    Ok(Side {
        step_seconds,
        first_loss,
        peak_rss_bytes: peak_rss_bytes(),
        load_seconds,
    })
}

fn hf_target(short: &str) -> String {
    format!("{short}_proj")
}

/// PEFT's `layers_to_transform` for the blocks zhiku resolved (`all`: none given).
fn peft_layers(layers: &LayerSelection) -> Vec<String> {
    match layers {
        LayerSelection::Only(list) => vec![
            "--layers".to_owned(),
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ],
        LayerSelection::All | LayerSelection::Last(_) => Vec::new(),
    }
}

fn run_python(
    args: &Args,
    file: &Path,
    data: &[Vec<TrainExample>],
    layers: &LayerSelection,
) -> BenchResult<Side> {
    let data_path =
        std::env::temp_dir().join(format!("zhiku-tune-bench-{}.json", std::process::id()));
    let steps: Vec<serde_json::Value> = data
        .iter()
        .map(|step| {
            serde_json::json!(
                step.iter()
                    .map(|e| serde_json::json!({"tokens": e.tokens, "loss_mask": e.loss_mask}))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    std::fs::write(&data_path, serde_json::to_vec(&steps)?)?;
    let targets: Vec<String> = args.target.iter().map(|t| hf_target(t)).collect();
    let output = Command::new(&args.python)
        .arg(&args.script)
        .arg("--gguf")
        .arg(file)
        .arg("--data")
        .arg(&data_path)
        .args(["--rank", &args.rank.to_string()])
        .args(["--alpha", &args.alpha.to_string()])
        .args(["--dropout", &args.dropout.to_string()])
        .args(["--targets", &targets.join(",")])
        .args(["--threads", &args.threads.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(peft_layers(layers))
        .args(if args.packing {
            vec!["--batch-size".to_owned(), args.batch_size.to_string()]
        } else {
            Vec::new()
        })
        .args(if args.gradient_checkpointing {
            &["--gradient-checkpointing"][..]
        } else {
            &[][..]
        })
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args.python.display()));
    let _ = std::fs::remove_file(&data_path);
    let output = output?;
    if !output.status.success() {
        return Err(format!("{} failed ({})", args.script.display(), output.status).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("the Python side printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let step_seconds = v["step_seconds"]
        .as_array()
        .ok_or("no step_seconds")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok(Side {
        step_seconds,
        first_loss: v["first_loss"].as_f64().unwrap_or(f64::NAN),
        peak_rss_bytes: v["peak_rss_bytes"].as_u64(),
        load_seconds: v["load_seconds"].as_f64().unwrap_or(f64::NAN),
    })
}

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "?".into(),
        |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    )
}

fn run(args: &Args) -> BenchResult<()> {
    if args.seq_len < 2 || args.batch_size == 0 || args.steps == 0 || args.examples_per_step == 0 {
        return Err(
            "--seq-len must be at least 2, --batch-size, --steps and --examples-per-step at \
             least 1"
                .into(),
        );
    }
    let file = gguf_file(&args.model)?;
    let (model, load_seconds) = load(&file)?;
    let vocab = model.decoder.spec.vocab;
    let steps = args.warmup + args.steps;
    let data = match (&args.data, args.packing) {
        (Some(path), _) => dataset_examples(args, path, &model, steps)?,
        (None, true) => varied_examples(args, vocab, steps),
        (None, false) => examples(args, vocab, steps),
    };
    let tokens = timed_tokens(args, &data);
    let shape = if args.packing {
        format!(
            "{} examples a step ({}; {} tokens on average), zhiku padded by length and packed \
             into rows of {} tokens, {} rows a forward",
            args.examples_per_step,
            match &args.data {
                Some(path) => path.display().to_string(),
                None => format!(
                    "random ids, {} to {} tokens",
                    (args.seq_len / 8).max(2),
                    args.seq_len
                ),
            },
            data.iter().flatten().map(|e| e.tokens.len()).sum::<usize>()
                / data.iter().flatten().count().max(1),
            args.seq_len,
            args.batch_size
        )
    } else {
        format!(
            "{} tokens × batch {}, loss on the second half",
            args.seq_len, args.batch_size
        )
    };
    println!(
        "tune-bench: {}; {shape}; LoRA rank {}, alpha {}, dropout {}, targets {}, blocks {}; \
         AdamW, clipping 1.0; f32; {} threads; {} timed steps after {}{}",
        file.display(),
        args.rank,
        args.alpha,
        args.dropout,
        args.target.join(","),
        args.layers,
        args.threads,
        args.steps,
        args.warmup,
        if args.gradient_checkpointing {
            "; gradient checkpointing"
        } else {
            ""
        }
    );
    let mut rows: Vec<(String, Side, Option<f64>, Vec<usize>)> = Vec::new();
    let padded = zhiku_config(args, None);
    let share = args.packing.then(|| padding_share(&data, &padded));
    let mut trainer = Trainer::new(model.decoder, padded)?;
    // `last:N` as the indices it names in this model, for PEFT.
    let layers = trainer.config().lora.layers.clone();
    let side = run_zhiku(args, "zhiku", &mut trainer, load_seconds, &data)?;
    drop(trainer);
    let name = if args.packing {
        "zhiku, padded"
    } else {
        "zhiku (candle)"
    };
    rows.push((name.into(), side, share, tokens.clone()));
    if args.packing {
        let (model, load_seconds) = load(&file)?;
        let packed = zhiku_config(args, Some(args.seq_len));
        let packed_data = packed_steps(args, &data);
        if packed_data.len() <= args.warmup {
            return Err("too few examples for the packed side's timed steps".into());
        }
        let share = padding_share(&packed_data, &packed);
        let mut trainer = Trainer::new(model.decoder, packed)?;
        let side = run_zhiku(
            args,
            "zhiku packed",
            &mut trainer,
            load_seconds,
            &packed_data,
        )?;
        let tokens = timed_tokens(args, &packed_data);
        rows.push(("zhiku, packed".into(), side, Some(share), tokens));
    }
    if !args.no_python {
        let side = run_python(args, &file, &data, &layers)?;
        let name = if args.packing {
            "PyTorch + PEFT, padded"
        } else {
            "PyTorch + PEFT"
        };
        rows.push((name.into(), side, share, tokens.clone()));
    }
    println!(
        "{:<24} {:>14} {:>14} {:>11} {:>10} {:>9} {:>9}",
        "", "tokens/s (med)", "tokens/s (mean)", "first loss", "peak RSS", "load s", "padding"
    );
    let mut median = Vec::new();
    for (name, side, share, tokens) in &rows {
        let (med, mean) = side.tokens_per_second(tokens);
        median.push(med);
        println!(
            "{name:<24} {med:>14.1} {mean:>14.1} {:>11.4} {:>10} {:>9.1} {:>9}",
            side.first_loss,
            gib(side.peak_rss_bytes),
            side.load_seconds,
            share.map_or_else(|| "-".to_owned(), |s| format!("{:.1} %", 100.0 * s))
        );
    }
    if args.packing {
        println!(
            "ratio zhiku packed / zhiku padded (median tokens/s): {:.2}×",
            median[1] / median[0]
        );
        if let Some(theirs) = median.get(2) {
            println!(
                "ratio zhiku packed / PyTorch padded (median tokens/s): {:.2}×",
                median[1] / theirs
            );
            println!(
                "ratio zhiku padded / PyTorch padded (median tokens/s): {:.2}×",
                median[0] / theirs
            );
        }
        println!(
            "(the packed side's steps are the same examples packed as an epoch packs them, \
             dealt into as many steps: its first loss is another step's; peak RSS: zhiku's \
             rows are one process's high-water mark so far)"
        );
    } else if let Some(theirs) = median.get(1) {
        println!(
            "ratio zhiku / PyTorch (median tokens/s): {:.2}×",
            median[0] / theirs
        );
    }
    Ok(())
}
