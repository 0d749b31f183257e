//! API keys: every call carries `authorization: Bearer KEY` once a server has keys.
//!
//! [`ApiKeyLayer`] is a tower layer over any `http::Request<B>`, so the same check guards a
//! tonic server and an axum router. A refused gRPC call gets UNAUTHENTICATED (no or an
//! unknown key) or PERMISSION_DENIED (a read-only key on a call that writes), as a
//! trailers-only response; any other request gets HTTP 401 or 403.
//!
//! Keys are compared in constant time: the presented key is compared with every configured
//! one, byte by byte over the longer of the two, without an early exit, so the time taken
//! does not tell how much of a key matched. Keys are never logged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use subtle::{Choice, ConstantTimeEq};
use tower::{Layer, Service};

use crate::config::{AuthArgs, Secret};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Full,
    /// Read and ask; no ingest, create, delete or adapter loading.
    ReadOnly,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this server needs an API key: send the header `authorization: Bearer KEY` (a key of the server's --api-key)"
    )]
    Missing,
    #[error("the API key is not valid for this server")]
    Invalid,
    #[error("the API key is read-only: {0} needs a full-access key")]
    ReadOnly(String),
}

impl Refusal {
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Refusal::Missing | Refusal::Invalid => tonic::Code::Unauthenticated,
            Refusal::ReadOnly(_) => tonic::Code::PermissionDenied,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::Missing | Refusal::Invalid => StatusCode::UNAUTHORIZED,
            Refusal::ReadOnly(_) => StatusCode::FORBIDDEN,
        }
    }
}

/// The keys a server accepts.
pub struct ApiKeys {
    keys: Vec<(Vec<u8>, Role)>,
    open_health: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .field("open_health", &self.open_health)
            .finish()
    }
}

/// A new random key (122 random bits), for services that only talk among themselves.
pub fn random_key() -> String {
    format!("zhiku-{}", uuid::Uuid::new_v4().simple())
}

/// Equal contents and lengths; the time depends on the lengths only.
fn ct_equal(a: &[u8], b: &[u8]) -> Choice {
    let mut equal = (a.len() as u64).ct_eq(&(b.len() as u64));
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        equal &= x.ct_eq(&y);
    }
    equal
}

impl ApiKeys {
    /// `keys` with their roles; `open_health`: health checks and /metrics need no key.
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, Role)>, open_health: bool) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|(key, role)| (key.as_bytes().to_vec(), role))
                .collect(),
            open_health,
        }
    }

    /// The keys of the flags (and of `--api-key-file`); None when there are none (the server
    /// is open).
    pub fn from_args(args: &AuthArgs) -> Result<Option<Arc<Self>>, String> {
        let mut keys: Vec<(String, Role)> = Vec::new();
        let mut add = |key: &str, role: Role, origin: &str| {
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("{origin}: an API key is empty"));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{origin}: an API key must be visible ASCII without spaces (it travels in an HTTP header)"
                ));
            }
            keys.push((key.to_owned(), role));
            Ok(())
        };
        for Secret(key) in &args.api_keys {
            add(key, Role::Full, "--api-key")?;
        }
        for Secret(key) in &args.read_only_api_keys {
            add(key, Role::ReadOnly, "--read-only-api-key")?;
        }
        if let Some(path) = &args.api_key_file {
            let origin = format!("--api-key-file {}", path.display());
            let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: {e}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut words = line.split_whitespace();
                let key = words.next().unwrap_or_default();
                let role = match words.next() {
                    None | Some("full") => Role::Full,
                    Some("read-only") => Role::ReadOnly,
                    Some(other) => {
                        return Err(format!(
                            "{origin}, line {}: unknown role `{other}` (full or read-only)",
                            n + 1
                        ));
                    }
                };
                add(key, role, &origin)?;
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Self::new(
            keys.iter().map(|(k, r)| (k.as_str(), *r)),
            args.open_health,
        ))))
    }

    /// The role of `key`, looked up in constant time over all keys.
    fn role_of(&self, key: &[u8]) -> Option<Role> {
        let mut full = Choice::from(0);
        let mut read_only = Choice::from(0);
        for (known, role) in &self.keys {
            let hit = ct_equal(known, key);
            match role {
                Role::Full => full |= hit,
                Role::ReadOnly => read_only |= hit,
            }
        }
        if bool::from(full) {
            Some(Role::Full)
        } else if bool::from(read_only) {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }

    /// Whether a request with these `headers` for `path` (HTTP `method`) may go on.
    pub fn check(
        &self,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        if self.open_health && (path.starts_with("/grpc.health.") || path == "/metrics") {
            return Ok(());
        }
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Refusal::Missing)?;
        let key = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .ok_or(Refusal::Missing)?;
        match self.role_of(key) {
            None => Err(Refusal::Invalid),
            Some(Role::Full) => Ok(()),
            Some(Role::ReadOnly) if writes(method, path) => Err(Refusal::ReadOnly(
                path.rsplit('/').next().unwrap_or(path).to_owned(),
            )),
            Some(Role::ReadOnly) => Ok(()),
        }
    }
}

/// Calls that change a knowledge base or the generator: gRPC methods by name; other HTTP
/// requests by verb, except the OpenAI-style POSTs that only compute an answer.
pub fn writes(method: &http::Method, path: &str) -> bool {
    if let Some(rpc) = path
        .strip_prefix("/zhiku.v1.")
        .and_then(|p| p.split('/').nth(1))
    {
        return [
            "Ingest",
            "Create",
            "Delete",
            "Upsert",
            "LoadAdapter",
            "UnloadAdapter",
            "BindAdapter",
            "UnbindAdapter",
            "SetKnowledgeBaseAdapter",
        ]
        .iter()
        .any(|w| rpc.starts_with(w));
    }
    if path.starts_with("/grpc.") {
        return false;
    }
    match *method {
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => false,
        http::Method::POST => !matches!(
            path,
            "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
        ),
        _ => true,
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The response to a refused request: trailers-only gRPC, or HTTP 401/403 with an empty
/// body and the [`Refusal`] in the response's extensions.
fn refuse<B: Default>(refusal: &Refusal, grpc: bool) -> Response<B> {
    if grpc {
        return tonic::Status::new(refusal.grpc_code(), refusal.to_string()).into_http();
    }
    let mut response = Response::new(B::default());
    *response.status_mut() = refusal.http_status();
    // For an HTTP API above that writes its own error bodies.
    response.extensions_mut().insert(refusal.clone());
    if refusal.http_status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Requires an API key on every request (none configured: every request passes).
#[derive(Debug, Clone, Default)]
pub struct ApiKeyLayer {
    keys: Option<Arc<ApiKeys>>,
}

impl ApiKeyLayer {
    pub fn new(keys: Option<Arc<ApiKeys>>) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = RequireApiKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireApiKey {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequireApiKey<S> {
    inner: S,
    keys: Option<Arc<ApiKeys>>,
}

impl<S, B, R> Service<Request<B>> for RequireApiKey<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
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
        if let Some(keys) = &self.keys
            && let Err(refusal) =
                keys.check(request.method(), request.uri().path(), request.headers())
        {
            tracing::warn!(path = %request.uri().path(), reason = %refusal, "call refused");
            crate::metrics::metrics().auth_refusals.inc();
            let response = refuse(&refusal, is_grpc(request.headers()));
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_and_roles() {
        let keys = ApiKeys::new(
            [("full-key", Role::Full), ("ro-key", Role::ReadOnly)],
            false,
        );
        let post = http::Method::POST;
        let ask = "/zhiku.v1.Orchestrator/Ask";
        let ingest = "/zhiku.v1.Orchestrator/Ingest";
        assert_eq!(
            keys.check(&post, ask, &headers(None)),
            Err(Refusal::Missing)
        );
        assert_eq!(
            keys.check(&post, ask, &headers(Some("Basic abc"))),
            Err(Refusal::Missing)
        );
        assert_eq!(
            keys.check(&post, ask, &headers(Some("Bearer full-ke"))),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            keys.check(&post, ask, &headers(Some("Bearer full-key"))),
            Ok(())
        );
        assert_eq!(
            keys.check(&post, ask, &headers(Some("Bearer ro-key"))),
            Ok(())
        );
        assert_eq!(
            keys.check(&post, ingest, &headers(Some("Bearer ro-key"))),
            Err(Refusal::ReadOnly("Ingest".into()))
        );
        assert_eq!(
            keys.check(&post, ingest, &headers(Some("Bearer full-key"))),
            Ok(())
        );
        // Health is guarded unless opened.
        let health = "/grpc.health.v1.Health/Check";
        assert_eq!(
            keys.check(&post, health, &headers(None)),
            Err(Refusal::Missing)
        );
        let open = ApiKeys::new([("k", Role::Full)], true);
        assert_eq!(open.check(&post, health, &headers(None)), Ok(()));
        assert_eq!(
            open.check(&http::Method::GET, "/metrics", &headers(None)),
            Ok(())
        );
        assert_eq!(
            open.check(&post, ask, &headers(None)),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn what_writes() {
        let post = http::Method::POST;
        for rpc in [
            "/zhiku.v1.Orchestrator/Ingest",
            "/zhiku.v1.Orchestrator/DeleteDocument",
            "/zhiku.v1.Retriever/CreateKnowledgeBase",
            "/zhiku.v1.Retriever/Upsert",
            "/zhiku.v1.Generator/LoadAdapter",
            "/zhiku.v1.Orchestrator/BindAdapter",
            "/zhiku.v1.Orchestrator/UnbindAdapter",
            "/zhiku.v1.Retriever/SetKnowledgeBaseAdapter",
        ] {
            assert!(writes(&post, rpc), "{rpc}");
        }
        for rpc in [
            "/zhiku.v1.Orchestrator/Ask",
            "/zhiku.v1.Orchestrator/ListDocuments",
            "/zhiku.v1.Retriever/Search",
            "/zhiku.v1.Generator/GenerateStream",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(!writes(&post, rpc), "{rpc}");
        }
        assert!(!writes(&post, "/v1/chat/completions"));
        assert!(writes(&http::Method::DELETE, "/v1/knowledge-bases/kb"));
        assert!(!writes(&http::Method::GET, "/v1/models"));
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# keys\nalpha\n\nbeta read-only\n").unwrap();
        let args = AuthArgs {
            api_key_file: Some(file.clone()),
            ..AuthArgs::default()
        };
        let keys = ApiKeys::from_args(&args).unwrap().unwrap();
        assert_eq!(keys.role_of(b"alpha"), Some(Role::Full));
        assert_eq!(keys.role_of(b"beta"), Some(Role::ReadOnly));
        assert_eq!(keys.role_of(b"gamma"), None);
        std::fs::write(&file, "alpha admin\n").unwrap();
        let err = ApiKeys::from_args(&args).unwrap_err();
        assert!(err.contains("line 1") && err.contains("admin"), "{err}");
        // No key at all: the server is open.
        assert!(ApiKeys::from_args(&AuthArgs::default()).unwrap().is_none());
        // The Debug form (printed at start-up) never holds a key.
        let args = AuthArgs {
            api_keys: vec![Secret("s3cret".into())],
            ..AuthArgs::default()
        };
        assert!(!format!("{args:?}").contains("s3cret"));
        assert!(!format!("{:?}", ApiKeys::from_args(&args).unwrap()).contains("s3cret"));
    }

    #[tokio::test]
    async fn the_layer_answers_grpc_and_http_refusals() {
        use tower::ServiceExt;
        let service = tower::service_fn(|_r: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
        });
        let keys = Arc::new(ApiKeys::new([("k", Role::Full)], false));
        let guarded = ApiKeyLayer::new(Some(keys)).layer(service);
        let grpc = Request::builder()
            .uri("/zhiku.v1.Orchestrator/Ask")
            .header("content-type", "application/grpc")
            .header("authorization", "Bearer nope")
            .body(())
            .unwrap();
        let response = guarded.clone().oneshot(grpc).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "16");
        let http = Request::builder().uri("/v1/models").body(()).unwrap();
        let response = guarded.clone().oneshot(http).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let good = Request::builder()
            .uri("/v1/models")
            .header("authorization", "Bearer k")
            .body(())
            .unwrap();
        let response = guarded.oneshot(good).await.unwrap();
        assert_eq!(response.into_body(), "ok");
    }
}
