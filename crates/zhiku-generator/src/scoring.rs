//! NextTokenLogprobs apart from gRPC: the log-probabilities of candidate next tokens after a
//! batch of prompts, without generating. Each prompt is a job of the same engine queue as
//! Generate's, one forward long ([`crate::sampling::SamplingConfig::score_candidates`]), so
//! it is batched, bounded and cancelled as generation is. The first prompt runs first and
//! the rest after it: a prefix they share with it is then read from the prefix cache.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use zhiku_proto::v1::{
    NextTokenLogprobsRequest, NextTokenLogprobsResponse, PromptLogprobs, scored_prompt,
};

use crate::GeneratorState;
use crate::engine::{Completion, Event, Job};
use crate::error::GeneratorError;
use crate::sampling::SamplingConfig;

/// Most prompts one request scores.
pub const MAX_SCORED_PROMPTS: usize = 32;
/// Most candidates one request scores.
pub const MAX_CANDIDATES: usize = 16;
/// Longest candidate, in bytes.
const MAX_CANDIDATE_BYTES: usize = 256;

/// A request checked and tokenized: the jobs' prompts and the candidates' token ids.
pub struct PreparedScoring {
    prompts: Vec<Vec<u32>>,
    candidates: Vec<u32>,
    adapter: Option<String>,
}

impl GeneratorState {
    /// Checks and tokenizes a NextTokenLogprobs request (blocking: CPU work).
    pub fn prepare_scoring(
        &self,
        request: &NextTokenLogprobsRequest,
        max_queued: usize,
    ) -> Result<PreparedScoring, GeneratorError> {
        let invalid = |m: String| Err(GeneratorError::Validation(m));
        let n = request.prompts.len();
        let most = MAX_SCORED_PROMPTS.min(max_queued.max(1));
        if n == 0 || n > most {
            return invalid(format!("`prompts`: 1 to {most} prompts, not {n}"));
        }
        let c = request.candidates.len();
        if c == 0 || c > MAX_CANDIDATES {
            return invalid(format!("`candidates`: 1 to {MAX_CANDIDATES}, not {c}"));
        }
        let mut candidates = Vec::with_capacity(c);
        for (i, text) in request.candidates.iter().enumerate() {
            if text.len() > MAX_CANDIDATE_BYTES {
                return invalid(format!(
                    "candidates[{i}] is over {MAX_CANDIDATE_BYTES} bytes"
                ));
            }
            match self.shared.tokenizer.encode_plain(text)?.first() {
                Some(&id) => candidates.push(id),
                None => return invalid(format!("candidates[{i}] {text:?} encodes to no token")),
            }
        }
        let mut prompts = Vec::with_capacity(n);
        for (i, prompt) in request.prompts.iter().enumerate() {
            let (text, chat) = match &prompt.input {
                Some(scored_prompt::Input::Prompt(p)) => (Some(p.as_str()), None),
                Some(scored_prompt::Input::Chat(c)) => (None, Some(c)),
                None => (None, None),
            };
            let ids = self.encode_request(text, chat).map_err(|e| match e {
                GeneratorError::Validation(m) => {
                    GeneratorError::Validation(format!("prompts[{i}]: {m}"))
                }
                other => other,
            })?;
            prompts.push(ids);
        }
        let adapter = self.adapter(&request.adapter)?;
        Ok(PreparedScoring {
            prompts,
            candidates,
            adapter,
        })
    }

    /// Queues one prompt's forward; its completion comes on the returned channel.
    fn submit_scoring(
        &self,
        prompt: Vec<u32>,
        prepared: &PreparedScoring,
        deadline: Option<Instant>,
    ) -> Result<mpsc::UnboundedReceiver<Event>, GeneratorError> {
        let (events, rx) = mpsc::unbounded_channel();
        self.engine.submit(Job {
            prompt,
            sampling: SamplingConfig {
                max_new_tokens: 1,
                repetition_penalty: 1.0,
                score_candidates: prepared.candidates.clone(),
                ..SamplingConfig::default()
            },
            adapter: prepared.adapter.clone(),
            deadline,
            events,
        })?;
        Ok(rx)
    }
}

/// The completion of one job (its text chunks skipped), or its failure.
pub(crate) async fn completion(
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Result<Completion, GeneratorError> {
    while let Some(event) = rx.recv().await {
        match event {
            Event::Chunk { .. } => {}
            Event::Done(c) => return Ok(c),
            Event::Failed(e) => return Err(e),
        }
    }
    Err(GeneratorError::ShuttingDown)
}

fn result(c: Completion) -> PromptLogprobs {
    PromptLogprobs {
        logprobs: c.candidate_logprobs,
        prompt_tokens: c.prompt_tokens as u32,
        cached_prompt_tokens: c.cached_prompt_tokens as u32,
    }
}

/// Scores every prompt of `prepared`: the first alone, then the rest together. Dropping
/// the future drops the receivers, which cancels the jobs at the engine's next step.
pub async fn score(
    state: &Arc<GeneratorState>,
    prepared: PreparedScoring,
    deadline: Option<Instant>,
    started: Instant,
) -> Result<NextTokenLogprobsResponse, GeneratorError> {
    let mut prompts = prepared.prompts.iter().cloned();
    let mut results = Vec::with_capacity(prepared.prompts.len());
    if let Some(first) = prompts.next() {
        let rx = state.submit_scoring(first, &prepared, deadline)?;
        results.push(result(completion(rx).await?));
    }
    let pending = prompts
        .map(|p| state.submit_scoring(p, &prepared, deadline))
        .collect::<Result<Vec<_>, _>>()?;
    for c in futures::future::try_join_all(pending.into_iter().map(completion)).await? {
        results.push(result(c));
    }
    Ok(NextTokenLogprobsResponse {
        results,
        candidate_tokens: prepared.candidates,
        model: state.shared.info.model_id.clone(),
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}
