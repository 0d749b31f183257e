//! Conversations: a follow-up rewritten into a standalone question before retrieval, and the
//! earlier turns that fit the model's context with the prompt.

use zhiku_proto::v1::{
    Chat, ChatMessage, CountTokensRequest, GenerateRequest, Role, SamplingParams, Turn,
    count_tokens_request, generate_request,
};

use crate::Orchestrator;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::prompt::REWRITE_TEMPLATE;

impl Orchestrator {
    /// Rewrites a follow-up into a standalone question with the generator (greedy, short);
    /// the question itself when the model gives nothing usable.
    pub(super) async fn standalone_question(
        &self,
        history: &[Turn],
        question: &str,
        deadline: Deadline,
    ) -> Result<String, OrchestratorError> {
        let recent = &history[history.len().saturating_sub(3)..];
        let mut turns = String::new();
        for turn in recent {
            let answer: String = turn.answer.chars().take(200).collect();
            turns.push_str(&format!(
                "用户：{}\n助手：{}\n",
                turn.question.trim(),
                answer.trim()
            ));
        }
        let prompt = REWRITE_TEMPLATE
            .replace("{history}", turns.trim_end())
            .replacen("{question}", question, 1);
        let text = self.complete_greedy(prompt, 64, deadline).await?;
        Ok(clean_rewrite(&text).unwrap_or_else(|| question.to_owned()))
    }

    /// The base model's greedy reply to one user message of `prompt`, at most
    /// `max_new_tokens` long: the orchestrator's own short calls (rewrites, training
    /// examples), never a user's Ask.
    pub(crate) async fn complete_greedy(
        &self,
        prompt: String,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<String, OrchestratorError> {
        let user = ChatMessage {
            role: Role::User as i32,
            content: prompt,
        };
        self.complete_chat_greedy(vec![user], max_new_tokens, deadline)
            .await
    }

    /// The base model's greedy reply to `messages` (through its chat template), at most
    /// `max_new_tokens` long.
    pub(crate) async fn complete_chat_greedy(
        &self,
        messages: Vec<ChatMessage>,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<String, OrchestratorError> {
        let response = self
            .downstream
            .generator
            .clone()
            .generate(deadline.request(GenerateRequest {
                input: Some(generate_request::Input::Chat(Chat { messages })),
                sampling: Some(SamplingParams {
                    temperature: Some(0.0),
                    max_new_tokens: Some(max_new_tokens),
                    ..Default::default()
                }),
                adapter: String::new(),
            }))
            .await
            .map_err(OrchestratorError::downstream("generator"))?
            .into_inner();
        Ok(response.text)
    }

    /// Earlier turns go through the model's chat template: the last `--max-history-turns`,
    /// then dropped oldest first until the prompt and the answer fit the context; the
    /// passages are never cut. One CountTokens call counts the whole conversation and what
    /// it would be without each number of its oldest turns (`without_first`).
    pub async fn fit_history(
        &self,
        history: &[Turn],
        prompt: &str,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<Chat, OrchestratorError> {
        self.fit_conversation(None, history, prompt, max_new_tokens, deadline)
            .await
    }

    /// [`Self::fit_history`] with `system` instructions first, in the system role (never
    /// dropped, like the passages).
    pub async fn fit_conversation(
        &self,
        system: Option<&str>,
        history: &[Turn],
        prompt: &str,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<Chat, OrchestratorError> {
        let build = |turns: &[Turn]| {
            let mut messages = Vec::with_capacity(turns.len() * 2 + 2);
            if let Some(system) = system {
                messages.push(ChatMessage {
                    role: Role::System as i32,
                    content: system.to_owned(),
                });
            }
            for turn in turns {
                messages.push(ChatMessage {
                    role: Role::User as i32,
                    content: turn.question.clone(),
                });
                messages.push(ChatMessage {
                    role: Role::Assistant as i32,
                    content: turn.answer.clone(),
                });
            }
            messages.push(ChatMessage {
                role: Role::User as i32,
                content: prompt.to_owned(),
            });
            Chat { messages }
        };
        let history = last_turns(history, self.args.ask.max_history_turns);
        if history.is_empty() {
            return Ok(build(history));
        }
        let all = build(history);
        // `without_first` drops messages from the front: counted without the system
        // message, which goes back in front of whatever turns are kept.
        let turns_only = if system.is_some() {
            Chat {
                messages: all.messages[1..].to_vec(),
            }
        } else {
            all.clone()
        };
        let count = self
            .downstream
            .generator
            .clone()
            .count_tokens(deadline.request(CountTokensRequest {
                input: Some(count_tokens_request::Input::Chat(turns_only)),
                without_first: true,
            }))
            .await
            .map_err(OrchestratorError::downstream("generator"))?
            .into_inner();
        let system_tokens = match system {
            Some(system) => self.count_prompt_tokens(system, deadline).await?,
            None => 0,
        };
        let room = u64::from(count.context_length);
        let fits = |tokens: u32| {
            u64::from(tokens) + u64::from(system_tokens) + u64::from(max_new_tokens) <= room
        };
        if fits(count.tokens) {
            return Ok(all);
        }
        Ok(build(
            &history[first_kept_turn(&count.without_first, history.len(), fits)..],
        ))
    }

    /// The tokens of `text` as a raw prompt.
    async fn count_prompt_tokens(
        &self,
        text: &str,
        deadline: Deadline,
    ) -> Result<u32, OrchestratorError> {
        Ok(self
            .downstream
            .generator
            .clone()
            .count_tokens(deadline.request(CountTokensRequest {
                input: Some(count_tokens_request::Input::Prompt(text.to_owned())),
                without_first: false,
            }))
            .await
            .map_err(OrchestratorError::downstream("generator"))?
            .into_inner()
            .tokens)
    }
}

/// The turns of `history` an Ask may use: the last `max_turns` (--max-history-turns; the
/// size check and the prompt see the same ones).
pub(super) fn last_turns(history: &[Turn], max_turns: usize) -> &[Turn] {
    &history[history.len().saturating_sub(max_turns)..]
}

/// The oldest turn to keep: the first whose conversation from there on `fits`, judged on
/// `without_first` (entry k: the tokens without the first k messages, two per turn).
/// Keeps none when nothing fits or the counts are missing (a generator that predates them).
fn first_kept_turn(without_first: &[u32], turns: usize, fits: impl Fn(u32) -> bool) -> usize {
    (0..turns)
        .find(|&turn| without_first.get(2 * turn).copied().is_some_and(&fits))
        .unwrap_or(turns)
}

/// The model's rewrite, cleaned: its first non-empty line without a label or quotes; None
/// when that is empty or far longer than a question.
fn clean_rewrite(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = [
        "独立问题：",
        "独立问题:",
        "改写后的问题：",
        "问题：",
        "问题:",
    ]
    .iter()
    .find_map(|label| line.strip_prefix(label))
    .unwrap_or(line);
    let line = line
        .trim()
        .trim_matches(|c| matches!(c, '"' | '“' | '”' | '「' | '」' | '\''))
        .trim();
    let length = line.chars().count();
    (length > 0 && length <= 400).then(|| line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_are_cleaned() {
        assert_eq!(
            clean_rewrite("\n独立问题：“ChatGLM-6B 需要多少显存？”\n解释……").as_deref(),
            Some("ChatGLM-6B 需要多少显存？")
        );
        assert_eq!(clean_rewrite("  \n "), None);
        assert_eq!(clean_rewrite(&"长".repeat(401)), None);
    }

    #[test]
    fn keeps_the_most_recent_turns_that_fit() {
        // Three turns (six messages) and the question: 700, 600, … tokens without the first
        // 0, 1, … messages.
        let counts = [700, 600, 500, 400, 300, 200, 100];
        let fits = |limit: u32| move |tokens: u32| tokens <= limit;
        assert_eq!(first_kept_turn(&counts, 3, fits(700)), 0);
        assert_eq!(first_kept_turn(&counts, 3, fits(650)), 1);
        assert_eq!(first_kept_turn(&counts, 3, fits(300)), 2);
        // Entry 6 (no turn at all) is not a turn: nothing fits, none is kept.
        assert_eq!(first_kept_turn(&counts, 3, fits(150)), 3);
        // A generator without the counts: no turn is kept.
        assert_eq!(first_kept_turn(&[], 3, fits(10_000)), 3);
    }
}
