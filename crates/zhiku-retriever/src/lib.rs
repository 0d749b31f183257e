//! zhiku's retriever service: knowledge bases of passages in Qdrant, searched by dense
//! vectors, BM25 or both fused.
//!
//! - [`store::VectorStore`]: storage behind one trait, with the embedded backend
//!   ([`store::embedded::EmbeddedStore`], qdrant-edge on local disk, the default) and the
//!   server backend ([`store::qdrant::QdrantStore`], a Qdrant server through qdrant-client);
//! - [`sparse::Bm25`]: BM25 sparse vectors with Chinese word segmentation, the same for both;
//! - [`knowledge::Retriever`]: validation, deterministic point ids, search modes, paging;
//! - [`api::RetrieverApi`]: the `zhiku.v1.Retriever` handlers;
//! - [`serve`]: everything wired onto the shared runtime.

pub mod api;
pub mod config;
pub mod error;
pub mod knowledge;
pub mod sparse;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use zhiku_proto::service_names;
use zhiku_proto::v1::retriever_server::RetrieverServer;
use zhiku_runtime::server::RuntimeError;
use zhiku_runtime::{Ready, ServerArgs, ServiceRuntime};

pub use config::{Backend, RetrieverArgs};
pub use error::RetrieverError;
pub use knowledge::Retriever;
pub use store::VectorStore;
use store::embedded::EmbeddedStore;
use store::qdrant::QdrantStore;

/// An open store: the trait object, and the embedded store itself when it is one (it needs
/// its indexes built in the background).
pub struct OpenedStore {
    pub store: Arc<dyn VectorStore>,
    pub embedded: Option<Arc<EmbeddedStore>>,
}

/// Opens the backend `args` choose (embedded: loads every knowledge base from disk; qdrant:
/// connects).
pub async fn open_store(args: &RetrieverArgs) -> Result<OpenedStore, RetrieverError> {
    match args.backend {
        Backend::Embedded => {
            let dir = args.data_dir.clone();
            let hnsw = args.hnsw();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(dir, hnsw))
                .await
                .map_err(|e| RetrieverError::Task(e.to_string()))??;
            let store = Arc::new(store);
            Ok(OpenedStore {
                store: store.clone(),
                embedded: Some(store),
            })
        }
        Backend::Qdrant => {
            let store = QdrantStore::connect(args.qdrant()).await?;
            Ok(OpenedStore {
                store: Arc::new(store),
                embedded: None,
            })
        }
    }
}

/// Builds the HNSW indexes of embedded knowledge bases that grew, every `interval`, while
/// the store is open.
pub fn spawn_optimizer(store: Arc<EmbeddedStore>, interval: Duration) {
    // A weak reference: the store closes (and releases its data directory's locks) once the
    // service that opened it has stopped, and the optimiser stops with it.
    let store = Arc::downgrade(&store);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_secs(1)));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(store) = store.upgrade() else {
                break;
            };
            match tokio::task::spawn_blocking(move || store.optimize_dirty()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "optimising knowledge bases failed"),
                Err(e) => tracing::error!(error = %e, "optimiser thread failed"),
            }
        }
    });
}

/// Serves `zhiku.v1.Retriever` on `listener` until `shutdown`; the store opens in the
/// background while health says NOT_SERVING.
pub async fn serve(
    args: RetrieverArgs,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let ready: Ready<Retriever> = Ready::new("vector store");
    let load = {
        let ready = ready.clone();
        async move {
            let started = std::time::Instant::now();
            let opened = open_store(&args).await.map_err(|e| e.to_string())?;
            if let Some(embedded) = opened.embedded.clone() {
                spawn_optimizer(
                    embedded,
                    Duration::from_secs(args.optimize_interval_seconds),
                );
            }
            let retriever = Retriever::new(opened.store.clone())
                .map_err(|e| e.to_string())?
                .with_hnsw_ef(Some(args.hnsw_ef))
                .with_rrf_k(args.rrf_k)
                .with_max_query_bytes(args.max_query_bytes);
            tracing::info!(
                backend = opened.store.backend(),
                location = %opened.store.location(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "vector store open"
            );
            ready.set(retriever);
            Ok::<(), String>(())
        }
    };
    run(ready, server, listener, load, shutdown).await
}

/// Serves an already opened retriever (tests and embedding into other programs).
pub async fn serve_loaded(
    retriever: Retriever,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let ready = Ready::with("vector store", retriever);
    run(
        ready,
        server,
        listener,
        async { Ok::<(), String>(()) },
        shutdown,
    )
    .await
}

async fn run(
    ready: Ready<Retriever>,
    server: ServerArgs,
    listener: TcpListener,
    load: impl Future<Output = Result<(), String>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let runtime = ServiceRuntime::new(server, service_names::RETRIEVER).await;
    let limit = runtime.max_message_bytes();
    let service = RetrieverServer::new(api::RetrieverApi::new(ready))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    runtime.serve(listener, service, load, shutdown).await
}
