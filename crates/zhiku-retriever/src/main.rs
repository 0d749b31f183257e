//! `zhiku-retriever`: the retriever service binary.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use zhiku_runtime::ServerArgs;
use zhiku_runtime::server::{run_binary, shutdown_signal};

/// zhiku's retriever service over gRPC (zhiku.v1.Retriever, with grpc.health.v1 and server
/// reflection). The retriever (Qdrant storage and search) is not built yet: see issue 3.
#[derive(Debug, Parser)]
#[command(name = "zhiku-retriever", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ZHIKU_LISTEN", default_value = "0.0.0.0:50053")]
    listen: SocketAddr,

    #[command(flatten)]
    server: ServerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = format!("{args:?}");
    let server = args.server.clone();
    run_binary(
        "zhiku-retriever",
        &config,
        &server,
        args.listen,
        |listener| zhiku_retriever::serve(args.server, listener, shutdown_signal()),
    )
    .await
}
