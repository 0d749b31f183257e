//! zhiku's generation service: language models (`zhiku_lm`) behind gRPC, streamed.
//!
//! - [`engine`]: the scheduler (continuous batching, chunked prefill) that decides each
//!   step's batch, the block manager with prefix reuse over `zhiku_lm::kv`'s storage, a
//!   bounded FIFO queue, cancellation, deadlines;
//! - [`sampling`]: greedy / temperature / top-k / top-p / repetition penalty / seed;
//! - [`decode_stream`]: UTF-8-correct incremental decoding and stop strings;
//! - [`api::GeneratorApi`]: the `zhiku.v1.Generator` handlers;
//! - [`config::GeneratorArgs`]: the flags, turned into a `zhiku_lm::ModelSpec` and an
//!   [`engine::EngineConfig`].

pub mod api;
pub mod base_check;
pub mod config;
pub mod decode_stream;
pub mod engine;
pub mod error;
pub mod sampling;
pub mod scoring;
pub mod service;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use zhiku_proto::service_names;
use zhiku_proto::v1::generator_server::GeneratorServer;
use zhiku_runtime::ServerArgs;
use zhiku_runtime::server::{Loader, RuntimeError, serve_service};

pub use config::GeneratorArgs;
pub use engine::{EngineShared, GenerationEngine};
pub use error::GeneratorError;
pub use service::GeneratorState;

/// Runs candle's element-wise CPU ops on the calling thread, unless the user set
/// `CANDLE_NUM_THREADS`. The matmuls and attention run on the kernels' pool; candle's own
/// pool of spinning workers would compete with it for the same cores between ops (a
/// decode step has hundreds of small element-wise ops), and those ops are too small to gain
/// from threads. Dense (safetensors) matmuls keep all threads: they follow
/// `RAYON_NUM_THREADS`.
///
/// # Safety
/// It writes the process environment: call it first thing in `main`, before any other
/// thread exists (the async runtime included).
pub unsafe fn serial_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread is running.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Serves `zhiku.v1.Generator` on `listener` until `shutdown`; the model loads in the
/// background while health says NOT_SERVING.
pub async fn serve(
    args: GeneratorArgs,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let load = move || {
        GeneratorState::load(&args)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    serve_with(Loader::Blocking(Box::new(load)), server, listener, shutdown).await
}

/// Serves an already loaded state (tests and embedding into other programs).
pub async fn serve_loaded(
    state: Arc<GeneratorState>,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    serve_with(Loader::Loaded(state), server, listener, shutdown).await
}

async fn serve_with(
    loader: Loader<Arc<GeneratorState>>,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    serve_service(
        service_names::GENERATOR,
        "language model",
        server,
        listener,
        shutdown,
        loader,
        |ready, limit| {
            GeneratorServer::new(api::GeneratorApi::new(ready))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
    )
    .await
}
