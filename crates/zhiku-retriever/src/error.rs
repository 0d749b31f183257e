//! The retriever's one error type.

use zhiku_runtime::error::{ErrorKind, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum RetrieverError {
    /// The request is wrong; the message says what to fix.
    #[error("{0}")]
    InvalidArgument(String),

    #[error("knowledge base `{0}` does not exist; create it with CreateKnowledgeBase")]
    KnowledgeBaseNotFound(String),

    #[error("knowledge base `{0}` already exists; delete it first or pick another name")]
    KnowledgeBaseExists(String),

    /// The Qdrant server could not be reached (down, wrong URL, TLS or network).
    #[error("the Qdrant server is unavailable: {0}")]
    Unavailable(String),

    /// The Qdrant server is over one of its limits (RESOURCE_EXHAUSTED: rate limit, full
    /// queue, too large a request); the client may retry later.
    #[error("the Qdrant server is over a limit: {0}")]
    ResourceExhausted(String),

    /// The Qdrant server refused the API key.
    #[error("the Qdrant server refused the request: {0}")]
    PermissionDenied(String),

    /// A storage engine (qdrant-edge or the Qdrant server) failed.
    #[error("storage engine error: {0}")]
    Engine(String),

    /// Reading or writing the data directory failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Stored data could not be read back (corrupt metadata, foreign points).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),

    /// A blocking storage task died (a bug).
    #[error("storage task failed: {0}")]
    Task(String),
}

impl RetrieverError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl ServiceError for RetrieverError {
    fn kind(&self) -> ErrorKind {
        match self {
            RetrieverError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            RetrieverError::KnowledgeBaseNotFound(_) => ErrorKind::NotFound,
            RetrieverError::KnowledgeBaseExists(_) => ErrorKind::AlreadyExists,
            RetrieverError::Unavailable(_) => ErrorKind::Unavailable,
            RetrieverError::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            RetrieverError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            RetrieverError::Engine(_)
            | RetrieverError::Io { .. }
            | RetrieverError::Corrupt(_)
            | RetrieverError::Task(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = RetrieverError> = std::result::Result<T, E>;
