//! One request's generation state, apart from the model: its sampler (own seed, so the
//! output does not depend on what else shares a batch), incremental decoding, stop strings,
//! cancellation and deadline.

use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::Tensor;
use candle_transformers::generation::LogitsProcessor;

use super::{Completion, EngineShared, Event, Finish, Job};
use crate::decode_stream::{DecodeStream, StopMatcher, StopOutcome};
use crate::error::GeneratorError;

/// What a sequence does after a sampled token.
pub enum Next {
    /// Feed this token and go on.
    Feed(u32),
    /// The answer is complete.
    Done(Completion),
}

pub struct Sequence {
    pub job: Job,
    processor: LogitsProcessor,
    pub generated: Vec<u32>,
    decoder: DecodeStream,
    stops: StopMatcher,
    started: Instant,
    first_logits: Option<Instant>,
    pub cached_prompt_tokens: usize,
}

impl Sequence {
    pub fn new(job: Job) -> Self {
        let processor = job.sampling.logits_processor();
        let stops = StopMatcher::new(job.sampling.stop.clone());
        Self {
            job,
            processor,
            generated: Vec::new(),
            decoder: DecodeStream::new(),
            stops,
            started: Instant::now(),
            first_logits: None,
            cached_prompt_tokens: 0,
        }
    }

    /// Cancelled by the client, or past its deadline.
    pub fn check_alive(&self) -> Result<(), GeneratorError> {
        if self.job.events.is_closed() {
            return Err(GeneratorError::Cancelled);
        }
        if self.job.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(GeneratorError::DeadlineExceeded {
                generated: self.generated.len(),
            });
        }
        Ok(())
    }

    fn send(&self, text: String) -> Result<(), GeneratorError> {
        if text.is_empty() {
            return Ok(());
        }
        self.job
            .events
            .send(Event::Chunk {
                text,
                generated_tokens: self.generated.len(),
            })
            .map_err(|_| GeneratorError::Cancelled)
    }

    /// Picks the next token from `logits` [vocab] and streams its text.
    pub fn on_logits(
        &mut self,
        logits: &Tensor,
        shared: &EngineShared,
    ) -> Result<Next, GeneratorError> {
        if self.first_logits.is_none() {
            self.first_logits = Some(Instant::now());
        }
        self.check_alive()?;
        let sampling = &self.job.sampling;
        let next = if sampling.repetition_penalty != 1.0 && !self.generated.is_empty() {
            let start = self.generated.len().saturating_sub(sampling.repeat_last_n);
            let penalised = candle_transformers::utils::apply_repeat_penalty(
                logits,
                sampling.repetition_penalty,
                &self.generated[start..],
            )?;
            self.processor.sample(&penalised)?
        } else {
            self.processor.sample(logits)?
        };
        let tokenizer = &shared.tokenizer;
        if tokenizer.eos_ids.contains(&next) {
            return self.finish(Finish::Eos, shared).map(Next::Done);
        }
        self.generated.push(next);
        shared
            .stats
            .generated_tokens
            .fetch_add(1, Ordering::Relaxed);
        if let Some(piece) = self.decoder.push(tokenizer, next)? {
            match self.stops.push(&piece) {
                StopOutcome::Continue(text) => self.send(text)?,
                StopOutcome::Stopped(text) => {
                    self.send(text)?;
                    return self.complete(Finish::StopString).map(Next::Done);
                }
            }
        }
        if self.generated.len() >= self.job.sampling.max_new_tokens {
            return self.finish(Finish::Length, shared).map(Next::Done);
        }
        Ok(Next::Feed(next))
    }

    /// Flushes what the decoder and the stop matcher still hold.
    fn finish(
        &mut self,
        finish: Finish,
        shared: &EngineShared,
    ) -> Result<Completion, GeneratorError> {
        if let Some(rest) = self.decoder.finish(&shared.tokenizer)? {
            match self.stops.push(&rest) {
                StopOutcome::Continue(text) => self.send(text)?,
                StopOutcome::Stopped(text) => {
                    self.send(text)?;
                    return self.complete(Finish::StopString);
                }
            }
        }
        let rest = self.stops.flush();
        self.send(rest)?;
        self.complete(finish)
    }

    fn complete(&self, finish: Finish) -> Result<Completion, GeneratorError> {
        let first = self.first_logits.unwrap_or(self.started);
        Ok(Completion {
            text: self.stops.text().to_owned(),
            finish,
            prompt_tokens: self.job.prompt.len(),
            generated_tokens: self.generated.len(),
            cached_prompt_tokens: self.cached_prompt_tokens,
            prefill_ms: first.duration_since(self.started).as_secs_f64() * 1e3,
            decode_ms: first.elapsed().as_secs_f64() * 1e3,
        })
    }
}
