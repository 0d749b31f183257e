//! The orchestrator's flags (every one also an environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use zhiku_runtime::{AuditArgs, Secret, ServerArgs};

/// zhiku's orchestrator service over gRPC (zhiku.v1.Orchestrator, with grpc.health.v1 and server
/// reflection): the ingest and ask pipelines over the embedder, retriever and generator; and
/// over HTTP (--http-listen): the OpenAI-compatible API, REST and the web page.
#[derive(Debug, clap::Parser)]
#[command(name = "zhiku-orchestrator", version)]
pub struct OrchestratorCli {
    /// Address to listen on.
    #[arg(long, env = "ZHIKU_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Address of the HTTP side: the OpenAI-compatible API (/v1/chat/completions,
    /// /v1/models, /v1/embeddings), REST for knowledge bases and documents, and the web page
    /// at /. `off` turns it off.
    #[arg(long, env = "ZHIKU_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: HttpListen,

    #[command(flatten)]
    pub orchestrator: OrchestratorArgs,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub audit: AuditArgs,
}

/// Where the HTTP side (OpenAI API, REST, web page) listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpListen(pub Option<SocketAddr>);

impl std::str::FromStr for HttpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "off" | "none" | "false" => Ok(Self(None)),
            addr => addr.parse().map(|a| Self(Some(a))).map_err(|e| {
                format!("`{addr}` is not an address such as 0.0.0.0:8080, nor `off`: {e}")
            }),
        }
    }
}

/// Whether an Ask reranks its candidates with the embedder's cross-encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rerank {
    /// When the embedder has a reranker (its Info names one; asked once).
    Auto,
    /// Always: an Ask fails with FAILED_PRECONDITION when the embedder has none.
    On,
    /// Never.
    Off,
}

/// Where the strongest passage sits in the prompt. Passages keep their rank as their number
/// (`[1]` is the best) either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PassageOrder {
    /// `[1]` first, at the start of the context.
    BestFirst,
    /// `[1]` last, next to the instruction and the question.
    BestLast,
}

/// When the ingest reads text from images (see `--ocr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OcrSetting {
    /// Image files, the PDF pages without a text layer, the OFD pages without text.
    Auto,
    /// As `auto`, and the pictures embedded in DOCX files, read where they stand.
    Images,
    /// As `images`, and every PDF page read by OCR (its images, or the page rendered).
    Always,
    /// No image is read.
    Off,
}

/// Who decides that the passages do not answer a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Abstention {
    /// zhiku, from the evidence: no passage over the threshold, or passages that cover
    /// under --min-coverage of the question's terms, give the refusal without calling the
    /// model; the default prompt is the article's without its refusal sentence, so the
    /// model answers from what it is given.
    Evidence,
    /// The model, as the article has it: its prompt asks it to say "根据已知信息无法回答该问题"
    /// when the passages hold no answer (zhiku still refuses without calling it when no
    /// passage passes the threshold).
    Model,
}

/// What an Ask does with a generated answer whose key facts (numbers with units, versions,
/// flags, model names) no passage nor the question states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// Withdraw it: the refusal is given in its place (`refused` true), with the
    /// unsupported facts named in `verification`.
    Withdraw,
    /// Return it, marked: `verification` names the unsupported facts.
    Mark,
    /// Do not check.
    Off,
}

#[derive(Debug, Clone, clap::Args)]
pub struct OrchestratorArgs {
    /// The embedder's gRPC address; several replicas: a comma-separated list of addresses,
    /// or `dns://name:port` (`dns+https://` for TLS) for every address the name resolves to
    /// (a headless service), re-resolved every --downstream-dns-refresh-seconds.
    #[arg(
        long,
        env = "ZHIKU_EMBEDDER_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    pub embedder_addr: String,

    /// The retriever's gRPC address; several replicas: a comma-separated list of addresses,
    /// or `dns://name:port` (`dns+https://` for TLS) for every address the name resolves to
    /// (a headless service), re-resolved every --downstream-dns-refresh-seconds.
    #[arg(
        long,
        env = "ZHIKU_RETRIEVER_ADDR",
        default_value = "http://127.0.0.1:50053"
    )]
    pub retriever_addr: String,

    /// The generator's gRPC address; several replicas: a comma-separated list of addresses,
    /// or `dns://name:port` (`dns+https://` for TLS) for every address the name resolves to
    /// (a headless service), re-resolved every --downstream-dns-refresh-seconds.
    #[arg(
        long,
        env = "ZHIKU_GENERATOR_ADDR",
        default_value = "http://127.0.0.1:50054"
    )]
    pub generator_addr: String,

    /// API key sent to the embedder, retriever and generator (`authorization: Bearer`),
    /// for when they were started with --api-key.
    #[arg(long, env = "ZHIKU_DOWNSTREAM_API_KEY", hide_env_values = true)]
    pub downstream_api_key: Option<Secret>,

    /// PEM file of CA certificates to trust for https:// downstream addresses, besides the
    /// system roots.
    #[arg(long, env = "ZHIKU_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Directory under which Ingest may read server-side paths; paths outside it are
    /// refused. Unset: server-side paths are refused altogether.
    #[arg(long, env = "ZHIKU_INGEST_ROOT")]
    pub ingest_root: Option<PathBuf>,

    /// Largest server-side file Ingest reads, in bytes; a larger one fails alone.
    #[arg(long, env = "ZHIKU_INGEST_MAX_FILE_BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    pub max_file_bytes: u64,

    /// Files read, parsed and split at once across all Ingest calls (the CPU stage of the
    /// pipeline; more wait their turn). 0: one per CPU core.
    #[arg(long, env = "ZHIKU_INGEST_MAX_PARALLEL_LOADS", default_value_t = 0)]
    pub max_parallel_loads: usize,

    /// Passages per Embed call while ingesting.
    #[arg(long, env = "ZHIKU_INGEST_EMBED_BATCH", default_value_t = 32)]
    pub embed_batch: usize,

    /// OCR while ingesting (the embedder's Recognize): `auto` reads images (PNG, JPEG,
    /// BMP, TIFF, WebP) and the PDF pages without a text layer; `images` also the pictures
    /// embedded in DOCX files (their text put where they stand); `always` also those, and
    /// every PDF page read by OCR (from its images, or rendered); `off` reads no image. An Ingest
    /// request's `ocr` overrides it.
    #[arg(long, env = "ZHIKU_OCR", value_enum, default_value_t = OcrSetting::Auto)]
    pub ocr: OcrSetting,

    /// The tuner's gRPC address (zhiku-tuner): the HTTP side's /v1/fine_tuning/jobs routes
    /// pass to it. Several replicas: a comma-separated list or a `dns://name:port` name; a
    /// new job goes to the serving one with the fewest unfinished jobs, a job's reads and
    /// cancel to the one that holds it, a listing merges them all. Unset: they answer 501.
    #[arg(long, env = "ZHIKU_TUNER_ADDR")]
    pub tuner_addr: Option<String>,

    /// Every setting of the Ask pipeline.
    #[command(flatten)]
    pub ask: AskPolicy,

    /// Health checks, DNS and routing over the downstream replicas.
    #[command(flatten)]
    pub replicas: crate::replicas::ReplicaArgs,
}

/// The Ask policy: every setting of the Ask pipeline (prompt, history limits, answer length,
/// context budget, threshold, rewriting, reranking, passage order, abstention). One group,
/// flattened by the orchestrator binary and by `zhiku serve` and the in-process CLI, so that
/// its flags, environment variables and defaults are written here alone.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct AskPolicy {
    /// A file holding the prompt template, with `{context}` and `{question}` placeholders.
    /// Default: the article's template (with --abstention evidence, without its refusal
    /// sentence).
    #[arg(long, env = "ZHIKU_PROMPT_TEMPLATE")]
    pub prompt_template: Option<PathBuf>,

    /// Earlier turns of a conversation an Ask keeps at most (the most recent ones).
    #[arg(long, env = "ZHIKU_ASK_MAX_HISTORY_TURNS", default_value_t = 16)]
    pub max_history_turns: usize,

    /// Longest `question` of an Ask, in characters (checked on its bytes first, before it
    /// is copied).
    #[arg(long, env = "ZHIKU_ASK_MAX_QUESTION_CHARS", default_value_t = 4_000)]
    pub max_question_chars: usize,

    /// Most bytes of history (questions and answers of the turns --max-history-turns keeps)
    /// an Ask takes, checked before anything is built or counted from them.
    #[arg(long, env = "ZHIKU_ASK_MAX_HISTORY_BYTES", default_value_t = 65_536)]
    pub max_history_bytes: usize,

    /// Answer length (tokens) the context is trimmed for when a request does not say.
    #[arg(long, env = "ZHIKU_ASK_MAX_NEW_TOKENS", default_value_t = 512)]
    pub max_new_tokens: u32,

    /// Tokens the passages may take in a prompt, when a request does not say. 0: from the
    /// model's context (what is left after the answer and room for the question and the
    /// template), at most 1536: the default 5 passages of the default chunk size fit, and
    /// 5 passages answered better than 3 on the eval sets (the book: benchmarks/eval).
    #[arg(long, env = "ZHIKU_ASK_CONTEXT_TOKENS", default_value_t = 0)]
    pub context_tokens: u32,

    /// The cosine similarity a passage needs to reach the prompt when a request sets no
    /// threshold. Unset: calibrated per embedder from `zhiku eval --sweep` (the
    /// book's benchmarks/eval table; none for an embedder not calibrated). A negative value: no threshold.
    #[arg(long, env = "ZHIKU_ASK_SCORE_THRESHOLD", allow_negative_numbers = true)]
    pub score_threshold: Option<f32>,

    /// Hybrid search: the k of the reciprocal-rank fusion of the dense and BM25 rankings
    /// (score = 1/(k + dense rank) + 1/(k + BM25 rank), ranks from 0), sent with every search.
    /// A small k (3) lets either ranking's first hits lead; 60, the usual constant, rewards
    /// passages both rank. Try it with `zhiku eval --sweep rrf_k=3,60` on your own dev
    /// questions (the book: benchmarks/eval, "Fusion").
    #[arg(
        long,
        env = "ZHIKU_ASK_RRF_K",
        default_value_t = DEFAULT_RRF_K,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RRF_K))
    )]
    pub rrf_k: u32,

    /// With history, rewrite a follow-up into a standalone question with the generator
    /// before retrieval (a request may say otherwise).
    #[arg(long, env = "ZHIKU_ASK_REWRITE_FOLLOW_UPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub rewrite_follow_ups: bool,

    /// Rerank the retrieved candidates with the embedder's cross-encoder (its Rerank call,
    /// served with --reranker-model) before the context budget: auto = when the embedder
    /// has a reranker, on = always, off = never. The threshold still applies to the
    /// retrieval scores, before reranking.
    #[arg(long, env = "ZHIKU_ASK_RERANK", value_enum, default_value_t = Rerank::Auto)]
    pub rerank: Rerank,

    /// Candidates an Ask retrieves for the reranker when it reranks (at least its top_k, at
    /// most 100); the reranked top_k go on to the context budget.
    #[arg(long, env = "ZHIKU_ASK_RERANK_CANDIDATES", default_value_t = 20)]
    pub rerank_candidates: u32,

    /// The order of the passages in the prompt: best-last puts the strongest one ([1]) at
    /// the end of the context, next to the instruction and the question; best-first at its
    /// start. Their numbers are their rank either way.
    #[arg(long, env = "ZHIKU_ASK_PASSAGE_ORDER", value_enum, default_value_t = PassageOrder::BestFirst)]
    pub passage_order: PassageOrder,

    /// Grounded abstention: an answer whose support (the share of its character bigrams
    /// found in its passages) is under this is replaced by the refusal (`refused` true,
    /// after the model was called; the streamed chunks were its draft). 0 (the default):
    /// never; the book (benchmarks/eval) gives the level measured on the eval sets.
    #[arg(long, env = "ZHIKU_ASK_ABSTAIN_BELOW", default_value_t = 0.0)]
    pub abstain_below: f64,

    /// Who decides that the passages hold no answer: evidence (zhiku: the threshold and
    /// --min-coverage, before the model is called; the prompt does not ask the model to
    /// refuse) or model (the article's prompt asks the model to refuse). Measured on the
    /// eval sets in the book (benchmarks/eval).
    #[arg(long, env = "ZHIKU_ASK_ABSTENTION", value_enum, default_value_t = Abstention::Evidence)]
    pub abstention: Abstention,

    /// With --abstention evidence: the share (0 to 1) of the question's terms (ASCII words,
    /// CJK character pairs, question words left out) its passages must hold, else the
    /// refusal is given without calling the model. 0: never refuse on coverage.
    #[arg(long, env = "ZHIKU_ASK_MIN_COVERAGE", default_value_t = DEFAULT_MIN_COVERAGE)]
    pub min_coverage: f64,

    /// Fact-level verification of a generated answer: its numbers with units, versions,
    /// flags and model names must be stated by its passages or the question. withdraw: an
    /// answer with a key fact stated by neither is replaced by the refusal, the fact named
    /// as the reason (streamed, its chunks were the draft); mark: it is returned with the
    /// facts listed; off: not checked. A figure stated only by documents that name what the
    /// question asks about less well than the best passage does (its anchors), or that leave
    /// out the model it names, counts as unstated, as does one from another table row or
    /// another column than the question's. When every such fact is only misplaced, the
    /// question is read once more from the passages narrowed to it, and that answer stands
    /// if it verifies. A figure whose unit no passage states is checked again as its bare
    /// number, and stands if that verifies. The bigram support stays reported beside it.
    #[arg(long, env = "ZHIKU_VERIFY", value_enum, default_value_t = Verify::Withdraw)]
    pub verify: Verify,

    /// Relevance judgment before generating: the chat model judges whether the passages
    /// state the answer, from its next-token probabilities of "是" and "否" after the Ask's
    /// own prompt with a yes/no question appended (one forward per prompt through the
    /// generator's NextTokenLogprobs, no generation; the passages are computed once and the
    /// answer's generation reuses them from the prefix cache). Reported per answer
    /// (`relevance`) and per source (each citation's); with --abstention evidence an Ask
    /// judged under --min-relevance is refused. Off by default: the offline 0.5B chat model
    /// scores near-miss questions as it scores answerable ones (the book: benchmarks/eval,
    /// "Relevance judgment"), and each judgment is a prefill of the passages before the
    /// first token; turn it on with a model that tells them apart and a threshold swept on
    /// your dev questions.
    #[arg(long, env = "ZHIKU_ASK_RELEVANCE", default_value_t = false, action = clap::ArgAction::Set)]
    pub relevance: bool,

    /// With --abstention evidence and --relevance on: the judgment (0 to 1) the passages
    /// need, else the refusal is given without generating (beside --min-coverage: either
    /// one refuses). 0: never refuse on it. Chosen with `zhiku eval --sweep min_relevance=…`
    /// on the dev half of the eval sets (the book: benchmarks/eval).
    #[arg(long, env = "ZHIKU_ASK_MIN_RELEVANCE", default_value_t = DEFAULT_MIN_RELEVANCE)]
    pub min_relevance: f64,

    /// With --abstention evidence: the share (0 to 1) of the question's anchors (its ASCII
    /// names and figures: model names, versions, quantisation levels, hardware, such as
    /// `ChatGLM3-6B`, `INT8`, `RTX 4090`) that one passage must hold (with its source name and
    /// heading path), else the refusal is given without calling the model. Catches the near
    /// miss that coverage cannot: passages that together share the question's words while
    /// none states the combination it asks about. 0: never refuse on anchors. The default
    /// is 0: on the dev half of eval/llm-docs-zh, 0.6 refused as many right answers as near
    /// misses; set 0.6 where an invented figure costs more than a refused answer (the book:
    /// benchmarks/eval, "Table context, and anchors"; choose with `zhiku eval --sweep
    /// min_anchors=…` on your own dev questions).
    #[arg(long, env = "ZHIKU_ASK_MIN_ANCHORS", default_value_t = DEFAULT_MIN_ANCHORS)]
    pub min_anchors: f64,
}

/// The --min-coverage default, measured on the eval sets (docs/src/benchmarks/eval.md, "Abstention from the evidence").
pub const DEFAULT_MIN_COVERAGE: f64 = 0.35;

/// The --min-anchors default, chosen on the dev halves of the eval sets
/// (docs/src/benchmarks/eval.md, "Table context, and anchors").
pub const DEFAULT_MIN_ANCHORS: f64 = 0.0;

/// The --rrf-k default: the usual constant. On the dev half of eval/llm-docs-zh a small k
/// (3) raised recall@3 but not the right answers, and cost two false refusals
/// (docs/src/benchmarks/eval.md, "Fusion").
pub const DEFAULT_RRF_K: u32 = 60;

/// The largest --rrf-k, or `rrf_k` of an eval setting (the retriever's bound).
pub const MAX_RRF_K: u32 = 1000;

/// The --min-relevance default, chosen on the dev half of the eval sets
/// (docs/src/benchmarks/eval.md, "Relevance judgment").
pub const DEFAULT_MIN_RELEVANCE: f64 = 0.0;

/// The largest file ingested by default, server-side (`--max-file-bytes` of the
/// orchestrator) or sent by `zhiku ingest`: one definition for both, small enough that such
/// a file fits one gRPC message of the default `--max-message-bytes` (64 MiB) with the
/// request around it.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 60 << 20;

impl OrchestratorArgs {
    /// Files loaded at once: the flag, or one per CPU core.
    pub fn parallel_loads(&self) -> usize {
        match self.max_parallel_loads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Downstream services on the given local ports, every other setting at its flag's
    /// default (environment variables are not read).
    pub fn local(embedder: u16, retriever: u16, generator: u16) -> Self {
        let mut args = defaults::<OrchestratorArgs>();
        args.embedder_addr = format!("http://127.0.0.1:{embedder}");
        args.retriever_addr = format!("http://127.0.0.1:{retriever}");
        args.generator_addr = format!("http://127.0.0.1:{generator}");
        args
    }
}

impl Default for AskPolicy {
    /// Every flag's default (environment variables are not read).
    fn default() -> Self {
        defaults::<AskPolicy>()
    }
}

/// A flag group at its defaults, as clap gives them with no argument and no environment:
/// the defaults stay written once, in the `#[arg]` attributes.
fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every flag has a default or is optional");
    // No input reaches this: only a bug in the attributes could fail, which the unit tests
    // would show.
    T::from_arg_matches(&matches).expect("every flag has a default or is optional")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_side_takes_an_address_or_off() {
        assert_eq!(
            "127.0.0.1:8080".parse::<HttpListen>().unwrap(),
            HttpListen(Some(([127, 0, 0, 1], 8080).into()))
        );
        assert_eq!("off".parse::<HttpListen>().unwrap(), HttpListen(None));
        assert!("8080".parse::<HttpListen>().is_err());
    }

    #[tokio::test]
    async fn parallel_loads_default_to_the_cores() {
        let mut args = OrchestratorArgs::local(1, 2, 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(args.parallel_loads(), cores);
        args.max_parallel_loads = 3;
        assert_eq!(args.parallel_loads(), 3);
        let orchestrator = crate::Orchestrator::new(args).unwrap();
        assert_eq!(orchestrator.load_permits.available_permits(), 3);
    }
}
