//! `zhiku-bench`: load and overhead figures of a `zhiku serve` it starts itself, on
//! loopback ports, with its own data directory. Bounded in count and in time.
//!
//! ```text
//! zhiku-bench load       64 concurrent Asks and 8 concurrent Ingests: answered /
//!                        RESOURCE_EXHAUSTED / other, p50/p99, the server's peak memory,
//!                        and that it is SERVING afterwards
//! zhiku-bench overhead   Ask's cost outside the model (describe + embed + search +
//!                        prompt) at 1k, 10k and 100k passages, written and indexed through
//!                        the retriever's API in this process before the server starts, and
//!                        its parts measured apart: Embed alone, and dense, BM25 and hybrid
//!                        Search alone, straight on the embedder's and retriever's ports
//! zhiku-bench ingest     where an Ingest's time goes: the whole Ingest of a folder, then
//!                        each stage alone on the same passages (load, split, tokenize,
//!                        Embed, Upsert), beside sentence-transformers embedding them
//! ```
//!
//! The overhead's passages are real text: windows of a corpus (by default the article and
//! the eval set's documents under `../shared`) with words drawn from a Zipf-distributed
//! vocabulary mixed in, so that BM25 terms have the document frequencies of text and not
//! those of a handful of words that every passage holds; the questions are the eval set's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod ingest;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic::{Code, Request};
use zhiku_proto::v1::embedder_client::EmbedderClient;
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    AskRequest, CreateKnowledgeBaseRequest, DocumentInput, EmbedKind, EmbedRequest, IngestRequest,
    Passage, SamplingParams, SearchMode, SearchRequest, UpsertRequest, ask_event, ingest_event,
};

#[derive(Debug, Parser)]
#[command(name = "zhiku-bench", version)]
struct Cli {
    #[command(flatten)]
    server: ServerSetup,
    #[command(subcommand)]
    command: Bench,
}

/// The `zhiku serve` the bench starts.
#[derive(Debug, Clone, clap::Args)]
struct ServerSetup {
    /// The zhiku binary (default: the one beside this program).
    #[arg(long, env = "ZHIKU_BENCH_ZHIKU")]
    zhiku: Option<PathBuf>,
    /// Models laid out by scripts/fetch-models.
    #[arg(long, env = "ZHIKU_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    /// Embedding model directory, under --models-dir.
    #[arg(
        long,
        env = "ZHIKU_BENCH_EMBEDDING_MODEL",
        default_value = "all-MiniLM-L6-v2"
    )]
    embedding_model: String,
    /// Chat model directory, under --models-dir.
    #[arg(
        long,
        env = "ZHIKU_BENCH_CHAT_MODEL",
        default_value = "SmolLM2-135M-Instruct-GGUF"
    )]
    chat_model: String,
    /// The GGUF file in the chat model's directory.
    #[arg(
        long,
        env = "ZHIKU_BENCH_GGUF_FILE",
        default_value = "SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    gguf_file: String,
    /// Longest answer of each Ask, in tokens.
    #[arg(long, env = "ZHIKU_BENCH_MAX_NEW_TOKENS", default_value_t = 16)]
    max_new_tokens: u32,
    /// The whole run stops (and fails) after this many seconds.
    #[arg(long, env = "ZHIKU_BENCH_TIMEOUT_SECONDS", default_value_t = 900)]
    timeout_seconds: u64,
    /// Data directory of the server, kept after the run (default: a temporary one, removed);
    /// `overhead` reuses the knowledge bases it finds filled there.
    #[arg(long, env = "ZHIKU_BENCH_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Concurrent Asks and Ingests against one server.
    Load {
        /// Asks sent at once.
        #[arg(long, env = "ZHIKU_BENCH_ASKS", default_value_t = 64)]
        asks: usize,
        /// Ingests sent at once, beside the Asks.
        #[arg(long, env = "ZHIKU_BENCH_INGESTS", default_value_t = 8)]
        ingests: usize,
    },
    /// Ask's non-model overhead as the knowledge base grows.
    Overhead {
        /// Knowledge-base sizes, in passages, ascending.
        #[arg(
            long,
            env = "ZHIKU_BENCH_SIZES",
            value_delimiter = ',',
            default_value = "1000,10000,100000"
        )]
        sizes: Vec<usize>,
        /// Asks measured at each size (one at a time, the sizes in turn).
        #[arg(long, env = "ZHIKU_BENCH_ASKS_PER_SIZE", default_value_t = 20)]
        asks: usize,
        /// Text files or directories of them whose text makes the passages.
        #[arg(
            long,
            env = "ZHIKU_BENCH_CORPUS",
            value_delimiter = ',',
            default_value = "../shared/article.zh.txt,../shared/eval/chatchat-docs"
        )]
        corpus: Vec<PathBuf>,
        /// Questions, one JSON object with a "question" a line.
        #[arg(
            long,
            env = "ZHIKU_BENCH_QUESTIONS",
            default_value = "../shared/eval/chatchat-docs.jsonl"
        )]
        questions: PathBuf,
    },
    /// Ingest throughput and where its time goes (run with
    /// `--embedding-model multilingual-e5-small`, the offline default of `zhiku serve`).
    Ingest {
        /// The folder of documents to ingest.
        #[arg(
            long,
            env = "ZHIKU_BENCH_DOCS",
            default_value = "eval/llm-docs-zh/docs"
        )]
        docs: PathBuf,
        /// Python with sentence-transformers installed, for the reference embedding of the
        /// same passages (without it, only zhiku is measured).
        #[arg(long, env = "ZHIKU_BENCH_PYTHON")]
        python: Option<PathBuf>,
    },
}

/// A `zhiku serve` child process, killed when dropped.
struct Server {
    child: Child,
    orchestrator: SocketAddr,
    embedder: SocketAddr,
    retriever: SocketAddr,
    data_dir: PathBuf,
    keep_data: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if !self.keep_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

fn channel(address: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .map(|e| e.connect_lazy())
        .expect("a loopback address is a valid URI")
}

fn free_port() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free loopback port: {e}"))
}

impl Server {
    async fn start(
        setup: &ServerSetup,
        data_dir: PathBuf,
        keep_data: bool,
    ) -> Result<Self, String> {
        let zhiku = match &setup.zhiku {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .map_err(|e| e.to_string())?
                .with_file_name("zhiku"),
        };
        let (orchestrator, embedder, retriever, generator) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let models = &setup.models_dir;
        let child = Command::new(&zhiku)
            .arg("--embedding-model")
            .arg(models.join(&setup.embedding_model))
            .arg("--chat-model")
            .arg(models.join(&setup.chat_model))
            .arg("--gguf-file")
            .arg(&setup.gguf_file)
            .arg("--models-dir")
            .arg(models)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("serve")
            .args(["--orchestrator-listen", &orchestrator.to_string()])
            .args(["--embedder-listen", &embedder.to_string()])
            .args(["--retriever-listen", &retriever.to_string()])
            .args(["--generator-listen", &generator.to_string()])
            .env("ZHIKU_LOG", "warn")
            .env("ZHIKU_ASK_MAX_NEW_TOKENS", setup.max_new_tokens.to_string())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", zhiku.display()))?;
        let mut server = Self {
            child,
            orchestrator,
            embedder,
            retriever,
            data_dir,
            keep_data,
        };
        let started = Instant::now();
        while !server.serving().await {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("zhiku serve exited: {status}"));
            }
            if started.elapsed() > Duration::from_secs(600) {
                return Err("zhiku serve was not SERVING after 600 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "zhiku serve (pid {}) SERVING after {:.1} s on {orchestrator}",
            server.pid(),
            started.elapsed().as_secs_f64()
        );
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn serving(&self) -> bool {
        let Ok(endpoint) = Channel::from_shared(format!("http://{}", self.orchestrator)) else {
            return false;
        };
        let Ok(channel) = endpoint.connect().await else {
            return false;
        };
        zhiku_runtime::health::is_serving(channel, "zhiku.v1.Orchestrator", Duration::from_secs(5))
            .await
    }

    fn orchestrator(&self) -> OrchestratorClient<Channel> {
        OrchestratorClient::new(channel(self.orchestrator))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    fn embedder(&self) -> EmbedderClient<Channel> {
        EmbedderClient::new(channel(self.embedder))
    }

    fn retriever(&self) -> RetrieverClient<Channel> {
        RetrieverClient::new(channel(self.retriever))
    }

    /// (current, peak) resident memory in MiB, from /proc.
    fn memory_mib(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Answered,
    Exhausted,
    Other(String),
}

fn outcome(status: tonic::Status) -> Outcome {
    match status.code() {
        Code::ResourceExhausted => Outcome::Exhausted,
        code => Outcome::Other(format!("{code:?}: {}", status.message())),
    }
}

const DOCUMENT: &str = "# Handbook\n\nXiaoshi likes playing on the phone, games and films. \
Amin likes reading and hiking in the hills. The office opens at nine and closes at six. \
Lunch is served from noon in the canteen on the second floor. Holidays are booked through \
the staff portal two weeks ahead. The library lends books for three weeks.\n";

const QUESTIONS: [&str; 4] = [
    "What does Xiaoshi like?",
    "When does the office open?",
    "Where is lunch served?",
    "How long can I borrow a book?",
];

fn ask_request(kb: &str, question: &str, max_new_tokens: u32) -> Request<AskRequest> {
    let mut request = Request::new(AskRequest {
        question: question.into(),
        knowledge_base: kb.into(),
        top_k: 3,
        sampling: Some(SamplingParams {
            max_new_tokens: Some(max_new_tokens),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(600));
    request
}

/// One Ask to its end: how it ended, its latency, and the answer's timings.
async fn ask(
    mut client: OrchestratorClient<Channel>,
    request: Request<AskRequest>,
) -> (Outcome, Duration, Option<zhiku_proto::v1::Timings>) {
    let started = Instant::now();
    let mut stream = match client.ask(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return (outcome(status), started.elapsed(), None),
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if let Some(ask_event::Event::Answer(answer)) = event.event {
                    return (Outcome::Answered, started.elapsed(), answer.timings);
                }
            }
            Err(status) => return (outcome(status), started.elapsed(), None),
        }
    }
    let other = Outcome::Other("the stream ended without an answer".into());
    (other, started.elapsed(), None)
}

/// One Ingest to its summary.
async fn ingest(
    mut client: OrchestratorClient<Channel>,
    kb: &str,
    documents: Vec<DocumentInput>,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let mut request = Request::new(IngestRequest {
        knowledge_base: kb.into(),
        documents,
        create_if_missing: true,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(600));
    let mut stream = match client.ingest(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return (outcome(status), started.elapsed()),
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if let Some(ingest_event::Event::Summary(summary)) = event.event {
                    let result = if summary.files_failed == 0 {
                        Outcome::Answered
                    } else {
                        Outcome::Other(format!("failed files: {:?}", summary.errors))
                    };
                    return (result, started.elapsed());
                }
            }
            Err(status) => return (outcome(status), started.elapsed()),
        }
    }
    let other = Outcome::Other("the stream ended without a summary".into());
    (other, started.elapsed())
}

fn document(name: &str, copies: usize) -> DocumentInput {
    DocumentInput {
        file_name: format!("{name}.md"),
        content: DOCUMENT.repeat(copies).into_bytes(),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn report(name: &str, results: &[(Outcome, Duration)]) -> usize {
    let answered = results.iter().filter(|r| r.0 == Outcome::Answered).count();
    let exhausted = results.iter().filter(|r| r.0 == Outcome::Exhausted).count();
    let others: Vec<&String> = results
        .iter()
        .filter_map(|r| match &r.0 {
            Outcome::Other(m) => Some(m),
            _ => None,
        })
        .collect();
    let mut latencies: Vec<Duration> = results
        .iter()
        .filter(|r| r.0 == Outcome::Answered)
        .map(|r| r.1)
        .collect();
    latencies.sort();
    let mut refusals: Vec<Duration> = results
        .iter()
        .filter(|r| r.0 == Outcome::Exhausted)
        .map(|r| r.1)
        .collect();
    refusals.sort();
    println!(
        "{name:<8} sent {:>3}  answered {answered:>3}  RESOURCE_EXHAUSTED {exhausted:>3}  \
         other {:>3}  answered p50 {:>8.0} ms  p99 {:>8.0} ms  refused p50 {:>6.0} ms",
        results.len(),
        others.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&refusals, 0.5),
    );
    for other in &others {
        println!("  other: {other}");
    }
    others.len()
}

async fn load(server: &Server, setup: &ServerSetup, asks: usize, ingests: usize) -> bool {
    let client = server.orchestrator();
    let (seeded, _) = ingest(client.clone(), "load", vec![document("handbook", 4)]).await;
    if seeded != Outcome::Answered {
        println!("seeding the knowledge base failed: {seeded:?}");
        return false;
    }
    let (rss, _) = server.memory_mib();
    println!("resident memory before the load: {rss:.0} MiB");
    let started = Instant::now();
    let ask_tasks: Vec<_> = (0..asks)
        .map(|i| {
            let request = ask_request("load", QUESTIONS[i % QUESTIONS.len()], setup.max_new_tokens);
            tokio::spawn(ask(client.clone(), request))
        })
        .collect();
    let ingest_tasks: Vec<_> = (0..ingests)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let docs = (0..4)
                    .map(|d| document(&format!("ingest-{i}-{d}"), 8))
                    .collect();
                ingest(client, "load", docs).await
            })
        })
        .collect();
    let mut ask_results = Vec::new();
    for task in ask_tasks {
        let (outcome, latency, _) = task
            .await
            .unwrap_or_else(|e| (Outcome::Other(e.to_string()), Duration::ZERO, None));
        ask_results.push((outcome, latency));
    }
    let mut ingest_results = Vec::new();
    for task in ingest_tasks {
        ingest_results.push(
            task.await
                .unwrap_or_else(|e| (Outcome::Other(e.to_string()), Duration::ZERO)),
        );
    }
    let wall = started.elapsed();
    println!(
        "load: {asks} Asks (max {} new tokens) and {ingests} Ingests (4 files each) at once, \
         {:.1} s wall",
        setup.max_new_tokens,
        wall.as_secs_f64()
    );
    let others = report("Ask", &ask_results) + report("Ingest", &ingest_results);
    let (rss, peak) = server.memory_mib();
    println!("server resident memory: {rss:.0} MiB now, {peak:.0} MiB peak");
    let serving = server.serving().await;
    let (after, _, _) = ask(
        server.orchestrator(),
        ask_request("load", QUESTIONS[0], setup.max_new_tokens),
    )
    .await;
    let alive = after == Outcome::Answered;
    println!(
        "afterwards: health {}, an Ask {}",
        if serving { "SERVING" } else { "NOT SERVING" },
        if alive { "answered" } else { "failed" }
    );
    others == 0 && serving && alive
}

/// A deterministic generator of unit vectors and texts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn unit_vector(&mut self, dims: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dims)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        let norm = v
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        v.into_iter().map(|x| x / norm).collect()
    }
}

/// Distinct words of the Zipf vocabulary, and its exponent (natural text is close to 1).
const VOCABULARY: usize = 50_000;
const ZIPF_EXPONENT: f64 = 1.0;
/// Characters of real text, then Zipf words, in each passage.
const WINDOW_CHARS: usize = 150;
const ZIPF_WORDS: usize = 30;

const SYLLABLES: [&str; 32] = [
    "ba", "chen", "da", "fang", "gu", "hai", "jin", "kai", "lan", "ming", "nuo", "pei", "qiu",
    "ren", "shan", "tao", "wei", "xin", "yao", "zhou", "bo", "cui", "dong", "feng", "guo", "hua",
    "jun", "kun", "li", "mei", "ning", "ping",
];

/// The word of Zipf rank `rank`: two or more syllables, distinct for each rank.
fn zipf_word(rank: usize) -> String {
    let mut n = rank + SYLLABLES.len();
    let mut word = String::new();
    while n > 0 {
        word.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    word
}

/// Passage texts: a window of a corpus's sentences, then words drawn from a Zipf-distributed
/// vocabulary, so that terms have the spread of document frequencies text has.
struct Corpus {
    sentences: Vec<String>,
    /// Cumulative weights of the vocabulary's ranks.
    cumulative: Vec<f64>,
}

impl Corpus {
    fn load(paths: &[PathBuf]) -> Result<Self, String> {
        let mut files = Vec::new();
        for path in paths {
            if path.is_dir() {
                let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "md" || x == "txt"))
                    .collect();
                inside.sort();
                files.extend(inside);
            } else {
                files.push(path.clone());
            }
        }
        let mut sentences = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("corpus {}: {e}", file.display()))?;
            sentences.extend(
                text.split_inclusive(['。', '！', '？', '\n'])
                    .map(str::trim)
                    .filter(|s| s.chars().count() >= 8)
                    .map(str::to_owned),
            );
        }
        if sentences.is_empty() {
            return Err(format!("the corpus {paths:?} holds no sentence"));
        }
        let mut total = 0.0;
        let cumulative = (1..=VOCABULARY)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(ZIPF_EXPONENT);
                total
            })
            .collect();
        Ok(Self {
            sentences,
            cumulative,
        })
    }

    fn zipf_rank(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let target = rng.unit() * total;
        self.cumulative.partition_point(|&c| c < target)
    }

    fn passage(&self, rng: &mut Rng) -> String {
        let mut text = String::new();
        let mut at = rng.below(self.sentences.len());
        while text.chars().count() < WINDOW_CHARS {
            text.push_str(&self.sentences[at % self.sentences.len()]);
            at += 1;
        }
        for _ in 0..ZIPF_WORDS {
            text.push(' ');
            text.push_str(&zipf_word(self.zipf_rank(rng)));
        }
        text
    }
}

fn load_questions(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let questions: Vec<String> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| v["question"].as_str().map(str::to_owned))
        .collect();
    if questions.is_empty() {
        return Err(format!("{}: no question", path.display()));
    }
    Ok(questions)
}

/// Writes `count` passages into `kb` through the retriever's own API, in this process.
async fn fill(
    retriever: &zhiku_retriever::Retriever,
    kb: &str,
    count: usize,
    dims: usize,
    corpus: &Corpus,
    rng: &mut Rng,
) -> Result<(), String> {
    let mut at = 0;
    while at < count {
        let end = (at + 1024).min(count);
        let passages = (at..end)
            .map(|i| Passage {
                document_id: format!("doc-{}", i / 100),
                chunk_index: (i % 100) as u32,
                text: corpus.passage(rng),
                source: format!("doc-{}.md", i / 100),
                vector: rng.unit_vector(dims),
                ..Default::default()
            })
            .collect();
        retriever
            .upsert(UpsertRequest {
                knowledge_base: kb.into(),
                passages,
            })
            .await
            .map_err(|e| format!("upsert: {e}"))?;
        at = end;
    }
    Ok(())
}

/// The embedding model's vector length (`hidden_size` in its config.json).
fn embedding_dims(setup: &ServerSetup) -> Result<usize, String> {
    let path = setup
        .models_dir
        .join(&setup.embedding_model)
        .join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    config["hidden_size"]
        .as_u64()
        .map(|d| d as usize)
        .ok_or_else(|| format!("{}: no hidden_size", path.display()))
}

/// One knowledge base per size in `data_dir`, filled and indexed (HNSW built) before the
/// server opens it, so that each size is measured in its steady state. One already filled
/// (a kept --data-dir) is reused.
async fn prefill(
    setup: &ServerSetup,
    data_dir: &Path,
    sizes: &[usize],
    corpus: &Corpus,
) -> Result<(), String> {
    let dims = embedding_dims(setup)?;
    let args = zhiku_retriever::RetrieverArgs::embedded(data_dir);
    let opened = zhiku_retriever::open_store(&args)
        .await
        .map_err(|e| e.to_string())?;
    let embedded = opened.embedded.clone().ok_or("not an embedded store")?;
    let retriever = zhiku_retriever::Retriever::new(opened.store).map_err(|e| e.to_string())?;
    for &size in sizes {
        let kb = format!("overhead-{size}");
        // Each size its own sequence, so that a kept size stays the same when others change.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ size as u64);
        match retriever.describe_knowledge_base(&kb, false, None).await {
            Ok(found) if found.passage_count == size as u64 && found.dimensions == dims as u32 => {
                println!("{kb}: {size} passages found in {}", data_dir.display());
                continue;
            }
            Ok(_) => {
                retriever
                    .delete_knowledge_base(&kb)
                    .await
                    .map_err(|e| format!("delete {kb}: {e}"))?;
            }
            Err(_) => {}
        }
        retriever
            .create_knowledge_base(CreateKnowledgeBaseRequest {
                name: kb.clone(),
                dimensions: dims as u32,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("create {kb}: {e}"))?;
        let started = Instant::now();
        fill(&retriever, &kb, size, dims, corpus, &mut rng).await?;
        let filled = started.elapsed().as_secs_f64();
        let store = embedded.clone();
        let name = kb.clone();
        tokio::task::spawn_blocking(move || store.optimize(&name))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("optimize {kb}: {e}"))?;
        println!(
            "{kb}: {size} passages written in {filled:.1} s, indexed in {:.1} s",
            started.elapsed().as_secs_f64() - filled
        );
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// One size's measurements, one entry per question asked.
#[derive(Default)]
struct Parts {
    embed: Vec<f64>,
    dense: Vec<f64>,
    sparse: Vec<f64>,
    hybrid: Vec<f64>,
    ask_embed: Vec<f64>,
    ask_search: Vec<f64>,
    ask_rest: Vec<f64>,
    overhead: Vec<f64>,
}

/// Times each stage alone (Embed; dense, BM25 and hybrid Search), then one Ask.
async fn measure(
    server: &Server,
    kb: &str,
    question: &str,
    parts: &mut Parts,
) -> Result<(), String> {
    const TOP_K: u32 = 3;
    let started = Instant::now();
    let vector = server
        .embedder()
        .embed(EmbedRequest {
            texts: vec![question.to_owned()],
            kind: EmbedKind::Query as i32,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("embed: {e}"))?
        .into_inner()
        .embeddings
        .pop()
        .map(|e| e.values)
        .ok_or("embed: no vector")?;
    parts.embed.push(elapsed_ms(started));
    for (mode, times) in [
        (SearchMode::Dense, &mut parts.dense),
        (SearchMode::Sparse, &mut parts.sparse),
        (SearchMode::Hybrid, &mut parts.hybrid),
    ] {
        let request = SearchRequest {
            knowledge_base: kb.into(),
            vector: if mode == SearchMode::Sparse {
                Vec::new()
            } else {
                vector.clone()
            },
            query_text: if mode == SearchMode::Dense {
                String::new()
            } else {
                question.to_owned()
            },
            top_k: TOP_K,
            mode: mode as i32,
            ..Default::default()
        };
        let started = Instant::now();
        server
            .retriever()
            .search(request)
            .await
            .map_err(|e| format!("{mode:?} search: {e}"))?;
        times.push(elapsed_ms(started));
    }
    let (result, _, timings) = ask(server.orchestrator(), ask_request(kb, question, 1)).await;
    let timings = match (result, timings) {
        (Outcome::Answered, Some(t)) => t,
        (result, _) => return Err(format!("an Ask on {kb}: {result:?}")),
    };
    // Everything the Ask did besides the generator's work.
    let overhead = timings.total_ms - timings.generate_ms;
    parts.ask_embed.push(timings.embed_ms);
    parts.ask_search.push(timings.search_ms);
    parts
        .ask_rest
        .push(overhead - timings.embed_ms - timings.search_ms);
    parts.overhead.push(overhead);
    Ok(())
}

async fn overhead(
    server: &Server,
    sizes: &[usize],
    asks: usize,
    questions: &[String],
) -> Result<(), String> {
    let mut parts: Vec<Parts> = sizes.iter().map(|_| Parts::default()).collect();
    // One unmeasured round warms the caches; then the sizes take turns, question by
    // question, so that a change in the machine's load falls on every size alike.
    for round in 0..=asks {
        let question = &questions[round % questions.len()];
        for (i, &size) in sizes.iter().enumerate() {
            let mut sink = Parts::default();
            let into = if round == 0 { &mut sink } else { &mut parts[i] };
            measure(server, &format!("overhead-{size}"), question, into).await?;
        }
    }
    println!(
        "medians of {asks} rounds, the sizes in turn; ms; Search and Embed called alone, then \
         one Ask (1 new token)"
    );
    println!(
        "{:>8}  {:>7} {:>7} {:>7} {:>7} | {:>9} {:>10} {:>8} {:>9} {:>6}",
        "passages",
        "embed",
        "dense",
        "bm25",
        "hybrid",
        "ask embed",
        "ask search",
        "ask rest",
        "overhead",
        "ratio",
    );
    let mut reference = None;
    let mut rows = Vec::new();
    for (&size, p) in sizes.iter().zip(parts) {
        let row = [
            median(p.embed),
            median(p.dense),
            median(p.sparse),
            median(p.hybrid),
            median(p.ask_embed),
            median(p.ask_search),
            median(p.ask_rest),
            median(p.overhead),
        ];
        let first: &[f64; 8] = reference.get_or_insert(row);
        let ratio = row[7] / first[7];
        println!(
            "{size:>8}  {:>7.2} {:>7.2} {:>7.2} {:>7.2} | {:>9.2} {:>10.2} {:>8.2} {:>9.2} {ratio:>6.2}",
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
        );
        rows.push(row);
    }
    if let (Some(first), Some(last), Some(&small), Some(&large)) =
        (rows.first(), rows.last(), sizes.first(), sizes.last())
    {
        let r = |i: usize| last[i] / first[i];
        println!(
            "ratio {large}/{small}: overhead {:.2}x (embed {:.2}x, dense {:.2}x, bm25 {:.2}x, \
             hybrid {:.2}x, ask search {:.2}x, ask rest {:.2}x)",
            r(7),
            r(0),
            r(1),
            r(2),
            r(3),
            r(5),
            r(6),
        );
    }
    println!(
        "overhead = Ask total − generate: describe + embed + search + prompt (ask rest = \
         overhead − ask embed − ask search: describe, CountTokens, the prompt)"
    );
    Ok(())
}

fn print_config(cli: &Cli) {
    println!("zhiku-bench config: {cli:?}");
}

async fn run(cli: Cli) -> Result<bool, String> {
    print_config(&cli);
    let keep_data = cli.server.data_dir.is_some();
    let data_dir = cli.server.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("zhiku-bench-{}", std::process::id()))
    });
    let mut questions = Vec::new();
    if let Bench::Overhead {
        ref sizes,
        ref corpus,
        questions: ref questions_file,
        ..
    } = cli.command
    {
        let prepared = match (Corpus::load(corpus), load_questions(questions_file)) {
            (Ok(corpus), Ok(q)) => {
                questions = q;
                prefill(&cli.server, &data_dir, sizes, &corpus).await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = prepared {
            if !keep_data {
                let _ = std::fs::remove_dir_all(&data_dir);
            }
            return Err(e);
        }
    }
    let server = Server::start(&cli.server, data_dir, keep_data).await?;
    match cli.command {
        Bench::Load { asks, ingests } => Ok(load(&server, &cli.server, asks, ingests).await),
        Bench::Overhead {
            ref sizes, asks, ..
        } => {
            overhead(&server, sizes, asks, &questions).await?;
            Ok(true)
        }
        Bench::Ingest {
            ref docs,
            ref python,
        } => {
            let settings = ingest::Settings {
                docs,
                model: cli.server.models_dir.join(&cli.server.embedding_model),
                python: python.as_deref(),
            };
            ingest::run(&server, settings).await?;
            Ok(true)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let limit = Duration::from_secs(cli.server.timeout_seconds);
    let models: &Path = &cli.server.models_dir;
    if !models.is_dir() {
        eprintln!(
            "zhiku-bench: {} is missing: run scripts/fetch-models",
            models.display()
        );
        return ExitCode::FAILURE;
    }
    match tokio::time::timeout(limit, run(cli)).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => {
            eprintln!("zhiku-bench: FAILED (see above)");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("zhiku-bench: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("zhiku-bench: stopped after {limit:?}");
            ExitCode::FAILURE
        }
    }
}
