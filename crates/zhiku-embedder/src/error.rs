//! The embedder's errors and their gRPC kinds.

use zhiku_models::ModelSourceError;
use zhiku_runtime::{ErrorKind, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    /// The request is wrong; the message says what to fix.
    #[error("{0}")]
    Validation(String),
    #[error(
        "the embedding queue is full ({queued} texts waiting, limit {max} set by \
         --max-queued-texts); retry later"
    )]
    Overloaded { queued: usize, max: usize },
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error(transparent)]
    ModelSource(#[from] ModelSourceError),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the embedder is shutting down")]
    ShuttingDown,
    #[error(
        "this embedder has no reranker: start it with --reranker-model DIR_OR_HUB_ID \
         (ZHIKU_RERANKER_MODEL), e.g. BAAI/bge-reranker-base"
    )]
    NoReranker,
    #[error(
        "this embedder has no OCR models: run `scripts/fetch-models ppocr` (it puts them in \
         models/ppocr, found under --models-dir) or start it with --ocr-model DIR_OR_HUB_ID \
         (ZHIKU_OCR_MODEL)"
    )]
    NoOcr,
    #[error(
        "the OCR queue is full ({queued} images waiting, limit {max} set by \
         --ocr-max-queued); retry later"
    )]
    OcrOverloaded { queued: usize, max: usize },
}

impl From<candle_core::Error> for EmbedderError {
    fn from(e: candle_core::Error) -> Self {
        EmbedderError::Inference(e.to_string())
    }
}

impl ServiceError for EmbedderError {
    fn kind(&self) -> ErrorKind {
        match self {
            EmbedderError::Validation(_) => ErrorKind::InvalidArgument,
            EmbedderError::Overloaded { .. } | EmbedderError::OcrOverloaded { .. } => {
                ErrorKind::ResourceExhausted
            }
            EmbedderError::UnsupportedModel(_)
            | EmbedderError::Load(_)
            | EmbedderError::ModelSource(_)
            | EmbedderError::NoReranker
            | EmbedderError::NoOcr => ErrorKind::FailedPrecondition,
            EmbedderError::Tokenizer(_) | EmbedderError::Inference(_) => ErrorKind::Internal,
            EmbedderError::ShuttingDown => ErrorKind::Unavailable,
        }
    }
}

impl From<EmbedderError> for tonic::Status {
    fn from(e: EmbedderError) -> Self {
        zhiku_runtime::error::to_status(&e)
    }
}
