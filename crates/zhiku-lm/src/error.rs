//! The model code's errors. The generator maps them to its own (and so to gRPC) once.

use zhiku_models::ModelSourceError;

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// The input is wrong; the message says what to fix.
    #[error("{0}")]
    Validation(String),
    #[error("no adapter named `{0}` is loaded (see Info for the loaded adapters)")]
    UnknownAdapter(String),
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
    #[error("inference failed: {0}")]
    Inference(String),
}

impl From<candle_core::Error> for LmError {
    fn from(e: candle_core::Error) -> Self {
        LmError::Inference(e.to_string())
    }
}
