//! `zhiku-orchestrator`: the orchestrator service binary.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use zhiku_orchestrator::OrchestratorArgs;
use zhiku_runtime::ServerArgs;
use zhiku_runtime::server::{run_binary, shutdown_signal};

/// zhiku's orchestrator service over gRPC (zhiku.v1.Orchestrator, with grpc.health.v1 and server
/// reflection): the ingest and ask pipelines over the embedder, retriever and generator.
#[derive(Debug, Parser)]
#[command(name = "zhiku-orchestrator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ZHIKU_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,

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
    let config = format!("{args:?}");
    let server = args.server.clone();
    run_binary(
        "zhiku-orchestrator",
        &config,
        &server,
        args.listen,
        |listener| {
            zhiku_orchestrator::serve(args.orchestrator, args.server, listener, shutdown_signal())
        },
    )
    .await
}
