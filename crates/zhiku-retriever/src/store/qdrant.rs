//! The server backend: a Qdrant server or cluster through `qdrant-client` (gRPC).
//!
//! A knowledge base is the collection `<prefix><name>`; its [`KbMeta`] lives in the
//! collection's metadata (Qdrant >= 1.16) under the key `zhiku`. Points have the same layout
//! as in the embedded backend (dense vector `dense`, BM25 sparse vector `bm25` with the IDF
//! modifier computed by the server, payload [`PassagePayload`]), and the BM25 vectors are
//! computed here with the same embedder, so both backends rank alike. Every write waits for
//! the server to apply it (`wait = true`) before it is acknowledged.

use std::collections::HashMap;

use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance as QDistance, FieldType, Filter, Modifier, PointStruct,
    PrefetchQueryBuilder, Query, QueryPointsBuilder, Range, Rrf, ScoredPoint, ScrollPointsBuilder,
    SearchParamsBuilder, SparseVectorParamsBuilder, SparseVectorsConfigBuilder,
    UpsertPointsBuilder, Vector, VectorInput, VectorParamsBuilder, VectorsConfigBuilder,
    VectorsSelector, vector_output,
};
use qdrant_client::{Payload, Qdrant, QdrantError};

use super::{
    DENSE_VECTOR, Distance, DocumentInfo, Hit, KbInfo, KbMeta, Mode, PassageFilter, PassagePayload,
    PointRecord, RRF_K, SPARSE_VECTOR, SearchSpec, StaleChunks, UpsertOutcome, VectorStore,
    count_documents, embedded::prefetch_limit, fields, group_documents,
};
use crate::error::{Result, RetrieverError};

/// Key of the collection metadata that holds a knowledge base's [`KbMeta`].
const META_KEY: &str = "zhiku";

/// Connection settings of the server backend.
#[derive(Debug, Clone)]
pub struct QdrantSettings {
    /// gRPC URL, e.g. `http://localhost:6334`; `https://` turns TLS on.
    pub url: String,
    pub api_key: Option<String>,
    /// Prepended to knowledge base names to make collection names.
    pub collection_prefix: String,
    /// Seconds a call to the server may take.
    pub timeout_secs: u64,
}

pub struct QdrantStore {
    client: Qdrant,
    settings: QdrantSettings,
}

fn map_err(e: QdrantError) -> RetrieverError {
    match &e {
        QdrantError::ResponseError { status } => match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                RetrieverError::Unavailable(status.message().to_string())
            }
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                RetrieverError::PermissionDenied(status.message().to_string())
            }
            tonic::Code::InvalidArgument => RetrieverError::InvalidArgument(format!(
                "the Qdrant server rejected the request: {}",
                status.message()
            )),
            _ => RetrieverError::Engine(format!("{}: {}", status.code(), status.message())),
        },
        QdrantError::ResourceExhaustedError { status, .. } => {
            RetrieverError::Unavailable(status.message().to_string())
        }
        _ => RetrieverError::Engine(e.to_string()),
    }
}

impl QdrantStore {
    /// Connects and checks that the server answers.
    pub async fn connect(settings: QdrantSettings) -> Result<Self> {
        let mut config = Qdrant::from_url(&settings.url)
            .timeout(std::time::Duration::from_secs(settings.timeout_secs.max(1)))
            .skip_compatibility_check();
        if let Some(key) = settings.api_key.as_deref().filter(|k| !k.is_empty()) {
            config = config.api_key(key.to_string());
        }
        let client = config.build().map_err(|e| {
            RetrieverError::InvalidArgument(format!("bad --qdrant-url `{}`: {e}", settings.url))
        })?;
        let health = client.health_check().await.map_err(|e| {
            RetrieverError::Unavailable(format!("{} does not answer: {e}", settings.url))
        })?;
        tracing::info!(url = %settings.url, version = %health.version, "connected to Qdrant");
        Ok(Self { client, settings })
    }

    fn collection(&self, kb: &str) -> String {
        format!("{}{kb}", self.settings.collection_prefix)
    }

    async fn exists(&self, kb: &str) -> Result<bool> {
        self.client
            .collection_exists(self.collection(kb))
            .await
            .map_err(map_err)
    }

    async fn require(&self, kb: &str) -> Result<()> {
        if self.exists(kb).await? {
            Ok(())
        } else {
            Err(RetrieverError::KnowledgeBaseNotFound(kb.to_string()))
        }
    }

    async fn count_filtered(&self, kb: &str, filter: Option<Filter>) -> Result<u64> {
        let mut request = CountPointsBuilder::new(self.collection(kb)).exact(true);
        if let Some(filter) = filter {
            request = request.filter(filter);
        }
        let response = self.client.count(request).await.map_err(map_err)?;
        Ok(response.result.map(|r| r.count).unwrap_or(0))
    }

    async fn delete_filtered(&self, kb: &str, filter: Filter) -> Result<()> {
        self.client
            .delete_points(
                DeletePointsBuilder::new(self.collection(kb))
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn scroll_all(&self, kb: &str, fields_wanted: &[&str]) -> Result<Vec<PassagePayload>> {
        let include: Vec<String> = fields_wanted.iter().map(|f| f.to_string()).collect();
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let mut request = ScrollPointsBuilder::new(self.collection(kb))
                .limit(1000)
                .with_payload(qdrant_client::qdrant::PayloadIncludeSelector {
                    fields: include.clone(),
                })
                .with_vectors(false);
            if let Some(o) = offset.take() {
                request = request.offset(o);
            }
            let response = self.client.scroll(request).await.map_err(map_err)?;
            for p in response.result {
                out.push(payload_of(p.payload)?);
            }
            match response.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn meta_of(&self, kb: &str) -> Result<KbMeta> {
        let info = self
            .client
            .collection_info(self.collection(kb))
            .await
            .map_err(|e| match &e {
                QdrantError::ResponseError { status } if status.code() == tonic::Code::NotFound => {
                    RetrieverError::KnowledgeBaseNotFound(kb.to_string())
                }
                _ => map_err(e),
            })?;
        let metadata = info
            .result
            .and_then(|r| r.config)
            .map(|c| c.metadata)
            .unwrap_or_default();
        let value = metadata.get(META_KEY).cloned().ok_or_else(|| {
            RetrieverError::Corrupt(format!(
                "collection `{}` has no `{META_KEY}` metadata: it was not created by zhiku",
                self.collection(kb)
            ))
        })?;
        let json = serde_json::Value::from(Payload::from(HashMap::from([(
            META_KEY.to_string(),
            value,
        )])));
        let meta = json.get(META_KEY).cloned().unwrap_or_default();
        serde_json::from_value(meta).map_err(|e| RetrieverError::Corrupt(format!("metadata: {e}")))
    }

    async fn info(&self, kb: &str) -> Result<KbInfo> {
        let meta = self.meta_of(kb).await?;
        let payloads = self.scroll_all(kb, &[fields::DOCUMENT_ID]).await?;
        Ok(KbInfo {
            meta,
            passage_count: payloads.len() as u64,
            document_count: count_documents(payloads.iter().map(|p| p.document_id.as_str())),
        })
    }

    /// A query on `kb` with the search's filter, parameters and payload/vector selection.
    fn request(&self, kb: &str, spec: &SearchSpec, limit: usize, full: bool) -> QueryPointsBuilder {
        let mut request = QueryPointsBuilder::new(self.collection(kb))
            .limit(limit as u64)
            .with_payload(full)
            .params(search_params(spec));
        if let Some(filter) = to_filter(&spec.filter) {
            request = request.filter(filter);
        }
        if spec.with_vectors && full {
            request = request.with_vectors(VectorsSelector {
                names: vec![DENSE_VECTOR.to_string()],
            });
        }
        request
    }

    /// One ranking: nearest neighbours of `input` in the vector `using`.
    async fn nearest(
        &self,
        kb: &str,
        spec: &SearchSpec,
        (input, using): (VectorInput, &str),
        limit: usize,
        score_threshold: Option<f32>,
        full: bool,
    ) -> Result<Vec<ScoredPoint>> {
        let mut request = self
            .request(kb, spec, limit, full)
            .query(Query::new_nearest(input))
            .using(using);
        if let Some(t) = score_threshold {
            request = request.score_threshold(t);
        }
        Ok(self.client.query(request).await.map_err(map_err)?.result)
    }
}

fn search_params(spec: &SearchSpec) -> SearchParamsBuilder {
    let mut params = SearchParamsBuilder::default().exact(spec.exact);
    if let Some(ef) = spec.hnsw_ef {
        params = params.hnsw_ef(ef as u64);
    }
    params
}

fn to_filter(filter: &PassageFilter) -> Option<Filter> {
    if filter.is_empty() {
        return None;
    }
    let mut must = Vec::new();
    if !filter.document_ids.is_empty() {
        must.push(Condition::matches(
            fields::DOCUMENT_ID,
            filter.document_ids.clone(),
        ));
    }
    if !filter.sources.is_empty() {
        must.push(Condition::matches(fields::SOURCE, filter.sources.clone()));
    }
    for (k, v) in &filter.metadata {
        must.push(Condition::matches(
            fields::METADATA_KV,
            super::metadata_kv(k, v),
        ));
    }
    Some(Filter::must(must))
}

fn payload_of(payload: HashMap<String, qdrant_client::qdrant::Value>) -> Result<PassagePayload> {
    let json = serde_json::Value::from(Payload::from(payload));
    serde_json::from_value(json).map_err(|e| RetrieverError::Corrupt(format!("point payload: {e}")))
}

fn point_key(point: &ScoredPoint) -> String {
    use qdrant_client::qdrant::point_id::PointIdOptions;
    match point
        .id
        .as_ref()
        .and_then(|id| id.point_id_options.as_ref())
    {
        Some(PointIdOptions::Num(n)) => n.to_string(),
        Some(PointIdOptions::Uuid(u)) => u.clone(),
        None => String::new(),
    }
}

fn dense_of(point: &ScoredPoint) -> Option<Vec<f32>> {
    match point.vectors.as_ref()?.get_vector_by_name(DENSE_VECTOR)? {
        vector_output::Vector::Dense(d) => Some(d.data),
        _ => None,
    }
}

fn sparse_input(spec: &SearchSpec) -> Option<VectorInput> {
    let s = spec.sparse.as_ref().filter(|s| !s.is_empty())?;
    let pairs: Vec<(u32, f32)> = s
        .indices
        .iter()
        .copied()
        .zip(s.values.iter().copied())
        .collect();
    Some(VectorInput::from(pairs.as_slice()))
}

fn to_hits(
    points: Vec<ScoredPoint>,
    spec: &SearchSpec,
    dense: &HashMap<String, f32>,
    sparse: &HashMap<String, f32>,
) -> Result<Vec<Hit>> {
    points
        .into_iter()
        .map(|p| {
            let key = point_key(&p);
            let vector = if spec.with_vectors {
                dense_of(&p)
            } else {
                None
            };
            Ok(Hit {
                score: p.score,
                dense_score: dense.get(&key).copied(),
                sparse_score: sparse.get(&key).copied(),
                vector,
                payload: payload_of(p.payload)?,
            })
        })
        .collect()
}

fn scores(points: &[ScoredPoint]) -> HashMap<String, f32> {
    points.iter().map(|p| (point_key(p), p.score)).collect()
}

#[tonic::async_trait]
impl VectorStore for QdrantStore {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    fn location(&self) -> String {
        self.settings.url.clone()
    }

    fn engine_version(&self) -> String {
        "Qdrant server (qdrant-client 1.20)".to_string()
    }

    async fn create_kb(&self, meta: KbMeta) -> Result<KbInfo> {
        if self.exists(&meta.name).await? {
            return Err(RetrieverError::KnowledgeBaseExists(meta.name));
        }
        let distance = match meta.distance {
            Distance::Cosine => QDistance::Cosine,
            Distance::Dot => QDistance::Dot,
            Distance::Euclid => QDistance::Euclid,
        };
        let mut vectors = VectorsConfigBuilder::default();
        vectors.add_named_vector_params(
            DENSE_VECTOR,
            VectorParamsBuilder::new(u64::from(meta.dimensions), distance),
        );
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            SPARSE_VECTOR,
            SparseVectorParamsBuilder::default().modifier(Modifier::Idf as i32),
        );
        let meta_json = serde_json::to_value(&meta)
            .map_err(|e| RetrieverError::Corrupt(format!("metadata: {e}")))?;
        let collection = self.collection(&meta.name);
        self.client
            .create_collection(
                CreateCollectionBuilder::new(collection.clone())
                    .vectors_config(vectors)
                    .sparse_vectors_config(sparse)
                    .metadata(HashMap::from([(META_KEY.to_string(), meta_json)])),
            )
            .await
            .map_err(|e| match &e {
                QdrantError::ResponseError { status }
                    if status.code() == tonic::Code::AlreadyExists
                        || status.message().contains("already exists") =>
                {
                    RetrieverError::KnowledgeBaseExists(meta.name.clone())
                }
                _ => map_err(e),
            })?;
        for (field, kind) in [
            (fields::DOCUMENT_ID, FieldType::Keyword),
            (fields::SOURCE, FieldType::Keyword),
            (fields::METADATA_KV, FieldType::Keyword),
            (fields::CHUNK_INDEX, FieldType::Integer),
        ] {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(collection.clone(), field, kind)
                        .wait(true),
                )
                .await
                .map_err(map_err)?;
        }
        tracing::info!(knowledge_base = %meta.name, %collection, "knowledge base created");
        Ok(KbInfo {
            meta,
            passage_count: 0,
            document_count: 0,
        })
    }

    async fn kb_names(&self) -> Result<Vec<String>> {
        let response = self.client.list_collections().await.map_err(map_err)?;
        let mut names: Vec<String> = response
            .collections
            .into_iter()
            .filter_map(|c| {
                c.name
                    .strip_prefix(&self.settings.collection_prefix)
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    async fn list_kbs(&self) -> Result<Vec<KbInfo>> {
        let names = self.kb_names().await?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.info(&name).await {
                Ok(info) => out.push(info),
                // A collection of someone else's that happens to share the prefix.
                Err(RetrieverError::Corrupt(why)) => {
                    tracing::debug!(collection = %name, %why, "skipping a collection");
                }
                Err(RetrieverError::KnowledgeBaseNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn describe_kb(&self, name: &str) -> Result<KbInfo> {
        self.info(name).await
    }

    async fn kb_meta(&self, name: &str) -> Result<KbMeta> {
        self.meta_of(name).await
    }

    async fn delete_kb(&self, name: &str) -> Result<u64> {
        self.require(name).await?;
        let passages = self.count_filtered(name, None).await?;
        self.client
            .delete_collection(self.collection(name))
            .await
            .map_err(map_err)?;
        Ok(passages)
    }

    async fn upsert(
        &self,
        kb: &str,
        points: Vec<PointRecord>,
        stale: Vec<StaleChunks>,
    ) -> Result<UpsertOutcome> {
        let upserted = points.len() as u64;
        let mut structs = Vec::with_capacity(points.len());
        for p in points {
            let mut vectors: HashMap<String, Vector> = HashMap::new();
            vectors.insert(DENSE_VECTOR.to_string(), Vector::from(p.dense));
            if !p.sparse.is_empty() {
                let pairs: Vec<(u32, f32)> =
                    p.sparse.indices.into_iter().zip(p.sparse.values).collect();
                vectors.insert(SPARSE_VECTOR.to_string(), Vector::from(pairs));
            }
            let payload = Payload::try_from(p.payload.to_json()?)
                .map_err(|e| RetrieverError::Corrupt(format!("payload: {e}")))?;
            structs.push(PointStruct::new(p.id.to_string(), vectors, payload));
        }
        if !structs.is_empty() {
            self.client
                .upsert_points(UpsertPointsBuilder::new(self.collection(kb), structs).wait(true))
                .await
                .map_err(map_err)?;
        }
        let mut removed_stale = 0;
        for rule in stale {
            let filter = Filter::must([
                Condition::matches(fields::DOCUMENT_ID, rule.document_id.clone()),
                Condition::range(
                    fields::CHUNK_INDEX,
                    Range {
                        gte: Some(f64::from(rule.chunk_count)),
                        ..Range::default()
                    },
                ),
            ]);
            let n = self.count_filtered(kb, Some(filter.clone())).await?;
            if n > 0 {
                self.delete_filtered(kb, filter).await?;
                removed_stale += n;
            }
        }
        Ok(UpsertOutcome {
            upserted,
            removed_stale,
        })
    }

    async fn search(&self, kb: &str, spec: SearchSpec) -> Result<Vec<Hit>> {
        self.require(kb).await?;
        let dense = || {
            (
                VectorInput::from(spec.dense.clone().unwrap_or_default()),
                DENSE_VECTOR,
            )
        };
        let sparse = sparse_input(&spec).map(|s| (s, SPARSE_VECTOR));
        let none = HashMap::new();
        match spec.mode {
            Mode::Dense => {
                let points = self
                    .nearest(kb, &spec, dense(), spec.limit, spec.score_threshold, true)
                    .await?;
                let d = scores(&points);
                to_hits(points, &spec, &d, &none)
            }
            Mode::Sparse => {
                let Some(sparse) = sparse else {
                    return Ok(vec![]);
                };
                let points = self
                    .nearest(kb, &spec, sparse, spec.limit, spec.score_threshold, true)
                    .await?;
                let s = scores(&points);
                to_hits(points, &spec, &none, &s)
            }
            Mode::Hybrid => {
                let candidates = prefetch_limit(spec.limit);
                let filter = to_filter(&spec.filter);
                let prefetch = |(input, using): (VectorInput, &str), threshold: Option<f32>| {
                    let mut p = PrefetchQueryBuilder::default()
                        .query(Query::new_nearest(input))
                        .using(using)
                        .limit(candidates as u64)
                        .params(search_params(&spec));
                    if let Some(t) = threshold {
                        p = p.score_threshold(t);
                    }
                    if let Some(f) = filter.clone() {
                        p = p.filter(f);
                    }
                    p
                };
                let mut request = self
                    .request(kb, &spec, spec.limit, true)
                    .query(Query::new_rrf(Rrf {
                        k: Some(RRF_K),
                        weights: vec![],
                    }))
                    .add_prefetch(prefetch(dense(), spec.score_threshold));
                if let Some(s) = sparse.clone() {
                    request = request.add_prefetch(prefetch(s, None));
                }
                let fused = self.client.query(request).await.map_err(map_err)?.result;
                // The same two rankings again, for each hit's own dense and BM25 scores.
                let dense_points = self
                    .nearest(kb, &spec, dense(), candidates, spec.score_threshold, false)
                    .await?;
                let sparse_points = match sparse {
                    Some(s) => self.nearest(kb, &spec, s, candidates, None, false).await?,
                    None => vec![],
                };
                to_hits(
                    fused,
                    &spec,
                    &scores(&dense_points),
                    &scores(&sparse_points),
                )
            }
        }
    }

    async fn delete_document(&self, kb: &str, document_id: &str) -> Result<u64> {
        self.require(kb).await?;
        let filter = Filter::must([Condition::matches(
            fields::DOCUMENT_ID,
            document_id.to_string(),
        )]);
        let n = self.count_filtered(kb, Some(filter.clone())).await?;
        if n > 0 {
            self.delete_filtered(kb, filter).await?;
        }
        Ok(n)
    }

    async fn list_documents(&self, kb: &str) -> Result<Vec<DocumentInfo>> {
        self.require(kb).await?;
        let payloads = self
            .scroll_all(
                kb,
                &[
                    fields::DOCUMENT_ID,
                    fields::CHUNK_INDEX,
                    fields::SOURCE,
                    "metadata",
                ],
            )
            .await?;
        Ok(group_documents(payloads))
    }

    async fn count(&self, kb: &str) -> Result<u64> {
        self.require(kb).await?;
        self.count_filtered(kb, None).await
    }
}
