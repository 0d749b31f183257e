//! Handlers of `zhiku.v1.Retriever` (proto/zhiku/v1/retriever.proto).
//!
//! Not built yet: every RPC answers UNIMPLEMENTED with a message saying so; the service
//! already starts, serves health and reflection, so clients and deployments can be wired.

use tonic::{Request, Response, Status};
use zhiku_proto::v1::retriever_server::Retriever;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DeleteDocumentRequest, DeleteDocumentResponse,
    DeleteKnowledgeBaseRequest, DeleteKnowledgeBaseResponse, DescribeKnowledgeBaseRequest,
    KnowledgeBase, ListDocumentsRequest, ListDocumentsResponse, ListKnowledgeBasesRequest,
    ListKnowledgeBasesResponse, RetrieverInfoRequest, RetrieverInfoResponse, SearchRequest,
    SearchResponse, UpsertRequest, UpsertResponse,
};
use zhiku_runtime::error::unimplemented;

const SERVICE: &str = "zhiku.v1.Retriever";

/// Why nothing works yet, appended to every UNIMPLEMENTED message.
pub const NOT_BUILT: &str =
    "the retriever (Qdrant storage and search) is not built yet: see issue 3";

fn not_built(rpc: &str) -> Status {
    let status = unimplemented(SERVICE, rpc);
    Status::unimplemented(format!("{}; {NOT_BUILT}", status.message()))
}

#[derive(Debug, Clone, Default)]
pub struct RetrieverApi;

#[tonic::async_trait]
impl Retriever for RetrieverApi {
    async fn create_knowledge_base(
        &self,
        _request: Request<CreateKnowledgeBaseRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        Err(not_built("CreateKnowledgeBase"))
    }

    async fn list_knowledge_bases(
        &self,
        _request: Request<ListKnowledgeBasesRequest>,
    ) -> Result<Response<ListKnowledgeBasesResponse>, Status> {
        Err(not_built("ListKnowledgeBases"))
    }

    async fn describe_knowledge_base(
        &self,
        _request: Request<DescribeKnowledgeBaseRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        Err(not_built("DescribeKnowledgeBase"))
    }

    async fn delete_knowledge_base(
        &self,
        _request: Request<DeleteKnowledgeBaseRequest>,
    ) -> Result<Response<DeleteKnowledgeBaseResponse>, Status> {
        Err(not_built("DeleteKnowledgeBase"))
    }

    async fn upsert(
        &self,
        _request: Request<UpsertRequest>,
    ) -> Result<Response<UpsertResponse>, Status> {
        Err(not_built("Upsert"))
    }

    async fn search(
        &self,
        _request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        Err(not_built("Search"))
    }

    async fn delete_document(
        &self,
        _request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        Err(not_built("DeleteDocument"))
    }

    async fn list_documents(
        &self,
        _request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        Err(not_built("ListDocuments"))
    }

    async fn info(
        &self,
        _request: Request<RetrieverInfoRequest>,
    ) -> Result<Response<RetrieverInfoResponse>, Status> {
        Err(not_built("Info"))
    }
}
