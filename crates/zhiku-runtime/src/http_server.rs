//! The one HTTP server of zhiku: an axum router on a listener, plain or over TLS, until a
//! shutdown. The orchestrator's HTTP side (OpenAI API, REST, web page) and the `/metrics`
//! listener of `--metrics-listen` are both served by [`serve`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::auth::{ApiKeyLayer, ApiKeys, Refusal};
use crate::tls::{TlsAcceptor, TlsStream};

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown`, then lets the
/// requests in flight finish (the caller bounds that wait, e.g. with the shutdown grace).
///
/// Plain TCP connections get TCP_NODELAY, as on the gRPC side (a small reply must not wait
/// for the client's delayed ACK); TLS connections get it and their handshakes from
/// [`crate::tls::incoming`], which bounds the handshakes in flight and their time.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    match tls {
        None => {
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            let local = listener.local_addr()?;
            let listener = TlsListener {
                incoming: crate::tls::incoming(listener, acceptor),
                local,
            };
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A listener over TLS: the connections whose handshake is done.
struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The Prometheus text of this process, as a response (for any router that mounts
/// `/metrics`).
pub async fn scrape() -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(),
    )
}

/// The router of the `--metrics-listen` listener: `/metrics` behind `keys` (open when they
/// say so, or when there are none); any other path is 404.
pub fn metrics_router(keys: Option<Arc<ApiKeys>>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .route_layer(ApiKeyLayer::new(keys))
        .route_layer(axum::middleware::map_response(refusal_as_text))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is here\n") })
}

/// A refused scrape says why in its body (the key layer leaves HTTP bodies empty).
async fn refusal_as_text(response: Response) -> Response {
    match response.extensions().get::<Refusal>() {
        Some(refusal) => {
            let mut text = format!("{refusal}\n").into_response();
            *text.status_mut() = response.status();
            text.headers_mut().extend(
                response
                    .headers()
                    .get_all(http::header::WWW_AUTHENTICATE)
                    .iter()
                    .map(|v| (http::header::WWW_AUTHENTICATE, v.clone())),
            );
            text
        }
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use tower::ServiceExt;

    async fn call(router: &Router, path: &str, key: Option<&str>) -> (StatusCode, String) {
        let mut request = http::Request::builder().uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = router
            .clone()
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn metrics_router_guards_and_scrapes() {
        crate::metrics::metrics().stage(crate::metrics::stage::SEARCH, 0.01);
        let keys = Arc::new(ApiKeys::new([("k", Role::Full)], false));
        let router = metrics_router(Some(keys));
        let (status, body) = call(&router, "/metrics", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("needs an API key"), "{body}");
        let (status, body) = call(&router, "/metrics", Some("k")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("zhiku_stage_duration_seconds"), "{body}");
        let (status, body) = call(&router, "/other", Some("k")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "only /metrics is here\n");
        let (status, _) = call(&metrics_router(None), "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
    }

    /// Plain HTTP/1.1 on a socket, until the shutdown.
    #[tokio::test]
    async fn serves_plain_http_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics_router(None), None, async {
            let _ = stop_rx.await;
        }));
        let reply = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut reply = String::new();
            tcp.read_to_string(&mut reply).unwrap();
            reply
        })
        .await
        .unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("text/plain"), "{reply}");
        stop_tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the server stops on its shutdown")
            .unwrap()
            .unwrap();
    }
}
