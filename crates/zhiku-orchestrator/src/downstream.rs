//! Clients of the three services the orchestrator calls, each over its replicas
//! ([`crate::replicas`]).
//!
//! Channels connect lazily and reconnect by themselves: a service that was down answers the
//! next call once it is back, without restarting the orchestrator. Every call carries the
//! caller's request id and what is left of the caller's deadline.

use std::time::Instant;

use tonic::service::interceptor::InterceptedService;
use zhiku_proto::service_names;
use zhiku_proto::v1::embedder_client::EmbedderClient;
use zhiku_proto::v1::generator_client::GeneratorClient;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_runtime::request_id::PropagateRequestId;

use crate::config::OrchestratorArgs;
use crate::error::OrchestratorError;
use crate::replicas::ReplicaSet;

type Svc = InterceptedService<ReplicaSet, PropagateRequestId>;

#[derive(Clone)]
pub struct Downstream {
    pub embedder: EmbedderClient<Svc>,
    pub retriever: RetrieverClient<Svc>,
    pub generator: GeneratorClient<Svc>,
    /// The replicas of each, for readiness.
    pub replicas: Vec<ReplicaSet>,
    /// What every downstream call carries: the request id, and --downstream-api-key.
    pub caller: PropagateRequestId,
}

/// The replicas of `service` at `addresses` (a comma-separated list, `dns://name:port`).
fn replicas(
    service: &'static str,
    grpc_service: &'static str,
    addresses: &str,
    args: &OrchestratorArgs,
    caller: &PropagateRequestId,
) -> Result<ReplicaSet, OrchestratorError> {
    ReplicaSet::new(
        service,
        grpc_service,
        addresses,
        args.ca_cert.as_deref(),
        caller.clone(),
        args.replicas.clone(),
    )
    .map_err(|reason| OrchestratorError::BadAddress {
        service,
        address: addresses.to_owned(),
        reason,
    })
}

impl Downstream {
    pub fn new(args: &OrchestratorArgs) -> Result<Self, OrchestratorError> {
        let max = 64 * 1024 * 1024;
        let caller = PropagateRequestId::with_api_key(
            args.downstream_api_key.as_ref().map(|k| k.0.as_str()),
        )
        .map_err(|e| OrchestratorError::Validation(format!("--downstream-api-key: {e}")))?;
        let embedder = replicas(
            "embedder",
            service_names::EMBEDDER,
            &args.embedder_addr,
            args,
            &caller,
        )?;
        let retriever = replicas(
            "retriever",
            service_names::RETRIEVER,
            &args.retriever_addr,
            args,
            &caller,
        )?;
        let generator = replicas(
            "generator",
            service_names::GENERATOR,
            &args.generator_addr,
            args,
            &caller,
        )?;
        Ok(Self {
            replicas: vec![embedder.clone(), retriever.clone(), generator.clone()],
            embedder: EmbedderClient::with_interceptor(embedder, caller.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            retriever: RetrieverClient::with_interceptor(retriever, caller.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            generator: GeneratorClient::with_interceptor(generator, caller.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            caller,
        })
    }
}

/// The caller's deadline, carried to every downstream call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadline(pub Option<Instant>);

impl Deadline {
    /// The deadline of an incoming request, if its client set one.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Self {
        Deadline(zhiku_runtime::deadline::from_metadata(request.metadata()))
    }

    /// A downstream request with what is left of the deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(deadline) = self.0 {
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        request
    }

    /// Runs `work` until the deadline: a streaming call's deadline only bounds its headers,
    /// so the pipeline enforces it itself. Dropping `work` at the deadline drops its
    /// downstream calls, which cancels them (the generator frees its slot).
    pub async fn run<T>(
        &self,
        stage: &'static str,
        work: impl std::future::Future<Output = Result<T, OrchestratorError>>,
    ) -> Result<T, OrchestratorError> {
        match self.0 {
            None => work.await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), work)
                .await
                .unwrap_or(Err(OrchestratorError::DeadlineExceeded(stage))),
        }
    }
}
