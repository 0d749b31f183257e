//! The ingest pipeline: load → split → embed → upsert, with progress streamed per file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::mpsc;
use tonic::Status;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, Distance, EmbedKind, EmbedRequest,
    EmbedderInfoRequest, FileProgress, IngestEvent, IngestRequest, IngestStage, IngestSummary,
    Passage, UpsertRequest, ingest_event,
};
use zhiku_text::{PassageSplitter, SplitterConfig};

use crate::Orchestrator;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;

/// Passages per Upsert call.
const UPSERT_BATCH: usize = 256;

/// One file to ingest, inline or from disk.
struct Source {
    name: String,
    document_id: String,
    metadata: std::collections::HashMap<String, String>,
    content: Content,
}

enum Content {
    Bytes(Vec<u8>),
    Path(PathBuf),
    /// A path that could not be resolved; reported as a failed file.
    Missing(String),
}

type Events = mpsc::Sender<Result<IngestEvent, Status>>;

impl Orchestrator {
    /// Checks the request and resolves its files; errors here fail the whole call.
    fn plan_ingest(
        &self,
        request: &mut IngestRequest,
    ) -> Result<(Vec<Source>, PassageSplitter), OrchestratorError> {
        if request.knowledge_base.is_empty() {
            return Err(OrchestratorError::Validation(
                "`knowledge_base` is empty: name the knowledge base to ingest into".into(),
            ));
        }
        if request.documents.is_empty() && request.paths.is_empty() {
            return Err(OrchestratorError::Validation(
                "nothing to ingest: send `documents` (bytes) or `paths` (server-side files)".into(),
            ));
        }
        let split = request.split.unwrap_or_default();
        let defaults = SplitterConfig::default();
        let config = SplitterConfig {
            chunk_size: if split.chunk_size == 0 {
                defaults.chunk_size
            } else {
                split.chunk_size as usize
            },
            overlap: split
                .overlap
                .map(|o| o as usize)
                .unwrap_or(defaults.overlap),
        };
        let splitter = PassageSplitter::new(config)
            .map_err(|e| OrchestratorError::Validation(format!("`split`: {e}")))?;

        let mut sources = Vec::new();
        for (i, doc) in std::mem::take(&mut request.documents)
            .into_iter()
            .enumerate()
        {
            if doc.file_name.is_empty() {
                return Err(OrchestratorError::Validation(format!(
                    "`documents[{i}].file_name` is empty: it picks the loader (.txt .md .html .pdf .docx .csv)"
                )));
            }
            sources.push(Source {
                document_id: if doc.document_id.is_empty() {
                    doc.file_name.clone()
                } else {
                    doc.document_id
                },
                name: doc.file_name,
                metadata: doc.metadata,
                content: Content::Bytes(doc.content),
            });
        }
        if !request.paths.is_empty() {
            let root = self.ingest_root.as_ref().ok_or_else(|| {
                OrchestratorError::PermissionDenied(
                    "server-side paths are disabled: start the orchestrator with --ingest-root"
                        .into(),
                )
            })?;
            for path in &request.paths {
                let candidate = Path::new(path);
                let candidate = if candidate.is_absolute() {
                    candidate.to_path_buf()
                } else {
                    root.join(candidate)
                };
                match candidate.canonicalize() {
                    Ok(resolved) if resolved.starts_with(root) => {
                        walk(root, &resolved, &mut sources)
                    }
                    Ok(_) => {
                        return Err(OrchestratorError::PermissionDenied(format!(
                            "`{path}` is outside the ingest root {}",
                            root.display()
                        )));
                    }
                    Err(e) => sources.push(Source {
                        name: path.clone(),
                        document_id: path.clone(),
                        metadata: Default::default(),
                        content: Content::Missing(format!("cannot open: {e}")),
                    }),
                }
            }
        }
        Ok((sources, splitter))
    }

    /// Makes sure the knowledge base exists (creating it when asked).
    async fn ensure_knowledge_base(
        &self,
        name: &str,
        create: bool,
        deadline: Deadline,
    ) -> Result<(), OrchestratorError> {
        let mut retriever = self.downstream.retriever.clone();
        match retriever
            .describe_knowledge_base(deadline.request(DescribeKnowledgeBaseRequest {
                name: name.to_owned(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound && create => {
                self.create_knowledge_base(
                    CreateKnowledgeBaseRequest {
                        name: name.to_owned(),
                        dimensions: 0,
                        distance: Distance::Cosine as i32,
                        ..Default::default()
                    },
                    deadline,
                )
                .await?;
                Ok(())
            }
            Err(status) => Err(OrchestratorError::downstream("retriever")(status)),
        }
    }

    /// Creates a knowledge base; dimensions 0 take the embedder's.
    pub async fn create_knowledge_base(
        &self,
        mut request: CreateKnowledgeBaseRequest,
        deadline: Deadline,
    ) -> Result<zhiku_proto::v1::KnowledgeBase, OrchestratorError> {
        if request.dimensions == 0 {
            let info = self
                .downstream
                .embedder
                .clone()
                .info(deadline.request(EmbedderInfoRequest {}))
                .await
                .map_err(OrchestratorError::downstream("embedder"))?
                .into_inner();
            request.dimensions = info.dimensions;
        }
        Ok(self
            .downstream
            .retriever
            .clone()
            .create_knowledge_base(deadline.request(request))
            .await
            .map_err(OrchestratorError::downstream("retriever"))?
            .into_inner())
    }

    /// Runs an ingest, sending progress on `events`. Downstream failures end it with an
    /// error; a file that cannot be read or split is reported and the others go on.
    pub async fn ingest(&self, mut request: IngestRequest, deadline: Deadline, events: Events) {
        let started = Instant::now();
        let plan = self.plan_ingest(&mut request);
        let (sources, splitter) = match plan {
            Ok(p) => p,
            Err(e) => {
                let _ = events.send(Err(e.into())).await;
                return;
            }
        };
        if let Err(e) = self
            .ensure_knowledge_base(&request.knowledge_base, request.create_if_missing, deadline)
            .await
        {
            let _ = events.send(Err(e.into())).await;
            return;
        }
        let mut summary = IngestSummary {
            files_total: sources.len() as u32,
            ..Default::default()
        };
        for source in sources {
            if events.is_closed() {
                return; // the client went away
            }
            let one = self.ingest_one(
                &request.knowledge_base,
                &source,
                &splitter,
                deadline,
                &events,
            );
            let one = match deadline
                .run("during the ingest", async { Ok(one.await) })
                .await
            {
                Ok(result) => result,
                Err(e) => Err(FileFailure::Call(e)),
            };
            match one {
                Ok(stored) => {
                    summary.files_ingested += 1;
                    summary.passages_stored += stored as u64;
                }
                Err(FileFailure::File(message)) => {
                    summary.files_failed += 1;
                    summary.errors.push(format!("{}: {message}", source.name));
                    let _ = events
                        .send(Ok(file_event(&source, IngestStage::Failed, 0, 0, message)))
                        .await;
                }
                Err(FileFailure::Call(e)) => {
                    let _ = events.send(Err(e.into())).await;
                    return;
                }
            }
        }
        summary.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        let _ = events
            .send(Ok(IngestEvent {
                event: Some(ingest_event::Event::Summary(summary)),
            }))
            .await;
    }

    async fn ingest_one(
        &self,
        knowledge_base: &str,
        source: &Source,
        splitter: &PassageSplitter,
        deadline: Deadline,
        events: &Events,
    ) -> Result<usize, FileFailure> {
        let content = match &source.content {
            Content::Bytes(b) => Ok(b.clone()),
            Content::Path(p) => Err(p.clone()),
            Content::Missing(message) => return Err(FileFailure::File(message.clone())),
        };
        let name = source.name.clone();
        let splitter = splitter.clone();
        // Reading, loading (pdf, docx) and splitting are blocking work: off the async threads.
        let passages = tokio::task::spawn_blocking(move || {
            let bytes = match content {
                Ok(bytes) => bytes,
                Err(path) => std::fs::read(&path).map_err(|e| format!("cannot read: {e}"))?,
            };
            let document = zhiku_text::load(&name, &bytes).map_err(|e| e.to_string())?;
            Ok::<_, String>(splitter.split_document(&document))
        })
        .await
        .map_err(|e| FileFailure::File(format!("loading failed: {e}")))?
        .map_err(FileFailure::File)?;
        let send = |stage, chunks: usize, done: usize| {
            events.send(Ok(file_event(source, stage, chunks, done, String::new())))
        };
        let _ = send(IngestStage::Loaded, 0, 0).await;
        if passages.is_empty() {
            return Err(FileFailure::File("no text to index".into()));
        }
        let total = passages.len();
        let _ = send(IngestStage::Split, total, total).await;

        let mut vectors = Vec::with_capacity(total);
        for batch in passages.chunks(self.args.embed_batch.max(1)) {
            let response = self
                .downstream
                .embedder
                .clone()
                .embed(deadline.request(EmbedRequest {
                    texts: batch.iter().map(|p| p.indexed_text()).collect(),
                    kind: EmbedKind::Passage as i32,
                    ..Default::default()
                }))
                .await
                .map_err(|s| FileFailure::Call(OrchestratorError::downstream("embedder")(s)))?
                .into_inner();
            vectors.extend(response.embeddings.into_iter().map(|e| e.values));
            let _ = send(IngestStage::Embedded, total, vectors.len()).await;
        }
        let points: Vec<Passage> = passages
            .iter()
            .zip(vectors)
            .map(|(p, vector)| Passage {
                document_id: source.document_id.clone(),
                chunk_index: p.index as u32,
                chunk_count: total as u32,
                text: p.text.clone(),
                source: source.name.clone(),
                vector,
                heading_path: p.heading(),
                char_start: p.char_start as u32,
                char_end: p.char_end as u32,
                metadata: source.metadata.clone(),
            })
            .collect();
        for batch in points.chunks(UPSERT_BATCH) {
            self.downstream
                .retriever
                .clone()
                .upsert(deadline.request(UpsertRequest {
                    knowledge_base: knowledge_base.to_owned(),
                    passages: batch.to_vec(),
                }))
                .await
                .map_err(|status| match status.code() {
                    // The store refused this document (e.g. wrong dimensions): report it.
                    tonic::Code::InvalidArgument => FileFailure::File(status.message().to_owned()),
                    _ => FileFailure::Call(OrchestratorError::downstream("retriever")(status)),
                })?;
        }
        let _ = send(IngestStage::Stored, total, total).await;
        Ok(total)
    }
}

enum FileFailure {
    /// This file failed; the others go on.
    File(String),
    /// A downstream call failed; the ingest stops.
    Call(OrchestratorError),
}

fn file_event(
    source: &Source,
    stage: IngestStage,
    chunks: usize,
    done: usize,
    error: String,
) -> IngestEvent {
    IngestEvent {
        event: Some(ingest_event::Event::File(FileProgress {
            source: source.name.clone(),
            document_id: source.document_id.clone(),
            stage: stage as i32,
            chunks: chunks as u32,
            done: done as u32,
            error,
        })),
    }
}

/// Adds `path` (a file, or every file below a directory, in name order) to `sources`, with
/// document ids relative to `root`.
fn walk(root: &Path, path: &Path, sources: &mut Vec<Source>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                let name = path.display().to_string();
                sources.push(Source {
                    document_id: name.clone(),
                    name,
                    metadata: Default::default(),
                    content: Content::Missing(format!("cannot list: {e}")),
                });
                return;
            }
        };
        entries.sort();
        for entry in entries {
            // Symlinks could lead outside the root: only real files and directories count.
            match entry.canonicalize() {
                Ok(resolved) if resolved.starts_with(root) => walk(root, &resolved, sources),
                _ => {}
            }
        }
    } else {
        let relative = path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/");
        sources.push(Source {
            name: relative.clone(),
            document_id: relative,
            metadata: Default::default(),
            content: Content::Path(path.to_path_buf()),
        });
    }
}
