//! Gradient checkpointing on candle's autograd. A checkpointed block runs forward without
//! building a graph (detached input, detached A/B), so none of its activations outlive it;
//! its output enters the graph through a custom op of (block input, output) whose backward
//! recomputes the block with a graph, from the saved input and the dropout generator's state
//! at the block's start (the same masks), and back-propagates the output's gradient through
//! it. That gives the input's gradient to candle; the gradients of the block's A and B,
//! which a custom op cannot return, go to a [`GradientSink`] that the trainer adds to the
//! step's gradients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Shape, Tensor, Var};
use zhiku_lm::decoder::Decoder;
use zhiku_lm::lora::LoraPair;
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

/// Block `index` on `x`, checkpointed: `frozen` is the adapter detached (with the dropout
/// of this forward, advancing its generator as the plain forward would), `tracked` the same
/// pairs as variables, used when the backward pass recomputes the block.
pub(crate) fn checkpointed_block(
    model: &Arc<Decoder>,
    index: usize,
    x: &Tensor,
    frozen: &LoraView,
    tracked: &LoraView,
    shape: (usize, usize),
    sink: &GradientSink,
) -> Result<Tensor, TuneError> {
    let rng_state = frozen
        .rng
        .lock()
        .map_err(|_| TuneError::Training("dropout generator poisoned".into()))?
        .0;
    let y = model.block_train(index, &x.detach(), frozen, shape)?;
    let op = BlockRecompute {
        model: model.clone(),
        index,
        shape,
        pairs: tracked.pairs.clone(),
        dropout: tracked.dropout,
        rng_state,
        sink: sink.0.clone(),
    };
    Ok(x.apply_op2(&y, op)?)
}

/// The custom op: its value is the block's output (its second argument, copied); its
/// backward recomputes the block from its first argument, the block's input.
struct BlockRecompute {
    model: Arc<Decoder>,
    index: usize,
    shape: (usize, usize),
    pairs: Arc<HashMap<String, LoraPair>>,
    dropout: f64,
    rng_state: u64,
    sink: Arc<Mutex<Vec<(Tensor, Tensor)>>>,
}

fn copy_of<S>(storage: &S, layout: &Layout) -> candle_core::Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let shape = layout.shape().clone();
    let mut out = storage.device().zeros_impl(&shape, storage.dtype())?;
    storage.copy_strided_src(&mut out, 0, layout)?;
    Ok((out, shape))
}

impl CustomOp2 for BlockRecompute {
    fn name(&self) -> &'static str {
        "zhiku-block-recompute"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        output: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        copy_of(output, layout)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        output: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        copy_of(output, layout)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        output: &MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        copy_of(output, layout)
    }

    fn bwd(
        &self,
        input: &Tensor,
        _output: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let x = Var::from_tensor(&input.detach())?;
        let replay = LoraView {
            pairs: self.pairs.clone(),
            dropout: self.dropout,
            rng: Arc::new(Mutex::new(SplitMix64(self.rng_state))),
        };
        let y = self
            .model
            .block_train(self.index, x.as_tensor(), &replay, self.shape)
            .map_err(|e| candle_core::Error::Msg(format!("recomputing a block: {e}")))?;
        // d/dθ Σ y·g = gᵀ·dy/dθ: the output's gradient carried through the block.
        let grads = (y * grad_res.detach())?.sum_all()?.backward()?;
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink poisoned".into()))?;
        for pair in self.pairs.values() {
            for var in [&pair.a, &pair.b] {
                if let Some(g) = grads.get(var) {
                    sink.push((var.clone(), g.clone()));
                }
            }
        }
        Ok((grads.get(x.as_tensor()).cloned(), None))
    }
}
