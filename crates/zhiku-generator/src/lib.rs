//! zhiku's generation service: language models on candle behind gRPC, streamed.
//!
//! - [`models`]: one batched decoder on shared layers (`layers`, `attention`, `decoder`)
//!   for Llama / Qwen2 / GLM-4 GGUF and ChatGLM2/3, GLM-4-9B, GLM-4-0414 safetensors;
//!   ChatGLM-6B's own 2-D-position network; the loaders;
//! - [`tokenizer`]: `tokenizer.json`, or a BPE / SentencePiece tokenizer built from GGUF
//!   metadata; control tokens only from the chat template, never from message contents;
//! - [`sentencepiece`]: SentencePiece `tokenizer.model` files (the ChatGLM family's, and
//!   ChatGLM-6B's `ice_text.model` with its whitespace pieces and id offset);
//! - [`tiktoken`]: GLM-4-9B-chat's tiktoken `tokenizer.model`;
//! - [`template`]: chat templates per family, the model's own Jinja template first;
//! - [`lora`]: PEFT LoRA adapters, merged at load or applied per request;
//! - [`sampling`]: greedy / temperature / top-k / top-p / repetition penalty / seed;
//! - [`decode_stream`]: UTF-8-correct incremental decoding and stop strings;
//! - [`engine`]: the scheduler (continuous batching, chunked prefill), the paged KV cache
//!   with prefix reuse, a bounded FIFO queue, cancellation, deadlines;
//! - [`api::GeneratorApi`]: the `zhiku.v1.Generator` handlers.

pub mod api;
pub mod config;
pub mod decode_stream;
pub mod engine;
pub mod error;
pub mod lora;
pub mod models;
pub mod sampling;
pub mod sentencepiece;
pub mod template;
pub mod tiktoken;
pub mod tokenizer;

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

/// A loaded model behind its engine: what the handlers work with.
pub struct GeneratorState {
    pub engine: GenerationEngine,
    pub shared: Arc<EngineShared>,
    pub default_max_new_tokens: usize,
    /// Input limits checked before rendering or tokenizing (--max-prompt-bytes,
    /// --max-chat-messages).
    pub max_prompt_bytes: usize,
    pub max_chat_messages: usize,
}

impl GeneratorState {
    /// Loads the model (blocking: call from a blocking thread) and starts the engine.
    pub fn load(args: &GeneratorArgs) -> Result<Self, GeneratorError> {
        let started = std::time::Instant::now();
        // The kernels' pool starts with the first repacked matrix: size it first. A second
        // model in the same process keeps the first one's pool.
        let threads = args.threads.unwrap_or_else(zhiku_kernels::default_threads);
        if let Err(e) = zhiku_kernels::set_threads(threads) {
            tracing::warn!(error = %e, "kernel threads already set");
        }
        tracing::info!(
            threads = zhiku_kernels::threads(),
            simd = zhiku_kernels::simd_level(),
            "CPU kernels"
        );
        let model = models::load_model(args)?;
        tracing::info!(
            model = %model.info.model_id,
            architecture = %model.info.architecture,
            dtype = %model.info.dtype,
            device = %model.info.device,
            context_length = model.info.context_length,
            template = model.template.name(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Self::from_model(model, args)
    }

    pub fn from_model(
        model: models::LoadedModel,
        args: &GeneratorArgs,
    ) -> Result<Self, GeneratorError> {
        let (engine, shared) = GenerationEngine::start(model, args.engine_config())?;
        Ok(Self {
            engine,
            shared,
            default_max_new_tokens: args.max_new_tokens.max(1),
            max_prompt_bytes: args.max_prompt_bytes.max(1),
            max_chat_messages: args.max_chat_messages.max(1),
        })
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
