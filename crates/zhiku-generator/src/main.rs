//! `zhiku-generator`: the generation service binary.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use zhiku_generator::GeneratorArgs;
use zhiku_runtime::server::{run_binary, shutdown_signal};
use zhiku_runtime::{EffectiveConfig, ServerArgs};

/// zhiku's generation service: language models on candle over gRPC (zhiku.v1.Generator,
/// with grpc.health.v1 and server reflection), streamed.
#[derive(Debug, Parser)]
#[command(name = "zhiku-generator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ZHIKU_LISTEN", default_value = "0.0.0.0:50054")]
    listen: SocketAddr,

    #[command(flatten)]
    generator: GeneratorArgs,

    #[command(flatten)]
    server: ServerArgs,
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SAFETY: the first statements of main; no other thread exists yet.
    unsafe {
        zhiku_models::pin_cpu_threads();
        zhiku_generator::serial_elementwise_ops();
    }
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let args = Args::parse();
    let config = EffectiveConfig::of::<Args>();
    let server = args.server.clone();
    run_binary(
        "zhiku-generator",
        &config,
        &server,
        args.listen,
        |listener| zhiku_generator::serve(args.generator, args.server, listener, shutdown_signal()),
    )
    .await
}
