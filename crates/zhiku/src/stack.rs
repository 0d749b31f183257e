//! All four services in one process, on the embedded store: `zhiku serve`, and the
//! in-process pipeline the other commands use when no `--addr` is given.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health_client::check_serving;
use zhiku_embedder::EmbedderArgs;
use zhiku_generator::GeneratorArgs;
use zhiku_orchestrator::{AskPolicy, OcrSetting, OrchestratorArgs};
use zhiku_runtime::ServerArgs;
use zhiku_runtime::server::{RuntimeError, bind};

/// Models and storage of the in-process stack.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Embedding model: a directory or a hub id. Default: BAAI/bge-small-zh-v1.5 (a Chinese
    /// embedder) from the hub; offline, when it is not cached, scripts/fetch-models'
    /// multilingual-e5-small in --models-dir, else its MiniLM.
    #[arg(long, global = true, env = "ZHIKU_EMBEDDER_MODEL")]
    pub embedding_model: Option<String>,

    /// Chat model: a .gguf file, a directory or a hub id. Default: a GLM-4 GGUF from the hub
    /// (CPU-sized); offline, when it is not cached, the strongest of scripts/fetch-models'
    /// chat models in --models-dir: Qwen2.5-Coder-1.5B when fetched (by name), else
    /// Qwen2.5-0.5B. On a GPU pass e.g. THUDM/glm-4-9b-chat with --device cuda.
    #[arg(long, global = true, env = "ZHIKU_GENERATOR_MODEL")]
    pub chat_model: Option<String>,

    /// The GGUF file inside the chat model's directory or hub repository (default: the
    /// default model's file).
    #[arg(long, global = true, env = "ZHIKU_GENERATOR_GGUF_FILE")]
    pub gguf_file: Option<String>,

    /// Models laid out by scripts/fetch-models; hub ids whose name is a directory here load
    /// offline.
    #[arg(
        long,
        global = true,
        env = "ZHIKU_MODELS_DIR",
        default_value = "models"
    )]
    pub models_dir: PathBuf,

    /// Where the embedded vector store keeps its knowledge bases.
    #[arg(
        long,
        global = true,
        env = "ZHIKU_RETRIEVER_DATA_DIR",
        default_value = "zhiku-data"
    )]
    pub data_dir: PathBuf,

    /// Device for both models: cpu, cuda or cuda:N.
    #[arg(long, global = true, env = "ZHIKU_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Directory the orchestrator may read server-side paths under (Ingest `paths`).
    #[arg(long, global = true, env = "ZHIKU_INGEST_ROOT")]
    pub ingest_root: Option<PathBuf>,

    /// A cross-encoder that reranks Ask's candidates (e.g. BAAI/bge-reranker-base, or a
    /// directory): served by the embedder's Rerank, used by every Ask. Unset: no reranking.
    #[arg(long, global = true, env = "ZHIKU_RERANKER_MODEL")]
    pub reranker_model: Option<String>,

    /// OCR models for scans and images (served by the embedder's Recognize): a directory
    /// or a hub id. Default: `ppocr` in --models-dir when `scripts/fetch-models ppocr` put
    /// it there; `off`: none.
    #[arg(long, global = true, env = "ZHIKU_OCR_MODEL")]
    pub ocr_model: Option<String>,

    /// OCR while ingesting: `auto` reads images and the PDF pages without a text layer,
    /// `images` also the pictures in DOCX files, `always` also those and every PDF page
    /// (its images, or rendered), `off` none. Default: auto (`zhiku
    /// ingest` then leaves it to the server).
    #[arg(long, global = true, env = "ZHIKU_OCR", value_enum)]
    pub ocr: Option<OcrSetting>,
}

/// Default models for real users: a Chinese embedder and a GLM-4 GGUF, from the hub.
pub const DEFAULT_EMBEDDING_MODEL: &str = "BAAI/bge-small-zh-v1.5";
pub const DEFAULT_CHAT_MODEL: &str = "unsloth/GLM-4-9B-0414-GGUF";
pub const DEFAULT_CHAT_GGUF_FILE: &str = "GLM-4-9B-0414-Q4_K_M.gguf";
/// The offline chat model preferred to the 0.5B one when `scripts/fetch-models qwen2.5-1.5b`
/// put it in the models directory: its directory and GGUF file.
pub const OFFLINE_STRONGER_CHAT: (&str, &str) = (
    "Qwen2.5-Coder-1.5B-Instruct-GGUF",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
);

/// The models the stack runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Models {
    pub embedding: String,
    pub chat: String,
    pub gguf_file: String,
}

impl StackArgs {
    /// Explicit choices win. Otherwise the hub defaults, unless they are not on this machine
    /// and scripts/fetch-models' models are: then those (offline use).
    pub fn models(&self) -> Models {
        let local = |model: &str, file: &str| {
            zhiku_models::ModelSource::resolve(model, Some(&self.models_dir))
                .map(|s| s.is_local(file))
                .unwrap_or(false)
        };
        let offline = |default: &str, file: &str, fallback: &str| {
            let fallback_dir = self.models_dir.join(fallback);
            if !local(default, file) && fallback_dir.is_dir() {
                Some(fallback_dir.to_string_lossy().into_owned())
            } else {
                None
            }
        };
        // e5-small first: it retrieves Chinese far better than MiniLM (docs/src/benchmarks/eval.md,
        // "Embedders, retrieval only").
        let embedding = self.embedding_model.clone().unwrap_or_else(|| {
            offline(
                DEFAULT_EMBEDDING_MODEL,
                "config.json",
                "multilingual-e5-small",
            )
            .or_else(|| offline(DEFAULT_EMBEDDING_MODEL, "config.json", "all-MiniLM-L6-v2"))
            .unwrap_or_else(|| DEFAULT_EMBEDDING_MODEL.into())
        });
        let (chat, gguf_file) = match (&self.chat_model, &self.gguf_file) {
            (Some(model), file) => (
                model.clone(),
                file.clone()
                    .unwrap_or_else(|| zhiku_generator::config::DEFAULT_GGUF_FILE.into()),
            ),
            (None, Some(file)) => (DEFAULT_CHAT_MODEL.into(), file.clone()),
            // Offline, the strongest chat model scripts/fetch-models left here: the 1.5B one
            // is fetched only by name, so its presence is the choice (figures in
            // docs/src/benchmarks/eval.md, "The strongest model the machine can run").
            (None, None) if !local(DEFAULT_CHAT_MODEL, DEFAULT_CHAT_GGUF_FILE) => {
                let stronger = self.models_dir.join(OFFLINE_STRONGER_CHAT.0);
                if stronger.join(OFFLINE_STRONGER_CHAT.1).is_file() {
                    (
                        stronger.to_string_lossy().into_owned(),
                        OFFLINE_STRONGER_CHAT.1.into(),
                    )
                } else {
                    match offline(
                        DEFAULT_CHAT_MODEL,
                        DEFAULT_CHAT_GGUF_FILE,
                        "Qwen2.5-Coder-0.5B-Instruct-GGUF",
                    ) {
                        Some(dir) => (dir, zhiku_generator::config::DEFAULT_GGUF_FILE.into()),
                        None => (DEFAULT_CHAT_MODEL.into(), DEFAULT_CHAT_GGUF_FILE.into()),
                    }
                }
            }
            (None, None) => (DEFAULT_CHAT_MODEL.into(), DEFAULT_CHAT_GGUF_FILE.into()),
        };
        Models {
            embedding,
            chat,
            gguf_file,
        }
    }
}

/// Where each service listens.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub orchestrator: SocketAddr,
    pub embedder: SocketAddr,
    pub retriever: SocketAddr,
    pub generator: SocketAddr,
    /// The orchestrator's HTTP side (OpenAI API, REST, web page); None: off.
    pub http: Option<SocketAddr>,
}

impl Ports {
    /// Free loopback ports, for the in-process pipeline.
    pub fn ephemeral() -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            orchestrator: any,
            embedder: any,
            retriever: any,
            generator: any,
            http: None,
        }
    }
}

/// The running services.
pub struct Stack {
    pub ports: Ports,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), RuntimeError>>)>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Stack {
    /// Starts the four services; the orchestrator asks under `ask`.
    pub async fn start(
        args: &StackArgs,
        ask: &AskPolicy,
        ports: Ports,
        server: &ServerArgs,
    ) -> Result<Self, String> {
        let (stop, rx) = watch::channel(false);
        let bind = |addr| async move { bind(addr).await.map_err(|e| e.to_string()) };
        let embedder_listener: TcpListener = bind(ports.embedder).await?;
        let retriever_listener: TcpListener = bind(ports.retriever).await?;
        let generator_listener: TcpListener = bind(ports.generator).await?;
        let orchestrator_listener: TcpListener = bind(ports.orchestrator).await?;
        let http_listener = match ports.http {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let local = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
        let ports = Ports {
            embedder: local(&embedder_listener)?,
            retriever: local(&retriever_listener)?,
            generator: local(&generator_listener)?,
            orchestrator: local(&orchestrator_listener)?,
            http: match &http_listener {
                Some(l) => Some(local(l)?),
                None => None,
            },
        };

        let models = args.models();
        tracing::info!(embedding = %models.embedding, chat = %models.chat, gguf = %models.gguf_file, reranker = args.reranker_model.as_deref().unwrap_or("none"), "models");
        let mut embedder = EmbedderArgs::for_model(models.embedding.clone());
        embedder.models_dir = args.models_dir.clone();
        embedder.device = args.device.clone();
        embedder.reranker_model = args.reranker_model.clone();
        embedder.ocr_model = args.ocr_model.clone();
        let mut generator = GeneratorArgs::for_model(models.chat.clone());
        generator.models_dir = args.models_dir.clone();
        generator.gguf_file = models.gguf_file.clone();
        generator.device = args.device.clone();
        let mut orchestrator = OrchestratorArgs::local(
            ports.embedder.port(),
            ports.retriever.port(),
            ports.generator.port(),
        );
        orchestrator.ingest_root = args.ingest_root.clone();
        orchestrator.ocr = args.ocr.unwrap_or(OcrSetting::Auto);
        orchestrator.ask = ask.clone();
        let retriever = zhiku_retriever::RetrieverArgs::embedded(args.data_dir.clone());
        // The three services behind the orchestrator: on loopback by default, so TLS is the
        // orchestrator's alone; they take the same API keys, plus one made for this process
        // that the orchestrator passes on (its callers' keys may all be read-only).
        let mut internal = server.clone();
        internal.tls = zhiku_runtime::TlsArgs::default();
        if zhiku_runtime::auth::ApiKeys::from_args(&server.auth)?.is_some() {
            let key = zhiku_runtime::auth::random_key();
            internal
                .auth
                .api_keys
                .push(zhiku_runtime::Secret(key.clone()));
            orchestrator.downstream_api_key = Some(zhiku_runtime::Secret(key));
        }

        let tasks = vec![
            (
                "embedder",
                tokio::spawn(zhiku_embedder::serve(
                    embedder,
                    internal.clone(),
                    embedder_listener,
                    stopped(rx.clone()),
                )),
            ),
            (
                "retriever",
                tokio::spawn(zhiku_retriever::serve(
                    retriever,
                    internal.clone(),
                    retriever_listener,
                    stopped(rx.clone()),
                )),
            ),
            (
                "generator",
                tokio::spawn(zhiku_generator::serve(
                    generator,
                    internal.clone(),
                    generator_listener,
                    stopped(rx.clone()),
                )),
            ),
            (
                "orchestrator",
                tokio::spawn(zhiku_orchestrator::serve_with_http(
                    orchestrator,
                    server.clone(),
                    orchestrator_listener,
                    http_listener,
                    stopped(rx),
                )),
            ),
        ];
        Ok(Self { ports, stop, tasks })
    }

    /// Waits until every service is SERVING; fails when one of them stopped (e.g. a model
    /// that cannot be loaded), with its error.
    pub async fn ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let checks = [
            (self.ports.embedder, "zhiku.v1.Embedder"),
            (self.ports.retriever, "zhiku.v1.Retriever"),
            (self.ports.generator, "zhiku.v1.Generator"),
            (self.ports.orchestrator, "zhiku.v1.Orchestrator"),
        ];
        loop {
            // A finished task is taken out before it is awaited, so that shutdown() does not
            // await it a second time.
            if let Some(i) = self.tasks.iter().position(|(_, t)| t.is_finished()) {
                let (name, task) = self.tasks.remove(i);
                return Err(match task.await {
                    Ok(Ok(())) => format!("the {name} stopped"),
                    Ok(Err(e)) => format!("the {name} failed: {e}"),
                    Err(e) => format!("the {name} crashed: {e}"),
                });
            }
            let mut all = true;
            for (addr, service) in checks {
                if !check_serving(addr, service).await {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("the services were not ready after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs until `signal`, or until a service stops by itself; then stops all.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), String> {
        tokio::pin!(signal);
        let failure = loop {
            tokio::select! {
                _ = &mut signal => break None,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(i) = self.tasks.iter().position(|(_, t)| t.is_finished()) {
                        let (name, task) = self.tasks.remove(i);
                        break Some(match task.await {
                            Ok(Ok(())) => format!("the {name} stopped"),
                            Ok(Err(e)) => format!("the {name} failed: {e}"),
                            Err(e) => format!("the {name} crashed: {e}"),
                        });
                    }
                }
            }
        };
        self.shutdown().await;
        match failure {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for (_, task) in self.tasks {
            let _ = task.await;
        }
    }
}

mod tonic_health_client {
    use std::net::SocketAddr;
    use std::time::Duration;

    /// True when `service` at `addr` says SERVING.
    pub async fn check_serving(addr: SocketAddr, service: &str) -> bool {
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
            return false;
        };
        let Ok(channel) = endpoint.connect().await else {
            return false;
        };
        zhiku_runtime::health::is_serving(channel, service, Duration::from_secs(5)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(models_dir: &std::path::Path) -> StackArgs {
        StackArgs {
            embedding_model: None,
            chat_model: None,
            gguf_file: None,
            models_dir: models_dir.to_path_buf(),
            data_dir: "zhiku-data".into(),
            device: "cpu".into(),
            ingest_root: None,
            reranker_model: None,
            ocr_model: None,
            ocr: None,
        }
    }

    #[test]
    fn hub_defaults_unless_only_the_offline_models_are_here() {
        let empty = tempfile::tempdir().unwrap();
        // SAFETY: this test alone reads HF_HOME in this process.
        unsafe { std::env::set_var("HF_HOME", empty.path().join("hf")) };
        let m = args(empty.path()).models();
        assert_eq!(m.embedding, DEFAULT_EMBEDDING_MODEL);
        assert_eq!(
            (m.chat.as_str(), m.gguf_file.as_str()),
            (DEFAULT_CHAT_MODEL, DEFAULT_CHAT_GGUF_FILE)
        );

        let offline = tempfile::tempdir().unwrap();
        std::fs::create_dir(offline.path().join("all-MiniLM-L6-v2")).unwrap();
        std::fs::create_dir(offline.path().join("Qwen2.5-Coder-0.5B-Instruct-GGUF")).unwrap();
        let m = args(offline.path()).models();
        assert!(m.embedding.ends_with("all-MiniLM-L6-v2"), "{m:?}");
        assert!(
            m.chat.ends_with("Qwen2.5-Coder-0.5B-Instruct-GGUF"),
            "{m:?}"
        );
        assert_eq!(m.gguf_file, zhiku_generator::config::DEFAULT_GGUF_FILE);
        // The 1.5B model's directory alone is not a fetched model; with its GGUF it chats.
        let stronger = offline.path().join(OFFLINE_STRONGER_CHAT.0);
        std::fs::create_dir(&stronger).unwrap();
        let m = args(offline.path()).models();
        assert!(
            m.chat.ends_with("Qwen2.5-Coder-0.5B-Instruct-GGUF"),
            "{m:?}"
        );
        std::fs::write(stronger.join(OFFLINE_STRONGER_CHAT.1), b"gguf").unwrap();
        let m = args(offline.path()).models();
        assert!(m.chat.ends_with(OFFLINE_STRONGER_CHAT.0), "{m:?}");
        assert_eq!(m.gguf_file, OFFLINE_STRONGER_CHAT.1);
        // With scripts/fetch-models' e5-small there too, that one embeds.
        std::fs::create_dir(offline.path().join("multilingual-e5-small")).unwrap();
        let m = args(offline.path()).models();
        assert!(m.embedding.ends_with("multilingual-e5-small"), "{m:?}");

        // An explicit choice always wins.
        let mut explicit = args(offline.path());
        explicit.embedding_model = Some("BAAI/bge-m3".into());
        explicit.chat_model = Some("model.gguf".into());
        let m = explicit.models();
        assert_eq!(m.embedding, "BAAI/bge-m3");
        assert_eq!(m.chat, "model.gguf");
    }
}
