//! The server runtime shared by every zhiku service binary.
//!
//! One place decides how a zhiku service is served, so that all four behave alike:
//! - [`server::ServiceRuntime`]: a tonic server with gRPC reflection (v1 and v1alpha, since
//!   grpcurl 1.8 speaks only v1alpha), `grpc.health.v1` that says NOT_SERVING until the
//!   service's model or store is loaded, graceful shutdown on SIGTERM/SIGINT that drains
//!   in-flight calls, and a configurable maximum message size;
//! - [`limit::ConcurrencyLimitLayer`]: answers RESOURCE_EXHAUSTED past a limit instead of
//!   queueing without bound;
//! - [`request_id`]: an `x-request-id` on every call, made when absent, on every log line and
//!   passed on to downstream calls;
//! - [`telemetry`]: tracing output, human or JSON, and the audit file (`--audit-file`);
//! - [`error`]: the one mapping from service errors to `tonic::Status`, and [`RuntimeError`];
//! - [`ready::Ready`]: state that a service fills in once loaded;
//! - [`health`]: asking another server for its health;
//! - [`auth`]: API keys (`authorization: Bearer …`), a tower layer for gRPC and HTTP alike;
//! - [`metrics`]: the Prometheus registry and the per-request layer;
//! - [`http_server`]: the one HTTP server (axum, plain or TLS, graceful shutdown), for the
//!   orchestrator's HTTP side and `/metrics`;
//! - [`tls`]: `--tls-cert` / `--tls-key` on every listener (gRPC, HTTP, `/metrics`);
//! - [`client`]: endpoints for `http://` and `https://` (TLS, with a CA of one's own).

pub mod auth;
pub mod client;
pub mod config;
pub mod deadline;
pub mod error;
pub mod health;
pub mod http_server;
pub mod limit;
pub mod metrics;
pub mod ready;
pub mod request_id;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use config::{
    AuditArgs, AuditRotation, AuthArgs, EffectiveConfig, LogFormat, Secret, ServerArgs, TlsArgs,
};
pub use error::{ErrorKind, RuntimeError, ServiceError};
pub use ready::Ready;
pub use server::ServiceRuntime;
