//! The retriever's flags (every one also an environment variable).

use std::path::PathBuf;

use crate::store::embedded::HnswSettings;
use crate::store::qdrant::{QdrantSettings, WriteOrder};

/// Where knowledge bases are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The Qdrant engine in this process (qdrant-edge), on local disk under --data-dir.
    Embedded,
    /// A Qdrant server or cluster at --qdrant-url.
    Qdrant,
}

/// A value kept out of logs (the configuration is logged at startup).
pub use zhiku_runtime::Secret;

#[derive(Debug, Clone, clap::Args)]
pub struct RetrieverArgs {
    /// Storage backend.
    #[arg(long, env = "ZHIKU_RETRIEVER_BACKEND", value_enum, default_value_t = Backend::Embedded)]
    pub backend: Backend,

    /// Directory of the embedded backend: one sub-directory per knowledge base.
    #[arg(
        long,
        env = "ZHIKU_RETRIEVER_DATA_DIR",
        default_value = "data/retriever"
    )]
    pub data_dir: PathBuf,

    /// gRPC URL of the Qdrant server (backend qdrant); an https:// URL turns TLS on. Several
    /// nodes of a cluster, comma-separated: calls move on to the next when one is unavailable.
    #[arg(
        long,
        env = "ZHIKU_QDRANT_URL",
        default_value = "http://localhost:6334"
    )]
    pub qdrant_url: String,

    /// API key of the Qdrant server, if it wants one.
    #[arg(long, env = "ZHIKU_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<Secret>,

    /// Prefix of the Qdrant collections that hold knowledge bases (collection = prefix + name).
    #[arg(long, env = "ZHIKU_QDRANT_COLLECTION_PREFIX", default_value = "zhiku_")]
    pub qdrant_collection_prefix: String,

    /// Seconds a call to the Qdrant server may take (then DEADLINE_EXCEEDED).
    #[arg(long, env = "ZHIKU_QDRANT_TIMEOUT_SECONDS", default_value_t = 30)]
    pub qdrant_timeout_seconds: u64,

    /// Retries of a Qdrant call that failed with UNAVAILABLE (pauses of 0.1 s doubling to 2 s,
    /// on the next --qdrant-url node); the error names the node and the cause when all fail.
    #[arg(long, env = "ZHIKU_QDRANT_RETRIES", default_value_t = 3)]
    pub qdrant_retries: u32,

    /// PEM file of CA certificates to trust for https:// Qdrant URLs, besides the system roots.
    #[arg(long, env = "ZHIKU_QDRANT_CA_CERT")]
    pub qdrant_ca_cert: Option<PathBuf>,

    /// Shards of new knowledge bases' collections (unset: the server's default, which is 1
    /// on a single node and the number of nodes in a cluster).
    #[arg(long, env = "ZHIKU_QDRANT_SHARDS")]
    pub qdrant_shards: Option<u32>,

    /// Copies of each shard kept on different cluster nodes (unset: the server's default, 1).
    #[arg(long, env = "ZHIKU_QDRANT_REPLICATION_FACTOR")]
    pub qdrant_replication_factor: Option<u32>,

    /// Replicas of a shard that must apply a write before it is acknowledged (unset: 1).
    #[arg(long, env = "ZHIKU_QDRANT_WRITE_CONSISTENCY_FACTOR")]
    pub qdrant_write_consistency_factor: Option<u32>,

    /// Ordering of writes across replicas: weak (fastest), medium (a dynamic leader) or
    /// strong (the permanent leader; writes fail while it is down).
    #[arg(long, env = "ZHIKU_QDRANT_WRITE_ORDERING", value_enum, default_value_t = WriteOrder::Weak)]
    pub qdrant_write_ordering: WriteOrder,

    /// HNSW edges per node of new embedded knowledge bases.
    #[arg(long, env = "ZHIKU_RETRIEVER_HNSW_M", default_value_t = 16)]
    pub hnsw_m: usize,

    /// HNSW build-time beam width of new embedded knowledge bases.
    #[arg(long, env = "ZHIKU_RETRIEVER_HNSW_EF_CONSTRUCT", default_value_t = 100)]
    pub hnsw_ef_construct: usize,

    /// HNSW beam width of dense searches: higher finds more of the true nearest neighbours,
    /// slower (0: the engine's default, ef_construct). See retriever-bench for the trade-off.
    #[arg(long, env = "ZHIKU_RETRIEVER_HNSW_EF", default_value_t = 128)]
    pub hnsw_ef: usize,

    /// The k of hybrid search's reciprocal-rank fusion (score = 1/(k + dense rank) +
    /// 1/(k + BM25 rank), ranks from 0) when a Search sets no `rrf_k`: a small k lets either
    /// ranking's first hits lead, a large one rewards passages both rank. The orchestrator
    /// sends its own (--rrf-k of the Ask settings) with every search.
    #[arg(
        long,
        env = "ZHIKU_RETRIEVER_RRF_K",
        default_value_t = crate::store::DEFAULT_RRF_K,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::store::MAX_RRF_K))
    )]
    pub rrf_k: u32,

    /// Vectors (in KiB) a segment collects before the embedded backend builds its HNSW index;
    /// smaller segments are searched exactly.
    #[arg(
        long,
        env = "ZHIKU_RETRIEVER_INDEXING_THRESHOLD_KB",
        default_value_t = 10_000
    )]
    pub indexing_threshold_kb: usize,

    /// Longest `query_text` of a Search, in bytes; longer ones are refused before BM25
    /// segments them.
    #[arg(
        long,
        env = "ZHIKU_RETRIEVER_MAX_QUERY_BYTES",
        default_value_t = crate::knowledge::DEFAULT_MAX_QUERY_BYTES
    )]
    pub max_query_bytes: usize,

    /// Seconds between checks whether an embedded knowledge base needs its index (re)built.
    #[arg(
        long,
        env = "ZHIKU_RETRIEVER_OPTIMIZE_INTERVAL_SECONDS",
        default_value_t = 30
    )]
    pub optimize_interval_seconds: u64,
}

impl RetrieverArgs {
    /// Defaults, with the embedded backend in `data_dir` (tests, tools).
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            backend: Backend::Embedded,
            data_dir: data_dir.into(),
            qdrant_url: "http://localhost:6334".into(),
            qdrant_api_key: None,
            qdrant_collection_prefix: "zhiku_".into(),
            qdrant_timeout_seconds: 30,
            qdrant_retries: 3,
            qdrant_ca_cert: None,
            qdrant_shards: None,
            qdrant_replication_factor: None,
            qdrant_write_consistency_factor: None,
            qdrant_write_ordering: WriteOrder::Weak,
            hnsw_m: 16,
            hnsw_ef_construct: 100,
            hnsw_ef: 128,
            rrf_k: crate::store::DEFAULT_RRF_K,
            indexing_threshold_kb: 10_000,
            optimize_interval_seconds: 30,
            max_query_bytes: crate::knowledge::DEFAULT_MAX_QUERY_BYTES,
        }
    }

    pub fn hnsw(&self) -> HnswSettings {
        HnswSettings {
            m: self.hnsw_m,
            ef_construct: self.hnsw_ef_construct,
            indexing_threshold_kb: self.indexing_threshold_kb,
        }
    }

    pub fn qdrant(&self) -> QdrantSettings {
        QdrantSettings {
            url: self.qdrant_url.clone(),
            api_key: self.qdrant_api_key.as_ref().map(|s| s.0.clone()),
            collection_prefix: self.qdrant_collection_prefix.clone(),
            timeout_secs: self.qdrant_timeout_seconds,
            retries: self.qdrant_retries,
            ca_cert: self.qdrant_ca_cert.clone(),
            shard_number: self.qdrant_shards,
            replication_factor: self.qdrant_replication_factor,
            write_consistency_factor: self.qdrant_write_consistency_factor,
            write_ordering: self.qdrant_write_ordering,
            hnsw: self.hnsw(),
        }
    }
}
