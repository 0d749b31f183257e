//! zhiku's generator service.
//!
//! The generator (GLM models on candle) is not built yet: see issue 4. The binary already runs on the shared runtime (health,
//! reflection, request ids, limits, graceful shutdown) and answers UNIMPLEMENTED.

pub mod api;

use std::future::Future;

use tokio::net::TcpListener;
use zhiku_proto::service_names;
use zhiku_proto::v1::generator_server::GeneratorServer;
use zhiku_runtime::server::RuntimeError;
use zhiku_runtime::{ServerArgs, ServiceRuntime};

/// Serves `zhiku.v1.Generator` on `listener` until `shutdown`.
pub async fn serve(
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let runtime = ServiceRuntime::new(server, service_names::GENERATOR).await;
    let limit = runtime.max_message_bytes();
    let service = GeneratorServer::new(api::GeneratorApi)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    // Nothing to load yet: SERVING as soon as it listens.
    let load = async { Ok::<(), String>(()) };
    runtime.serve(listener, service, load, shutdown).await
}
