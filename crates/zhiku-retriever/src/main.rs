//! `zhiku-retriever`: the retriever service binary.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use zhiku_retriever::RetrieverArgs;
use zhiku_runtime::server::{run_binary, shutdown_signal};
use zhiku_runtime::{AuditArgs, EffectiveConfig, ServerArgs};

/// zhiku's retriever service over gRPC (zhiku.v1.Retriever, with grpc.health.v1 and server
/// reflection): knowledge bases of passages in Qdrant — embedded (qdrant-edge, on local
/// disk) or a Qdrant server — searched by dense vectors, BM25 or both fused.
#[derive(Debug, Parser)]
#[command(name = "zhiku-retriever", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ZHIKU_LISTEN", default_value = "0.0.0.0:50053")]
    listen: SocketAddr,

    #[command(flatten)]
    retriever: RetrieverArgs,

    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    audit: AuditArgs,
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = EffectiveConfig::of::<Args>();
    let server = ServerArgs {
        audit: args.audit.clone(),
        ..args.server.clone()
    };
    run_binary(
        "zhiku-retriever",
        &config,
        &server,
        args.listen,
        |listener| zhiku_retriever::serve(args.retriever, args.server, listener, shutdown_signal()),
    )
    .await
}
