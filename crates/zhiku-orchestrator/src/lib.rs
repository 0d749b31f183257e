//! zhiku's orchestrator: the knowledge-base pipelines over the other three services.
//!
//! - [`ingest`]: load → split (zhiku-text) → embed in batches → upsert, progress per file;
//! - [`ask`]: embed the question → search (hybrid by default) → threshold → the article's
//!   refusal without generating when nothing passes → the article's prompt with numbered
//!   passages → generate, streamed → the answer with citations and per-stage timings;
//! - [`eval`]: questions with known answers through the ask pipeline, scored (Evaluate);
//! - [`adapters`]: knowledge bases with their own LoRA adapter, loaded into the generator
//!   when created and again when the generator lost it;
//! - [`downstream`]: lazily connected clients that reconnect by themselves, carrying the
//!   request id and the caller's deadline;
//! - [`api::OrchestratorApi`]: the `zhiku.v1.Orchestrator` handlers.

pub mod adapters;
pub mod api;
pub mod ask;
pub mod config;
pub mod downstream;
pub mod error;
pub mod eval;
pub mod ingest;
pub mod prompt;
pub mod readiness;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use zhiku_proto::service_names;
use zhiku_proto::v1::orchestrator_server::OrchestratorServer;
use zhiku_runtime::server::RuntimeError;
use zhiku_runtime::{Ready, ServerArgs, ServiceRuntime};
use zhiku_text::Walker;

pub use config::OrchestratorArgs;
pub use error::OrchestratorError;

use downstream::Downstream;
use prompt::PromptTemplate;

/// The pipelines and their clients.
pub struct Orchestrator {
    pub downstream: Downstream,
    pub args: OrchestratorArgs,
    pub template: PromptTemplate,
    /// Walks server-side paths under --ingest-root, when set.
    pub ingest_walker: Option<Walker>,
    /// Bounds the files being read, parsed and split at once (--max-parallel-loads).
    pub load_permits: Arc<tokio::sync::Semaphore>,
}

impl Orchestrator {
    pub fn new(args: OrchestratorArgs) -> Result<Self, OrchestratorError> {
        let template = match &args.prompt_template {
            Some(path) => PromptTemplate::from_file(path)?,
            None => PromptTemplate::default(),
        };
        let ingest_walker = match &args.ingest_root {
            Some(root) => Some(Walker::confined(root).map_err(|e| {
                OrchestratorError::Validation(format!("--ingest-root {}: {e}", root.display()))
            })?),
            None => None,
        };
        Ok(Self {
            downstream: Downstream::new(&args)?,
            load_permits: Arc::new(tokio::sync::Semaphore::new(args.parallel_loads())),
            args,
            template,
            ingest_walker,
        })
    }
}

/// Serves `zhiku.v1.Orchestrator` on `listener` until `shutdown`. Health is SERVING while its
/// three downstream services are (checked every half second); calls are answered either way,
/// and a call that needs a service that is down answers UNAVAILABLE naming it.
pub async fn serve(
    args: OrchestratorArgs,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let runtime = ServiceRuntime::new(server, service_names::ORCHESTRATOR)
        .await
        .follow_readiness(ready_rx);
    let state: Ready<Arc<Orchestrator>> = Ready::new("orchestrator");
    let load = {
        let state = state.clone();
        async move {
            // Reading the template and resolving the ingest root touch the disk.
            let orchestrator = tokio::task::spawn_blocking(move || Orchestrator::new(args))
                .await
                .map_err(|e| format!("the loading thread failed: {e}"))?
                .map_err(|e| e.to_string())?;
            tokio::spawn(readiness::watch_downstreams(
                orchestrator.downstream.health.clone(),
                orchestrator.downstream.caller.clone(),
                ready_tx,
            ));
            state.set(Arc::new(orchestrator));
            Ok::<(), String>(())
        }
    };
    let limit = runtime.max_message_bytes();
    let service = OrchestratorServer::new(api::OrchestratorApi::new(state))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    runtime.serve(listener, service, load, shutdown).await
}
