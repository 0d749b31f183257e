//! The generator's errors and their gRPC kinds.

use zhiku_models::ModelSourceError;
use zhiku_runtime::{ErrorKind, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    /// The request is wrong; the message says what to fix.
    #[error("{0}")]
    Validation(String),
    #[error("no adapter named `{0}` is loaded (see Info for the loaded adapters)")]
    UnknownAdapter(String),
    #[error(
        "the generation queue is full ({0} requests waiting, --max-queued-requests); retry later"
    )]
    Overloaded(usize),
    #[error("the deadline passed after {generated} generated tokens")]
    DeadlineExceeded { generated: usize },
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error(transparent)]
    ModelSource(#[from] ModelSourceError),
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("generation failed: {0}")]
    Inference(String),
    #[error("the generator is shutting down")]
    ShuttingDown,
    #[error("the client cancelled the request")]
    Cancelled,
}

/// The model code's errors keep their meaning: a bad input stays a bad input.
impl From<zhiku_lm::LmError> for GeneratorError {
    fn from(e: zhiku_lm::LmError) -> Self {
        use zhiku_lm::LmError as L;
        match e {
            L::Validation(m) => GeneratorError::Validation(m),
            L::UnknownAdapter(m) => GeneratorError::UnknownAdapter(m),
            L::UnsupportedModel(m) => GeneratorError::UnsupportedModel(m),
            L::Load(m) => GeneratorError::Load(m),
            L::ModelSource(e) => GeneratorError::ModelSource(e),
            L::Template(m) => GeneratorError::Template(m),
            L::Tokenizer(m) => GeneratorError::Tokenizer(m),
            L::Inference(m) => GeneratorError::Inference(m),
        }
    }
}

impl From<candle_core::Error> for GeneratorError {
    fn from(e: candle_core::Error) -> Self {
        GeneratorError::Inference(e.to_string())
    }
}

impl ServiceError for GeneratorError {
    fn kind(&self) -> ErrorKind {
        match self {
            GeneratorError::Validation(_) => ErrorKind::InvalidArgument,
            GeneratorError::UnknownAdapter(_) => ErrorKind::NotFound,
            GeneratorError::Overloaded(_) => ErrorKind::ResourceExhausted,
            GeneratorError::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            GeneratorError::UnsupportedModel(_)
            | GeneratorError::Load(_)
            | GeneratorError::ModelSource(_) => ErrorKind::FailedPrecondition,
            // A template that cannot render these messages is a request problem.
            GeneratorError::Template(_) => ErrorKind::InvalidArgument,
            GeneratorError::Tokenizer(_) | GeneratorError::Inference(_) => ErrorKind::Internal,
            GeneratorError::ShuttingDown => ErrorKind::Unavailable,
            GeneratorError::Cancelled => ErrorKind::Cancelled,
        }
    }
}

impl From<GeneratorError> for tonic::Status {
    fn from(e: GeneratorError) -> Self {
        zhiku_runtime::error::to_status(&e)
    }
}
