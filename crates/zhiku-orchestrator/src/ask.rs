//! The ask pipeline: (with history) rewrite a follow-up into a standalone question → embed
//! it → search → drop passages under the threshold → (with a reranker) rerank the
//! candidates with the embedder's cross-encoder and keep the top_k → merge overlapping
//! chunks and keep what fits the token budget ([`crate::context`]) → refuse without
//! generating when none is left or (`--abstention evidence`) when they cover too little of
//! the question ([`crate::coverage`]) → the article's prompt → generate, streamed → the answer
//! with its support score.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;
use zhiku_proto::v1::{
    Answer, AskEvent, AskRequest, Chat, ChatMessage, Citation, CountTokensRequest,
    DescribeKnowledgeBaseRequest, EmbedKind, EmbedRequest, EmbedderInfoRequest, GenerateRequest,
    RerankRequest, Role, SamplingParams, SearchMode, SearchRequest, Sources, Timings, Turn,
    ask_event, count_tokens_request, generate_request, generate_stream_response,
};

use crate::config::{Abstention, PassageOrder, Rerank};
use crate::context;
use crate::coverage::question_coverage;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::eval::{SUPPORTED, is_refusal, support};
use crate::prompt::{REFUSAL, REWRITE_TEMPLATE};
use crate::{EmbedderFacts, Orchestrator};

type Events = mpsc::Sender<Result<AskEvent, Status>>;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// The most tokens of passages the budget takes from a model's context by default: what the
/// default 5 passages of the default chunk size need (5 answered better than 3, README).
pub const AUTO_CONTEXT_CAP: u32 = 1536;
/// Context tokens left for the template, the question and the history when the budget comes
/// from the model's context.
const PROMPT_RESERVE: u32 = 512;

/// Default thresholds (cosine) by embedder, calibrated with `zhiku eval --retrieval-only
/// --sweep threshold=…` on every eval set (README, "Thresholds"): the model id holds the key.
pub const CALIBRATED_THRESHOLDS: &[(&str, f32)] = &[("multilingual-e5-small", 0.84)];

/// The calibrated default threshold of the embedder named `model_id`, if it has one.
pub fn calibrated_threshold(model_id: &str) -> Option<f32> {
    CALIBRATED_THRESHOLDS
        .iter()
        .find(|(key, _)| model_id.contains(key))
        .map(|(_, t)| *t)
}

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

/// How grounded an answer is: its support score, and whether that reaches [`SUPPORTED`].
/// Refusals claim nothing: support 1, grounded.
pub fn grounding(answer: &str, passages: &[&str]) -> (f64, bool) {
    if is_refusal(answer) {
        return (1.0, true);
    }
    let s = support(answer, passages);
    (s, s >= SUPPORTED)
}

/// Grounded abstention: an answer with `support` under `level` (0: never) gives way to the
/// refusal. A refusal's own support is 1, so it never abstains.
pub fn abstains(support: f64, level: f64) -> bool {
    support < level
}

/// A request's own question-coverage level, if it sets one, lies in 0..1; `field` names it
/// in the error.
pub(crate) fn check_min_coverage(field: &str, level: Option<f64>) -> Result<(), OrchestratorError> {
    match level {
        Some(m) if !(0.0..=1.0).contains(&m) => Err(OrchestratorError::Validation(format!(
            "`{field}` {m} is not between 0 and 1"
        ))),
        _ => Ok(()),
    }
}

/// The most candidates a search returns (the retriever's limit).
const MAX_CANDIDATES: u32 = 100;

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

/// What the first stages of Ask found: the passages past the threshold (reranked when it
/// reranked), numbered as the prompt cites them, with the time each stage took.
pub(crate) struct Retrieved {
    pub citations: Vec<Citation>,
    pub embed_ms: f64,
    pub search_ms: f64,
    /// 0 when it did not rerank.
    pub rerank_ms: f64,
}

/// `citations` in the order the reranker gave (`order`, indices best first), each with its
/// `score`, the first `top_k` of them, renumbered.
pub fn apply_rerank(
    citations: Vec<Citation>,
    order: &[u32],
    scores: &[f32],
    top_k: usize,
) -> Result<Vec<Citation>, OrchestratorError> {
    let n = citations.len();
    let mut seen = vec![false; n];
    let valid = order.len() == n
        && scores.len() == n
        && order
            .iter()
            .all(|&i| (i as usize) < n && !std::mem::replace(&mut seen[i as usize], true));
    if !valid {
        return Err(OrchestratorError::Internal(format!(
            "the reranker answered {} scores and an order of {} for {n} passages",
            scores.len(),
            order.len()
        )));
    }
    let mut slots: Vec<Option<Citation>> = citations.into_iter().map(Some).collect();
    Ok(order
        .iter()
        .take(top_k)
        .filter_map(|&i| {
            let mut c = slots[i as usize].take()?;
            c.rerank_score = Some(scores[i as usize]);
            Some(c)
        })
        .enumerate()
        .map(|(rank, mut c)| {
            c.number = rank as u32 + 1;
            c
        })
        .collect())
}

impl Orchestrator {
    /// Embeds the question (not in sparse mode, which searches by keywords alone), searches
    /// and drops the hits under the threshold. The threshold is a similarity: in dense and
    /// hybrid modes it is checked on each hit's cosine, so a hit found by keywords alone
    /// (no cosine) does not pass it. When it reranks (`rerank`, else --rerank), it searches
    /// for --rerank-candidates, thresholds them the same way, has the embedder's
    /// cross-encoder score those left against the question and keeps the best `top_k` in
    /// the reranker's order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn retrieve(
        &self,
        knowledge_base: &str,
        question: &str,
        top_k: u32,
        score_threshold: Option<f32>,
        filter: Option<zhiku_proto::v1::Filter>,
        mode: SearchMode,
        rerank: Option<bool>,
        deadline: Deadline,
    ) -> Result<Retrieved, OrchestratorError> {
        let score_threshold = self.threshold(score_threshold, deadline).await;
        let rerank = self.reranks(rerank, deadline).await;
        let candidates = if rerank {
            top_k.max(self.args.rerank_candidates).min(MAX_CANDIDATES)
        } else {
            top_k
        };
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
                top_k: candidates,
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

        let citations: Vec<Citation> = hits
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
                    heading_path: passage.heading_path,
                    char_start: passage.char_start,
                    char_end: passage.char_end,
                    last_chunk_index: passage.chunk_index,
                    rerank_score: None,
                }
            })
            .collect();
        if !rerank || citations.is_empty() {
            return Ok(Retrieved {
                citations,
                embed_ms,
                search_ms,
                rerank_ms: 0.0,
            });
        }
        let rerank_started = Instant::now();
        let response = self
            .downstream
            .embedder
            .clone()
            .rerank(deadline.request(RerankRequest {
                query: question.to_owned(),
                passages: citations.iter().map(|c| c.text.clone()).collect(),
                reject_overlong: false,
            }))
            .await
            .map_err(OrchestratorError::downstream("embedder"))?
            .into_inner();
        let mut scores = vec![f32::NAN; citations.len()];
        for s in &response.scores {
            if let Some(slot) = scores.get_mut(s.index as usize) {
                *slot = s.score;
            }
        }
        let citations = apply_rerank(citations, &response.order, &scores, top_k as usize)?;
        Ok(Retrieved {
            citations,
            embed_ms,
            search_ms,
            rerank_ms: ms(rerank_started),
        })
    }

    /// What the embedder's Info says, asked once; None (and asked again next time) when the
    /// embedder does not answer.
    async fn embedder_facts(&self, deadline: Deadline) -> Option<EmbedderFacts> {
        let facts = self
            .embedder_facts
            .get_or_try_init(|| async {
                self.downstream
                    .embedder
                    .clone()
                    .info(deadline.request(EmbedderInfoRequest {}))
                    .await
                    .map(|info| {
                        let info = info.into_inner();
                        EmbedderFacts {
                            threshold: calibrated_threshold(&info.model_id),
                            reranker: !info.reranker_model.is_empty(),
                        }
                    })
            })
            .await;
        match facts {
            Ok(facts) => Some(*facts),
            Err(status) => {
                tracing::warn!(%status, "no embedder info: no default threshold nor automatic reranking this time");
                None
            }
        }
    }

    /// Whether to rerank: the request's (an eval setting's) choice, else --rerank (auto: when
    /// the embedder has a reranker).
    pub(crate) async fn reranks(&self, requested: Option<bool>, deadline: Deadline) -> bool {
        match (requested, self.args.rerank) {
            (Some(choice), _) => choice,
            (None, Rerank::On) => true,
            (None, Rerank::Off) => false,
            (None, Rerank::Auto) => self
                .embedder_facts(deadline)
                .await
                .is_some_and(|f| f.reranker),
        }
    }

    /// The threshold a search uses: the request's (a negative one: none), else
    /// --score-threshold, else the embedder's calibrated one (asked of the embedder once).
    pub(crate) async fn threshold(
        &self,
        requested: Option<f32>,
        deadline: Deadline,
    ) -> Option<f32> {
        let chosen = match requested.or(self.args.score_threshold) {
            Some(t) => Some(t),
            None => self
                .embedder_facts(deadline)
                .await
                .and_then(|f| f.threshold),
        };
        chosen.filter(|t| *t >= 0.0)
    }

    /// Rewrites a follow-up into a standalone question with the generator (greedy, short);
    /// the question itself when the model gives nothing usable.
    async fn standalone_question(
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
        let response = self
            .downstream
            .generator
            .clone()
            .generate(deadline.request(GenerateRequest {
                input: Some(generate_request::Input::Chat(Chat {
                    messages: vec![ChatMessage {
                        role: Role::User as i32,
                        content: prompt,
                    }],
                })),
                sampling: Some(SamplingParams {
                    temperature: Some(0.0),
                    max_new_tokens: Some(64),
                    ..Default::default()
                }),
                adapter: String::new(),
            }))
            .await
            .map_err(OrchestratorError::downstream("generator"))?
            .into_inner();
        Ok(clean_rewrite(&response.text).unwrap_or_else(|| question.to_owned()))
    }

    /// Merges the retrieved passages and keeps, in rank order, those whose tokens (as the
    /// prompt shows them, counted by the generator) fit the budget; with the tokens used.
    async fn fit_passages(
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
            self.args.context_tokens,
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

    /// Answers one question, sending events on `events`. A client that goes away stops the
    /// work at once (its downstream calls are dropped, which cancels them); that is logged
    /// as CANCELLED, not as an error.
    pub async fn ask(&self, request: AskRequest, deadline: Deadline, events: Events) {
        self.ask_reranked(request, None, deadline, events).await
    }

    /// [`Self::ask`], reranking as `rerank` says (unset: as --rerank says).
    pub(crate) async fn ask_reranked(
        &self,
        request: AskRequest,
        rerank: Option<bool>,
        deadline: Deadline,
        events: Events,
    ) {
        let work = deadline.run(
            "before the answer was complete",
            self.ask_inner(request, rerank, deadline, &events),
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

    /// The passages as the prompt shows them (with their source and heading path, which
    /// often name what a short chunk is about), the question's coverage by them, and whether
    /// zhiku refuses from the evidence: no passage left, or (`--abstention evidence`)
    /// coverage under `min_coverage` (a request's, checked by [`check_min_coverage`], else
    /// --min-coverage). Counting is CPU work in proportion to the passages and the question:
    /// off the async threads.
    pub(crate) async fn evidence(
        &self,
        question: &str,
        citations: &[Citation],
        min_coverage: Option<f64>,
    ) -> Result<(Vec<String>, f64, bool), OrchestratorError> {
        let min_coverage = min_coverage.unwrap_or(self.args.min_coverage);
        if citations.is_empty() {
            return Ok((Vec::new(), 0.0, true));
        }
        let rendered: Vec<String> = citations.iter().map(context::render).collect();
        let asked = question.to_owned();
        let (rendered, coverage) = tokio::task::spawn_blocking(move || {
            let texts: Vec<&str> = rendered.iter().map(String::as_str).collect();
            let coverage = question_coverage(&asked, &texts);
            (rendered, coverage)
        })
        .await
        .map_err(|e| OrchestratorError::Internal(format!("the scoring thread failed: {e}")))?;
        let refuse = self.args.abstention == Abstention::Evidence && coverage < min_coverage;
        if refuse {
            tracing::info!(
                coverage,
                min_coverage,
                "the passages cover too little of the question: refused without generating"
            );
        }
        Ok((rendered, coverage, refuse))
    }

    async fn ask_inner(
        &self,
        request: AskRequest,
        rerank: Option<bool>,
        deadline: Deadline,
        events: &Events,
    ) -> Result<(), OrchestratorError> {
        let started = Instant::now();
        // Sizes are checked before anything is copied: a UTF-8 character is at most 4 bytes.
        let max_chars = self.args.max_question_chars;
        let too_long = || {
            OrchestratorError::Validation(format!(
                "`question` is longer than {max_chars} characters (--max-question-chars)"
            ))
        };
        if request.question.len() > max_chars.saturating_mul(4) {
            return Err(too_long());
        }
        let kept = self.last_turns(&request.history);
        let history_bytes: usize = kept.iter().map(|t| t.question.len() + t.answer.len()).sum();
        if history_bytes > self.args.max_history_bytes {
            return Err(OrchestratorError::Validation(format!(
                "the last {} turns of `history` are {history_bytes} bytes; at most {} are \
                 allowed (--max-history-bytes, of the turns --max-history-turns keeps): send \
                 fewer or shorter turns",
                kept.len(),
                self.args.max_history_bytes
            )));
        }
        let question = request.question.trim().to_owned();
        if question.is_empty() {
            return Err(OrchestratorError::Validation("`question` is empty".into()));
        }
        if question.chars().count() > max_chars {
            return Err(too_long());
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
        check_min_coverage("min_coverage", request.min_coverage)?;

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

        let rewrite = request
            .rewrite_follow_up
            .unwrap_or(self.args.rewrite_follow_ups);
        let search_question = if rewrite && !request.history.is_empty() {
            self.standalone_question(&request.history, &question, deadline)
                .await?
        } else {
            question.clone()
        };
        let sampling = request.sampling.clone().unwrap_or(SamplingParams {
            max_new_tokens: Some(self.args.max_new_tokens),
            ..Default::default()
        });
        let max_new_tokens = sampling.max_new_tokens.unwrap_or(self.args.max_new_tokens);

        let Retrieved {
            citations,
            embed_ms,
            search_ms,
            rerank_ms,
        } = self
            .retrieve(
                &request.knowledge_base,
                &search_question,
                top_k,
                request.score_threshold,
                request.filter.clone(),
                mode,
                rerank,
                deadline,
            )
            .await?;
        let (citations, context_tokens) = self
            .fit_passages(citations, request.context_tokens, max_new_tokens, deadline)
            .await?;
        let (rendered, coverage, refuse) = self
            .evidence(&search_question, &citations, request.min_coverage)
            .await?;
        // Labelled by knowledge bases that exist (described above), so the label set stays
        // as small as their list.
        let metrics = zhiku_runtime::metrics::metrics();
        let kb = request.knowledge_base.as_str();
        metrics
            .retrieval_passages
            .with_label_values(&[kb])
            .inc_by(citations.len() as u64);
        metrics
            .retrieval_asks
            .with_label_values(&[kb, if refuse { "true" } else { "false" }])
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
            rerank_ms,
            ..Default::default()
        };
        if refuse {
            timings.total_ms = ms(started);
            return send(
                events,
                ask_event::Event::Answer(Answer {
                    text: REFUSAL.into(),
                    refused: true,
                    citations,
                    timings: Some(timings),
                    support: 1.0,
                    grounded: true,
                    context_tokens,
                    search_question,
                    coverage,
                    ..Default::default()
                }),
            )
            .await;
        }

        let mut passages: Vec<(u32, &str)> = citations
            .iter()
            .zip(&rendered)
            .map(|(c, r)| (c.number, r.as_str()))
            .collect();
        if self.args.passage_order == PassageOrder::BestLast {
            passages.reverse();
        }
        let prompt = self.template.render_numbered(&passages, &search_question);
        let chat = self
            .fit_history(&request.history, &prompt, max_new_tokens, deadline)
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
                    // Scoring is CPU work in proportion to the answer and its passages:
                    // off the async threads.
                    let texts: Vec<String> = citations.iter().map(|c| c.text.clone()).collect();
                    let answer = done.text.clone();
                    let (support, grounded) = tokio::task::spawn_blocking(move || {
                        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                        grounding(&answer, &texts)
                    })
                    .await
                    .map_err(|e| {
                        OrchestratorError::Internal(format!("the scoring thread failed: {e}"))
                    })?;
                    let abstained = abstains(support, self.args.abstain_below);
                    if abstained {
                        tracing::info!(
                            support,
                            draft = %done.text,
                            "grounded abstention: the answer was replaced by the refusal"
                        );
                    }
                    return send(
                        events,
                        ask_event::Event::Answer(Answer {
                            text: if abstained { REFUSAL.into() } else { done.text },
                            refused: abstained,
                            citations,
                            timings: Some(timings),
                            finish_reason: done.finish_reason,
                            prompt_tokens: done.prompt_tokens,
                            generated_tokens: done.generated_tokens,
                            support,
                            grounded,
                            context_tokens,
                            search_question,
                            coverage,
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

    /// The turns of `history` an Ask may use: the last --max-history-turns (the size check
    /// and the prompt see the same ones).
    fn last_turns<'h>(&self, history: &'h [zhiku_proto::v1::Turn]) -> &'h [zhiku_proto::v1::Turn] {
        &history[history.len().saturating_sub(self.args.max_history_turns)..]
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
        let history = self.last_turns(history);
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

async fn send(events: &Events, event: ask_event::Event) -> Result<(), OrchestratorError> {
    events
        .send(Ok(AskEvent { event: Some(event) }))
        .await
        .map_err(|_| OrchestratorError::Cancelled)
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

    #[test]
    fn the_reranker_reorders_scores_and_cuts_to_top_k() {
        let citations: Vec<Citation> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, t)| Citation {
                number: i as u32 + 1,
                text: t.to_string(),
                ..Default::default()
            })
            .collect();
        let kept = apply_rerank(citations.clone(), &[2, 0, 1], &[0.5, 0.1, 0.9], 2).unwrap();
        let shown: Vec<(u32, &str, Option<f32>)> = kept
            .iter()
            .map(|c| (c.number, c.text.as_str(), c.rerank_score))
            .collect();
        assert_eq!(shown, [(1, "c", Some(0.9)), (2, "a", Some(0.5))]);
        // An answer that does not cover the passages once each is an error, not a panic.
        for order in [&[0, 1][..], &[0, 0, 1], &[0, 1, 7]] {
            assert!(apply_rerank(citations.clone(), order, &[0.0; 3], 3).is_err());
        }
    }

    #[test]
    fn thresholds_are_calibrated_per_embedder() {
        assert_eq!(
            calibrated_threshold("models/multilingual-e5-small"),
            Some(0.84)
        );
        assert_eq!(
            calibrated_threshold("sentence-transformers/all-MiniLM-L6-v2"),
            None
        );
    }

    #[test]
    fn grounded_and_ungrounded_answers() {
        let passages =
            ["ChatGLM-6B 在 INT4 量化级别下最低只需 6GB 显存，可在消费级显卡上本地部署。"];
        let (s, grounded) = grounding("INT4 量化级别下最低只需 6GB 显存。", &passages);
        assert!(grounded && s >= 0.9, "{s}");
        let (s, grounded) = grounding(
            "需要在 Kubernetes 集群里配置三个副本和负载均衡器。",
            &passages,
        );
        assert!(!grounded && s < 0.2, "{s}");
        assert_eq!(
            grounding("根据已知信息无法回答该问题。", &passages),
            (1.0, true)
        );
    }

    #[test]
    fn only_answers_under_the_level_abstain() {
        let passages =
            ["ChatGLM-6B 在 INT4 量化级别下最低只需 6GB 显存，可在消费级显卡上本地部署。"];
        let (invented, _) = grounding(
            "需要在 Kubernetes 集群里配置三个副本和负载均衡器。",
            &passages,
        );
        let (right, _) = grounding("INT4 量化级别下最低只需 6GB 显存。", &passages);
        let (refusal, _) = grounding("根据已知信息无法回答该问题。", &passages);
        assert!(abstains(invented, 0.25));
        assert!(!abstains(right, 0.25));
        assert!(!abstains(refusal, 0.25));
        assert!(!abstains(invented, 0.0), "0: never");
    }

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
