//! One request's generation state, apart from the model: its sampling (own seeded
//! generator, so the output does not depend on what else shares a batch), incremental
//! decoding, stop strings, cancellation and deadline.

use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::Tensor;
use zhiku_lm::seeded::SplitMix64;

use super::{Completion, EngineStats, Event, Finish, Job};
use crate::decode_stream::{DecodeStream, StopMatcher, StopOutcome};
use crate::error::GeneratorError;
use crate::sampling::{self, DeviceRow, Filter, Pick};
use zhiku_lm::tokenizer::GenTokenizer;

/// A sequence's row of a step's logits, as far as the device took it.
pub enum Row<'a> {
    /// With the repetition penalty applied ([`crate::sampling::pick_on_device`]); the pick
    /// happens on the host.
    Penalised(&'a Tensor),
    /// The pick (greedy or drawn), made on the device.
    Picked(u32),
}

/// What a sequence does after a sampled token.
pub enum Next {
    /// Feed this token and go on.
    Feed(u32),
    /// The answer is complete.
    Done(Completion),
}

pub struct Sequence {
    pub job: Job,
    /// Set when sampling (temperature > 0).
    filter: Option<Filter>,
    /// One uniform number per sampled token comes from here.
    rng: SplitMix64,
    /// The number drawn for the pick under way ([`Sequence::device_row`]).
    u: Option<f32>,
    pub generated: Vec<u32>,
    decoder: DecodeStream,
    stops: StopMatcher,
    started: Instant,
    first_logits: Option<Instant>,
    pub cached_prompt_tokens: usize,
}

impl Sequence {
    pub fn new(job: Job) -> Self {
        let stops = StopMatcher::new(job.sampling.stop.clone());
        Self {
            filter: job.sampling.filter(),
            rng: SplitMix64(job.sampling.seed),
            u: None,
            job,
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

    /// Picks the next token from `logits` [vocab] as the scheduler does (penalty and
    /// greedy pick through [`sampling::pick_on_device`], a draw on the host) and streams
    /// its text.
    #[cfg(test)]
    fn on_logits(
        &mut self,
        logits: &Tensor,
        tokenizer: &GenTokenizer,
        stats: &EngineStats,
    ) -> Result<Next, GeneratorError> {
        self.draw();
        let row = self.device_row();
        let (penalised, picks) = sampling::pick_on_device(&logits.unsqueeze(0)?, &[row], None)?;
        match (row.pick, picks) {
            (Pick::Argmax, Some(p)) => self.on_row(Row::Picked(p[0]), tokenizer, stats),
            _ => self.on_row(Row::Penalised(&penalised.get(0)?), tokenizer, stats),
        }
    }

    /// Draws the uniform number of this step's pick, if it samples: call once per step
    /// before [`Sequence::device_row`], whichever side then picks the token.
    pub fn draw(&mut self) {
        if self.filter.is_some() {
            self.u = Some(sampling::uniform(&mut self.rng));
        }
    }

    /// What the device does to this sequence's logits row before [`Sequence::on_row`]: its
    /// repetition penalty over its recent tokens, and how its token is picked.
    pub fn device_row(&self) -> DeviceRow<'_> {
        let sampling = &self.job.sampling;
        let start = self.generated.len().saturating_sub(sampling.repeat_last_n);
        let pick = match (&self.filter, self.u) {
            _ if !sampling.score_candidates.is_empty() => Pick::None,
            (Some(filter), Some(u)) => Pick::Sample { filter: *filter, u },
            (Some(_), None) => Pick::None,
            (None, _) => Pick::Argmax,
        };
        DeviceRow {
            penalty: sampling.repetition_penalty,
            recent: &self.generated[start..],
            pick,
        }
    }

    /// The host's pick from a penalised row: its argmax, or a draw with this step's number.
    fn pick_on_host(&mut self, logits: &Tensor) -> Result<u32, GeneratorError> {
        // Only the kernel path's rows come here (host memory): on the tensor path the device
        // picks.
        let row = zhiku_lm::transfer::read_back::<f32>(&logits.to_dtype(candle_core::DType::F32)?)?;
        Ok(match &self.filter {
            Some(filter) => {
                let u = match self.u.take() {
                    Some(u) => u,
                    None => sampling::uniform(&mut self.rng),
                };
                sampling::sample_host(&row, filter, u)
            }
            None => sampling::argmax(&row),
        })
    }

    /// Takes the next token from the step's logits row, however far the device took it,
    /// and streams its text.
    pub fn on_row(
        &mut self,
        row: Row<'_>,
        tokenizer: &GenTokenizer,
        stats: &EngineStats,
    ) -> Result<Next, GeneratorError> {
        if self.first_logits.is_none() {
            self.first_logits = Some(Instant::now());
        }
        self.check_alive()?;
        let sampling = &self.job.sampling;
        if !sampling.score_candidates.is_empty() {
            // A scoring sequence has generated nothing, so no penalty touched its row.
            return match row {
                Row::Penalised(l) => self.score(l).map(Next::Done),
                Row::Picked(_) => Err(GeneratorError::Inference(
                    "a scoring sequence needs its logits, not a picked token".into(),
                )),
            };
        }
        let next = match row {
            Row::Picked(token) => {
                self.u = None;
                token
            }
            Row::Penalised(l) => self.pick_on_host(l)?,
        };
        if tokenizer.eos_ids.contains(&next) {
            return self.finish(Finish::Eos, tokenizer).map(Next::Done);
        }
        self.generated.push(next);
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
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
            return self.finish(Finish::Length, tokenizer).map(Next::Done);
        }
        Ok(Next::Feed(next))
    }

    /// A scoring job's end: the log-softmax of `logits` at its candidates, nothing sampled.
    fn score(&mut self, logits: &Tensor) -> Result<Completion, GeneratorError> {
        let logprobs = zhiku_lm::transfer::read_back::<f32>(&candle_nn::ops::log_softmax(
            &logits.to_dtype(candle_core::DType::F32)?,
            0,
        )?)?;
        let candidates = &self.job.sampling.score_candidates;
        let picked = candidates
            .iter()
            .map(|&id| {
                logprobs.get(id as usize).copied().ok_or_else(|| {
                    GeneratorError::Validation(format!(
                        "candidate token {id} is outside the vocabulary of {}",
                        logprobs.len()
                    ))
                })
            })
            .collect::<Result<Vec<f32>, _>>()?;
        let mut completion = self.complete(Finish::Length)?;
        completion.candidate_logprobs = picked;
        Ok(completion)
    }

    /// Flushes what the decoder and the stop matcher still hold.
    fn finish(
        &mut self,
        finish: Finish,
        tokenizer: &GenTokenizer,
    ) -> Result<Completion, GeneratorError> {
        if let Some(rest) = self.decoder.finish(tokenizer)? {
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
            candidate_logprobs: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use candle_core::Device;
    use tokenizers::Tokenizer;
    use tokenizers::models::wordlevel::WordLevel;
    use tokio::sync::mpsc;

    use super::*;
    use crate::sampling::SamplingConfig;

    const WORDS: [&str; 6] = ["<eos>", "a", "b", "c", "STOP", "<unk>"];
    const EOS: u32 = 0;

    fn tokenizer() -> GenTokenizer {
        let vocab: HashMap<String, u32> = WORDS
            .iter()
            .enumerate()
            .map(|(i, w)| ((*w).to_owned(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("<unk>".into())
            .build()
            .expect("a valid word-level vocabulary");
        GenTokenizer::with_stops(Tokenizer::new(model), vec![EOS])
    }

    fn sequence(
        sampling: SamplingConfig,
        deadline: Option<Instant>,
    ) -> (Sequence, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let job = Job {
            prompt: vec![1, 2],
            sampling,
            adapter: None,
            deadline,
            events,
        };
        (Sequence::new(job), rx)
    }

    /// Logits that make `token` the greedy pick.
    fn pick(token: u32) -> Tensor {
        let mut row = vec![0f32; WORDS.len()];
        row[token as usize] = 5.0;
        Tensor::new(row, &Device::Cpu).expect("a logits row")
    }

    fn chunks(rx: &mut mpsc::UnboundedReceiver<Event>) -> String {
        let mut text = String::new();
        while let Ok(event) = rx.try_recv() {
            if let Event::Chunk { text: t, .. } = event {
                text.push_str(&t);
            }
        }
        text
    }

    fn greedy() -> SamplingConfig {
        SamplingConfig {
            repetition_penalty: 1.0,
            ..SamplingConfig::default()
        }
    }

    #[test]
    fn greedy_tokens_are_fed_back_and_streamed_until_eos() {
        let (tok, stats) = (tokenizer(), EngineStats::default());
        let (mut seq, mut rx) = sequence(greedy(), None);
        for token in [1, 2, 3] {
            match seq.on_logits(&pick(token), &tok, &stats).unwrap() {
                Next::Feed(t) => assert_eq!(t, token),
                Next::Done(_) => panic!("finished before eos"),
            }
        }
        let Next::Done(done) = seq.on_logits(&pick(EOS), &tok, &stats).unwrap() else {
            panic!("eos must finish the sequence")
        };
        assert_eq!(done.finish, Finish::Eos);
        assert_eq!(done.generated_tokens, 3, "eos is not counted as generated");
        assert_eq!(done.prompt_tokens, 2);
        assert_eq!(stats.generated_tokens.load(Ordering::Relaxed), 3);
        let streamed = chunks(&mut rx);
        assert_eq!(
            streamed.split_whitespace().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            done.text, streamed,
            "the completion holds what was streamed"
        );
    }

    #[test]
    fn max_new_tokens_ends_with_length() {
        let (tok, stats) = (tokenizer(), EngineStats::default());
        let sampling = SamplingConfig {
            max_new_tokens: 2,
            ..greedy()
        };
        let (mut seq, _rx) = sequence(sampling, None);
        assert!(matches!(
            seq.on_logits(&pick(1), &tok, &stats).unwrap(),
            Next::Feed(1)
        ));
        let Next::Done(done) = seq.on_logits(&pick(2), &tok, &stats).unwrap() else {
            panic!("the second token reaches max_new_tokens")
        };
        assert_eq!(done.finish, Finish::Length);
        assert_eq!(done.generated_tokens, 2);
    }

    #[test]
    fn a_stop_string_ends_the_answer_and_is_never_streamed() {
        let (tok, stats) = (tokenizer(), EngineStats::default());
        let sampling = SamplingConfig {
            stop: vec!["STOP".into()],
            ..greedy()
        };
        let (mut seq, mut rx) = sequence(sampling, None);
        assert!(matches!(
            seq.on_logits(&pick(1), &tok, &stats).unwrap(),
            Next::Feed(1)
        ));
        let Next::Done(done) = seq.on_logits(&pick(4), &tok, &stats).unwrap() else {
            panic!("the stop string must end the sequence")
        };
        assert_eq!(done.finish, Finish::StopString);
        let streamed = chunks(&mut rx);
        assert!(!streamed.contains("STOP"), "streamed {streamed:?}");
        assert!(!done.text.contains("STOP"), "answer {:?}", done.text);
        assert_eq!(streamed.trim(), "a");
    }

    #[test]
    fn a_client_that_went_away_cancels_at_the_next_token() {
        let (tok, stats) = (tokenizer(), EngineStats::default());
        let (mut seq, rx) = sequence(greedy(), None);
        assert!(seq.check_alive().is_ok());
        drop(rx);
        assert!(matches!(seq.check_alive(), Err(GeneratorError::Cancelled)));
        assert!(matches!(
            seq.on_logits(&pick(1), &tok, &stats),
            Err(GeneratorError::Cancelled)
        ));
        assert!(seq.generated.is_empty(), "nothing generated after cancel");
    }

    #[test]
    fn a_past_deadline_reports_what_was_generated() {
        let (tok, stats) = (tokenizer(), EngineStats::default());
        let deadline = Instant::now() + Duration::from_secs(3600);
        let (mut seq, _rx) = sequence(greedy(), Some(deadline));
        assert!(matches!(
            seq.on_logits(&pick(1), &tok, &stats).unwrap(),
            Next::Feed(1)
        ));
        seq.job.deadline = Some(Instant::now() - Duration::from_millis(1));
        match seq.check_alive() {
            Err(GeneratorError::DeadlineExceeded { generated }) => assert_eq!(generated, 1),
            other => panic!("expected DeadlineExceeded, got {other:?}"),
        }
    }

    #[test]
    fn the_repetition_penalty_turns_the_greedy_pick_away_from_a_repeat() {
        let (tok, stats) = (tokenizer(), EngineStats::default());
        let sampling = SamplingConfig {
            repetition_penalty: 2.0,
            repeat_last_n: 8,
            ..SamplingConfig::default()
        };
        let (mut seq, _rx) = sequence(sampling, None);
        // a and b are close; after `a` was generated, its logit is halved and b wins.
        let close = Tensor::new(vec![0f32, 4.0, 3.0, 0.0, 0.0, 0.0], &Device::Cpu).unwrap();
        assert!(matches!(
            seq.on_logits(&close, &tok, &stats).unwrap(),
            Next::Feed(1)
        ));
        assert!(matches!(
            seq.on_logits(&close, &tok, &stats).unwrap(),
            Next::Feed(2)
        ));
    }
}
