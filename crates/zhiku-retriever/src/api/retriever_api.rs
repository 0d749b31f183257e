//! Handlers of `zhiku.v1.Retriever` (proto/zhiku/v1/retriever.proto): each unwraps the
//! request, calls [`Retriever`] and maps its error with the runtime's one mapping.

use tonic::{Request, Response, Status};
use zhiku_proto::v1::retriever_server::Retriever as RetrieverService;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DeleteDocumentRequest, DeleteDocumentResponse,
    DeleteKnowledgeBaseRequest, DeleteKnowledgeBaseResponse, DescribeKnowledgeBaseRequest,
    KnowledgeBase, ListDocumentsRequest, ListDocumentsResponse, ListKnowledgeBasesRequest,
    ListKnowledgeBasesResponse, RetrieverInfoRequest, RetrieverInfoResponse, SearchRequest,
    SearchResponse, SetDocumentReadersRequest, SetDocumentReadersResponse,
    SetKnowledgeBaseAdapterRequest, UpsertRequest, UpsertResponse,
};
use zhiku_runtime::Ready;
use zhiku_runtime::auth::{caller, confine_scope, require_kb, sees_readers};
use zhiku_runtime::error::to_status;

use crate::knowledge::Retriever;

#[derive(Clone)]
pub struct RetrieverApi {
    retriever: Ready<Retriever>,
}

impl RetrieverApi {
    pub fn new(retriever: Ready<Retriever>) -> Self {
        Self { retriever }
    }
}

/// The audit line of a Search (target `zhiku::audit`): who, where, which documents.
fn audit_search(
    caller: Option<&zhiku_runtime::auth::Principal>,
    knowledge_base: &str,
    result: &crate::error::Result<SearchResponse>,
) {
    let mut documents: Vec<&str> = match result {
        Ok(response) => response
            .hits
            .iter()
            .filter_map(|h| h.passage.as_ref().map(|p| p.document_id.as_str()))
            .collect(),
        Err(_) => Vec::new(),
    };
    documents.sort_unstable();
    documents.dedup();
    tracing::info!(
        target: "zhiku::audit",
        action = "search",
        principal = caller.map_or("anonymous", |p| p.name.as_str()),
        knowledge_base,
        documents = ?documents,
        request_id = %zhiku_runtime::request_id::current().unwrap_or_default(),
        outcome = if result.is_ok() { "ok" } else { "failed" },
        "audit"
    );
}

fn reply<T>(result: crate::error::Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| to_status(&e))
}

#[tonic::async_trait]
impl RetrieverService for RetrieverApi {
    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().name))]
    async fn create_knowledge_base(
        &self,
        request: Request<CreateKnowledgeBaseRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        let r = self.retriever.get()?;
        reply(r.create_knowledge_base(request.into_inner()).await)
    }

    async fn list_knowledge_bases(
        &self,
        request: Request<ListKnowledgeBasesRequest>,
    ) -> Result<Response<ListKnowledgeBasesResponse>, Status> {
        let r = self.retriever.get()?;
        let principal = caller(&request);
        let mut request = request.into_inner();
        confine_scope(principal.as_deref(), &mut request.readable_by);
        let mut response = r.list_knowledge_bases(request.readable_by).await;
        if let (Some(p), Ok(list)) = (principal.as_deref(), &mut response) {
            list.knowledge_bases.retain(|kb| p.may_use(&kb.name));
        }
        reply(response)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().name))]
    async fn describe_knowledge_base(
        &self,
        request: Request<DescribeKnowledgeBaseRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        let r = self.retriever.get()?;
        let principal = caller(&request);
        require_kb(principal.as_deref(), &request.get_ref().name)?;
        let mut request = request.into_inner();
        confine_scope(principal.as_deref(), &mut request.readable_by);
        reply(
            r.describe_knowledge_base(&request.name, request.metadata_only, request.readable_by)
                .await,
        )
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().name))]
    async fn delete_knowledge_base(
        &self,
        request: Request<DeleteKnowledgeBaseRequest>,
    ) -> Result<Response<DeleteKnowledgeBaseResponse>, Status> {
        let r = self.retriever.get()?;
        reply(r.delete_knowledge_base(&request.into_inner().name).await)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().knowledge_base, passages = request.get_ref().passages.len()))]
    async fn upsert(
        &self,
        request: Request<UpsertRequest>,
    ) -> Result<Response<UpsertResponse>, Status> {
        let r = self.retriever.get()?;
        require_kb(
            caller(&request).as_deref(),
            &request.get_ref().knowledge_base,
        )?;
        reply(r.upsert(request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().knowledge_base))]
    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let r = self.retriever.get()?;
        let principal = caller(&request);
        require_kb(principal.as_deref(), &request.get_ref().knowledge_base)?;
        let mut request = request.into_inner();
        // Groups forwarded by a caller that may not vouch for them give way to its own.
        let filter = request.filter.get_or_insert_default();
        confine_scope(principal.as_deref(), &mut filter.readable_by);
        let knowledge_base = request.knowledge_base.clone();
        let started = std::time::Instant::now();
        let result = r.search(request).await;
        audit_search(principal.as_deref(), &knowledge_base, &result);
        zhiku_runtime::metrics::metrics().stage(
            zhiku_runtime::metrics::stage::SEARCH,
            started.elapsed().as_secs_f64(),
        );
        reply(result)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().knowledge_base))]
    async fn delete_document(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let r = self.retriever.get()?;
        require_kb(
            caller(&request).as_deref(),
            &request.get_ref().knowledge_base,
        )?;
        reply(r.delete_document(request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().knowledge_base))]
    async fn list_documents(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let r = self.retriever.get()?;
        let principal = caller(&request);
        require_kb(principal.as_deref(), &request.get_ref().knowledge_base)?;
        let mut request = request.into_inner();
        confine_scope(principal.as_deref(), &mut request.readable_by);
        let mut listed = r.list_documents(request).await;
        if let Ok(list) = &mut listed
            && !sees_readers(principal.as_deref())
        {
            list.documents.iter_mut().for_each(|d| d.readers.clear());
        }
        reply(listed)
    }

    async fn info(
        &self,
        _request: Request<RetrieverInfoRequest>,
    ) -> Result<Response<RetrieverInfoResponse>, Status> {
        let r = self.retriever.get()?;
        reply(r.info().await)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().name))]
    async fn set_knowledge_base_adapter(
        &self,
        request: Request<SetKnowledgeBaseAdapterRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        let r = self.retriever.get()?;
        reply(r.set_knowledge_base_adapter(request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().knowledge_base))]
    async fn set_document_readers(
        &self,
        request: Request<SetDocumentReadersRequest>,
    ) -> Result<Response<SetDocumentReadersResponse>, Status> {
        let r = self.retriever.get()?;
        require_kb(
            caller(&request).as_deref(),
            &request.get_ref().knowledge_base,
        )?;
        reply(r.set_document_readers(request.into_inner()).await)
    }
}
