//! Ask's relevance judgment ([`crate::grounding::relevance`]): before generating, the chat
//! model judges whether its passages state the answer, from the logits of "是" and "否"
//! after the Ask's own prompt with a yes/no question appended (the generator's
//! `NextTokenLogprobs`: one forward per prompt, no generation). One judgment for the
//! passages together (the answer's) and one per passage (its source's, in its citation).

use std::time::Instant;

use zhiku_proto::v1::{
    Chat, Citation, KnowledgeBase, NextTokenLogprobsRequest, ScoredPrompt, Turn, scored_prompt,
};

use crate::Orchestrator;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::grounding::relevance::{ANSWER_QUESTION, CANDIDATES, judgment, source_question};

use super::ms;

/// What the model judged.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Relevance {
    /// The passages together: whether they state the answer (0 to 1).
    pub answer: f64,
    /// Each passage, in the order of the citations.
    pub sources: Vec<f64>,
    pub elapsed_ms: f64,
}

/// `chat` with `suffix` appended to its last message (the user turn holding the passages
/// and the question), so that it shares the Ask prompt's prefix up to the question.
fn with_suffix(chat: &Chat, suffix: &str) -> ScoredPrompt {
    let mut chat = chat.clone();
    if let Some(last) = chat.messages.last_mut() {
        last.content.push_str(suffix);
    }
    ScoredPrompt {
        input: Some(scored_prompt::Input::Chat(chat)),
    }
}

impl Orchestrator {
    /// Judges `citations` (shown as `rendered`) against `question` with the chat model and
    /// `knowledge_base`'s adapter. None when the generator cannot judge (it predates
    /// NextTokenLogprobs, or lost the adapter): the Ask goes on without the judgment.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn judge_relevance(
        &self,
        knowledge_base: &KnowledgeBase,
        history: &[Turn],
        citations: &[Citation],
        rendered: &[String],
        question: &str,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<Option<Relevance>, OrchestratorError> {
        if citations.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let chat = self
            .prompt_chat(
                &self.template,
                history,
                citations,
                rendered,
                question,
                max_new_tokens,
                deadline,
            )
            .await?;
        let mut prompts = vec![with_suffix(&chat, ANSWER_QUESTION)];
        prompts.extend(
            citations
                .iter()
                .map(|c| with_suffix(&chat, &source_question(c.number))),
        );
        let request = NextTokenLogprobsRequest {
            prompts,
            candidates: CANDIDATES.iter().map(|c| (*c).to_owned()).collect(),
            adapter: knowledge_base.adapter.clone(),
        };
        let response = match self
            .downstream
            .generator
            .clone()
            .next_token_logprobs(deadline.request(request))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unimplemented | tonic::Code::NotFound
                ) =>
            {
                tracing::warn!(%status, "the generator cannot judge relevance; answering without");
                return Ok(None);
            }
            Err(status) => return Err(OrchestratorError::downstream("generator")(status)),
        };
        let judged: Vec<f64> = response
            .results
            .iter()
            .map(|r| match r.logprobs[..] {
                [yes, no, ..] => Ok(judgment(yes, no)),
                _ => Err(()),
            })
            .collect::<Result<_, ()>>()
            .map_err(|()| {
                OrchestratorError::Internal(
                    "the generator scored fewer candidates than asked".into(),
                )
            })?;
        let Some((&answer, sources)) = judged.split_first() else {
            return Err(OrchestratorError::Internal(
                "the generator scored no prompt".into(),
            ));
        };
        if sources.len() != citations.len() {
            return Err(OrchestratorError::Internal(format!(
                "the generator scored {} prompts of {}",
                judged.len(),
                citations.len() + 1
            )));
        }
        Ok(Some(Relevance {
            answer,
            sources: sources.to_vec(),
            elapsed_ms: ms(started),
        }))
    }
}

#[cfg(test)]
mod tests {
    use zhiku_proto::v1::{ChatMessage, Role};

    use super::*;

    #[test]
    fn the_judgment_prompt_is_the_ask_prompt_with_the_question_appended_to_its_user_turn() {
        let chat = Chat {
            messages: vec![
                ChatMessage {
                    role: Role::System as i32,
                    content: "系统".into(),
                },
                ChatMessage {
                    role: Role::User as i32,
                    content: "已知信息：\n[1] 甲\n\n问题：乙".into(),
                },
            ],
        };
        let Some(scored_prompt::Input::Chat(judged)) = with_suffix(&chat, "？").input else {
            panic!("a chat")
        };
        assert_eq!(judged.messages[0], chat.messages[0]);
        assert_eq!(
            judged.messages[1].content,
            "已知信息：\n[1] 甲\n\n问题：乙？"
        );
        assert!(
            judged.messages[1]
                .content
                .starts_with(&chat.messages[1].content)
        );
    }
}
