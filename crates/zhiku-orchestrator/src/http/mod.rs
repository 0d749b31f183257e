//! The orchestrator's HTTP side (`--http-listen`): the OpenAI-compatible API
//! ([`openai`]), REST for knowledge bases and documents ([`rest`]) and the web page
//! ([`page`]), served on the same tokio runtime as the gRPC service.
//!
//! It shares the gRPC side's rules: the same `x-request-id` layer, the same concurrency
//! permits (`--max-concurrent-requests` counts gRPC and HTTP calls together), the same
//! largest message (`--max-message-bytes`, here the largest request body), the same shutdown
//! (a signal stops both; in-flight calls get the same grace) and the same classification of
//! failures: the pipelines' error becomes the HTTP status and OpenAI's error JSON in one
//! place ([`error`]), as it becomes a `Status` in one place on the gRPC side. Handlers call
//! the pipelines in this process, as the gRPC handlers do.
//!
//! Its keys and TLS are the gRPC side's too: `--api-key` & co. guard the API and `/metrics`
//! (a refusal is OpenAI's error JSON), and `--tls-cert` / `--tls-key` put this listener on
//! HTTPS ([`serve`] with the acceptor of [`zhiku_runtime::tls`]).
//!
//! [`router`] returns a plain `axum::Router`, so that more layers (authentication, metrics)
//! can wrap it before [`serve`].

pub mod cite;
pub mod error;
pub mod fine_tuning;
pub mod openai;
pub mod page;
pub mod rest;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use zhiku_runtime::Ready;
use zhiku_runtime::limit::ConcurrencyLimitLayer;

use crate::Orchestrator;
use crate::error::OrchestratorError;

pub use error::ApiError;

/// What every handler reaches.
#[derive(Clone)]
pub struct HttpState {
    orchestrator: Ready<Arc<Orchestrator>>,
    /// True while the three downstream services are SERVING (the gRPC health's source).
    ready: watch::Receiver<bool>,
    /// The tuner's replicas (`--tuner-addr`), for the fine-tuning routes.
    tuner: Option<crate::tuners::Tuners>,
}

impl HttpState {
    pub fn new(orchestrator: Ready<Arc<Orchestrator>>, ready: watch::Receiver<bool>) -> Self {
        Self {
            orchestrator,
            ready,
            tuner: None,
        }
    }

    /// With the tuner's replicas: the fine-tuning routes pass to them (else they answer 501).
    pub fn with_tuner(mut self, tuner: Option<crate::tuners::Tuners>) -> Self {
        self.tuner = tuner;
        self
    }

    fn orchestrator(&self) -> Result<Arc<Orchestrator>, ApiError> {
        Ok(crate::loaded(&self.orchestrator)?)
    }

    /// One call to the retriever: knowledge-base and document management pass to it, as
    /// they do on the gRPC side.
    async fn retriever<T, F, Fut>(&self, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(RetrieverClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.orchestrator()?.downstream.retriever.clone();
        Ok(call(client)
            .await
            .map_err(OrchestratorError::downstream("retriever"))?
            .into_inner())
    }
}

type RetrieverClient = zhiku_proto::v1::retriever_client::RetrieverClient<
    tonic::service::interceptor::InterceptedService<
        crate::replicas::ReplicaSet,
        zhiku_runtime::request_id::PropagateRequestId,
    >,
>;

/// The limits the HTTP side shares with the gRPC side of the same server.
#[derive(Clone)]
pub struct Limits {
    permits: Arc<Semaphore>,
    max_calls: usize,
    max_body_bytes: usize,
}

impl Limits {
    /// `limit`: the gRPC side's concurrency limit (its permits are shared);
    /// `max_body_bytes`: its largest message.
    pub fn shared(limit: &ConcurrencyLimitLayer, max_body_bytes: usize) -> Self {
        Self {
            permits: limit.permits(),
            max_calls: limit.max(),
            max_body_bytes,
        }
    }
}

/// The whole HTTP API and the page. Calls under `/v1` count against the shared concurrency
/// limit until their response body ends (a streamed answer counts while it streams); the
/// page and `/healthz` never do, so an overloaded server still shows its health.
/// With `keys`, every API route and `/metrics` needs `authorization: Bearer KEY` (as the
/// gRPC side); the web page's static files and `/healthz` stay open.
pub fn router(
    state: HttpState,
    limits: Limits,
    keys: Option<Arc<zhiku_runtime::auth::ApiKeys>>,
) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/embeddings", post(openai::embeddings))
        .route(
            "/v1/knowledge_bases",
            get(rest::list_knowledge_bases).post(rest::create_knowledge_base),
        )
        .route(
            "/v1/knowledge_bases/{name}",
            get(rest::describe_knowledge_base).delete(rest::delete_knowledge_base),
        )
        .route(
            "/v1/knowledge_bases/{name}/documents",
            get(rest::list_documents).post(rest::upload_documents),
        )
        .route(
            "/v1/knowledge_bases/{name}/adapter",
            put(rest::bind_adapter).delete(rest::unbind_adapter),
        )
        .route(
            "/v1/knowledge_bases/{name}/documents/{*document_id}",
            delete(rest::delete_document),
        )
        .route(
            "/v1/fine_tuning/jobs",
            get(fine_tuning::list_jobs).post(fine_tuning::create_job),
        )
        .route("/v1/fine_tuning/jobs/{id}", get(fine_tuning::get_job))
        .route(
            "/v1/fine_tuning/jobs/{id}/cancel",
            post(fine_tuning::cancel_job),
        )
        .route(
            "/v1/fine_tuning/jobs/{id}/events",
            get(fine_tuning::job_events),
        )
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(limits),
            limit_calls,
        ))
        .route("/metrics", get(metrics))
        .layer(zhiku_runtime::auth::ApiKeyLayer::new(keys))
        .layer(axum::middleware::map_response(refusal_as_openai_error));
    Router::new()
        .merge(page::routes())
        .route("/healthz", get(healthz))
        .merge(api)
        .fallback(not_found)
        .with_state(state)
        .layer(zhiku_runtime::request_id::RequestIdLayer)
}

/// Prometheus text of this process (every service in `zhiku serve`), as `--metrics-listen`.
async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            zhiku_runtime::metrics::CONTENT_TYPE,
        )],
        zhiku_runtime::metrics::render(),
    )
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown`, then lets in-flight
/// calls finish (the caller bounds that wait with the shutdown grace): the runtime's one
/// HTTP server, [`zhiku_runtime::http_server::serve`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<zhiku_runtime::tls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, tls = tls.is_some(), "HTTP listening (OpenAI API, REST, web page)");
    zhiku_runtime::http_server::serve(listener, router, tls, shutdown).await
}

/// 200 while the orchestrator is loaded and its downstream services are SERVING, else 503:
/// the gRPC health check's answer, for HTTP probes.
async fn healthz(State(state): State<HttpState>) -> Response {
    let serving = state.orchestrator.is_ready() && *state.ready.borrow();
    let (status, text) = if serving {
        (StatusCode::OK, "SERVING")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING")
    };
    (status, Json(serde_json::json!({ "status": text }))).into_response()
}

/// A call the key layer refused, answered as OpenAI's error JSON (401 or 403, with the
/// layer's reason).
async fn refusal_as_openai_error(response: Response) -> Response {
    match response.extensions().get::<zhiku_runtime::auth::Refusal>() {
        Some(refusal) => {
            let mut error = ApiError::refused(refusal).into_response();
            let challenge = axum::http::header::WWW_AUTHENTICATE;
            if let Some(value) = response.headers().get(&challenge) {
                error.headers_mut().insert(challenge, value.clone());
            }
            error
        }
        None => response,
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::no_route(request.method(), request.uri().path())
}

/// Takes one of the shared permits for the call, or answers 429 at once (as the gRPC side
/// answers RESOURCE_EXHAUSTED). The permit is held by the response body.
async fn limit_calls(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    match limits.permits.clone().try_acquire_owned() {
        Ok(permit) => next.run(request).await.map(|inner| {
            Body::new(PermitBody {
                inner,
                _permit: permit,
            })
        }),
        Err(_) => {
            let max = limits.max_calls;
            tracing::warn!(max, "concurrency limit reached; refusing HTTP call");
            ApiError::busy(max).into_response()
        }
    }
}

/// A response body that holds its call's permit until it is dropped.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A JSON body: read with a malformed one answered as OpenAI's error JSON (400), and
/// written with its content type. (axum's own `Json` needs its "json" feature, which turns
/// on serde_json's `raw_value` across the whole dependency tree.)
pub struct Json<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes =
            match <Bytes as axum::extract::FromRequest<S>>::from_request(request, state).await {
                Ok(bytes) => bytes,
                Err(rejection) => {
                    let message = rejection.body_text();
                    return Err(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::too_large(message)
                    } else {
                        ApiError::bad_body(message)
                    });
                }
            };
        serde_json::from_slice(&bytes).map(Json).map_err(|e| {
            ApiError::bad_body(format!("the request body is not the JSON expected: {e}"))
        })
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    async fn call(router: &Router, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        call_with(router, method, path, body, None).await
    }

    async fn call_with(
        router: &Router,
        method: &str,
        path: &str,
        body: Vec<u8>,
        key: Option<&str>,
    ) -> (u16, Value) {
        use tower::ServiceExt;
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(Body::from(body)).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert!(response.headers().contains_key("x-request-id"));
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// With API keys, the API and /metrics need one (401 without, 403 for a read-only key
    /// on a write); the page and /healthz stay open.
    #[tokio::test]
    async fn api_keys_guard_the_api_and_metrics_not_the_page() {
        use zhiku_runtime::auth::{ApiKeys, Role};
        let limit = ConcurrencyLimitLayer::new(8);
        let (_ready_tx, ready) = watch::channel(false);
        let keys = ApiKeys::new([("full", Role::Full), ("reader", Role::ReadOnly)], false);
        let router = router(
            HttpState::new(Ready::new("orchestrator"), ready),
            Limits::shared(&limit, 1024),
            Some(Arc::new(keys)),
        );
        let models = |key| call_with(&router, "GET", "/v1/models", Vec::new(), key);
        let (status, body) = models(None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("unauthenticated"))
        );
        assert_eq!(models(Some("wrong")).await.0, 401);
        // Past the key check: the orchestrator is still loading.
        assert_eq!(models(Some("full")).await.0, 503);
        assert_eq!(models(Some("reader")).await.0, 503);
        let delete = call_with(
            &router,
            "DELETE",
            "/v1/knowledge_bases/x",
            vec![],
            Some("reader"),
        );
        let (status, body) = delete.await;
        assert_eq!(
            (status, &body["error"]["type"]),
            (403, &json!("permission_error"))
        );
        let metrics = |key| call_with(&router, "GET", "/metrics", Vec::new(), key);
        assert_eq!(metrics(None).await.0, 401);
        assert_eq!(metrics(Some("reader")).await.0, 200);
        assert_eq!(call(&router, "GET", "/", Vec::new()).await.0, 200);
        assert_ne!(call(&router, "GET", "/healthz", Vec::new()).await.0, 401);
    }

    #[tokio::test]
    async fn http_calls_share_the_limits_and_fail_as_openai_errors() {
        let limit = ConcurrencyLimitLayer::new(1);
        let (_ready_tx, ready) = watch::channel(false);
        let router = router(
            HttpState::new(Ready::new("orchestrator"), ready),
            Limits::shared(&limit, 1024),
            None,
        );
        // Still loading: 503, as the gRPC side's UNAVAILABLE.
        let (status, body) = call(&router, "GET", "/v1/models", Vec::new()).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (503, &json!("unavailable"))
        );
        assert_eq!(call(&router, "GET", "/healthz", Vec::new()).await.0, 503);
        // A body over --max-message-bytes is refused before it is read: 413, a request
        // error, not a rate limit.
        let big = format!("{{\"input\": \"{}\"}}", "x".repeat(2048)).into_bytes();
        for route in ["/v1/embeddings", "/v1/chat/completions"] {
            let (status, body) = call(&router, "POST", route, big.clone()).await;
            assert_eq!(
                (status, &body["error"]["type"]),
                (413, &json!("invalid_request_error")),
                "{route}: {body}"
            );
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("--max-message-bytes")),
                "{body}"
            );
        }
        let (status, body) = call(&router, "GET", "/v1/nothing", Vec::new()).await;
        assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
        // The one permit taken elsewhere (a gRPC call): API calls are refused at once; the
        // page and the health are not counted.
        let _held = limit.permits().try_acquire_owned().unwrap();
        let (status, body) = call(&router, "GET", "/v1/models", Vec::new()).await;
        assert_eq!(
            (status, &body["error"]["type"]),
            (429, &json!("rate_limit_error"))
        );
        assert_eq!(call(&router, "GET", "/", Vec::new()).await.0, 200);
        assert_eq!(call(&router, "GET", "/healthz", Vec::new()).await.0, 503);
    }
}
