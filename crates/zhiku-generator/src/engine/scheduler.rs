//! Continuous batching. The scheduler owns the sequences and the KV blocks; every step it
//!
//! 1. drops sequences whose client went away or whose deadline passed (blocks freed);
//! 2. admits waiting requests, in arrival order, while the batch and the KV budget allow
//!    (each reserves blocks for its prompt plus `max_new_tokens`, starting from the longest
//!    cached prefix of its prompt);
//! 3. plans a step ([`super::plan`]): every decoding sequence (one token each) plus prompt
//!    chunks of the sequences still prefilling, up to `--prefill-chunk` prompt tokens, so a
//!    long prompt never stalls the streams already running; the executor runs it;
//! 4. samples each sequence that got logits, streams its text, retires the finished ones
//!    (their computed blocks stay in the prefix cache).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::block_manager::BlockManager;
use super::executor::execute;
use super::plan::plan_step_whole;
use super::sequence::{Next, Row, Sequence};
use super::{EngineShared, Job, report};
use crate::error::GeneratorError;
use crate::sampling::{DeviceRow, DeviceSampler, Pick, pick_on_device};
use zhiku_lm::ComputePath;
use zhiku_lm::decoder::{Batch, BatchModel};
use zhiku_lm::kv::{BLOCK_SIZE, KvCache, KvDtype};
use zhiku_lm::lora::LoraAdapter;

/// How the engine batches and caches.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests that may wait; past it, RESOURCE_EXHAUSTED at once.
    pub max_queued: usize,
    /// Sequences decoded together in one step.
    pub max_batch: usize,
    /// Tokens the KV cache holds, over all sequences.
    pub kv_cache_tokens: usize,
    /// Element type of the CPU cache; the default is `generator --kv-cache-dtype`'s.
    pub kv_dtype: KvDtype,
    /// Prompt tokens prefilled per step.
    pub prefill_chunk: usize,
    /// Reuse the K/V of prompt prefixes seen before.
    pub prefix_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_queued: 32,
            max_batch: 16,
            kv_cache_tokens: 16_384,
            kv_dtype: KvDtype::F16,
            prefill_chunk: 512,
            prefix_cache: true,
        }
    }
}

/// A request being generated.
struct Running {
    seq: Sequence,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    blocks: Vec<u32>,
    adapter: Option<Arc<LoraAdapter>>,
    adapter_key: String,
    /// Its first tokens that see each other (ChatGLM-6B's prompt through `[gMASK]`), else 0:
    /// then its prompt is prefilled in one step and never shared through the prefix cache.
    bidirectional: usize,
}

impl Running {
    /// Whether its blocks may serve other prompts: a bidirectional prompt's K/V depend on
    /// all of it, so none of its prefixes is a prefix of another prompt's.
    fn shares_prefix(&self, prefix_cache: bool) -> bool {
        prefix_cache && self.bidirectional == 0
    }
}

pub struct Scheduler {
    model: Arc<dyn BatchModel>,
    shared: Arc<EngineShared>,
    config: EngineConfig,
    cache: KvCache,
    blocks: BlockManager,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    /// On the tensor path, the device's sampling constants, made at the first sampled step.
    sampler: Option<DeviceSampler>,
}

impl Scheduler {
    pub fn new(
        model: Arc<dyn BatchModel>,
        shared: Arc<EngineShared>,
        config: EngineConfig,
    ) -> Result<Self, GeneratorError> {
        let cache = KvCache::new(
            model.kv_shape(),
            config.kv_cache_tokens,
            config.kv_dtype,
            model.device(),
            model.kv_dtype(),
            model.compute_path(),
        )?;
        let blocks = BlockManager::new(cache.num_blocks);
        tracing::info!(
            kv_cache_tokens = cache.capacity_tokens(),
            kv_cache_mib = cache.bytes() >> 20,
            max_batch = config.max_batch,
            prefill_chunk = config.prefill_chunk,
            prefix_cache = config.prefix_cache,
            "engine ready"
        );
        Ok(Self {
            model,
            shared,
            config,
            cache,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            sampler: None,
        })
    }

    /// Serves until the queue closes (the engine was dropped).
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => self.waiting.push_back(job),
                    None => return,
                }
            }
            self.drop_dead();
            self.admit(&mut rx);
            self.publish(rx.len());
            if self.running.is_empty() {
                // Nothing admissible: the front request waits for blocks that nobody holds
                // (cannot happen: admission refuses what can never fit) or was dropped.
                continue;
            }
            self.step();
        }
    }

    /// Reports the cache and batch for Info, and the queue and batch to the metrics
    /// (`queued`: requests still in the channel, besides those waiting here).
    fn publish(&self, queued: usize) {
        let metrics = zhiku_runtime::metrics::metrics();
        metrics
            .active_sequences
            .set(i64::try_from(self.running.len()).unwrap_or(i64::MAX));
        metrics.set_queue("generator_requests", self.waiting.len() + queued);
        if let Ok(mut c) = self.shared.cache.lock() {
            c.capacity_tokens = self.cache.capacity_tokens();
            c.used_tokens = self.blocks.in_use() * BLOCK_SIZE;
            c.max_batch = self.config.max_batch;
            c.active = self.running.len();
            c.prefix = self.blocks.stats;
            c.batched = true;
        }
    }

    fn retire(&mut self, i: usize, outcome: Result<super::Completion, GeneratorError>) {
        let r = self.running.remove(i);
        if r.shares_prefix(self.config.prefix_cache) && outcome.is_ok() {
            self.blocks
                .register_prefix(&r.blocks, &r.tokens[..r.computed], &r.adapter_key);
        }
        self.blocks.release(&r.blocks);
        report(&self.shared, &r.seq.job, outcome);
    }

    fn drop_dead(&mut self) {
        self.waiting.retain(|job| !job.events.is_closed());
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].seq.check_alive() {
                Ok(()) => i += 1,
                Err(e) => self.retire(i, Err(e)),
            }
        }
    }

    /// Moves waiting requests into the batch while there is room, in arrival order. The
    /// channel is read only when the waiting list is empty, so the queue bound holds.
    fn admit(&mut self, rx: &mut mpsc::Receiver<Job>) {
        while self.running.len() < self.config.max_batch {
            if self.waiting.is_empty() {
                match rx.try_recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            let Some(job) = self.waiting.front() else {
                return;
            };
            if job.events.is_closed() {
                self.waiting.pop_front();
                continue;
            }
            let adapter = match self.shared.resolve_adapter(job.adapter.as_deref()) {
                Ok(a) => a,
                Err(e) => {
                    self.refuse_front(e);
                    continue;
                }
            };
            let adapter_key = adapter.as_ref().map(|a| a.key()).unwrap_or_default();
            let mut tokens = self.shared.prompt_prefix.clone();
            if !job.prompt.starts_with(&tokens) {
                tokens.extend_from_slice(&job.prompt);
            } else {
                tokens = job.prompt.clone();
            }
            tokens.extend_from_slice(self.model.prompt_suffix());
            let bidirectional = if self.model.bidirectional_prompt() {
                tokens.len().saturating_sub(1)
            } else {
                0
            };
            let share = self.config.prefix_cache && bidirectional == 0;
            let context = self.shared.info.context_length;
            if tokens.len() >= context {
                let added = tokens.len() - job.prompt.len().min(tokens.len());
                self.refuse_front(GeneratorError::Validation(format!(
                    "the prompt is {} tokens with the model's {added} start tokens; the \
                     model's context is {context}: shorten it",
                    tokens.len(),
                )));
                continue;
            }
            let max_new = job
                .sampling
                .max_new_tokens
                .min(context - tokens.len())
                .max(1);
            let total = tokens.len() + max_new;
            let capacity = self.cache.capacity_tokens();
            if total > capacity {
                self.refuse_front(GeneratorError::Validation(format!(
                    "the prompt ({} tokens) plus max_new_tokens ({max_new}) exceed the KV cache \
                     of {capacity} tokens (--kv-cache-tokens): shorten the prompt or ask for \
                     fewer tokens",
                    tokens.len(),
                )));
                continue;
            }
            let Some((blocks, cached)) = self.blocks.allocate(&tokens, total, &adapter_key, share)
            else {
                return; // waits for running sequences to free blocks
            };
            let Some(mut job) = self.waiting.pop_front() else {
                return;
            };
            job.sampling.max_new_tokens = max_new;
            let mut seq = Sequence::new(job);
            seq.cached_prompt_tokens = cached;
            if share {
                let result = if cached > 0 { "hit" } else { "miss" };
                zhiku_runtime::metrics::metrics()
                    .prefix_cache
                    .with_label_values(&[result])
                    .inc();
            }
            self.running.push(Running {
                seq,
                tokens,
                computed: cached,
                blocks,
                adapter,
                adapter_key,
                bidirectional,
            });
        }
    }

    /// Answers the front waiting request with `e` and drops it.
    fn refuse_front(&mut self, e: GeneratorError) {
        if let Some(job) = self.waiting.pop_front() {
            report(&self.shared, &job, Err(e));
        }
    }

    /// One step: plan it, build its batch, run it, apply what came out.
    fn step(&mut self) {
        let pending: Vec<usize> = self
            .running
            .iter()
            .map(|r| r.tokens.len() - r.computed)
            .collect();
        let whole: Vec<bool> = self.running.iter().map(|r| r.bidirectional > 0).collect();
        let plan = plan_step_whole(&pending, &whole, self.config.prefill_chunk);
        let mut batch = Batch::default();
        for entry in &plan {
            let r = &self.running[entry.index];
            batch.push(
                &r.tokens[r.computed..r.computed + entry.tokens],
                r.computed,
                &r.blocks,
                r.adapter.clone(),
                entry.logits,
            );
            batch.bidirectional(r.bidirectional);
        }
        let members: Vec<(usize, bool)> = plan.iter().map(|e| (e.index, e.logits)).collect();
        let stats = &self.shared.stats;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats
            .batched_sequences
            .fetch_add(members.len(), Ordering::Relaxed);
        stats
            .max_batch_seen
            .fetch_max(members.len(), Ordering::Relaxed);

        let logits = match execute(self.model.as_ref(), &batch, &mut self.cache) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, sequences = members.len(), "forward failed");
                let mut failed: Vec<usize> = members.iter().map(|(i, _)| *i).collect();
                failed.sort_unstable_by_key(|i| std::cmp::Reverse(*i));
                for i in failed {
                    self.retire(i, Err(GeneratorError::Inference(e.to_string())));
                }
                return;
            }
        };
        // The rows' repetition penalties and picks, on the device: a few numbers up, the
        // picks back, instead of every row's vocabulary both ways. On the kernel path the
        // logits are host memory, and sampled rows are drawn there (the same draw).
        for &(i, wants) in &members {
            if wants {
                self.running[i].seq.draw();
            }
        }
        let (device, picked) = {
            let rows: Vec<DeviceRow<'_>> = members
                .iter()
                .filter(|(_, wants)| *wants)
                .map(|&(i, _)| self.running[i].seq.device_row())
                .collect();
            let samples = rows.iter().any(|r| matches!(r.pick, Pick::Sample { .. }));
            if samples
                && self.sampler.is_none()
                && self.model.compute_path() == ComputePath::Tensors
            {
                match logits
                    .dim(1)
                    .and_then(|vocab| DeviceSampler::new(vocab, logits.device()))
                {
                    Ok(s) => self.sampler = Some(s),
                    Err(e) => tracing::error!(error = %e, "no sampling on the device"),
                }
            }
            let on_device = self.sampler.is_some();
            let picked: Vec<bool> = rows
                .iter()
                .map(|r| match r.pick {
                    Pick::Argmax => true,
                    Pick::Sample { .. } => on_device,
                    Pick::None => false,
                })
                .collect();
            (
                pick_on_device(&logits, &rows, self.sampler.as_ref()),
                picked,
            )
        };
        // Advance every member; sample those that got logits.
        let mut finished: Vec<(usize, Result<super::Completion, GeneratorError>)> = Vec::new();
        let mut row = 0;
        for (k, &(i, wants)) in members.iter().enumerate() {
            let took = batch.seqs[k].len;
            let r = &mut self.running[i];
            r.computed += took;
            if took > 1 && r.shares_prefix(self.config.prefix_cache) {
                // A prompt chunk: its full blocks can serve other prompts from now on.
                self.blocks
                    .register_prefix(&r.blocks, &r.tokens[..r.computed], &r.adapter_key);
            }
            if !wants {
                continue;
            }
            let tokenizer = &self.shared.tokenizer;
            let next = match &device {
                Ok((_, Some(picks))) if picked[row] => {
                    r.seq.on_row(Row::Picked(picks[row]), tokenizer, stats)
                }
                Ok((penalised, _)) => penalised
                    .get(row)
                    .map_err(GeneratorError::from)
                    .and_then(|l| r.seq.on_row(Row::Penalised(&l), tokenizer, stats)),
                Err(e) => Err(GeneratorError::Inference(e.to_string())),
            };
            row += 1;
            match next {
                Ok(Next::Feed(token)) => r.tokens.push(token),
                Ok(Next::Done(c)) => finished.push((i, Ok(c))),
                Err(e) => finished.push((i, Err(e))),
            }
        }
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (i, outcome) in finished {
            self.retire(i, outcome);
        }
    }
}
