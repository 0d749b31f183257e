//! Handlers of `zhiku.v1.Orchestrator` (proto/zhiku/v1/orchestrator.proto): the pipelines
//! stream their events; knowledge-base and document management pass to the retriever.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zhiku_proto::v1::orchestrator_server::Orchestrator as OrchestratorService;
use zhiku_proto::v1::{
    AskEvent, AskRequest, BindAdapterRequest, CreateKnowledgeBaseRequest, DeleteDocumentRequest,
    DeleteDocumentResponse, DeleteKnowledgeBaseRequest, DeleteKnowledgeBaseResponse,
    DescribeKnowledgeBaseRequest, EvaluateEvent, EvaluateRequest, IngestEvent, IngestRequest,
    KnowledgeBase, ListDocumentsRequest, ListDocumentsResponse, ListKnowledgeBasesRequest,
    ListKnowledgeBasesResponse, SetDocumentReadersRequest, SetDocumentReadersResponse,
    UnbindAdapterRequest,
};
use zhiku_runtime::Ready;
use zhiku_runtime::auth::caller;

use crate::Orchestrator;
use crate::access::{Audit, Audited, check_readers, confine_filter, may_create, require_kb};
use crate::downstream::Deadline;
use crate::error::OrchestratorError;

#[derive(Clone)]
pub struct OrchestratorApi {
    state: Ready<Arc<Orchestrator>>,
}

impl OrchestratorApi {
    pub fn new(state: Ready<Arc<Orchestrator>>) -> Self {
        Self { state }
    }

    fn state(&self) -> Result<Arc<Orchestrator>, Status> {
        Ok(crate::loaded(&self.state)?)
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Runs a pipeline on its own task (see [`crate::spawn_pipeline`]), its failure as the
/// stream's last item, mapped to a `Status`. When the client goes away the stream is
/// dropped, the channel closes and the pipeline stops at its next step.
fn spawn_stream<T, F, Fut>(work: F) -> EventStream<T>
where
    T: Send + 'static,
    F: FnOnce(crate::Events<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let events = crate::spawn_pipeline(work);
    Box::pin(ReceiverStream::new(events).map(|event| event.map_err(Status::from)))
}

/// `stream`, its returned or changed documents noted in `audit` (written when it ends).
fn audited<T: Audited + Send + 'static>(
    stream: EventStream<T>,
    mut audit: Audit,
) -> EventStream<T> {
    Box::pin(stream.map(move |item| {
        audit.observe(&item);
        item
    }))
}

type RetrieverClient = zhiku_proto::v1::retriever_client::RetrieverClient<
    tonic::service::interceptor::InterceptedService<
        crate::replicas::ReplicaSet,
        zhiku_runtime::request_id::PropagateRequestId,
    >,
>;

impl OrchestratorApi {
    /// Passes a management call to the retriever, with the caller's deadline.
    async fn via_retriever<Req, Resp, F, Fut>(
        &self,
        request: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(RetrieverClient, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let state = self.state()?;
        let deadline = Deadline::from_request(&request);
        let response = call(
            state.downstream.retriever.clone(),
            deadline.request(request.into_inner()),
        )
        .await
        .map_err(OrchestratorError::downstream("retriever"))?;
        Ok(Response::new(response.into_inner()))
    }
}

#[tonic::async_trait]
impl OrchestratorService for OrchestratorApi {
    type IngestStream = EventStream<IngestEvent>;

    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        let state = self.state()?;
        let deadline = Deadline::from_request(&request);
        let principal = caller(&request);
        let known = request
            .extensions()
            .get::<zhiku_runtime::auth::KnownGroups>()
            .cloned();
        let mut request = request.into_inner();
        require_kb(principal.as_deref(), &request.knowledge_base)?;
        check_readers(
            known.as_ref(),
            std::iter::once(&request.readers).chain(request.documents.iter().map(|d| &d.readers)),
        )?;
        // Creating a knowledge base is an admin's.
        request.create_if_missing &= may_create(principal.as_deref());
        let audit = Audit::new("ingest", principal.as_deref(), &request.knowledge_base);
        let stream =
            spawn_stream(move |tx| async move { state.ingest(request, deadline, tx).await });
        Ok(Response::new(audited(stream, audit)))
    }

    type AskStream = EventStream<AskEvent>;

    async fn ask(&self, request: Request<AskRequest>) -> Result<Response<Self::AskStream>, Status> {
        let state = self.state()?;
        let deadline = Deadline::from_request(&request);
        let principal = caller(&request);
        let mut request = request.into_inner();
        require_kb(principal.as_deref(), &request.knowledge_base)?;
        confine_filter(principal.as_deref(), &mut request.filter);
        let audit = Audit::new("ask", principal.as_deref(), &request.knowledge_base);
        let stream = spawn_stream(move |tx| async move { state.ask(request, deadline, tx).await });
        Ok(Response::new(audited(stream, audit)))
    }

    type EvaluateStream = EventStream<EvaluateEvent>;

    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<Self::EvaluateStream>, Status> {
        let state = self.state()?;
        let deadline = Deadline::from_request(&request);
        let principal = caller(&request);
        let mut request = request.into_inner();
        require_kb(principal.as_deref(), &request.knowledge_base)?;
        confine_filter(principal.as_deref(), &mut request.filter);
        let audit = Audit::new("evaluate", principal.as_deref(), &request.knowledge_base);
        let stream =
            spawn_stream(move |tx| async move { state.evaluate(request, deadline, tx).await });
        Ok(Response::new(audited(stream, audit)))
    }

    async fn create_knowledge_base(
        &self,
        request: Request<CreateKnowledgeBaseRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        let state = self.state()?;
        let deadline = Deadline::from_request(&request);
        Ok(Response::new(
            state
                .create_knowledge_base(request.into_inner(), deadline)
                .await?,
        ))
    }

    async fn list_knowledge_bases(
        &self,
        mut request: Request<ListKnowledgeBasesRequest>,
    ) -> Result<Response<ListKnowledgeBasesResponse>, Status> {
        let principal = caller(&request);
        // A reader's counts are of what it may read.
        zhiku_runtime::auth::confine_scope(
            principal.as_deref(),
            &mut request.get_mut().readable_by,
        );
        let mut response = self
            .via_retriever(request, |mut c, r| async move {
                c.list_knowledge_bases(r).await
            })
            .await?;
        if let Some(p) = principal {
            response
                .get_mut()
                .knowledge_bases
                .retain(|kb| p.may_use(&kb.name));
        }
        Ok(response)
    }

    async fn describe_knowledge_base(
        &self,
        mut request: Request<DescribeKnowledgeBaseRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        let principal = caller(&request);
        require_kb(principal.as_deref(), &request.get_ref().name)?;
        zhiku_runtime::auth::confine_scope(
            principal.as_deref(),
            &mut request.get_mut().readable_by,
        );
        self.via_retriever(request, |mut c, r| async move {
            c.describe_knowledge_base(r).await
        })
        .await
    }

    async fn delete_knowledge_base(
        &self,
        request: Request<DeleteKnowledgeBaseRequest>,
    ) -> Result<Response<DeleteKnowledgeBaseResponse>, Status> {
        self.via_retriever(request, |mut c, r| async move {
            c.delete_knowledge_base(r).await
        })
        .await
    }

    async fn list_documents(
        &self,
        mut request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let principal = caller(&request);
        require_kb(principal.as_deref(), &request.get_ref().knowledge_base)?;
        zhiku_runtime::auth::confine_scope(
            principal.as_deref(),
            &mut request.get_mut().readable_by,
        );
        let mut listed = self
            .via_retriever(request, |mut c, r| async move { c.list_documents(r).await })
            .await?;
        if !zhiku_runtime::auth::sees_readers(principal.as_deref()) {
            for d in &mut listed.get_mut().documents {
                d.readers.clear();
            }
        }
        Ok(listed)
    }

    async fn delete_document(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let principal = caller(&request);
        require_kb(principal.as_deref(), &request.get_ref().knowledge_base)?;
        let mut audit = Audit::new(
            "delete",
            principal.as_deref(),
            &request.get_ref().knowledge_base,
        );
        audit.document(&request.get_ref().document_id);
        let response = self
            .via_retriever(
                request,
                |mut c, r| async move { c.delete_document(r).await },
            )
            .await;
        if response.is_err() {
            audit.failed();
        }
        response
    }

    async fn bind_adapter(
        &self,
        request: Request<BindAdapterRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        let state = self.state()?;
        let deadline = Deadline::from_request(&request);
        Ok(Response::new(
            state.bind_adapter(request.into_inner(), deadline).await?,
        ))
    }

    async fn unbind_adapter(
        &self,
        request: Request<UnbindAdapterRequest>,
    ) -> Result<Response<KnowledgeBase>, Status> {
        let state = self.state()?;
        let deadline = Deadline::from_request(&request);
        Ok(Response::new(
            state.unbind_adapter(request.into_inner(), deadline).await?,
        ))
    }

    async fn set_document_readers(
        &self,
        request: Request<SetDocumentReadersRequest>,
    ) -> Result<Response<SetDocumentReadersResponse>, Status> {
        let principal = caller(&request);
        require_kb(principal.as_deref(), &request.get_ref().knowledge_base)?;
        check_readers(
            request
                .extensions()
                .get::<zhiku_runtime::auth::KnownGroups>(),
            [&request.get_ref().readers],
        )?;
        let mut audit = Audit::new(
            "set_readers",
            principal.as_deref(),
            &request.get_ref().knowledge_base,
        );
        audit.document(&request.get_ref().document_id);
        let response = self
            .via_retriever(request, |mut c, r| async move {
                c.set_document_readers(r).await
            })
            .await;
        if response.is_err() {
            audit.failed();
        }
        response
    }
}
