//! Single-sequence models (ChatGLM-6B): one request at a time, in arrival order. The model
//! keeps its own cache of the one sequence it runs.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::sequence::{Next, Sequence};
use super::{Completion, EngineShared, Job, report};
use crate::error::GeneratorError;
use zhiku_lm::CausalLm;

pub(super) fn worker(
    mut model: Box<dyn CausalLm>,
    shared: Arc<EngineShared>,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(job) = rx.blocking_recv() {
        if job.events.is_closed() {
            continue; // cancelled while it waited
        }
        let mut seq = Sequence::new(job);
        let metrics = zhiku_runtime::metrics::metrics();
        metrics.active_sequences.set(1);
        metrics.set_queue("generator_requests", rx.len());
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| run(model.as_mut(), &shared, &mut seq)))
                .unwrap_or_else(|_| Err(GeneratorError::Inference("the model panicked".into())));
        model.reset();
        metrics.active_sequences.set(0);
        report(&shared, &seq.job, outcome);
    }
}

fn run(
    model: &mut dyn CausalLm,
    shared: &EngineShared,
    seq: &mut Sequence,
) -> Result<Completion, GeneratorError> {
    model.set_adapter(seq.job.adapter.as_deref())?;
    let prompt = seq.job.prompt.clone();
    let mut logits = model.forward(&prompt, 0)?;
    loop {
        match seq.on_logits(&logits, &shared.tokenizer, &shared.stats)? {
            Next::Done(c) => return Ok(c),
            Next::Feed(token) => {
                let pos = prompt.len() + seq.generated.len() - 1;
                logits = model.forward(&[token], pos)?;
            }
        }
    }
}
