//! Prometheus metrics: one registry per process, served at `/metrics` in the text format.
//!
//! Every service records into [`metrics()`]; `zhiku serve` runs all four in one process and
//! so shows all of them on one endpoint. [`MetricsLayer`] counts requests by method and
//! status with their latency (over any `http::Request<B>`: tonic or axum); the services
//! record their own stages, queues and counts. [`render`] is the scrape's body, for the
//! `/metrics` endpoint ([`crate::http_server::metrics_router`]) and for an HTTP router that
//! mounts `/metrics` itself. A leaf module: it imports nothing else of the runtime.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tower::{Layer, Service};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Stages whose latency [`Metrics::stage_seconds`] records.
pub mod stage {
    /// An embedder forward pass (a batch).
    pub const EMBED: &str = "embed";
    /// A retriever search.
    pub const SEARCH: &str = "search";
    /// Fusing a hybrid search's dense and keyword rankings (the retriever).
    pub const FUSE: &str = "fuse";
    /// A cross-encoder forward pass over (query, passage) pairs (a batch, in the embedder).
    pub const RERANK: &str = "rerank";
    /// A generation's prompt, up to its first token.
    pub const PREFILL: &str = "prefill";
    /// A generation after its first token.
    pub const DECODE: &str = "decode";
}

/// Distinct `method` labels at most; later ones are counted as `other`, so that clients
/// calling made-up paths cannot grow the registry without bound.
const MAX_METHODS: usize = 256;

/// Every metric of zhiku.
pub struct Metrics {
    registry: Registry,
    /// `zhiku_requests_total{method, status}`: gRPC status name, or HTTP status code.
    pub requests: IntCounterVec,
    /// `zhiku_request_duration_seconds{method}`: until the response's last byte.
    pub request_seconds: HistogramVec,
    /// `zhiku_stage_duration_seconds{stage}`: see [`stage`].
    pub stage_seconds: HistogramVec,
    /// `zhiku_queue_depth{queue}`: work waiting (embedder texts, generator requests).
    pub queue_depth: IntGaugeVec,
    /// `zhiku_active_sequences`: sequences the generator is running now.
    pub active_sequences: IntGauge,
    /// `zhiku_tokens_total{kind}`: prompt, cached (prompt tokens from the prefix cache) and
    /// generated tokens; `rate()` of it is tokens per second.
    pub tokens: IntCounterVec,
    /// `zhiku_decode_tokens_per_second`: per finished generation.
    pub decode_tokens_per_second: Histogram,
    /// `zhiku_prefix_cache_lookups_total{result}`: hit or miss, per admitted sequence.
    pub prefix_cache: IntCounterVec,
    /// `zhiku_embedder_batch_size`: texts per forward pass.
    pub embed_batch_texts: Histogram,
    /// `zhiku_embedder_batch_tokens`: tokens per forward pass.
    pub embed_batch_tokens: Histogram,
    /// `zhiku_retrieval_passages_total{kb}`: passages an Ask kept after the threshold.
    pub retrieval_passages: IntCounterVec,
    /// `zhiku_retrieval_asks_total{kb, refused}`: Asks, and whether nothing relevant was
    /// found (the abstention rate is refused="true" over all).
    pub retrieval_asks: IntCounterVec,
    /// `zhiku_auth_refusals_total`: calls refused for a missing, wrong or read-only key.
    pub auth_refusals: IntCounter,
    methods: Mutex<HashSet<String>>,
}

fn latency_buckets() -> Vec<f64> {
    // 1 ms to about a minute.
    prometheus::exponential_buckets(0.001, 2.0, 17).unwrap_or_default()
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let plain_histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let sizes = prometheus::exponential_buckets(1.0, 2.0, 12)?;
        let metrics = Self {
            requests: counter(
                "zhiku_requests_total",
                "Requests answered, by method and status (gRPC status, or HTTP status code).",
                &["method", "status"],
            )?,
            request_seconds: histogram(
                "zhiku_request_duration_seconds",
                "Time from a request to its response's last byte, by method.",
                &["method"],
                latency_buckets(),
            )?,
            stage_seconds: histogram(
                "zhiku_stage_duration_seconds",
                "Latency of a pipeline stage: embed, search, fuse, rerank, prefill, decode.",
                &["stage"],
                latency_buckets(),
            )?,
            queue_depth: {
                let g = IntGaugeVec::new(
                    Opts::new("zhiku_queue_depth", "Work waiting, by queue."),
                    &["queue"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            active_sequences: {
                let g = IntGauge::new(
                    "zhiku_active_sequences",
                    "Sequences the generator is running now.",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            tokens: counter(
                "zhiku_tokens_total",
                "Tokens by kind: prompt, cached (prompt tokens reused from the prefix cache), generated.",
                &["kind"],
            )?,
            decode_tokens_per_second: plain_histogram(
                "zhiku_decode_tokens_per_second",
                "Decode speed of each finished generation, in tokens per second.",
                prometheus::exponential_buckets(1.0, 2.0, 12)?,
            )?,
            prefix_cache: counter(
                "zhiku_prefix_cache_lookups_total",
                "Sequences admitted by the generator, by whether they reused cached prompt blocks.",
                &["result"],
            )?,
            embed_batch_texts: plain_histogram(
                "zhiku_embedder_batch_size",
                "Texts per embedder forward pass.",
                sizes.clone(),
            )?,
            embed_batch_tokens: plain_histogram(
                "zhiku_embedder_batch_tokens",
                "Tokens per embedder forward pass.",
                prometheus::exponential_buckets(16.0, 2.0, 12)?,
            )?,
            retrieval_passages: counter(
                "zhiku_retrieval_passages_total",
                "Passages Asks kept after the threshold, by knowledge base.",
                &["kb"],
            )?,
            retrieval_asks: counter(
                "zhiku_retrieval_asks_total",
                "Asks by knowledge base, and whether they were refused for lack of relevant passages.",
                &["kb", "refused"],
            )?,
            auth_refusals: {
                let c = IntCounter::new(
                    "zhiku_auth_refusals_total",
                    "Calls refused for a missing, wrong or read-only API key.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            methods: Mutex::new(HashSet::new()),
            registry,
        };
        Ok(metrics)
    }

    /// Registers another crate's collector (the orchestrator's replica metrics) in the one
    /// registry, so that it shows on the same `/metrics`.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// Records one stage's latency.
    pub fn stage(&self, stage: &str, seconds: f64) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(seconds);
    }

    /// Sets the depth of `queue`.
    pub fn set_queue(&self, queue: &str, depth: usize) {
        self.queue_depth
            .with_label_values(&[queue])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Adds `n` tokens of `kind` (prompt, cached, generated).
    pub fn add_tokens(&self, kind: &str, n: usize) {
        self.tokens.with_label_values(&[kind]).inc_by(n as u64);
    }

    /// The label of `path`: itself while fewer than [`MAX_METHODS`] are known.
    fn method_label(&self, path: &str) -> String {
        let Ok(mut known) = self.methods.lock() else {
            return "other".into();
        };
        if known.contains(path) {
            return path.to_owned();
        }
        if known.len() < MAX_METHODS && path.len() <= 128 {
            known.insert(path.to_owned());
            return path.to_owned();
        }
        "other".into()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // The names and buckets above are constants: only a bug makes this fail.
    Metrics::new().unwrap_or_else(|e| panic!("zhiku's metrics are ill-defined: {e}"))
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Everything in the Prometheus text format (the body of a `/metrics` scrape).
pub fn render() -> String {
    let families = metrics().registry.gather();
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A gRPC status code's name, as the Prometheus gRPC exporters write it.
fn grpc_status_name(value: &[u8]) -> String {
    let code = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Unknown);
    format!("{code:?}")
}

fn grpc_status_in(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .map(|v| grpc_status_name(v.as_bytes()))
}

/// One request being measured; recorded once, when its response ends or is dropped.
struct Pending {
    method: String,
    started: Instant,
    status: Option<String>,
}

impl Pending {
    fn finish(self, fallback: &str) {
        let m = metrics();
        let status = self.status.as_deref().unwrap_or(fallback);
        m.requests
            .with_label_values(&[self.method.as_str(), status])
            .inc();
        m.request_seconds
            .with_label_values(&[self.method.as_str()])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// A response body that records its request when its last frame (the gRPC trailers) has
/// been sent, or when it is dropped before that (the client went away).
pub struct MeteredBody<B> {
    inner: B,
    pending: Option<Pending>,
    grpc: bool,
}

impl<B> MeteredBody<B> {
    fn end(&mut self, fallback: &str) {
        if let Some(p) = self.pending.take() {
            p.finish(fallback);
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped unfinished: a gRPC stream cut short counts as CANCELLED.
        self.end(if self.grpc { "Cancelled" } else { "0" });
    }
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = grpc_status_in(trailers)
                    && let Some(p) = self.pending.as_mut()
                {
                    p.status = Some(status);
                }
                if self.inner.is_end_stream() {
                    self.end("Unknown");
                }
            }
            Poll::Ready(Some(Err(_))) => {
                let fallback = if self.grpc { "Internal" } else { "0" };
                self.end(fallback);
            }
            Poll::Ready(None) => self.end("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts requests by method and status, with their latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for Metered<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: http_body::Body + Unpin + Send + 'static,
{
    type Response = Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = metrics().method_label(request.uri().path());
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let grpc = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let status = if grpc {
                grpc_status_in(response.headers())
            } else {
                Some(response.status().as_u16().to_string())
            };
            let pending = Pending {
                method,
                started,
                status,
            };
            Ok(response.map(|inner| MeteredBody {
                inner,
                pending: Some(pending),
                grpc,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_families() {
        metrics().stage(stage::EMBED, 0.01);
        metrics().tokens.with_label_values(&["generated"]).inc_by(3);
        let text = render();
        assert!(
            text.contains("# TYPE zhiku_stage_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("zhiku_stage_duration_seconds_bucket{stage=\"embed\""),
            "{text}"
        );
        assert!(text.contains("# TYPE zhiku_tokens_total counter"), "{text}");
    }

    #[test]
    fn status_names() {
        assert_eq!(grpc_status_name(b"0"), "Ok");
        assert_eq!(grpc_status_name(b"16"), "Unauthenticated");
        assert_eq!(grpc_status_name(b"junk"), "Unknown");
    }

    #[test]
    fn method_labels_are_bounded() {
        let m = metrics();
        for i in 0..MAX_METHODS + 10 {
            let _ = m.method_label(&format!("/made/up{i}"));
        }
        assert_eq!(m.method_label("/made/up-again"), "other");
        assert!(m.methods.lock().unwrap().len() <= MAX_METHODS);
    }
}
