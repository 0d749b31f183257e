//! Targets in the trained model's own words (self-distillation; SDFT, Yang et al. 2024):
//! the model about to be trained answers each answer example's own prompt, and where its
//! answer states the teacher's fact, that answer is the target; where it does not, the
//! model answers again with the teacher's answer shown as a reference, and that rewrite is
//! the target when it states the fact. Only when neither does is the teacher's bare answer
//! kept.
//!
//! Why: targets far from what the model would write move its weights far, and with a few
//! dozen examples the move is noise as much as signal: adapters trained on the teacher's
//! words answered fewer questions right than the base model, losing figures it had read
//! right (the full fine-tuning line's memory for LoRA's). Targets the model already
//! writes cost nothing to learn; the examples it gets wrong, in its own words, carry the
//! correction.

use serde::{Deserialize, Serialize};
use zhiku_proto::v1::{ChatMessage, Role};

use super::{ExampleKind, TrainingExample};
use crate::Orchestrator;
use crate::context::quotes_passage_header;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::eval::contains_gold;
use crate::grounding::is_refusal;

/// Appended to the prompt for the second try: the teacher's answer as a reference, to be
/// answered from in the model's own words.
pub const REFERENCE_TEMPLATE: &str = "\n\n参考答案：{answer}\n请参考这个答案，用你自己的话回答上面的问题，必须照抄参考答案中的事实。";

/// Where an example's target came from after distillation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distilled {
    /// The model's own answer to the prompt stated the teacher's fact.
    Own,
    /// The model's answer with the teacher's shown as a reference stated it.
    Rewritten,
    /// Neither did: the teacher's answer stays.
    Teacher,
}

/// Whether `reply` states `fact` (the teacher's answer): no refusal, no passage header
/// copied from the prompt (a target that goes on into the next passage, `[5] （来源：…）`,
/// teaches the adapter to answer with passages), and the fact in it as the eval reads a
/// gold answer ([`contains_gold`]).
pub fn states_fact(reply: &str, fact: &str) -> bool {
    !reply.trim().is_empty()
        && !is_refusal(reply)
        && !quotes_passage_header(reply)
        && contains_gold(reply, &[fact.to_owned()])
}

/// Whether [`Orchestrator::distill`] would ask the model about `example`: an answer example
/// not distilled yet.
pub fn needs_distilling(example: &TrainingExample) -> bool {
    example.zhiku.kind == ExampleKind::Answer && example.zhiku.distilled.is_none()
}

impl Orchestrator {
    /// `example` with its target in the served model's own words where it can be (see the
    /// module), and which. A refusal example, or one distilled already, is returned as it
    /// is.
    pub async fn distill(
        &self,
        mut example: TrainingExample,
        max_new_tokens: u32,
    ) -> Result<TrainingExample, OrchestratorError> {
        if !needs_distilling(&example) {
            return Ok(example);
        }
        let Some(prompt) = example.conversations.first().map(|t| t.value.clone()) else {
            return Ok(example);
        };
        let fact = example.zhiku.answer.clone();
        let messages = |user: String| {
            let mut messages: Vec<ChatMessage> = example
                .system
                .iter()
                .map(|system| ChatMessage {
                    role: Role::System as i32,
                    content: system.clone(),
                })
                .collect();
            messages.push(ChatMessage {
                role: Role::User as i32,
                content: user,
            });
            messages
        };
        let deadline = Deadline::default();
        let own = self
            .complete_chat_greedy(messages(prompt.clone()), max_new_tokens, deadline)
            .await?;
        let (target, how) = if states_fact(&own, &fact) {
            (own, Distilled::Own)
        } else {
            let shown = format!(
                "{prompt}{}",
                REFERENCE_TEMPLATE.replacen("{answer}", &fact, 1)
            );
            let rewritten = self
                .complete_chat_greedy(messages(shown), max_new_tokens, deadline)
                .await?;
            if states_fact(&rewritten, &fact) {
                (rewritten, Distilled::Rewritten)
            } else {
                (fact, Distilled::Teacher)
            }
        };
        if let Some(turn) = example.conversations.get_mut(1) {
            turn.value = target.trim().to_owned();
        }
        example.zhiku.distilled = Some(how);
        Ok(example)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_states_the_fact_as_the_eval_reads_gold() {
        assert!(states_fact("MiniCPM 的 vllm 版本是 0.2.7。", "0.2.7"));
        assert!(states_fact("需要 13 GB 内存", "13GB"));
        assert!(!states_fact("需要 14 GB 内存", "13GB"));
        assert!(!states_fact("根据已知信息无法回答该问题", "根据已知信息"));
        assert!(!states_fact("  ", ""));
        // The model's answer that runs on into the next passage of its prompt.
        assert!(!states_fact(
            "pip install -r requirements.txt\n\n[5] （来源：qwen.md；章节：环境）\nconda create -n qwen",
            "pip install -r requirements.txt"
        ));
        assert!(!states_fact("0.2.7\n[2] （章节：安装）", "0.2.7"));
    }

    fn example(kind: ExampleKind, distilled: Option<Distilled>) -> TrainingExample {
        TrainingExample {
            system: Some("你是知识库问答助手。".into()),
            conversations: vec![
                super::super::Turn {
                    from: "human".into(),
                    value: "已知信息：\n[1] vllm==0.2.7\n\n问题：vllm 版本是多少？".into(),
                },
                super::super::Turn {
                    from: "gpt".into(),
                    value: "0.2.7".into(),
                },
            ],
            zhiku: super::super::ExampleOrigin {
                passage: "a.md#0".into(),
                source: "a.md".into(),
                kind,
                question: "vllm 版本是多少？".into(),
                answer: "0.2.7".into(),
                restated: None,
                distilled,
                support: 1.0,
                from_table: false,
                from_statement: false,
                near_miss: None,
            },
        }
    }

    #[tokio::test]
    async fn only_answer_examples_not_yet_distilled_ask_the_model() {
        // Nothing listens on these ports: a call to the generator fails.
        let orchestrator = Orchestrator::new(crate::OrchestratorArgs::local(1, 2, 3)).unwrap();
        for kept in [
            example(ExampleKind::Refusal, None),
            example(ExampleKind::Answer, Some(Distilled::Own)),
        ] {
            let back = orchestrator.distill(kept.clone(), 16).await.unwrap();
            assert_eq!(back, kept);
        }
        assert!(
            orchestrator
                .distill(example(ExampleKind::Answer, None), 16)
                .await
                .is_err()
        );
    }

    #[test]
    fn the_reference_is_put_after_the_prompt() {
        let shown = REFERENCE_TEMPLATE.replacen("{answer}", "0.2.7", 1);
        assert!(shown.starts_with("\n\n参考答案：0.2.7\n"));
    }
}
