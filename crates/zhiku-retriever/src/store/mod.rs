//! The [`VectorStore`] trait and its two backends.
//!
//! - [`embedded::EmbeddedStore`]: the Qdrant engine (`qdrant-edge`) in this process, one
//!   on-disk shard per knowledge base under a data directory (the default);
//! - [`qdrant::QdrantStore`]: a Qdrant server or cluster through `qdrant-client` (gRPC).
//!
//! A store only stores and searches: names, dimensions, point ids and BM25 vectors are
//! checked and computed once, above it, in [`crate::knowledge`]. Both backends keep the same
//! layout so they rank alike: a dense vector named [`DENSE_VECTOR`] with the knowledge base's
//! distance, a sparse vector named [`SPARSE_VECTOR`] with the IDF modifier (BM25), and the
//! payload of [`PassagePayload`]. Both run one search, fusion and write algorithm
//! ([`points`]) and differ only in how they reach their engine.

pub mod embedded;
mod points;
pub mod qdrant;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;

/// Name of the dense vector of every point.
pub const DENSE_VECTOR: &str = "dense";
/// Name of the BM25 sparse vector of every point.
pub const SPARSE_VECTOR: &str = "bm25";
/// The default `k` of reciprocal-rank fusion: score = Σ 1 / (k + rank), rank from 0 (as
/// Qdrant counts it). 60 is the usual constant (Cormack et al., and Qdrant's).
pub const DEFAULT_RRF_K: u32 = 60;

/// The largest `k` a search may ask for (beyond it every rank scores alike).
pub const MAX_RRF_K: u32 = 1000;

/// Payload field names (shared by filters of both backends).
pub mod fields {
    pub const DOCUMENT_ID: &str = "document_id";
    pub const CHUNK_INDEX: &str = "chunk_index";
    pub const SOURCE: &str = "source";
    pub const METADATA: &str = "metadata";
    pub const METADATA_KV: &str = "metadata_kv";
    /// The reader groups of a passage's document (absent: everyone).
    pub const READERS: &str = "readers";

    /// How an indexed field is indexed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum IndexKind {
        Keyword,
        Integer,
    }

    /// The fields both backends index in every knowledge base (what filters match on).
    pub(crate) const INDEXED: [(&str, IndexKind); 5] = [
        (DOCUMENT_ID, IndexKind::Keyword),
        (SOURCE, IndexKind::Keyword),
        (METADATA_KV, IndexKind::Keyword),
        (CHUNK_INDEX, IndexKind::Integer),
        (READERS, IndexKind::Keyword),
    ];

    /// The fields that describe a document: all [`super::group_documents`] reads.
    pub(crate) const OF_DOCUMENT: [&str; 5] = [DOCUMENT_ID, CHUNK_INDEX, SOURCE, METADATA, READERS];
}

/// How vectors are compared; fixed when a knowledge base is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
}

/// What describes a knowledge base, besides its counts. Written at creation; the adapter
/// binding (`adapter`, `adapter_path`, `adapter_provenance`) changes with
/// [`VectorStore::set_adapter`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KbMeta {
    pub name: String,
    pub dimensions: u32,
    pub distance: Distance,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub adapter: String,
    #[serde(default)]
    pub adapter_path: String,
    pub created_at_ms: i64,
    /// Where the bound adapter came from and how it scored (when bound with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_provenance: Option<AdapterRecord>,
}

/// Eval figures of one run, kept with a bound adapter (proto `AdapterEvalFigures`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalFigures {
    pub answerable: u32,
    pub unanswerable: u32,
    pub correct: u32,
    pub false_refusals: u32,
    pub abstained: u32,
}

/// A bound adapter's provenance (proto `AdapterProvenance`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterRecord {
    #[serde(default)]
    pub data_file: String,
    #[serde(default)]
    pub base_model: String,
    #[serde(default)]
    pub base_sha256: String,
    #[serde(default)]
    pub bound_at_ms: i64,
    #[serde(default)]
    pub eval_file: String,
    #[serde(default)]
    pub with_adapter: Option<EvalFigures>,
    #[serde(default)]
    pub without_adapter: Option<EvalFigures>,
    #[serde(default)]
    pub forced: bool,
}

/// A knowledge base's new adapter binding; `adapter` "" unbinds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdapterBinding {
    pub adapter: String,
    pub adapter_path: String,
    pub provenance: Option<AdapterRecord>,
}

impl AdapterBinding {
    /// Writes the binding into `meta` (an unbinding clears the path and provenance too).
    pub fn apply(self, meta: &mut KbMeta) {
        if self.adapter.is_empty() {
            meta.adapter.clear();
            meta.adapter_path.clear();
            meta.adapter_provenance = None;
        } else {
            meta.adapter = self.adapter;
            meta.adapter_path = self.adapter_path;
            meta.adapter_provenance = self.provenance;
        }
    }
}

/// A knowledge base with its counts.
#[derive(Debug, Clone, PartialEq)]
pub struct KbInfo {
    pub meta: KbMeta,
    pub passage_count: u64,
    pub document_count: u64,
}

/// A BM25 sparse vector: term ids and weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVec {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVec {
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// What is stored with every point; both backends keep it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PassagePayload {
    pub document_id: String,
    pub chunk_index: u32,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub heading_path: String,
    /// [`zhiku_proto::v1::Passage::context`]; absent from the stored payload when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context: String,
    /// [`zhiku_proto::v1::Passage::title`]; absent from the stored payload when empty (and in
    /// points written before titles existed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default)]
    pub char_start: u32,
    #[serde(default)]
    pub char_end: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// `key \u{1f} value` of every metadata pair: what metadata filters match on (a list
    /// field matches when any element does, and any key or value is allowed).
    #[serde(default)]
    pub metadata_kv: Vec<String>,
    /// The reader groups of the document, sorted; empty (and then absent from the stored
    /// payload, as in points written before readers existed): everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
}

impl PassagePayload {
    /// The payload as the JSON object both backends store.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self)
            .map_err(|e| crate::error::RetrieverError::Corrupt(format!("payload: {e}")))
    }
}

/// Joins a metadata pair into one string of [`PassagePayload::metadata_kv`].
pub fn metadata_kv(key: &str, value: &str) -> String {
    format!("{key}\u{1f}{value}")
}

/// One point to write.
#[derive(Debug, Clone)]
pub struct PointRecord {
    pub id: Uuid,
    pub dense: Vec<f32>,
    pub sparse: SparseVec,
    pub payload: PassagePayload,
}

/// "Remove the chunks of `document_id` with index >= `chunk_count`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleChunks {
    pub document_id: String,
    pub chunk_count: u32,
}

/// Restricts a search; all given conditions must hold (each list: any of its values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassageFilter {
    pub document_ids: Vec<String>,
    pub sources: Vec<String>,
    /// Pairs the passage's metadata must all have.
    pub metadata: Vec<(String, String)>,
    /// Only passages these groups may read: readers naming one of them, or no readers.
    /// None: no restriction.
    pub readable_by: Option<Vec<String>>,
}

impl PassageFilter {
    pub fn is_empty(&self) -> bool {
        self.document_ids.is_empty()
            && self.sources.is_empty()
            && self.metadata.is_empty()
            && self.readable_by.is_none()
    }
}

/// Whether `groups` (None: anyone) may read what `readers` (empty: everyone) guard.
pub fn readable(readers: &[String], groups: Option<&[String]>) -> bool {
    match groups {
        None => true,
        Some(groups) => readers.is_empty() || readers.iter().any(|r| groups.contains(r)),
    }
}

/// The ranking a search uses (resolved: never "unspecified").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Dense,
    Sparse,
    Hybrid,
}

/// A search as the store receives it (validated).
#[derive(Debug, Clone)]
pub struct SearchSpec {
    pub mode: Mode,
    /// Set for Dense and Hybrid.
    pub dense: Option<Vec<f32>>,
    /// Set for Sparse and Hybrid.
    pub sparse: Option<SparseVec>,
    pub limit: usize,
    pub filter: PassageFilter,
    /// Dense: on the distance score; Sparse: on BM25; Hybrid: on the dense score, of the
    /// dense candidates and of the BM25 ones (computed from their vectors).
    pub score_threshold: Option<f32>,
    /// HNSW `ef` for the dense search (None: the engine's default).
    pub hnsw_ef: Option<usize>,
    /// Exact (brute-force) dense search, for measuring recall.
    pub exact: bool,
    pub with_vectors: bool,
    /// Hybrid: the `k` of reciprocal-rank fusion (see [`DEFAULT_RRF_K`]).
    pub rrf_k: u32,
    /// The knowledge base's distance: hybrid search scores the BM25 hits that the dense
    /// ranking does not reach with it.
    pub distance: Distance,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub payload: PassagePayload,
    pub score: f32,
    pub dense_score: Option<f32>,
    pub sparse_score: Option<f32>,
    pub vector: Option<Vec<f32>>,
}

/// One document of a knowledge base.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentInfo {
    pub document_id: String,
    pub source: String,
    pub chunk_count: u32,
    pub metadata: BTreeMap<String, String>,
    /// Its reader groups (those of its first chunk); empty: everyone.
    pub readers: Vec<String>,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertOutcome {
    pub upserted: u64,
    pub removed_stale: u64,
}

/// Storage of knowledge bases of passages. Every method is durable when it returns `Ok`.
#[tonic::async_trait]
pub trait VectorStore: Send + Sync + 'static {
    /// "embedded" or "qdrant".
    fn backend(&self) -> &'static str;
    /// The data directory or the server URL.
    fn location(&self) -> String;
    /// Name and version of the engine.
    fn engine_version(&self) -> String;

    /// Creates a knowledge base; `KnowledgeBaseExists` if the name is taken.
    async fn create_kb(&self, meta: KbMeta) -> Result<KbInfo>;
    /// Every knowledge base with its counts, sorted by name (scans every point).
    async fn list_kbs(&self) -> Result<Vec<KbInfo>>;
    /// The names of the knowledge bases, sorted (cheap).
    async fn kb_names(&self) -> Result<Vec<String>>;
    /// `KnowledgeBaseNotFound` if absent.
    async fn describe_kb(&self, name: &str) -> Result<KbInfo>;
    /// The metadata only (cheap; used to check dimensions).
    async fn kb_meta(&self, name: &str) -> Result<KbMeta>;
    /// Sets (or with `adapter` "" clears) the adapter a knowledge base is bound to, durably;
    /// returns the new metadata. `KnowledgeBaseNotFound` if absent.
    async fn set_adapter(&self, name: &str, binding: AdapterBinding) -> Result<KbMeta>;
    /// Deletes a knowledge base; returns the passages it held.
    async fn delete_kb(&self, name: &str) -> Result<u64>;

    /// Writes `points` (replacing points of the same id), then removes `stale` chunks.
    async fn upsert(
        &self,
        kb: &str,
        points: Vec<PointRecord>,
        stale: Vec<StaleChunks>,
    ) -> Result<UpsertOutcome>;
    async fn search(&self, kb: &str, spec: SearchSpec) -> Result<Vec<Hit>>;
    /// Deletes every chunk of a document; returns how many there were.
    async fn delete_document(&self, kb: &str, document_id: &str) -> Result<u64>;
    /// Every document with its chunk count, sorted by document id.
    async fn list_documents(&self, kb: &str) -> Result<Vec<DocumentInfo>>;
    /// At most `limit` documents whose ids sort after `after`, sorted by id: one page of
    /// ListDocuments. The default reads every document; a backend that keeps a document
    /// index answers from it.
    async fn list_documents_page(
        &self,
        kb: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>> {
        Ok(self
            .list_documents(kb)
            .await?
            .into_iter()
            .filter(|d| after.is_none_or(|a| d.document_id.as_str() > a))
            .take(limit)
            .collect())
    }
    /// Number of points of a knowledge base.
    async fn count(&self, kb: &str) -> Result<u64>;
    /// Sets the reader groups of every chunk of a document (no re-embedding); returns how
    /// many chunks there were.
    async fn set_readers(&self, kb: &str, document_id: &str, readers: Vec<String>) -> Result<u64>;
}

/// Groups point payloads (of which only [`fields::OF_DOCUMENT`] are needed) into documents,
/// sorted by id (shared by both backends' `list_documents`).
pub(crate) fn group_documents(
    payloads: impl IntoIterator<Item = PassagePayload>,
) -> Vec<DocumentInfo> {
    let mut docs: BTreeMap<String, DocumentInfo> = BTreeMap::new();
    for p in payloads {
        let doc = docs
            .entry(p.document_id.clone())
            .or_insert_with(|| DocumentInfo {
                document_id: p.document_id.clone(),
                source: String::new(),
                chunk_count: 0,
                metadata: BTreeMap::new(),
                readers: Vec::new(),
            });
        doc.chunk_count += 1;
        // The first chunk speaks for the document.
        if p.chunk_index == 0 || doc.source.is_empty() {
            doc.source = p.source;
            doc.metadata = p.metadata;
            doc.readers = p.readers;
        }
    }
    docs.into_values().collect()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
