//! Dynamic batching across concurrent requests, by a token budget (as TEI's
//! `--max-batch-tokens`), for the sentence encoder (texts) and the cross-encoder (pairs)
//! alike: each model has its own batcher and worker thread.
//!
//! Every text of every request becomes one work item in a FIFO queue. One worker thread
//! takes items in arrival order while their tokens (packed, no padding) stay within the
//! token budget, runs one forward pass and answers each item. The queue is
//! bounded in texts: a request that would overfill it gets RESOURCE_EXHAUSTED at once, so
//! an overloaded server says so instead of letting calls hang.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::error::EmbedderError;
use crate::model::SentenceEncoder;

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchingConfig {
    /// Most tokens in one forward pass (sequences are packed, without padding).
    pub max_batch_tokens: usize,
    /// Most texts waiting for a batch.
    pub max_queued_texts: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            max_queued_texts: 4_096,
        }
    }
}

/// A model that runs a batch of inputs in one forward pass, one output per input.
pub trait BatchBackend: Send + Sync + 'static {
    type Input: Send + 'static;
    type Output: Send + 'static;
    /// The `zhiku_stage_duration_seconds` stage a forward pass is recorded under.
    const STAGE: &'static str;
    /// The `zhiku_queue_depth` queue of the inputs waiting.
    const QUEUE: &'static str;
    /// Tokens `input` takes in a packed batch.
    fn tokens(input: &Self::Input) -> usize;
    fn run_batch(&self, batch: &[&Self::Input]) -> Result<Vec<Self::Output>, EmbedderError>;
}

/// Anything that embeds a batch of token sequences; the candle encoder in production.
pub trait EmbeddingBackend: Send + Sync + 'static {
    fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedderError>;
}

impl<T: EmbeddingBackend> BatchBackend for T {
    type Input = Vec<u32>;
    type Output = Vec<f32>;
    const STAGE: &'static str = zhiku_runtime::metrics::stage::EMBED;
    const QUEUE: &'static str = "embedder_texts";

    fn tokens(input: &Vec<u32>) -> usize {
        input.len()
    }

    fn run_batch(&self, batch: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        let inputs: Vec<&[u32]> = batch.iter().map(|ids| ids.as_slice()).collect();
        self.embed_batch(&inputs)
    }
}

impl EmbeddingBackend for SentenceEncoder {
    fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        SentenceEncoder::embed_batch(self, batch)
    }
}

struct WorkItem<I, O> {
    input: I,
    /// Tokens of `input`, counted once when it is queued.
    tokens: usize,
    reply: oneshot::Sender<Result<O, String>>,
}

/// Counters for tests and Info.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub batches: AtomicUsize,
    pub texts: AtomicUsize,
    pub largest_batch: AtomicUsize,
}

/// A batcher of inputs `I` (token ids, or pairs) answered with outputs `O`.
pub struct Batcher<I, O> {
    queue: mpsc::UnboundedSender<WorkItem<I, O>>,
    queued: Arc<AtomicUsize>,
    config: BatchingConfig,
    stats: Arc<BatchStats>,
    tokens: fn(&I) -> usize,
    queue_name: &'static str,
}

/// The sentence encoder's batcher: token ids in, vectors out.
pub type EmbeddingBatcher = Batcher<Vec<u32>, Vec<f32>>;

impl EmbeddingBatcher {
    /// Embeds token sequences (each non-empty, within the model's window), in order.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EmbedderError> {
        self.run(inputs).await
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the worker thread. It ends when the batcher is dropped.
    pub fn start<B: BatchBackend<Input = I, Output = O>>(
        backend: Arc<B>,
        config: BatchingConfig,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(BatchStats::default());
        let worker = Worker {
            backend,
            rx,
            queued: queued.clone(),
            stats: stats.clone(),
            budget: config.max_batch_tokens.max(1),
        };
        std::thread::Builder::new()
            .name(format!("zhiku-{}", B::QUEUE))
            .spawn(move || worker.run())
            .expect("spawning the batcher thread");
        Self {
            queue,
            queued,
            config,
            stats,
            tokens: B::tokens,
            queue_name: B::QUEUE,
        }
    }

    pub fn config(&self) -> BatchingConfig {
        self.config
    }

    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Texts waiting for a batch now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Runs `inputs` (each non-empty, within the model's window) in batches shared with
    /// other requests; the outputs in order.
    pub async fn run(&self, inputs: Vec<I>) -> Result<Vec<O>, EmbedderError> {
        let n = inputs.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let max = self.config.max_queued_texts;
        // Reserve room for all texts of the request at once, or refuse it whole.
        let mut current = self.queued.load(Ordering::Acquire);
        loop {
            if current + n > max {
                return Err(EmbedderError::Overloaded {
                    queued: current,
                    max,
                });
            }
            match self.queued.compare_exchange_weak(
                current,
                current + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        publish_queue(self.queue_name, current + n);
        let mut replies = Vec::with_capacity(n);
        for input in inputs {
            let (reply, rx) = oneshot::channel();
            let tokens = (self.tokens)(&input);
            let item = WorkItem {
                input,
                tokens,
                reply,
            };
            if self.queue.send(item).is_err() {
                self.queued.fetch_sub(n - replies.len(), Ordering::AcqRel);
                return Err(EmbedderError::ShuttingDown);
            }
            replies.push(rx);
        }
        let mut vectors = Vec::with_capacity(n);
        for rx in replies {
            match rx.await {
                Ok(Ok(v)) => vectors.push(v),
                Ok(Err(message)) => return Err(EmbedderError::Inference(message)),
                Err(_) => return Err(EmbedderError::ShuttingDown),
            }
        }
        Ok(vectors)
    }
}

/// Publishes `zhiku_queue_depth{queue}` (`embedder_texts`, `reranker_pairs`).
fn publish_queue(queue: &str, depth: usize) {
    zhiku_runtime::metrics::metrics().set_queue(queue, depth);
}

struct Worker<B: BatchBackend> {
    backend: Arc<B>,
    rx: mpsc::UnboundedReceiver<WorkItem<B::Input, B::Output>>,
    queued: Arc<AtomicUsize>,
    stats: Arc<BatchStats>,
    budget: usize,
}

impl<B: BatchBackend> Worker<B> {
    fn run(mut self) {
        let mut pending: VecDeque<WorkItem<B::Input, B::Output>> = VecDeque::new();
        loop {
            if pending.is_empty() {
                match self.rx.blocking_recv() {
                    Some(item) => pending.push_back(item),
                    None => return,
                }
            }
            while let Ok(item) = self.rx.try_recv() {
                pending.push_back(item);
            }
            // Callers that went away (cancelled, deadline) cost nothing more.
            let before = pending.len();
            pending.retain(|item| !item.reply.is_closed());
            self.queued
                .fetch_sub(before - pending.len(), Ordering::AcqRel);

            let batch = take_batch(&mut pending, self.budget);
            if batch.is_empty() {
                continue;
            }
            self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.texts.fetch_add(batch.len(), Ordering::Relaxed);
            self.stats
                .largest_batch
                .fetch_max(batch.len(), Ordering::Relaxed);

            let metrics = zhiku_runtime::metrics::metrics();
            publish_queue(B::QUEUE, self.queued.load(Ordering::Acquire));
            if B::STAGE == zhiku_runtime::metrics::stage::EMBED {
                metrics.embed_batch_texts.observe(batch.len() as f64);
                let tokens: usize = batch.iter().map(|item| item.tokens).sum();
                metrics.embed_batch_tokens.observe(tokens as f64);
            }
            let started = std::time::Instant::now();

            let inputs: Vec<&B::Input> = batch.iter().map(|item| &item.input).collect();
            let backend = &self.backend;
            // A panic inside the model must fail this batch, not kill the server's only worker.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| backend.run_batch(&inputs)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(EmbedderError::Inference(format!("model panicked: {what}")))
                });
            metrics.stage(B::STAGE, started.elapsed().as_secs_f64());
            match result {
                Ok(vectors) if vectors.len() == batch.len() => {
                    for (item, vector) in batch.into_iter().zip(vectors) {
                        let _ = item.reply.send(Ok(vector));
                    }
                }
                Ok(vectors) => {
                    let message = format!(
                        "model returned {} outputs for {} inputs",
                        vectors.len(),
                        batch.len()
                    );
                    for item in batch {
                        let _ = item.reply.send(Err(message.clone()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "batch failed");
                    let message = e.to_string();
                    for item in batch {
                        let _ = item.reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }
}

/// Takes items in FIFO order while their tokens stay within `budget` (the encoder packs
/// sequences, so there is no padding to count); always at least one item, so a text longer
/// than the budget still runs (alone).
fn take_batch<I, O>(pending: &mut VecDeque<WorkItem<I, O>>, budget: usize) -> Vec<WorkItem<I, O>> {
    let mut batch = Vec::new();
    let mut tokens = 0;
    while let Some(front) = pending.front() {
        let len = front.tokens.max(1);
        if !batch.is_empty() && tokens + len > budget {
            break;
        }
        tokens += len;
        if let Some(item) = pending.pop_front() {
            batch.push(item);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A backend that records batch shapes (texts, tokens) and returns the length of each
    /// sequence.
    struct Recorder {
        shapes: Mutex<Vec<(usize, usize)>>,
        delay: std::time::Duration,
    }

    impl EmbeddingBackend for Recorder {
        fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedderError> {
            std::thread::sleep(self.delay);
            let tokens = batch.iter().map(|s| s.len()).sum();
            self.shapes.lock().unwrap().push((batch.len(), tokens));
            if batch.iter().any(|s| s.first() == Some(&666)) {
                panic!("poisoned input");
            }
            Ok(batch
                .iter()
                .map(|s| vec![s.len() as f32, s[0] as f32])
                .collect())
        }
    }

    fn recorder(delay_ms: u64) -> Arc<Recorder> {
        Arc::new(Recorder {
            shapes: Mutex::new(Vec::new()),
            delay: std::time::Duration::from_millis(delay_ms),
        })
    }

    #[test]
    fn take_batch_respects_budget_and_order() {
        let mut pending: VecDeque<WorkItem<Vec<u32>, Vec<f32>>> = [3usize, 5, 2, 10, 1]
            .into_iter()
            .map(|len| WorkItem {
                input: vec![1; len],
                tokens: len,
                reply: oneshot::channel().0,
            })
            .collect();
        // 3, 3 + 5 = 8, 8 + 2 = 10, then 10 + 10 = 20 > 12: stop.
        let batch = take_batch(&mut pending, 12);
        assert_eq!(
            batch.iter().map(|i| i.input.len()).collect::<Vec<_>>(),
            vec![3, 5, 2]
        );
        // An item larger than the budget still goes, alone.
        let batch = take_batch(&mut pending, 1);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].input.len(), 10);
        assert_eq!(pending.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_are_batched_in_order() {
        let backend = recorder(5);
        let batcher = Arc::new(EmbeddingBatcher::start(
            backend.clone(),
            BatchingConfig {
                max_batch_tokens: 64,
                max_queued_texts: 10_000,
            },
        ));
        let mut tasks = Vec::new();
        for r in 0..50u32 {
            let batcher = batcher.clone();
            tasks.push(tokio::spawn(async move {
                let inputs: Vec<Vec<u32>> =
                    (0..3).map(|i| vec![r * 10 + i; 1 + i as usize]).collect();
                (r, batcher.embed(inputs).await.unwrap())
            }));
        }
        for task in tasks {
            let (r, vectors) = task.await.unwrap();
            for (i, v) in vectors.iter().enumerate() {
                assert_eq!(v, &vec![1.0 + i as f32, (r * 10 + i as u32) as f32]);
            }
        }
        let shapes = backend.shapes.lock().unwrap();
        assert!(shapes.iter().all(|(n, tokens)| *tokens <= 64 || *n == 1));
        assert!(
            shapes.len() < 150,
            "150 texts should share batches, got {} batches",
            shapes.len()
        );
        assert_eq!(batcher.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_refuses_at_once() {
        let backend = recorder(200);
        let batcher = Arc::new(EmbeddingBatcher::start(
            backend,
            BatchingConfig {
                max_batch_tokens: 4,
                max_queued_texts: 4,
            },
        ));
        // A: four texts, taken at once into a batch that runs for 200 ms.
        let a = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.embed(vec![vec![1]; 4]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        // B: four more texts wait in the queue, filling it.
        let b = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.embed(vec![vec![2]; 4]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert_eq!(batcher.queued(), 4);
        // C: refused at once.
        let started = std::time::Instant::now();
        let err = batcher.embed(vec![vec![3]]).await.unwrap_err();
        assert!(
            matches!(err, EmbedderError::Overloaded { queued: 4, max: 4 }),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert!(a.await.unwrap().is_ok());
        assert!(b.await.unwrap().is_ok());
        // Room again afterwards.
        assert!(batcher.embed(vec![vec![1]]).await.is_ok());
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_items_and_the_worker_survives() {
        let batcher = EmbeddingBatcher::start(recorder(0), BatchingConfig::default());
        let err = batcher.embed(vec![vec![666]]).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(
            batcher.embed(vec![vec![7, 7]]).await.unwrap(),
            vec![vec![2.0, 7.0]]
        );
    }
}
