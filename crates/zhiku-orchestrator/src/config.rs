//! The orchestrator's flags (every one also an environment variable).

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct OrchestratorArgs {
    /// The embedder's gRPC address.
    #[arg(
        long,
        env = "ZHIKU_EMBEDDER_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    pub embedder_addr: String,

    /// The retriever's gRPC address.
    #[arg(
        long,
        env = "ZHIKU_RETRIEVER_ADDR",
        default_value = "http://127.0.0.1:50053"
    )]
    pub retriever_addr: String,

    /// The generator's gRPC address.
    #[arg(
        long,
        env = "ZHIKU_GENERATOR_ADDR",
        default_value = "http://127.0.0.1:50054"
    )]
    pub generator_addr: String,

    /// Directory under which Ingest may read server-side paths; paths outside it are
    /// refused. Unset: server-side paths are refused altogether.
    #[arg(long, env = "ZHIKU_INGEST_ROOT")]
    pub ingest_root: Option<PathBuf>,

    /// A file holding the prompt template, with `{context}` and `{question}` placeholders.
    /// Default: the article's template.
    #[arg(long, env = "ZHIKU_PROMPT_TEMPLATE")]
    pub prompt_template: Option<PathBuf>,

    /// Passages per Embed call while ingesting.
    #[arg(long, env = "ZHIKU_INGEST_EMBED_BATCH", default_value_t = 32)]
    pub embed_batch: usize,

    /// Answer length (tokens) the context is trimmed for when a request does not say.
    #[arg(long, env = "ZHIKU_ASK_MAX_NEW_TOKENS", default_value_t = 512)]
    pub max_new_tokens: u32,
}

impl OrchestratorArgs {
    /// Downstream services on the default local ports.
    pub fn local(embedder: u16, retriever: u16, generator: u16) -> Self {
        Self {
            embedder_addr: format!("http://127.0.0.1:{embedder}"),
            retriever_addr: format!("http://127.0.0.1:{retriever}"),
            generator_addr: format!("http://127.0.0.1:{generator}"),
            ingest_root: None,
            prompt_template: None,
            embed_batch: 32,
            max_new_tokens: 512,
        }
    }
}
