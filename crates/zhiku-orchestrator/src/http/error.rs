//! The HTTP side's failures: OpenAI's error JSON, `{"error": {"message", "type", "param",
//! "code"}}`, with its HTTP status. The pipelines' error is mapped here once
//! (`From<OrchestratorError>`), from the same classification the gRPC side maps
//! ([`OrchestratorError::outcome`]); the failures of HTTP alone (a body over the limit, a
//! busy server, an unknown route, a refused key) have their own constructors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tonic::Code;

use super::Json;
use crate::error::OrchestratorError;

/// A failed HTTP call.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// OpenAI's error `type`.
    kind: &'static str,
    /// OpenAI's error `code`.
    code: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn of_code(code: Code, message: String) -> Self {
        Self {
            status: http_status(code),
            kind: error_type(code),
            code: code_name(code),
            message,
            param: None,
        }
    }

    /// A wrong request, naming the field at fault.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::of_code(Code::InvalidArgument, message.into())
        }
    }

    /// A request body that is not what the route takes (not JSON, a broken upload).
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::of_code(Code::InvalidArgument, message.into())
    }

    /// A request body over --max-message-bytes: 413, a request error (sending it again
    /// will not help), not a rate limit.
    pub fn too_large(message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: "request_too_large",
            message: format!("{message} (--max-message-bytes)"),
            param: None,
        }
    }

    /// Every permit of --max-concurrent-requests is taken: 429, retry later.
    pub fn busy(max_calls: usize) -> Self {
        Self::of_code(
            Code::ResourceExhausted,
            format!(
                "server is busy: {max_calls} calls in flight (--max-concurrent-requests); retry later"
            ),
        )
    }

    /// A route this server is not configured for (501), saying what would enable it.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::of_code(Code::Unimplemented, message.into())
    }

    /// No route answers `method` `path`.
    pub fn no_route(method: &axum::http::Method, path: &str) -> Self {
        Self::of_code(Code::NotFound, format!("no such route: {method} {path}"))
    }

    /// A call the API-key layer refused (401 or 403, with its reason).
    pub fn refused(refusal: &zhiku_runtime::auth::Refusal) -> Self {
        Self::of_code(refusal.grpc_code(), refusal.to_string())
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error object as OpenAI sends it (also the `error` event of a stream).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<OrchestratorError> for ApiError {
    fn from(e: OrchestratorError) -> Self {
        let outcome = e.outcome();
        Self::of_code(outcome.code, outcome.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The HTTP status of a failure's code, so that HTTP and gRPC clients see the same kind of
/// failure (Google's HTTP mapping of the canonical codes).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // nginx's "client closed request": the client went away.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// OpenAI's error `type` for a failure's code.
fn error_type(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Aborted
        | Code::Cancelled => "invalid_request_error",
        Code::Unauthenticated => "authentication_error",
        Code::PermissionDenied => "permission_error",
        Code::ResourceExhausted => "rate_limit_error",
        Code::Unavailable | Code::DeadlineExceeded => "service_unavailable",
        _ => "server_error",
    }
}

/// `snake_case` name of a failure's code, as OpenAI's error `code`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_map_to_http_statuses_and_openai_types() {
        let cases = [
            (Code::InvalidArgument, 400, "invalid_request_error"),
            (Code::NotFound, 404, "invalid_request_error"),
            (Code::AlreadyExists, 409, "invalid_request_error"),
            (Code::PermissionDenied, 403, "permission_error"),
            (Code::Unauthenticated, 401, "authentication_error"),
            (Code::ResourceExhausted, 429, "rate_limit_error"),
            (Code::Unavailable, 503, "service_unavailable"),
            (Code::DeadlineExceeded, 504, "service_unavailable"),
            (Code::Internal, 500, "server_error"),
            (Code::Unimplemented, 501, "server_error"),
        ];
        for (code, http, kind) in cases {
            let error = ApiError::of_code(code, "went wrong".into());
            assert_eq!(error.status().as_u16(), http, "{code:?}");
            let body = error.body();
            assert_eq!(body["error"]["type"], kind, "{code:?}");
            assert_eq!(body["error"]["message"], "went wrong");
        }
    }

    #[test]
    fn an_orchestrator_error_keeps_its_kind_over_http() {
        let not_found = ApiError::from(OrchestratorError::downstream("retriever")(
            tonic::Status::not_found("knowledge base `x` does not exist"),
        ));
        assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
        assert_eq!(not_found.body()["error"]["code"], "not_found");
        let invalid = ApiError::from(OrchestratorError::Validation("`question` is empty".into()));
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ApiError::invalid("model", "bad").body()["error"]["param"],
            "model"
        );
        let loading = ApiError::from(OrchestratorError::Loading);
        assert_eq!(loading.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_body_over_the_limit_is_413_not_a_rate_limit() {
        let error = ApiError::too_large("length limit exceeded");
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error.body()["error"]["type"], "invalid_request_error");
        assert_eq!(ApiError::busy(1).status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
