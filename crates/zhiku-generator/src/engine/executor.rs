//! Runs a planned step on the model: one forward over the batch, a panic in the model
//! turned into an error for the step's sequences instead of taking the engine down.

use std::panic::AssertUnwindSafe;

use candle_core::Tensor;
use zhiku_lm::decoder::{Batch, BatchModel};
use zhiku_lm::kv::KvCache;

use crate::error::GeneratorError;

/// f32 logits [batch.logit_rows.len(), vocab].
pub fn execute(
    model: &dyn BatchModel,
    batch: &Batch,
    cache: &mut KvCache,
) -> Result<Tensor, GeneratorError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| model.forward(batch, cache)))
        .unwrap_or_else(|_| Err(zhiku_lm::LmError::Inference("the model panicked".into())))
        .map_err(GeneratorError::from)
}
