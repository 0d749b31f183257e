//! The pipelines' error: what Ask, Ingest, Evaluate and the management calls fail with. Each
//! transport maps it once: [`crate::api::error`] to a gRPC `Status`, [`crate::http::error`]
//! to an HTTP status and OpenAI's error JSON.

use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The request is wrong; the message says what to fix.
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A call to another zhiku service failed; `service` names it.
    #[error("{service}: {}", status.message())]
    Downstream {
        service: &'static str,
        status: tonic::Status,
    },
    /// What the request would create exists already (an adapter another job writes).
    #[error("{0}")]
    AlreadyExists(String),
    /// A streamed generation broke after some of it had been sent to the client: it cannot
    /// be sent again elsewhere without repeating what the client has (`status` names the
    /// replica).
    #[error(
        "the {service} was lost mid-answer, after {chunks} chunk(s) of the answer had been sent \
         ({}); the answer is incomplete and was not retried on another replica: ask again",
        status.message()
    )]
    LostMidAnswer {
        service: &'static str,
        chunks: usize,
        status: tonic::Status,
    },
    /// The tuner replica that holds a training job (its queue, events and checkpoints are
    /// that process's) cannot be reached.
    #[error(
        "job {job} is on the tuner replica {replica}, which cannot be reached ({reason}); the \
         job's state is unknown until that replica is back"
    )]
    JobReplicaDown {
        job: String,
        replica: String,
        reason: String,
    },
    /// No tuner replica that answered holds the job, and some could not be asked.
    #[error(
        "job {job} is on none of the tuner replicas that answered; {unreachable} could not be \
         reached and may hold it: retry once it is back"
    )]
    JobMaybeOnDownReplica { job: String, unreachable: String },
    #[error("the {service} address `{address}` is invalid: {reason}")]
    BadAddress {
        service: &'static str,
        address: String,
        reason: String,
    },
    /// The orchestrator is still loading (its template, its ingest root).
    #[error(
        "the orchestrator is still loading; retry when grpc.health.v1 (or /healthz) says SERVING"
    )]
    Loading,
    #[error("the deadline passed {0}")]
    DeadlineExceeded(&'static str),
    /// The client went away (cancelled, disconnected): not a failure of ours.
    #[error("the client cancelled the call")]
    Cancelled,
    /// One case of an evaluation failed: the case names it, the error says how.
    #[error("case {case}: {error}")]
    Case {
        case: String,
        error: Box<OrchestratorError>,
    },
    #[error("{0}")]
    Internal(String),
}

/// How a failure of ours reads to a caller, whichever the transport: the gRPC code it is (the
/// HTTP side derives its status from it) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: Code,
    pub message: String,
}

impl OrchestratorError {
    pub fn downstream(service: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| OrchestratorError::Downstream { service, status }
    }

    /// The failure of a streamed generation after `chunks` of its chunks were passed on:
    /// once some were, a lost replica (UNAVAILABLE: the replica set names it) is
    /// [`OrchestratorError::LostMidAnswer`]; any other failure is the generator's own.
    pub fn generation(chunks: usize) -> impl FnOnce(tonic::Status) -> Self {
        move |status| match (chunks, status.code()) {
            (1.., tonic::Code::Unavailable) => OrchestratorError::LostMidAnswer {
                service: "generator",
                chunks,
                status,
            },
            _ => OrchestratorError::Downstream {
                service: "generator",
                status,
            },
        }
    }

    /// This failure wrapped as the failure of evaluation case `case`.
    pub fn in_case(self, case: &str) -> Self {
        OrchestratorError::Case {
            case: case.to_owned(),
            error: Box::new(self),
        }
    }

    /// The one classification of every failure, for both transports. A downstream's own
    /// code goes on, with the downstream named; its failure is logged as a warning here,
    /// not as an internal error of the orchestrator.
    pub fn outcome(&self) -> Outcome {
        let plain = |code| Outcome {
            code,
            message: self.to_string(),
        };
        match self {
            OrchestratorError::Validation(_) => plain(Code::InvalidArgument),
            OrchestratorError::PermissionDenied(_) => plain(Code::PermissionDenied),
            OrchestratorError::NotFound(_) => plain(Code::NotFound),
            OrchestratorError::AlreadyExists(_) => plain(Code::AlreadyExists),
            OrchestratorError::LostMidAnswer {
                service,
                chunks,
                status,
            } => {
                tracing::warn!(service, chunks, error = %status.message(), "a streamed answer was cut off");
                plain(Code::Unavailable)
            }
            OrchestratorError::JobReplicaDown { .. }
            | OrchestratorError::JobMaybeOnDownReplica { .. } => plain(Code::Unavailable),
            OrchestratorError::BadAddress { .. } => plain(Code::FailedPrecondition),
            OrchestratorError::Loading => plain(Code::Unavailable),
            OrchestratorError::DeadlineExceeded(_) => plain(Code::DeadlineExceeded),
            OrchestratorError::Cancelled => plain(Code::Cancelled),
            OrchestratorError::Internal(message) => {
                tracing::error!(error = %message, "internal error");
                plain(Code::Internal)
            }
            OrchestratorError::Case { case, error } => {
                let inner = error.outcome();
                Outcome {
                    code: inner.code,
                    message: format!("case {case}: {}", inner.message),
                }
            }
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
                Outcome { code, message }
            }
        }
    }
}
