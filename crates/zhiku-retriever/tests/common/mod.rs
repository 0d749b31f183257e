//! Shared helpers of the retriever's integration tests: an in-process server on loopback
//! and the conformance suite that every backend must pass.
#![allow(dead_code)]

pub mod conformance;

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
