//! GPU benchmark: zhiku's engine on a GLM-4-9B-shaped bf16 checkpoint with random weights,
//! written where it runs (a GPU machine may have no network and no model files), measured
//! against the roofline of the GPU's memory bandwidth.
//!
//! 1. Writes the checkpoint (GLM-4-9B-chat's layout, config.json and a word-level
//!    tokenizer.json; seeded bf16 weights, ~19 GB) and `--adapters` PEFT LoRA adapters of
//!    rank `--adapter-rank` under `--dir`, unless they are there already.
//! 2. Loads it on `--device` in bf16 with the adapters kept unmerged (per-row LoRA).
//! 3. Decode tok/s at each `--batches` count (aggregate, while every stream decodes), and
//!    prefill tok/s of one prompt of each `--prefill-tokens` length; then the same with the
//!    adapters mixed in the batch (stream i uses adapter i mod `--adapters`).
//! 4. Each row against the roofline: a decode step reads every weight but the embedding
//!    table once, so at most bandwidth ÷ those bytes steps per second (× the batch in
//!    tokens); a prefill step is bound by the GPU's bf16 peak instead (2 FLOPs per weight
//!    and token), printed beside it.
//!
//! `--shape tiny` runs the same program on the CPU on a tiny checkpoint of the same layout
//! (the test of this binary). scripts/gpu-bench builds this binary with `--features cuda`
//! and runs it on a GPU machine.
//!
//! ```sh
//! cargo run --release -p zhiku-generator --features cuda --bin gpu-bench -- --dir /tmp/glm4
//! cargo run --release -p zhiku-generator --bin gpu-bench -- --shape tiny --device cpu \
//!     --dir /tmp/tiny --bandwidth-tbs 0.05 --peak-tflops 1
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use zhiku_generator::GeneratorArgs;
use zhiku_generator::config::ComputePathArg;
use zhiku_generator::engine::{EngineConfig, GenerationEngine};
use zhiku_lm::seeded::SplitMix64;
use zhiku_lm::synthetic::{self, ChatGlmShape};
use zhiku_models::PrecisionArg;

// Shared with generator-bench, which uses all of it.
#[allow(dead_code)]
#[path = "support/streams.rs"]
mod streams;
use streams::{aggregate_decode, submit, trace_all, wait};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    /// GLM-4-9B-chat: hidden 4096, 40 layers, 32 heads, 2 KV heads, FFN 13696, vocabulary
    /// 151552.
    #[value(name = "glm4-9b")]
    Glm4_9b,
    /// The tiny test checkpoints' sizes (zhiku_lm::tiny): the same program in seconds on a
    /// CPU.
    Tiny,
}

impl Shape {
    fn sizes(self) -> ChatGlmShape {
        match self {
            Shape::Glm4_9b => ChatGlmShape::GLM4_9B,
            Shape::Tiny => ChatGlmShape::TINY,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "gpu-bench",
    about = "zhiku's generator on a GLM-4-9B-shaped random bf16 checkpoint: decode and \
             prefill tok/s, with and without LoRA adapters, against the GPU's roofline"
)]
struct Args {
    /// Where the checkpoint and adapters are written (and read, when already there).
    #[arg(
        long,
        env = "ZHIKU_BENCH_DIR",
        default_value = "target/gpu-bench-model"
    )]
    dir: PathBuf,
    /// The checkpoint's sizes.
    #[arg(long, env = "ZHIKU_BENCH_SHAPE", value_enum, default_value_t = Shape::Glm4_9b)]
    shape: Shape,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "ZHIKU_BENCH_DEVICE", default_value = "cuda")]
    device: String,
    /// Precision the checkpoint (bf16 on disk) is loaded in.
    #[arg(long, env = "ZHIKU_BENCH_DTYPE", value_enum, default_value_t = PrecisionArg::Bf16)]
    dtype: PrecisionArg,
    /// Concurrent decoding streams, one row each.
    #[arg(
        long,
        env = "ZHIKU_BENCH_BATCHES",
        value_delimiter = ',',
        default_value = "1,16,64"
    )]
    batches: Vec<usize>,
    /// Prompt lengths whose prefill is measured, one row each.
    #[arg(
        long,
        env = "ZHIKU_BENCH_PREFILL_TOKENS",
        value_delimiter = ',',
        default_value = "512,4096"
    )]
    prefill_tokens: Vec<usize>,
    /// Prompt tokens prefilled per engine step (the generator's --prefill-chunk): as long as
    /// the longest prompt, each prompt is one step.
    #[arg(long, env = "ZHIKU_BENCH_PREFILL_CHUNK", default_value_t = 4096)]
    prefill_chunk: usize,
    /// Prompt length of each decoding stream.
    #[arg(long, env = "ZHIKU_BENCH_STREAM_PROMPT_TOKENS", default_value_t = 64)]
    stream_prompt_tokens: usize,
    /// Tokens each stream decodes.
    #[arg(long, env = "ZHIKU_BENCH_DECODE_TOKENS", default_value_t = 32)]
    decode_tokens: usize,
    /// LoRA adapters mixed into the second set of rows (0: none, no second set).
    #[arg(long, env = "ZHIKU_BENCH_ADAPTERS", default_value_t = 4)]
    adapters: usize,
    /// Rank of each adapter (on every Linear layer).
    #[arg(long, env = "ZHIKU_BENCH_ADAPTER_RANK", default_value_t = 16)]
    adapter_rank: usize,
    /// Runs of each measurement after a warm-up; the best counts.
    #[arg(long, env = "ZHIKU_BENCH_RUNS", default_value_t = 2)]
    runs: usize,
    /// The GPU's memory bandwidth in TB/s (default: from nvidia-smi's GPU name: H100 SXM
    /// 3.35, H100 PCIe 2.0, H100 NVL 3.9, H200 4.8).
    #[arg(long, env = "ZHIKU_BENCH_BANDWIDTH_TBS")]
    bandwidth_tbs: Option<f64>,
    /// The GPU's dense bf16 peak in TFLOP/s (default: from the GPU name: H100 SXM and H200
    /// 989, H100 PCIe 756, H100 NVL 835).
    #[arg(long, env = "ZHIKU_BENCH_PEAK_TFLOPS")]
    peak_tflops: Option<f64>,
    /// Seed of the weights and prompts.
    #[arg(long, env = "ZHIKU_BENCH_SEED", default_value_t = 26)]
    seed: u64,
}

/// The GPU's name as nvidia-smi prints it, if there is one.
fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .to_owned();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// (bandwidth TB/s, dense bf16 TFLOP/s) from NVIDIA's data sheets, by GPU name.
fn datasheet(name: &str) -> Option<(f64, f64)> {
    let name = name.to_uppercase();
    if name.contains("H200") {
        Some((4.8, 989.0))
    } else if name.contains("H100") && name.contains("PCIE") {
        Some((2.0, 756.0))
    } else if name.contains("H100") && name.contains("NVL") {
        Some((3.9, 835.0))
    } else if name.contains("H100") {
        // "NVIDIA H100 80GB HBM3" is the SXM part.
        Some((3.35, 989.0))
    } else {
        None
    }
}

/// One row of the results.
struct Row {
    what: String,
    adapters: usize,
    /// Tokens each engine step handles.
    tokens_per_step: usize,
    measured: f64,
}

struct Roofline {
    bytes_per_step: f64,
    flops_per_token: f64,
    bandwidth: Option<f64>,
    peak: Option<f64>,
}

impl Roofline {
    /// (bandwidth-bound tok/s, compute-bound tok/s).
    fn bounds(&self, tokens_per_step: usize) -> (Option<f64>, Option<f64>) {
        let memory = self
            .bandwidth
            .map(|bw| tokens_per_step as f64 * bw * 1e12 / self.bytes_per_step);
        let compute = self.peak.map(|p| p * 1e12 / self.flops_per_token);
        (memory, compute)
    }

    /// The row of `r`: tok/s, both bounds, and its share of the lower one.
    fn print(&self, r: &Row) {
        let (memory, compute) = self.bounds(r.tokens_per_step);
        let bound = match (memory, compute) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        };
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        println!(
            "| {} | {} | {:.1} | {} | {} | {} |",
            r.what,
            r.adapters,
            r.measured,
            fmt(memory),
            fmt(compute),
            bound.map_or("-".to_owned(), |b| format!(
                "{:.1}%",
                100.0 * r.measured / b
            ))
        );
    }
}

fn prompt(rng: &mut SplitMix64, n: usize, vocab: usize) -> Vec<u32> {
    (0..n.max(1))
        .map(|_| 1 + (rng.next_u64() % (vocab as u64 - 1)) as u32)
        .collect()
}

fn adapter_name(i: usize) -> String {
    format!("lora{i}")
}

fn run(args: &Args) -> Result<(), String> {
    let sizes = args.shape.sizes();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let weights = args.dir.join("model.safetensors");
    let started = Instant::now();
    if !weights.is_file() || !args.dir.join("config.json").is_file() {
        let bytes = synthetic::write_checkpoint(&args.dir, &sizes, args.seed, threads)
            .map_err(|e| e.to_string())?;
        println!(
            "wrote {} ({:.2} GB of bf16 weights) in {:.1} s",
            args.dir.display(),
            bytes as f64 / 1e9,
            started.elapsed().as_secs_f64()
        );
    }
    let mut lora = Vec::new();
    for i in 0..args.adapters {
        let dir = args.dir.join(format!("adapter-r{}-{i}", args.adapter_rank));
        if !dir.join("adapter_model.safetensors").is_file() {
            synthetic::write_adapter(&dir, &sizes, args.adapter_rank, args.seed + 1 + i as u64)
                .map_err(|e| e.to_string())?;
        }
        lora.push(format!("{}={}", adapter_name(i), dir.display()));
    }

    let mut generator = GeneratorArgs::for_model(args.dir.to_string_lossy().into_owned());
    generator.device = args.device.clone();
    generator.dtype = args.dtype;
    generator.compute_path = ComputePathArg::Tensors;
    generator.lora = lora;
    let spec = generator.model_spec().map_err(|e| e.to_string())?;
    let loading = Instant::now();
    let mut loaded = zhiku_lm::load_model(&spec).map_err(|e| e.to_string())?;
    println!(
        "loaded on {} ({}, {}) with {} adapters of rank {} in {:.1} s",
        loaded.info.device,
        loaded.info.architecture,
        loaded.info.dtype,
        args.adapters,
        args.adapter_rank,
        loading.elapsed().as_secs_f64()
    );
    // Every run decodes exactly what it asks for.
    loaded.tokenizer.eos_ids.clear();

    let max_batch = args.batches.iter().copied().max().unwrap_or(1).max(1);
    let longest = args.prefill_tokens.iter().copied().max().unwrap_or(1);
    let block = zhiku_lm::kv::BLOCK_SIZE;
    let per_stream = args.stream_prompt_tokens + args.decode_tokens + 2 * block;
    let config = EngineConfig {
        max_queued: 2 * max_batch,
        max_batch,
        kv_cache_tokens: (max_batch * per_stream).max(longest + 2 * block),
        prefill_chunk: args.prefill_chunk.max(1),
        // Every run computes its whole prompt.
        prefix_cache: false,
        ..Default::default()
    };
    let (engine, _shared) = GenerationEngine::start(loaded, config).map_err(|e| e.to_string())?;

    let gpu = gpu_name();
    let sheet = gpu.as_deref().and_then(datasheet);
    let dtype_bytes = if matches!(args.dtype, PrecisionArg::F32) {
        4.0
    } else {
        2.0
    };
    let roofline = Roofline {
        bytes_per_step: sizes.parameters_read_per_step() as f64 * dtype_bytes,
        flops_per_token: 2.0 * sizes.parameters_read_per_step() as f64,
        bandwidth: args.bandwidth_tbs.or(sheet.map(|s| s.0)),
        peak: args.peak_tflops.or(sheet.map(|s| s.1)),
    };
    println!(
        "GPU: {}; bandwidth {} TB/s, bf16 peak {} TFLOP/s{}",
        gpu.as_deref().unwrap_or("none found (nvidia-smi)"),
        roofline
            .bandwidth
            .map_or("unknown".into(), |b| format!("{b}")),
        roofline.peak.map_or("unknown".into(), |p| format!("{p}")),
        if args.bandwidth_tbs.is_some() || args.peak_tflops.is_some() {
            " (flags)"
        } else if sheet.is_some() {
            " (data sheet)"
        } else {
            ""
        }
    );
    println!(
        "weights: {:.2} B parameters, {:.2} GB read per step (all but the embedding table)",
        sizes.parameters() as f64 / 1e9,
        roofline.bytes_per_step / 1e9
    );

    let mut rng = SplitMix64(args.seed ^ 0x5eed);
    let vocab = sizes.vocab;
    // Warm-up: the first steps load kernels (the driver compiles their PTX) and size
    // cuBLAS's workspaces; with and without an adapter.
    let warm = Instant::now();
    for adapter in [None, (args.adapters > 0).then(|| adapter_name(0))] {
        for n in [args.stream_prompt_tokens, longest] {
            let rx = submit(&engine, prompt(&mut rng, n, vocab), 4, adapter.clone())
                .map_err(|e| e.to_string())?;
            wait(rx, Instant::now()).map_err(|e| e.to_string())?;
        }
    }
    println!("warm-up: {:.1} s", warm.elapsed().as_secs_f64());

    // Each row is printed when measured, so a run cut short still reports what it measured.
    println!(
        "\n## {} ({:?}, {} decoded per stream, {}-token stream prompts)",
        args.dir.display(),
        args.shape,
        args.decode_tokens,
        args.stream_prompt_tokens
    );
    println!(
        "| row | adapters | tok/s | bandwidth roofline tok/s | compute roofline tok/s | of roofline |"
    );
    println!("|---|---|---|---|---|---|");
    let sets = if args.adapters > 0 { 2 } else { 1 };
    for set in 0..sets {
        let adapters = if set == 0 { 0 } else { args.adapters };
        let pick = |i: usize| (adapters > 0).then(|| adapter_name(i % adapters));
        for &n in &args.batches {
            let mut best = 0f64;
            for _ in 0..args.runs.max(1) {
                let started = Instant::now();
                let rxs = (0..n.max(1))
                    .map(|i| {
                        submit(
                            &engine,
                            prompt(&mut rng, args.stream_prompt_tokens, vocab),
                            args.decode_tokens + 1,
                            pick(i),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let traces = trace_all(rxs, started).map_err(|e| e.to_string())?;
                best = best.max(aggregate_decode(&traces));
            }
            roofline.print(&Row {
                what: format!("decode, batch {n}"),
                adapters: adapters.min(n),
                tokens_per_step: n,
                measured: best,
            });
        }
        for &n in &args.prefill_tokens {
            let mut best = 0f64;
            for _ in 0..args.runs.max(1) {
                let started = Instant::now();
                let rx = submit(&engine, prompt(&mut rng, n, vocab), 1, pick(0))
                    .map_err(|e| e.to_string())?;
                let t = wait(rx, started).map_err(|e| e.to_string())?;
                best = best.max(n as f64 / t.ttft.as_secs_f64().max(1e-9));
            }
            roofline.print(&Row {
                what: format!("prefill, {n}-token prompt"),
                adapters: adapters.min(1),
                tokens_per_step: n.min(args.prefill_chunk.max(1)),
                measured: best,
            });
        }
    }

    println!("\nend to end: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: the first statements of main; no other thread exists yet.
    unsafe { zhiku_models::pin_cpu_threads() };
    // SAFETY: as above; as the generator does.
    unsafe { zhiku_generator::serial_elementwise_ops() };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
