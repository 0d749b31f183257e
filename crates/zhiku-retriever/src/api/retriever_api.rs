//! Handlers of `zhiku.v1.Retriever` (proto/zhiku/v1/retriever.proto): each unwraps the
//! request, calls [`Retriever`] and maps its error with the runtime's one mapping.

use tonic::{Request, Response, Status};
use zhiku_proto::v1::retriever_server::Retriever as RetrieverService;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DeleteDocumentRequest, DeleteDocumentResponse,
    DeleteKnowledgeBaseRequest, DeleteKnowledgeBaseResponse, DescribeKnowledgeBaseRequest,
    KnowledgeBase, ListDocumentsRequest, ListDocumentsResponse, ListKnowledgeBasesRequest,
    ListKnowledgeBasesResponse, RetrieverInfoRequest, RetrieverInfoResponse, SearchRequest,
    SearchResponse, SetKnowledgeBaseAdapterRequest, UpsertRequest, UpsertResponse,
};
use zhiku_runtime::Ready;
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
        _request: Request<ListKnowledgeBasesRequest>,
    ) -> Result<Response<ListKnowledgeBasesResponse>, Status> {
        let r = self.retriever.get()?;
        reply(r.list_knowledge_bases().await)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().name))]
    async fn describe_knowledge_base(
        &self,
        request: Request<DescribeKnowledgeBaseRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        let r = self.retriever.get()?;
        let request = request.into_inner();
        reply(
            r.describe_knowledge_base(&request.name, request.metadata_only)
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
        reply(r.upsert(request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().knowledge_base))]
    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let r = self.retriever.get()?;
        let started = std::time::Instant::now();
        let result = r.search(request.into_inner()).await;
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
        reply(r.delete_document(request.into_inner()).await)
    }

    #[tracing::instrument(skip_all, fields(kb = %request.get_ref().knowledge_base))]
    async fn list_documents(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let r = self.retriever.get()?;
        reply(r.list_documents(request.into_inner()).await)
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
}
