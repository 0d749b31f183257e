//! Flags shared by every service binary (flattened into each binary's clap parser), and
//! the effective configuration a binary prints at start-up ([`EffectiveConfig`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value kept out of logs (its Debug form is `"***"`).
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

    /// A file of API keys, one a line: `KEY` (full access) or `KEY read-only`, or a
    /// principal as one JSON object: `{"name": "alice", "sha256": "<zhiku keys hash>",
    /// "role": "admin|editor|reader", "knowledge_bases": ["hr"], "groups": ["hr"]}`
    /// (knowledge_bases absent: all). Blank lines and lines starting with `#` are skipped.
    /// Read again when it changes and on SIGHUP; a file that does not parse leaves the keys
    /// as they were.
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

/// Where the audit lines go besides the log: the flags of every binary that writes them
/// (the orchestrator, the retriever, `zhiku serve`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuditArgs {
    /// Also write the audit lines (log target `zhiku::audit`: one per Ask, Search, Ingest,
    /// Evaluate and Delete, with the principal, knowledge base, documents and request id) to
    /// this file, one JSON object a line, whatever --log lets through. Its directory is
    /// made; a path that cannot be written stops the start. Unset: the log only.
    #[arg(long, env = "ZHIKU_AUDIT_FILE")]
    pub audit_file: Option<PathBuf>,

    /// When the audit file is rotated: `never` (one file, the path as given), `hourly` or
    /// `daily` (UTC; the date goes before the extension, e.g. audit.2026-12-05.jsonl).
    #[arg(
        long,
        env = "ZHIKU_AUDIT_ROTATION",
        value_enum,
        default_value_t = AuditRotation::Never,
        requires = "audit_file"
    )]
    pub audit_rotation: AuditRotation,

    /// With rotation, how many audit files to keep; older ones are deleted when a new one
    /// starts. Unset: all are kept.
    #[arg(long, env = "ZHIKU_AUDIT_MAX_FILES", requires = "audit_file")]
    pub audit_max_files: Option<std::num::NonZeroUsize>,
}

/// When the audit file starts a new one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditRotation {
    /// One file, never rotated.
    #[default]
    Never,
    /// A new file every hour.
    Hourly,
    /// A new file every day.
    Daily,
}

impl AuditRotation {
    pub fn rotation(self) -> tracing_appender::rolling::Rotation {
        use tracing_appender::rolling::Rotation;
        match self {
            AuditRotation::Never => Rotation::NEVER,
            AuditRotation::Hourly => Rotation::HOURLY,
            AuditRotation::Daily => Rotation::DAILY,
        }
    }
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

    /// Where the audit lines also go: not a flag of every service, but the [`AuditArgs`] a
    /// binary that writes audit lines flattens into its own parser, copied here for
    /// [`crate::server::run_binary`] to open.
    #[arg(skip)]
    pub audit: AuditArgs,
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
            audit: AuditArgs::default(),
        }
    }
}

/// The effective configuration of a command line: every flag of the command (and of its
/// subcommand, if one ran) with the value it took and where from, one `key = value` line each.
/// Secrets (flags with `hide_env_values`, or named for a key, secret, password or token) show
/// as `***`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectiveConfig {
    lines: Vec<(String, String)>,
}

/// The words of a flag's name that mark its value as secret.
const SECRET_WORDS: [&str; 4] = ["key", "secret", "password", "token"];

impl EffectiveConfig {
    /// The configuration of this process's command line (and environment) as `T` parses it.
    /// Call it after `T::parse()` succeeded: it parses the same arguments again.
    pub fn of<T: clap::CommandFactory>() -> Self {
        Self::of_command(T::command())
    }

    /// [`EffectiveConfig::of`] for a command built by hand (e.g. `T::command()` changed
    /// before parsing).
    pub fn of_command(command: clap::Command) -> Self {
        Self::parse(command, std::env::args_os())
    }

    /// The configuration of `args` (the program's name first) as `command` parses them;
    /// empty when they do not parse.
    pub fn parse(
        mut command: clap::Command,
        args: impl IntoIterator<Item = std::ffi::OsString>,
    ) -> Self {
        let mut config = Self::default();
        if let Ok(matches) = command.try_get_matches_from_mut(args) {
            config.add(&command, &matches);
        }
        config
    }

    fn add(&mut self, command: &clap::Command, matches: &clap::ArgMatches) {
        use clap::ArgAction;
        for arg in command.get_arguments() {
            if matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            ) {
                continue;
            }
            let id = arg.get_id().as_str();
            let key = arg.get_long().unwrap_or(id).to_owned();
            if self.lines.iter().any(|(k, _)| *k == key) {
                continue; // a global flag, seen on the parent command
            }
            let present = matches.ids().any(|i| i.as_str() == id);
            let values: Vec<String> = match present.then(|| matches.try_get_raw(id)) {
                Some(Ok(Some(raw))) => raw.map(|v| v.to_string_lossy().into_owned()).collect(),
                _ => Vec::new(),
            };
            let secret = arg.is_hide_env_values_set()
                || key
                    .split(['-', '_'])
                    .any(|word| SECRET_WORDS.contains(&word));
            let value = if values.is_empty() {
                "(unset)".to_owned()
            } else if secret {
                "***".to_owned()
            } else {
                values.join(",")
            };
            let source = match present.then(|| matches.value_source(id)).flatten() {
                Some(clap::parser::ValueSource::DefaultValue) => " (default)",
                Some(clap::parser::ValueSource::EnvVariable) => " (env)",
                _ => "",
            };
            self.lines.push((key, format!("{value}{source}")));
        }
        if let Some((name, sub_matches)) = matches.subcommand()
            && let Some(sub) = command.find_subcommand(name)
        {
            self.add(sub, sub_matches);
        }
    }

    /// Logs `{name} starting` and the configuration at INFO, as one event.
    pub fn log_start(&self, name: &str) {
        tracing::info!(
            "{name} starting; configuration:\n{}",
            self.to_string().trim_end()
        );
    }

    /// The (key, value) pairs, in the command's order.
    pub fn lines(&self) -> &[(String, String)] {
        &self.lines
    }
}

/// Aligned `key = value` lines, each indented by two spaces and ended by a newline.
impl std::fmt::Display for EffectiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in &self.lines {
            writeln!(f, "  {key:<width$} = {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(name = "demo")]
    struct Demo {
        /// A plain value.
        #[arg(long, default_value_t = 7)]
        count: usize,

        #[arg(long)]
        model: Option<String>,

        #[arg(long)]
        verbose: bool,

        #[command(flatten)]
        server: ServerArgs,

        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Serve {
            #[arg(long, default_value = "0.0.0.0:1")]
            listen: String,
        },
    }

    fn config(args: &[&str]) -> EffectiveConfig {
        EffectiveConfig::parse(
            <Demo as clap::CommandFactory>::command(),
            std::iter::once("demo")
                .chain(args.iter().copied())
                .map(Into::into),
        )
    }

    fn value<'a>(c: &'a EffectiveConfig, key: &str) -> &'a str {
        c.lines()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {c}"))
    }

    #[test]
    fn every_flag_with_its_value_and_source() {
        let c = config(&["--model", "m.gguf", "--max-message-bytes", "1024", "serve"]);
        assert_eq!(value(&c, "count"), "7 (default)");
        assert_eq!(value(&c, "model"), "m.gguf");
        assert_eq!(value(&c, "max-message-bytes"), "1024");
        assert_eq!(value(&c, "log"), "info (default)");
        assert_eq!(value(&c, "metrics-listen"), "(unset)");
        assert_eq!(value(&c, "listen"), "0.0.0.0:1 (default)");
        assert!(!c.lines().iter().any(|(k, _)| k == "help" || k == "version"));
        assert_eq!(value(&c, "verbose"), "false (default)");
        let text = c.to_string();
        let line = text.lines().find(|l| l.starts_with("  model ")).unwrap();
        assert!(line.ends_with(" = m.gguf"), "{text}");
        assert_eq!(text.lines().count(), c.lines().len());
    }

    #[test]
    fn secrets_are_masked() {
        let c = config(&[
            "--api-key",
            "s3cret-a,s3cret-b",
            "--read-only-api-key",
            "s3cret-c",
            "--tls-cert",
            "/etc/cert.pem",
            "--tls-key",
            "/etc/key.pem",
        ]);
        let text = c.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains("key.pem"), "{text}");
        assert_eq!(value(&c, "api-key"), "***");
        assert_eq!(value(&c, "tls-key"), "***");
        assert_eq!(value(&c, "tls-cert"), "/etc/cert.pem");
        // Unset secrets say so.
        assert_eq!(value(&config(&[]), "api-key"), "(unset)");
    }

    #[test]
    fn a_command_line_that_does_not_parse_gives_nothing() {
        assert!(config(&["--count", "many"]).lines().is_empty());
    }

    #[derive(Debug, Parser)]
    struct Audited {
        #[command(flatten)]
        audit: AuditArgs,
    }

    fn audit(args: &[&str]) -> Result<AuditArgs, String> {
        Audited::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
            .map(|a| a.audit)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_audit_rotation_parses_and_needs_a_file() {
        let args = audit(&[]).expect("no audit flags");
        assert_eq!(args.audit_file, None);
        assert_eq!(args.audit_rotation, AuditRotation::Never);
        let args = audit(&[
            "--audit-file",
            "/var/log/zhiku/audit.jsonl",
            "--audit-rotation",
            "hourly",
            "--audit-max-files",
            "48",
        ])
        .expect("parses");
        assert_eq!(args.audit_rotation, AuditRotation::Hourly);
        assert_eq!(args.audit_max_files.map(|n| n.get()), Some(48));
        let daily = audit(&["--audit-file", "a.jsonl", "--audit-rotation", "daily"]);
        assert_eq!(daily.map(|a| a.audit_rotation), Ok(AuditRotation::Daily));

        let err = audit(&["--audit-file", "a.jsonl", "--audit-rotation", "weekly"]).unwrap_err();
        assert!(
            err.contains("weekly") && err.contains("never, hourly, daily"),
            "{err}"
        );
        let err = audit(&["--audit-file", "a.jsonl", "--audit-max-files", "0"]).unwrap_err();
        assert!(err.contains("--audit-max-files"), "{err}");
        // Rotation without a file is a mistake, not a silent no-op.
        let err = audit(&["--audit-rotation", "daily"]).unwrap_err();
        assert!(err.contains("--audit-file"), "{err}");
    }
}
