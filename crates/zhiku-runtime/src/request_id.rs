//! Request ids: every call carries an `x-request-id`, made here when the client sent none.
//!
//! The id is put back on the request (handlers see it in the metadata), returned in the
//! response headers, recorded on the per-call tracing span (so every log line of the call
//! has it) and kept in a task-local so that [`PropagateRequestId`] copies it onto calls to
//! downstream services.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

/// The metadata key that carries the request id.
pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the call being handled on this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `id` as the current request id (for work a handler spawns).
pub fn scope<F: Future>(id: String, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(id, fut)
}

/// Client ids are kept when they are short visible ASCII; anything else is replaced.
fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Health checks and scrapes: probes and pollers (the orchestrator checks its downstream
/// services twice a second) call them all the time, so their answers are logged at DEBUG.
fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path == "/healthz" || path == "/metrics"
}

/// Adds the current request id to outgoing calls made with a tonic client, and the
/// caller's API key when it has one.
#[derive(Clone, Default)]
pub struct PropagateRequestId {
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl std::fmt::Debug for PropagateRequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PropagateRequestId")
            .field("api_key", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

impl PropagateRequestId {
    /// Also sends `authorization: Bearer KEY` on every call (none: no header).
    pub fn with_api_key(key: Option<&str>) -> Result<Self, String> {
        let authorization = match key {
            None => None,
            Some(key) => {
                let mut value: tonic::metadata::AsciiMetadataValue = format!("Bearer {key}")
                    .parse()
                    .map_err(|_| "an API key must be visible ASCII".to_owned())?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self { authorization })
    }
}

impl tonic::service::Interceptor for PropagateRequestId {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(id) = current()
            && let Ok(value) = id.parse()
        {
            request.metadata_mut().insert(HEADER, value);
        }
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Tower layer that assigns, records and returns request ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|id| acceptable(id))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
        request.headers_mut().insert(HEADER, header.clone());

        let method = request.uri().path().to_owned();
        let routine = is_probe(&method);
        let span = tracing::info_span!("call", request_id = %id, method = %method);
        // The clone that was polled ready must serve this call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(
            CURRENT
                .scope(id, async move {
                    tracing::debug!("started");
                    let mut response = inner.call(request).await?;
                    response.headers_mut().insert(HEADER, header);
                    let grpc_status = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0 or in trailers")
                        .to_owned();
                    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                    if routine {
                        tracing::debug!(elapsed_ms, grpc_status = %grpc_status, "answered");
                    } else {
                        tracing::info!(elapsed_ms, grpc_status = %grpc_status, "answered");
                    }
                    Ok(response)
                })
                .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptable_ids() {
        assert!(acceptable("abc-123"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable(&"x".repeat(129)));
        assert!(!acceptable("中文"));
    }

    #[test]
    fn probes_are_told_apart() {
        assert!(is_probe("/grpc.health.v1.Health/Check"));
        assert!(is_probe("/grpc.health.v1.Health/Watch"));
        assert!(is_probe("/healthz"));
        assert!(is_probe("/metrics"));
        assert!(!is_probe("/zhiku.v1.Orchestrator/Ask"));
        assert!(!is_probe("/v1/chat/completions"));
    }

    #[tokio::test]
    async fn interceptor_copies_current_id() {
        use tonic::service::Interceptor;
        let mut interceptor = PropagateRequestId::default();
        let out = scope("req-42".into(), async move {
            interceptor.call(tonic::Request::new(())).unwrap()
        })
        .await;
        assert_eq!(out.metadata().get(HEADER).unwrap(), "req-42");
        // Outside a call nothing is added.
        let out = PropagateRequestId::default()
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(out.metadata().get(HEADER).is_none());
        assert!(out.metadata().get("authorization").is_none());
        // With a key, every call carries it; its Debug form does not.
        let mut keyed = PropagateRequestId::with_api_key(Some("k1")).unwrap();
        let out = keyed.call(tonic::Request::new(())).unwrap();
        assert_eq!(out.metadata().get("authorization").unwrap(), "Bearer k1");
        assert!(!format!("{keyed:?}").contains("k1"));
    }
}
