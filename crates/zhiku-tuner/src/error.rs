//! The trainer's errors. The CLI and the `Tuner` service map them once each.

use zhiku_lm::LmError;

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
}

impl From<candle_core::Error> for TuneError {
    fn from(e: candle_core::Error) -> Self {
        TuneError::Training(e.to_string())
    }
}
