//! Generator benchmark: zhiku's engine on a GGUF model, measured in one run against
//! references measured in the same run.
//!
//! 1. **One stream vs llama.cpp** (with `--python`, a Python with llama-cpp-python): the
//!    same file and prompt ids, prefill tok/s at each `--prompt-tokens` length and decode
//!    tok/s, with the ratio zhiku / llama.cpp. Both use `--threads` threads.
//! 2. **Concurrent streams**: `--streams` requests at once (distinct prompts), time to first
//!    token and aggregate decode tok/s, with the ratio to one stream.
//! 3. **Prefix cache**: the same RAG Ask twice; time to first token of the second over the
//!    first.
//! 4. **Memory**: resident memory after loading, after the one-stream runs and at the end,
//!    over the GGUF file's size.
//!
//! ```sh
//! cargo run --release -p zhiku-generator --bin generator-bench -- --threads 2 \
//!     --python .venv-bench/bin/python
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use zhiku_generator::GeneratorArgs;
use zhiku_generator::config::{ComputePathArg, KvCacheDtype};
use zhiku_generator::engine::{EngineConfig, GenerationEngine};
use zhiku_lm::template::{Message, Role};

#[path = "support/streams.rs"]
mod streams;
use streams::{aggregate_decode, submit, trace_all, wait};

#[derive(Debug, Parser)]
#[command(
    name = "generator-bench",
    about = "zhiku's generator: prefill/decode tok/s vs llama.cpp, streams, prefix cache"
)]
struct Args {
    /// The GGUF file.
    #[arg(
        long,
        env = "ZHIKU_BENCH_MODEL",
        default_value = "models/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    )]
    model: PathBuf,
    /// Prompt lengths in tokens for the one-stream comparison.
    #[arg(long, value_delimiter = ',', default_value = "128,512,1024")]
    prompt_tokens: Vec<usize>,
    /// Tokens decoded per stream.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Concurrent stream counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    streams: Vec<usize>,
    /// Prompt length of each concurrent stream.
    #[arg(long, default_value_t = 64)]
    stream_prompt_tokens: usize,
    /// Runs of each one-stream measurement; the best counts.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Compute threads, for zhiku and llama.cpp alike (default: all cores).
    #[arg(long, env = "ZHIKU_THREADS")]
    threads: Option<usize>,
    /// A Python with llama-cpp-python: llama.cpp is then measured on the same file, prompt
    /// ids and thread count.
    #[arg(long, env = "ZHIKU_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Element type of the KV cache (the generator's default: f16).
    #[arg(long, value_enum, default_value_t = KvCacheDtype::F16)]
    kv_cache_dtype: KvCacheDtype,

    /// Which code runs the model: zhiku's kernels, or candle's tensor ops (the GPU's code).
    #[arg(long, value_enum, default_value_t = ComputePathArg::Kernels)]
    compute_path: ComputePathArg,
    /// Skip sections: any of one,streams,prefix.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

/// llama.cpp through llama-cpp-python: for each prompt, the ids prefilled in one batch
/// (n_batch = n_ubatch = the context, so prompts past 512 tokens run), then `decode` tokens
/// fed one at a time; the best of `runs`.
const LLAMA_CPP_SCRIPT: &str = r#"
import json, sys, time
import numpy as np
import llama_cpp
model, prompts, decode, runs, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ctx = max(len(p) for p in prompts) + decode + 8
# llama-cpp-python keeps n_batch rows of scores: a batch as long as the context keeps the
# last token's row in range.
llm = llama_cpp.Llama(model_path=model, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx,
                      n_threads=threads, n_threads_batch=threads, verbose=False)
out = []
for ids in prompts:
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
    out.append(best)
print(json.dumps({"version": llama_cpp.__version__, "runs": out}))
"#;

#[derive(Debug, Clone, Copy, Default)]
struct Speed {
    prefill_tps: f64,
    decode_tps: f64,
}

fn run_llama_cpp(
    args: &Args,
    python: &Path,
    prompts: &[Vec<u32>],
    threads: usize,
) -> Result<(String, Vec<Speed>), String> {
    let ids = serde_json::to_string(prompts).map_err(|e| e.to_string())?;
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(LLAMA_CPP_SCRIPT)
        .arg(&args.model)
        .arg(&ids)
        .arg(args.decode_tokens.to_string())
        .arg(args.runs.max(1).to_string())
        .arg(threads.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "llama.cpp failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or("llama.cpp printed no result")?;
    let speeds = value["runs"]
        .as_array()
        .ok_or("no runs")?
        .iter()
        .map(|r| Speed {
            prefill_tps: r["prefill_tps"].as_f64().unwrap_or(0.0),
            decode_tps: r["decode_tps"].as_f64().unwrap_or(0.0),
        })
        .collect();
    Ok((value["version"].as_str().unwrap_or("?").to_owned(), speeds))
}

/// `n` tokens of the article's RAG prompt, starting `offset` tokens in (so prompts differ).
fn prompt_of(piece: &[u32], n: usize, offset: usize) -> Vec<u32> {
    piece
        .iter()
        .cycle()
        .skip(offset)
        .take(n.max(1))
        .copied()
        .collect()
}

const PASSAGE: &str = "已知信息：ChatGLM-6B 是一个开源的、支持中英双语的对话语言模型，基于 General \
    Language Model (GLM) 架构，具有 62 亿参数。结合模型量化技术，用户可以在消费级的显卡上进行本地部署\
    （INT4 量化级别下最低只需 6GB 显存）。LoRA 的做法是冻结预训练模型的权重，在每一层注入可训练的低秩\
    分解矩阵：W = W0 + B·A。根据上述已知信息，简洁和专业地回答用户的问题。";

fn run(args: &Args) -> Result<(), String> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut generator = GeneratorArgs::for_model(args.model.to_string_lossy().into_owned());
    generator.max_queued_requests = 64;
    generator.compute_path = args.compute_path;
    let spec = generator.model_spec().map_err(|e| e.to_string())?;
    let mut loaded = zhiku_lm::load_model(&spec).map_err(|e| e.to_string())?;
    let file_bytes = std::fs::metadata(&args.model).map(|m| m.len()).unwrap_or(0);
    let piece = loaded
        .tokenizer
        .encode(PASSAGE)
        .map_err(|e| e.to_string())?;
    if piece.is_empty() {
        return Err("the prompt encodes to no tokens".into());
    }
    let ask = loaded
        .template
        .render(&[Message::new(
            Role::User,
            format!(
                "{}\n{}\n问题是：LoRA 的公式是什么？",
                PASSAGE,
                PASSAGE.repeat(3)
            ),
        )])
        .map_err(|e| e.to_string())?;
    let ask = loaded.tokenizer.encode(&ask).map_err(|e| e.to_string())?;
    // Every run decodes exactly what it asks for: no end-of-sequence stop.
    loaded.tokenizer.eos_ids.clear();
    let info = loaded.info.clone();
    let longest = args.prompt_tokens.iter().copied().max().unwrap_or(128);
    let max_stream = args.streams.iter().copied().max().unwrap_or(1);
    let config = EngineConfig {
        max_queued: 64,
        max_batch: max_stream.max(1),
        kv_cache_tokens: (longest + args.decode_tokens + 32)
            .max(max_stream * (args.stream_prompt_tokens + args.decode_tokens + 32))
            .max(2 * (ask.len() + args.decode_tokens + 32)),
        kv_dtype: args.kv_cache_dtype.into(),
        prefix_cache: true,
        ..Default::default()
    };
    let (engine, shared) = GenerationEngine::start(loaded, config).map_err(|e| e.to_string())?;
    println!(
        "model {} ({}, {}), {threads} threads, {} decoded per stream, {:?} KV cache",
        args.model.display(),
        info.architecture,
        info.dtype,
        args.decode_tokens,
        args.kv_cache_dtype,
    );

    let after_load = memory_line("after loading", file_bytes);
    let mut after_one = None;
    if !args.skip.iter().any(|s| s == "one") {
        println!(
            "\n## One stream{}",
            if args.python.is_some() {
                " vs llama.cpp"
            } else {
                ""
            }
        );
        let prompts: Vec<Vec<u32>> = args
            .prompt_tokens
            .iter()
            .enumerate()
            .map(|(i, &n)| prompt_of(&piece, n, 7 * i + 1))
            .collect();
        let mut ours = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let mut best = Speed::default();
            for run in 0..args.runs.max(1) {
                // A fresh prefix each run, so the prefix cache cannot help.
                let mut p = p.clone();
                p[0] = piece[(run * 13 + i) % piece.len()];
                let shift = run % p.len().max(1);
                p.rotate_left(shift);
                let started = Instant::now();
                let t = wait(
                    submit(&engine, p.clone(), args.decode_tokens + 1, None)
                        .map_err(|e| e.to_string())?,
                    started,
                )
                .map_err(|e| e.to_string())?;
                let decode_s = (t.total - t.ttft).as_secs_f64();
                best.prefill_tps = best.prefill_tps.max(p.len() as f64 / t.ttft.as_secs_f64());
                best.decode_tps = best
                    .decode_tps
                    .max(t.generated.saturating_sub(1) as f64 / decode_s);
            }
            ours.push(best);
        }
        let reference = match &args.python {
            Some(py) => match run_llama_cpp(args, py, &prompts, threads) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("{e}");
                    None
                }
            },
            None => None,
        };
        println!(
            "| prompt | zhiku prefill tok/s | zhiku decode tok/s | llama.cpp prefill | llama.cpp decode | prefill ratio | decode ratio |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (i, s) in ours.iter().enumerate() {
            match &reference {
                Some((_, speeds)) => {
                    let l = speeds.get(i).copied().unwrap_or_default();
                    println!(
                        "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
                        prompts[i].len(),
                        s.prefill_tps,
                        s.decode_tps,
                        l.prefill_tps,
                        l.decode_tps,
                        s.prefill_tps / l.prefill_tps,
                        s.decode_tps / l.decode_tps
                    );
                }
                None => println!(
                    "| {} | {:.1} | {:.1} | - | - | - | - |",
                    prompts[i].len(),
                    s.prefill_tps,
                    s.decode_tps
                ),
            }
        }
        if let Some((version, _)) = &reference {
            println!("(llama.cpp: llama-cpp-python {version})");
        }
        // The llama.cpp reference ran in its own process: this is zhiku's alone.
        after_one = Some(memory_line("after one stream", file_bytes));
    }

    if !args.skip.iter().any(|s| s == "streams") {
        println!(
            "\n## Concurrent streams ({}-token prompts)",
            args.stream_prompt_tokens
        );
        println!(
            "| streams | TTFT p50 ms | TTFT max ms | aggregate decode tok/s | per stream tok/s | vs one stream |"
        );
        println!("|---|---|---|---|---|---|");
        let mut one = None;
        for (k, &n) in args.streams.iter().enumerate() {
            let started = Instant::now();
            let rxs: Vec<_> = (0..n)
                .map(|i| {
                    submit(
                        &engine,
                        prompt_of(&piece, args.stream_prompt_tokens, 100 + 31 * i + 977 * k),
                        args.decode_tokens + 1,
                        None,
                    )
                })
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let traces = trace_all(rxs, started).map_err(|e| e.to_string())?;
            let mut ttfts: Vec<f64> = traces.iter().map(|t| t.first.as_secs_f64() * 1e3).collect();
            ttfts.sort_by(f64::total_cmp);
            let aggregate = aggregate_decode(&traces);
            let base = *one.get_or_insert(aggregate);
            println!(
                "| {n} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2}x |",
                ttfts[ttfts.len() / 2],
                ttfts.last().copied().unwrap_or(0.0),
                aggregate,
                aggregate / n as f64,
                aggregate / base
            );
        }
        let stats = &shared.stats;
        let steps = stats
            .steps
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        println!(
            "(largest batch {}, mean {:.1} sequences per step)",
            stats
                .max_batch_seen
                .load(std::sync::atomic::Ordering::Relaxed),
            stats
                .batched_sequences
                .load(std::sync::atomic::Ordering::Relaxed) as f64
                / steps as f64
        );
    }

    if !args.skip.iter().any(|s| s == "prefix") {
        println!(
            "\n## Prefix cache: the same Ask twice ({} prompt tokens)",
            ask.len()
        );
        let mut times = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            let t = wait(
                submit(&engine, ask.clone(), 4, None).map_err(|e| e.to_string())?,
                started,
            )
            .map_err(|e| e.to_string())?;
            times.push(t);
        }
        println!("| ask | TTFT ms | cached prompt tokens |");
        println!("|---|---|---|");
        for (i, t) in times.iter().enumerate() {
            println!(
                "| {} | {:.0} | {} |",
                i + 1,
                t.ttft.as_secs_f64() * 1e3,
                t.cached
            );
        }
        println!(
            "second / first TTFT: {:.3}",
            times[1].ttft.as_secs_f64() / times[0].ttft.as_secs_f64()
        );
    }

    println!("\n## Memory\n{after_load}");
    if let Some(one) = &after_one {
        println!("{one}");
    }
    println!("{}", memory_line("at the end", file_bytes));
    Ok(())
}

/// Resident bytes: (all, anonymous, file-backed), from /proc/self/status (0 elsewhere).
fn resident() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

fn memory_line(when: &str, file_bytes: u64) -> String {
    let (rss, anon, file) = resident();
    let mib = |b: u64| b as f64 / 1048576.0;
    format!(
        "resident {when}: {:.0} MiB (anonymous {:.0}, file-backed {:.0}), GGUF file {:.0} MiB: \
         {:.2}x the file",
        mib(rss),
        mib(anon),
        mib(file),
        mib(file_bytes),
        rss as f64 / file_bytes.max(1) as f64
    )
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(n) = args.threads {
        // SAFETY: the first statements of main; no other thread exists yet.
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    } else {
        // SAFETY: as above.
        unsafe { zhiku_models::pin_cpu_threads() };
    }
    // SAFETY: as above; as the generator does.
    unsafe { zhiku_generator::serial_elementwise_ops() };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("generator-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
