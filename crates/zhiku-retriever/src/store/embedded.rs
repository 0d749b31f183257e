//! The embedded backend: the Qdrant engine (`qdrant-edge`) in this process.
//!
//! Layout of the data directory: one directory per knowledge base, named like it, holding
//! `kb.json` (its [`KbMeta`], written atomically) and `shard/` (the qdrant-edge shard: WAL,
//! segments, config). A knowledge base is created in a hidden `.tmp-*` directory and renamed
//! into place when complete, and deleted by renaming it to a hidden `.deleting-*` directory
//! first, so a crash never leaves half a knowledge base behind; hidden leftovers are removed
//! at startup.
//!
//! Durability: qdrant-edge 0.7 does not replay its WAL when a shard is loaded, so every
//! write is followed by `EdgeShard::flush` (WAL and segments, fsynced) before it is
//! acknowledged; a `kill -9` can only lose writes that were never acknowledged. Point ids are
//! deterministic, so a write repeated after a crash replaces and never duplicates. Writes to
//! one knowledge base are serialised (the engine's flush wants no concurrent writer).
//!
//! Bounded disk: qdrant-edge 0.7 never truncates its WAL (nothing acknowledges it), so left
//! alone a shard's `wal/` would grow by every write ever made. Since the WAL is never read
//! back, its only job here is numbering operations (point versions), and that numbering
//! lives in the newest closed WAL segment and the open one. So once the older closed
//! segments outweigh half the shard's segments (see [`compact_wal`]), the shard is closed
//! (flushed), those files are deleted oldest first (what the engine's own truncation does,
//! so a crash midway leaves a valid WAL), and the shard is opened again; meanwhile the
//! knowledge base's reads wait. New knowledge bases use WAL segments of
//! [`WAL_SEGMENT_BYTES`] so that what stays is small beside the data. Deleting the whole WAL
//! is not safe: operation numbers would restart and later updates of existing points would
//! be ignored.
//!
//! One data directory can be open in one process only (the WAL is locked), which makes a
//! second retriever on the same directory fail at startup with a clear error.
//!
//! HNSW indexes: segments are searched exactly until they hold `indexing_threshold_kb` of
//! vectors; [`EmbeddedStore::optimize`] (run in the background by the service) then builds
//! their index.
//!
//! Everything that touches qdrant-edge is in this file, so an engine upgrade touches it only.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::external::serde_json;
use qdrant_edge::{
    AnyVariants, Condition, CountRequest, CreateIndex, EdgeConfigBuilder, EdgeShard,
    EdgeSparseVectorParamsBuilder, EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations,
    Filter, HnswIndexConfig, IsEmptyCondition, JsonPath, Match, Modifier, NamedQuery,
    PayloadFieldSchema, PayloadOps, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, PointStructPersisted, QueryEnum, QueryRequest, Range,
    ScoringQuery, ScrollRequest, SearchParams, SetPayloadOp, SparseVector, UpdateOperation,
    ValueVariants, VectorInternal, VectorStructInternal, Vectors, WalOptions, WithPayloadInterface,
    WithVector,
};
use uuid::Uuid;

use super::fields::{self, IndexKind};
use super::points::{self, FieldMatch, Nearest, Points, QueryVector, Scored};
use super::{
    AdapterBinding, DENSE_VECTOR, Distance, DocumentInfo, Hit, KbInfo, KbMeta, PassagePayload,
    PointRecord, SPARSE_VECTOR, SearchSpec, StaleChunks, UpsertOutcome, VectorStore,
    group_documents,
};
use crate::error::{Result, RetrieverError};

const META_FILE: &str = "kb.json";
const SHARD_DIR: &str = "shard";
/// The WAL directory of a qdrant-edge shard, and its closed segments' file-name prefix.
const WAL_DIR: &str = "wal";
const CLOSED_WAL_PREFIX: &str = "closed-";
/// The segments directory of a qdrant-edge shard.
const SEGMENTS_DIR: &str = "segments";
/// WAL segment size of new knowledge bases (qdrant-edge's default is 32 MiB): after a
/// compaction up to two segments stay, so this is what a knowledge base keeps at least.
pub const WAL_SEGMENT_BYTES: usize = 256 << 10;
/// Version of the engine crate (kept in step with Cargo.toml's pin).
pub const ENGINE_VERSION: &str = "qdrant-edge 0.7.0";

/// HNSW settings of new knowledge bases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswSettings {
    /// Edges per node.
    pub m: usize,
    /// Neighbours considered while building.
    pub ef_construct: usize,
    /// Segments with fewer points than this (in KiB of vectors) are searched exactly.
    pub indexing_threshold_kb: usize,
}

impl Default for HnswSettings {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construct: 100,
            indexing_threshold_kb: 10_000,
        }
    }
}

/// One open knowledge base.
struct Kb {
    /// The knowledge base's name (as in `meta`, which it never changes).
    name: String,
    /// Its metadata: only the adapter binding changes ([`VectorStore::set_adapter`]).
    meta: RwLock<KbMeta>,
    /// The shard's directory.
    path: PathBuf,
    /// None only while a WAL compaction reopens the shard, or if reopening failed.
    shard: RwLock<Option<EdgeShard>>,
    /// Serialises writes (and flushes and compactions) to the shard.
    write: Mutex<()>,
    /// Written since the last optimisation.
    dirty: AtomicBool,
    /// Every document with its chunk count, by id: read from the shard once when it is
    /// opened and kept up to date by each write (under the write lock), so that counts and
    /// document pages never scan the passages.
    documents: RwLock<BTreeMap<String, DocumentInfo>>,
}

impl Kb {
    fn new(
        meta: KbMeta,
        path: PathBuf,
        shard: EdgeShard,
        documents: BTreeMap<String, DocumentInfo>,
    ) -> Self {
        Self {
            name: meta.name.clone(),
            meta: RwLock::new(meta),
            path,
            shard: RwLock::new(Some(shard)),
            write: Mutex::new(()),
            dirty: AtomicBool::new(true),
            documents: RwLock::new(documents),
        }
    }

    /// The open shard, held while in use (a compaction waits until it is let go). Take it
    /// once per operation: a second read lock while a compaction waits would deadlock.
    fn shard(&self) -> Result<Shard<'_>> {
        let guard = self.shard.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(RetrieverError::Engine(format!(
                "knowledge base `{}` could not be reopened after its WAL was compacted; \
                 restart the retriever",
                self.name
            )));
        }
        Ok(Shard(guard))
    }

    fn meta(&self) -> KbMeta {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // A panic in a previous write poisons the lock; the shard itself stays usable.
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn documents(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, DocumentInfo>> {
        self.documents.read().unwrap_or_else(|e| e.into_inner())
    }

    fn documents_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, DocumentInfo>> {
        self.documents.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A knowledge base's open shard, read-locked.
struct Shard<'a>(RwLockReadGuard<'a, Option<EdgeShard>>);

impl std::ops::Deref for Shard<'_> {
    type Target = EdgeShard;

    fn deref(&self) -> &EdgeShard {
        // Kb::shard only hands out a guard over an open shard.
        self.0.as_ref().expect("an open shard")
    }
}

/// The closed WAL segments of a shard, oldest first: (first operation number, path, bytes
/// on disk).
fn closed_wal_segments(shard_dir: &Path) -> Result<Vec<(u64, PathBuf, u64)>> {
    let dir = shard_dir.join(WAL_DIR);
    let io = |e| RetrieverError::io(format!("cannot read {}", dir.display()), e);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_prefix(CLOSED_WAL_PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let meta = entry.metadata().map_err(io)?;
        if meta.is_file() {
            out.push((start, entry.path(), disk_bytes(&meta)));
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes a file takes on disk (WAL segments are sparse until written).
fn disk_bytes(meta: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

/// Bytes on disk of everything under `path`.
pub fn tree_bytes(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(disk_bytes(&meta));
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += tree_bytes(&entry?.path())?;
    }
    Ok(total)
}

/// Deletes the WAL segments that only hold old operations, once they outweigh half the
/// shard's segments (so the WAL stays in proportion to the data, and reopening the shard
/// costs little per write): closes the shard, deletes them oldest first, opens it again.
/// Keeps the newest closed segment, which with the open one carries the operation
/// numbering on. Acknowledged writes are in the flushed segments, which this does not
/// touch. Call with the write lock held. Returns the bytes freed.
fn compact_wal(kb: &Kb) -> Result<u64> {
    let closed = closed_wal_segments(&kb.path)?;
    let Some((_newest, old)) = closed.split_last() else {
        return Ok(0);
    };
    let old_bytes: u64 = old.iter().map(|(_, _, bytes)| bytes).sum();
    if old.is_empty() || old_bytes < WAL_SEGMENT_BYTES as u64 {
        return Ok(0);
    }
    let segments = tree_bytes(&kb.path.join(SEGMENTS_DIR))
        .map_err(|e| RetrieverError::io(format!("cannot measure {}", kb.path.display()), e))?;
    if old_bytes < segments / 2 {
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let mut slot = kb.shard.write().unwrap_or_else(|e| e.into_inner());
    // Dropping the shard flushes it and lets go of the WAL's lock.
    drop(slot.take());
    let mut removed = Ok(());
    for (_, path, _) in old {
        if let Err(e) = std::fs::remove_file(path) {
            removed = Err(RetrieverError::io(
                format!("cannot remove {}", path.display()),
                e,
            ));
            break;
        }
    }
    let synced = sync_dir(&kb.path.join(WAL_DIR));
    *slot = Some(EdgeShard::load(&kb.path, None).map_err(|e| {
        RetrieverError::Engine(format!(
            "cannot reopen knowledge base `{}` after compacting its WAL: {e}",
            kb.name
        ))
    })?);
    drop(slot);
    removed?;
    synced?;
    tracing::info!(
        knowledge_base = %kb.name,
        freed_bytes = old_bytes,
        segments_removed = old.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "WAL compacted"
    );
    Ok(old_bytes)
}

/// The embedded store.
pub struct EmbeddedStore {
    dir: PathBuf,
    hnsw: HnswSettings,
    kbs: RwLock<BTreeMap<String, Arc<Kb>>>,
    /// Serialises creation and deletion of knowledge bases.
    admin: tokio::sync::Mutex<()>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the data directory and every knowledge base in it.
    /// Blocking: call from a blocking thread.
    pub fn open(dir: impl Into<PathBuf>, hnsw: HnswSettings) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            RetrieverError::io(format!("cannot create data dir {}", dir.display()), e)
        })?;
        let mut kbs = BTreeMap::new();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| RetrieverError::io(format!("cannot read {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| RetrieverError::io(format!("cannot read {}", dir.display()), e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() {
                continue;
            }
            if name.starts_with('.') {
                // A creation or deletion that did not finish.
                tracing::warn!(path = %path.display(), "removing unfinished knowledge base directory");
                std::fs::remove_dir_all(&path).map_err(|e| {
                    RetrieverError::io(format!("cannot remove {}", path.display()), e)
                })?;
                continue;
            }
            if !path.join(META_FILE).is_file() {
                tracing::warn!(path = %path.display(), "skipping a directory without kb.json");
                continue;
            }
            let meta = read_meta(&path)?;
            let started = std::time::Instant::now();
            let shard = EdgeShard::load(&path.join(SHARD_DIR), None).map_err(|e| {
                RetrieverError::Engine(format!(
                    "cannot load knowledge base `{name}` from {}: {e}",
                    path.display()
                ))
            })?;
            repair_duplicates(&shard, &meta.name)?;
            let documents = document_index(&shard)?;
            tracing::info!(
                knowledge_base = %meta.name,
                points = shard.info().points_count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "knowledge base loaded"
            );
            let kb = Kb::new(meta, path.join(SHARD_DIR), shard, documents);
            // What a crash before a compaction left, or what older versions wrote.
            if let Err(e) = compact_wal(&kb) {
                tracing::warn!(knowledge_base = %kb.name, error = %e, "WAL compaction failed");
            }
            kbs.insert(kb.name.clone(), Arc::new(kb));
        }
        Ok(Self {
            dir,
            hnsw,
            kbs: RwLock::new(kbs),
            admin: tokio::sync::Mutex::new(()),
        })
    }

    fn get(&self, name: &str) -> Result<Arc<Kb>> {
        self.kbs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| RetrieverError::KnowledgeBaseNotFound(name.to_string()))
    }

    /// Builds the HNSW index of knowledge bases that have grown past the indexing threshold
    /// (blocking; writes to those knowledge bases wait meanwhile). Returns whether anything
    /// was optimised.
    pub fn optimize(&self, name: &str) -> Result<bool> {
        let kb = self.get(name)?;
        let _writes = kb.lock_writes();
        kb.dirty.store(false, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let shard = kb.shard()?;
        let changed = shard.optimize().map_err(engine)?;
        if changed {
            shard.flush();
            tracing::info!(
                knowledge_base = name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "knowledge base optimised (HNSW index built)"
            );
        }
        Ok(changed)
    }

    /// Optimises every knowledge base written since its last optimisation (blocking).
    pub fn optimize_dirty(&self) -> Result<()> {
        let dirty: Vec<String> = self
            .kbs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, kb)| kb.dirty.load(Ordering::SeqCst))
            .map(|(name, _)| name.clone())
            .collect();
        for name in dirty {
            match self.optimize(&name) {
                Ok(_) | Err(RetrieverError::KnowledgeBaseNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn edge_config(&self, meta: &KbMeta) -> qdrant_edge::EdgeConfig {
        let distance = match meta.distance {
            Distance::Cosine => qdrant_edge::Distance::Cosine,
            Distance::Dot => qdrant_edge::Distance::Dot,
            Distance::Euclid => qdrant_edge::Distance::Euclid,
        };
        let hnsw = HnswIndexConfig {
            m: self.hnsw.m,
            ef_construct: self.hnsw.ef_construct,
            ..HnswIndexConfig::default()
        };
        let mut config = EdgeConfigBuilder::new()
            .vector(
                DENSE_VECTOR,
                EdgeVectorParamsBuilder::new(meta.dimensions as usize, distance).build(),
            )
            .sparse_vector(
                SPARSE_VECTOR,
                EdgeSparseVectorParamsBuilder::new()
                    .modifier(Modifier::Idf)
                    .build(),
            )
            .hnsw_config(hnsw)
            .build();
        config.optimizers.indexing_threshold = Some(self.hnsw.indexing_threshold_kb);
        config.wal_options = Some(WalOptions {
            segment_capacity: WAL_SEGMENT_BYTES,
            ..WalOptions::default()
        });
        config
    }
}

fn engine(e: impl std::fmt::Display) -> RetrieverError {
    RetrieverError::Engine(e.to_string())
}

fn read_meta(kb_dir: &Path) -> Result<KbMeta> {
    let path = kb_dir.join(META_FILE);
    let bytes = std::fs::read(&path)
        .map_err(|e| RetrieverError::io(format!("cannot read {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RetrieverError::Corrupt(format!("{}: {e}", path.display())))
}

/// Writes `kb.json` atomically: a temporary file, fsynced, renamed over, directory fsynced.
fn write_meta(kb_dir: &Path, meta: &KbMeta) -> Result<()> {
    let path = kb_dir.join(META_FILE);
    let tmp = kb_dir.join(".kb.json.tmp");
    let bytes =
        serde_json::to_vec_pretty(meta).map_err(|e| RetrieverError::Corrupt(e.to_string()))?;
    let io = |e| RetrieverError::io(format!("cannot write {}", path.display()), e);
    {
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    sync_dir(kb_dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RetrieverError::io(format!("cannot sync {}", dir.display()), e))
}

fn json_path(field: &str) -> Result<JsonPath> {
    field
        .parse()
        .map_err(|_| RetrieverError::Engine(format!("bad payload path `{field}`")))
}

/// The engine's filter of `all` (every condition must hold).
fn to_filter(all: &[FieldMatch]) -> Result<Filter> {
    let must = all
        .iter()
        .map(|condition| {
            let field = match condition {
                FieldMatch::AnyOfOrEmpty(field, values) => {
                    let key = json_path(field)?;
                    let mut should = vec![Condition::IsEmpty(IsEmptyCondition::from(key.clone()))];
                    if !values.is_empty() {
                        should.push(Condition::Field(FieldCondition::new_match(
                            key,
                            Match::new_any(AnyVariants::Strings(values.iter().cloned().collect())),
                        )));
                    }
                    return Ok(Condition::Filter(Filter {
                        should: Some(should),
                        ..Filter::default()
                    }));
                }
                FieldMatch::Is(field, value) => FieldCondition::new_match(
                    json_path(field)?,
                    Match::new_value(ValueVariants::String(value.clone())),
                ),
                FieldMatch::AnyOf(field, values) => FieldCondition::new_match(
                    json_path(field)?,
                    Match::new_any(AnyVariants::Strings(values.iter().cloned().collect())),
                ),
                FieldMatch::AtLeast(field, n) => FieldCondition::new_range(
                    json_path(field)?,
                    Range {
                        gte: Some(OrderedFloat(f64::from(*n))),
                        gt: None,
                        lt: None,
                        lte: None,
                    },
                ),
            };
            Ok(Condition::Field(field))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Filter {
        must: Some(must),
        ..Filter::default()
    })
}

fn count(shard: &EdgeShard, filter: Option<Filter>) -> Result<u64> {
    shard
        .count(CountRequest {
            filter,
            exact: true,
        })
        .map(|n| n as u64)
        .map_err(engine)
}

fn payload_of(payload: Option<qdrant_edge::Payload>) -> Result<PassagePayload> {
    let map = payload.map(|p| p.0).unwrap_or_default();
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| RetrieverError::Corrupt(format!("point payload: {e}")))
}

fn point_key(id: &PointId) -> String {
    match id {
        PointId::NumId(n) => n.to_string(),
        PointId::Uuid(u) => u.to_string(),
    }
}

fn dense_of(vector: Option<VectorStructInternal>) -> Option<Vec<f32>> {
    match vector? {
        VectorStructInternal::Single(v) => Some(v),
        VectorStructInternal::Named(mut named) => match named.remove(DENSE_VECTOR)? {
            VectorInternal::Dense(v) => Some(v),
            _ => None,
        },
        VectorStructInternal::MultiDense(_) => None,
    }
}

fn to_point(p: PointRecord) -> Result<PointStructPersisted> {
    let mut named = HashMap::new();
    named.insert(DENSE_VECTOR.to_string(), VectorInternal::Dense(p.dense));
    if !p.sparse.is_empty() {
        named.insert(
            SPARSE_VECTOR.to_string(),
            VectorInternal::Sparse(SparseVector {
                indices: p.sparse.indices,
                values: p.sparse.values,
            }),
        );
    }
    let payload = p.payload.to_json()?;
    Ok(PointStruct::new(
        PointId::Uuid(p.id),
        Vectors::from(VectorStructInternal::Named(named)),
        payload,
    )
    .into())
}

/// A shard's points for the shared algorithm ([`points`]). Every call blocks: run it on a
/// blocking thread (see [`on_blocking_thread`]).
#[tonic::async_trait]
impl Points for EdgeShard {
    async fn nearest(&self, query: Nearest<'_>) -> Result<Vec<Scored>> {
        let vector = match query.vector {
            QueryVector::Dense(v) => {
                NamedQuery::new(VectorInternal::Dense(v.to_vec()), DENSE_VECTOR)
            }
            QueryVector::Sparse(s) => NamedQuery::new(
                VectorInternal::Sparse(SparseVector {
                    indices: s.indices.clone(),
                    values: s.values.clone(),
                }),
                SPARSE_VECTOR,
            ),
        };
        let with_vector = if query.with_vector {
            WithVector::Selector(vec![DENSE_VECTOR.to_string()])
        } else {
            WithVector::Bool(false)
        };
        let points = self
            .query(QueryRequest {
                prefetches: vec![],
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(vector))),
                filter: query.filter.map(to_filter).transpose()?,
                score_threshold: query.score_threshold.map(OrderedFloat),
                limit: query.limit,
                offset: 0,
                params: Some(SearchParams {
                    hnsw_ef: query.hnsw_ef,
                    exact: query.exact,
                    ..SearchParams::default()
                }),
                with_vector,
                with_payload: WithPayloadInterface::Bool(true),
            })
            .map_err(engine)?;
        points
            .into_iter()
            .map(|p| {
                Ok(Scored {
                    key: point_key(&p.id),
                    score: p.score,
                    vector: if query.with_vector {
                        dense_of(p.vector)
                    } else {
                        None
                    },
                    payload: payload_of(p.payload)?,
                })
            })
            .collect()
    }

    async fn upsert(&self, points: Vec<PointRecord>) -> Result<()> {
        let points = points.into_iter().map(to_point).collect::<Result<_>>()?;
        self.update(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
        .map_err(engine)?;
        Ok(())
    }

    async fn count(&self, filter: Option<&[FieldMatch]>) -> Result<u64> {
        count(self, filter.map(to_filter).transpose()?)
    }

    async fn delete(&self, filter: &[FieldMatch]) -> Result<()> {
        self.update(UpdateOperation::PointOperation(
            PointOperations::DeletePointsByFilter(to_filter(filter)?),
        ))
        .map_err(engine)?;
        Ok(())
    }

    async fn set_field(
        &self,
        filter: &[FieldMatch],
        field: &'static str,
        value: serde_json::Value,
    ) -> Result<()> {
        let mut payload = serde_json::Map::new();
        payload.insert(field.to_string(), value);
        self.update(UpdateOperation::PayloadOperation(PayloadOps::SetPayload(
            SetPayloadOp {
                payload: qdrant_edge::Payload(payload),
                points: None,
                filter: Some(to_filter(filter)?),
                key: None,
            },
        )))
        .map_err(engine)?;
        Ok(())
    }
}

/// Runs `f` on a blocking thread, handing it the runtime to run the shared algorithm's
/// futures with: over a shard they never wait, every engine call blocks in place, so the
/// whole operation (lock, writes, flush) stays on one thread and finishes even if the
/// request that started it goes away.
async fn on_blocking_thread<T: Send + 'static>(
    f: impl FnOnce(&tokio::runtime::Handle) -> Result<T> + Send + 'static,
) -> Result<T> {
    let runtime = tokio::runtime::Handle::current();
    blocking(move || f(&runtime)).await
}

fn upsert_blocking(
    kb: &Kb,
    records: Vec<PointRecord>,
    stale: Vec<StaleChunks>,
    runtime: &tokio::runtime::Handle,
) -> Result<UpsertOutcome> {
    // What each written document looks like in this batch (its first chunk speaks for it).
    let mut touched: BTreeMap<String, DocumentInfo> = BTreeMap::new();
    for p in &records {
        let doc = touched
            .entry(p.payload.document_id.clone())
            .or_insert_with(|| DocumentInfo {
                document_id: p.payload.document_id.clone(),
                source: p.payload.source.clone(),
                chunk_count: 0,
                metadata: p.payload.metadata.clone(),
                readers: p.payload.readers.clone(),
            });
        if p.payload.chunk_index == 0 {
            doc.source = p.payload.source.clone();
            doc.metadata = p.payload.metadata.clone();
            doc.readers = p.payload.readers.clone();
            doc.chunk_count = 1; // marks "has chunk 0"
        }
    }
    let _writes = kb.lock_writes();
    let guard = kb.shard()?;
    let shard: &EdgeShard = &guard;
    let outcome = runtime.block_on(points::upsert(shard, records, &stale))?;
    // Durable before acknowledged (qdrant-edge 0.7 does not replay its WAL on load).
    shard.flush();
    kb.dirty.store(true, Ordering::SeqCst);
    // The document index follows, one indexed count per written document.
    for rule in &stale {
        touched
            .entry(rule.document_id.clone())
            .or_insert_with(|| DocumentInfo {
                document_id: rule.document_id.clone(),
                source: String::new(),
                chunk_count: 0,
                metadata: BTreeMap::new(),
                readers: Vec::new(),
            });
    }
    for (id, seen) in touched {
        let chunks = count(shard, Some(to_filter(&points::document_filter(&id))?))?;
        let mut documents = kb.documents_mut();
        if chunks == 0 {
            documents.remove(&id);
            continue;
        }
        let has_first_chunk = seen.chunk_count == 1;
        let doc = documents.entry(id).or_insert(DocumentInfo {
            chunk_count: 0,
            ..seen.clone()
        });
        if has_first_chunk {
            doc.source = seen.source;
            doc.metadata = seen.metadata;
            doc.readers = seen.readers;
        }
        doc.chunk_count = chunks as u32;
    }
    drop(guard);
    // The write is durable and acknowledged whatever the compaction does.
    if let Err(e) = compact_wal(kb) {
        tracing::warn!(knowledge_base = %kb.name, error = %e, "WAL compaction failed");
    }
    Ok(outcome)
}

/// Makes every point live in one segment only.
///
/// A crash while the optimiser swaps a rebuilt segment in can leave a point in both the old
/// and the new segment; Qdrant's server de-duplicates at load, qdrant-edge 0.7 does not. The
/// point count (per segment) then exceeds the number of distinct ids (which scrolls
/// de-duplicate), and writing every point again (the engine keeps one copy of a written
/// point) repairs it. Costs one id scan per knowledge base at startup.
fn repair_duplicates(shard: &EdgeShard, name: &str) -> Result<()> {
    let counted = count(shard, None)?;
    let distinct = scroll_records(shard, WithPayloadInterface::Bool(false), false, |_| Ok(()))?;
    if counted == distinct {
        return Ok(());
    }
    tracing::warn!(
        knowledge_base = name,
        counted,
        distinct,
        "duplicate points left by an interrupted optimisation; rewriting every point"
    );
    let mut batch: Vec<(PointId, PointStructPersisted)> = Vec::new();
    scroll_records(shard, WithPayloadInterface::Bool(true), true, |record| {
        let payload = serde_json::Value::Object(record.payload.map(|p| p.0).unwrap_or_default());
        let vectors = record.vector.ok_or_else(|| {
            RetrieverError::Corrupt(format!("point {} has no vectors", point_key(&record.id)))
        })?;
        batch.push((
            record.id,
            PointStruct::new(record.id, Vectors::from(vectors), payload).into(),
        ));
        Ok(())
    })?;
    // Delete every copy, then write one. Nothing is flushed until all is done, so a crash
    // meanwhile leaves the duplicates on disk (and this repair runs again), not a loss.
    for chunk in batch.chunks(1000) {
        let ids = chunk.iter().map(|(id, _)| *id).collect();
        shard
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints { ids },
            ))
            .map_err(engine)?;
        let points = chunk.iter().map(|(_, p)| p.clone()).collect();
        shard
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
            .map_err(engine)?;
    }
    shard.flush();
    let counted = count(shard, None)?;
    if counted != distinct {
        return Err(RetrieverError::Corrupt(format!(
            "knowledge base `{name}` still counts {counted} points for {distinct} ids after repair"
        )));
    }
    tracing::info!(
        knowledge_base = name,
        points = distinct,
        "duplicate points repaired"
    );
    Ok(())
}

/// Calls `each` on every point (distinct ids, in id order); returns how many there were.
fn scroll_records(
    shard: &EdgeShard,
    with_payload: WithPayloadInterface,
    with_vectors: bool,
    mut each: impl FnMut(qdrant_edge::Record) -> Result<()>,
) -> Result<u64> {
    let mut n = 0;
    let mut offset = None;
    loop {
        let (records, next) = shard
            .scroll(ScrollRequest {
                offset,
                limit: Some(1000),
                filter: None,
                with_payload: Some(with_payload.clone()),
                with_vector: WithVector::Bool(with_vectors),
                order_by: None,
            })
            .map_err(engine)?;
        for r in records {
            n += 1;
            each(r)?;
        }
        match next {
            Some(next) => offset = Some(next),
            None => return Ok(n),
        }
    }
}

fn info_blocking(kb: &Kb) -> Result<KbInfo> {
    Ok(KbInfo {
        meta: kb.meta(),
        passage_count: count(&*kb.shard()?, None)?,
        document_count: kb.documents().len() as u64,
    })
}

/// Every point's payload fields of `fields_wanted`, in pages.
fn scroll_all(shard: &EdgeShard, fields_wanted: &[&str]) -> Result<Vec<PassagePayload>> {
    let with_payload = WithPayloadInterface::Fields(
        fields_wanted
            .iter()
            .map(|f| json_path(f))
            .collect::<Result<Vec<_>>>()?,
    );
    let mut out = Vec::new();
    scroll_records(shard, with_payload, false, |r| {
        out.push(payload_of(r.payload)?);
        Ok(())
    })?;
    Ok(out)
}

/// Every document of a shard, read once when it is opened.
fn document_index(shard: &EdgeShard) -> Result<BTreeMap<String, DocumentInfo>> {
    let payloads = scroll_all(shard, &fields::OF_DOCUMENT)?;
    Ok(group_documents(payloads)
        .into_iter()
        .map(|d| (d.document_id.clone(), d))
        .collect())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RetrieverError::Task(e.to_string()))?
}

#[tonic::async_trait]
impl VectorStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn engine_version(&self) -> String {
        ENGINE_VERSION.to_string()
    }

    async fn create_kb(&self, meta: KbMeta) -> Result<KbInfo> {
        let _admin = self.admin.lock().await;
        if self.get(&meta.name).is_ok() {
            return Err(RetrieverError::KnowledgeBaseExists(meta.name));
        }
        let final_dir = self.dir.join(&meta.name);
        let tmp_dir = self.dir.join(format!(".tmp-{}", Uuid::new_v4()));
        let config = self.edge_config(&meta);
        let kb_meta = meta.clone();
        let kb = blocking(move || {
            if final_dir.exists() {
                return Err(RetrieverError::KnowledgeBaseExists(kb_meta.name));
            }
            let io = |e| RetrieverError::io(format!("cannot create {}", tmp_dir.display()), e);
            std::fs::create_dir_all(tmp_dir.join(SHARD_DIR)).map_err(io)?;
            {
                let shard = EdgeShard::new(&tmp_dir.join(SHARD_DIR), config).map_err(engine)?;
                for (field, kind) in fields::INDEXED {
                    let schema = match kind {
                        IndexKind::Keyword => PayloadSchemaType::Keyword,
                        IndexKind::Integer => PayloadSchemaType::Integer,
                    };
                    shard
                        .update(UpdateOperation::FieldIndexOperation(
                            FieldIndexOperations::CreateIndex(CreateIndex {
                                field_name: json_path(field)?,
                                field_schema: Some(PayloadFieldSchema::FieldType(schema)),
                            }),
                        ))
                        .map_err(engine)?;
                }
                shard.flush();
            }
            write_meta(&tmp_dir, &kb_meta)?;
            sync_dir(&tmp_dir.join(SHARD_DIR))?;
            std::fs::rename(&tmp_dir, &final_dir).map_err(|e| {
                RetrieverError::io(format!("cannot create {}", final_dir.display()), e)
            })?;
            if let Some(parent) = final_dir.parent() {
                sync_dir(parent)?;
            }
            let shard = EdgeShard::load(&final_dir.join(SHARD_DIR), None).map_err(engine)?;
            let kb = Kb::new(kb_meta, final_dir.join(SHARD_DIR), shard, BTreeMap::new());
            kb.dirty.store(false, Ordering::SeqCst);
            Ok(Arc::new(kb))
        })
        .await?;
        self.kbs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(meta.name.clone(), kb);
        tracing::info!(knowledge_base = %meta.name, dimensions = meta.dimensions, "knowledge base created");
        Ok(KbInfo {
            meta,
            passage_count: 0,
            document_count: 0,
        })
    }

    async fn list_kbs(&self) -> Result<Vec<KbInfo>> {
        let kbs: Vec<Arc<Kb>> = self
            .kbs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        blocking(move || kbs.iter().map(|kb| info_blocking(kb)).collect()).await
    }

    async fn kb_names(&self) -> Result<Vec<String>> {
        Ok(self
            .kbs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect())
    }

    async fn describe_kb(&self, name: &str) -> Result<KbInfo> {
        let kb = self.get(name)?;
        blocking(move || info_blocking(&kb)).await
    }

    async fn kb_meta(&self, name: &str) -> Result<KbMeta> {
        Ok(self.get(name)?.meta())
    }

    async fn set_adapter(&self, name: &str, binding: AdapterBinding) -> Result<KbMeta> {
        let _admin = self.admin.lock().await;
        let kb = self.get(name)?;
        let dir = self.dir.join(name);
        blocking(move || {
            let mut meta = kb.meta();
            binding.apply(&mut meta);
            // On disk first: the binding in memory is never one a restart would lose.
            write_meta(&dir, &meta)?;
            *kb.meta.write().unwrap_or_else(|e| e.into_inner()) = meta.clone();
            Ok(meta)
        })
        .await
    }

    async fn delete_kb(&self, name: &str) -> Result<u64> {
        let _admin = self.admin.lock().await;
        let kb = self
            .kbs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| RetrieverError::KnowledgeBaseNotFound(name.to_string()))?;
        let dir = self.dir.join(name);
        let graveyard = self.dir.join(format!(".deleting-{}", Uuid::new_v4()));
        blocking(move || {
            let passages = {
                let _writes = kb.lock_writes();
                count(&*kb.shard()?, None)?
            };
            // Searches still holding the shard keep working on its open files.
            drop(kb);
            std::fs::rename(&dir, &graveyard)
                .map_err(|e| RetrieverError::io(format!("cannot delete {}", dir.display()), e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            std::fs::remove_dir_all(&graveyard).map_err(|e| {
                RetrieverError::io(format!("cannot remove {}", graveyard.display()), e)
            })?;
            Ok(passages)
        })
        .await
    }

    async fn upsert(
        &self,
        kb: &str,
        points: Vec<PointRecord>,
        stale: Vec<StaleChunks>,
    ) -> Result<UpsertOutcome> {
        let kb = self.get(kb)?;
        on_blocking_thread(move |runtime| upsert_blocking(&kb, points, stale, runtime)).await
    }

    async fn search(&self, kb: &str, spec: SearchSpec) -> Result<Vec<Hit>> {
        let kb = self.get(kb)?;
        on_blocking_thread(move |runtime| {
            let shard = kb.shard()?;
            runtime.block_on(points::search(&*shard, &spec))
        })
        .await
    }

    async fn delete_document(&self, kb: &str, document_id: &str) -> Result<u64> {
        let kb = self.get(kb)?;
        let document_id = document_id.to_string();
        on_blocking_thread(move |runtime| {
            let _writes = kb.lock_writes();
            let n = {
                let shard = kb.shard()?;
                let n = runtime.block_on(points::delete_document(&*shard, &document_id))?;
                if n > 0 {
                    shard.flush();
                }
                n
            };
            kb.documents_mut().remove(&document_id);
            if let Err(e) = compact_wal(&kb) {
                tracing::warn!(knowledge_base = %kb.name, error = %e, "WAL compaction failed");
            }
            Ok(n)
        })
        .await
    }

    async fn set_readers(&self, kb: &str, document_id: &str, readers: Vec<String>) -> Result<u64> {
        let kb = self.get(kb)?;
        let document_id = document_id.to_string();
        on_blocking_thread(move |runtime| {
            let _writes = kb.lock_writes();
            let n = {
                let shard = kb.shard()?;
                let n = runtime.block_on(points::set_readers(&*shard, &document_id, &readers))?;
                if n > 0 {
                    shard.flush();
                    kb.dirty.store(true, Ordering::SeqCst);
                }
                n
            };
            if let Some(doc) = kb.documents_mut().get_mut(&document_id) {
                doc.readers = readers;
            }
            Ok(n)
        })
        .await
    }

    async fn list_documents(&self, kb: &str) -> Result<Vec<DocumentInfo>> {
        Ok(self.get(kb)?.documents().values().cloned().collect())
    }

    async fn list_documents_page(
        &self,
        kb: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>> {
        use std::ops::Bound;
        let kb = self.get(kb)?;
        let documents = kb.documents();
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        Ok(documents
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, d)| d.clone())
            .collect())
    }

    async fn count(&self, kb: &str) -> Result<u64> {
        let kb = self.get(kb)?;
        blocking(move || count(&*kb.shard()?, None)).await
    }
}
