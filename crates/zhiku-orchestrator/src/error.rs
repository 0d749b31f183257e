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
    /// The client went away (cancelled, disconnected): not a failure of ours.
    #[error("the client cancelled the call")]
    Cancelled,
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
            OrchestratorError::Cancelled => ErrorKind::Cancelled,
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
                Code::Unavailable => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        }
    }
}

impl From<OrchestratorError> for tonic::Status {
    fn from(e: OrchestratorError) -> Self {
        match &e {
            // The downstream's own code goes on, with the downstream named; its failure is
            // logged as a warning here, not as an internal error of the orchestrator.
            OrchestratorError::Downstream { service, status } => {
                let code = match status.code() {
                    // Made on this side from a broken connection (a status from the wire
                    // has no source): the downstream is unreachable, not failing.
                    Code::Unknown if std::error::Error::source(status).is_some() => {
                        Code::Unavailable
                    }
                    code => code,
                };
                let message = if code == Code::Unavailable {
                    format!(
                        "the {service} is unavailable ({}); it is retried on the next call",
                        status.message()
                    )
                } else {
                    format!("the {service}: {}", status.message())
                };
                if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
                    tracing::warn!(service, code = ?code, error = %status.message(), "downstream failure");
                }
                tonic::Status::new(code, message)
            }
            _ => zhiku_runtime::error::to_status(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_downstream_code_is_passed_on_with_the_downstream_named() {
        for code in [
            Code::Unknown,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::NotFound,
            Code::Aborted,
        ] {
            let status: tonic::Status =
                OrchestratorError::downstream("generator")(tonic::Status::new(code, "went wrong"))
                    .into();
            assert_eq!(status.code(), code);
            assert!(
                status.message().contains("generator"),
                "{}",
                status.message()
            );
            assert!(
                status.message().contains("went wrong"),
                "{}",
                status.message()
            );
        }
        let cancelled: tonic::Status = OrchestratorError::Cancelled.into();
        assert_eq!(cancelled.code(), Code::Cancelled);
    }
}
