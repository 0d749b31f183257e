//! The ask pipeline, one named step after another:
//!
//! 1. [`request`]: the request checked against the Ask policy, before any downstream call;
//! 2. (with history) a follow-up rewritten into a standalone question ([`history`]);
//! 3. [`retrieve`]: embed it → search → drop passages under the threshold → (with a
//!    reranker) rerank the candidates with the embedder's cross-encoder, keep the top_k;
//! 4. [`evidence`]: merge overlapping chunks and keep what fits the token budget
//!    ([`crate::context`]), then weigh them ([`crate::grounding`]): refuse without
//!    generating when none is left or (`--abstention evidence`) when they cover too little
//!    of the question; [`judge`]: the chat model judges whether they state the answer
//!    (--relevance; one forward per prompt, no generation) and, with `--abstention
//!    evidence`, under --min-relevance it refuses too;
//! 5. [`generate`]: the prompt (instructions in the system role, the passages and the
//!    question in the user turn; or --prompt-template) → generate, streamed (once more with
//!    the article's template when the answer echoed the instructions) → the answer with its
//!    support score (and grounded abstention) and its fact-level verification (--verify:
//!    an answer whose key fact no passage states is withdrawn or marked).

mod evidence;
mod generate;
mod history;
mod judge;
mod request;
mod retrieve;

use std::time::Instant;

use zhiku_proto::v1::{
    Answer, AskEvent, AskRequest, DescribeKnowledgeBaseRequest, KnowledgeBase, SamplingParams,
    Sources, Timings, ask_event,
};

use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::grounding::{EvidenceLevels, refuses_from_evidence, weigh_evidence};
use crate::prompt::REFUSAL;
use crate::{Events, Orchestrator};

pub use evidence::{AUTO_CONTEXT_CAP, context_budget};
pub use generate::verification;
pub use retrieve::{CALIBRATED_THRESHOLDS, apply_rerank, calibrated_threshold};
pub(crate) use retrieve::{Retrieved, Search, effective_top_k, search_mode};

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl Orchestrator {
    /// Answers one question, sending events on `events`. A client that goes away stops the
    /// work at once (its downstream calls are dropped, which cancels them); that is logged
    /// as CANCELLED, not as an error.
    pub async fn ask(&self, request: AskRequest, deadline: Deadline, events: Events<AskEvent>) {
        self.ask_reranked(request, None, deadline, events).await
    }

    /// [`Self::ask`], reranking as `rerank` says (unset: as --rerank says).
    pub(crate) async fn ask_reranked(
        &self,
        request: AskRequest,
        rerank: Option<bool>,
        deadline: Deadline,
        events: Events<AskEvent>,
    ) {
        crate::run_pipeline(
            "ask",
            "before the answer was complete",
            deadline,
            &events,
            self.ask_inner(request, rerank, deadline, &events),
        )
        .await
    }

    async fn ask_inner(
        &self,
        request: AskRequest,
        rerank: Option<bool>,
        deadline: Deadline,
        events: &Events<AskEvent>,
    ) -> Result<(), OrchestratorError> {
        let started = Instant::now();
        let policy = &self.args.ask;
        let checked = request::check_request(policy, &request)?;
        let knowledge_base = self
            .describe_for_ask(&request.knowledge_base, deadline)
            .await?;
        let knowledge_base = self
            .with_requested_adapter(knowledge_base, request.adapter.as_deref(), deadline)
            .await?;
        let search_question = self
            .search_question(&request, &checked.question, deadline)
            .await?;
        let sampling = request.sampling.clone().unwrap_or(SamplingParams {
            max_new_tokens: Some(policy.max_new_tokens),
            ..Default::default()
        });
        let max_new_tokens = sampling.max_new_tokens.unwrap_or(policy.max_new_tokens);

        let search = Search {
            knowledge_base: &request.knowledge_base,
            question: &search_question,
            top_k: checked.top_k,
            score_threshold: request.score_threshold,
            filter: request.filter.clone(),
            mode: checked.mode,
            rerank,
            rrf_k: None,
        };
        let retrieved = self.retrieve(search, deadline).await?;
        let (citations, context_tokens) = self
            .fit_passages(
                retrieved.citations,
                request.context_tokens,
                max_new_tokens,
                deadline,
            )
            .await?;
        let levels = EvidenceLevels::of(
            policy,
            request.min_coverage,
            request.min_anchors,
            request.min_relevance,
        );
        let mut evidence = weigh_evidence(policy, &search_question, &citations, levels).await?;
        let mut citations = citations;
        evidence.mark_anchors(&mut citations);
        let relevance = if evidence.refuse || !policy.relevance {
            None
        } else {
            self.judge_relevance(
                &knowledge_base,
                &request.history,
                &citations,
                &evidence.rendered,
                &search_question,
                max_new_tokens,
                deadline,
            )
            .await?
        };
        if let Some(judged) = &relevance {
            for (citation, &r) in citations.iter_mut().zip(&judged.sources) {
                citation.relevance = Some(r as f32);
            }
            evidence.refuse = refuses_from_evidence(
                citations.len(),
                evidence.coverage,
                evidence.anchors,
                Some(judged.answer),
                policy.abstention,
                levels,
            );
            tracing::debug!(
                relevance = judged.answer,
                min_relevance = levels.min_relevance,
                elapsed_ms = judged.elapsed_ms,
                refused = evidence.refuse,
                "relevance judged"
            );
        }
        record_retrieval(&request.knowledge_base, citations.len(), evidence.refuse);
        send(
            events,
            ask_event::Event::Sources(Sources {
                citations: citations.clone(),
            }),
        )
        .await?;

        let draft = Answer {
            citations,
            timings: Some(Timings {
                embed_ms: retrieved.embed_ms,
                search_ms: retrieved.search_ms,
                rerank_ms: retrieved.rerank_ms,
                ..Default::default()
            }),
            context_tokens,
            search_question,
            coverage: evidence.coverage,
            anchors: evidence.anchors,
            relevance: relevance.map(|r| r.answer),
            ..Default::default()
        };
        let answer = if evidence.refuse {
            refusal(draft, started)
        } else {
            self.generate_answer(
                &knowledge_base,
                &request.history,
                &evidence.rendered,
                sampling,
                draft,
                started,
                deadline,
                events,
            )
            .await?
        };
        send(events, ask_event::Event::Answer(answer)).await
    }

    /// The knowledge base asked (its adapter, not its passages): a missing one fails here,
    /// before any model is called.
    pub(crate) async fn describe_for_ask(
        &self,
        name: &str,
        deadline: Deadline,
    ) -> Result<KnowledgeBase, OrchestratorError> {
        Ok(self
            .downstream
            .retriever
            .clone()
            .describe_knowledge_base(deadline.request(DescribeKnowledgeBaseRequest {
                name: name.to_owned(),
                // The adapter only: no scan of the passages.
                metadata_only: true,
                ..Default::default()
            }))
            .await
            .map_err(OrchestratorError::downstream("retriever"))?
            .into_inner())
    }

    /// The question retrieval searches for: with history (and rewriting on, by the request
    /// or --rewrite-follow-ups), the follow-up rewritten into a standalone question.
    async fn search_question(
        &self,
        request: &AskRequest,
        question: &str,
        deadline: Deadline,
    ) -> Result<String, OrchestratorError> {
        let rewrite = request
            .rewrite_follow_up
            .unwrap_or(self.args.ask.rewrite_follow_ups);
        if rewrite && !request.history.is_empty() {
            self.standalone_question(&request.history, question, deadline)
                .await
        } else {
            Ok(question.to_owned())
        }
    }
}

/// The refusal given from the evidence, without calling the model: it claims nothing, so
/// its support is 1 and it is grounded.
fn refusal(draft: Answer, started: Instant) -> Answer {
    let mut timings = draft.timings.unwrap_or_default();
    timings.total_ms = ms(started);
    Answer {
        text: REFUSAL.into(),
        refused: true,
        timings: Some(timings),
        support: 1.0,
        grounded: true,
        ..draft
    }
}

/// Counts the passages retrieved and the Ask, refused or not. Labelled by knowledge bases
/// that exist (described first), so the label set stays as small as their list.
fn record_retrieval(knowledge_base: &str, passages: usize, refused: bool) {
    let metrics = zhiku_runtime::metrics::metrics();
    metrics
        .retrieval_passages
        .with_label_values(&[knowledge_base])
        .inc_by(passages as u64);
    metrics
        .retrieval_asks
        .with_label_values(&[knowledge_base, if refused { "true" } else { "false" }])
        .inc();
}

async fn send(events: &Events<AskEvent>, event: ask_event::Event) -> Result<(), OrchestratorError> {
    events
        .send(Ok(AskEvent { event: Some(event) }))
        .await
        .map_err(|_| OrchestratorError::Cancelled)
}
