//! Ask's first stages: embed the question, search, drop the hits under the threshold and
//! (with a reranker) rerank the candidates with the embedder's cross-encoder.

use std::time::Instant;

use zhiku_proto::v1::{
    Citation, EmbedKind, EmbedRequest, EmbedderInfoRequest, Filter, RerankRequest, SearchMode,
    SearchRequest,
};

use crate::config::Rerank;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::{EmbedderFacts, Orchestrator};

use super::ms;

/// Default thresholds (cosine) by embedder, calibrated with `zhiku eval --retrieval-only
/// --sweep threshold=…` on every eval set (docs/src/benchmarks/eval.md, "Thresholds for e5-small"): the model id holds the key.
/// EmbeddingGemma's 0.45 keeps every gold passage of the dev half of eval/llm-docs-zh (0.55
/// loses one): its cosines run far lower than e5-small's ("EmbeddingGemma-300M against
/// e5-small").
pub const CALIBRATED_THRESHOLDS: &[(&str, f32)] =
    &[("multilingual-e5-small", 0.84), ("embeddinggemma", 0.45)];

/// The calibrated default threshold of the embedder named `model_id`, if it has one.
pub fn calibrated_threshold(model_id: &str) -> Option<f32> {
    CALIBRATED_THRESHOLDS
        .iter()
        .find(|(key, _)| model_id.contains(key))
        .map(|(_, t)| *t)
}

/// The most candidates a search returns (the retriever's limit).
const MAX_CANDIDATES: u32 = 100;

/// Passages searched for when a request asks for 0.
pub(crate) fn effective_top_k(top_k: u32) -> u32 {
    if top_k == 0 { 5 } else { top_k }
}

/// What keyword search (BM25) looks for: the question, then the names of the settings it
/// names in Chinese (`学习率` → `lr learning_rate`): documents write `learning_rate: 1.0e-4`
/// and `--lr 2e-5`, and no line of theirs says 学习率, so the passage that holds the figure
/// shared no word with the question. The dense search embeds the question as asked.
pub(crate) fn keyword_query(question: &str) -> String {
    let keywords = zhiku_text::terms::setting_keywords(question);
    if keywords.is_empty() {
        question.to_owned()
    } else {
        format!("{question} {}", keywords.join(" "))
    }
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

/// What one retrieval searches for, as a request (or an eval setting) asks.
pub(crate) struct Search<'a> {
    pub knowledge_base: &'a str,
    pub question: &'a str,
    pub top_k: u32,
    /// Unset: --score-threshold, else the embedder's calibrated one; negative: none.
    pub score_threshold: Option<f32>,
    pub filter: Option<Filter>,
    pub mode: SearchMode,
    /// Unset: as --rerank says.
    pub rerank: Option<bool>,
    /// Hybrid fusion's k; unset: --rrf-k.
    pub rrf_k: Option<u32>,
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
    /// hybrid modes it is checked on each hit's cosine (the retriever computes that of a
    /// passage BM25 finds beyond the dense candidates), so a hit without one does not pass.
    /// When it reranks (`rerank`, else --rerank), it searches for --rerank-candidates,
    /// thresholds them the same way, has the embedder's cross-encoder score those left
    /// against the question and keeps the best `top_k` in the reranker's order.
    pub(crate) async fn retrieve(
        &self,
        search: Search<'_>,
        deadline: Deadline,
    ) -> Result<Retrieved, OrchestratorError> {
        let Search {
            knowledge_base,
            question,
            top_k,
            score_threshold,
            filter,
            mode,
            rerank,
            rrf_k,
        } = search;
        let score_threshold = self.threshold(score_threshold, deadline).await;
        let rerank = self.reranks(rerank, deadline).await;
        let candidates = if rerank {
            top_k
                .max(self.args.ask.rerank_candidates)
                .min(MAX_CANDIDATES)
        } else {
            top_k
        };
        let embed_started = Instant::now();
        let vector = if mode == SearchMode::Sparse {
            Vec::new()
        } else {
            self.embed_query(question, deadline).await?
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
                    keyword_query(question)
                },
                top_k: candidates,
                score_threshold,
                filter,
                mode: mode as i32,
                with_vectors: false,
                rrf_k: Some(rrf_k.unwrap_or(self.args.ask.rrf_k)),
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
                    context: passage.context,
                    char_start: passage.char_start,
                    char_end: passage.char_end,
                    last_chunk_index: passage.chunk_index,
                    rerank_score: None,
                    page: crate::ingest::page_of(&passage.metadata),
                    relevance: None,
                    anchors: None,
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

    /// The embedding of one query text.
    pub(crate) async fn embed_query(
        &self,
        text: &str,
        deadline: Deadline,
    ) -> Result<Vec<f32>, OrchestratorError> {
        self.downstream
            .embedder
            .clone()
            .embed(deadline.request(EmbedRequest {
                texts: vec![text.to_owned()],
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
            .ok_or_else(|| OrchestratorError::Internal("the embedder returned no vector".into()))
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
        match (requested, self.args.ask.rerank) {
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
        let chosen = match requested.or(self.args.ask.score_threshold) {
            Some(t) => Some(t),
            None => self
                .embedder_facts(deadline)
                .await
                .and_then(|f| f.threshold),
        };
        chosen.filter(|t| *t >= 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reranker_reorders_scores_and_cuts_to_top_k() {
        let citations = crate::context::numbered(&["a", "b", "c"]);
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
    fn keyword_search_adds_the_names_of_settings_asked_in_chinese() {
        assert_eq!(
            keyword_query("配置里学习率是多少？"),
            "配置里学习率是多少？ lr learning_rate"
        );
        assert_eq!(keyword_query("要多少显存？"), "要多少显存？");
    }

    #[test]
    fn thresholds_are_calibrated_per_embedder() {
        assert_eq!(
            calibrated_threshold("models/multilingual-e5-small"),
            Some(0.84)
        );
        assert_eq!(
            calibrated_threshold("models/embeddinggemma-300m"),
            Some(0.45)
        );
        assert_eq!(
            calibrated_threshold("sentence-transformers/all-MiniLM-L6-v2"),
            None
        );
    }
}
