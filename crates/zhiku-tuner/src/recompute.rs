//! Gradient checkpointing on candle's autograd. A checkpointed block runs forward without
//! building a graph (detached input, detached A/B), so none of its activations outlive it;
//! its output enters the graph through [`with_backward`] from the block's input, whose
//! backward recomputes the block with a graph, from the saved input and the dropout generator's state
//! at the block's start (the same masks), and back-propagates the output's gradient through
//! it. That gives the input's gradient to candle; the gradients of the block's A and B,
//! which a custom op cannot return, go to a [`GradientSink`] that the trainer adds to the
//! step's gradients.

use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use zhiku_lm::LmError;
use zhiku_lm::attention::Segments;
use zhiku_lm::autograd::with_backward;
use zhiku_lm::decoder::Decoder;
use zhiku_lm::lora::TrainLora;
use zhiku_lm::seeded::SplitMix64;

use crate::error::TuneError;
use crate::view::LoraView;

/// Gradients of A and B computed by recomputed blocks during one backward pass.
#[derive(Default)]
pub(crate) struct GradientSink(Arc<Mutex<Vec<(Tensor, Tensor)>>>);

impl GradientSink {
    /// Adds what the sink holds to `grads` (and empties it).
    pub(crate) fn drain_into(&self, grads: &mut GradStore) -> Result<(), TuneError> {
        let parts = std::mem::take(
            &mut *self
                .0
                .lock()
                .map_err(|_| TuneError::Training("gradient sink poisoned".into()))?,
        );
        for (var, g) in parts {
            let sum = match grads.get(&var) {
                Some(have) => (have + g)?,
                None => g,
            };
            grads.insert(&var, sum);
        }
        Ok(())
    }
}

/// Block `index` of the training forward on `x` of a (rows, tokens) batch: rows of packed
/// examples (`segments`) or rows each one sequence from position 0.
pub(crate) fn train_block(
    model: &Decoder,
    index: usize,
    x: &Tensor,
    lora: &dyn TrainLora,
    shape: (usize, usize),
    segments: Option<&Segments>,
) -> Result<Tensor, LmError> {
    match segments {
        Some(segments) => model.block_train_segments(index, x, lora, segments),
        None => model.block_train(index, x, lora, shape),
    }
}

/// Block `index` on `x`, checkpointed: `frozen` is the adapter detached (with the dropout
/// of this forward, advancing its generator as the plain forward would), `tracked` the same
/// pairs as variables, used when the backward pass recomputes the block.
#[allow(clippy::too_many_arguments)]
pub(crate) fn checkpointed_block(
    model: &Arc<Decoder>,
    index: usize,
    x: &Tensor,
    frozen: &LoraView,
    tracked: &LoraView,
    shape: (usize, usize),
    segments: Option<Arc<Segments>>,
    sink: &GradientSink,
) -> Result<Tensor, TuneError> {
    let rng_state = frozen
        .rng
        .lock()
        .map_err(|_| TuneError::Training("dropout generator poisoned".into()))?
        .0;
    let y = train_block(
        model,
        index,
        &x.detach(),
        frozen,
        shape,
        segments.as_deref(),
    )?;
    let model = model.clone();
    let pairs = tracked.pairs.clone();
    let dropout = tracked.dropout;
    let sink = sink.0.clone();
    let recompute = move |input: &Tensor, grad: &Tensor| {
        let x = Var::from_tensor(&input.detach())?;
        let replay = LoraView {
            pairs: pairs.clone(),
            dropout,
            rng: Arc::new(Mutex::new(SplitMix64(rng_state))),
        };
        let y = train_block(
            &model,
            index,
            x.as_tensor(),
            &replay,
            shape,
            segments.as_deref(),
        )
        .map_err(|e| candle_core::Error::Msg(format!("recomputing a block: {e}")))?;
        // d/dθ Σ y·g = gᵀ·dy/dθ: the output's gradient carried through the block.
        let grads = (y * grad.detach())?.sum_all()?.backward()?;
        let mut sink = sink
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink poisoned".into()))?;
        for pair in pairs.values() {
            for var in [&pair.a, &pair.b] {
                if let Some(g) = grads.get(var) {
                    sink.push((var.clone(), g.clone()));
                }
            }
        }
        Ok(grads.get(x.as_tensor()).cloned())
    };
    Ok(with_backward(x, y, Box::new(recompute))?)
}
