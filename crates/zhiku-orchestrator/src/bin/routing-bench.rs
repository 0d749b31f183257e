//! Routing benchmark: the orchestrator's replica set over N generator processes, the same
//! RAG workload routed three ways in one run: by prefix (`--generator-routing prefix`),
//! least loaded and round robin. Reports each one's prefix-cache hit rate (prompt tokens the
//! generators took from their prefix cache, over all prompt tokens) and time to first token
//! p50/p99; with `--measure routing,scaling`, also the workload's requests per second on 1 and
//! 2 replicas.
//!
//! The workload: `--kbs` knowledge bases of synthetic passages; each client sends fresh Asks
//! (instructions, four passages of a knowledge base, a question) and follow-up turns (its
//! previous conversation, the answer, a new question), as the Ask pipeline and the
//! OpenAI-compatible API send them. The generators restart between runs (empty caches).
//!
//! ```sh
//! cargo build --release --bins
//! target/release/routing-bench --model models/SmolLM2-135M-Instruct-GGUF \
//!     --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf
//! ```

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use zhiku_orchestrator::replicas::metrics::metrics;
use zhiku_orchestrator::replicas::{GenerationRouting, ReplicaArgs, ReplicaSet};
use zhiku_proto::v1::generator_client::GeneratorClient;
use zhiku_proto::v1::{
    Chat, ChatMessage, GenerateRequest, Role, SamplingParams, generate_request,
    generate_stream_response,
};
use zhiku_runtime::request_id::PropagateRequestId;

#[derive(Debug, Parser)]
#[command(
    name = "routing-bench",
    about = "prefix-aware vs least-loaded vs round-robin routing over generator replicas"
)]
struct Args {
    /// The generator's model (directory or file).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct-GGUF")]
    model: PathBuf,
    /// The GGUF file in --model, when it is a directory.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1.gguf")]
    gguf_file: String,
    /// The zhiku-generator binary (default: beside this one).
    #[arg(long)]
    generator_bin: Option<PathBuf>,
    /// Generator replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Compute threads of each generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Knowledge bases in the workload.
    #[arg(long, default_value_t = 10)]
    kbs: usize,
    /// Requests per run.
    #[arg(long, default_value_t = 60)]
    requests: usize,
    /// Clients sending at once.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Share of requests that are follow-up turns (0 to 1).
    #[arg(long, default_value_t = 0.3)]
    follow_ups: f64,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 8)]
    max_new_tokens: u32,
    /// With prefix routing: a request leaves the replica holding its prefix for the least
    /// loaded one when the first has more than this many calls in flight over the second
    /// (the orchestrator's --generator-max-imbalance). With --clients 3 over 2 replicas, 4
    /// lets all three wait on one replica while the other idles; 1 keeps both busy.
    #[arg(long, env = "ZHIKU_GENERATOR_MAX_IMBALANCE", default_value_t = 4)]
    max_imbalance: usize,
    /// What to measure: `routing` (the three routings over --replicas), `scaling`
    /// (requests per second on 1 and 2 replicas, routed by prefix), or both.
    #[arg(long, value_delimiter = ',', default_value = "routing")]
    measure: Vec<String>,
}

const WORDS: [&str; 48] = [
    "cluster",
    "replica",
    "shard",
    "vector",
    "index",
    "query",
    "passage",
    "token",
    "model",
    "adapter",
    "cache",
    "prefix",
    "latency",
    "memory",
    "batch",
    "kernel",
    "tensor",
    "layer",
    "stream",
    "answer",
    "source",
    "document",
    "deploy",
    "service",
    "health",
    "probe",
    "queue",
    "budget",
    "retrieval",
    "embedding",
    "ranking",
    "threshold",
    "prompt",
    "template",
    "history",
    "turn",
    "node",
    "volume",
    "secret",
    "certificate",
    "metric",
    "scale",
    "thread",
    "core",
    "device",
    "weight",
    "gradient",
    "schedule",
];

const INSTRUCTIONS: &str = "You answer questions from the passages below. Cite passages by number. \
If the passages do not hold the answer, say that you cannot answer from the known information.";

/// A small deterministic generator of choices.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn passage(kb: usize, index: usize) -> String {
    let mut rng = Lcg((kb * 1000 + index) as u64 + 17);
    let words: Vec<&str> = (0..70).map(|_| WORDS[rng.below(WORDS.len())]).collect();
    format!("Knowledge base {kb}, passage {index}: {}.", words.join(" "))
}

/// A fresh Ask of knowledge base `kb`: its passages (one of two top-4 sets: the same
/// knowledge base's passages come back) and question `q`.
fn fresh(kb: usize, set: usize, q: usize) -> Vec<ChatMessage> {
    let passages: Vec<String> = (0..4)
        .map(|i| format!("[{}] {}", i + 1, passage(kb, set * 2 + i)))
        .collect();
    vec![
        message(Role::System, INSTRUCTIONS),
        message(
            Role::User,
            &format!(
                "Known information:\n{}\n\nQuestion: what does passage {} say about {}?",
                passages.join("\n"),
                q % 4 + 1,
                WORDS[(kb * 7 + q) % WORDS.len()]
            ),
        ),
    ]
}

fn message(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role: role as i32,
        content: content.to_owned(),
    }
}

/// One request's figures.
struct Sample {
    ttft: Duration,
    prompt_tokens: u32,
    cached_tokens: u32,
}

struct Run {
    samples: Vec<Sample>,
    wall: Duration,
    failures: usize,
    /// Requests each replica took.
    calls: Vec<u64>,
    /// CPU seconds each generator process used during the run, and this process (the
    /// clients and the replica set).
    generator_cpu: Vec<f64>,
    client_cpu: f64,
}

/// CPU seconds (user and system) process `pid` (this one when None) has used, from
/// /proc/PID/stat (Linux; clock ticks of 1/100 s); 0 where it cannot be read.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The fields after the command name (which may hold spaces): state is the first, utime
    // the 12th and stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Generator processes, killed on drop.
struct Generators(Vec<Child>, Vec<String>);

impl Drop for Generators {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn start_generators(args: &Args, bin: &PathBuf, n: usize) -> Result<Generators, String> {
    let mut generators = Generators(Vec::new(), Vec::new());
    for _ in 0..n {
        let port = free_port().map_err(|e| e.to_string())?;
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["--listen", &address, "--model"])
            .arg(&args.model)
            .args(["--gguf-file", &args.gguf_file])
            .env("ZHIKU_THREADS", args.threads.to_string())
            .env("ZHIKU_LOG", "warn")
            .env("ZHIKU_HTTP_LISTEN", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        generators.0.push(child);
        generators.1.push(format!("http://{address}"));
    }
    let until = Instant::now() + Duration::from_secs(300);
    for address in &generators.1 {
        let channel = tonic::transport::Endpoint::from_shared(address.clone())
            .map_err(|e| e.to_string())?
            .connect_lazy();
        while !zhiku_runtime::health::is_serving(
            channel.clone(),
            "zhiku.v1.Generator",
            Duration::from_secs(2),
        )
        .await
        {
            if Instant::now() > until {
                return Err(format!("the generator at {address} never became SERVING"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(generators)
}

async fn run(
    args: &Args,
    bin: &PathBuf,
    replicas: usize,
    routing: GenerationRouting,
) -> Result<Run, String> {
    let generators = start_generators(args, bin, replicas).await?;
    let set = ReplicaSet::new(
        "generator",
        "zhiku.v1.Generator",
        &generators.1.join(","),
        None,
        PropagateRequestId::default(),
        ReplicaArgs {
            downstream_health_interval_ms: 500,
            downstream_dns_refresh_seconds: 5,
            generator_routing: routing,
            generator_prefix_routes: 65_536,
            generator_max_imbalance: args.max_imbalance,
        },
    )?;
    let cpu = |generators: &Generators| {
        let each: Vec<f64> = generators
            .0
            .iter()
            .map(|c| cpu_seconds(Some(c.id())))
            .collect();
        (each, cpu_seconds(None))
    };
    let calls = |generators: &Generators| -> Vec<u64> {
        generators
            .1
            .iter()
            .map(|a| {
                metrics()
                    .calls
                    .with_label_values(&["generator", a.as_str()])
                    .get()
            })
            .collect()
    };
    let (calls_before, (generator_cpu_before, client_cpu_before)) =
        (calls(&generators), cpu(&generators));
    let started = Instant::now();
    let per_client = args.requests.div_ceil(args.clients);
    let clients = (0..args.clients).map(|c| {
        let client = GeneratorClient::new(set.clone());
        let (kbs, follow_ups, max_new_tokens) = (args.kbs, args.follow_ups, args.max_new_tokens);
        tokio::spawn(async move {
            let mut client = client;
            let mut rng = Lcg(c as u64 * 7919 + 1);
            let mut samples = Vec::new();
            let mut failures = 0;
            let mut conversation: Option<Vec<ChatMessage>> = None;
            for i in 0..per_client {
                let follow_up =
                    conversation.is_some() && (rng.below(1000) as f64) < follow_ups * 1000.0;
                let messages = match (follow_up, conversation.take()) {
                    (true, Some(mut messages)) => {
                        messages.push(message(
                            Role::User,
                            &format!("And what about {}?", WORDS[rng.below(WORDS.len())]),
                        ));
                        messages
                    }
                    _ => fresh(rng.below(kbs), rng.below(2), i),
                };
                let request = GenerateRequest {
                    input: Some(generate_request::Input::Chat(Chat {
                        messages: messages.clone(),
                    })),
                    sampling: Some(SamplingParams {
                        temperature: Some(0.0),
                        max_new_tokens: Some(max_new_tokens),
                        ..Default::default()
                    }),
                    adapter: String::new(),
                };
                let sent = Instant::now();
                let mut ttft = None;
                let result = async {
                    let mut stream = client.generate_stream(request).await?.into_inner();
                    while let Some(event) = stream.message().await? {
                        match event.event {
                            Some(generate_stream_response::Event::Chunk(_)) => {
                                ttft.get_or_insert(sent.elapsed());
                            }
                            Some(generate_stream_response::Event::Done(done)) => {
                                return Ok(Some(done));
                            }
                            None => {}
                        }
                    }
                    Ok::<_, tonic::Status>(None)
                }
                .await;
                match result {
                    Ok(Some(done)) => {
                        samples.push(Sample {
                            ttft: ttft.unwrap_or_else(|| sent.elapsed()),
                            prompt_tokens: done.prompt_tokens,
                            cached_tokens: done.cached_prompt_tokens,
                        });
                        let mut messages = messages;
                        messages.push(message(Role::Assistant, &done.text));
                        conversation = Some(messages);
                    }
                    _ => failures += 1,
                }
            }
            (samples, failures)
        })
    });
    let mut all = Run {
        samples: Vec::new(),
        wall: Duration::ZERO,
        failures: 0,
        calls: Vec::new(),
        generator_cpu: Vec::new(),
        client_cpu: 0.0,
    };
    for client in futures::future::join_all(clients).await {
        let (samples, failures) = client.map_err(|e| e.to_string())?;
        all.samples.extend(samples);
        all.failures += failures;
    }
    all.wall = started.elapsed();
    let (generator_cpu, client_cpu) = cpu(&generators);
    all.generator_cpu = generator_cpu
        .iter()
        .zip(&generator_cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    all.client_cpu = client_cpu - client_cpu_before;
    all.calls = calls(&generators)
        .iter()
        .zip(&calls_before)
        .map(|(after, before)| after - before)
        .collect();
    drop(generators);
    Ok(all)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(name: &str, run: &Run) -> f64 {
    let mut ttft: Vec<Duration> = run.samples.iter().map(|s| s.ttft).collect();
    ttft.sort();
    let prompt: u64 = run.samples.iter().map(|s| u64::from(s.prompt_tokens)).sum();
    let cached: u64 = run.samples.iter().map(|s| u64::from(s.cached_tokens)).sum();
    let p50 = percentile(&ttft, 0.5);
    println!(
        "| {name} | {} | {} | {:.1}% | {:.0} | {:.0} | {:.2} |",
        run.samples.len(),
        run.failures,
        100.0 * cached as f64 / prompt.max(1) as f64,
        p50,
        percentile(&ttft, 0.99),
        run.samples.len() as f64 / run.wall.as_secs_f64()
    );
    p50
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let bin = args.generator_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("zhiku-generator")))
            .unwrap_or_else(|| PathBuf::from("zhiku-generator"))
    });
    println!(
        "{} generator replicas ({} thread each), {} requests from {} clients over {} knowledge bases, {:.0}% follow-ups, {} tokens each, max imbalance {}",
        args.replicas,
        args.threads,
        args.requests,
        args.clients,
        args.kbs,
        args.follow_ups * 100.0,
        args.max_new_tokens,
        args.max_imbalance
    );
    let table = |first: &str| {
        println!(
            "\n| {first} | requests | failed | prefix-cache hit rate | TTFT p50 ms | TTFT p99 ms | requests/s |"
        );
        println!("|---|---|---|---|---|---|---|");
    };
    if args.measure.iter().any(|m| m == "routing") {
        table("routing");
        let mut p50s = Vec::new();
        for (name, routing) in [
            ("prefix", GenerationRouting::Prefix),
            ("least-loaded", GenerationRouting::LeastLoaded),
            ("round-robin", GenerationRouting::RoundRobin),
        ] {
            match run(&args, &bin, args.replicas, routing).await {
                Ok(r) => p50s.push(report(name, &r)),
                Err(e) => {
                    eprintln!("{name}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if let [prefix, _, round_robin] = p50s[..] {
            println!(
                "\nTTFT p50, prefix over round-robin: {:.2}x",
                prefix / round_robin
            );
        }
    }
    if args.measure.iter().any(|m| m == "scaling") {
        table("replicas (prefix routing)");
        let mut rates = Vec::new();
        let mut runs = Vec::new();
        for n in [1, 2] {
            match run(&args, &bin, n, GenerationRouting::Prefix).await {
                Ok(r) => {
                    report(&n.to_string(), &r);
                    rates.push(r.samples.len() as f64 / r.wall.as_secs_f64());
                    runs.push((n, r));
                }
                Err(e) => {
                    eprintln!("{n} replicas: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        println!();
        for (n, r) in &runs {
            let wall = r.wall.as_secs_f64();
            let busy: Vec<String> = r
                .generator_cpu
                .iter()
                .map(|cpu| format!("{:.0}%", 100.0 * cpu / wall))
                .collect();
            println!(
                "{n} replica(s): {:.1} s; requests per replica {:?}; each generator's CPU over \
                 the run {}; the clients' process {:.0}% of a core",
                wall,
                r.calls,
                busy.join(", "),
                100.0 * r.client_cpu / wall
            );
        }
        if let [one, two] = rates[..] {
            println!("\nrequests/s, 2 replicas over 1: {:.2}x", two / one);
        }
    }
    ExitCode::SUCCESS
}
