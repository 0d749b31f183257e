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
//! payload of [`PassagePayload`].

pub mod embedded;
pub mod qdrant;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;

/// Name of the dense vector of every point.
pub const DENSE_VECTOR: &str = "dense";
/// Name of the BM25 sparse vector of every point.
pub const SPARSE_VECTOR: &str = "bm25";
/// The `k` of reciprocal-rank fusion: score = Σ 1 / (k + rank), rank from 0 (as Qdrant
/// counts it).
pub const RRF_K: u32 = 60;

/// Payload field names (shared by filters of both backends).
pub mod fields {
    pub const DOCUMENT_ID: &str = "document_id";
    pub const CHUNK_INDEX: &str = "chunk_index";
    pub const SOURCE: &str = "source";
    pub const METADATA_KV: &str = "metadata_kv";
}

/// How vectors are compared; fixed when a knowledge base is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
}

/// What describes a knowledge base, besides its counts. Written once at creation.
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
}

impl PassageFilter {
    pub fn is_empty(&self) -> bool {
        self.document_ids.is_empty() && self.sources.is_empty() && self.metadata.is_empty()
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
    /// Dense: on the distance score; Sparse: on BM25; Hybrid: on the dense candidates only.
    pub score_threshold: Option<f32>,
    /// HNSW `ef` for the dense search (None: the engine's default).
    pub hnsw_ef: Option<usize>,
    /// Exact (brute-force) dense search, for measuring recall.
    pub exact: bool,
    pub with_vectors: bool,
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
}

/// Groups point payloads into documents, sorted by id (shared by both backends'
/// `list_documents`).
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
            });
        doc.chunk_count += 1;
        // The first chunk speaks for the document.
        if p.chunk_index == 0 || doc.source.is_empty() {
            doc.source = p.source;
            doc.metadata = p.metadata;
        }
    }
    docs.into_values().collect()
}

/// How many candidates each ranking contributes to a hybrid fusion.
pub(crate) fn prefetch_limit(limit: usize) -> usize {
    (limit * 4).max(20)
}

/// Reciprocal-rank fusion of a dense and a BM25 ranking (each `(point id, hit)` with that
/// ranking's score, at most `candidates` long), the top `limit`, for both backends.
///
/// Done here rather than by the engines: Qdrant (server and qdrant-edge alike) orders
/// passages of equal score in no fixed order, inside each ranking, at its cut, and in the
/// fused result, so the same data fused by the two engines gave different ranks, and so
/// different fused scores, to the same passage. Here ties go by point id (the same on both
/// backends), and a full ranking loses its last run of equal scores (the engine may have cut
/// through it, keeping any of them), so the fused order depends only on the scores.
/// Its time is the `fuse` stage of the metrics.
pub(crate) fn fuse_rrf(
    dense: Vec<(String, Hit)>,
    sparse: Vec<(String, Hit)>,
    candidates: usize,
    limit: usize,
) -> Vec<Hit> {
    let started = std::time::Instant::now();
    let hits = fuse(dense, sparse, candidates, limit);
    zhiku_runtime::metrics::metrics().stage(
        zhiku_runtime::metrics::stage::FUSE,
        started.elapsed().as_secs_f64(),
    );
    hits
}

fn fuse(
    dense: Vec<(String, Hit)>,
    sparse: Vec<(String, Hit)>,
    candidates: usize,
    limit: usize,
) -> Vec<Hit> {
    let ranked = |mut list: Vec<(String, Hit)>| {
        list.sort_by(|(a, x), (b, y)| y.score.total_cmp(&x.score).then_with(|| a.cmp(b)));
        if list.len() >= candidates
            && let Some(last) = list.last().map(|(_, h)| h.score)
        {
            let run = list.iter().position(|(_, h)| h.score == last).unwrap_or(0);
            // All tied: nothing better to keep.
            if run > 0 {
                list.truncate(run);
            }
        }
        list
    };
    let mut fused: BTreeMap<String, Hit> = BTreeMap::new();
    for (list, is_dense) in [(ranked(dense), true), (ranked(sparse), false)] {
        for (rank, (key, hit)) in list.into_iter().enumerate() {
            let part = 1.0 / (RRF_K as f32 + rank as f32);
            let score = hit.score;
            let entry = fused.entry(key).or_insert_with(|| Hit {
                score: 0.0,
                dense_score: None,
                sparse_score: None,
                ..hit
            });
            entry.score += part;
            if is_dense {
                entry.dense_score = Some(score);
            } else {
                entry.sparse_score = Some(score);
            }
        }
    }
    let mut hits: Vec<(String, Hit)> = fused.into_iter().collect();
    hits.sort_by(|(a, x), (b, y)| y.score.total_cmp(&x.score).then_with(|| a.cmp(b)));
    hits.into_iter().take(limit).map(|(_, hit)| hit).collect()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(text: &str, score: f32) -> Hit {
        Hit {
            payload: PassagePayload {
                text: text.into(),
                ..PassagePayload::default()
            },
            score,
            dense_score: None,
            sparse_score: None,
            vector: None,
        }
    }

    fn ranking(scores: &[(&str, f32)]) -> Vec<(String, Hit)> {
        scores
            .iter()
            .map(|(id, s)| (id.to_string(), hit(id, *s)))
            .collect()
    }

    #[test]
    fn fusion_sums_reciprocal_ranks_and_keeps_the_parts() {
        let dense = ranking(&[("a", 0.9), ("b", 0.8), ("c", 0.7)]);
        let sparse = ranking(&[("c", 5.0), ("d", 4.0)]);
        let hits = fuse_rrf(dense, sparse, 10, 10);
        let texts: Vec<&str> = hits.iter().map(|h| h.payload.text.as_str()).collect();
        // c: 1/62 + 1/60; a: 1/60; d: 1/61; b: 1/61 (b before d by id).
        assert_eq!(texts, ["c", "a", "b", "d"]);
        let k = RRF_K as f32;
        assert!((hits[0].score - (1.0 / (k + 2.0) + 1.0 / k)).abs() < 1e-7);
        assert_eq!(
            (hits[0].dense_score, hits[0].sparse_score),
            (Some(0.7), Some(5.0))
        );
        assert_eq!(
            (hits[3].dense_score, hits[3].sparse_score),
            (None, Some(4.0))
        );
        assert_eq!(fuse_rrf(ranking(&[("a", 1.0)]), vec![], 10, 0), vec![]);
    }

    #[test]
    fn fusion_does_not_depend_on_the_order_of_tied_scores() {
        let one = fuse_rrf(
            ranking(&[("x", 0.5), ("y", 0.5), ("z", 0.4)]),
            ranking(&[("z", 2.0), ("y", 1.0), ("x", 1.0)]),
            10,
            3,
        );
        let other = fuse_rrf(
            ranking(&[("y", 0.5), ("x", 0.5), ("z", 0.4)]),
            ranking(&[("z", 2.0), ("x", 1.0), ("y", 1.0)]),
            10,
            3,
        );
        assert_eq!(one, other);
        // A full ranking cut inside a tie (either of b, c could have been returned): the
        // tie goes, on whichever side it was cut.
        let cut = |tied: &str| fuse_rrf(ranking(&[("a", 0.9), (tied, 0.5)]), vec![], 2, 10);
        assert_eq!(cut("b"), cut("c"));
        assert_eq!(cut("b").len(), 1);
    }
}
