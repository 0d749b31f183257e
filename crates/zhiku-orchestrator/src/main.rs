//! `zhiku-orchestrator`: the orchestrator service binary.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use zhiku_orchestrator::{HttpListen, OrchestratorArgs};
use zhiku_runtime::server::{bind, run_binary, shutdown_signal};
use zhiku_runtime::{EffectiveConfig, ServerArgs};

/// zhiku's orchestrator service over gRPC (zhiku.v1.Orchestrator, with grpc.health.v1 and server
/// reflection): the ingest and ask pipelines over the embedder, retriever and generator; and
/// over HTTP (--http-listen): the OpenAI-compatible API, REST and the web page.
#[derive(Debug, Parser)]
#[command(name = "zhiku-orchestrator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ZHIKU_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,

    /// Address of the HTTP side: the OpenAI-compatible API (/v1/chat/completions,
    /// /v1/models, /v1/embeddings), REST for knowledge bases and documents, and the web page
    /// at /. `off` turns it off.
    #[arg(long, env = "ZHIKU_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: HttpListen,

    #[command(flatten)]
    orchestrator: OrchestratorArgs,

    #[command(flatten)]
    server: ServerArgs,
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = EffectiveConfig::of::<Args>();
    let server = args.server.clone();
    run_binary(
        "zhiku-orchestrator",
        &config,
        &server,
        args.listen,
        |listener| async move {
            let http = match args.http_listen.0 {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            };
            zhiku_orchestrator::serve_with_http(
                args.orchestrator,
                args.server,
                listener,
                http,
                shutdown_signal(),
            )
            .await
        },
    )
    .await
}
