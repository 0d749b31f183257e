//! The generation engine: one worker thread owns the model and the KV cache.
//!
//! Every model ([`zhiku_lm::decoder::BatchModel`]) runs under the [`scheduler`]: continuous
//! batching over a paged KV cache with prefix reuse, long prompts prefilled in chunks
//! between decode steps, a LoRA adapter per sequence. ChatGLM-6B's prompt, read
//! bidirectionally, is prefilled in one step and kept out of the prefix cache.
//!
//! Requests wait in a bounded FIFO queue (full: RESOURCE_EXHAUSTED at once), and
//! a request whose client went away or whose deadline passed is dropped at the next step,
//! its KV blocks freed for the next one.

pub mod block_manager;
mod executor;
pub mod plan;
pub mod scheduler;
mod sequence;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::error::GeneratorError;
use crate::sampling::SamplingConfig;
pub use block_manager::PrefixStats;
pub use scheduler::EngineConfig;
pub use zhiku_lm::kv::KvDtype;
use zhiku_lm::lora::{AdapterSummary, LoraAdapter};
use zhiku_lm::{LoadedModel, ModelKind};

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
    /// Prompt tokens whose K/V came from the prefix cache.
    pub cached_prompt_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// A scoring job's log-probabilities of its candidates as the next token, in their
    /// order; empty for generation.
    pub candidate_logprobs: Vec<f32>,
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

/// An adapter the engine knows: merged into the weights, or kept beside them.
#[derive(Clone)]
pub struct AdapterEntry {
    pub summary: AdapterSummary,
    /// Unmerged adapters of batched models: applied per request.
    pub weights: Option<Arc<LoraAdapter>>,
}

/// Checks an adapter against the model and readies it for the model's layers.
pub type AdapterLoader =
    Box<dyn Fn(LoraAdapter) -> Result<LoraAdapter, GeneratorError> + Send + Sync>;

/// What the handlers need besides the model itself.
pub struct EngineShared {
    pub tokenizer: zhiku_lm::tokenizer::GenTokenizer,
    pub template: zhiku_lm::template::ChatTemplate,
    pub info: zhiku_lm::ModelInfo,
    pub stats: EngineStats,
    /// Adapters by name; LoadAdapter / UnloadAdapter change it while serving.
    pub adapters: RwLock<HashMap<String, AdapterEntry>>,
    /// Checks a new adapter against the model and prepares it (None: the model cannot take
    /// adapters at run time).
    pub adapter_loader: Option<AdapterLoader>,
    /// Tokens every prompt starts with (added when missing).
    pub prompt_prefix: Vec<u32>,
    /// KV cache and batch facts, for Info.
    pub cache: Mutex<CacheReport>,
}

/// The engine's KV cache as Info reports it.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheReport {
    pub capacity_tokens: usize,
    pub used_tokens: usize,
    pub max_batch: usize,
    pub active: usize,
    pub prefix: PrefixStats,
    pub batched: bool,
}

/// Counters, for tests and logs.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub completed: AtomicUsize,
    pub cancelled: AtomicUsize,
    pub generated_tokens: AtomicUsize,
    /// Forward steps run, and sequences summed over them (their ratio is the mean batch).
    pub steps: AtomicUsize,
    pub batched_sequences: AtomicUsize,
    pub max_batch_seen: AtomicUsize,
}

impl EngineShared {
    /// The weights of an unmerged adapter, Ok(None) for the base model or a merged one.
    pub fn resolve_adapter(
        &self,
        name: Option<&str>,
    ) -> Result<Option<Arc<LoraAdapter>>, GeneratorError> {
        let Some(name) = name else { return Ok(None) };
        let adapters = self
            .adapters
            .read()
            .map_err(|_| GeneratorError::Inference("adapter registry poisoned".into()))?;
        match adapters.get(name) {
            Some(e) => Ok(e.weights.clone()),
            None => Err(GeneratorError::UnknownAdapter(name.to_owned())),
        }
    }

    pub fn adapter_summaries(&self) -> Vec<AdapterSummary> {
        let mut list: Vec<AdapterSummary> = self
            .adapters
            .read()
            .map(|a| a.values().map(|e| e.summary.clone()).collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Adds (or replaces) an unmerged adapter while serving.
    pub fn load_adapter(&self, adapter: LoraAdapter) -> Result<AdapterSummary, GeneratorError> {
        let Some(prepare) = &self.adapter_loader else {
            return Err(GeneratorError::UnsupportedModel(format!(
                "{} takes adapters only at start-up (--lora / --merge-lora)",
                self.info.architecture
            )));
        };
        let adapter = prepare(adapter)?;
        let summary = adapter.summary(false);
        let mut adapters = self
            .adapters
            .write()
            .map_err(|_| GeneratorError::Inference("adapter registry poisoned".into()))?;
        if adapters
            .get(&adapter.name)
            .is_some_and(|e| e.summary.merged)
        {
            return Err(GeneratorError::Validation(format!(
                "adapter `{}` is merged into the weights; pick another name",
                adapter.name
            )));
        }
        adapters.insert(
            adapter.name.clone(),
            AdapterEntry {
                summary: summary.clone(),
                weights: Some(Arc::new(adapter)),
            },
        );
        Ok(summary)
    }

    /// Removes an unmerged adapter; requests already running with it finish with it.
    pub fn unload_adapter(&self, name: &str) -> Result<(), GeneratorError> {
        let mut adapters = self
            .adapters
            .write()
            .map_err(|_| GeneratorError::Inference("adapter registry poisoned".into()))?;
        match adapters.get(name) {
            None => Err(GeneratorError::UnknownAdapter(name.to_owned())),
            Some(e) if e.summary.merged => Err(GeneratorError::Validation(format!(
                "adapter `{name}` is merged into the weights and cannot be unloaded"
            ))),
            Some(_) => {
                adapters.remove(name);
                Ok(())
            }
        }
    }
}

impl GenerationEngine {
    /// Starts the worker thread that owns `model`.
    pub fn start(
        model: LoadedModel,
        config: EngineConfig,
    ) -> Result<(Self, Arc<EngineShared>), GeneratorError> {
        let max_queued = config.max_queued.max(1);
        let (queue, rx) = mpsc::channel(max_queued);
        let LoadedModel {
            model,
            tokenizer,
            template,
            info,
            adapter_weights,
        } = model;
        let mut weights: HashMap<String, Arc<LoraAdapter>> = adapter_weights
            .into_iter()
            .map(|a| (a.name.clone(), Arc::new(a)))
            .collect();
        let registry: HashMap<String, AdapterEntry> = info
            .adapters
            .iter()
            .map(|s| {
                let entry = AdapterEntry {
                    summary: s.clone(),
                    weights: weights.remove(&s.name),
                };
                (s.name.clone(), entry)
            })
            .collect();
        let ModelKind::Batched(model) = model;
        let prompt_prefix = model.prompt_prefix().to_vec();
        let m = model.clone();
        let loader: AdapterLoader =
            Box::new(move |a| Ok(zhiku_lm::decoder::prepare_adapter(a, m.as_ref())?));
        let shared = Arc::new(EngineShared {
            tokenizer,
            template,
            info,
            stats: EngineStats::default(),
            adapters: RwLock::new(registry),
            adapter_loader: Some(loader),
            prompt_prefix,
            cache: Mutex::new(CacheReport::default()),
        });
        let worker_shared = shared.clone();
        let scheduler = scheduler::Scheduler::new(model, worker_shared, config)?;
        std::thread::Builder::new()
            .name("zhiku-generate".into())
            .spawn(move || scheduler.run(rx))
            .map_err(|e| GeneratorError::Load(format!("cannot start the engine: {e}")))?;
        Ok((Self { queue, max_queued }, shared))
    }

    /// Jobs that may wait at once (--max-queued).
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), GeneratorError> {
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => GeneratorError::Overloaded(self.max_queued),
            mpsc::error::TrySendError::Closed(_) => GeneratorError::ShuttingDown,
        })
    }
}

/// A finished generation in the metrics: its stages, tokens and decode speed.
fn record(completion: &Completion) {
    use zhiku_runtime::metrics::{metrics, stage};
    let m = metrics();
    m.stage(stage::PREFILL, completion.prefill_ms / 1e3);
    m.stage(stage::DECODE, completion.decode_ms / 1e3);
    m.add_tokens("prompt", completion.prompt_tokens);
    m.add_tokens("cached", completion.cached_prompt_tokens);
    m.add_tokens("generated", completion.generated_tokens);
    // The first token comes with the prefill; the rest were decoded.
    let decoded = completion.generated_tokens.saturating_sub(1);
    if decoded > 0 && completion.decode_ms > 0.0 {
        m.decode_tokens_per_second
            .observe(decoded as f64 / (completion.decode_ms / 1e3));
    }
}

/// Records a finished, cancelled or failed sequence in the counters and tells its client.
fn report(shared: &EngineShared, job: &Job, outcome: Result<Completion, GeneratorError>) {
    match outcome {
        Ok(completion) => {
            shared.stats.completed.fetch_add(1, Ordering::Relaxed);
            record(&completion);
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
