//! The gRPC side's one mapping of the pipelines' error.

use crate::error::OrchestratorError;

impl From<OrchestratorError> for tonic::Status {
    fn from(e: OrchestratorError) -> Self {
        let outcome = e.outcome();
        tonic::Status::new(outcome.code, outcome.message)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use crate::error::OrchestratorError;

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

    #[test]
    fn a_generation_lost_after_its_first_chunk_says_so_and_others_stay_the_generators() {
        let lost = || tonic::Status::unavailable("the generator replica http://g:1 was lost");
        let cut: tonic::Status = OrchestratorError::generation(3)(lost()).into();
        assert_eq!(cut.code(), Code::Unavailable);
        for words in ["lost mid-answer", "3 chunk(s)", "http://g:1", "not retried"] {
            assert!(cut.message().contains(words), "{}", cut.message());
        }
        // Before any chunk (it was already retried elsewhere): the generator's own failure.
        let before: tonic::Status = OrchestratorError::generation(0)(lost()).into();
        assert_eq!(before.code(), Code::Unavailable);
        assert!(
            !before.message().contains("mid-answer"),
            "{}",
            before.message()
        );
        // A failure of the generator's own, mid-stream: its code.
        let own: tonic::Status =
            OrchestratorError::generation(3)(tonic::Status::internal("boom")).into();
        assert_eq!(own.code(), Code::Internal);
    }

    #[test]
    fn a_failed_case_keeps_its_kind_and_names_the_case() {
        let status: tonic::Status = OrchestratorError::downstream("retriever")(
            tonic::Status::not_found("no knowledge base `x`"),
        )
        .in_case("7")
        .into();
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().starts_with("case 7: "),
            "{}",
            status.message()
        );
    }
}
