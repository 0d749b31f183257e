//! The ask pipeline: embed the question → search → drop passages under the threshold →
//! refuse without generating when none is left → the article's prompt → generate, streamed.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;
use zhiku_proto::v1::{
    Answer, AskEvent, AskRequest, Chat, ChatMessage, Citation, CountTokensRequest,
    DescribeKnowledgeBaseRequest, EmbedKind, EmbedRequest, GenerateRequest, Role, SamplingParams,
    SearchMode, SearchRequest, Sources, Timings, ask_event, count_tokens_request, generate_request,
    generate_stream_response,
};

use crate::Orchestrator;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::prompt::REFUSAL;

type Events = mpsc::Sender<Result<AskEvent, Status>>;

const MAX_QUESTION_CHARS: usize = 4_000;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Passages searched for when a request asks for 0.
pub(crate) fn effective_top_k(top_k: u32) -> u32 {
    if top_k == 0 { 5 } else { top_k }
}

/// The search mode a request names (UNSPECIFIED: hybrid).
pub(crate) fn search_mode(mode: i32) -> Result<SearchMode, OrchestratorError> {
    match SearchMode::try_from(mode) {
        Ok(SearchMode::Unspecified) => Ok(SearchMode::Hybrid),
        Ok(mode) => Ok(mode),
        Err(_) => Err(OrchestratorError::Validation(format!(
            "`mode` {mode} is not a SearchMode"
        ))),
    }
}

/// What the first stages of Ask found: the passages past the threshold, numbered as the
/// prompt cites them, with the time each stage took.
pub(crate) struct Retrieved {
    pub citations: Vec<Citation>,
    pub embed_ms: f64,
    pub search_ms: f64,
}

impl Orchestrator {
    /// Embeds the question (not in sparse mode, which searches by keywords alone), searches
    /// and drops the hits under the threshold. The threshold is a similarity: in dense and
    /// hybrid modes it is checked on each hit's cosine, so a hit found by keywords alone
    /// (no cosine) does not pass it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn retrieve(
        &self,
        knowledge_base: &str,
        question: &str,
        top_k: u32,
        score_threshold: Option<f32>,
        filter: Option<zhiku_proto::v1::Filter>,
        mode: SearchMode,
        deadline: Deadline,
    ) -> Result<Retrieved, OrchestratorError> {
        let embed_started = Instant::now();
        let vector = if mode == SearchMode::Sparse {
            Vec::new()
        } else {
            self.downstream
                .embedder
                .clone()
                .embed(deadline.request(EmbedRequest {
                    texts: vec![question.to_owned()],
                    kind: EmbedKind::Query as i32,
                    ..Default::default()
                }))
                .await
                .map_err(OrchestratorError::downstream("embedder"))?
                .into_inner()
                .embeddings
                .into_iter()
                .next()
                .map(|e| e.values)
                .ok_or_else(|| {
                    OrchestratorError::Internal("the embedder returned no vector".into())
                })?
        };
        let embed_ms = ms(embed_started);

        let search_started = Instant::now();
        let hits = self
            .downstream
            .retriever
            .clone()
            .search(deadline.request(SearchRequest {
                knowledge_base: knowledge_base.to_owned(),
                vector,
                query_text: if mode == SearchMode::Dense {
                    String::new()
                } else {
                    question.to_owned()
                },
                top_k,
                score_threshold,
                filter,
                mode: mode as i32,
                with_vectors: false,
            }))
            .await
            .map_err(OrchestratorError::downstream("retriever"))?
            .into_inner()
            .hits;
        let search_ms = ms(search_started);

        let citations = hits
            .into_iter()
            .filter(|hit| match score_threshold {
                None => true,
                Some(threshold) => match mode {
                    SearchMode::Sparse => hit.score >= threshold,
                    _ => {
                        hit.dense_score.is_some_and(|s| s >= threshold)
                            || (mode == SearchMode::Dense && hit.score >= threshold)
                    }
                },
            })
            .enumerate()
            .map(|(i, hit)| {
                let passage = hit.passage.unwrap_or_default();
                Citation {
                    number: i as u32 + 1,
                    document_id: passage.document_id,
                    source: passage.source,
                    chunk_index: passage.chunk_index,
                    score: hit.score,
                    text: passage.text,
                }
            })
            .collect();
        Ok(Retrieved {
            citations,
            embed_ms,
            search_ms,
        })
    }

    /// Answers one question, sending events on `events`. A client that goes away stops the
    /// work at once (its downstream calls are dropped, which cancels them); that is logged
    /// as CANCELLED, not as an error.
    pub async fn ask(&self, request: AskRequest, deadline: Deadline, events: Events) {
        let work = deadline.run(
            "before the answer was complete",
            self.ask_inner(request, deadline, &events),
        );
        let result = tokio::select! {
            result = work => result,
            () = events.closed() => Err(OrchestratorError::Cancelled),
        };
        match result {
            Ok(()) => {}
            Err(OrchestratorError::Cancelled) => {
                tracing::info!(code = "CANCELLED", "the client went away; the ask stopped");
            }
            Err(e) => {
                let _ = events.send(Err(e.into())).await;
            }
        }
    }

    async fn ask_inner(
        &self,
        request: AskRequest,
        deadline: Deadline,
        events: &Events,
    ) -> Result<(), OrchestratorError> {
        let started = Instant::now();
        // Sizes are checked before anything is copied: a UTF-8 character is at most 4 bytes.
        if request.question.len() > MAX_QUESTION_CHARS * 4 {
            return Err(OrchestratorError::Validation(format!(
                "`question` is longer than {MAX_QUESTION_CHARS} characters"
            )));
        }
        let question = request.question.trim().to_owned();
        if question.is_empty() {
            return Err(OrchestratorError::Validation("`question` is empty".into()));
        }
        if question.chars().count() > MAX_QUESTION_CHARS {
            return Err(OrchestratorError::Validation(format!(
                "`question` is longer than {MAX_QUESTION_CHARS} characters"
            )));
        }
        if request.knowledge_base.is_empty() {
            return Err(OrchestratorError::Validation(
                "`knowledge_base` is empty: name the knowledge base to ask".into(),
            ));
        }
        if request.top_k > 100 {
            return Err(OrchestratorError::Validation(format!(
                "`top_k` {} is over 100",
                request.top_k
            )));
        }
        let top_k = effective_top_k(request.top_k);
        let mode = search_mode(request.mode)?;

        let knowledge_base = self
            .downstream
            .retriever
            .clone()
            .describe_knowledge_base(deadline.request(DescribeKnowledgeBaseRequest {
                name: request.knowledge_base.clone(),
                // The adapter only: no scan of the passages.
                metadata_only: true,
            }))
            .await
            .map_err(OrchestratorError::downstream("retriever"))?
            .into_inner();

        let Retrieved {
            citations,
            embed_ms,
            search_ms,
        } = self
            .retrieve(
                &request.knowledge_base,
                &question,
                top_k,
                request.score_threshold,
                request.filter.clone(),
                mode,
                deadline,
            )
            .await?;
        // Labelled by knowledge bases that exist (described above), so the label set stays
        // as small as their list.
        let metrics = zhiku_runtime::metrics::metrics();
        let kb = request.knowledge_base.as_str();
        metrics
            .retrieval_passages
            .with_label_values(&[kb])
            .inc_by(citations.len() as u64);
        let refused = if citations.is_empty() {
            "true"
        } else {
            "false"
        };
        metrics
            .retrieval_asks
            .with_label_values(&[kb, refused])
            .inc();
        send(
            events,
            ask_event::Event::Sources(Sources {
                citations: citations.clone(),
            }),
        )
        .await?;

        let mut timings = Timings {
            embed_ms,
            search_ms,
            ..Default::default()
        };
        if citations.is_empty() {
            timings.total_ms = ms(started);
            return send(
                events,
                ask_event::Event::Answer(Answer {
                    text: REFUSAL.into(),
                    refused: true,
                    citations,
                    timings: Some(timings),
                    ..Default::default()
                }),
            )
            .await;
        }

        let passages: Vec<&str> = citations.iter().map(|c| c.text.as_str()).collect();
        let prompt = self.template.render(&passages, &question);
        let sampling = request.sampling.clone().unwrap_or(SamplingParams {
            max_new_tokens: Some(self.args.max_new_tokens),
            ..Default::default()
        });
        let chat = self
            .fit_history(
                &request.history,
                &prompt,
                sampling.max_new_tokens.unwrap_or(self.args.max_new_tokens),
                deadline,
            )
            .await?;

        let generate_started = Instant::now();
        let generate = GenerateRequest {
            input: Some(generate_request::Input::Chat(chat)),
            sampling: Some(sampling),
            adapter: knowledge_base.adapter.clone(),
        };
        let mut stream = self
            .generate_for(&knowledge_base, generate, deadline)
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
                    timings.first_token_ms = first_token_ms.unwrap_or_else(|| ms(started));
                    timings.generate_ms = ms(generate_started);
                    timings.total_ms = ms(started);
                    return send(
                        events,
                        ask_event::Event::Answer(Answer {
                            text: done.text,
                            refused: false,
                            citations,
                            timings: Some(timings),
                            finish_reason: done.finish_reason,
                            prompt_tokens: done.prompt_tokens,
                            generated_tokens: done.generated_tokens,
                        }),
                    )
                    .await;
                }
                None => {}
            }
        }
        Err(OrchestratorError::Downstream {
            service: "generator",
            status: Status::unavailable("the answer stream ended before its final event"),
        })
    }

    /// Earlier turns go through the model's chat template: the last `--max-history-turns`,
    /// then dropped oldest first until the prompt and the answer fit the context; the
    /// passages are never cut. One CountTokens call counts the whole conversation and what
    /// it would be without each number of its oldest turns (`without_first`).
    pub async fn fit_history(
        &self,
        history: &[zhiku_proto::v1::Turn],
        prompt: &str,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<Chat, OrchestratorError> {
        let build = |turns: &[zhiku_proto::v1::Turn]| {
            let mut messages = Vec::with_capacity(turns.len() * 2 + 1);
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
        let history = &history[history.len().saturating_sub(self.args.max_history_turns)..];
        if history.is_empty() {
            return Ok(build(history));
        }
        let all = build(history);
        let count = self
            .downstream
            .generator
            .clone()
            .count_tokens(deadline.request(CountTokensRequest {
                input: Some(count_tokens_request::Input::Chat(all.clone())),
                without_first: true,
            }))
            .await
            .map_err(OrchestratorError::downstream("generator"))?
            .into_inner();
        let room = u64::from(count.context_length);
        let fits = |tokens: u32| u64::from(tokens) + u64::from(max_new_tokens) <= room;
        if fits(count.tokens) {
            return Ok(all);
        }
        Ok(build(
            &history[first_kept_turn(&count.without_first, history.len(), fits)..],
        ))
    }
}

/// The oldest turn to keep: the first whose conversation from there on `fits`, judged on
/// `without_first` (entry k: the tokens without the first k messages, two per turn).
/// Keeps none when nothing fits or the counts are missing (a generator that predates them).
fn first_kept_turn(without_first: &[u32], turns: usize, fits: impl Fn(u32) -> bool) -> usize {
    (0..turns)
        .find(|&turn| without_first.get(2 * turn).copied().is_some_and(&fits))
        .unwrap_or(turns)
}

async fn send(events: &Events, event: ask_event::Event) -> Result<(), OrchestratorError> {
    events
        .send(Ok(AskEvent { event: Some(event) }))
        .await
        .map_err(|_| OrchestratorError::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::first_kept_turn;

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
