//! Shared helpers of the retriever's integration tests: an in-process server on loopback
//! and the conformance suite that every backend must pass.
#![allow(dead_code)]

pub mod conformance;
pub mod qdrant_node;
pub mod ranking;

use std::path::Path;

use tokio::sync::oneshot;
use tonic::transport::Channel;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_retriever::{Retriever, RetrieverArgs};
use zhiku_runtime::ServerArgs;

/// A running in-process retriever on a loopback port; stops on drop.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(retriever: Retriever) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds loopback");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = ServerArgs {
            shutdown_grace_seconds: 1,
            ..ServerArgs::default()
        };
        let done = tokio::spawn(async move {
            let _ = zhiku_retriever::serve_loaded(retriever, server, listener, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Self {
            addr,
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub async fn client(&self) -> RetrieverClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connects");
        RetrieverClient::new(channel)
    }

    /// Stops the server and waits until it has let go of the store.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A retriever over the embedded backend in `dir`.
pub async fn embedded_retriever(dir: &Path) -> Retriever {
    let opened = zhiku_retriever::open_store(&RetrieverArgs::embedded(dir))
        .await
        .expect("opens the data dir");
    Retriever::new(opened.store).expect("retriever")
}

/// The Qdrant server the server-backend tests run against: `ZHIKU_TEST_QDRANT_URL`
/// (`scripts/qdrant-test-server` sets it). Without it, says so once on stderr past the test
/// harness's capture, so that a skipped run reads as skipped and not as a plain `ok`.
pub fn qdrant_url(what: &str) -> Option<String> {
    static NOTE: std::sync::Once = std::sync::Once::new();
    let url = std::env::var("ZHIKU_TEST_QDRANT_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        NOTE.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {what}: no Qdrant server (set ZHIKU_TEST_QDRANT_URL, or run under \
                 scripts/qdrant-test-server)"
            );
        });
    }
    url
}

/// A retriever over the Qdrant server at `url`, its collections named `<prefix>…`.
pub async fn qdrant_retriever(url: &str, prefix: &str) -> Retriever {
    let mut args = RetrieverArgs::embedded("unused");
    args.backend = zhiku_retriever::Backend::Qdrant;
    args.qdrant_url = url.to_string();
    args.qdrant_api_key = std::env::var("ZHIKU_TEST_QDRANT_API_KEY")
        .ok()
        .map(zhiku_retriever::config::Secret);
    args.qdrant_collection_prefix = prefix.to_string();
    let opened = zhiku_retriever::open_store(&args)
        .await
        .expect("connects to the Qdrant server");
    Retriever::new(opened.store).expect("retriever")
}

/// A pseudo-random vector with components in [-0.5, 0.5), its own for every `seed`
/// (SplitMix64: deterministic data without a dependency).
pub fn splitmix_vector(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed;
    (0..dims)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
