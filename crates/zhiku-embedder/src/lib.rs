//! zhiku's embedding service: sentence encoders on candle behind gRPC.
//!
//! - [`model::SentenceEncoder`]: loads `bert` / `xlm-roberta` checkpoints and bidirectional
//!   `gemma3_text` ones ([`gemma`], EmbeddingGemma) from a local directory or the hub, pools
//!   (mean / CLS), applies sentence-transformers' Dense modules and L2-normalises;
//! - [`tokenizer::TextTokenizer`]: prefixes (query / passage) and truncation that is reported;
//! - [`reranker::CrossEncoder`]: a cross-encoder (bge-reranker, bce-reranker) for Rerank,
//!   loaded the same way, with `--reranker-model`;
//! - [`batcher::Batcher`]: dynamic batching across concurrent requests by a token
//!   budget, with a bounded queue (one for texts, one for reranked pairs);
//! - [`testing`]: tiny checkpoints in the real file formats, for tests;
//! - [`ocr::OcrState`]: PP-OCR (zhiku-ocr) for Recognize, with `--ocr-model` or the
//!   models under `--models-dir/ppocr`, behind a bounded queue;
//! - [`api::EmbedderApi`]: the `zhiku.v1.Embedder` handlers;
//! - [`serve`]: everything wired onto the shared runtime (used by the binary and by
//!   `zhiku serve`).

pub mod api;
pub mod batcher;
pub mod config;
pub mod encoder;
pub mod error;
pub mod gemma;
pub mod kernels;
pub mod model;
pub mod ocr;
pub mod reranker;
pub mod testing;
pub mod tokenizer;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use zhiku_proto::service_names;
use zhiku_proto::v1::embedder_server::EmbedderServer;
use zhiku_runtime::ServerArgs;
use zhiku_runtime::server::{Loader, RuntimeError, serve_service};

pub use batcher::{Batcher, BatchingConfig, EmbeddingBatcher};
pub use config::EmbedderArgs;
pub use error::EmbedderError;
pub use model::{ModelOptions, SentenceEncoder};
pub use reranker::CrossEncoder;

/// A loaded model and its batcher: what the handlers work with.
pub struct EmbedderState {
    pub encoder: Arc<SentenceEncoder>,
    pub batcher: EmbeddingBatcher,
    /// The cross-encoder and its batcher, with --reranker-model.
    pub reranker: Option<RerankerState>,
    pub max_client_batch_size: usize,
    /// Longest text of a request, in bytes (--max-text-bytes).
    pub max_text_bytes: usize,
    /// The OCR models and their queue, for Recognize (--ocr-model).
    pub ocr: Option<ocr::OcrState>,
}

/// A loaded cross-encoder and its own batcher (same token budget and queue bound as Embed's).
pub struct RerankerState {
    pub model: Arc<CrossEncoder>,
    pub batcher: Batcher<tokenizer::PairInput, f32>,
}

impl EmbedderState {
    /// Loads the model (blocking: call from a blocking thread) and starts the batcher.
    pub fn load(args: &EmbedderArgs) -> Result<Self, EmbedderError> {
        let started = std::time::Instant::now();
        let encoder = Arc::new(SentenceEncoder::load(&args.model_options())?);
        tracing::info!(
            model = %encoder.info.model_id,
            model_type = %encoder.info.model_type,
            dimensions = encoder.info.dimensions,
            max_input_tokens = encoder.info.max_input_tokens,
            pooling = encoder.info.pooling.as_str(),
            dtype = encoder.info.precision.as_str(),
            device = %encoder.info.device,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let batcher = EmbeddingBatcher::start(encoder.clone(), args.batching());
        let reranker = match args.reranker_options() {
            Some(options) => {
                let started = std::time::Instant::now();
                let model = Arc::new(CrossEncoder::load(&options).map_err(|e| {
                    EmbedderError::Load(format!("--reranker-model {}: {e}", options.model))
                })?);
                tracing::info!(
                    reranker = %model.info.model_id,
                    architecture = model.info.architecture,
                    max_input_tokens = model.info.max_input_tokens,
                    dtype = model.info.precision.as_str(),
                    device = %model.info.device,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reranker loaded"
                );
                let batcher = Batcher::start(model.clone(), args.batching());
                Some(RerankerState { model, batcher })
            }
            None => None,
        };
        let ocr = ocr::OcrState::load(args)?;
        Ok(Self {
            encoder,
            batcher,
            reranker,
            max_client_batch_size: args.max_client_batch_size.max(1),
            max_text_bytes: args.max_text_bytes.max(1),
            ocr,
        })
    }
}

/// Serves `zhiku.v1.Embedder` on `listener` until `shutdown`; the model loads in the
/// background while health says NOT_SERVING.
pub async fn serve(
    args: EmbedderArgs,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let load = move || {
        EmbedderState::load(&args)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    serve_with(Loader::Blocking(Box::new(load)), server, listener, shutdown).await
}

/// Serves an already loaded state (tests and embedding into other programs).
pub async fn serve_loaded(
    state: Arc<EmbedderState>,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    serve_with(Loader::Loaded(state), server, listener, shutdown).await
}

async fn serve_with(
    loader: Loader<Arc<EmbedderState>>,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    serve_service(
        service_names::EMBEDDER,
        "embedding model",
        server,
        listener,
        shutdown,
        loader,
        |ready, limit| {
            EmbedderServer::new(api::EmbedderApi::new(ready))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
    )
    .await
}
