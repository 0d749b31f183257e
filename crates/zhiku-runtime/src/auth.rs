//! API keys and the principals they stand for: every call carries
//! `authorization: Bearer KEY` once a server has keys.
//!
//! [`ApiKeyLayer`] is a tower layer over any `http::Request<B>`, so the same check guards a
//! tonic server and an axum router. A refused gRPC call gets UNAUTHENTICATED (no or an
//! unknown key) or PERMISSION_DENIED (a key whose role may not make the call), as a
//! trailers-only response; any other request gets HTTP 401 or 403. An accepted request
//! carries its caller, an `Arc<`[`Principal`]`>`, in its extensions, for the services to
//! check knowledge bases and to confine searches to the documents the caller may read.
//!
//! Keys are kept as SHA-256 hashes only: a presented key is hashed and its hash compared
//! with every configured one in constant time, without an early exit. Keys are never logged.
//!
//! `--api-key-file` is read again when it changes (its modification time and size are polled
//! every [`RELOAD_POLL`]) and on SIGHUP; a file that does not parse leaves the keys in force
//! as they were, and the error names its line.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tower::{Layer, Service};

use crate::config::{AuthArgs, Secret};

/// How often `--api-key-file` is checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_millis(500);

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything (`admin` in a key file): the only role that creates or deletes knowledge
    /// bases and binds adapters; reads every document; a service key (the orchestrator's key
    /// for the retriever) is one.
    Full,
    /// Ingests and deletes documents in its knowledge bases, and reads as a reader does.
    Editor,
    /// Reads and asks (`reader` in a key file); no ingest, create, delete or adapter loading.
    ReadOnly,
}

impl Role {
    /// Its name in a key file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Full => "admin",
            Role::Editor => "editor",
            Role::ReadOnly => "reader",
        }
    }
}

/// Who a key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// For logs and the audit trail (never the key).
    pub name: String,
    pub role: Role,
    /// The knowledge bases it may use; None: every one.
    pub knowledge_bases: Option<BTreeSet<String>>,
    /// The reader groups it belongs to: it reads the documents whose readers name one of
    /// them, and the documents without readers.
    pub groups: BTreeSet<String>,
}

impl Principal {
    /// A principal with every right (an open server's callers are treated so).
    pub fn admin(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            role: Role::Full,
            knowledge_bases: None,
            groups: BTreeSet::new(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Full
    }

    /// Whether it may use knowledge base `kb` at all.
    pub fn may_use(&self, kb: &str) -> bool {
        self.knowledge_bases
            .as_ref()
            .is_none_or(|kbs| kbs.contains(kb))
    }

    /// The groups whose documents it may read; None: every document (an admin).
    pub fn readable_groups(&self) -> Option<Vec<String>> {
        (!self.is_admin()).then(|| self.groups.iter().cloned().collect())
    }
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
    /// An editor's key on a call only an admin may make.
    #[error("the API key's role `editor` may not call {0}: it needs an admin key")]
    AdminOnly(String),
}

impl Refusal {
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Refusal::Missing | Refusal::Invalid => tonic::Code::Unauthenticated,
            Refusal::ReadOnly(_) | Refusal::AdminOnly(_) => tonic::Code::PermissionDenied,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::Missing | Refusal::Invalid => StatusCode::UNAUTHORIZED,
            Refusal::ReadOnly(_) | Refusal::AdminOnly(_) => StatusCode::FORBIDDEN,
        }
    }
}

/// SHA-256 of a key, in lowercase hex: what a key file stores (`zhiku keys hash`).
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn parse_hex_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One accepted key: its hash and whom it stands for.
#[derive(Clone)]
struct Entry {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

/// A key file line of the principal form (one JSON object).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalLine {
    name: String,
    sha256: String,
    role: String,
    #[serde(default)]
    knowledge_bases: Option<Vec<String>>,
    #[serde(default)]
    groups: Vec<String>,
}

/// Longest group or principal name, and most groups of one principal.
pub const MAX_GROUP_BYTES: usize = 128;
pub const MAX_GROUPS: usize = 256;
/// Most reader groups of one document.
pub const MAX_READERS: usize = 64;

/// A document's reader groups, checked (at most [`MAX_READERS`], each a valid group name),
/// sorted and without repeats; `what` names the document in errors.
pub fn normalize_readers(readers: Vec<String>, what: &str) -> Result<Vec<String>, String> {
    if readers.len() > MAX_READERS {
        return Err(format!(
            "{what} lists {} reader groups; at most {MAX_READERS} are allowed",
            readers.len()
        ));
    }
    for group in &readers {
        validate_group(group).map_err(|e| format!("{what}: reader {e}"))?;
    }
    let mut readers = readers;
    readers.sort();
    readers.dedup();
    Ok(readers)
}

/// Checks a reader group's name: 1-128 bytes, visible ASCII or any non-ASCII letter, no
/// comma or whitespace (lists of groups are comma-separated on command lines).
pub fn validate_group(group: &str) -> Result<(), String> {
    if group.is_empty()
        || group.len() > MAX_GROUP_BYTES
        || group
            .chars()
            .any(|c| c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "group {group:?} is invalid: 1-{MAX_GROUP_BYTES} bytes without commas, spaces or \
             control characters"
        ));
    }
    Ok(())
}

/// The entries of a key file's text; errors name the file and the line.
fn parse_key_file(path: &Path, text: &str) -> Result<Vec<Entry>, String> {
    let origin = format!("--api-key-file {}", path.display());
    let mut entries: Vec<(Entry, usize)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let at = |what: String| format!("{origin}, line {line_no}: {what}");
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = if line.starts_with('{') {
            let p: PrincipalLine = serde_json::from_str(line).map_err(|e| {
                at(format!(
                    "{e} (a principal is one JSON object: name, sha256, role, and optionally \
                     knowledge_bases and groups)"
                ))
            })?;
            let hash = parse_hex_hash(&p.sha256.to_ascii_lowercase()).ok_or_else(|| {
                at("`sha256` is not 64 hex digits (make it with `zhiku keys hash`)".into())
            })?;
            let role = match p.role.as_str() {
                "admin" => Role::Full,
                "editor" => Role::Editor,
                "reader" => Role::ReadOnly,
                other => {
                    return Err(at(format!(
                        "unknown role `{other}` (admin, editor or reader)"
                    )));
                }
            };
            if p.name.trim().is_empty() || p.name.len() > MAX_GROUP_BYTES {
                return Err(at(format!("`name` must be 1-{MAX_GROUP_BYTES} bytes")));
            }
            if p.groups.len() > MAX_GROUPS {
                return Err(at(format!("more than {MAX_GROUPS} groups")));
            }
            for g in &p.groups {
                validate_group(g).map_err(at)?;
            }
            Entry {
                hash,
                principal: Arc::new(Principal {
                    name: p.name,
                    role,
                    knowledge_bases: p.knowledge_bases.map(|k| k.into_iter().collect()),
                    groups: p.groups.into_iter().collect(),
                }),
            }
        } else {
            let mut words = line.split_whitespace();
            let key = words.next().unwrap_or_default();
            let role = match words.next() {
                None | Some("full") => Role::Full,
                Some("read-only") => Role::ReadOnly,
                Some(other) => {
                    return Err(at(format!("unknown role `{other}` (full or read-only)")));
                }
            };
            check_key(key).map_err(at)?;
            Entry {
                hash: digest(key.as_bytes()),
                principal: Arc::new(Principal {
                    name: format!("key-file-line-{line_no}"),
                    role,
                    knowledge_bases: None,
                    groups: BTreeSet::new(),
                }),
            }
        };
        if let Some((_, first)) = entries.iter().find(|(e, _)| e.hash == entry.hash) {
            return Err(at(format!("the same key as line {first}")));
        }
        entries.push((entry, line_no));
    }
    Ok(entries.into_iter().map(|(e, _)| e).collect())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an API key is empty".into());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "an API key must be visible ASCII without spaces (it travels in an HTTP header)".into(),
        );
    }
    Ok(())
}

/// The reader groups the keys of a server hold: what a document's readers may name (a
/// group no key holds is a typo, or a document no reader would ever see). Put in a request's
/// extensions beside its principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownGroups(pub Arc<BTreeSet<String>>);

impl KnownGroups {
    fn of(entries: &[Entry]) -> Self {
        Self(Arc::new(
            entries
                .iter()
                .flat_map(|e| e.principal.groups.iter().cloned())
                .collect(),
        ))
    }

    /// An error naming the first of `readers` no key holds, and the groups there are.
    pub fn check(&self, readers: &[String]) -> Result<(), String> {
        match readers.iter().find(|r| !self.0.contains(*r)) {
            None => Ok(()),
            Some(unknown) => {
                let known: Vec<&str> = self.0.iter().map(String::as_str).collect();
                Err(format!(
                    "unknown reader group `{unknown}`: no API key holds it (the keys' groups: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            }
        }
    }
}

/// The key file's identity on disk, to notice a change.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The keys a server accepts: those of the flags, and those of `--api-key-file` as last
/// read.
pub struct ApiKeys {
    /// The flags' keys, then the file's.
    table: RwLock<Arc<Vec<Entry>>>,
    /// Every group some key of `table` holds.
    groups: RwLock<KnownGroups>,
    flag_entries: Vec<Entry>,
    file: Option<PathBuf>,
    open_health: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.entries().len())
            .field("file", &self.file)
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
        let entries: Vec<Entry> = keys
            .into_iter()
            .enumerate()
            .map(|(i, (key, role))| Entry {
                hash: digest(key.as_bytes()),
                principal: Arc::new(Principal {
                    name: format!("key-{}", i + 1),
                    role,
                    knowledge_bases: None,
                    groups: BTreeSet::new(),
                }),
            })
            .collect();
        Self::with_entries(entries, None, Vec::new(), open_health)
    }

    fn with_entries(
        flag_entries: Vec<Entry>,
        file: Option<PathBuf>,
        file_entries: Vec<Entry>,
        open_health: bool,
    ) -> Self {
        let mut all = flag_entries.clone();
        all.extend(file_entries);
        Self {
            groups: RwLock::new(KnownGroups::of(&all)),
            table: RwLock::new(Arc::new(all)),
            flag_entries,
            file,
            open_health,
        }
    }

    /// Every group some key holds, as the keys are now.
    pub fn known_groups(&self) -> KnownGroups {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn entries(&self) -> Arc<Vec<Entry>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys of the flags (and of `--api-key-file`); None when there are none (the server
    /// is open). Inside a tokio runtime, a key file is then watched for changes (see
    /// [`ApiKeys::reload`]) for as long as the keys are in use.
    pub fn from_args(args: &AuthArgs) -> Result<Option<Arc<Self>>, String> {
        let mut flag_entries: Vec<Entry> = Vec::new();
        let flags = [
            ("--api-key", "api-key", Role::Full, &args.api_keys),
            (
                "--read-only-api-key",
                "read-only-api-key",
                Role::ReadOnly,
                &args.read_only_api_keys,
            ),
        ];
        for (flag, name, role, keys) in flags {
            for (i, Secret(key)) in keys.iter().enumerate() {
                let key = key.trim();
                check_key(key).map_err(|e| format!("{flag}: {e}"))?;
                flag_entries.push(Entry {
                    hash: digest(key.as_bytes()),
                    principal: Arc::new(Principal {
                        name: format!("{name}-{}", i + 1),
                        role,
                        knowledge_bases: None,
                        groups: BTreeSet::new(),
                    }),
                });
            }
        }
        let file_entries = match &args.api_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
                parse_key_file(path, &text)?
            }
            None => Vec::new(),
        };
        if flag_entries.is_empty() && file_entries.is_empty() {
            return Ok(None);
        }
        let keys = Arc::new(Self::with_entries(
            flag_entries,
            args.api_key_file.clone(),
            file_entries,
            args.open_health,
        ));
        if keys.file.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(watch(Arc::downgrade(&keys)));
        }
        Ok(Some(keys))
    }

    /// Reads `--api-key-file` again: on success its keys replace the file's old ones; on
    /// failure the old keys stay in force and the error (naming the line) is returned.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.file else {
            return Ok(self.entries().len());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
        let file_entries = parse_key_file(path, &text)?;
        let mut all = self.flag_entries.clone();
        all.extend(file_entries);
        let n = all.len();
        *self.groups.write().unwrap_or_else(|e| e.into_inner()) = KnownGroups::of(&all);
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(all);
        Ok(n)
    }

    /// Whom `key` stands for, looked up by its hash in constant time over all keys.
    pub fn principal_of(&self, key: &[u8]) -> Option<Arc<Principal>> {
        let hash = digest(key);
        let entries = self.entries();
        let mut found = None;
        for entry in entries.iter() {
            if bool::from(ct_equal(&entry.hash, &hash)) {
                found = Some(entry.principal.clone());
            }
        }
        found
    }

    #[cfg(test)]
    fn role_of(&self, key: &[u8]) -> Option<Role> {
        self.principal_of(key).map(|p| p.role)
    }

    /// Whether a request with these `headers` for `path` (HTTP `method`) may go on.
    pub fn check(
        &self,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        self.authenticate(method, path, headers).map(|_| ())
    }

    /// The caller of a request with these `headers` for `path`, if it may go on; None for a
    /// call that needs no key (health and /metrics with `--open-health`).
    pub fn authenticate(
        &self,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        if self.open_health && (path.starts_with("/grpc.health.") || path == "/metrics") {
            return Ok(None);
        }
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Refusal::Missing)?;
        let key = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .ok_or(Refusal::Missing)?;
        let principal = self.principal_of(key).ok_or(Refusal::Invalid)?;
        let call = || path.rsplit('/').next().unwrap_or(path).to_owned();
        match principal.role {
            Role::Full => {}
            Role::ReadOnly if writes(method, path) => return Err(Refusal::ReadOnly(call())),
            Role::Editor if writes(method, path) && admin_only(method, path) => {
                return Err(Refusal::AdminOnly(call()));
            }
            Role::ReadOnly | Role::Editor => {}
        }
        Ok(Some(principal))
    }
}

/// Reloads the key file behind `keys` when it changes or on SIGHUP, until `keys` is dropped.
async fn watch(keys: std::sync::Weak<ApiKeys>) {
    let Some(path) = keys.upgrade().and_then(|k| k.file.clone()) else {
        return;
    };
    let mut seen = stamp(&path);
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the key file is polled only");
            None
        }
    };
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<bool>();
        let forced = tokio::select! {
            _ = tick.tick() => false,
            got = signalled => got,
        };
        let Some(keys) = keys.upgrade() else { return };
        let now = stamp(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match keys.reload() {
            Ok(n) => tracing::info!(file = %path.display(), keys = n, "API keys reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "API key file not reloaded; the previous keys stay in force")
            }
        }
    }
}

/// The caller of a gRPC request, as [`ApiKeyLayer`] left it; None on a server without keys.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<Arc<Principal>> {
    request.extensions().get::<Arc<Principal>>().cloned()
}

/// Confines the reader scope of a request to what `caller` may read: an admin's (a service
/// key's, which forwards its own caller's groups) and, on a server without keys, anyone's
/// stays as asked; any other caller's becomes its own groups (none: public documents only).
pub fn confine_scope(caller: Option<&Principal>, scope: &mut Option<zhiku_proto::v1::ReaderScope>) {
    if let Some(groups) = caller.and_then(Principal::readable_groups) {
        *scope = Some(zhiku_proto::v1::ReaderScope { groups });
    }
}

/// Whether `caller` (None: a server without keys) is shown who may read each document:
/// admins and editors (who set readers) are; a reader is not, since the other groups a
/// document it reads is shared with are not its to know.
pub fn sees_readers(caller: Option<&Principal>) -> bool {
    caller.is_none_or(|p| p.role != Role::ReadOnly)
}

/// PERMISSION_DENIED unless `caller` (None: a server without keys) may use knowledge base
/// `kb`.
pub fn require_kb(caller: Option<&Principal>, kb: &str) -> Result<(), tonic::Status> {
    match caller {
        Some(p) if !p.may_use(kb) => Err(tonic::Status::permission_denied(format!(
            "the API key of `{}` may not use knowledge base `{kb}`",
            p.name
        ))),
        _ => Ok(()),
    }
}

/// Calls only an admin may make: knowledge bases and adapters (not their documents).
pub fn admin_only(method: &http::Method, path: &str) -> bool {
    if let Some(rpc) = path
        .strip_prefix("/zhiku.v1.")
        .and_then(|p| p.split('/').nth(1))
    {
        return !matches!(
            rpc,
            "Ingest" | "DeleteDocument" | "Upsert" | "SetDocumentReaders"
        );
    }
    // The REST API: documents of a knowledge base are an editor's.
    let documents = path
        .strip_prefix("/v1/knowledge_bases/")
        .and_then(|rest| rest.split('/').nth(1))
        == Some("documents");
    !(documents && matches!(*method, http::Method::POST | http::Method::DELETE))
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
            "SetDocumentReaders",
            // The Tuner's: CreateJob starts training, CancelJob stops it.
            "CancelJob",
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if let Some(keys) = &self.keys {
            match keys.authenticate(request.method(), request.uri().path(), request.headers()) {
                Ok(Some(principal)) => {
                    request.extensions_mut().insert(principal);
                    request.extensions_mut().insert(keys.known_groups());
                }
                Ok(None) => {}
                Err(refusal) => {
                    tracing::warn!(path = %request.uri().path(), reason = %refusal, "call refused");
                    crate::metrics::metrics().auth_refusals.inc();
                    let response = refuse(&refusal, is_grpc(request.headers()));
                    return Box::pin(async move { Ok(response) });
                }
            }
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
            "/zhiku.v1.Tuner/CreateJob",
            "/zhiku.v1.Tuner/CancelJob",
        ] {
            assert!(writes(&post, rpc), "{rpc}");
        }
        for rpc in [
            "/zhiku.v1.Orchestrator/Ask",
            "/zhiku.v1.Orchestrator/ListDocuments",
            "/zhiku.v1.Retriever/Search",
            "/zhiku.v1.Generator/GenerateStream",
            "/zhiku.v1.Tuner/WatchJob",
            "/zhiku.v1.Tuner/ListJobs",
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

    fn principal_line(name: &str, key: &str, role: &str, extra: &str) -> String {
        format!(
            r#"{{"name": "{name}", "sha256": "{}", "role": "{role}"{extra}}}"#,
            key_hash(key)
        )
    }

    #[test]
    fn principals_of_a_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        let text = [
            "# principals".to_string(),
            principal_line("root", "k-admin", "admin", ""),
            principal_line(
                "ed",
                "k-editor",
                "editor",
                r#", "knowledge_bases": ["hr"], "groups": ["hr"]"#,
            ),
            principal_line("ann", "k-reader", "reader", r#", "groups": ["a", "b"]"#),
            "legacy-key read-only".to_string(),
        ]
        .join("\n");
        std::fs::write(&file, text).unwrap();
        let args = AuthArgs {
            api_key_file: Some(file.clone()),
            api_keys: vec![Secret("flag-key".into())],
            ..AuthArgs::default()
        };
        let keys = ApiKeys::from_args(&args).unwrap().unwrap();
        let ed = keys.principal_of(b"k-editor").unwrap();
        assert_eq!((ed.name.as_str(), ed.role), ("ed", Role::Editor));
        assert!(ed.may_use("hr") && !ed.may_use("finance"));
        assert_eq!(ed.readable_groups(), Some(vec!["hr".to_string()]));
        let ann = keys.principal_of(b"k-reader").unwrap();
        assert!(ann.may_use("anything"));
        assert_eq!(ann.readable_groups(), Some(vec!["a".into(), "b".into()]));
        let root = keys.principal_of(b"k-admin").unwrap();
        assert_eq!(root.readable_groups(), None);
        assert_eq!(keys.role_of(b"legacy-key"), Some(Role::ReadOnly));
        assert_eq!(keys.role_of(b"flag-key"), Some(Role::Full));
        let known = keys.known_groups();
        assert_eq!(known.check(&["a".into(), "hr".into()]), Ok(()));
        let err = known.check(&["hr".into(), "hx".into()]).unwrap_err();
        assert!(err.contains("`hx`") && err.contains("a, b, hr"), "{err}");
        // The hash is never accepted as a key.
        assert_eq!(keys.role_of(key_hash("k-admin").as_bytes()), None);

        // Editors write documents, not knowledge bases or adapters.
        let post = http::Method::POST;
        let with = |key: &str| headers(Some(&format!("Bearer {key}")));
        let ok = |path: &str| keys.check(&post, path, &with("k-editor"));
        assert_eq!(ok("/zhiku.v1.Orchestrator/Ingest"), Ok(()));
        assert_eq!(ok("/zhiku.v1.Orchestrator/DeleteDocument"), Ok(()));
        assert_eq!(ok("/zhiku.v1.Orchestrator/Ask"), Ok(()));
        assert_eq!(
            ok("/zhiku.v1.Orchestrator/CreateKnowledgeBase"),
            Err(Refusal::AdminOnly("CreateKnowledgeBase".into()))
        );
        assert_eq!(
            ok("/zhiku.v1.Orchestrator/BindAdapter"),
            Err(Refusal::AdminOnly("BindAdapter".into()))
        );
        assert_eq!(
            keys.check(&post, "/v1/knowledge_bases/hr/documents", &with("k-editor")),
            Ok(())
        );
        assert!(
            keys.check(&post, "/v1/knowledge_bases", &with("k-editor"))
                .is_err()
        );
        assert!(
            keys.check(
                &http::Method::DELETE,
                "/v1/knowledge_bases/hr",
                &with("k-editor")
            )
            .is_err()
        );
        assert_eq!(
            keys.check(&post, "/zhiku.v1.Orchestrator/Ingest", &with("k-reader")),
            Err(Refusal::ReadOnly("Ingest".into()))
        );

        // A malformed file keeps the keys in force and names its line.
        std::fs::write(
            &file,
            format!(
                "{}\n\n{}",
                principal_line("ann", "k-reader", "reader", ""),
                r#"{"name": "x", "sha256": "00", "role": "reader"}"#
            ),
        )
        .unwrap();
        let err = keys.reload().unwrap_err();
        assert!(err.contains("line 3") && err.contains("sha256"), "{err}");
        assert!(keys.principal_of(b"k-editor").is_some());
        for (bad, words) in [
            (principal_line("x", "k", "boss", ""), "boss"),
            (
                principal_line("x", "k", "reader", r#", "group": ["a"]"#),
                "group",
            ),
            (
                principal_line("x", "k", "reader", r#", "groups": ["a b"]"#),
                "invalid",
            ),
            ("{not json".to_string(), "line 1"),
        ] {
            std::fs::write(&file, &bad).unwrap();
            let err = keys.reload().unwrap_err();
            assert!(err.contains("line 1") && err.contains(words), "{err}");
        }
        let twice = format!(
            "{}\n{}",
            principal_line("x", "k", "reader", ""),
            principal_line("y", "k", "admin", "")
        );
        std::fs::write(&file, twice).unwrap();
        assert!(
            keys.reload()
                .unwrap_err()
                .contains("the same key as line 1")
        );
        // A good file replaces the file's keys; the flags' keys stay.
        std::fs::write(&file, principal_line("new", "k-new", "reader", "")).unwrap();
        assert_eq!(keys.reload(), Ok(2));
        assert!(keys.principal_of(b"k-editor").is_none());
        assert!(keys.principal_of(b"k-new").is_some());
        assert!(keys.principal_of(b"flag-key").is_some());
        assert!(!format!("{keys:?}").contains("k-new"));
    }

    #[tokio::test]
    async fn a_changed_key_file_is_read_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "old-key\n").unwrap();
        let args = AuthArgs {
            api_key_file: Some(file.clone()),
            ..AuthArgs::default()
        };
        let keys = ApiKeys::from_args(&args).unwrap().unwrap();
        // Let the watcher take its first look.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(keys.principal_of(b"old-key").is_some());
        std::fs::write(&file, "a-new-key-of-another-length\n").unwrap();
        let changed = std::time::Instant::now();
        while keys.principal_of(b"old-key").is_some() {
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "not revoked in 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(keys.principal_of(b"a-new-key-of-another-length").is_some());
    }

    #[tokio::test]
    async fn the_layer_puts_the_principal_in_the_request() {
        use tower::ServiceExt;
        let service = tower::service_fn(|r: Request<()>| async move {
            let name = r
                .extensions()
                .get::<Arc<Principal>>()
                .map(|p| p.name.clone())
                .unwrap_or_default();
            Ok::<_, std::convert::Infallible>(Response::new(name))
        });
        let keys = Arc::new(ApiKeys::new([("k", Role::ReadOnly)], false));
        let request = Request::builder()
            .uri("/v1/models")
            .header("authorization", "Bearer k")
            .body(())
            .unwrap();
        let response = ApiKeyLayer::new(Some(keys))
            .layer(service)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.into_body(), "key-1");
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
