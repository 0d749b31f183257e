//! `zhiku-tuner`: the Tuner service binary.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use zhiku_runtime::server::{run_binary, shutdown_signal};
use zhiku_runtime::{EffectiveConfig, ServerArgs};
use zhiku_tuner::TunerArgs;

/// zhiku's tuning service over gRPC (zhiku.v1.Tuner, with grpc.health.v1 and server
/// reflection): trains LoRA adapters of the generator's model from alpaca or sharegpt
/// records, one job at a time with a queue, its progress streamed, cancellable; writes them
/// in PEFT's layout to --adapter-dir, the volume the generator loads adapters from.
#[derive(Debug, Parser)]
#[command(name = "zhiku-tuner", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ZHIKU_LISTEN", default_value = "0.0.0.0:50055")]
    listen: SocketAddr,

    #[command(flatten)]
    tuner: TunerArgs,

    #[command(flatten)]
    server: ServerArgs,
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SAFETY: the first statement of main; no other thread exists yet.
    unsafe {
        zhiku_models::pin_cpu_threads();
    }
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let args = Args::parse();
    let config = EffectiveConfig::of::<Args>();
    let server = args.server.clone();
    run_binary("zhiku-tuner", &config, &server, args.listen, |listener| {
        zhiku_tuner::serve(args.tuner, args.server, listener, shutdown_signal())
    })
    .await
}
