//! Flags shared by every service binary (flattened into each binary's clap parser).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value kept out of logs: the configuration is printed at start-up in Debug form.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// Who may call: API keys checked as `authorization: Bearer KEY`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// An API key with full access, required as `authorization: Bearer KEY` on every call
    /// once any key is set. Repeatable; comma-separated in the environment variable.
    #[arg(
        long = "api-key",
        env = "ZHIKU_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<Secret>,

    /// An API key that may only read and ask (no ingest, create, delete or adapter
    /// loading: those get PERMISSION_DENIED). Repeatable; comma-separated in the variable.
    #[arg(
        long = "read-only-api-key",
        env = "ZHIKU_READ_ONLY_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub read_only_api_keys: Vec<Secret>,

    /// A file of API keys, one a line: `KEY` (full access) or `KEY read-only`; blank lines
    /// and lines starting with `#` are skipped.
    #[arg(long, env = "ZHIKU_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// With API keys set, let health checks (grpc.health.v1) and /metrics through without
    /// a key, for probes and Prometheus scrapers that carry none.
    #[arg(long, env = "ZHIKU_OPEN_HEALTH")]
    pub open_health: bool,
}

/// TLS of the gRPC listener.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain of this server: its gRPC listener then speaks TLS only
    /// (clients use https://). Needs --tls-key.
    #[arg(long, env = "ZHIKU_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "ZHIKU_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Server settings common to all zhiku services.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Log format.
    #[arg(long, env = "ZHIKU_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log filter in `tracing` EnvFilter syntax, e.g. `info` or `zhiku_embedder=debug,info`.
    #[arg(long, env = "ZHIKU_LOG", default_value = "info")]
    pub log: String,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "ZHIKU_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Calls handled at once; further calls get RESOURCE_EXHAUSTED at once. Health and
    /// reflection calls are not counted.
    #[arg(long, env = "ZHIKU_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// On SIGTERM/SIGINT, seconds to let in-flight calls finish before exiting anyway.
    #[arg(long, env = "ZHIKU_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// Serve Prometheus metrics over HTTP at /metrics on this address (e.g. 0.0.0.0:9090).
    /// Unset: no metrics listener.
    #[arg(long, env = "ZHIKU_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ServerArgs {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Human,
            log: "info".into(),
            max_message_bytes: 64 * 1024 * 1024,
            max_concurrent_requests: 512,
            shutdown_grace_seconds: 30,
            metrics_listen: None,
            auth: AuthArgs::default(),
            tls: TlsArgs::default(),
        }
    }
}
