//! The server backend: a Qdrant server or cluster over gRPC (Qdrant's own API, the request
//! types of `qdrant-client`, on our own tonic channels).
//!
//! A knowledge base is the collection `<prefix><name>`; its [`KbMeta`] lives in the
//! collection's metadata (Qdrant >= 1.16) under the key `zhiku`. Points have the same layout
//! as in the embedded backend (dense vector `dense`, BM25 sparse vector `bm25` with the IDF
//! modifier computed by the server, payload [`PassagePayload`]), and the BM25 vectors are
//! computed here with the same embedder, so both backends rank alike. Every write waits for
//! the server to apply it (`wait = true`) before it is acknowledged.
//!
//! Own channels rather than `qdrant_client::Qdrant`, for what a cluster user needs: several
//! node URLs with fail-over, retries of UNAVAILABLE, and TLS with a CA file besides the
//! system roots. Retrying a write is safe: point ids are deterministic and deletes go by
//! filter, so a write applied twice leaves what it leaves once.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qdrant_client::Payload;
use qdrant_client::qdrant::collections_client::CollectionsClient;
use qdrant_client::qdrant::points_client::PointsClient;
use qdrant_client::qdrant::qdrant_client::QdrantClient;
use qdrant_client::qdrant::{
    CollectionExistsRequest, CollectionStatus, Condition, CountPointsBuilder,
    CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeleteCollectionBuilder,
    DeletePointsBuilder, Distance as QDistance, FacetCounts, FieldType, Filter,
    GetCollectionInfoRequest, HealthCheckRequest, HnswConfigDiffBuilder, ListCollectionsRequest,
    Modifier, OptimizersConfigDiffBuilder, PointStruct, Query, QueryPointsBuilder, Range,
    ScoredPoint, ScrollPointsBuilder, SearchParamsBuilder, SetPayloadPointsBuilder,
    SparseVectorParamsBuilder, SparseVectorsConfigBuilder, UpdateCollectionBuilder,
    UpsertPointsBuilder, Vector, VectorInput, VectorParamsBuilder, VectorsConfigBuilder,
    VectorsSelector, WriteOrdering, WriteOrderingType, vector_output,
};
use serde::de::DeserializeOwned;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::embedded::HnswSettings;
use super::fields::{self, IndexKind};
use super::points::{self, FieldMatch, Nearest, Points, QueryVector, Scored};
use super::{
    AdapterBinding, DENSE_VECTOR, Distance, DocumentInfo, Hit, KbInfo, KbMeta, PassagePayload,
    PointRecord, SPARSE_VECTOR, SearchSpec, StaleChunks, UpsertOutcome, VectorStore,
    group_documents,
};
use crate::error::{Result, RetrieverError};

/// Key of the collection metadata that holds a knowledge base's [`KbMeta`].
const META_KEY: &str = "zhiku";
/// Largest gRPC message accepted from the server (scroll pages of payloads).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How writes are ordered across the replicas of a shard (Qdrant's `WriteOrdering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WriteOrder {
    /// Writes may be reordered between replicas (Qdrant's default, fastest).
    #[default]
    Weak,
    /// Through a dynamically chosen leader of each shard.
    Medium,
    /// Through the shard's permanent leader: consistent, unavailable while it is down.
    Strong,
}

/// Connection and collection settings of the server backend.
#[derive(Debug, Clone)]
pub struct QdrantSettings {
    /// gRPC URL(s), comma-separated, e.g. `http://localhost:6334`; `https://` turns TLS on.
    /// Calls go to the first; on UNAVAILABLE they move on to the next.
    pub url: String,
    pub api_key: Option<String>,
    /// Prepended to knowledge base names to make collection names.
    pub collection_prefix: String,
    /// Seconds a call to the server may take.
    pub timeout_secs: u64,
    /// Retries of a call that failed with UNAVAILABLE (each after a growing pause, on the
    /// next URL when there are several).
    pub retries: u32,
    /// PEM file of CA certificates trusted for `https://` besides the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Shards of new collections (None: the server's default, 1 or the number of nodes).
    pub shard_number: Option<u32>,
    /// Copies of each shard in a cluster (None: the server's default, 1).
    pub replication_factor: Option<u32>,
    /// Replicas that must apply a write before it is acknowledged (None: 1).
    pub write_consistency_factor: Option<u32>,
    pub write_ordering: WriteOrder,
    /// HNSW parameters and indexing threshold of new collections.
    pub hnsw: HnswSettings,
}

impl QdrantSettings {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            collection_prefix: "zhiku_".into(),
            timeout_secs: 30,
            retries: 3,
            ca_cert: None,
            shard_number: None,
            replication_factor: None,
            write_consistency_factor: None,
            write_ordering: WriteOrder::Weak,
            hnsw: HnswSettings::default(),
        }
    }

    /// The node URLs.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// One server URL and its (lazily connected) channel.
struct Node {
    url: String,
    channel: Channel,
}

pub struct QdrantStore {
    nodes: Vec<Node>,
    /// The node calls go to; moves on when one is unavailable.
    current: AtomicUsize,
    api_key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    settings: QdrantSettings,
}

/// Whether a failed call may succeed if sent again: the server (or the peer holding a shard)
/// could not be reached, or asked to be retried.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // The client's own call cut short when the node's connection dropped mid-call
        // (`operation was canceled`): nothing cancels our calls but a lost connection.
        Code::Cancelled => true,
        // A cluster node answers these while a peer that held a shard replica is going away.
        Code::Internal | Code::Unknown => {
            let m = status.message().to_ascii_lowercase();
            [
                "transport error",
                "connection",
                "unavailable",
                "service is not ready",
            ]
            .iter()
            .any(|w| m.contains(w))
                // A node just restarted answers this until its replica of the shard is
                // loaded again; another node holds one.
                || (m.contains("local shard") && m.contains("not found"))
        }
        _ => false,
    }
}

/// A call that failed for good: the last status, the node and the attempts made.
struct Failure {
    status: Status,
    url: String,
    what: String,
    attempts: u32,
}

impl From<Failure> for RetrieverError {
    fn from(f: Failure) -> Self {
        map_status(f.status, &f.url, &f.what, f.attempts)
    }
}

fn map_status(status: Status, url: &str, what: &str, attempts: u32) -> RetrieverError {
    let message = status.message();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => RetrieverError::Unavailable(format!(
            "{url}: {what}: {} ({message}){}",
            status.code(),
            if attempts > 1 {
                format!(", after {attempts} attempts")
            } else {
                String::new()
            }
        )),
        Code::Unauthenticated | Code::PermissionDenied => {
            RetrieverError::PermissionDenied(format!("{url}: {what}: {message}"))
        }
        Code::InvalidArgument => RetrieverError::InvalidArgument(format!(
            "the Qdrant server rejected the request ({what}): {message}"
        )),
        // Qdrant's own back-pressure: passed on as such, so that clients back off instead
        // of treating the server as down.
        Code::ResourceExhausted => {
            RetrieverError::ResourceExhausted(format!("{url}: {what}: {message}"))
        }
        _ if retryable(&status) => RetrieverError::Unavailable(format!(
            "{url}: {what}: {message}, after {attempts} attempts"
        )),
        code => RetrieverError::Engine(format!("{url}: {what}: {code}: {message}")),
    }
}

/// The TLS settings of `https://` URLs: the system roots and `ca_cert`.
fn tls_config(ca_cert: Option<&PathBuf>) -> Result<(ClientTlsConfig, Option<Certificate>)> {
    let ca = match ca_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                RetrieverError::io(
                    format!("cannot read --qdrant-ca-cert {}", path.display()),
                    e,
                )
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(RetrieverError::invalid(format!(
                    "--qdrant-ca-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
            Some(Certificate::from_pem(pem))
        }
        None => None,
    };
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &ca {
        config = config.ca_certificate(ca.clone());
    }
    Ok((config, ca))
}

fn endpoint(url: &str, settings: &QdrantSettings) -> Result<Endpoint> {
    let bad = |e: &dyn std::fmt::Display| {
        RetrieverError::invalid(format!(
            "bad --qdrant-url `{url}`: {e} (give http://host:6334 or https://host:6334)"
        ))
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad(&"not an http:// or https:// URL"));
    }
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(&e))?
        .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .keep_alive_while_idle(true)
        .http2_keep_alive_interval(Duration::from_secs(20));
    if url.starts_with("https://") {
        let (config, ca) = tls_config(settings.ca_cert.as_ref())?;
        endpoint = match endpoint.clone().tls_config(config) {
            Ok(e) => e,
            // No system roots on this machine: the CA file alone.
            Err(e) => match ca {
                Some(ca) => {
                    tracing::warn!(error = %e, "no system CA roots; trusting --qdrant-ca-cert only");
                    endpoint
                        .tls_config(ClientTlsConfig::new().ca_certificate(ca))
                        .map_err(|e| bad(&e))?
                }
                None => return Err(bad(&format!("TLS: {e}; give --qdrant-ca-cert"))),
            },
        };
    }
    Ok(endpoint)
}

impl QdrantStore {
    /// Connects and checks that a server answers (retrying as calls do).
    pub async fn connect(settings: QdrantSettings) -> Result<Self> {
        let urls = settings.urls();
        if urls.is_empty() {
            return Err(RetrieverError::invalid(
                "--qdrant-url is empty: give the gRPC URL of a Qdrant server, e.g. \
                 http://localhost:6334",
            ));
        }
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            let channel = endpoint(&url, &settings)?.connect_lazy();
            nodes.push(Node { url, channel });
        }
        let api_key = match settings.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => Some(key.parse().map_err(|_| {
                RetrieverError::invalid("--qdrant-api-key holds characters a header cannot carry")
            })?),
            None => None,
        };
        let store = Self {
            nodes,
            current: AtomicUsize::new(0),
            api_key,
            settings,
        };
        let health = store
            .call("health check", HealthCheckRequest {}, |ch, r| async move {
                QdrantClient::new(ch).health_check(r).await
            })
            .await?;
        tracing::info!(
            url = %store.settings.url,
            version = %health.version,
            "connected to Qdrant"
        );
        Ok(store)
    }

    /// Sends `message` with `call` to the current node; on a retryable failure, again after a
    /// pause (100 ms, doubling, at most 2 s), on the next node.
    async fn call<Req, Resp, F, Fut>(
        &self,
        what: &str,
        message: Req,
        call: F,
    ) -> std::result::Result<Resp, Failure>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        let mut attempt = 0u32;
        let mut pause = Duration::from_millis(100);
        loop {
            attempt += 1;
            let index = self.current.load(Ordering::Relaxed) % self.nodes.len();
            let node = &self.nodes[index];
            let mut request = tonic::Request::new(message.clone());
            if let Some(key) = &self.api_key {
                request.metadata_mut().insert("api-key", key.clone());
            }
            match call(node.channel.clone(), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if retryable(&status) && attempt <= self.settings.retries => {
                    tracing::warn!(
                        url = %node.url,
                        %what,
                        code = ?status.code(),
                        message = status.message(),
                        attempt,
                        "Qdrant call failed; retrying"
                    );
                    if self.nodes.len() > 1 {
                        let _ = self.current.compare_exchange(
                            index,
                            (index + 1) % self.nodes.len(),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(status) => {
                    return Err(Failure {
                        status,
                        url: node.url.clone(),
                        what: what.to_string(),
                        attempts: attempt,
                    });
                }
            }
        }
    }

    fn points(channel: Channel) -> PointsClient<Channel> {
        PointsClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn collections(channel: Channel) -> CollectionsClient<Channel> {
        CollectionsClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn ordering(&self) -> WriteOrdering {
        WriteOrdering {
            r#type: match self.settings.write_ordering {
                WriteOrder::Weak => WriteOrderingType::Weak,
                WriteOrder::Medium => WriteOrderingType::Medium,
                WriteOrder::Strong => WriteOrderingType::Strong,
            } as i32,
        }
    }

    fn points_of<'a>(&'a self, kb: &'a str) -> Collection<'a> {
        Collection { store: self, kb }
    }

    fn collection(&self, kb: &str) -> String {
        format!("{}{kb}", self.settings.collection_prefix)
    }

    async fn exists(&self, kb: &str) -> Result<bool> {
        let request = CollectionExistsRequest {
            collection_name: self.collection(kb),
        };
        let response = self
            .call("collection exists", request, |ch, r| async move {
                Self::collections(ch).collection_exists(r).await
            })
            .await?;
        Ok(response.result.is_some_and(|r| r.exists))
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
        let response = self
            .call("count", request.build(), |ch, r| async move {
                Self::points(ch).count(r).await
            })
            .await?;
        Ok(response.result.map(|r| r.count).unwrap_or(0))
    }

    async fn delete_filtered(&self, kb: &str, filter: Filter) -> Result<()> {
        let request = DeletePointsBuilder::new(self.collection(kb))
            .points(filter)
            .wait(true)
            .ordering(self.ordering())
            .build();
        self.call("delete points", request, |ch, r| async move {
            Self::points(ch).delete(r).await
        })
        .await?;
        Ok(())
    }

    /// The payloads of every point (only `fields_wanted`), as `T`.
    async fn scroll_all<T: DeserializeOwned>(
        &self,
        kb: &str,
        fields_wanted: &[&str],
    ) -> Result<Vec<T>> {
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
            let response = self
                .call("scroll", request.build(), |ch, r| async move {
                    Self::points(ch).scroll(r).await
                })
                .await?;
            for p in response.result {
                out.push(payload_of(p.payload)?);
            }
            match response.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn collection_info(&self, kb: &str) -> Result<qdrant_client::qdrant::CollectionInfo> {
        let request = GetCollectionInfoRequest {
            collection_name: self.collection(kb),
        };
        let response = self
            .call("collection info", request, |ch, r| async move {
                Self::collections(ch).get(r).await
            })
            .await;
        match response {
            Ok(r) => r.result.ok_or_else(|| {
                RetrieverError::Engine(format!("no info on collection `{}`", self.collection(kb)))
            }),
            Err(f) if f.status.code() == Code::NotFound => {
                Err(RetrieverError::KnowledgeBaseNotFound(kb.to_string()))
            }
            Err(f) => Err(f.into()),
        }
    }

    async fn meta_of(&self, kb: &str) -> Result<KbMeta> {
        let info = self.collection_info(kb).await?;
        let metadata = info.config.map(|c| c.metadata).unwrap_or_default();
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

    /// Distinct documents: a facet on the (indexed) document id, exact.
    async fn document_count(&self, kb: &str, passages: u64) -> Result<u64> {
        if passages == 0 {
            return Ok(0);
        }
        let request = FacetCounts {
            collection_name: self.collection(kb),
            key: fields::DOCUMENT_ID.to_string(),
            limit: Some(passages),
            exact: Some(true),
            ..FacetCounts::default()
        };
        let response = self
            .call("facet", request, |ch, r| async move {
                Self::points(ch).facet(r).await
            })
            .await?;
        // Values whose points were all deleted may linger in the index with a count of 0.
        Ok(response.hits.iter().filter(|h| h.count > 0).count() as u64)
    }

    async fn info(&self, kb: &str) -> Result<KbInfo> {
        let meta = self.meta_of(kb).await?;
        let passage_count = self.count_filtered(kb, None).await?;
        Ok(KbInfo {
            meta,
            passage_count,
            document_count: self.document_count(kb, passage_count).await?,
        })
    }

    /// Waits until the server has indexed `kb`: status green (no optimisation pending) and
    /// `indexed_vectors_count` ≥ points, or green with the count unchanged for `settle` (a
    /// segment under the indexing threshold is searched exactly and never indexed). Returns
    /// how long it took, the indexed vectors and the points.
    pub async fn wait_indexed(
        &self,
        kb: &str,
        settle: Duration,
        timeout: Duration,
    ) -> Result<(Duration, u64, u64)> {
        let started = Instant::now();
        let mut last = (u64::MAX, started);
        loop {
            let info = self.collection_info(kb).await?;
            let points = info.points_count.unwrap_or(0);
            let indexed = info.indexed_vectors_count.unwrap_or(0);
            let green = info.status == CollectionStatus::Green as i32;
            if indexed != last.0 {
                last = (indexed, Instant::now());
            }
            if green && (indexed >= points || last.1.elapsed() >= settle) {
                return Ok((last.1.duration_since(started), indexed, points));
            }
            if started.elapsed() > timeout {
                return Err(RetrieverError::Unavailable(format!(
                    "collection `{}` not indexed after {timeout:?}: status {}, {indexed} of \
                     {points} vectors indexed",
                    self.collection(kb),
                    info.status
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn query(&self, request: QueryPointsBuilder) -> Result<Vec<ScoredPoint>> {
        let response = self
            .call("query", request.build(), |ch, r| async move {
                Self::points(ch).query(r).await
            })
            .await?;
        Ok(response.result)
    }
}

/// The filter of `all` (every condition must hold).
fn to_filter(all: &[FieldMatch]) -> Filter {
    Filter::must(all.iter().map(|condition| match condition {
        FieldMatch::AnyOfOrEmpty(field, values) => {
            let mut should = vec![Condition::is_empty(*field)];
            if !values.is_empty() {
                should.push(Condition::matches(*field, values.clone()));
            }
            Condition::from(Filter::should(should))
        }
        FieldMatch::Is(field, value) => Condition::matches(*field, value.clone()),
        FieldMatch::AnyOf(field, values) => Condition::matches(*field, values.clone()),
        FieldMatch::AtLeast(field, n) => Condition::range(
            *field,
            Range {
                gte: Some(f64::from(*n)),
                ..Range::default()
            },
        ),
    }))
}

fn payload_of<T: DeserializeOwned>(
    payload: HashMap<String, qdrant_client::qdrant::Value>,
) -> Result<T> {
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

fn scored(point: ScoredPoint, with_vector: bool) -> Result<Scored> {
    Ok(Scored {
        key: point_key(&point),
        score: point.score,
        vector: if with_vector { dense_of(&point) } else { None },
        payload: payload_of(point.payload)?,
    })
}

fn to_point(p: PointRecord) -> Result<PointStruct> {
    let mut vectors: HashMap<String, Vector> = HashMap::new();
    vectors.insert(DENSE_VECTOR.to_string(), Vector::from(p.dense));
    if !p.sparse.is_empty() {
        let pairs: Vec<(u32, f32)> = p.sparse.indices.into_iter().zip(p.sparse.values).collect();
        vectors.insert(SPARSE_VECTOR.to_string(), Vector::from(pairs));
    }
    let payload = Payload::try_from(p.payload.to_json()?)
        .map_err(|e| RetrieverError::Corrupt(format!("payload: {e}")))?;
    Ok(PointStruct::new(p.id.to_string(), vectors, payload))
}

/// A knowledge base's collection: its points for the shared algorithm ([`points`]).
struct Collection<'a> {
    store: &'a QdrantStore,
    kb: &'a str,
}

#[tonic::async_trait]
impl Points for Collection<'_> {
    async fn nearest(&self, query: Nearest<'_>) -> Result<Vec<Scored>> {
        let (input, using) = match query.vector {
            QueryVector::Dense(v) => (VectorInput::from(v.to_vec()), DENSE_VECTOR),
            QueryVector::Sparse(s) => {
                let pairs: Vec<(u32, f32)> = s
                    .indices
                    .iter()
                    .copied()
                    .zip(s.values.iter().copied())
                    .collect();
                (VectorInput::from(pairs.as_slice()), SPARSE_VECTOR)
            }
        };
        let mut params = SearchParamsBuilder::default().exact(query.exact);
        if let Some(ef) = query.hnsw_ef {
            params = params.hnsw_ef(ef as u64);
        }
        let mut request = QueryPointsBuilder::new(self.store.collection(self.kb))
            .query(Query::new_nearest(input))
            .using(using)
            .limit(query.limit as u64)
            .with_payload(true)
            .params(params);
        if let Some(filter) = query.filter {
            request = request.filter(to_filter(filter));
        }
        if let Some(t) = query.score_threshold {
            request = request.score_threshold(t);
        }
        if query.with_vector {
            request = request.with_vectors(VectorsSelector {
                names: vec![DENSE_VECTOR.to_string()],
            });
        }
        let points = self.store.query(request).await?;
        points
            .into_iter()
            .map(|p| scored(p, query.with_vector))
            .collect()
    }

    async fn upsert(&self, points: Vec<PointRecord>) -> Result<()> {
        let points = points
            .into_iter()
            .map(to_point)
            .collect::<Result<Vec<_>>>()?;
        let request = UpsertPointsBuilder::new(self.store.collection(self.kb), points)
            .wait(true)
            .ordering(self.store.ordering())
            .build();
        self.store
            .call("upsert", request, |ch, r| async move {
                QdrantStore::points(ch).upsert(r).await
            })
            .await?;
        Ok(())
    }

    async fn count(&self, filter: Option<&[FieldMatch]>) -> Result<u64> {
        self.store
            .count_filtered(self.kb, filter.map(to_filter))
            .await
    }

    async fn delete(&self, filter: &[FieldMatch]) -> Result<()> {
        self.store.delete_filtered(self.kb, to_filter(filter)).await
    }

    async fn set_field(
        &self,
        filter: &[FieldMatch],
        field: &'static str,
        value: serde_json::Value,
    ) -> Result<()> {
        let payload = Payload::try_from(serde_json::json!({ field: value }))
            .map_err(|e| RetrieverError::Corrupt(format!("payload: {e}")))?;
        let request = SetPayloadPointsBuilder::new(self.store.collection(self.kb), payload)
            .points_selector(to_filter(filter))
            .wait(true)
            .ordering(self.store.ordering())
            .build();
        self.store
            .call("set payload", request, |ch, r| async move {
                QdrantStore::points(ch).set_payload(r).await
            })
            .await?;
        Ok(())
    }
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
        "Qdrant server (gRPC API of qdrant-client 1.20)".to_string()
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
        let hnsw = &self.settings.hnsw;
        let mut request = CreateCollectionBuilder::new(collection.clone())
            .vectors_config(vectors)
            .sparse_vectors_config(sparse)
            .hnsw_config(
                HnswConfigDiffBuilder::default()
                    .m(hnsw.m as u64)
                    .ef_construct(hnsw.ef_construct as u64),
            )
            .optimizers_config(
                OptimizersConfigDiffBuilder::default()
                    .indexing_threshold(hnsw.indexing_threshold_kb as u64),
            )
            .metadata(HashMap::from([(META_KEY.to_string(), meta_json)]));
        if let Some(n) = self.settings.shard_number {
            request = request.shard_number(n);
        }
        if let Some(n) = self.settings.replication_factor {
            request = request.replication_factor(n);
        }
        if let Some(n) = self.settings.write_consistency_factor {
            request = request.write_consistency_factor(n);
        }
        let created = self
            .call("create collection", request.build(), |ch, r| async move {
                Self::collections(ch).create(r).await
            })
            .await;
        match created {
            Ok(_) => {}
            Err(f)
                if f.status.code() == Code::AlreadyExists
                    || f.status.message().contains("already exists") =>
            {
                return Err(RetrieverError::KnowledgeBaseExists(meta.name));
            }
            Err(f) => return Err(f.into()),
        }
        for (field, kind) in fields::INDEXED {
            let kind = match kind {
                IndexKind::Keyword => FieldType::Keyword,
                IndexKind::Integer => FieldType::Integer,
            };
            let request = CreateFieldIndexCollectionBuilder::new(collection.clone(), field, kind)
                .wait(true)
                .ordering(self.ordering())
                .build();
            self.call("create field index", request, |ch, r| async move {
                Self::points(ch).create_field_index(r).await
            })
            .await?;
        }
        tracing::info!(knowledge_base = %meta.name, %collection, "knowledge base created");
        Ok(KbInfo {
            meta,
            passage_count: 0,
            document_count: 0,
        })
    }

    async fn kb_names(&self) -> Result<Vec<String>> {
        let response = self
            .call(
                "list collections",
                ListCollectionsRequest {},
                |ch, r| async move { Self::collections(ch).list(r).await },
            )
            .await?;
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

    async fn set_adapter(&self, name: &str, binding: AdapterBinding) -> Result<KbMeta> {
        let mut meta = self.meta_of(name).await?;
        binding.apply(&mut meta);
        let meta_json = serde_json::to_value(&meta)
            .map_err(|e| RetrieverError::Corrupt(format!("metadata: {e}")))?;
        // Qdrant merges metadata by key: the whole `zhiku` key is replaced.
        let request = UpdateCollectionBuilder::new(self.collection(name))
            .metadata(HashMap::from([(META_KEY.to_string(), meta_json)]))
            .build();
        self.call("update collection", request, |ch, r| async move {
            Self::collections(ch).update(r).await
        })
        .await?;
        Ok(meta)
    }

    async fn delete_kb(&self, name: &str) -> Result<u64> {
        self.require(name).await?;
        let passages = self.count_filtered(name, None).await?;
        let request = DeleteCollectionBuilder::new(self.collection(name)).build();
        self.call("delete collection", request, |ch, r| async move {
            Self::collections(ch).delete(r).await
        })
        .await?;
        Ok(passages)
    }

    async fn upsert(
        &self,
        kb: &str,
        records: Vec<PointRecord>,
        stale: Vec<StaleChunks>,
    ) -> Result<UpsertOutcome> {
        points::upsert(&self.points_of(kb), records, &stale).await
    }

    async fn search(&self, kb: &str, spec: SearchSpec) -> Result<Vec<Hit>> {
        self.require(kb).await?;
        points::search(&self.points_of(kb), &spec).await
    }

    async fn delete_document(&self, kb: &str, document_id: &str) -> Result<u64> {
        self.require(kb).await?;
        points::delete_document(&self.points_of(kb), document_id).await
    }

    async fn set_readers(&self, kb: &str, document_id: &str, readers: Vec<String>) -> Result<u64> {
        self.require(kb).await?;
        points::set_readers(&self.points_of(kb), document_id, &readers).await
    }

    async fn list_documents(&self, kb: &str) -> Result<Vec<DocumentInfo>> {
        self.require(kb).await?;
        let payloads: Vec<PassagePayload> = self.scroll_all(kb, &fields::OF_DOCUMENT).await?;
        Ok(group_documents(payloads))
    }

    async fn count(&self, kb: &str) -> Result<u64> {
        self.require(kb).await?;
        self.count_filtered(kb, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status a client of the retriever gets for what the Qdrant server answered.
    fn passed_on(status: Status) -> (Code, String) {
        let err = map_status(status, "http://qdrant:6334", "upsert", 1);
        let status = zhiku_runtime::error::to_status(&err);
        (status.code(), status.message().to_string())
    }

    #[test]
    fn resource_exhausted_stays_resource_exhausted() {
        let (code, message) = passed_on(Status::resource_exhausted("Too many requests"));
        assert_eq!(code, Code::ResourceExhausted, "{message}");
        assert!(message.contains("Too many requests"), "{message}");
        assert!(message.contains("http://qdrant:6334"), "{message}");
        // Not retried in place: the caller decides when to come back.
        assert!(!retryable(&Status::resource_exhausted("Too many requests")));
    }

    #[test]
    fn a_restarting_nodes_missing_shard_is_retried_elsewhere() {
        let missing = Status::internal(
            "Service internal error: 1 of 1 read operations failed:\n  Service internal \
             error: Local shard 0 not found",
        );
        assert!(retryable(&missing));
        assert_eq!(passed_on(missing).0, Code::Unavailable);
        // A collection that does not exist is no node's passing state.
        assert!(!retryable(&Status::internal("Collection `kb` not found")));
    }

    #[test]
    fn a_call_cut_short_by_a_dropped_connection_is_retried_elsewhere() {
        let cut = Status::cancelled("operation was canceled");
        assert!(retryable(&cut));
        assert_eq!(passed_on(cut).0, Code::Unavailable);
    }

    #[test]
    fn other_codes_keep_their_meaning() {
        for (from, to) in [
            (Code::Unavailable, Code::Unavailable),
            (Code::DeadlineExceeded, Code::Unavailable),
            (Code::PermissionDenied, Code::PermissionDenied),
            (Code::Unauthenticated, Code::PermissionDenied),
            (Code::InvalidArgument, Code::InvalidArgument),
            (Code::FailedPrecondition, Code::Internal),
        ] {
            assert_eq!(passed_on(Status::new(from, "why")).0, to, "{from:?}");
        }
    }
}
