//! `zhiku`: the command line of the zhiku knowledge base.
//!
//! ```text
//! zhiku serve                              all four services in one process
//! zhiku ingest docs/ --kb handbook         put documents in (progress bar)
//! zhiku ask "小拾喜欢做什么？" --kb handbook  answer, streamed, then the sources
//! zhiku eval cases.jsonl --kb handbook   retrieval recall, answer accuracy, refusals, latency
//! zhiku kb list | create NAME | delete NAME
//! zhiku docs list --kb NAME | delete --kb NAME DOC_ID
//! ```
//! Commands talk to a running orchestrator (`--addr`, `ZHIKU_ADDR`); without one they run
//! the whole pipeline in this process, on the embedded store and the local models.

mod commands;
mod eval;
mod stack;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use zhiku_runtime::ServerArgs;

use stack::{Ports, Stack, StackArgs};

/// zhiku 知库: a knowledge base that answers questions from your documents.
#[derive(Debug, Parser)]
#[command(name = "zhiku", version, propagate_version = true)]
struct Cli {
    /// A running orchestrator (e.g. http://127.0.0.1:50051). Unset: run the pipeline in
    /// this process.
    #[arg(long, env = "ZHIKU_ADDR", global = true)]
    addr: Option<String>,

    #[command(flatten)]
    access: commands::ClientArgs,

    #[command(flatten)]
    stack: StackArgs,

    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of `Serve`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedder, retriever (embedded store), generator and orchestrator in one
    /// process, each on its own port, with the same gRPC API as the separate services.
    Serve {
        /// Orchestrator address.
        #[arg(
            long,
            env = "ZHIKU_ORCHESTRATOR_LISTEN",
            default_value = "0.0.0.0:50051"
        )]
        orchestrator_listen: SocketAddr,
        /// Embedder address.
        #[arg(long, env = "ZHIKU_EMBEDDER_LISTEN", default_value = "127.0.0.1:50052")]
        embedder_listen: SocketAddr,
        /// Retriever address.
        #[arg(
            long,
            env = "ZHIKU_RETRIEVER_LISTEN",
            default_value = "127.0.0.1:50053"
        )]
        retriever_listen: SocketAddr,
        /// Generator address.
        #[arg(
            long,
            env = "ZHIKU_GENERATOR_LISTEN",
            default_value = "127.0.0.1:50054"
        )]
        generator_listen: SocketAddr,
        /// The orchestrator's HTTP address: the OpenAI-compatible API, REST and the web page
        /// (the same port as the orchestrator binary's default). `off` turns it off.
        #[arg(long, env = "ZHIKU_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
        http_listen: zhiku_orchestrator::HttpListen,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Put files or directories (walked recursively) into a knowledge base.
    Ingest {
        /// Files or directories (.txt .md .html .pdf .docx .csv).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The knowledge base (created when missing).
        #[arg(long, env = "ZHIKU_KB")]
        kb: String,
        /// Passage length in characters.
        #[arg(long, default_value_t = 250)]
        chunk_size: u32,
        /// Characters neighbouring passages share.
        #[arg(long, default_value_t = 50)]
        overlap: u32,
        /// Largest file sent, in bytes; a larger one fails alone and the rest goes on. It
        /// must fit one gRPC message (the server's --max-message-bytes).
        #[arg(long, env = "ZHIKU_INGEST_MAX_FILE_BYTES", default_value_t = 60 << 20)]
        max_file_bytes: u64,
    },
    /// Ask a question; the answer streams, then its sources.
    Ask {
        /// The question.
        question: String,
        /// The knowledge base.
        #[arg(long, env = "ZHIKU_KB")]
        kb: String,
        /// Passages to retrieve.
        #[arg(long, default_value_t = 5)]
        top_k: u32,
        /// Drop passages whose cosine similarity to the question is below this; with none
        /// left the answer is "根据已知信息无法回答该问题". Unset: the orchestrator's default,
        /// calibrated per embedder; negative: drop none.
        #[arg(long, allow_negative_numbers = true)]
        threshold: Option<f32>,
        /// Retrieval: dense, sparse or hybrid.
        #[arg(long, value_enum, default_value_t = commands::Mode::Hybrid)]
        mode: commands::Mode,
        /// Longest answer in tokens.
        #[arg(long, default_value_t = 512)]
        max_new_tokens: u32,
        /// Print one JSON object {answer, refused, sources: [{source, score, text}], timings}.
        #[arg(long)]
        json: bool,
    },
    /// Score a knowledge base on questions with known answers (JSONL): retrieval recall@1/3/k
    /// and MRR, answers holding their gold, false refusals, abstention on unanswerable
    /// questions, per-stage latency and tokens; `--sweep` runs a grid and names the best.
    Eval(eval::EvalArgs),
    /// Manage knowledge bases.
    Kb {
        #[command(subcommand)]
        action: commands::KbAction,
    },
    /// Manage the documents of a knowledge base.
    Docs {
        #[command(subcommand)]
        action: commands::DocsAction,
    },
}

fn quiet_server_args() -> ServerArgs {
    ServerArgs {
        log: std::env::var("ZHIKU_LOG").unwrap_or_else(|_| "warn".into()),
        ..ServerArgs::default()
    }
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SAFETY: the first statement of main; no other thread exists yet.
    unsafe { zhiku_models::pin_cpu_threads() };
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve {
        orchestrator_listen,
        embedder_listen,
        retriever_listen,
        generator_listen,
        http_listen,
        server,
    } = &cli.command
    {
        if let Err(e) = zhiku_runtime::telemetry::init(server.log_format, &server.log) {
            eprintln!("zhiku: {e}");
            return ExitCode::from(2);
        }
        zhiku_runtime::EffectiveConfig::of::<Cli>().log_start("zhiku serve");
        if let Err(e) = zhiku_runtime::server::start_metrics(server).await {
            eprintln!("zhiku serve: {e}");
            return ExitCode::FAILURE;
        }
        let ports = Ports {
            orchestrator: *orchestrator_listen,
            embedder: *embedder_listen,
            retriever: *retriever_listen,
            generator: *generator_listen,
            http: http_listen.0,
        };
        let stack = match Stack::start(&cli.stack, ports, server).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("zhiku serve: {e}");
                return ExitCode::FAILURE;
            }
        };
        let p = stack.ports;
        tracing::info!(
            orchestrator = %p.orchestrator,
            embedder = %p.embedder,
            retriever = %p.retriever,
            generator = %p.generator,
            http = %p.http.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/")),
            "zhiku serve: all services listening"
        );
        return match stack
            .run_until(zhiku_runtime::server::shutdown_signal())
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zhiku serve: {e}");
                ExitCode::FAILURE
            }
        };
    }

    // Other commands: a running orchestrator, or the pipeline in this process.
    let (addr, stack) = match &cli.addr {
        Some(addr) => (addr.clone(), None),
        None => {
            let server = quiet_server_args();
            let _ = zhiku_runtime::telemetry::init(server.log_format, &server.log);
            let mut stack = match Stack::start(&cli.stack, Ports::ephemeral(), &server).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("zhiku: cannot start the in-process pipeline: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) =
                commands::with_spinner("loading models", stack.ready(Duration::from_secs(600)))
                    .await
            {
                eprintln!("zhiku: {e}");
                stack.shutdown().await;
                return ExitCode::FAILURE;
            }
            (format!("http://{}", stack.ports.orchestrator), Some(stack))
        }
    };
    let code = commands::run(&addr, &cli.access, cli.command).await;
    if let Some(stack) = stack {
        stack.shutdown().await;
    }
    code
}
