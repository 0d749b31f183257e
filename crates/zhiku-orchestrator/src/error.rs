//! The orchestrator's errors and their gRPC kinds.

use tonic::Code;
use zhiku_runtime::{ErrorKind, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The request is wrong; the message says what to fix.
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A call to another zhiku service failed; `service` names it.
    #[error("{service}: {}", status.message())]
    Downstream {
        service: &'static str,
        status: tonic::Status,
    },
    #[error("the {service} address `{address}` is invalid: {reason}")]
    BadAddress {
        service: &'static str,
        address: String,
        reason: String,
    },
    #[error("the deadline passed {0}")]
    DeadlineExceeded(&'static str),
    #[error("{0}")]
    Internal(String),
}

impl OrchestratorError {
    pub fn downstream(service: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| OrchestratorError::Downstream { service, status }
    }
}

impl ServiceError for OrchestratorError {
    fn kind(&self) -> ErrorKind {
        match self {
            OrchestratorError::Validation(_) => ErrorKind::InvalidArgument,
            OrchestratorError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            OrchestratorError::BadAddress { .. } => ErrorKind::FailedPrecondition,
            OrchestratorError::Internal(_) => ErrorKind::Internal,
            OrchestratorError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            OrchestratorError::Downstream { status, .. } => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
                Code::NotFound => ErrorKind::NotFound,
                Code::AlreadyExists => ErrorKind::AlreadyExists,
                Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
                Code::ResourceExhausted => ErrorKind::ResourceExhausted,
                Code::FailedPrecondition => ErrorKind::FailedPrecondition,
                Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
                Code::Cancelled => ErrorKind::Cancelled,
                Code::Unimplemented => ErrorKind::Unimplemented,
                // A connection that fails (the service is down) surfaces as Unavailable or
                // Unknown "transport error".
                Code::Unavailable | Code::Unknown | Code::Aborted => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        }
    }
}

impl From<OrchestratorError> for tonic::Status {
    fn from(e: OrchestratorError) -> Self {
        let status = zhiku_runtime::error::to_status(&e);
        if let OrchestratorError::Downstream { service, .. } = &e
            && status.code() == Code::Unavailable
        {
            return tonic::Status::unavailable(format!(
                "the {service} is unavailable ({}); it is retried on the next call",
                e
            ));
        }
        status
    }
}
