//! The ingest pipeline: load → split → embed → upsert, with progress streamed per file.

use std::time::Instant;

use futures::{FutureExt, StreamExt};

use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, Distance, EmbedKind, EmbedRequest,
    EmbedderInfoRequest, FileProgress, IngestEvent, IngestRequest, IngestStage, IngestSummary,
    OcrMode, Passage, RecognizeRequest, UpsertRequest, ingest_event,
};
use zhiku_text::walk::check_unique_ids;
use zhiku_text::{
    Document, Format, LoadError, Loaded, PageText, PassageSplitter, Scan, ScanLimits,
    SplitterConfig, WalkedFile,
};

use crate::config::OcrSetting;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::{Events, Orchestrator};

/// Passages per Upsert call.
const UPSERT_BATCH: usize = 256;
/// Embed calls of one file in flight at once.
const EMBEDS_IN_FLIGHT: usize = 2;
/// Files loaded and split ahead of the one embedding (each still waits for a load permit).
const LOADS_AHEAD: usize = 4;

/// The passage metadata keys: the page a paged document's passage starts on (from 1), and
/// for OCR text the recogniser's confidence (0 to 1): its page's, or for a DOCX's pictures
/// the mean over the picture text in the passage.
pub const PAGE_KEY: &str = "page";
pub const OCR_CONFIDENCE_KEY: &str = "ocr_confidence";

/// One file to ingest, inline or from disk.
struct Source {
    name: String,
    document_id: String,
    metadata: std::collections::HashMap<String, String>,
    /// Its reader groups, checked and sorted (empty: everyone).
    readers: Vec<String>,
    content: Content,
}

enum Content {
    Bytes(Vec<u8>),
    File(WalkedFile),
    /// A path that could not be walked; reported as a failed file.
    Failed(String),
}

/// What an ingest will do: its files, the splitter, and what the walk left out.
struct Plan {
    sources: Vec<Source>,
    splitter: PassageSplitter,
    skipped: Vec<String>,
}

impl Orchestrator {
    /// Checks the request and resolves its files; errors here fail the whole call, before
    /// anything is written.
    async fn plan_ingest(&self, request: &mut IngestRequest) -> Result<Plan, OrchestratorError> {
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

        let readers_of = |readers: Vec<String>, what: &str| {
            zhiku_runtime::auth::normalize_readers(readers, what)
                .map_err(OrchestratorError::Validation)
        };
        let call_readers = readers_of(std::mem::take(&mut request.readers), "`readers`")?;
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
                readers: if doc.readers.is_empty() {
                    call_readers.clone()
                } else {
                    readers_of(doc.readers, &format!("`documents[{i}].readers`"))?
                },
                name: doc.file_name,
                metadata: doc.metadata,
                content: Content::Bytes(doc.content),
            });
        }
        let mut skipped = Vec::new();
        if !request.paths.is_empty() {
            let walker = self.ingest_walker.clone().ok_or_else(|| {
                OrchestratorError::PermissionDenied(
                    "server-side paths are disabled: start the orchestrator with --ingest-root"
                        .into(),
                )
            })?;
            let paths = std::mem::take(&mut request.paths);
            // Walking is blocking I/O: off the async threads.
            let walk = tokio::task::spawn_blocking(move || walker.walk(&paths))
                .await
                .map_err(|e| OrchestratorError::Internal(format!("the walk failed: {e}")))?
                .map_err(|e| OrchestratorError::Validation(e.to_string()))?;
            for skip in walk.skipped {
                if skip.is_failure() {
                    sources.push(Source {
                        name: skip.path.clone(),
                        document_id: skip.path,
                        metadata: Default::default(),
                        readers: call_readers.clone(),
                        content: Content::Failed(skip.reason.to_string()),
                    });
                } else {
                    skipped.push(skip.to_string());
                }
            }
            for file in walk.files {
                sources.push(Source {
                    name: file.id.clone(),
                    document_id: file.id.clone(),
                    metadata: Default::default(),
                    readers: call_readers.clone(),
                    content: Content::File(file),
                });
            }
        }
        // Two files with one id would replace each other: refuse before writing anything.
        check_unique_ids(
            sources
                .iter()
                .filter(|s| !matches!(s.content, Content::Failed(_)))
                .map(|s| (s.document_id.as_str(), s.name.as_str())),
        )
        .map_err(|e| OrchestratorError::Validation(e.to_string()))?;
        Ok(Plan {
            sources,
            splitter,
            skipped,
        })
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
                metadata_only: true,
                ..Default::default()
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
        self.load_kb_adapter(&mut request, deadline).await?;
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
    pub async fn ingest(
        &self,
        mut request: IngestRequest,
        deadline: Deadline,
        events: Events<IngestEvent>,
    ) {
        let started = Instant::now();
        let plan = self.plan_ingest(&mut request).await;
        let Plan {
            sources,
            splitter,
            skipped,
        } = match plan {
            Ok(p) => p,
            Err(e) => {
                let _ = events.send(Err(e)).await;
                return;
            }
        };
        if let Err(e) = self
            .ensure_knowledge_base(&request.knowledge_base, request.create_if_missing, deadline)
            .await
        {
            let _ = events.send(Err(e)).await;
            return;
        }
        let ocr = self.ocr_mode(request.ocr);
        let mut summary = IngestSummary {
            files_total: sources.len() as u32,
            files_skipped: skipped.len() as u32,
            skipped,
            ..Default::default()
        };
        // A pipeline over the files, in order: the next files load and split on blocking
        // threads while one file embeds, and the previous file's passages are written while
        // this one embeds, so that the embedder, the slowest stage, is seldom idle.
        // Boxed futures made up front (they start only when polled): a stream that holds a
        // borrowing closure is not provably Send.
        let splitter = &splitter;
        let loads: Vec<_> = sources
            .into_iter()
            .map(|source| {
                async move {
                    let passages = self.prepare(&source, splitter, ocr, deadline).await;
                    (source, passages)
                }
                .boxed()
            })
            .collect();
        let mut prepared = futures::stream::iter(loads).buffered(LOADS_AHEAD);
        let mut storing: Option<(Source, Vec<Passage>)> = None;
        loop {
            if events.is_closed() {
                tracing::info!(
                    code = "CANCELLED",
                    "the client went away; the ingest stopped"
                );
                return;
            }
            let embed_next = async {
                match prepared.next().await {
                    None => None,
                    Some((source, Ok(passages))) => {
                        let points = self.embed_file(&source, passages, deadline, &events).await;
                        Some((source, points))
                    }
                    Some((source, Err(failure))) => Some((source, Err(failure))),
                }
            };
            let store_previous = async {
                match storing.take() {
                    None => None,
                    Some((source, points)) => {
                        let stored = self
                            .store_file(&request.knowledge_base, &source, points, deadline, &events)
                            .await;
                        Some((source, stored))
                    }
                }
            };
            let both = async { Ok(tokio::join!(embed_next, store_previous)) };
            let (embedded, stored) = match deadline.run("during the ingest", both).await {
                Ok(both) => both,
                Err(e) => {
                    let _ = events.send(Err(e)).await;
                    return;
                }
            };
            if let Some((source, result)) = stored {
                let recorded = match result {
                    Ok(count) => {
                        summary.files_ingested += 1;
                        summary.passages_stored += count as u64;
                        Ok(())
                    }
                    Err(failure) => record_failure(&mut summary, &source, failure, &events).await,
                };
                if let Err(e) = recorded {
                    let _ = events.send(Err(e)).await;
                    return;
                }
            }
            match embedded {
                // Nothing left to embed, and (so) nothing left to store.
                None => break,
                Some((source, Ok(points))) => storing = Some((source, points)),
                Some((source, Err(failure))) => {
                    if let Err(e) = record_failure(&mut summary, &source, failure, &events).await {
                        let _ = events.send(Err(e)).await;
                        return;
                    }
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

    /// The request's OCR mode, or the orchestrator's --ocr.
    fn ocr_mode(&self, requested: i32) -> zhiku_text::OcrMode {
        match OcrMode::try_from(requested).unwrap_or(OcrMode::Unspecified) {
            OcrMode::Auto => zhiku_text::OcrMode::Auto,
            OcrMode::Images => zhiku_text::OcrMode::Images,
            OcrMode::Always => zhiku_text::OcrMode::Always,
            OcrMode::Off => zhiku_text::OcrMode::Off,
            OcrMode::Unspecified => match self.args.ocr {
                OcrSetting::Auto => zhiku_text::OcrMode::Auto,
                OcrSetting::Images => zhiku_text::OcrMode::Images,
                OcrSetting::Always => zhiku_text::OcrMode::Always,
                OcrSetting::Off => zhiku_text::OcrMode::Off,
            },
        }
    }

    /// Reads, loads (OCR included) and splits one file: its passages, each with its page.
    async fn prepare(
        &self,
        source: &Source,
        splitter: &PassageSplitter,
        ocr: zhiku_text::OcrMode,
        deadline: Deadline,
    ) -> Result<Vec<PagedPassage>, FileFailure> {
        let content = match &source.content {
            Content::Bytes(b) => Ok(b.clone()),
            Content::File(file) => Err(file.clone()),
            Content::Failed(message) => return Err(FileFailure::File(message.clone())),
        };
        let name = source.name.clone();
        let max_file_bytes = self.args.max_file_bytes;
        // Reading, loading (pdf, docx) and splitting are blocking work: off the async threads,
        // and at most --max-parallel-loads files at once (the others wait here).
        let permit = self
            .load_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| FileFailure::File(format!("loading failed: {e}")))?;
        let text_splitter = splitter.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let bytes = match content {
                Ok(bytes) => bytes,
                // The extension is checked first: an unsupported file is never read.
                Err(_) if Format::from_file_name(&name).is_none() => {
                    return Err(LoadError::Unsupported { file: name }.to_string());
                }
                Err(file) => file.read(max_file_bytes).map_err(|e| e.to_string())?,
            };
            let loaded = zhiku_text::load_for_ocr(&name, &bytes, ocr, &ScanLimits::default())
                .map_err(|e| e.to_string())?;
            // A document with text splits here, in the same blocking task.
            Ok(match loaded {
                Loaded::Document(document) => Ok(split(&text_splitter, &document)),
                Loaded::Scan(scan) => Err(scan),
            })
        })
        .await
        .map_err(|e| FileFailure::File(format!("loading failed: {e}")))?
        .map_err(FileFailure::File)?;
        match loaded {
            Ok(passages) => Ok(passages),
            // Every image is read before anything of the file is written.
            Err(scan) => {
                let document = self.read_scan(scan, deadline).await?;
                let splitter = splitter.clone();
                tokio::task::spawn_blocking(move || split(&splitter, &document))
                    .await
                    .map_err(|e| FileFailure::File(format!("splitting failed: {e}")))
            }
        }
    }

    /// Embeds one file's passages, two Embed calls in flight (the next batch waits in the
    /// embedder's queue while one runs): the points to store.
    async fn embed_file(
        &self,
        source: &Source,
        passages: Vec<PagedPassage>,
        deadline: Deadline,
        events: &Events<IngestEvent>,
    ) -> Result<Vec<Passage>, FileFailure> {
        let send = |stage, chunks: usize, done: usize| {
            events.send(Ok(file_event(source, stage, chunks, done, String::new())))
        };
        let _ = send(IngestStage::Loaded, 0, 0).await;
        if passages.is_empty() {
            return Err(FileFailure::File("no text to index".into()));
        }
        let total = passages.len();
        let _ = send(IngestStage::Split, total, total).await;

        // Each passage is embedded and keyword-indexed under its document's title: a passage
        // deep in a README rarely names its project, and the file does.
        let title = zhiku_text::document_title(&source.name);
        let mut vectors = Vec::with_capacity(total);
        let calls: Vec<_> = passages
            .chunks(self.args.embed_batch.max(1))
            .map(|batch| {
                let request = deadline.request(EmbedRequest {
                    texts: batch
                        .iter()
                        .map(|(p, _)| p.indexed_text_under(&title))
                        .collect(),
                    kind: EmbedKind::Passage as i32,
                    ..Default::default()
                });
                let mut embedder = self.downstream.embedder.clone();
                async move { embedder.embed(request).await }.boxed()
            })
            .collect();
        let mut batches = futures::stream::iter(calls).buffered(EMBEDS_IN_FLIGHT);
        while let Some(response) = batches.next().await {
            let response = response
                .map_err(|s| FileFailure::Call(OrchestratorError::downstream("embedder")(s)))?
                .into_inner();
            vectors.extend(response.embeddings.into_iter().map(|e| e.values));
            let _ = send(IngestStage::Embedded, total, vectors.len()).await;
        }
        Ok(passages
            .into_iter()
            .zip(vectors)
            .map(|((p, place), vector)| Passage {
                readers: source.readers.clone(),
                document_id: source.document_id.clone(),
                chunk_index: p.index as u32,
                chunk_count: total as u32,
                heading_path: p.heading(),
                context: p.context(),
                title: title.clone(),
                text: p.text,
                source: source.name.clone(),
                vector,
                char_start: p.char_start as u32,
                char_end: p.char_end as u32,
                metadata: place_metadata(&source.metadata, place),
            })
            .collect())
    }

    /// Writes one file's points: the number stored.
    async fn store_file(
        &self,
        knowledge_base: &str,
        source: &Source,
        points: Vec<Passage>,
        deadline: Deadline,
        events: &Events<IngestEvent>,
    ) -> Result<usize, FileFailure> {
        let total = points.len();
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
        let event = file_event(source, IngestStage::Stored, total, total, String::new());
        let _ = events.send(Ok(event)).await;
        Ok(total)
    }
}

/// A passage and where it came from.
type PagedPassage = (zhiku_text::Passage, PassagePlace);

/// Where a passage lies in its document, as its metadata records it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PassagePlace {
    /// The page it starts on, if its document has pages.
    page: Option<u32>,
    /// The OCR confidence of its text, if OCR read any of it.
    confidence: Option<f32>,
}

fn split(splitter: &PassageSplitter, document: &Document) -> Vec<PagedPassage> {
    splitter
        .split_document(document)
        .into_iter()
        .map(|p| {
            let place = PassagePlace {
                page: document.page_at(p.char_start).map(|page| page.number),
                confidence: document.ocr_confidence(p.char_start, p.char_end),
            };
            (p, place)
        })
        .collect()
}

/// Counts a file that failed and reports it; a failed downstream call is returned, as it
/// ends the whole ingest.
async fn record_failure(
    summary: &mut IngestSummary,
    source: &Source,
    failure: FileFailure,
    events: &Events<IngestEvent>,
) -> Result<(), OrchestratorError> {
    match failure {
        FileFailure::File(message) => {
            summary.files_failed += 1;
            summary.errors.push(format!("{}: {message}", source.name));
            let event = file_event(source, IngestStage::Failed, 0, 0, message);
            let _ = events.send(Ok(event)).await;
            Ok(())
        }
        FileFailure::Call(e) => Err(e),
    }
}

impl Orchestrator {
    /// Reads a scan's images with the embedder's Recognize, one image per call, and puts
    /// its text together. A bad image, or an embedder without OCR, fails the file alone; a
    /// DOCX picture the OCR cannot decode is left out (the document's text stands without
    /// it).
    async fn read_scan(&self, scan: Scan, deadline: Deadline) -> Result<Document, FileFailure> {
        let mut read = std::collections::HashMap::new();
        let mut image_pages = Vec::new();
        let place = if scan.format == Format::Docx {
            "picture"
        } else {
            "page"
        };
        for page in &scan.pages {
            let mut texts = Vec::new();
            let (mut weighted, mut chars) = (0.0f32, 0usize);
            for image in &page.images {
                let response = match self
                    .downstream
                    .embedder
                    .clone()
                    .recognize(deadline.request(RecognizeRequest {
                        images: vec![image.clone()],
                    }))
                    .await
                {
                    Ok(response) => response.into_inner(),
                    Err(status)
                        if scan.format == Format::Docx
                            && status.code() == tonic::Code::InvalidArgument =>
                    {
                        tracing::warn!(
                            file = %scan.source,
                            picture = page.number,
                            "picture left out: {}",
                            status.message()
                        );
                        continue;
                    }
                    Err(status) => {
                        return Err(match status.code() {
                            tonic::Code::InvalidArgument
                            | tonic::Code::FailedPrecondition
                            | tonic::Code::Unimplemented
                            | tonic::Code::ResourceExhausted => FileFailure::File(format!(
                                "OCR of {place} {}: {}",
                                page.number,
                                // One image per call: its index says nothing here.
                                status.message().trim_start_matches("`images[0]`: ")
                            )),
                            _ => {
                                FileFailure::Call(OrchestratorError::downstream("embedder")(status))
                            }
                        });
                    }
                };
                for ocr_page in response.pages {
                    let n = ocr_page.text.chars().count();
                    weighted += ocr_page.confidence * n as f32;
                    chars += n;
                    if scan.format == Format::Image {
                        // The pages of an image file (a multi-page TIFF) are its pages.
                        image_pages.push(PageText {
                            number: image_pages.len() as u32 + 1,
                            text: ocr_page.text.clone(),
                            confidence: Some(ocr_page.confidence),
                        });
                    }
                    texts.push(ocr_page.text);
                }
            }
            let confidence = if chars == 0 {
                0.0
            } else {
                weighted / chars as f32
            };
            read.insert(page.number, (texts.join("\n"), confidence));
        }
        let document = if scan.format == Format::Image {
            Document::from_pages(scan.source, scan.format, image_pages)
        } else {
            scan.into_document(|page| read.remove(&page.number))
        };
        if document.text.trim().is_empty() {
            return Err(FileFailure::File(
                "OCR found no text in its images (blank, or too small or blurred to read)".into(),
            ));
        }
        Ok(document)
    }
}

/// The page a stored passage starts on (its `page` metadata), 0 when it has none.
pub fn page_of(metadata: &std::collections::HashMap<String, String>) -> u32 {
    metadata
        .get(PAGE_KEY)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// A passage's metadata: the document's, with its page and OCR confidence when it has them.
fn place_metadata(
    metadata: &std::collections::HashMap<String, String>,
    place: PassagePlace,
) -> std::collections::HashMap<String, String> {
    let mut metadata = metadata.clone();
    if let Some(page) = place.page {
        metadata.insert(PAGE_KEY.into(), page.to_string());
    }
    if let Some(confidence) = place.confidence {
        metadata.insert(OCR_CONFIDENCE_KEY.into(), format!("{confidence:.3}"));
    }
    metadata
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn passages_of_pages_carry_their_page_and_confidence() {
        let labels = HashMap::from([("team".to_string(), "ops".to_string())]);
        let scanned = PassagePlace {
            page: Some(3),
            confidence: Some(0.9512),
        };
        let metadata = place_metadata(&labels, scanned);
        assert_eq!(metadata["team"], "ops");
        assert_eq!(metadata[PAGE_KEY], "3");
        assert_eq!(metadata[OCR_CONFIDENCE_KEY], "0.951");
        assert_eq!(page_of(&metadata), 3);
        let typed = PassagePlace {
            confidence: None,
            ..scanned
        };
        let metadata = place_metadata(&labels, typed);
        assert!(!metadata.contains_key(OCR_CONFIDENCE_KEY));
        // A DOCX's picture text: a confidence, no page.
        let picture = PassagePlace {
            page: None,
            confidence: Some(0.8),
        };
        let metadata = place_metadata(&labels, picture);
        assert_eq!(metadata[OCR_CONFIDENCE_KEY], "0.800");
        assert!(!metadata.contains_key(PAGE_KEY));
        // Documents without pages keep their labels alone.
        assert_eq!(place_metadata(&labels, PassagePlace::default()), labels);
        assert_eq!(page_of(&labels), 0);
        let garbled = HashMap::from([(PAGE_KEY.to_string(), "x".to_string())]);
        assert_eq!(page_of(&garbled), 0);
    }

    #[tokio::test]
    async fn a_request_s_ocr_mode_overrides_the_flag() {
        let mut args = crate::OrchestratorArgs::local(1, 2, 3);
        assert_eq!(args.ocr, OcrSetting::Auto);
        args.ocr = OcrSetting::Off;
        let orchestrator = Orchestrator::new(args).unwrap();
        assert_eq!(
            orchestrator.ocr_mode(OcrMode::Unspecified as i32),
            zhiku_text::OcrMode::Off
        );
        assert_eq!(
            orchestrator.ocr_mode(OcrMode::Always as i32),
            zhiku_text::OcrMode::Always
        );
        assert_eq!(
            orchestrator.ocr_mode(OcrMode::Auto as i32),
            zhiku_text::OcrMode::Auto
        );
        assert_eq!(
            orchestrator.ocr_mode(OcrMode::Images as i32),
            zhiku_text::OcrMode::Images
        );
        // An unknown value is the flag's.
        assert_eq!(orchestrator.ocr_mode(42), zhiku_text::OcrMode::Off);
    }
}
