//! Handlers of `zhiku.v1.Orchestrator` (proto/zhiku/v1/orchestrator.proto).
//!
//! Not built yet: every RPC answers UNIMPLEMENTED with a message saying so; the service
//! already starts, serves health and reflection, so clients and deployments can be wired.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};
use zhiku_proto::v1::orchestrator_server::Orchestrator;
use zhiku_proto::v1::{
    AskEvent, AskRequest, CreateKnowledgeBaseRequest, DeleteDocumentRequest,
    DeleteDocumentResponse, DeleteKnowledgeBaseRequest, DeleteKnowledgeBaseResponse,
    DescribeKnowledgeBaseRequest, IngestEvent, IngestRequest, KnowledgeBase, ListDocumentsRequest,
    ListDocumentsResponse, ListKnowledgeBasesRequest, ListKnowledgeBasesResponse,
};
use zhiku_runtime::error::unimplemented;

const SERVICE: &str = "zhiku.v1.Orchestrator";

/// Why nothing works yet, appended to every UNIMPLEMENTED message.
pub const NOT_BUILT: &str =
    "the orchestrator (ingest and ask pipelines) is not built yet: see issue 5";

fn not_built(rpc: &str) -> Status {
    let status = unimplemented(SERVICE, rpc);
    Status::unimplemented(format!("{}; {NOT_BUILT}", status.message()))
}

#[derive(Debug, Clone, Default)]
pub struct OrchestratorApi;

type IngestStreamType = Pin<Box<dyn Stream<Item = Result<IngestEvent, Status>> + Send>>;
type AskStreamType = Pin<Box<dyn Stream<Item = Result<AskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Orchestrator for OrchestratorApi {
    type IngestStream = IngestStreamType;

    async fn ingest(
        &self,
        _request: Request<IngestRequest>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        Err(not_built("Ingest"))
    }

    type AskStream = AskStreamType;

    async fn ask(
        &self,
        _request: Request<AskRequest>,
    ) -> Result<Response<Self::AskStream>, Status> {
        Err(not_built("Ask"))
    }

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

    async fn list_documents(
        &self,
        _request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        Err(not_built("ListDocuments"))
    }

    async fn delete_document(
        &self,
        _request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        Err(not_built("DeleteDocument"))
    }
}
