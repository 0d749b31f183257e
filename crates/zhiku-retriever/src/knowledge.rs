//! The retriever's logic above a [`VectorStore`]: request validation, deterministic point
//! ids, BM25 vectors, modes and paging. The gRPC handlers only call these and map errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;
use zhiku_proto::v1 as pb;

use crate::error::{Result, RetrieverError};
use crate::sparse::Bm25;
use crate::store::{
    AdapterBinding, AdapterRecord, DEFAULT_RRF_K, Distance, EvalFigures, Hit, KbInfo, KbMeta,
    MAX_RRF_K, Mode, PassageFilter, PassagePayload, PointRecord, SearchSpec, StaleChunks,
    VectorStore, metadata_kv, now_ms,
};

/// Most passages in one Upsert.
pub const MAX_UPSERT_PASSAGES: usize = 1024;
/// Longest vector a knowledge base may hold.
pub const MAX_DIMENSIONS: u32 = 65_536;
/// top_k when 0 is given, and its maximum.
pub const DEFAULT_TOP_K: u32 = 5;
pub const MAX_TOP_K: u32 = 100;
/// ListDocuments page size when 0 is given, and its maximum.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Longest `query_text` of a Search by default, in bytes (--max-query-bytes): a question's
/// 4,000 characters fit.
pub const DEFAULT_MAX_QUERY_BYTES: usize = 16_384;
/// Most values a search filter lists (document ids, sources and metadata pairs together).
pub const MAX_FILTER_VALUES: usize = 1024;
/// Most reader groups of one document.
pub const MAX_READERS: usize = zhiku_runtime::auth::MAX_READERS;

/// A document's reader groups, checked, sorted and without repeats.
fn normalize_readers(readers: Vec<String>, what: &str) -> Result<Vec<String>> {
    zhiku_runtime::auth::normalize_readers(readers, what).map_err(RetrieverError::InvalidArgument)
}

/// The groups of a reader scope, checked; None: no restriction.
fn scope_groups(scope: Option<pb::ReaderScope>) -> Result<Option<Vec<String>>> {
    let Some(scope) = scope else { return Ok(None) };
    if scope.groups.len() > MAX_FILTER_VALUES {
        return Err(RetrieverError::invalid(format!(
            "`readable_by` lists {} groups; at most {MAX_FILTER_VALUES} are allowed",
            scope.groups.len()
        )));
    }
    Ok(Some(scope.groups))
}

/// Namespace of point ids (UUID v5 of knowledge base, document id and chunk index).
const POINT_NAMESPACE: Uuid = Uuid::from_bytes([
    0x7a, 0x68, 0x69, 0x6b, 0x75, 0x2d, 0x5c, 0x4e, 0x9a, 0x2f, 0x70, 0x61, 0x73, 0x73, 0x61, 0x67,
]);

/// The id of a chunk's point: the same for the same (knowledge base, document, chunk), so
/// writing a chunk again replaces it.
pub fn point_id(knowledge_base: &str, document_id: &str, chunk_index: u32) -> Uuid {
    // Lengths make the encoding unambiguous whatever the names contain.
    let key = format!(
        "{}:{knowledge_base}\u{0}{}:{document_id}\u{0}{chunk_index}",
        knowledge_base.len(),
        document_id.len()
    );
    Uuid::new_v5(&POINT_NAMESPACE, key.as_bytes())
}

/// Checks a knowledge base name: 1-64 ASCII letters, digits, '_' or '-', starting with a
/// letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let starts_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 64 || !ok_chars || !starts_ok {
        return Err(RetrieverError::invalid(format!(
            "knowledge base name {name:?} is invalid: use 1-64 ASCII letters, digits, '_' or \
             '-', starting with a letter or digit (e.g. \"product-docs\")"
        )));
    }
    Ok(())
}

fn distance_from_proto(value: i32) -> Result<Distance> {
    match pb::Distance::try_from(value) {
        Ok(pb::Distance::Unspecified | pb::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(pb::Distance::Dot) => Ok(Distance::Dot),
        Ok(pb::Distance::Euclid) => Ok(Distance::Euclid),
        Err(_) => Err(RetrieverError::invalid(format!(
            "distance {value} is unknown: use DISTANCE_COSINE, DISTANCE_DOT or DISTANCE_EUCLID"
        ))),
    }
}

fn distance_to_proto(distance: Distance) -> pb::Distance {
    match distance {
        Distance::Cosine => pb::Distance::Cosine,
        Distance::Dot => pb::Distance::Dot,
        Distance::Euclid => pb::Distance::Euclid,
    }
}

pub fn kb_to_proto(info: KbInfo) -> pb::KnowledgeBase {
    pb::KnowledgeBase {
        name: info.meta.name,
        dimensions: info.meta.dimensions,
        distance: distance_to_proto(info.meta.distance) as i32,
        description: info.meta.description,
        adapter: info.meta.adapter,
        adapter_path: info.meta.adapter_path,
        adapter_provenance: info.meta.adapter_provenance.map(record_to_proto),
        passage_count: info.passage_count,
        document_count: info.document_count,
        created_at_ms: info.meta.created_at_ms,
    }
}

fn figures_from_proto(f: pb::AdapterEvalFigures) -> EvalFigures {
    EvalFigures {
        answerable: f.answerable,
        unanswerable: f.unanswerable,
        correct: f.correct,
        false_refusals: f.false_refusals,
        abstained: f.abstained,
    }
}

fn figures_to_proto(f: EvalFigures) -> pb::AdapterEvalFigures {
    pb::AdapterEvalFigures {
        answerable: f.answerable,
        unanswerable: f.unanswerable,
        correct: f.correct,
        false_refusals: f.false_refusals,
        abstained: f.abstained,
    }
}

fn record_from_proto(p: pb::AdapterProvenance) -> AdapterRecord {
    AdapterRecord {
        data_file: p.data_file,
        base_model: p.base_model,
        base_sha256: p.base_sha256,
        bound_at_ms: p.bound_at_ms,
        eval_file: p.eval_file,
        with_adapter: p.with_adapter.map(figures_from_proto),
        without_adapter: p.without_adapter.map(figures_from_proto),
        forced: p.forced,
    }
}

fn record_to_proto(r: AdapterRecord) -> pb::AdapterProvenance {
    pb::AdapterProvenance {
        data_file: r.data_file,
        base_model: r.base_model,
        base_sha256: r.base_sha256,
        bound_at_ms: r.bound_at_ms,
        eval_file: r.eval_file,
        with_adapter: r.with_adapter.map(figures_to_proto),
        without_adapter: r.without_adapter.map(figures_to_proto),
        forced: r.forced,
    }
}

fn check_vector(vector: &[f32], dims: u32, what: &str) -> Result<()> {
    if vector.len() != dims as usize {
        return Err(RetrieverError::invalid(format!(
            "{what} has {} dimensions but the knowledge base stores {dims}-dimensional vectors; \
             embed with the model the knowledge base was created for",
            vector.len()
        )));
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(RetrieverError::invalid(format!(
            "{what} has a non-finite value at index {i}; vectors must hold finite numbers"
        )));
    }
    Ok(())
}

/// The retriever over one store.
#[derive(Clone)]
pub struct Retriever {
    store: Arc<dyn VectorStore>,
    bm25: Arc<Bm25>,
    hnsw_ef: Option<usize>,
    max_query_bytes: usize,
    rrf_k: u32,
}

impl Retriever {
    pub fn new(store: Arc<dyn VectorStore>) -> Result<Self> {
        Ok(Self {
            store,
            bm25: Arc::new(Bm25::new()?),
            hnsw_ef: None,
            max_query_bytes: DEFAULT_MAX_QUERY_BYTES,
            rrf_k: DEFAULT_RRF_K,
        })
    }

    /// Sets the longest `query_text` a Search takes, in bytes (--max-query-bytes).
    pub fn with_max_query_bytes(mut self, max: usize) -> Self {
        self.max_query_bytes = max.max(1);
        self
    }

    /// Sets the `k` of hybrid searches' reciprocal-rank fusion when a request sets none
    /// (--rrf-k), clamped to 1-[`MAX_RRF_K`].
    pub fn with_rrf_k(mut self, k: u32) -> Self {
        self.rrf_k = k.clamp(1, MAX_RRF_K);
        self
    }

    /// Sets the HNSW beam width of dense searches (None: the engine's default).
    pub fn with_hnsw_ef(mut self, hnsw_ef: Option<usize>) -> Self {
        self.hnsw_ef = hnsw_ef.filter(|ef| *ef > 0);
        self
    }

    pub fn store(&self) -> &Arc<dyn VectorStore> {
        &self.store
    }

    pub async fn create_knowledge_base(
        &self,
        req: pb::CreateKnowledgeBaseRequest,
    ) -> Result<pb::KnowledgeBase> {
        validate_name(&req.name)?;
        if req.dimensions == 0 || req.dimensions > MAX_DIMENSIONS {
            return Err(RetrieverError::invalid(format!(
                "dimensions {} is out of range: give the embedding length, 1-{MAX_DIMENSIONS} \
                 (e.g. 384 for all-MiniLM-L6-v2, 1024 for bge-large-zh)",
                req.dimensions
            )));
        }
        if req.adapter.len() > 256 || req.adapter_path.len() > 4096 {
            return Err(RetrieverError::invalid(
                "`adapter` is at most 256 bytes and `adapter_path` at most 4096",
            ));
        }
        let meta = KbMeta {
            name: req.name,
            dimensions: req.dimensions,
            distance: distance_from_proto(req.distance)?,
            description: req.description,
            adapter: req.adapter,
            adapter_path: req.adapter_path,
            created_at_ms: now_ms(),
            adapter_provenance: None,
        };
        Ok(kb_to_proto(self.store.create_kb(meta).await?))
    }

    /// Binds (or with `adapter` "" unbinds) a knowledge base's adapter, with its provenance.
    pub async fn set_knowledge_base_adapter(
        &self,
        req: pb::SetKnowledgeBaseAdapterRequest,
    ) -> Result<pb::KnowledgeBase> {
        validate_name(&req.name)?;
        if req.adapter.len() > 256 || req.adapter_path.len() > 4096 {
            return Err(RetrieverError::invalid(
                "`adapter` is at most 256 bytes and `adapter_path` at most 4096",
            ));
        }
        let provenance = req.provenance.map(|p| {
            let mut record = record_from_proto(p);
            if record.bound_at_ms == 0 {
                record.bound_at_ms = now_ms();
            }
            record
        });
        if let Some(p) = &provenance {
            let longest = [&p.data_file, &p.base_model, &p.base_sha256, &p.eval_file]
                .iter()
                .map(|s| s.len())
                .max()
                .unwrap_or(0);
            if longest > 4096 {
                return Err(RetrieverError::invalid(
                    "a `provenance` field is longer than 4096 bytes",
                ));
            }
        }
        let binding = AdapterBinding {
            adapter: req.adapter,
            adapter_path: req.adapter_path,
            provenance,
        };
        let meta = self.store.set_adapter(&req.name, binding).await?;
        tracing::info!(knowledge_base = %meta.name, adapter = %meta.adapter, "adapter binding set");
        Ok(kb_to_proto(KbInfo {
            meta,
            passage_count: 0,
            document_count: 0,
        }))
    }

    /// Every knowledge base, its counts confined to what `scope` may read.
    pub async fn list_knowledge_bases(
        &self,
        scope: Option<pb::ReaderScope>,
    ) -> Result<pb::ListKnowledgeBasesResponse> {
        let groups = scope_groups(scope)?;
        let mut kbs = self.store.list_kbs().await?;
        kbs.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        let mut knowledge_bases = Vec::with_capacity(kbs.len());
        for info in kbs {
            let info = self.confine_counts(info, groups.as_deref()).await?;
            knowledge_bases.push(kb_to_proto(info));
        }
        Ok(pb::ListKnowledgeBasesResponse { knowledge_bases })
    }

    /// With `metadata_only` the counts (which read every passage) are left at 0; else they
    /// count what `scope` may read.
    pub async fn describe_knowledge_base(
        &self,
        name: &str,
        metadata_only: bool,
        scope: Option<pb::ReaderScope>,
    ) -> Result<pb::KnowledgeBase> {
        validate_name(name)?;
        let groups = scope_groups(scope)?;
        let info = if metadata_only {
            KbInfo {
                meta: self.store.kb_meta(name).await?,
                passage_count: 0,
                document_count: 0,
            }
        } else {
            let info = self.store.describe_kb(name).await?;
            self.confine_counts(info, groups.as_deref()).await?
        };
        Ok(kb_to_proto(info))
    }

    /// `info` with its passage and document counts of the documents `groups` may read
    /// (None: as they are): a reader's counts do not tell how much it may not see.
    async fn confine_counts(&self, mut info: KbInfo, groups: Option<&[String]>) -> Result<KbInfo> {
        if groups.is_none() {
            return Ok(info);
        }
        let documents = self.store.list_documents(&info.meta.name).await?;
        let readable = documents
            .iter()
            .filter(|d| crate::store::readable(&d.readers, groups));
        let (mut document_count, mut passage_count) = (0, 0);
        for d in readable {
            document_count += 1;
            passage_count += u64::from(d.chunk_count);
        }
        info.document_count = document_count;
        info.passage_count = passage_count;
        Ok(info)
    }

    pub async fn delete_knowledge_base(
        &self,
        name: &str,
    ) -> Result<pb::DeleteKnowledgeBaseResponse> {
        validate_name(name)?;
        Ok(pb::DeleteKnowledgeBaseResponse {
            deleted_passages: self.store.delete_kb(name).await?,
        })
    }

    pub async fn upsert(&self, req: pb::UpsertRequest) -> Result<pb::UpsertResponse> {
        let kb = req.knowledge_base;
        validate_name(&kb)?;
        if req.passages.is_empty() || req.passages.len() > MAX_UPSERT_PASSAGES {
            return Err(RetrieverError::invalid(format!(
                "an Upsert carries 1-{MAX_UPSERT_PASSAGES} passages, this one {}; split larger \
                 batches",
                req.passages.len()
            )));
        }
        let meta = self.store.kb_meta(&kb).await?;
        let bm25 = self.bm25.clone();
        let kb_name = kb.clone();
        // Checking every vector and computing BM25 (jieba for Chinese) is CPU work in
        // proportion to the request: all of it off the async threads.
        let (points, stale) = tokio::task::spawn_blocking(move || {
            let mut seen = std::collections::HashSet::new();
            let mut stale: BTreeMap<String, u32> = BTreeMap::new();
            for (i, p) in req.passages.iter().enumerate() {
                let what = format!(
                    "passage {i} (document {:?}, chunk {})",
                    p.document_id, p.chunk_index
                );
                if p.document_id.is_empty() {
                    return Err(RetrieverError::invalid(format!(
                        "passage {i} has an empty document_id; give every passage the id of \
                         its document"
                    )));
                }
                check_vector(&p.vector, meta.dimensions, &format!("the vector of {what}"))?;
                if p.chunk_count != 0 && p.chunk_index >= p.chunk_count {
                    return Err(RetrieverError::invalid(format!(
                        "{what} has chunk_index >= chunk_count ({}); chunk indexes run from 0 to \
                         chunk_count - 1",
                        p.chunk_count
                    )));
                }
                if p.char_end < p.char_start {
                    return Err(RetrieverError::invalid(format!(
                        "{what} has char_end {} before char_start {}",
                        p.char_end, p.char_start
                    )));
                }
                if p.readers.len() > MAX_READERS {
                    return Err(RetrieverError::invalid(format!(
                        "{what} lists {} reader groups; at most {MAX_READERS} are allowed",
                        p.readers.len()
                    )));
                }
                if !seen.insert((p.document_id.as_str(), p.chunk_index)) {
                    return Err(RetrieverError::invalid(format!(
                        "{what} appears twice in this request; send each chunk once"
                    )));
                }
                if p.chunk_count != 0 {
                    match stale.get(&p.document_id) {
                        Some(&c) if c != p.chunk_count => {
                            return Err(RetrieverError::invalid(format!(
                                "{what} says chunk_count {} but another passage of the document \
                                 says {c}; all chunks of one version share chunk_count",
                                p.chunk_count
                            )));
                        }
                        _ => {
                            stale.insert(p.document_id.clone(), p.chunk_count);
                        }
                    }
                }
            }
            let points = req
                .passages
                .into_iter()
                .map(|p| {
                    let readers = normalize_readers(
                        p.readers,
                        &format!("passage of document {:?}", p.document_id),
                    )?;
                    // The title, the heading path and the context are indexed with the text
                    // (as they are embedded).
                    let indexed = [
                        p.title.as_str(),
                        p.heading_path.as_str(),
                        p.context.as_str(),
                        &p.text,
                    ]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("\n");
                    let metadata: BTreeMap<String, String> = p.metadata.into_iter().collect();
                    Ok(PointRecord {
                        id: point_id(&kb_name, &p.document_id, p.chunk_index),
                        dense: p.vector,
                        sparse: bm25.document(&indexed),
                        payload: PassagePayload {
                            metadata_kv: metadata.iter().map(|(k, v)| metadata_kv(k, v)).collect(),
                            metadata,
                            document_id: p.document_id,
                            chunk_index: p.chunk_index,
                            text: p.text,
                            source: p.source,
                            heading_path: p.heading_path,
                            context: p.context,
                            title: p.title,
                            char_start: p.char_start,
                            char_end: p.char_end,
                            readers,
                        },
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, RetrieverError>((points, stale))
        })
        .await
        .map_err(|e| RetrieverError::Task(e.to_string()))??;
        let stale = stale
            .into_iter()
            .map(|(document_id, chunk_count)| StaleChunks {
                document_id,
                chunk_count,
            })
            .collect();
        let outcome = self.store.upsert(&kb, points, stale).await?;
        Ok(pb::UpsertResponse {
            upserted: outcome.upserted,
            removed_stale: outcome.removed_stale,
        })
    }

    pub async fn search(&self, mut req: pb::SearchRequest) -> Result<pb::SearchResponse> {
        validate_name(&req.knowledge_base)?;
        // Sizes first: nothing is segmented or copied for a request over its limits.
        if req.query_text.len() > self.max_query_bytes {
            return Err(RetrieverError::invalid(format!(
                "`query_text` is {} bytes; at most {} are allowed (--max-query-bytes): send \
                 the question, not a document",
                req.query_text.len(),
                self.max_query_bytes
            )));
        }
        if let Some(filter) = &req.filter {
            let values = filter.document_ids.len() + filter.sources.len() + filter.metadata.len();
            if values > MAX_FILTER_VALUES {
                return Err(RetrieverError::invalid(format!(
                    "the filter lists {values} values; at most {MAX_FILTER_VALUES} are allowed \
                     (document ids, sources and metadata pairs together)"
                )));
            }
        }
        let has_vector = !req.vector.is_empty();
        let has_text = !req.query_text.trim().is_empty();
        let mode = match pb::SearchMode::try_from(req.mode) {
            Ok(pb::SearchMode::Unspecified) => match (has_vector, has_text) {
                (true, true) => Mode::Hybrid,
                (true, false) => Mode::Dense,
                (false, true) => Mode::Sparse,
                (false, false) => {
                    return Err(RetrieverError::invalid(
                        "a search needs `vector` (dense), `query_text` (sparse) or both (hybrid)",
                    ));
                }
            },
            Ok(pb::SearchMode::Dense) => Mode::Dense,
            Ok(pb::SearchMode::Sparse) => Mode::Sparse,
            Ok(pb::SearchMode::Hybrid) => Mode::Hybrid,
            Err(_) => {
                return Err(RetrieverError::invalid(format!(
                    "search mode {} is unknown: use SEARCH_MODE_DENSE, SEARCH_MODE_SPARSE or \
                     SEARCH_MODE_HYBRID",
                    req.mode
                )));
            }
        };
        if matches!(mode, Mode::Dense | Mode::Hybrid) && !has_vector {
            return Err(RetrieverError::invalid(
                "this search mode needs `vector`: embed the question first (or use \
                 SEARCH_MODE_SPARSE with query_text only)",
            ));
        }
        if matches!(mode, Mode::Sparse | Mode::Hybrid) && !has_text {
            return Err(RetrieverError::invalid(
                "this search mode needs `query_text` (the question's words for BM25)",
            ));
        }
        if req.top_k > MAX_TOP_K {
            return Err(RetrieverError::invalid(format!(
                "top_k {} is too large: ask for 1-{MAX_TOP_K} passages (0 means {DEFAULT_TOP_K})",
                req.top_k
            )));
        }
        if let Some(t) = req.score_threshold
            && !t.is_finite()
        {
            return Err(RetrieverError::invalid(
                "score_threshold must be a finite number",
            ));
        }
        if let Some(k) = req.rrf_k
            && !(1..=MAX_RRF_K).contains(&k)
        {
            return Err(RetrieverError::invalid(format!(
                "rrf_k {k} is out of range: give 1-{MAX_RRF_K}, or leave it unset for {}",
                self.rrf_k
            )));
        }
        let limit = if req.top_k == 0 {
            DEFAULT_TOP_K
        } else {
            req.top_k
        } as usize;
        let meta = self.store.kb_meta(&req.knowledge_base).await?;
        let dense = if matches!(mode, Mode::Dense | Mode::Hybrid) {
            check_vector(&req.vector, meta.dimensions, "the query vector")?;
            Some(req.vector)
        } else {
            None
        };
        let sparse = if matches!(mode, Mode::Sparse | Mode::Hybrid) {
            // Segmenting (jieba for Chinese) is CPU work: off the async threads.
            let bm25 = self.bm25.clone();
            let text = std::mem::take(&mut req.query_text);
            let query = tokio::task::spawn_blocking(move || bm25.query(&text))
                .await
                .map_err(|e| RetrieverError::Task(e.to_string()))?;
            Some(query)
        } else {
            None
        };
        let filter = req.filter.unwrap_or_default();
        let readable_by = scope_groups(filter.readable_by)?;
        let spec = SearchSpec {
            mode,
            dense,
            sparse,
            limit,
            filter: PassageFilter {
                document_ids: filter.document_ids,
                sources: filter.sources,
                metadata: filter.metadata.into_iter().collect(),
                readable_by,
            },
            score_threshold: req.score_threshold,
            hnsw_ef: self.hnsw_ef,
            exact: false,
            rrf_k: req.rrf_k.unwrap_or(self.rrf_k),
            with_vectors: req.with_vectors,
            distance: meta.distance,
        };
        let hits = self.store.search(&req.knowledge_base, spec).await?;
        Ok(pb::SearchResponse {
            hits: hits.into_iter().map(hit_to_proto).collect(),
            mode: match mode {
                Mode::Dense => pb::SearchMode::Dense,
                Mode::Sparse => pb::SearchMode::Sparse,
                Mode::Hybrid => pb::SearchMode::Hybrid,
            } as i32,
        })
    }

    pub async fn delete_document(
        &self,
        req: pb::DeleteDocumentRequest,
    ) -> Result<pb::DeleteDocumentResponse> {
        validate_name(&req.knowledge_base)?;
        if req.document_id.is_empty() {
            return Err(RetrieverError::invalid(
                "document_id is empty: give the id of the document to delete",
            ));
        }
        Ok(pb::DeleteDocumentResponse {
            deleted_passages: self
                .store
                .delete_document(&req.knowledge_base, &req.document_id)
                .await?,
        })
    }

    pub async fn list_documents(
        &self,
        req: pb::ListDocumentsRequest,
    ) -> Result<pb::ListDocumentsResponse> {
        validate_name(&req.knowledge_base)?;
        if req.page_size > MAX_PAGE_SIZE {
            return Err(RetrieverError::invalid(format!(
                "page_size {} is too large: use 1-{MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})",
                req.page_size
            )));
        }
        let size = if req.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            req.page_size
        } as usize;
        // The page token is the last document id of the previous page, hex-encoded.
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(decode_token(&req.page_token)?)
        };
        let groups = scope_groups(req.readable_by)?;
        // Pages of the store, less what the scope hides, until one more than a page is seen.
        let mut page = Vec::new();
        let mut cursor = after;
        loop {
            let chunk = self
                .store
                .list_documents_page(&req.knowledge_base, cursor.as_deref(), size + 1)
                .await?;
            let full = chunk.len() > size;
            cursor = chunk.last().map(|d| d.document_id.clone());
            page.extend(
                chunk
                    .into_iter()
                    .filter(|d| crate::store::readable(&d.readers, groups.as_deref())),
            );
            if page.len() > size || !full {
                break;
            }
        }
        let next_page_token = if page.len() > size {
            page.truncate(size);
            page.last()
                .map(|d| encode_token(&d.document_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListDocumentsResponse {
            documents: page
                .into_iter()
                .map(|d| pb::DocumentSummary {
                    document_id: d.document_id,
                    source: d.source,
                    chunk_count: d.chunk_count,
                    metadata: d.metadata.into_iter().collect(),
                    readers: d.readers,
                })
                .collect(),
            next_page_token,
        })
    }

    /// Sets who may read a document, on every one of its passages (no re-embedding).
    pub async fn set_document_readers(
        &self,
        req: pb::SetDocumentReadersRequest,
    ) -> Result<pb::SetDocumentReadersResponse> {
        validate_name(&req.knowledge_base)?;
        if req.document_id.is_empty() {
            return Err(RetrieverError::invalid(
                "document_id is empty: give the id of the document whose readers to set",
            ));
        }
        let what = format!("document {:?}", req.document_id);
        let readers = normalize_readers(req.readers, &what)?;
        let updated_passages = self
            .store
            .set_readers(&req.knowledge_base, &req.document_id, readers)
            .await?;
        Ok(pb::SetDocumentReadersResponse { updated_passages })
    }

    pub async fn info(&self) -> Result<pb::RetrieverInfoResponse> {
        let count = self.store.kb_names().await?.len() as u32;
        Ok(pb::RetrieverInfoResponse {
            backend: self.store.backend().to_string(),
            location: self.store.location(),
            knowledge_base_count: count,
            engine_version: self.store.engine_version(),
        })
    }
}

fn hit_to_proto(hit: Hit) -> pb::ScoredPassage {
    let p = hit.payload;
    pb::ScoredPassage {
        passage: Some(pb::Passage {
            document_id: p.document_id,
            chunk_index: p.chunk_index,
            chunk_count: 0,
            text: p.text,
            source: p.source,
            vector: hit.vector.unwrap_or_default(),
            heading_path: p.heading_path,
            char_start: p.char_start,
            char_end: p.char_end,
            metadata: p.metadata.into_iter().collect(),
            readers: p.readers,
            context: p.context,
            title: p.title,
        }),
        score: hit.score,
        dense_score: hit.dense_score,
        sparse_score: hit.sparse_score,
    }
}

fn encode_token(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Result<String> {
    let bad = || {
        RetrieverError::invalid(
            "page_token is not one this server gave out: pass next_page_token unchanged, or \"\" \
             for the first page",
        )
    };
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "kb_1", "Product-Docs", &"x".repeat(64)] {
            validate_name(ok).expect(ok);
        }
        for bad in ["", "-a", "_a", "a b", "知识", "a/b", &"x".repeat(65)] {
            let err = validate_name(bad).expect_err(bad).to_string();
            assert!(err.contains("1-64 ASCII letters"), "{err}");
        }
    }

    #[test]
    fn point_ids_are_deterministic_and_distinct() {
        assert_eq!(point_id("kb", "doc", 0), point_id("kb", "doc", 0));
        assert_ne!(point_id("kb", "doc", 0), point_id("kb", "doc", 1));
        assert_ne!(point_id("kb", "doc", 0), point_id("kb2", "doc", 0));
        // No ambiguity from separators inside names.
        assert_ne!(point_id("a", "b\u{0}1", 2), point_id("a", "b", 12));
    }

    #[test]
    fn page_tokens_round_trip() {
        for id in ["", "doc", "文档/1.md"] {
            assert_eq!(decode_token(&encode_token(id)).expect("decodes"), id);
        }
        assert!(decode_token("zz").is_err());
        assert!(decode_token("abc").is_err());
    }
}
