//! Tracing output for the service binaries: log lines on stderr (human or JSON, as `--log`
//! filters them) and, with `--audit-file`, the audit lines (target [`AUDIT_TARGET`]) also as
//! JSON lines in a file of their own, rotated as `--audit-rotation` says.

use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::RollingFileAppender;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::{AuditArgs, LogFormat};
use crate::error::RuntimeError;

/// The log target of the audit lines: one per Ask, Search, Ingest, Evaluate and Delete, with
/// the principal, the knowledge base, the documents and the request id.
pub const AUDIT_TARGET: &str = "zhiku::audit";

/// Keeps the audit file's writer thread alive: hold it until the process ends (dropping it
/// writes out the lines still queued, then stops the thread).
#[must_use = "the audit file's writer stops when this is dropped"]
pub struct AuditGuard(#[allow(dead_code)] WorkerGuard);

impl std::fmt::Debug for AuditGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditGuard")
    }
}

/// Installs the global tracing subscriber. A second call (several services in one process)
/// keeps the first subscriber.
pub fn init(format: LogFormat, filter: &str) -> Result<(), RuntimeError> {
    init_with_audit(format, filter, &AuditArgs::default()).map(drop)
}

/// As [`init`], and with `audit.audit_file` set, the audit lines also go to that file as JSON
/// lines, whatever `--log` lets through to stderr. The file (and its directory) is opened
/// here, so a path that cannot be written is an error before the service starts. The guard
/// must be held until the process ends.
pub fn init_with_audit(
    format: LogFormat,
    filter: &str,
    audit: &AuditArgs,
) -> Result<Option<AuditGuard>, RuntimeError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| {
        RuntimeError::LogFilter(format!(
            "invalid log filter `{filter}` (--log / ZHIKU_LOG): {e}"
        ))
    })?;
    let (audit_layer, guard) = match &audit.audit_file {
        Some(path) => {
            let appender = open_audit_file(path, audit)?;
            let (writer, guard) = NonBlockingBuilder::default()
                // An audit line is not dropped when the writer falls behind: the caller
                // waits instead.
                .lossy(false)
                .thread_name("zhiku-audit")
                .finish(appender);
            (Some(audit_layer(writer)), Some(AuditGuard(guard)))
        }
        None => (None, None),
    };
    let stderr = match format {
        LogFormat::Human => fmt::layer()
            .with_target(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .with(audit_layer)
        .try_init();
    match (installed, &audit.audit_file) {
        (Err(_), Some(path)) => Err(RuntimeError::AuditFile {
            path: path.clone(),
            reason: "this process already logs through another subscriber".into(),
        }),
        // Already initialised without an audit file: fine, the first subscriber stays.
        _ => Ok(guard),
    }
}

/// The layer that writes the audit lines, and nothing else, as flat JSON objects (the
/// event's fields at the top level beside `timestamp`, `level` and `target`).
pub fn audit_layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(Targets::new().with_target(AUDIT_TARGET, tracing::Level::TRACE))
}

/// Where the audit files of `path` go: its directory, and the name around the date that
/// rotation puts in (`audit.jsonl` → `audit` and `jsonl`: `audit.2026-12-05.jsonl`).
fn audit_file_parts(path: &Path) -> Result<(PathBuf, String, Option<String>), RuntimeError> {
    let no_file = || RuntimeError::AuditFile {
        path: path.to_path_buf(),
        reason: "the path names no file".into(),
    };
    let name = path.file_name().ok_or_else(no_file)?;
    let name = Path::new(name);
    let stem = name
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(no_file)?;
    let extension = name
        .extension()
        .map(|e| {
            e.to_str()
                .map(str::to_owned)
                .ok_or_else(|| RuntimeError::AuditFile {
                    path: path.to_path_buf(),
                    reason: "the file name is not UTF-8".into(),
                })
        })
        .transpose()?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((directory, stem.to_owned(), extension))
}

/// Opens (creating it and its directory) the audit file of `audit` at `path`.
fn open_audit_file(path: &Path, audit: &AuditArgs) -> Result<RollingFileAppender, RuntimeError> {
    let (directory, prefix, suffix) = audit_file_parts(path)?;
    let mut builder = RollingFileAppender::builder()
        .rotation(audit.audit_rotation.rotation())
        .filename_prefix(prefix);
    if let Some(suffix) = suffix {
        builder = builder.filename_suffix(suffix);
    }
    if let Some(max) = audit.audit_max_files {
        builder = builder.max_log_files(max.get());
    }
    builder
        .build(&directory)
        .map_err(|e| RuntimeError::AuditFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuditRotation;

    fn audit(path: &Path, rotation: AuditRotation) -> AuditArgs {
        AuditArgs {
            audit_file: Some(path.to_path_buf()),
            audit_rotation: rotation,
            audit_max_files: None,
        }
    }

    #[test]
    fn the_date_goes_before_the_extension() {
        let (dir, prefix, suffix) =
            audit_file_parts(Path::new("/var/log/zhiku/audit.jsonl")).expect("a file path");
        assert_eq!(dir, Path::new("/var/log/zhiku"));
        assert_eq!(
            (prefix.as_str(), suffix.as_deref()),
            ("audit", Some("jsonl"))
        );
        let (dir, prefix, suffix) = audit_file_parts(Path::new("audit")).expect("a bare name");
        assert_eq!(dir, Path::new("."));
        assert_eq!((prefix.as_str(), suffix), ("audit", None));
        let err = audit_file_parts(Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("names no file"), "{err}");
    }

    #[test]
    fn only_audit_lines_reach_the_audit_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A directory that does not exist yet is made.
        let path = dir.path().join("audit").join("audit.jsonl");
        let appender = open_audit_file(&path, &audit(&path, AuditRotation::Never)).expect("opens");
        let (writer, guard) = tracing_appender::non_blocking(appender);
        let subscriber = tracing_subscriber::registry().with(audit_layer(writer));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "zhiku_retriever::api", "an ordinary line");
            tracing::info!(
                target: "zhiku::audit",
                action = "search",
                principal = "ann",
                knowledge_base = "hr",
                request_id = "r-1",
                "audit"
            );
        });
        drop(guard);
        let text = std::fs::read_to_string(&path).expect("the audit file");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["target"], AUDIT_TARGET);
        assert_eq!(lines[0]["principal"], "ann");
        assert_eq!(lines[0]["knowledge_base"], "hr");
        assert_eq!(lines[0]["request_id"], "r-1");
    }

    #[test]
    fn a_rotated_file_has_the_date_in_its_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.jsonl");
        let appender = open_audit_file(&path, &audit(&path, AuditRotation::Daily)).expect("opens");
        drop(appender);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let name = &names[0];
        // audit.YYYY-MM-DD.jsonl
        assert!(
            name.starts_with("audit.") && name.ends_with(".jsonl") && name.len() == 22,
            "{name}"
        );
    }

    #[test]
    fn an_audit_file_that_cannot_be_made_names_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Under a regular file, where no directory can be made.
        let path = dir.path().join("a-file/audit.jsonl");
        std::fs::write(dir.path().join("a-file"), "not a directory").expect("file");
        let err = open_audit_file(&path, &audit(&path, AuditRotation::Hourly))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("--audit-file"), "{err}");
    }
}
