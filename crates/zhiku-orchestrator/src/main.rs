//! `zhiku-orchestrator`: the orchestrator service binary (its flags:
//! [`zhiku_orchestrator::OrchestratorCli`]).

use std::process::ExitCode;

use clap::Parser;
use zhiku_orchestrator::OrchestratorCli;
use zhiku_runtime::server::{bind, run_binary, shutdown_signal};
use zhiku_runtime::{EffectiveConfig, ServerArgs};

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = OrchestratorCli::parse();
    let config = EffectiveConfig::of::<OrchestratorCli>();
    let server = ServerArgs {
        audit: args.audit.clone(),
        ..args.server.clone()
    };
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
