//! `zhiku-embedder`: the embedding service binary.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use zhiku_embedder::EmbedderArgs;
use zhiku_runtime::server::{run_binary, shutdown_signal};
use zhiku_runtime::{EffectiveConfig, ServerArgs};

/// zhiku's embedding service: BERT-family sentence embeddings over gRPC
/// (zhiku.v1.Embedder, with grpc.health.v1 and server reflection).
#[derive(Debug, Parser)]
#[command(name = "zhiku-embedder", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ZHIKU_LISTEN", default_value = "0.0.0.0:50052")]
    listen: SocketAddr,

    #[command(flatten)]
    embedder: EmbedderArgs,

    #[command(flatten)]
    server: ServerArgs,
}

/// mimalloc, as TEI uses: glibc's malloc gives the multi-megabyte activations of a forward
/// pass back to the kernel and faults them in again on the next one, which cost as much as
/// the matmul they fed (a [528, 1536] bias add: 4 ms with glibc, 0.1 ms with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SAFETY: the first statement of main; no other thread exists yet.
    unsafe { zhiku_models::pin_cpu_threads() };
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let args = Args::parse();
    let config = EffectiveConfig::of::<Args>();
    let server = args.server.clone();
    run_binary(
        "zhiku-embedder",
        &config,
        &server,
        args.listen,
        |listener| zhiku_embedder::serve(args.embedder, args.server, listener, shutdown_signal()),
    )
    .await
}
