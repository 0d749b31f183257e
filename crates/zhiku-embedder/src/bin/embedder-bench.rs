//! Embedder benchmark: texts/s and p50 latency at batch 1, 8 and 32 over gRPC, next to
//! sentence-transformers on the same texts, measured in the same run, for two kinds of text:
//! passages (as ingested, in batches) and questions (as asked, usually one at a time).
//!
//! `scripts/bench-embedder` installs sentence-transformers and runs this with
//! `--python .venv-bench/bin/python`. Without `--python` only zhiku is measured.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use zhiku_embedder::tokenizer::TextKind;
use zhiku_embedder::{EmbedderArgs, EmbedderState};
use zhiku_proto::v1::EmbedRequest;
use zhiku_proto::v1::embedder_client::EmbedderClient;
use zhiku_runtime::ServerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "embedder-bench",
    about = "Embedder throughput and latency vs sentence-transformers"
)]
struct Args {
    /// Model directory (default: models/all-MiniLM-L6-v2).
    #[arg(
        long,
        env = "ZHIKU_BENCH_MODEL",
        default_value = "models/all-MiniLM-L6-v2"
    )]
    model: PathBuf,
    /// Python with sentence-transformers installed, for the reference measurement.
    #[arg(long, env = "ZHIKU_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Seconds to measure each batch size.
    #[arg(long, env = "ZHIKU_BENCH_SECONDS", default_value_t = 10.0)]
    seconds: f64,
    /// Which texts: `passages` (10-60 tokens, as ingested), `questions` (8-25 tokens, as
    /// asked) or `both`.
    #[arg(long, env = "ZHIKU_BENCH_CORPUS", default_value = "both", value_parser = ["passages", "questions", "both"])]
    corpus: String,
    /// Batch sizes to measure.
    #[arg(
        long,
        env = "ZHIKU_BENCH_BATCHES",
        value_delimiter = ',',
        default_value = "1,8,32"
    )]
    batches: Vec<usize>,
}

/// Sentences of the kind a knowledge base holds: Chinese and English, 10-60 tokens.
fn corpus() -> Vec<String> {
    let seeds = [
        "ChatGLM-6B 是一个开源的、支持中英双语的对话语言模型，基于 General Language Model 架构。",
        "知识库问答先把文档切成段落，为每个段落计算向量，存入向量数据库。",
        "提问时先计算问题的向量，找出最相近的 K 个段落，再把它们放进提示词交给模型回答。",
        "LoRA freezes the pretrained weights and trains a low-rank update B·A beside them.",
        "Retrieval-augmented generation grounds a language model's answer in retrieved passages.",
        "GLM 的预训练目标是自回归空白填充：Part A 双向注意力，Part B 单向注意力。",
        "Qdrant stores vectors with their payload and answers nearest-neighbour queries fast.",
        "如果无法从已知信息中得到答案，请说“根据已知信息无法回答该问题”。",
    ];
    (0..512)
        .map(|i| {
            let a = seeds[i % seeds.len()];
            let b = seeds[(i * 7 + 3) % seeds.len()];
            match i % 3 {
                0 => format!("{i}. {a}"),
                1 => format!("{a} {b}"),
                _ => format!("{b} ({i})"),
            }
        })
        .collect()
}

/// Questions as users ask them (the Ask path embeds one at a time): 8-25 tokens.
fn questions() -> Vec<String> {
    let seeds = [
        "小拾喜欢做什么？",
        "ChatGLM-6B 是什么模型？",
        "知识库问答怎么找到相关段落？",
        "What does LoRA train?",
        "GLM 的 Part B 用什么注意力？",
        "How many passages are sent to the model?",
        "向量数据库存了哪些内容？",
        "Which model answers the question?",
    ];
    (0..512)
        .map(|i| match i % 2 {
            0 => seeds[i % seeds.len()].to_owned(),
            _ => format!("{} ({i})", seeds[(i * 5 + 1) % seeds.len()]),
        })
        .collect()
}

struct Figures {
    texts_per_second: f64,
    p50_ms: f64,
}

async fn measure(addr: SocketAddr, texts: &[String], batch: usize, seconds: f64) -> Figures {
    let mut client = EmbedderClient::connect(format!("http://{addr}"))
        .await
        .expect("connects to the embedder");
    let mut latencies = Vec::new();
    let mut done = 0usize;
    let budget = Duration::from_secs_f64(seconds);
    // Warm-up.
    let _ = client
        .embed(EmbedRequest {
            texts: texts[..batch].to_vec(),
            ..Default::default()
        })
        .await;
    let started = Instant::now();
    let mut offset = 0;
    while started.elapsed() < budget || latencies.len() < 3 {
        let chunk: Vec<String> = (0..batch)
            .map(|j| texts[(offset + j) % texts.len()].clone())
            .collect();
        offset += batch;
        let t = Instant::now();
        client
            .embed(EmbedRequest {
                texts: chunk,
                ..Default::default()
            })
            .await
            .expect("embed succeeds");
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        done += batch;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Figures {
        texts_per_second: done as f64 / elapsed,
        p50_ms: latencies[latencies.len() / 2],
    }
}

const REFERENCE_SCRIPT: &str = r#"
import json, sys, time
from sentence_transformers import SentenceTransformer
model_dir, texts_path, seconds, batches = sys.argv[1], sys.argv[2], float(sys.argv[3]), [int(b) for b in sys.argv[4].split(",")]
texts = json.load(open(texts_path, encoding="utf-8"))
model = SentenceTransformer(model_dir, device="cpu")
out = {}
for batch in batches:
    model.encode(texts[:batch], normalize_embeddings=True, batch_size=batch)
    lat, done, offset, start = [], 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or len(lat) < 3:
        chunk = [texts[(offset + j) % len(texts)] for j in range(batch)]
        offset += batch
        t = time.perf_counter()
        model.encode(chunk, normalize_embeddings=True, batch_size=batch)
        lat.append((time.perf_counter() - t) * 1e3)
        done += batch
    elapsed = time.perf_counter() - start
    lat.sort()
    out[str(batch)] = {"texts_per_second": done / elapsed, "p50_ms": lat[len(lat) // 2]}
print(json.dumps(out))
"#;

fn reference(args: &Args, texts: &[String]) -> Option<serde_json::Value> {
    let python = args.python.as_ref()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let texts_path = dir.path().join("texts.json");
    std::fs::write(&texts_path, serde_json::to_string(texts).expect("json")).expect("write");
    let batches: Vec<String> = args.batches.iter().map(|b| b.to_string()).collect();
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(REFERENCE_SCRIPT)
        .arg(&args.model)
        .arg(&texts_path)
        .arg(args.seconds.to_string())
        .arg(batches.join(","))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("runs python");
    if !output.status.success() {
        eprintln!(
            "sentence-transformers reference failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).ok()
}

/// Mean token count of `texts` under the model's tokenizer (special tokens included).
fn mean_tokens(state: &EmbedderState, texts: &[String]) -> f64 {
    let total: usize = texts
        .iter()
        .filter_map(|t| state.encoder.tokenizer.encode(t, TextKind::Passage).ok())
        .map(|t| t.ids.len())
        .sum();
    total as f64 / texts.len().max(1) as f64
}

fn print_table(ours: &[(usize, Figures)], reference: Option<&serde_json::Value>) {
    println!(
        "{:>6} | {:>14} {:>10} | {:>14} {:>10} | {:>9} {:>9}",
        "batch", "zhiku texts/s", "p50 ms", "s-t texts/s", "p50 ms", "speed x", "p50 x"
    );
    for (batch, f) in ours {
        let r = reference.and_then(|r| r.get(batch.to_string()));
        let (rt, rp) = match r {
            Some(r) => (
                r["texts_per_second"].as_f64().unwrap_or(f64::NAN),
                r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            ),
            None => (f64::NAN, f64::NAN),
        };
        println!(
            "{:>6} | {:>14.1} {:>10.2} | {:>14.1} {:>10.2} | {:>9.2} {:>9.2}",
            batch,
            f.texts_per_second,
            f.p50_ms,
            rt,
            rp,
            f.texts_per_second / rt,
            rp / f.p50_ms
        );
    }
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // SAFETY: the first statement of main; no other thread exists yet.
    unsafe { zhiku_models::pin_cpu_threads() };
    run()
}

#[tokio::main]
async fn run() {
    let args = Args::parse();
    let mut embedder = EmbedderArgs::for_model(args.model.to_string_lossy().into_owned());
    embedder.max_client_batch_size = 1024;
    let state = Arc::new(EmbedderState::load(&embedder).expect("model loads"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(zhiku_embedder::serve_loaded(
        state.clone(),
        ServerArgs {
            log: "warn".into(),
            ..ServerArgs::default()
        },
        listener,
        std::future::pending(),
    ));

    println!(
        "model {} · {:.0}s per batch size · CPU threads {}",
        args.model.display(),
        args.seconds,
        candle_core::utils::get_num_threads(),
    );
    let corpora: Vec<(&str, Vec<String>)> = match args.corpus.as_str() {
        "passages" => vec![("passages", corpus())],
        "questions" => vec![("questions", questions())],
        _ => vec![("passages", corpus()), ("questions", questions())],
    };
    for (name, texts) in &corpora {
        let tokens = mean_tokens(&state, texts);
        println!(
            "\n{name}: {} texts, {tokens:.1} tokens each on average",
            texts.len()
        );
        let mut ours = Vec::new();
        for &batch in &args.batches {
            let f = measure(addr, texts, batch, args.seconds).await;
            ours.push((batch, f));
        }
        let reference = reference(&args, texts);
        print_table(&ours, reference.as_ref());
    }
    println!("speed x = zhiku texts/s ÷ sentence-transformers texts/s (higher is better);");
    println!(
        "p50 x = sentence-transformers p50 ÷ zhiku p50 (higher is better). zhiku is over gRPC."
    );
}
