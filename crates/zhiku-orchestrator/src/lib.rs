//! zhiku's orchestrator: the knowledge-base pipelines over the other three services.
//!
//! - [`ingest`]: load → split (zhiku-text) → embed in batches → upsert, progress per file;
//! - [`ask`]: embed the question → search (hybrid by default) → threshold → the article's
//!   refusal without generating when nothing passes → the article's prompt with numbered
//!   passages → generate, streamed → the answer with citations and per-stage timings;
//! - [`downstream`]: lazily connected clients that reconnect by themselves, carrying the
//!   request id and the caller's deadline;
//! - [`api::OrchestratorApi`]: the `zhiku.v1.Orchestrator` handlers.

pub mod api;
pub mod ask;
pub mod config;
pub mod downstream;
pub mod error;
pub mod ingest;
pub mod prompt;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use zhiku_proto::service_names;
use zhiku_proto::v1::orchestrator_server::OrchestratorServer;
use zhiku_runtime::ServerArgs;
use zhiku_runtime::server::{Loader, RuntimeError, serve_service};

pub use config::OrchestratorArgs;
pub use error::OrchestratorError;

use downstream::Downstream;
use prompt::PromptTemplate;

/// The pipelines and their clients.
pub struct Orchestrator {
    pub downstream: Downstream,
    pub args: OrchestratorArgs,
    pub template: PromptTemplate,
    /// Canonical --ingest-root, when set.
    pub ingest_root: Option<PathBuf>,
}

impl Orchestrator {
    pub fn new(args: OrchestratorArgs) -> Result<Self, OrchestratorError> {
        let template = match &args.prompt_template {
            Some(path) => PromptTemplate::from_file(path)?,
            None => PromptTemplate::default(),
        };
        let ingest_root = match &args.ingest_root {
            Some(root) => Some(root.canonicalize().map_err(|e| {
                OrchestratorError::Validation(format!("--ingest-root {}: {e}", root.display()))
            })?),
            None => None,
        };
        Ok(Self {
            downstream: Downstream::new(&args)?,
            args,
            template,
            ingest_root,
        })
    }
}

/// Serves `zhiku.v1.Orchestrator` on `listener` until `shutdown`. It needs no model: it is
/// SERVING at once; calls to a downstream service that is down answer UNAVAILABLE naming it.
pub async fn serve(
    args: OrchestratorArgs,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let load = move || {
        Orchestrator::new(args)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    serve_service(
        service_names::ORCHESTRATOR,
        "orchestrator",
        server,
        listener,
        shutdown,
        Loader::Blocking(Box::new(load)),
        |ready, limit| {
            OrchestratorServer::new(api::OrchestratorApi::new(ready))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
    )
    .await
}
