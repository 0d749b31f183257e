//! The trainer's errors, and the Tuner service's; the CLI and the service map them once each
//! (the service through [`ServiceError`], here).

use zhiku_lm::LmError;
use zhiku_runtime::error::{ErrorKind, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The input is wrong (a flag, a dataset line); the message says what to fix.
    #[error("{0}")]
    Validation(String),
    #[error(transparent)]
    Model(#[from] LmError),
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("training failed: {0}")]
    Training(String),
    /// The job was stopped (cancelled) before its adapter was written; nothing was written.
    #[error("cancelled before the adapter was written")]
    Cancelled,
    /// The Tuner service has no job of this id (or has forgotten it).
    #[error("no tuning job `{0}`")]
    JobNotFound(String),
    /// The Tuner service's queue is full; retry once a job has finished.
    #[error("{0}")]
    QueueFull(String),
    /// A queued or running job already writes this adapter.
    #[error("{0}")]
    AdapterBusy(String),
}

impl From<candle_core::Error> for TuneError {
    fn from(e: candle_core::Error) -> Self {
        TuneError::Training(e.to_string())
    }
}

impl ServiceError for TuneError {
    fn kind(&self) -> ErrorKind {
        match self {
            TuneError::Validation(_) => ErrorKind::InvalidArgument,
            TuneError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            TuneError::Model(_) | TuneError::Io { .. } | TuneError::Training(_) => {
                ErrorKind::Internal
            }
            TuneError::Cancelled => ErrorKind::Cancelled,
            TuneError::JobNotFound(_) => ErrorKind::NotFound,
            TuneError::QueueFull(_) => ErrorKind::ResourceExhausted,
            TuneError::AdapterBusy(_) => ErrorKind::AlreadyExists,
        }
    }
}
