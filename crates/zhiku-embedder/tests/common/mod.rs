//! Shared helpers of the embedder's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;
use tonic::transport::Channel;
use zhiku_embedder::{EmbedderArgs, EmbedderState};
use zhiku_proto::v1::embedder_client::EmbedderClient;
use zhiku_runtime::ServerArgs;

/// The real all-MiniLM-L6-v2 laid out by `scripts/fetch-models minilm`.
pub fn minilm_dir() -> PathBuf {
    fetched("all-MiniLM-L6-v2", "minilm")
}

/// multilingual-e5-small as `scripts/fetch-models e5-small` converts it.
pub fn e5_small_dir() -> PathBuf {
    fetched("multilingual-e5-small", "e5-small")
}

/// `dir` under the models directory; panics with the command that fetches `name`.
fn fetched(dir: &str, name: &str) -> PathBuf {
    let dir = std::env::var_os("ZHIKU_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join(dir);
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run `scripts/fetch-models {name}` first",
        dir.display()
    );
    dir
}

pub fn minilm_args() -> EmbedderArgs {
    EmbedderArgs::for_model(minilm_dir().to_string_lossy().into_owned())
}

/// A running in-process embedder on a loopback port; stops on drop.
pub struct TestServer {
    pub state: Arc<EmbedderState>,
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(args: EmbedderArgs, server: ServerArgs) -> Self {
        let state = Arc::new(
            tokio::task::spawn_blocking(move || EmbedderState::load(&args))
                .await
                .unwrap()
                .expect("model loads"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(zhiku_embedder::serve_loaded(
            state.clone(),
            server,
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            state,
            addr,
            stop: Some(stop),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects")
    }

    pub async fn client(&self) -> EmbedderClient<Channel> {
        EmbedderClient::new(self.channel().await)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// One text of a reference fixture (`tests/fixtures/*_reference.json`): its kind (`query`
/// or `passage`), the token count the reference implementation saw, and its vector.
#[derive(serde::Deserialize)]
pub struct ReferenceItem {
    pub text: String,
    pub kind: String,
    pub tokens: usize,
    pub vector: Vec<f32>,
}

/// The items of `tests/fixtures/{file}`.
pub fn reference_items(file: &str) -> Vec<ReferenceItem> {
    #[derive(serde::Deserialize)]
    struct Reference {
        items: Vec<ReferenceItem>,
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    reference.items
}

/// Each item tokenized as its kind (its token count must be the reference's), then all
/// embedded in one batch of mixed lengths.
pub fn embed_reference_items(
    encoder: &zhiku_embedder::SentenceEncoder,
    items: &[ReferenceItem],
) -> Vec<Vec<f32>> {
    use zhiku_embedder::tokenizer::TextKind;
    let tokenized: Vec<_> = items
        .iter()
        .map(|item| {
            let kind = if item.kind == "query" {
                TextKind::Query
            } else {
                TextKind::Passage
            };
            let t = encoder.tokenizer.encode(&item.text, kind).unwrap();
            assert_eq!(t.ids.len(), item.tokens, "{} {:?}", item.kind, item.text);
            t
        })
        .collect();
    let inputs: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    encoder.embed_batch(&inputs).unwrap()
}
