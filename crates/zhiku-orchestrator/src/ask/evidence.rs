//! Ask's evidence step: the retrieved passages merged and fitted to the prompt's token budget
//! ([`crate::context`]), then weighed by [`crate::grounding`].

use zhiku_proto::v1::{Citation, CountTokensRequest, count_tokens_request};

use crate::Orchestrator;
use crate::context;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;

/// The most tokens of passages the budget takes from a model's context by default: what the
/// default 5 passages of the default chunk size need (5 answered better than 3: docs/src/benchmarks/eval.md).
pub const AUTO_CONTEXT_CAP: u32 = 1536;
/// Context tokens left for the template, the question and the history when the budget comes
/// from the model's context.
const PROMPT_RESERVE: u32 = 512;

/// The passages' token budget: the request's, else --context-tokens, else from the model's
/// context (after the answer and [`PROMPT_RESERVE`]), at most [`AUTO_CONTEXT_CAP`].
pub fn context_budget(
    requested: Option<u32>,
    configured: u32,
    context_length: u32,
    max_new_tokens: u32,
) -> u32 {
    match requested.filter(|&t| t > 0) {
        Some(t) => t,
        None if configured > 0 => configured,
        None => context_length
            .saturating_sub(max_new_tokens)
            .saturating_sub(PROMPT_RESERVE)
            .min(AUTO_CONTEXT_CAP),
    }
}

impl Orchestrator {
    /// Merges the retrieved passages and keeps, in rank order, those whose tokens (as the
    /// prompt shows them, counted by the generator) fit the budget; with the tokens used.
    pub(crate) async fn fit_passages(
        &self,
        citations: Vec<Citation>,
        requested: Option<u32>,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<(Vec<Citation>, u32), OrchestratorError> {
        let merged = context::merge(citations);
        if merged.is_empty() {
            return Ok((merged, 0));
        }
        let counts = futures::future::try_join_all(merged.iter().map(|c| {
            let mut generator = self.downstream.generator.clone();
            let text = context::render(c);
            async move {
                generator
                    .count_tokens(deadline.request(CountTokensRequest {
                        input: Some(count_tokens_request::Input::Prompt(text)),
                        without_first: false,
                    }))
                    .await
                    .map(tonic::Response::into_inner)
            }
        }))
        .await
        .map_err(OrchestratorError::downstream("generator"))?;
        let context_length = counts.first().map_or(0, |c| c.context_length);
        let budget = context_budget(
            requested,
            self.args.ask.context_tokens,
            context_length,
            max_new_tokens,
        );
        let costs: Vec<u32> = counts.iter().map(|c| c.tokens).collect();
        let kept = context::within_budget(&costs, budget);
        let used: u32 = kept.iter().map(|&i| costs[i]).sum();
        let mut passages: Vec<Citation> = merged
            .into_iter()
            .enumerate()
            .filter(|(i, _)| kept.contains(i))
            .map(|(_, c)| c)
            .collect();
        for (i, c) in passages.iter_mut().enumerate() {
            c.number = i as u32 + 1;
        }
        Ok((passages, used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_comes_from_the_request_the_flag_or_the_models_context() {
        assert_eq!(context_budget(Some(300), 800, 32_768, 512), 300);
        assert_eq!(context_budget(None, 800, 32_768, 512), 800);
        assert_eq!(context_budget(Some(0), 0, 32_768, 512), AUTO_CONTEXT_CAP);
        // A small context: what is left after the answer and the reserve.
        assert_eq!(
            context_budget(None, 0, 2048, 512),
            2048 - 512 - PROMPT_RESERVE
        );
        assert_eq!(context_budget(None, 0, 512, 512), 0);
    }
}
