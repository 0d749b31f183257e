//! zhiku's orchestrator: the knowledge-base pipelines over the other three services.
//!
//! - [`ingest`]: load → split (zhiku-text) → embed in batches → upsert, progress per file;
//! - [`ask`]: (follow-ups) a standalone question → embed → search (hybrid by default) →
//!   threshold (calibrated per embedder by default) → (with a reranker) the candidates
//!   reranked by the embedder's cross-encoder → the article's refusal without
//!   generating when nothing passes → merged passages within a token budget ([`context`])
//!   → the article's prompt with numbered passages, each with its source and heading path →
//!   generate, streamed → the answer with citations, support score and per-stage timings;
//! - [`eval`]: questions with known answers through the ask pipeline, scored (Evaluate);
//! - [`adapters`]: knowledge bases with their own LoRA adapter, loaded into the generator
//!   when created and again when the generator lost it;
//! - [`downstream`]: lazily connected clients that reconnect by themselves, carrying the
//!   request id and the caller's deadline;
//! - [`replicas`]: each downstream service over its replicas: health-aware, least loaded,
//!   retried elsewhere, generations routed by prompt prefix;
//! - [`tuners`]: the tuner's replicas, each training job on the one that runs it;
//! - [`api::OrchestratorApi`]: the `zhiku.v1.Orchestrator` handlers;
//! - [`http`]: the same pipelines over HTTP (`--http-listen`): the OpenAI-compatible API,
//!   REST for knowledge bases and documents, and the web page.

pub mod access;
pub mod adapters;
pub mod api;
pub mod ask;
pub mod config;
pub mod context;
pub mod downstream;
pub mod error;
pub mod eval;
pub mod examples;
pub mod grounding;
pub mod http;
pub mod ingest;
pub mod prompt;
pub mod readiness;
pub mod replicas;
pub mod tuners;
pub mod verify;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use zhiku_proto::service_names;
use zhiku_proto::v1::orchestrator_server::OrchestratorServer;
use zhiku_runtime::server::RuntimeError;
use zhiku_runtime::{Ready, ServerArgs, ServiceRuntime};
use zhiku_text::Walker;

pub use config::{
    Abstention, AskPolicy, DEFAULT_MAX_FILE_BYTES, DEFAULT_MIN_COVERAGE, HttpListen, MAX_RRF_K,
    OcrSetting, OrchestratorArgs, OrchestratorCli, PassageOrder, Rerank,
};
pub use error::OrchestratorError;

use downstream::Downstream;
use prompt::PromptTemplate;

/// The events of a pipeline, ending with its failure if it fails: what a transport streams
/// (mapping the failure its own way).
pub type Events<T> = tokio::sync::mpsc::Sender<Result<T, OrchestratorError>>;

/// Runs a pipeline (`work`, given the sender of its events) on its own task with the call's
/// request id; its events come out of the receiver. Dropping the receiver (the client went
/// away) stops the pipeline at its next step.
pub(crate) fn spawn_pipeline<T, F, Fut>(
    work: F,
) -> tokio::sync::mpsc::Receiver<Result<T, OrchestratorError>>
where
    T: Send + 'static,
    F: FnOnce(Events<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let future = work(tx);
    match zhiku_runtime::request_id::current() {
        Some(id) => tokio::spawn(zhiku_runtime::request_id::scope(id, future)),
        None => tokio::spawn(future),
    };
    rx
}

/// Runs a pipeline's `work` until `deadline` (`stage` says what it had not completed then),
/// stopping it at once when the client goes away (its downstream calls are dropped, which
/// cancels them): that is logged as CANCELLED, not as an error. Any other failure is sent as
/// the last event.
pub(crate) async fn run_pipeline<T>(
    pipeline: &'static str,
    stage: &'static str,
    deadline: downstream::Deadline,
    events: &Events<T>,
    work: impl Future<Output = Result<(), OrchestratorError>>,
) {
    let work = deadline.run(stage, work);
    let result = tokio::select! {
        result = work => result,
        () = events.closed() => Err(OrchestratorError::Cancelled),
    };
    match result {
        Ok(()) => {}
        Err(OrchestratorError::Cancelled) => {
            tracing::info!(
                code = "CANCELLED",
                pipeline,
                "the client went away; the {pipeline} stopped"
            );
        }
        Err(e) => {
            let _ = events.send(Err(e)).await;
        }
    }
}

/// The orchestrator, once it is loaded.
pub(crate) fn loaded(
    state: &Ready<Arc<Orchestrator>>,
) -> Result<Arc<Orchestrator>, OrchestratorError> {
    state
        .get()
        .map(Arc::clone)
        .map_err(|_| OrchestratorError::Loading)
}

/// The pipelines and their clients.
pub struct Orchestrator {
    pub downstream: Downstream,
    pub args: OrchestratorArgs,
    pub template: PromptTemplate,
    /// The article's template (as --abstention has it): the one regeneration of an answer
    /// that echoed the instructions of [`Self::template`].
    pub article_template: PromptTemplate,
    /// Walks server-side paths under --ingest-root, when set.
    pub ingest_walker: Option<Walker>,
    /// Bounds the files being read, parsed and split at once (--max-parallel-loads).
    pub load_permits: Arc<tokio::sync::Semaphore>,
    /// What the embedder's Info said (its calibrated threshold, whether it reranks), asked
    /// for at the first Ask that needs it.
    pub embedder_facts: tokio::sync::OnceCell<EmbedderFacts>,
}

/// What the orchestrator takes from the embedder's Info.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbedderFacts {
    /// The calibrated default threshold of its model, if it has one.
    pub threshold: Option<f32>,
    /// It serves Rerank (--reranker-model).
    pub reranker: bool,
}

impl Orchestrator {
    pub fn new(args: OrchestratorArgs) -> Result<Self, OrchestratorError> {
        let template = match &args.ask.prompt_template {
            Some(path) => PromptTemplate::from_file(path)?,
            None => PromptTemplate::system_role(args.ask.abstention),
        };
        let article_template = PromptTemplate::for_abstention(args.ask.abstention);
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
            article_template,
            ingest_walker,
            embedder_facts: tokio::sync::OnceCell::new(),
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
    serve_with_http(args, server, listener, None, shutdown).await
}

/// As [`serve`], and the HTTP side ([`http::router`]) on `http_listener` when there is one.
/// One shutdown stops both: on `shutdown`, or when the gRPC side stops by itself (a failed
/// load), the HTTP side stops taking connections and its calls in flight get the same
/// `--shutdown-grace-seconds`.
pub async fn serve_with_http(
    args: OrchestratorArgs,
    server: ServerArgs,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let grace = server.shutdown_grace();
    let http_tls = match &http_listener {
        Some(_) => match zhiku_runtime::tls::Identity::from_args(&server.tls).await? {
            Some(identity) => Some(identity.acceptor()?),
            None => None,
        },
        None => None,
    };
    let http_keys =
        zhiku_runtime::auth::ApiKeys::from_args(&server.auth).map_err(RuntimeError::Auth)?;
    let tuner = match &http_listener {
        Some(_) => tuners::Tuners::new(
            args.tuner_addr.as_deref(),
            args.ca_cert.as_deref(),
            zhiku_runtime::request_id::PropagateRequestId::with_api_key(
                args.downstream_api_key.as_ref().map(|k| k.0.as_str()),
            )
            .map_err(|e| RuntimeError::Load(format!("--downstream-api-key: {e}")))?,
            args.replicas.clone(),
        )
        .map_err(|e| RuntimeError::Load(e.to_string()))?,
        None => None,
    };
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let runtime = ServiceRuntime::new(server, service_names::ORCHESTRATOR)
        .await
        .follow_readiness(ready_rx.clone());
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
                orchestrator.downstream.replicas.clone(),
                ready_tx,
            ));
            state.set(Arc::new(orchestrator));
            Ok::<(), String>(())
        }
    };
    let limit = runtime.max_message_bytes();
    let router = http_listener.as_ref().map(|_| {
        http::router(
            http::HttpState::new(state.clone(), ready_rx).with_tuner(tuner),
            http::Limits::shared(&runtime.concurrency_limit(), limit),
            http_keys,
        )
    });
    let service = OrchestratorServer::new(api::OrchestratorApi::new(state))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let (Some(http_listener), Some(router)) = (http_listener, router) else {
        return runtime.serve(listener, service, load, shutdown).await;
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    }
    let grpc = async {
        let result = runtime
            .serve(listener, service, load, stopped(stop_rx.clone()))
            .await;
        let _ = stop_tx.send(true);
        result
    };
    let http = async {
        let served = http::serve(http_listener, router, http_tls, stopped(stop_rx.clone()));
        let deadline = async {
            stopped(stop_rx.clone()).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = served => if let Err(e) = result {
                tracing::error!(error = %e, "the HTTP server failed");
            },
            () = deadline => tracing::warn!(
                grace_seconds = grace.as_secs(),
                "HTTP calls still in flight after the shutdown grace period; exiting anyway"
            ),
        }
    };
    let (result, ()) = tokio::join!(grpc, http);
    result
}
