//! Ask's request check: everything a request can get wrong, found before any downstream call.

use zhiku_proto::v1::{AskRequest, SearchMode};

use crate::config::AskPolicy;
use crate::error::OrchestratorError;
use crate::grounding::check_min_coverage;

use super::history::last_turns;
use super::retrieve::{effective_top_k, search_mode};

/// The most passages a request may ask for (the retriever's limit).
const MAX_TOP_K: u32 = 100;

/// A request that passed the check: what the pipeline takes from it besides its fields.
#[derive(Debug, PartialEq)]
pub(crate) struct CheckedAsk {
    /// The question, trimmed.
    pub question: String,
    pub top_k: u32,
    pub mode: SearchMode,
}

/// Checks `request` against the limits of `policy`. Sizes are checked before anything is
/// copied: a UTF-8 character is at most 4 bytes.
pub(crate) fn check_request(
    policy: &AskPolicy,
    request: &AskRequest,
) -> Result<CheckedAsk, OrchestratorError> {
    let invalid = |message: String| Err(OrchestratorError::Validation(message));
    let max_chars = policy.max_question_chars;
    let too_long =
        || format!("`question` is longer than {max_chars} characters (--max-question-chars)");
    if request.question.len() > max_chars.saturating_mul(4) {
        return invalid(too_long());
    }
    let kept = last_turns(&request.history, policy.max_history_turns);
    let history_bytes: usize = kept.iter().map(|t| t.question.len() + t.answer.len()).sum();
    if history_bytes > policy.max_history_bytes {
        return invalid(format!(
            "the last {} turns of `history` are {history_bytes} bytes; at most {} are \
             allowed (--max-history-bytes, of the turns --max-history-turns keeps): send \
             fewer or shorter turns",
            kept.len(),
            policy.max_history_bytes
        ));
    }
    let question = request.question.trim().to_owned();
    if question.is_empty() {
        return invalid("`question` is empty".into());
    }
    if question.chars().count() > max_chars {
        return invalid(too_long());
    }
    if request.knowledge_base.is_empty() {
        return invalid("`knowledge_base` is empty: name the knowledge base to ask".into());
    }
    if request.top_k > MAX_TOP_K {
        return invalid(format!("`top_k` {} is over {MAX_TOP_K}", request.top_k));
    }
    let top_k = effective_top_k(request.top_k);
    let mode = search_mode(request.mode)?;
    check_min_coverage("min_coverage", request.min_coverage)?;
    check_min_coverage("min_relevance", request.min_relevance)?;
    check_min_coverage("min_anchors", request.min_anchors)?;
    Ok(CheckedAsk {
        question,
        top_k,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use zhiku_proto::v1::Turn;

    use super::*;

    fn ask(question: &str) -> AskRequest {
        AskRequest {
            question: question.into(),
            knowledge_base: "kb".into(),
            ..Default::default()
        }
    }

    fn error(policy: &AskPolicy, request: &AskRequest) -> String {
        match check_request(policy, request) {
            Err(OrchestratorError::Validation(message)) => message,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn a_good_request_is_trimmed_with_the_defaults_filled_in() {
        let checked = check_request(&AskPolicy::default(), &ask("  多少显存？ ")).unwrap();
        assert_eq!(
            checked,
            CheckedAsk {
                question: "多少显存？".into(),
                top_k: 5,
                mode: SearchMode::Hybrid,
            }
        );
    }

    #[test]
    fn every_field_a_request_can_get_wrong_is_named() {
        let policy = AskPolicy {
            max_question_chars: 4,
            max_history_bytes: 10,
            ..AskPolicy::default()
        };
        assert!(error(&policy, &ask("  ")).contains("`question` is empty"));
        assert!(error(&policy, &ask("五个汉字啊")).contains("--max-question-chars"));
        assert!(error(&policy, &ask(&"x".repeat(100))).contains("--max-question-chars"));
        let mut no_kb = ask("q");
        no_kb.knowledge_base.clear();
        assert!(error(&policy, &no_kb).contains("`knowledge_base`"));
        let top_k = AskRequest {
            top_k: 101,
            ..ask("q")
        };
        assert!(error(&policy, &top_k).contains("`top_k` 101"));
        let mode = AskRequest {
            mode: 99,
            ..ask("q")
        };
        assert!(error(&policy, &mode).contains("`mode` 99"));
        let coverage = AskRequest {
            min_coverage: Some(1.5),
            ..ask("q")
        };
        assert!(error(&policy, &coverage).contains("`min_coverage`"));
        let history = AskRequest {
            history: vec![Turn {
                question: "a long question".into(),
                answer: "a".into(),
            }],
            ..ask("q")
        };
        assert!(error(&policy, &history).contains("--max-history-bytes"));
        // Only the turns --max-history-turns keeps count.
        let policy = AskPolicy {
            max_history_turns: 0,
            ..policy
        };
        assert!(check_request(&policy, &history).is_ok());
    }
}
