//! A concurrency limit that refuses instead of queueing.
//!
//! tower's `ConcurrencyLimit` makes callers wait without bound; a serving system should say
//! "busy" at once so that clients back off or go to another replica. Health and reflection
//! calls are never refused, so that an overloaded server still reports its health.
//!
//! A call holds its permit until its response body is dropped, not only until its handler
//! returns: a streaming call (Ask, Ingest, GenerateStream) counts until its last message is
//! sent or its client goes away, which is when the work it stands for ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tower::{Layer, Service};

#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConcurrencyLimitLayer {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The permits, for another listener of the same server (the orchestrator's HTTP side)
    /// to count its calls against the same limit.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
            max: self.max,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max: usize,
}

fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// A response body that holds its call's permit until it is dropped.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> Service<Request<B>> for ConcurrencyLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if exempt(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Box::pin(async move {
                let response = inner.call(request).await?;
                Ok(response.map(|inner| {
                    Body::new(PermitBody {
                        inner,
                        _permit: permit,
                    })
                }))
            }),
            Err(_) => {
                let max = self.max;
                tracing::warn!(max, "concurrency limit reached; refusing call");
                let status = tonic::Status::resource_exhausted(format!(
                    "server is busy: {max} calls in flight (--max-concurrent-requests); retry later"
                ));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use tower::ServiceExt;

    /// A streaming call's response: a body that yields nothing until `hold` is dropped.
    fn streaming(hold: tokio::sync::oneshot::Receiver<()>) -> Response<Body> {
        let stream = futures::stream::once(async move {
            let _ = hold.await;
            Ok::<_, tonic::Status>(Frame::data(tonic::codegen::Bytes::new()))
        });
        Response::new(Body::new(StreamBody(Box::pin(stream))))
    }

    type Frames = Pin<
        Box<dyn futures::Stream<Item = Result<Frame<tonic::codegen::Bytes>, tonic::Status>> + Send>,
    >;

    struct StreamBody(Frames);

    impl http_body::Body for StreamBody {
        type Data = tonic::codegen::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            self.0.as_mut().poll_next(cx)
        }
    }

    fn grpc_status(response: &Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_stream_holds_its_permit_until_its_body_is_dropped() {
        let holds = Arc::new(std::sync::Mutex::new(Vec::new()));
        let service = {
            let holds = holds.clone();
            tower::service_fn(move |_request: Request<()>| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                holds.lock().unwrap().push(tx);
                async move { Ok::<_, std::convert::Infallible>(streaming(rx)) }
            })
        };
        let mut limited = ConcurrencyLimitLayer::new(1).layer(service);
        let call = |path: &str| Request::builder().uri(path).body(()).unwrap();

        // The handler has returned its headers; the stream is still open.
        let first = limited
            .ready()
            .await
            .unwrap()
            .call(call("/zhiku.v1.Orchestrator/Ask"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&first), None);
        let second = limited
            .ready()
            .await
            .unwrap()
            .call(call("/zhiku.v1.Orchestrator/Ask"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&second), Some("8"), "RESOURCE_EXHAUSTED");
        // Health is never refused.
        let health = limited
            .ready()
            .await
            .unwrap()
            .call(call("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&health), None);

        // The stream ends (its body is consumed and dropped): the permit is back.
        holds.lock().unwrap().clear();
        let mut body = first.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.unwrap();
        }
        drop(body);
        let third = limited
            .ready()
            .await
            .unwrap()
            .call(call("/zhiku.v1.Orchestrator/Ask"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&third), None);
    }
}
