//! Ask's last stages: the prompt (numbered passages, the question, the earlier turns that
//! fit), the answer streamed from the generator, and its grounding.

use std::time::Instant;

use tokio_stream::StreamExt;
use zhiku_proto::v1::{
    Answer, AskEvent, Chat, Citation, GenerateRequest, KnowledgeBase, SamplingParams, Turn,
    ask_event, generate_request, generate_stream_response,
};

use crate::config::PassageOrder;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::grounding::{abstains, grounding_of};
use crate::prompt::REFUSAL;
use crate::{Events, Orchestrator};

use super::{ms, send};

impl Orchestrator {
    /// The conversation sent to the generator: the template with the passages (`rendered`,
    /// numbered as `citations`, in --passage-order) and `question`, after the earlier turns
    /// of `history` that fit.
    pub(super) async fn prompt_chat(
        &self,
        history: &[Turn],
        citations: &[Citation],
        rendered: &[String],
        question: &str,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<Chat, OrchestratorError> {
        let mut passages: Vec<(u32, &str)> = citations
            .iter()
            .zip(rendered)
            .map(|(c, r)| (c.number, r.as_str()))
            .collect();
        if self.args.ask.passage_order == PassageOrder::BestLast {
            passages.reverse();
        }
        let prompt = self.template.render_numbered(&passages, question);
        self.fit_history(history, &prompt, max_new_tokens, deadline)
            .await
    }

    /// Generates the answer to `chat` with `knowledge_base`'s adapter, sending each chunk
    /// as it comes; `draft` (sources, timings so far, coverage) completed with the answer,
    /// its support and, under --abstain-below, the refusal in its place.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn generate_answer(
        &self,
        knowledge_base: &KnowledgeBase,
        chat: Chat,
        sampling: SamplingParams,
        draft: Answer,
        started: Instant,
        deadline: Deadline,
        events: &Events<AskEvent>,
    ) -> Result<Answer, OrchestratorError> {
        let generate_started = Instant::now();
        let generate = GenerateRequest {
            input: Some(generate_request::Input::Chat(chat)),
            sampling: Some(sampling),
            adapter: knowledge_base.adapter.clone(),
        };
        let mut stream = self
            .generate_for(knowledge_base, generate, deadline)
            .await?;
        let mut first_token_ms = None;
        while let Some(event) = stream.next().await {
            let event = event.map_err(OrchestratorError::downstream("generator"))?;
            match event.event {
                Some(generate_stream_response::Event::Chunk(chunk)) => {
                    first_token_ms.get_or_insert_with(|| ms(started));
                    send(events, ask_event::Event::Chunk(chunk)).await?;
                }
                Some(generate_stream_response::Event::Done(done)) => {
                    let mut timings = draft.timings.unwrap_or_default();
                    timings.first_token_ms = first_token_ms.unwrap_or_else(|| ms(started));
                    timings.generate_ms = ms(generate_started);
                    timings.total_ms = ms(started);
                    let (support, grounded) = grounding_of(&done.text, &draft.citations).await?;
                    let abstained = abstains(support, self.args.ask.abstain_below);
                    if abstained {
                        tracing::info!(
                            support,
                            draft = %done.text,
                            "grounded abstention: the answer was replaced by the refusal"
                        );
                    }
                    return Ok(Answer {
                        text: if abstained { REFUSAL.into() } else { done.text },
                        refused: abstained,
                        timings: Some(timings),
                        finish_reason: done.finish_reason,
                        prompt_tokens: done.prompt_tokens,
                        generated_tokens: done.generated_tokens,
                        support,
                        grounded,
                        ..draft
                    });
                }
                None => {}
            }
        }
        Err(OrchestratorError::Downstream {
            service: "generator",
            status: tonic::Status::unavailable("the answer stream ended before its final event"),
        })
    }
}
