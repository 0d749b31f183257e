//! Routing over replicas: each downstream service (embedder, retriever, generator) is a set
//! of replicas behind one gRPC client. The set is a tower service under the generated
//! clients, so every call site stays as it was with one address.
//!
//! - Replicas come from a comma-separated list and from `dns://name:port` names, re-resolved
//!   every `--downstream-dns-refresh-seconds` (a Kubernetes headless service: one address per
//!   ready pod).
//! - Health: each replica's `grpc.health.v1` status is asked every
//!   `--downstream-health-interval-ms` (logged at DEBUG; changes at INFO and WARN). One that
//!   is NOT_SERVING (loading, draining), unreachable, or whose call just failed to connect
//!   gets no new calls until a check says SERVING again. While none is serving, calls go to
//!   them anyway and fail with their own error.
//! - Choice: power of two choices on calls in flight ([`pick`]); generation (GenerateStream,
//!   Generate, NextTokenLogprobs) by prefix ([`prefix`]) under `--generator-routing prefix`.
//! - Retry: a call that is idempotent (Embed, Rerank, Search, Info, ...) or a generation
//!   that failed before its first message (connection refused or reset, UNAVAILABLE,
//!   RESOURCE_EXHAUSTED) is sent once more to another replica. A generation that breaks
//!   after its first token ends with UNAVAILABLE naming the replica. LoadAdapter and
//!   UnloadAdapter go to every replica.
//! - Pinned: a call that carries [`Pinned`] goes to that replica alone, once (the tuner's
//!   jobs live on the replica that runs them: [`crate::tuners`]).

pub mod body;
pub mod metrics;
pub mod pick;
pub mod prefix;
pub mod targets;

use std::collections::BTreeSet;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt;
use zhiku_runtime::request_id::PropagateRequestId;

use body::{Bytes, ReplicaBody};
use metrics::{InFlight, metrics};
use pick::Load;
use prefix::{PrefixKeys, PrefixTable};
use targets::{Resolved, Target};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How generations pick their generator replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerationRouting {
    /// To the replica that last served the longest prefix the request shares with an
    /// earlier one (its prefix cache holds it), unless that one is too busy
    /// (--generator-max-imbalance); else the least loaded.
    Prefix,
    /// The replica with the fewest calls in flight.
    LeastLoaded,
    /// Each replica in turn (for comparison).
    RoundRobin,
}

/// The flags of the replica sets.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ReplicaArgs {
    /// Time between two health checks of each downstream replica, in milliseconds.
    #[arg(
        long,
        env = "ZHIKU_DOWNSTREAM_HEALTH_INTERVAL_MS",
        default_value_t = 500
    )]
    pub downstream_health_interval_ms: u64,

    /// Time between two resolutions of a `dns://name:port` downstream address, in seconds.
    #[arg(
        long,
        env = "ZHIKU_DOWNSTREAM_DNS_REFRESH_SECONDS",
        default_value_t = 5
    )]
    pub downstream_dns_refresh_seconds: u64,

    /// How a generation picks its generator replica: prefix (to the replica that served
    /// the longest prefix it shares with an earlier request), least-loaded or round-robin.
    #[arg(long, env = "ZHIKU_GENERATOR_ROUTING", value_enum, default_value_t = GenerationRouting::Prefix)]
    pub generator_routing: GenerationRouting,

    /// Prefixes the generator routing table remembers (the least recently used go first).
    #[arg(long, env = "ZHIKU_GENERATOR_PREFIX_ROUTES", default_value_t = 65_536)]
    pub generator_prefix_routes: usize,

    /// With --generator-routing prefix: a generation leaves the replica holding its prefix
    /// for the least loaded one when the first has more than this many calls in flight over
    /// the second.
    #[arg(long, env = "ZHIKU_GENERATOR_MAX_IMBALANCE", default_value_t = 4)]
    pub generator_max_imbalance: usize,
}

/// A request extension: the call goes to the replica at this address, once, whatever its
/// health (it alone holds what the call is about); UNAVAILABLE when the set no longer has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned(pub Arc<str>);

/// What a replica's last health check (or call) said.
const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
const DOWN: u8 = 2;

/// One replica of a service.
pub struct Replica {
    pub service: &'static str,
    pub address: Arc<str>,
    channel: Channel,
    in_flight: AtomicUsize,
    health: AtomicU8,
}

impl Replica {
    fn load(&self) -> Load {
        Load {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            eligible: self.health.load(Ordering::Relaxed) != DOWN,
        }
    }

    fn set_health(&self, health: u8, reason: &str) {
        let before = self.health.swap(health, Ordering::Relaxed);
        metrics()
            .serving
            .with_label_values(&[self.service, &self.address])
            .set(i64::from(health != DOWN));
        if before == health {
            return;
        }
        match health {
            SERVING => tracing::info!(
                service = self.service,
                replica = %self.address,
                "the replica is SERVING: it takes calls"
            ),
            _ => tracing::warn!(
                service = self.service,
                replica = %self.address,
                reason,
                "the replica takes no new calls until its health check says SERVING"
            ),
        }
    }
}

/// How a call is sent, by its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    /// To one replica, not retried (writes, client streams).
    Once,
    /// Retried once on another replica when it fails before answering.
    Idempotent,
    /// As idempotent, routed by prefix.
    Generation,
    /// To every replica (state each replica keeps: adapters).
    Broadcast,
}

impl CallKind {
    fn of(path: &str) -> Self {
        let method = path.rsplit('/').next().unwrap_or_default();
        match method {
            "GenerateStream" | "Generate" | "NextTokenLogprobs" => CallKind::Generation,
            "LoadAdapter" | "UnloadAdapter" => CallKind::Broadcast,
            "Embed"
            | "Rerank"
            | "Tokenize"
            | "Info"
            | "CountTokens"
            | "Recognize"
            | "Search"
            | "DescribeKnowledgeBase"
            | "ListKnowledgeBases"
            | "ListDocuments"
            | "Check" => CallKind::Idempotent,
            _ => CallKind::Once,
        }
    }
}

struct Shared {
    service: &'static str,
    /// The gRPC service name health checks ask about.
    grpc_service: &'static str,
    targets: Vec<Target>,
    ca_cert: Option<PathBuf>,
    caller: PropagateRequestId,
    settings: ReplicaArgs,
    replicas: RwLock<Arc<Vec<Arc<Replica>>>>,
    prefixes: Mutex<PrefixTable>,
    turns: AtomicU64,
    started: Once,
    /// Set once the first resolution of DNS targets is done (or there were none).
    resolved: tokio::sync::OnceCell<()>,
}

/// The replicas of one downstream service, as one tower service for its gRPC client.
#[derive(Clone)]
pub struct ReplicaSet {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("service", &self.shared.service)
            .field("replicas", &self.addresses())
            .finish()
    }
}

fn connect(
    service: &'static str,
    resolved: &Resolved,
    ca_cert: Option<&std::path::Path>,
) -> Result<Replica, String> {
    let endpoint = zhiku_runtime::client::endpoint_for(
        &resolved.address,
        ca_cert,
        resolved.tls_domain.as_deref(),
    )?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(Replica {
        service,
        address: Arc::from(resolved.address.as_str()),
        channel,
        in_flight: AtomicUsize::new(0),
        health: AtomicU8::new(UNKNOWN),
    })
}

fn random() -> u64 {
    RandomState::new().hash_one(std::time::Instant::now())
}

impl ReplicaSet {
    /// The replicas of `service` (health-checked as `grpc_service`) at `addresses` (a
    /// comma-separated list of addresses and `dns://name:port` names). Fixed addresses are
    /// checked here; names are resolved at the first call.
    pub fn new(
        service: &'static str,
        grpc_service: &'static str,
        addresses: &str,
        ca_cert: Option<&std::path::Path>,
        caller: PropagateRequestId,
        settings: ReplicaArgs,
    ) -> Result<Self, String> {
        let targets = targets::parse(addresses)?;
        let mut replicas = Vec::new();
        for target in &targets {
            if let Target::Fixed(address) = target {
                let resolved = Resolved {
                    address: address.clone(),
                    tls_domain: None,
                };
                replicas.push(Arc::new(connect(service, &resolved, ca_cert)?));
            }
        }
        Ok(Self {
            shared: Arc::new(Shared {
                service,
                grpc_service,
                prefixes: Mutex::new(PrefixTable::new(settings.generator_prefix_routes)),
                targets,
                ca_cert: ca_cert.map(PathBuf::from),
                caller,
                settings,
                replicas: RwLock::new(Arc::new(replicas)),
                turns: AtomicU64::new(0),
                started: Once::new(),
                resolved: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The service's name ("generator").
    pub fn service(&self) -> &'static str {
        self.shared.service
    }

    /// The replicas' addresses now.
    pub fn addresses(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .map(|r| r.address.to_string())
            .collect()
    }

    /// Whether a replica's last health check said SERVING.
    pub fn serving(&self) -> bool {
        self.snapshot()
            .iter()
            .any(|r| r.health.load(Ordering::Relaxed) == SERVING)
    }

    /// Whether every replica has had a health check (or a call) since it was added.
    pub fn checked(&self) -> bool {
        self.snapshot()
            .iter()
            .all(|r| r.health.load(Ordering::Relaxed) != UNKNOWN)
    }

    /// The replicas a new call may go to now: those not known to be down, else all of them
    /// (as the choice of a replica takes them).
    pub fn candidates(&self) -> Vec<Arc<str>> {
        let replicas = self.snapshot();
        let loads: Vec<Load> = replicas.iter().map(|r| r.load()).collect();
        pick::candidates(&loads, None)
            .into_iter()
            .map(|i| Arc::clone(&replicas[i].address))
            .collect()
    }

    /// Every replica's address now, down or not.
    pub fn all(&self) -> Vec<Arc<str>> {
        self.snapshot()
            .iter()
            .map(|r| Arc::clone(&r.address))
            .collect()
    }

    /// Calls in flight per replica address now.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        self.snapshot()
            .iter()
            .map(|r| (r.address.to_string(), r.in_flight.load(Ordering::Relaxed)))
            .collect()
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Replica>>> {
        match self.shared.replicas.read() {
            Ok(replicas) => Arc::clone(&replicas),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Starts the health checks (and DNS resolution) on the current runtime, once; they end
    /// when the set is dropped. Called by the first call, and by readiness.
    pub fn start(&self) {
        let weak = Arc::downgrade(&self.shared);
        self.shared.started.call_once(|| {
            tokio::spawn(watch(weak));
        });
    }

    /// Resolves DNS targets once before the first call has anywhere to go.
    async fn first_resolution(&self) {
        if !targets::dynamic(&self.shared.targets) {
            return;
        }
        self.shared
            .resolved
            .get_or_init(|| async { refresh(&self.shared).await })
            .await;
    }

    async fn call_balanced(
        self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        self.start();
        self.first_resolution().await;
        if let Some(Pinned(address)) = request.extensions().get::<Pinned>().cloned() {
            let replicas = self.snapshot();
            let Some(replica) = replicas.iter().find(|r| r.address == address) else {
                return Err(Box::new(tonic::Status::unavailable(format!(
                    "the {} replica {address} is no longer one of its addresses",
                    self.shared.service
                ))));
            };
            return self.send_once(replica, request).await;
        }
        let kind = CallKind::of(request.uri().path());
        if kind == CallKind::Once {
            let replicas = self.snapshot();
            let loads: Vec<Load> = replicas.iter().map(|r| r.load()).collect();
            let Some(i) = pick::two_choices(&loads, None, random()) else {
                return Err(self.no_replica());
            };
            self.note_imbalance(&loads);
            return self.send_once(&replicas[i], request).await;
        }
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await?.to_bytes();
        if kind == CallKind::Broadcast {
            return self.broadcast(&parts, bytes).await;
        }
        let keys = match (kind, self.shared.settings.generator_routing) {
            (CallKind::Generation, GenerationRouting::Prefix) => {
                PrefixKeys::of_grpc_frame(parts.uri.path(), &bytes)
            }
            _ => None,
        };
        let replicas = self.snapshot();
        let loads: Vec<Load> = replicas.iter().map(|r| r.load()).collect();
        self.note_imbalance(&loads);
        let first = match kind {
            CallKind::Generation => self.route_generation(&replicas, &loads, keys.as_ref()),
            _ => pick::two_choices(&loads, None, random()),
        };
        let Some(first) = first else {
            return Err(self.no_replica());
        };
        let failure = match self
            .send_peeked(&replicas[first], rebuild(&parts, bytes.clone()), kind)
            .await
        {
            Ok(response) => return Ok(response),
            Err(failure) => failure,
        };
        // Once more, elsewhere: the least loaded of the others.
        let loads: Vec<Load> = replicas.iter().map(|r| r.load()).collect();
        let Some(second) = pick::least_loaded(&loads, Some(first), random()) else {
            return Err(failure);
        };
        tracing::info!(
            service = self.shared.service,
            failed = %replicas[first].address,
            retry_on = %replicas[second].address,
            error = %failure,
            "a call failed before answering: sent to another replica"
        );
        metrics()
            .retries
            .with_label_values(&[self.shared.service])
            .inc();
        if kind == CallKind::Generation {
            metrics().routes.with_label_values(&["retry"]).inc();
            if let Some(keys) = &keys {
                self.record(keys, &replicas[second]);
            }
        }
        self.send_peeked(&replicas[second], rebuild(&parts, bytes), kind)
            .await
    }

    fn no_replica(&self) -> BoxError {
        Box::new(tonic::Status::unavailable(format!(
            "no {} replica: the address resolves to none",
            self.shared.service
        )))
    }

    fn note_imbalance(&self, loads: &[Load]) {
        metrics()
            .imbalance
            .with_label_values(&[self.shared.service])
            .set(i64::try_from(pick::imbalance(loads)).unwrap_or(i64::MAX));
    }

    /// The replica for a generation with prefix `keys`, under --generator-routing.
    fn route_generation(
        &self,
        replicas: &[Arc<Replica>],
        loads: &[Load],
        keys: Option<&PrefixKeys>,
    ) -> Option<usize> {
        let settings = &self.shared.settings;
        let (chosen, route) = match settings.generator_routing {
            GenerationRouting::RoundRobin => {
                let turn = self.shared.turns.fetch_add(1, Ordering::Relaxed);
                (pick::round_robin(loads, None, turn)?, "round_robin")
            }
            GenerationRouting::LeastLoaded => {
                (pick::least_loaded(loads, None, random())?, "least_loaded")
            }
            GenerationRouting::Prefix => {
                let least = pick::least_loaded(loads, None, random())?;
                let candidates = pick::candidates(loads, None);
                let held = keys.and_then(|keys| {
                    let table = self.shared.prefixes.lock().ok()?;
                    let (address, _) = table.lookup(keys, |address| {
                        candidates.iter().any(|&i| &*replicas[i].address == address)
                    })?;
                    replicas.iter().position(|r| r.address == address)
                });
                match held {
                    Some(i)
                        if loads[i].in_flight
                            <= loads[least].in_flight + settings.generator_max_imbalance =>
                    {
                        (i, "prefix_hit")
                    }
                    Some(_) => (least, "prefix_busy"),
                    None => (least, "prefix_miss"),
                }
            }
        };
        metrics().routes.with_label_values(&[route]).inc();
        if let Some(keys) = keys {
            self.record(keys, &replicas[chosen]);
        }
        tracing::debug!(
            replica = %replicas[chosen].address,
            route,
            "generation routed"
        );
        Some(chosen)
    }

    fn record(&self, keys: &PrefixKeys, replica: &Replica) {
        if let Ok(mut table) = self.shared.prefixes.lock() {
            table.record(keys, &replica.address);
            metrics()
                .prefix_routes
                .set(i64::try_from(table.len()).unwrap_or(i64::MAX));
        }
    }

    /// Sends `request` to `replica`, its response body holding the call in flight.
    async fn send_once(
        &self,
        replica: &Arc<Replica>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let (response, in_flight) = send(replica, request).await?;
        let (parts, inner) = response.into_parts();
        Ok(http::Response::from_parts(
            parts,
            Body::new(ReplicaBody {
                ahead: None,
                inner,
                in_flight,
                started_on: None,
            }),
        ))
    }

    /// Sends `request` to `replica` and reads its response up to the first message: a
    /// failure before it (which another replica may not have) is returned as an error to
    /// retry, anything else as the response.
    async fn send_peeked(
        &self,
        replica: &Arc<Replica>,
        request: http::Request<Body>,
        kind: CallKind,
    ) -> Result<http::Response<Body>, BoxError> {
        let (response, in_flight) = send(replica, request).await?;
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            return match retryable(&status, replica) {
                true => Err(Box::new(status)),
                false => Ok(response),
            };
        }
        let (parts, mut inner) = response.into_parts();
        let ahead = match inner.frame().await {
            None => None,
            Some(Err(status)) => {
                replica.set_health(DOWN, "its response broke before its first message");
                return Err(Box::new(status));
            }
            Some(Ok(frame)) => {
                if let Some(status) = frame
                    .trailers_ref()
                    .and_then(tonic::Status::from_header_map)
                    && retryable(&status, replica)
                {
                    return Err(Box::new(status));
                }
                Some(frame)
            }
        };
        let started_on = (kind == CallKind::Generation).then(|| Arc::clone(&replica.address));
        Ok(http::Response::from_parts(
            parts,
            Body::new(ReplicaBody {
                ahead,
                inner,
                in_flight,
                started_on,
            }),
        ))
    }

    /// Sends the request to every replica (the serving ones, or all when none is); answers
    /// the first failure, else the first answer.
    async fn broadcast(
        &self,
        parts: &http::request::Parts,
        bytes: Bytes,
    ) -> Result<http::Response<Body>, BoxError> {
        let replicas = self.snapshot();
        let loads: Vec<Load> = replicas.iter().map(|r| r.load()).collect();
        let targets = pick::candidates(&loads, None);
        if targets.is_empty() {
            return Err(self.no_replica());
        }
        let replicas = &replicas;
        let calls = targets.iter().map(|&i| {
            let request = rebuild(parts, bytes.clone());
            async move { whole(self.send_once(&replicas[i], request).await?).await }
        });
        let mut answers = Vec::new();
        for answer in futures::future::join_all(calls).await {
            let (response, status) = answer?;
            if status.is_some() {
                return Ok(response);
            }
            answers.push(response);
        }
        answers.into_iter().next().ok_or_else(|| self.no_replica())
    }
}

/// Sends `request` to `replica`: its response, and the call in flight until the response's
/// body ends. A replica the call could not be sent to is marked down.
async fn send(
    replica: &Arc<Replica>,
    request: http::Request<Body>,
) -> Result<(http::Response<Body>, InFlight), BoxError> {
    let in_flight = InFlight::start(replica);
    match replica.channel.clone().oneshot(request).await {
        Ok(response) => Ok((response, in_flight)),
        Err(e) => {
            replica.set_health(DOWN, "the call could not be sent");
            Err(e.into())
        }
    }
}

/// Whether a status that came before any message is worth another replica: the replica
/// cannot serve (UNAVAILABLE: loading, draining; marked down until its check says SERVING)
/// or is full (RESOURCE_EXHAUSTED).
fn retryable(status: &tonic::Status, replica: &Replica) -> bool {
    match status.code() {
        tonic::Code::Unavailable => {
            replica.set_health(DOWN, "it answered UNAVAILABLE");
            true
        }
        tonic::Code::ResourceExhausted => true,
        _ => false,
    }
}

/// A response read whole, and its gRPC status when that is not OK.
async fn whole(
    response: http::Response<Body>,
) -> Result<(http::Response<Body>, Option<tonic::Status>), BoxError> {
    let (parts, mut body) = response.into_parts();
    let mut status = tonic::Status::from_header_map(&parts.headers);
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(trailers) = frame.trailers_ref() {
            status = status.or_else(|| tonic::Status::from_header_map(trailers));
        }
        frames.push(Ok::<_, tonic::Status>(frame));
    }
    let status = status.filter(|s| s.code() != tonic::Code::Ok);
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    Ok((http::Response::from_parts(parts, Body::new(body)), status))
}

/// A request with `parts` and the buffered `bytes` as its body, to send (again).
fn rebuild(parts: &http::request::Parts, bytes: Bytes) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(bytes)));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

impl tower::Service<http::Request<Body>> for ReplicaSet {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits on its replica's channel; the set itself is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().call_balanced(request))
    }
}

/// Re-resolves the DNS targets of `shared`: new addresses become replicas, gone ones are
/// dropped (their calls in flight finish).
async fn refresh(shared: &Shared) {
    if !targets::dynamic(&shared.targets) {
        return;
    }
    let (found, errors) = targets::resolve(&shared.targets).await;
    for error in errors {
        tracing::warn!(
            service = shared.service,
            error,
            "a downstream name did not resolve"
        );
    }
    let current = match shared.replicas.read() {
        Ok(r) => Arc::clone(&r),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    };
    let known: BTreeSet<&str> = current.iter().map(|r| &*r.address).collect();
    let wanted: BTreeSet<&str> = found.iter().map(|r| r.address.as_str()).collect();
    if known == wanted {
        return;
    }
    let mut next: Vec<Arc<Replica>> = current
        .iter()
        .filter(|r| wanted.contains(&*r.address))
        .cloned()
        .collect();
    for gone in current.iter().filter(|r| !wanted.contains(&*r.address)) {
        let m = metrics();
        let labels = [shared.service, &*gone.address];
        let _ = m.serving.remove_label_values(&labels);
        let _ = m.in_flight.remove_label_values(&labels);
        let _ = m.calls.remove_label_values(&labels);
    }
    for resolved in found.iter().filter(|r| !known.contains(r.address.as_str())) {
        match connect(shared.service, resolved, shared.ca_cert.as_deref()) {
            Ok(replica) => next.push(Arc::new(replica)),
            Err(e) => tracing::warn!(
                service = shared.service,
                address = %resolved.address,
                error = %e,
                "cannot use a resolved address"
            ),
        }
    }
    tracing::info!(
        service = shared.service,
        replicas = ?next.iter().map(|r| r.address.to_string()).collect::<Vec<_>>(),
        "the downstream name resolved to other replicas"
    );
    if let Ok(mut replicas) = shared.replicas.write() {
        *replicas = Arc::new(next);
    }
}

/// The set's background work: health checks every interval, DNS every refresh; ends when
/// the set is dropped.
async fn watch(shared: Weak<Shared>) {
    // Names are resolved at once: readiness waits on their replicas.
    let mut last_resolution: Option<tokio::time::Instant> = None;
    loop {
        let Some(set) = shared.upgrade() else {
            return;
        };
        let interval = Duration::from_millis(set.settings.downstream_health_interval_ms.max(10));
        let refresh_every = Duration::from_secs(set.settings.downstream_dns_refresh_seconds.max(1));
        if last_resolution.is_none_or(|t| t.elapsed() >= refresh_every) {
            refresh(&set).await;
            last_resolution = Some(tokio::time::Instant::now());
        }
        let replicas = match set.replicas.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        let timeout = (interval * 4).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let checks = replicas.iter().map(|replica| {
            let caller = set.caller.clone();
            let service = set.grpc_service;
            async move {
                let answer = zhiku_runtime::health::check_as(
                    replica.channel.clone(),
                    caller,
                    service,
                    timeout,
                )
                .await;
                tracing::debug!(
                    service = replica.service,
                    replica = %replica.address,
                    answer = ?answer.as_ref().map(|s| s.as_str_name()),
                    "health check"
                );
                match answer {
                    Ok(status) if status as i32 == 1 => replica.set_health(SERVING, ""),
                    Ok(status) => replica.set_health(DOWN, status.as_str_name()),
                    Err(e) => replica.set_health(DOWN, e.message()),
                }
            }
        });
        futures::future::join_all(checks).await;
        drop(set);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::server::HealthReporter;

    const SERVICE: &str = "zhiku.v1.Generator";

    /// A real grpc.health.v1 server on loopback, saying SERVING for [`SERVICE`].
    async fn health_server() -> (String, HealthReporter) {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(SERVICE, ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (address, reporter)
    }

    /// An address where nothing listens.
    async fn closed_address() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        address
    }

    fn settings(interval_ms: u64) -> ReplicaArgs {
        ReplicaArgs {
            downstream_health_interval_ms: interval_ms,
            downstream_dns_refresh_seconds: 5,
            generator_routing: GenerationRouting::Prefix,
            generator_prefix_routes: 1000,
            generator_max_imbalance: 4,
        }
    }

    fn set_of(addresses: &[&str], interval_ms: u64) -> ReplicaSet {
        ReplicaSet::new(
            "generator",
            SERVICE,
            &addresses.join(","),
            None,
            PropagateRequestId::default(),
            settings(interval_ms),
        )
        .unwrap()
    }

    async fn check(set: &ReplicaSet) -> Result<i32, tonic::Status> {
        check_on(set, None).await
    }

    /// A health check through `set`, pinned to `replica` when there is one.
    async fn check_on(set: &ReplicaSet, replica: Option<&str>) -> Result<i32, tonic::Status> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: SERVICE.into(),
        });
        request.set_timeout(Duration::from_secs(5));
        if let Some(replica) = replica {
            request.extensions_mut().insert(Pinned(Arc::from(replica)));
        }
        Ok(HealthClient::new(set.clone())
            .check(request)
            .await?
            .into_inner()
            .status)
    }

    fn calls_to(address: &str) -> u64 {
        metrics()
            .calls
            .with_label_values(&["generator", address])
            .get()
    }

    #[tokio::test]
    async fn a_call_to_a_replica_that_refuses_connections_is_answered_by_another() {
        let dead = closed_address().await;
        let (alive, _reporter) = health_server().await;
        // Health checks far apart: only the calls themselves find the dead replica.
        let set = set_of(&[&dead, &alive], 60_000);
        for _ in 0..20 {
            assert_eq!(check(&set).await.unwrap(), ServingStatus::Serving as i32);
        }
        // The dead one was tried at most once: its failure kept it out of the choice.
        assert!(calls_to(&dead) <= 1, "{}", calls_to(&dead));
        assert_eq!(calls_to(&alive), 20);
        // With only the dead one there is nothing to retry on: its own error comes back.
        let alone = set_of(&[&dead], 60_000);
        assert_eq!(
            check(&alone).await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }

    #[tokio::test]
    async fn a_pinned_call_goes_to_its_replica_alone_and_is_not_retried_elsewhere() {
        let dead = closed_address().await;
        let (alive, _reporter) = health_server().await;
        let set = set_of(&[&dead, &alive], 60_000);
        for _ in 0..3 {
            check_on(&set, Some(&alive)).await.unwrap();
        }
        assert_eq!(calls_to(&alive), 3);
        // Pinned to the dead one (an idempotent call, else retried): its own failure.
        let failed = check_on(&set, Some(&dead)).await.unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
        assert_eq!(calls_to(&alive), 3, "sent to another replica");
        assert_eq!(calls_to(&dead), 1);
        // An address the set does not have: UNAVAILABLE naming it.
        let gone = check_on(&set, Some("http://127.0.0.1:9"))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::Unavailable);
        assert!(gone.message().contains("http://127.0.0.1:9"), "{gone:?}");
    }

    #[tokio::test]
    async fn a_not_serving_replica_gets_no_calls_and_comes_back_by_itself() {
        let (a, reporter_a) = health_server().await;
        let (b, _reporter_b) = health_server().await;
        let set = set_of(&[&a, &b], 50);
        set.start();
        reporter_a
            .set_service_status(SERVICE, ServingStatus::NotServing)
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while set.in_flight().is_empty() || !set.checked() || set.snapshot()[0].load().eligible {
            assert!(Instant::now() < deadline, "A never looked down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(set.serving());
        let before = calls_to(&a);
        for _ in 0..20 {
            check(&set).await.unwrap();
        }
        assert_eq!(calls_to(&a), before, "a NOT_SERVING replica took calls");
        reporter_a
            .set_service_status(SERVICE, ServingStatus::Serving)
            .await;
        while !set.snapshot()[0].load().eligible {
            assert!(Instant::now() < deadline, "A never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..40 {
            check(&set).await.unwrap();
        }
        assert!(calls_to(&a) > before, "A took no calls after it came back");
    }

    #[tokio::test]
    async fn a_dns_name_is_resolved_and_checked_before_any_call() {
        let (alive, _reporter) = health_server().await;
        let port = alive.rsplit(':').next().unwrap();
        let set = set_of(&[&format!("dns://localhost:{port}")], 50);
        // Readiness starts the checks; no call has been made.
        set.start();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !set.serving() {
            assert!(
                Instant::now() < deadline,
                "the name's replicas were never checked"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(set.addresses().contains(&alive), "{:?}", set.addresses());
        // Whatever else localhost resolves to (::1, where nothing listens) takes no call.
        for _ in 0..10 {
            check(&set).await.unwrap();
        }
    }

    #[test]
    fn calls_are_sent_by_their_method() {
        let expected = [
            ("Generator/GenerateStream", CallKind::Generation),
            ("Generator/NextTokenLogprobs", CallKind::Generation),
            ("Embedder/Embed", CallKind::Idempotent),
            ("Retriever/Search", CallKind::Idempotent),
            ("Embedder/Rerank", CallKind::Idempotent),
            // OCR, on the embedder's replicas: retried once elsewhere as Embed is.
            ("Embedder/Recognize", CallKind::Idempotent),
            ("Retriever/Upsert", CallKind::Once),
            ("Embedder/EmbedStream", CallKind::Once),
            ("Generator/LoadAdapter", CallKind::Broadcast),
        ];
        for (method, kind) in expected {
            assert_eq!(
                CallKind::of(&format!("/zhiku.v1.{method}")),
                kind,
                "{method}"
            );
        }
    }
}
