//! The conformance suite against both backends, over real gRPC on loopback.

mod common;

use std::sync::Arc;

use common::TestServer;
use zhiku_retriever::Retriever;
use zhiku_retriever::store::qdrant::{QdrantSettings, QdrantStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    common::conformance::run(server.client().await, "", "embedded").await;
}

/// Runs against a real Qdrant server when ZHIKU_TEST_QDRANT_URL is set (e.g.
/// `http://localhost:6334`); passes with a note otherwise (CI has no Qdrant server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_backend_conforms() {
    let Some(url) = std::env::var("ZHIKU_TEST_QDRANT_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "SKIPPED qdrant_server_backend_conforms: set ZHIKU_TEST_QDRANT_URL (e.g. \
             http://localhost:6334) to run the conformance suite against a Qdrant server"
        );
        return;
    };
    let prefix = format!("zhiku_test_{}_", std::process::id());
    let store = QdrantStore::connect(QdrantSettings {
        url,
        api_key: std::env::var("ZHIKU_TEST_QDRANT_API_KEY").ok(),
        collection_prefix: prefix,
        timeout_secs: 30,
    })
    .await
    .expect("connects to the Qdrant server");
    let retriever = Retriever::new(Arc::new(store)).expect("retriever");
    let server = TestServer::start(retriever).await;
    common::conformance::run(server.client().await, "", "qdrant").await;
}
