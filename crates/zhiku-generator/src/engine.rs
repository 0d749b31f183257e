//! The generation engine: one worker thread owns the model and its KV cache and serves
//! requests one at a time, in arrival order (fair FIFO), from a bounded queue.
//!
//! A request's events go back on a channel. When the client goes away (cancelled call,
//! dropped stream) the channel closes and the worker stops that request at the next token,
//! freeing the KV cache for the next request at once. Deadlines are checked every token.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::decode_stream::{DecodeStream, StopMatcher, StopOutcome};
use crate::error::GeneratorError;
use crate::models::LoadedModel;
use crate::sampling::SamplingConfig;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Eos,
    Length,
    StopString,
}

/// The outcome of a finished request.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

#[derive(Debug)]
pub enum Event {
    /// New text; never splits a character, never contains (part of) a stop string.
    Chunk {
        text: String,
        generated_tokens: usize,
    },
    Done(Completion),
    Failed(GeneratorError),
}

pub struct Job {
    pub prompt: Vec<u32>,
    pub sampling: SamplingConfig,
    pub adapter: Option<String>,
    pub deadline: Option<Instant>,
    pub events: mpsc::UnboundedSender<Event>,
}

pub struct GenerationEngine {
    queue: mpsc::Sender<Job>,
    max_queued: usize,
}

impl GenerationEngine {
    /// Starts the worker thread that owns `model`. At most `max_queued` requests wait.
    pub fn start(model: LoadedModel, max_queued: usize) -> (Self, std::sync::Arc<EngineShared>) {
        let max_queued = max_queued.max(1);
        let (queue, rx) = mpsc::channel(max_queued);
        let LoadedModel {
            model,
            tokenizer,
            template,
            info,
        } = model;
        let shared = std::sync::Arc::new(EngineShared {
            tokenizer,
            template,
            info,
            stats: EngineStats::default(),
        });
        let worker_shared = shared.clone();
        std::thread::Builder::new()
            .name("zhiku-generate".into())
            .spawn(move || worker(model, worker_shared, rx))
            .expect("spawning the generation thread");
        (Self { queue, max_queued }, shared)
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), GeneratorError> {
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => GeneratorError::Overloaded(self.max_queued),
            mpsc::error::TrySendError::Closed(_) => GeneratorError::ShuttingDown,
        })
    }
}

/// What the handlers need besides the model itself.
pub struct EngineShared {
    pub tokenizer: crate::tokenizer::GenTokenizer,
    pub template: crate::template::ChatTemplate,
    pub info: crate::models::ModelInfo,
    pub stats: EngineStats,
}

/// Counters, for tests and logs.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub completed: AtomicUsize,
    pub cancelled: AtomicUsize,
    pub generated_tokens: AtomicUsize,
}

fn worker(
    mut model: Box<dyn crate::models::CausalLm>,
    shared: std::sync::Arc<EngineShared>,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(job) = rx.blocking_recv() {
        if job.events.is_closed() {
            continue; // cancelled while it waited
        }
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| run(model.as_mut(), &shared, &job)))
                .unwrap_or_else(|_| Err(GeneratorError::Inference("the model panicked".into())));
        model.reset();
        match outcome {
            Ok(completion) => {
                shared.stats.completed.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Done(completion));
            }
            Err(GeneratorError::Cancelled) => {
                shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!("request cancelled by the client; generation stopped, slot freed");
            }
            Err(e) => {
                if let GeneratorError::DeadlineExceeded { generated } = &e {
                    tracing::info!(generated, "the deadline passed; generation stopped");
                }
                let _ = job.events.send(Event::Failed(e));
            }
        }
    }
}

fn run(
    model: &mut dyn crate::models::CausalLm,
    shared: &EngineShared,
    job: &Job,
) -> Result<Completion, GeneratorError> {
    let tokenizer = &shared.tokenizer;
    let sampling = &job.sampling;
    model.set_adapter(job.adapter.as_deref())?;
    let started = Instant::now();
    let mut logits = model.forward(&job.prompt, 0)?;
    let prefill_ms = started.elapsed().as_secs_f64() * 1e3;
    let decode_started = Instant::now();

    let mut processor = sampling.logits_processor();
    let mut generated: Vec<u32> = Vec::new();
    let mut decoder = DecodeStream::new();
    let mut stops = StopMatcher::new(sampling.stop.clone());
    let send = |text: String, n: usize| -> Result<(), GeneratorError> {
        if text.is_empty() {
            return Ok(());
        }
        job.events
            .send(Event::Chunk {
                text,
                generated_tokens: n,
            })
            .map_err(|_| GeneratorError::Cancelled)
    };

    let finish = loop {
        if job.events.is_closed() {
            return Err(GeneratorError::Cancelled);
        }
        if job.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(GeneratorError::DeadlineExceeded {
                generated: generated.len(),
            });
        }
        let logits_for_sampling = if sampling.repetition_penalty != 1.0 && !generated.is_empty() {
            let start = generated.len().saturating_sub(sampling.repeat_last_n);
            candle_transformers::utils::apply_repeat_penalty(
                &logits,
                sampling.repetition_penalty,
                &generated[start..],
            )?
        } else {
            logits.clone()
        };
        let next = processor.sample(&logits_for_sampling)?;
        if tokenizer.eos_ids.contains(&next) {
            break Finish::Eos;
        }
        generated.push(next);
        shared
            .stats
            .generated_tokens
            .fetch_add(1, Ordering::Relaxed);
        if let Some(piece) = decoder.push(tokenizer, next)? {
            match stops.push(&piece) {
                StopOutcome::Continue(text) => send(text, generated.len())?,
                StopOutcome::Stopped(text) => {
                    send(text, generated.len())?;
                    break Finish::StopString;
                }
            }
        }
        if generated.len() >= sampling.max_new_tokens {
            break Finish::Length;
        }
        let pos = job.prompt.len() + generated.len() - 1;
        logits = model.forward(&[next], pos)?;
    };

    let mut finish = finish;
    if finish != Finish::StopString {
        if let Some(rest) = decoder.finish(tokenizer)? {
            match stops.push(&rest) {
                StopOutcome::Continue(text) => send(text, generated.len())?,
                StopOutcome::Stopped(text) => {
                    send(text, generated.len())?;
                    finish = Finish::StopString;
                }
            }
        }
        if finish != Finish::StopString {
            send(stops.flush(), generated.len())?;
        }
    }
    Ok(Completion {
        text: stops.text().to_owned(),
        finish,
        prompt_tokens: job.prompt.len(),
        generated_tokens: generated.len(),
        prefill_ms,
        decode_ms: decode_started.elapsed().as_secs_f64() * 1e3,
    })
}
