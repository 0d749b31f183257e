//! REST for knowledge bases and their documents, over the same pipelines as the gRPC
//! `zhiku.v1.Orchestrator` calls:
//!
//! | route | gRPC |
//! |---|---|
//! | `GET /v1/knowledge_bases` | ListKnowledgeBases |
//! | `POST /v1/knowledge_bases` `{"name", "description"?, "dimensions"?}` | CreateKnowledgeBase |
//! | `GET /v1/knowledge_bases/NAME` | DescribeKnowledgeBase |
//! | `DELETE /v1/knowledge_bases/NAME` | DeleteKnowledgeBase |
//! | `GET /v1/knowledge_bases/NAME/documents` | ListDocuments (every page) |
//! | `POST /v1/knowledge_bases/NAME/documents` (multipart) | Ingest |
//! | `DELETE /v1/knowledge_bases/NAME/documents/ID` | DeleteDocument |
//! | `PUT /v1/knowledge_bases/NAME/adapter` `{"adapter"?, "adapter_path"?, "provenance"?}` | BindAdapter |
//! | `DELETE /v1/knowledge_bases/NAME/adapter` `?unload=true` | UnbindAdapter |
//!
//! An upload is `multipart/form-data`: every part with a file name is a document (its
//! name picks the loader); the text fields `chunk_size` and `overlap` set the splitter. The
//! knowledge base is created when missing. With `Accept: application/x-ndjson` the progress
//! streams, one JSON object a line (`{"file": …}` per step of each file, then
//! `{"summary": …}`, or `{"error": …}`); otherwise one JSON object answers at the end with
//! each file's last step and the summary. A file that fails is reported (stage `failed`,
//! with its error) and the others go on.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::multipart::Multipart;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;
use zhiku_proto::v1::{
    AdapterEvalFigures, AdapterProvenance, BindAdapterRequest, CreateKnowledgeBaseRequest,
    DeleteDocumentRequest, DeleteKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, Distance,
    DocumentInput, FileProgress, IngestRequest, IngestStage, IngestSummary, KnowledgeBase,
    ListDocumentsRequest, ListKnowledgeBasesRequest, SplitOptions, UnbindAdapterRequest,
    ingest_event,
};

use super::{ApiError, HttpState, Json};
use crate::access::{Audit, HttpCaller, http_principal, may_create, require_kb, spawn_audited};
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use zhiku_runtime::auth::confine_scope;

fn kb_json(kb: &KnowledgeBase) -> Value {
    json!({
        "name": kb.name,
        "dimensions": kb.dimensions,
        "distance": match Distance::try_from(kb.distance) {
            Ok(Distance::Dot) => "dot",
            Ok(Distance::Euclid) => "euclid",
            _ => "cosine",
        },
        "description": kb.description,
        "adapter": kb.adapter,
        "adapter_path": kb.adapter_path,
        "adapter_provenance": kb.adapter_provenance.as_ref().map(provenance_json),
        "passage_count": kb.passage_count,
        "document_count": kb.document_count,
        "created_at_ms": kb.created_at_ms,
    })
}

fn figures_json(f: &AdapterEvalFigures) -> Value {
    json!({
        "answerable": f.answerable,
        "unanswerable": f.unanswerable,
        "correct": f.correct,
        "false_refusals": f.false_refusals,
        "abstained": f.abstained,
    })
}

fn provenance_json(p: &AdapterProvenance) -> Value {
    json!({
        "data_file": p.data_file,
        "base_model": p.base_model,
        "base_sha256": p.base_sha256,
        "bound_at_ms": p.bound_at_ms,
        "eval_file": p.eval_file,
        "with_adapter": p.with_adapter.as_ref().map(figures_json),
        "without_adapter": p.without_adapter.as_ref().map(figures_json),
        "forced": p.forced,
    })
}

/// `AdapterEvalFigures` as JSON gives them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FiguresBody {
    pub answerable: u32,
    pub unanswerable: u32,
    pub correct: u32,
    pub false_refusals: u32,
    pub abstained: u32,
}

impl From<FiguresBody> for AdapterEvalFigures {
    fn from(f: FiguresBody) -> Self {
        AdapterEvalFigures {
            answerable: f.answerable,
            unanswerable: f.unanswerable,
            correct: f.correct,
            false_refusals: f.false_refusals,
            abstained: f.abstained,
        }
    }
}

/// `AdapterProvenance` as JSON gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProvenanceBody {
    pub data_file: String,
    pub base_model: String,
    pub base_sha256: String,
    pub eval_file: String,
    pub with_adapter: Option<FiguresBody>,
    pub without_adapter: Option<FiguresBody>,
    pub forced: bool,
}

/// The body of `PUT /v1/knowledge_bases/NAME/adapter`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BindAdapter {
    pub adapter: String,
    pub adapter_path: String,
    pub provenance: Option<ProvenanceBody>,
}

pub async fn bind_adapter(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    Json(request): Json<BindAdapter>,
) -> Result<Response, ApiError> {
    let provenance = request.provenance.map(|p| AdapterProvenance {
        data_file: p.data_file,
        base_model: p.base_model,
        base_sha256: p.base_sha256,
        eval_file: p.eval_file,
        with_adapter: p.with_adapter.map(Into::into),
        without_adapter: p.without_adapter.map(Into::into),
        forced: p.forced,
        bound_at_ms: 0,
    });
    let kb = state
        .orchestrator()?
        .bind_adapter(
            BindAdapterRequest {
                knowledge_base: name,
                adapter: request.adapter,
                adapter_path: request.adapter_path,
                provenance,
            },
            Deadline::default(),
        )
        .await?;
    Ok(Json(kb_json(&kb)).into_response())
}

pub async fn unbind_adapter(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let mut unload = false;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair {
            "unload=true" | "unload=1" | "unload" => unload = true,
            "unload=false" | "unload=0" => unload = false,
            other => {
                return Err(ApiError::invalid(
                    "unload",
                    format!("`{other}`: the only parameter is unload=true or unload=false"),
                ));
            }
        }
    }
    let kb = state
        .orchestrator()?
        .unbind_adapter(
            UnbindAdapterRequest {
                knowledge_base: name,
                unload,
            },
            Deadline::default(),
        )
        .await?;
    Ok(Json(kb_json(&kb)).into_response())
}

fn stage_name(stage: i32) -> &'static str {
    match IngestStage::try_from(stage) {
        Ok(IngestStage::Loaded) => "loaded",
        Ok(IngestStage::Split) => "split",
        Ok(IngestStage::Embedded) => "embedded",
        Ok(IngestStage::Stored) => "stored",
        Ok(IngestStage::Failed) => "failed",
        _ => "unspecified",
    }
}

fn progress_json(f: &FileProgress) -> Value {
    json!({
        "source": f.source,
        "document_id": f.document_id,
        "stage": stage_name(f.stage),
        "chunks": f.chunks,
        "done": f.done,
        "error": f.error,
    })
}

fn summary_json(s: &IngestSummary) -> Value {
    json!({
        "files_total": s.files_total,
        "files_ingested": s.files_ingested,
        "files_failed": s.files_failed,
        "passages_stored": s.passages_stored,
        "elapsed_ms": s.elapsed_ms,
        "errors": s.errors,
    })
}

pub async fn list_knowledge_bases(
    State(state): State<HttpState>,
    caller: HttpCaller,
) -> Result<Response, ApiError> {
    let principal = http_principal(&caller);
    // A reader's counts are of what it may read.
    let mut request = ListKnowledgeBasesRequest::default();
    confine_scope(principal, &mut request.readable_by);
    let kbs = state
        .retriever(|mut c| async move { c.list_knowledge_bases(request).await })
        .await?
        .knowledge_bases;
    let data: Vec<Value> = kbs
        .iter()
        .filter(|kb| principal.is_none_or(|p| p.may_use(&kb.name)))
        .map(kb_json)
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CreateKnowledgeBase {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// 0 or unset: the embedder's.
    #[serde(default)]
    pub dimensions: u32,
}

pub async fn create_knowledge_base(
    State(state): State<HttpState>,
    Json(request): Json<CreateKnowledgeBase>,
) -> Result<Response, ApiError> {
    let kb = state
        .orchestrator()?
        .create_knowledge_base(
            CreateKnowledgeBaseRequest {
                name: request.name,
                dimensions: request.dimensions,
                description: request.description,
                ..Default::default()
            },
            Deadline::default(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(kb_json(&kb))).into_response())
}

pub async fn describe_knowledge_base(
    State(state): State<HttpState>,
    caller: HttpCaller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let principal = http_principal(&caller);
    require_kb(principal, &name)?;
    let mut request = DescribeKnowledgeBaseRequest {
        name,
        metadata_only: false,
        ..Default::default()
    };
    confine_scope(principal, &mut request.readable_by);
    let kb = state
        .retriever(|mut c| async move { c.describe_knowledge_base(request).await })
        .await?;
    Ok(Json(kb_json(&kb)).into_response())
}

pub async fn delete_knowledge_base(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let request = DeleteKnowledgeBaseRequest { name: name.clone() };
    let deleted = state
        .retriever(|mut c| async move { c.delete_knowledge_base(request).await })
        .await?;
    Ok(Json(json!({
        "name": name,
        "deleted": true,
        "deleted_passages": deleted.deleted_passages,
    }))
    .into_response())
}

/// Every document, page after page.
pub async fn list_documents(
    State(state): State<HttpState>,
    caller: HttpCaller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let principal = http_principal(&caller);
    require_kb(principal, &name)?;
    let mut readable_by = None;
    zhiku_runtime::auth::confine_scope(principal, &mut readable_by);
    let sees_readers = zhiku_runtime::auth::sees_readers(principal);
    let mut data = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListDocumentsRequest {
            readable_by: readable_by.clone(),
            knowledge_base: name.clone(),
            page_size: 1000,
            page_token,
        };
        let page = state
            .retriever(|mut c| async move { c.list_documents(request).await })
            .await?;
        data.extend(page.documents.iter().map(|d| {
            let mut doc = json!({
                "document_id": d.document_id,
                "source": d.source,
                "chunk_count": d.chunk_count,
                "metadata": d.metadata.iter().collect::<BTreeMap<_, _>>(),
            });
            // Who may read it: for admins and editors only (absent, not "everyone", for a
            // reader).
            if sees_readers {
                doc["readers"] = json!(d.readers);
            }
            doc
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn delete_document(
    State(state): State<HttpState>,
    caller: HttpCaller,
    Path((name, document_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let principal = http_principal(&caller);
    require_kb(principal, &name)?;
    let mut audit = Audit::new("delete", principal, &name);
    audit.document(&document_id);
    let request = DeleteDocumentRequest {
        knowledge_base: name,
        document_id: document_id.clone(),
    };
    let deleted = state
        .retriever(|mut c| async move { c.delete_document(request).await })
        .await
        .inspect_err(|_| audit.failed())?;
    if deleted.deleted_passages == 0 {
        return Err(OrchestratorError::NotFound(format!(
            "document `{document_id}` is not in the knowledge base"
        ))
        .into());
    }
    Ok(Json(json!({
        "document_id": document_id,
        "deleted": true,
        "deleted_passages": deleted.deleted_passages,
    }))
    .into_response())
}

fn field_number(param: &'static str, text: &str) -> Result<u32, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::invalid(param, format!("`{param}` `{text}` is not a number")))
}

/// Reads the documents, the splitter's fields and the reader groups (`readers`,
/// comma-separated) of an upload.
async fn read_upload(
    mut multipart: Multipart,
) -> Result<(Vec<DocumentInput>, SplitOptions, Vec<String>), ApiError> {
    let mut documents = Vec::new();
    let mut split = SplitOptions::default();
    let mut readers = Vec::new();
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(e.body_text())
        } else {
            ApiError::bad_body(format!("multipart upload: {}", e.body_text()))
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        match field.file_name().map(str::to_owned) {
            Some(file_name) => {
                let content = field.bytes().await.map_err(bad)?;
                documents.push(DocumentInput {
                    file_name,
                    content: content.to_vec(),
                    ..Default::default()
                });
            }
            None => {
                let text = field.text().await.map_err(bad)?;
                match name.as_str() {
                    "chunk_size" => split.chunk_size = field_number("chunk_size", &text)?,
                    "overlap" => split.overlap = Some(field_number("overlap", &text)?),
                    "readers" => readers.extend(
                        text.split(',')
                            .map(str::trim)
                            .filter(|g| !g.is_empty())
                            .map(str::to_owned),
                    ),
                    _ => {}
                }
            }
        }
    }
    if documents.is_empty() {
        return Err(ApiError::invalid(
            "files",
            "the upload holds no file (a multipart part with a file name)",
        ));
    }
    Ok((documents, split, readers))
}

pub async fn upload_documents(
    State(state): State<HttpState>,
    caller: HttpCaller,
    known: Option<axum::Extension<zhiku_runtime::auth::KnownGroups>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Result<Response, ApiError> {
    let principal = http_principal(&caller);
    require_kb(principal, &name)?;
    let orchestrator = state.orchestrator()?;
    let (documents, split, readers) = read_upload(multipart).await?;
    crate::access::check_readers(known.as_ref().map(|axum::Extension(k)| k), [&readers])?;
    let audit = Audit::new("ingest", principal, &name);
    let request = IngestRequest {
        knowledge_base: name,
        documents,
        split: Some(split),
        // Creating a knowledge base is an admin's.
        create_if_missing: may_create(principal),
        readers,
        ..Default::default()
    };
    let mut events = spawn_audited(
        move |tx| async move { orchestrator.ingest(request, Deadline::default(), tx).await },
        audit,
    );
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if streamed {
        let lines = ReceiverStream::new(events).map(|event| {
            let value = match event {
                Ok(event) => match event.event {
                    Some(ingest_event::Event::File(f)) => json!({"file": progress_json(&f)}),
                    Some(ingest_event::Event::Summary(s)) => json!({"summary": summary_json(&s)}),
                    None => json!({}),
                },
                Err(e) => ApiError::from(e).body(),
            };
            Ok::<_, std::convert::Infallible>(format!("{value}\n"))
        });
        return Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(lines),
        )
            .into_response());
    }
    // Each file's last step, in the order the files came.
    let mut files: Vec<FileProgress> = Vec::new();
    while let Some(event) = events.recv().await {
        match event?.event {
            Some(ingest_event::Event::File(f)) => {
                match files.iter_mut().find(|g| g.source == f.source) {
                    Some(slot) => *slot = f,
                    None => files.push(f),
                }
            }
            Some(ingest_event::Event::Summary(s)) => {
                return Ok(Json(json!({
                    "files": files.iter().map(progress_json).collect::<Vec<_>>(),
                    "summary": summary_json(&s),
                }))
                .into_response());
            }
            None => {}
        }
    }
    Err(OrchestratorError::Internal("the ingest ended without a summary".into()).into())
}
