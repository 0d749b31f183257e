//! The one mapping from service errors to gRPC status codes, and the runtime's own error.
//!
//! Each crate has its own `thiserror` enum and says, through [`ServiceError::kind`], which
//! kind each variant is; [`to_status`] turns any of them into a `tonic::Status` the same way.
//! A leaf module: the rest of the runtime imports it, it imports none of them.

use std::net::SocketAddr;

use tonic::{Code, Status};

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading failed: {0}")]
    Load(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("API keys: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    LogFilter(String),
    #[error("cannot write the audit file {} (--audit-file / ZHIKU_AUDIT_FILE): {reason}", path.display())]
    AuditFile {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// What kind of failure an error is, as a gRPC client should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; the message says what to fix.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    /// Over a limit (queue full, too many concurrent calls); retry later.
    ResourceExhausted,
    /// Not ready yet, or a downstream service is down; retry later.
    Unavailable,
    DeadlineExceeded,
    /// The system is not in a state for this request (e.g. dimensions mismatch a store).
    FailedPrecondition,
    /// The feature is not built yet.
    Unimplemented,
    Cancelled,
    /// A bug or an unexpected failure on the server.
    Internal,
}

impl ErrorKind {
    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::Cancelled => Code::Cancelled,
            ErrorKind::Internal => Code::Internal,
        }
    }
}

/// Implemented by every crate's error enum.
pub trait ServiceError: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

/// Turns a service error into the status a client receives. Internal errors are logged here,
/// once, with their whole source chain.
pub fn to_status<E: ServiceError + ?Sized>(err: &E) -> Status {
    let kind = err.kind();
    let mut message = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        next = cause.source();
    }
    if kind == ErrorKind::Internal {
        tracing::error!(error = %message, "internal error");
    }
    Status::new(kind.code(), message)
}

/// The answer of an RPC that is declared in the API but not built yet.
pub fn unimplemented(service: &str, rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{service}.{rpc} is not implemented yet in this build of zhiku"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("bad field `texts`: must not be empty")]
        Bad,
        #[error("loading failed")]
        Io(#[source] std::io::Error),
    }

    impl ServiceError for TestError {
        fn kind(&self) -> ErrorKind {
            match self {
                TestError::Bad => ErrorKind::InvalidArgument,
                TestError::Io(_) => ErrorKind::Internal,
            }
        }
    }

    #[test]
    fn maps_kind_and_keeps_message() {
        let status = to_status(&TestError::Bad);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "bad field `texts`: must not be empty");
    }

    #[test]
    fn includes_source_chain() {
        let err = TestError::Io(std::io::Error::other("disk on fire"));
        let status = to_status(&err);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "loading failed: disk on fire");
    }
}
