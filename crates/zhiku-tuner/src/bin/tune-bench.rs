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

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use candle_core::DType;
use clap::Parser;
use zhiku_lm::seeded::SplitMix64;
use zhiku_lm::{ComputePath, ModelSpec};
use zhiku_tuner::{LoraInit, LoraSpec, TrainConfig, TrainExample, Trainer};

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
}

/// What one side measured.
struct Side {
    step_seconds: Vec<f64>,
    first_loss: f64,
    peak_rss_bytes: Option<u64>,
    load_seconds: f64,
}

impl Side {
    fn tokens_per_second(&self, tokens_per_step: usize) -> (f64, f64) {
        let mut s = self.step_seconds.clone();
        s.sort_by(f64::total_cmp);
        let median = if s.is_empty() {
            f64::NAN
        } else if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
        };
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        (
            tokens_per_step as f64 / median,
            tokens_per_step as f64 / mean,
        )
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
                })
                .collect()
        })
        .collect()
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loads the model and readies zhiku's trainer: (trainer, vocabulary, load seconds).
fn zhiku_trainer(args: &Args, file: &Path) -> BenchResult<(Trainer, usize, f64)> {
    let started = Instant::now();
    let mut spec = ModelSpec::cpu(file.to_string_lossy(), "");
    spec.compute = ComputePath::Tensors;
    let model = zhiku_lm::load_model(&spec)?.into_trainable()?;
    let vocab = model.decoder.spec.vocab;
    let config = TrainConfig {
        lora: LoraSpec {
            rank: args.rank,
            alpha: args.alpha,
            dropout: args.dropout,
            targets: args.target.clone(),
            init: LoraInit::Kaiming,
        },
        batch_size: args.batch_size,
        grad_accumulation: 1,
        max_grad_norm: Some(1.0),
        threads: Some(args.threads),
        dtype: DType::F32,
        gradient_checkpointing: args.gradient_checkpointing,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(model.decoder, config)?;
    Ok((trainer, vocab, started.elapsed().as_secs_f64()))
}

fn run_zhiku(
    args: &Args,
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
            "zhiku step {}: {seconds:.2} s, loss {:.4}",
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

fn run_python(args: &Args, file: &Path, data: &[Vec<TrainExample>]) -> BenchResult<Side> {
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
    if args.seq_len < 2 || args.batch_size == 0 || args.steps == 0 {
        return Err("--seq-len must be at least 2, --batch-size and --steps at least 1".into());
    }
    let file = gguf_file(&args.model)?;
    let (mut trainer, vocab, load_seconds) = zhiku_trainer(args, &file)?;
    let data = examples(args, vocab, args.warmup + args.steps);
    let tokens_per_step = args.seq_len * args.batch_size;
    println!(
        "tune-bench: {}; {} tokens × batch {}, loss on the second half; LoRA rank {}, alpha {}, \
         dropout {}, targets {}; AdamW, clipping 1.0; f32; {} threads; {} timed steps after {}{}",
        file.display(),
        args.seq_len,
        args.batch_size,
        args.rank,
        args.alpha,
        args.dropout,
        args.target.join(","),
        args.threads,
        args.steps,
        args.warmup,
        if args.gradient_checkpointing {
            "; gradient checkpointing"
        } else {
            ""
        }
    );
    let zhiku = run_zhiku(args, &mut trainer, load_seconds, &data)?;
    drop(trainer);
    let python = if args.no_python {
        None
    } else {
        Some(run_python(args, &file, &data)?)
    };
    println!(
        "{:<16} {:>14} {:>14} {:>11} {:>10} {:>9}",
        "", "tokens/s (med)", "tokens/s (mean)", "first loss", "peak RSS", "load s"
    );
    let row = |name: &str, side: &Side| {
        let (median, mean) = side.tokens_per_second(tokens_per_step);
        println!(
            "{name:<16} {median:>14.1} {mean:>14.1} {:>11.4} {:>10} {:>9.1}",
            side.first_loss,
            gib(side.peak_rss_bytes),
            side.load_seconds
        );
        median
    };
    let ours = row("zhiku (candle)", &zhiku);
    if let Some(python) = &python {
        let theirs = row("PyTorch + PEFT", python);
        println!(
            "ratio zhiku / PyTorch (median tokens/s): {:.2}×",
            ours / theirs
        );
    }
    Ok(())
}
