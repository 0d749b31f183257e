//! Flags shared by every service binary (flattened into each binary's clap parser).

use std::time::Duration;

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
        }
    }
}
