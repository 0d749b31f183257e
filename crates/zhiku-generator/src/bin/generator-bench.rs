//! Generator benchmark: prefill and decode tokens/s of a GGUF model on the CPU through
//! zhiku's engine (queue, worker thread, sampling, incremental decoding), beside candle's
//! plain example loop on the same file (`quantized_qwen2::ModelWeights` + `LogitsProcessor`,
//! no engine, no gRPC), measured in the same run, so the ratio shows what zhiku's machinery
//! costs over the bare model; with `--python`, also beside llama.cpp (llama-cpp-python) on
//! the same file and prompt ids, which shows where candle's kernels stand.
//!
//! Both sides get the same prompt token ids and decode the same number of tokens greedily
//! (end-of-sequence is ignored on both, so neither stops early). Each side is run `--runs`
//! times, alternating, and the best run counts (the least disturbed by other load).
//!
//! ```sh
//! cargo run --release -p zhiku-generator --bin generator-bench -- \
//!     --model models/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_qwen2;
use clap::Parser;
use tokio::sync::mpsc;
use zhiku_generator::engine::{Event, GenerationEngine, Job};
use zhiku_generator::models::load_model;
use zhiku_generator::sampling::SamplingConfig;
use zhiku_generator::{GeneratorArgs, GeneratorError};

#[derive(Debug, Parser)]
#[command(
    name = "generator-bench",
    about = "Generator prefill/decode tokens/s vs candle's plain loop"
)]
struct Args {
    /// The Qwen2 GGUF file.
    #[arg(
        long,
        env = "ZHIKU_BENCH_MODEL",
        default_value = "models/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    )]
    model: PathBuf,
    /// Prompt length in tokens (the article's RAG prompt, repeated and cut).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode per run.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Runs per side; the best counts.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A Python with llama-cpp-python installed: llama.cpp is then measured on the same file,
    /// prompt and token count, in the same run (`pip install llama-cpp-python numpy` builds
    /// llama.cpp from source for this CPU).
    #[arg(long, env = "ZHIKU_BENCH_PYTHON")]
    python: Option<PathBuf>,
}

/// llama.cpp through llama-cpp-python: the same prompt ids are prefilled in one batch, then
/// `decode` tokens are fed one at a time, greedily; the best of `runs` counts.
const LLAMA_CPP_SCRIPT: &str = r#"
import json, sys, time
import numpy as np
import llama_cpp
model, ids, decode, runs, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(model_path=model, n_ctx=len(ids) + decode + 8, n_batch=max(512, len(ids)),
                      n_threads=threads, n_threads_batch=threads, verbose=False)
best = {"prefill_tps": 0.0, "decode_tps": 0.0}
for _ in range(runs):
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    prefill = len(ids) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(decode):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode_tps = decode / (time.perf_counter() - t)
    best["prefill_tps"] = max(best["prefill_tps"], prefill)
    best["decode_tps"] = max(best["decode_tps"], decode_tps)
best["version"] = llama_cpp.__version__
print(json.dumps(best))
"#;

/// Runs [`LLAMA_CPP_SCRIPT`]; `None` (with the reason on stderr) when it cannot.
fn run_llama_cpp(args: &Args, python: &Path, prompt: &[u32]) -> Option<(Speed, String)> {
    let ids = serde_json::to_string(prompt).ok()?;
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(LLAMA_CPP_SCRIPT)
        .arg(&args.model)
        .arg(&ids)
        .arg(args.decode_tokens.to_string())
        .arg(args.runs.max(1).to_string())
        .arg(candle_core::utils::get_num_threads().to_string())
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "llama.cpp reference failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!("cannot run {}: {e}", python.display());
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(stdout.lines().last()?).ok()?;
    Some((
        Speed {
            prefill_tps: value["prefill_tps"].as_f64()?,
            decode_tps: value["decode_tps"].as_f64()?,
        },
        value["version"].as_str().unwrap_or("?").to_owned(),
    ))
}

/// Prefill and decode speed of one run.
#[derive(Debug, Clone, Copy, Default)]
struct Speed {
    prefill_tps: f64,
    decode_tps: f64,
}

impl Speed {
    fn best(self, other: Speed) -> Speed {
        Speed {
            prefill_tps: self.prefill_tps.max(other.prefill_tps),
            decode_tps: self.decode_tps.max(other.decode_tps),
        }
    }
}

const PROMPT: &str = "已知信息：小拾喜欢玩手机、打游戏、看电影。根据上述已知信息，简洁和专业地回答用户的问题。\
    问题是：小拾喜欢做什么？";

/// One run through zhiku's engine; `decode_tokens` forwards after the prefill's.
fn run_engine(
    engine: &GenerationEngine,
    prompt: &[u32],
    decode_tokens: usize,
) -> Result<Speed, GeneratorError> {
    let (events, mut rx) = mpsc::unbounded_channel();
    engine.submit(Job {
        prompt: prompt.to_vec(),
        sampling: SamplingConfig {
            max_new_tokens: decode_tokens + 1,
            repetition_penalty: 1.0,
            ..Default::default()
        },
        adapter: None,
        deadline: None,
        events,
    })?;
    loop {
        match rx.blocking_recv() {
            Some(Event::Chunk { .. }) => {}
            Some(Event::Done(c)) => {
                // The engine forwards every generated token but the last.
                let forwarded = c.generated_tokens.saturating_sub(1);
                return Ok(Speed {
                    prefill_tps: c.prompt_tokens as f64 / (c.prefill_ms / 1e3),
                    decode_tps: forwarded as f64 / (c.decode_ms / 1e3),
                });
            }
            Some(Event::Failed(e)) => return Err(e),
            None => return Err(GeneratorError::Inference("the engine stopped".into())),
        }
    }
}

/// One run of candle's example loop: prefill, then sample and forward one token at a time.
fn run_candle(
    model: &mut quantized_qwen2::ModelWeights,
    prompt: &[u32],
    decode_tokens: usize,
) -> candle_core::Result<Speed> {
    let device = Device::Cpu;
    let mut processor = LogitsProcessor::new(299_792_458, None, None);
    model.clear_kv_cache();
    let started = Instant::now();
    let input = Tensor::new(prompt, &device)?.unsqueeze(0)?;
    let mut logits = model.forward(&input, 0)?.squeeze(0)?;
    let prefill = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..decode_tokens {
        let next = processor.sample(&logits)?;
        let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        logits = model.forward(&input, prompt.len() + i)?.squeeze(0)?;
    }
    // The engine samples once more after its last forward; so does this loop.
    processor.sample(&logits)?;
    Ok(Speed {
        prefill_tps: prompt.len() as f64 / prefill,
        decode_tps: decode_tokens as f64 / started.elapsed().as_secs_f64(),
    })
}

fn run(args: &Args) -> Result<(), String> {
    let mut generator = GeneratorArgs::for_model(args.model.to_string_lossy().into_owned());
    generator.max_queued_requests = 1;
    let mut loaded = load_model(&generator).map_err(|e| e.to_string())?;
    if loaded.info.architecture != "qwen2" {
        return Err(format!(
            "{} is `{}`; the reference loop is candle's quantized_qwen2",
            args.model.display(),
            loaded.info.architecture
        ));
    }
    let mut prompt = Vec::new();
    let piece = loaded.tokenizer.encode(PROMPT).map_err(|e| e.to_string())?;
    if piece.is_empty() {
        return Err("the prompt encodes to no tokens".into());
    }
    while prompt.len() < args.prompt_tokens {
        prompt.extend_from_slice(&piece);
    }
    prompt.truncate(args.prompt_tokens.max(1));
    // Both sides decode exactly `decode_tokens`: no end-of-sequence stop.
    loaded.tokenizer.eos_ids.clear();
    let info = loaded.info.clone();
    let (engine, _shared) = GenerationEngine::start(loaded, 1);

    let mut file = std::fs::File::open(&args.model).map_err(|e| e.to_string())?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| e.to_string())?;
    let mut reference = quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
        .map_err(|e| e.to_string())?;

    println!(
        "model {} ({}, {}), prompt {} tokens, {} decoded, best of {} runs, {} CPU threads",
        args.model.display(),
        info.architecture,
        info.dtype,
        prompt.len(),
        args.decode_tokens,
        args.runs.max(1),
        candle_core::utils::get_num_threads(),
    );
    let (mut ours, mut theirs) = (Speed::default(), Speed::default());
    for run in 0..args.runs.max(1) {
        let a = run_engine(&engine, &prompt, args.decode_tokens).map_err(|e| e.to_string())?;
        let b =
            run_candle(&mut reference, &prompt, args.decode_tokens).map_err(|e| e.to_string())?;
        eprintln!(
            "run {}: zhiku {:.1}/{:.1} tok/s, candle {:.1}/{:.1} tok/s (prefill/decode)",
            run + 1,
            a.prefill_tps,
            a.decode_tps,
            b.prefill_tps,
            b.decode_tps
        );
        ours = ours.best(a);
        theirs = theirs.best(b);
    }
    println!("{:<24}{:>16}{:>16}", "", "prefill tok/s", "decode tok/s");
    println!(
        "{:<24}{:>16.1}{:>16.1}",
        "zhiku engine", ours.prefill_tps, ours.decode_tps
    );
    println!(
        "{:<24}{:>16.1}{:>16.1}",
        "candle example loop", theirs.prefill_tps, theirs.decode_tps
    );
    println!(
        "{:<24}{:>16.3}{:>16.3}",
        "ratio zhiku/candle",
        ours.prefill_tps / theirs.prefill_tps,
        ours.decode_tps / theirs.decode_tps
    );
    if let Some(python) = &args.python
        && let Some((llama, version)) = run_llama_cpp(args, python, &prompt)
    {
        println!(
            "{:<24}{:>16.1}{:>16.1}",
            format!("llama.cpp ({version})"),
            llama.prefill_tps,
            llama.decode_tps
        );
        println!(
            "{:<24}{:>16.3}{:>16.3}",
            "ratio zhiku/llama.cpp",
            ours.prefill_tps / llama.prefill_tps,
            ours.decode_tps / llama.decode_tps
        );
    }
    Ok(())
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SAFETY: the first statement of main; no other thread exists yet.
    unsafe { zhiku_models::pin_cpu_threads() };
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("generator-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
