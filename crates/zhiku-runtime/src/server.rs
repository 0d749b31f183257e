//! Serving one zhiku gRPC service with everything every service needs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;

use crate::auth::{ApiKeyLayer, ApiKeys};
use crate::config::{EffectiveConfig, ServerArgs};
pub use crate::error::RuntimeError;
use crate::limit::ConcurrencyLimitLayer;
use crate::metrics::MetricsLayer;
use crate::request_id::RequestIdLayer;

/// Binds a TCP listener with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Bind { addr, source })
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Serves one zhiku service, plus health and reflection.
pub struct ServiceRuntime {
    args: ServerArgs,
    service_name: &'static str,
    health: HealthReporter,
    readiness: Option<watch::Receiver<bool>>,
    limit: ConcurrencyLimitLayer,
}

impl ServiceRuntime {
    /// `service_name` is the fully qualified gRPC name (`zhiku.v1.Embedder`). Health starts
    /// NOT_SERVING, for the service and for the whole server ("").
    pub async fn new(args: ServerArgs, service_name: &'static str) -> Self {
        let health = HealthReporter::new();
        set_status(&health, service_name, ServingStatus::NotServing).await;
        Self {
            limit: ConcurrencyLimitLayer::new(args.max_concurrent_requests),
            args,
            service_name,
            health,
            readiness: None,
        }
    }

    /// The server's concurrency limit (--max-concurrent-requests), shared by everything that
    /// serves calls beside the gRPC service.
    pub fn concurrency_limit(&self) -> ConcurrencyLimitLayer {
        self.limit.clone()
    }

    /// After loading, health follows `readiness` (SERVING while it is true) instead of
    /// turning SERVING for good: for a service that is only useful while others are up.
    pub fn follow_readiness(mut self, readiness: watch::Receiver<bool>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    pub fn args(&self) -> &ServerArgs {
        &self.args
    }

    /// Largest message, for `max_decoding_message_size` / `max_encoding_message_size`.
    pub fn max_message_bytes(&self) -> usize {
        self.args.max_message_bytes
    }

    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves `service` on `listener` until `shutdown` resolves.
    ///
    /// `load` runs beside the server: when it succeeds, health turns SERVING; when it fails,
    /// the server shuts down and the error is returned (the binary exits non-zero). After
    /// `shutdown`, health turns NOT_SERVING, new calls are refused and in-flight calls get
    /// `--shutdown-grace-seconds` to finish.
    pub async fn serve<S, L, E>(
        self,
        listener: TcpListener,
        service: S,
        load: L,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RuntimeError>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        L: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let Self {
            args,
            service_name,
            health,
            readiness,
            limit,
        } = self;

        let keys = ApiKeys::from_args(&args.auth).map_err(RuntimeError::Auth)?;
        let tls = crate::tls::Identity::from_args(&args.tls)
            .await?
            .map(|identity| identity.grpc());
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(zhiku_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(service_name)
                .with_service_name("grpc.health.v1.Health")
        };
        let reflection_v1 = reflection()
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .build_v1()?;
        let reflection_v1alpha = reflection()
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
            .build_v1alpha()?;
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );

        let local = listener.local_addr().ok();
        // Server::tcp_nodelay only reaches sockets tonic binds itself; ours come from our own
        // listener, so Nagle is turned off here. Without this a small unary reply waits for
        // the client's delayed ACK: ~40 ms added to every call.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));

        // `stop` turns true on a signal or a failed load; the server then drains.
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let load_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));

        {
            let health = health.clone();
            let stop_tx = stop_tx.clone();
            let load_error = load_error.clone();
            let stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                match load.await {
                    Ok(()) => match readiness {
                        None => {
                            set_status(&health, service_name, ServingStatus::Serving).await;
                            tracing::info!(service = service_name, "loaded; health is SERVING");
                        }
                        Some(readiness) => {
                            tracing::info!(
                                service = service_name,
                                "loaded; health follows its readiness"
                            );
                            follow(health, service_name, readiness, stop_rx).await;
                        }
                    },
                    Err(e) => {
                        tracing::error!(service = service_name, error = %e, "loading failed");
                        if let Ok(mut slot) = load_error.lock() {
                            *slot = Some(e.to_string());
                        }
                        let _ = stop_tx.send(true);
                    }
                }
            });
        }
        {
            let stop_tx = stop_tx.clone();
            tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            });
        }

        let server_shutdown = {
            let health = health.clone();
            let mut stop_rx = stop_rx.clone();
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
                set_status(&health, service_name, ServingStatus::NotServing).await;
                tracing::info!(
                    service = service_name,
                    "shutting down: draining in-flight calls"
                );
            }
        };

        tracing::info!(
            service = service_name,
            addr = ?local,
            tls = tls.is_some(),
            api_keys = keys.is_some(),
            "listening"
        );
        // Metrics outside the key check, so that refused calls are counted too.
        let layers = tower::ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(MetricsLayer)
            .layer(ApiKeyLayer::new(keys))
            .layer(limit);
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| RuntimeError::Tls(e.to_string()))?;
        }
        let server = builder
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, server_shutdown);

        let grace = args.shutdown_grace();
        let deadline = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result?,
            _ = deadline => {
                tracing::warn!(
                    service = service_name,
                    grace_seconds = grace.as_secs(),
                    "calls still in flight after the shutdown grace period; exiting anyway"
                );
            }
        }
        let failed = load_error.lock().ok().and_then(|mut slot| slot.take());
        match failed {
            Some(message) => Err(RuntimeError::Load(message)),
            None => {
                tracing::info!(service = service_name, "stopped");
                Ok(())
            }
        }
    }
}

/// Sets the health of `service_name` and of the whole server ("").
async fn set_status(health: &HealthReporter, service_name: &'static str, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(service_name, status).await;
}

/// Sets health from `readiness` until the server stops (it then stays NOT_SERVING).
async fn follow(
    health: HealthReporter,
    service_name: &'static str,
    mut readiness: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ready = *readiness.borrow_and_update();
        if *stop.borrow() {
            return;
        }
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_status(&health, service_name, status).await;
        if *stop.borrow() {
            // The server began to stop while this was set: leave it NOT_SERVING.
            set_status(&health, service_name, ServingStatus::NotServing).await;
            return;
        }
        tokio::select! {
            changed = readiness.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The body of every service binary's `main`: start logging (and the audit file of
/// `server.audit`: a path that cannot be written is exit code 2), print the configuration
/// (`config`: [`EffectiveConfig::of`] the binary's parser), bind, serve until
/// SIGTERM/SIGINT, and turn the outcome into an exit code.
pub async fn run_binary<F, Fut>(
    name: &str,
    config: &EffectiveConfig,
    server: &ServerArgs,
    listen: SocketAddr,
    serve: F,
) -> std::process::ExitCode
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = Result<(), RuntimeError>>,
{
    // The audit file (of a binary that writes audit lines) is opened first; its writer is
    // held to the end of this function, which is the end of `main`.
    let _audit =
        match crate::telemetry::init_with_audit(server.log_format, &server.log, &server.audit) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("{name}: {e}");
                return std::process::ExitCode::from(2);
            }
        };
    config.log_start(name);
    if let Err(e) = start_metrics(server).await {
        tracing::error!(error = %e, "{name} cannot start");
        return std::process::ExitCode::FAILURE;
    }
    let listener = match bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "{name} cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    match serve(listener).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{name} stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Starts the `/metrics` listener of `--metrics-listen`, when set (once per process: `zhiku
/// serve` shows all its services there), on a task of its own until the process ends.
pub async fn start_metrics(server: &ServerArgs) -> Result<(), RuntimeError> {
    let Some(addr) = server.metrics_listen else {
        return Ok(());
    };
    let keys = ApiKeys::from_args(&server.auth).map_err(RuntimeError::Auth)?;
    let tls = crate::tls::http_acceptor(&server.tls).await?;
    let listener = bind(addr).await?;
    let local = listener.local_addr().unwrap_or(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let router = crate::http_server::metrics_router(keys);
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) = crate::http_server::serve(listener, router, tls, forever).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    tracing::info!(addr = %local, "metrics at {scheme}://{local}/metrics");
    Ok(())
}

/// How a service's state comes to be.
pub enum Loader<T> {
    /// Loaded on a blocking thread after the server listens (health NOT_SERVING meanwhile).
    Blocking(Box<dyn FnOnce() -> Result<T, String> + Send>),
    /// Already loaded (tests, programs that embed a service).
    Loaded(T),
}

/// Serves a service whose handlers read their state from a [`Ready`] cell: builds the cell
/// from `loader`, the tonic service with `make_service(cell, max_message_bytes)`, and runs
/// it on the shared runtime. `what` names the state in UNAVAILABLE messages ("model").
pub async fn serve_service<T, S>(
    service_name: &'static str,
    what: &'static str,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    loader: Loader<T>,
    make_service: impl FnOnce(crate::Ready<T>, usize) -> S,
) -> Result<(), RuntimeError>
where
    T: Send + Sync + 'static,
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type LoadFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
    let (ready, load): (crate::Ready<T>, LoadFuture) = match loader {
        Loader::Loaded(value) => (crate::Ready::with(what, value), Box::pin(async { Ok(()) })),
        Loader::Blocking(load) => {
            let ready = crate::Ready::new(what);
            let cell = ready.clone();
            let future = async move {
                let value = tokio::task::spawn_blocking(load)
                    .await
                    .map_err(|e| format!("the loading thread failed: {e}"))??;
                cell.set(value);
                Ok(())
            };
            (ready, Box::pin(future))
        }
    };
    let runtime = ServiceRuntime::new(server, service_name).await;
    let service = make_service(ready, runtime.max_message_bytes());
    runtime.serve(listener, service, load, shutdown).await
}
