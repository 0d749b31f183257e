//! The adapter as one training forward sees it: the LoRA pairs (tracked for gradients or
//! detached) and dropout on their input, drawn from a seeded generator so that a recomputed
//! block ([`crate::recompute`]) and a resumed run draw the same masks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};
use zhiku_lm::lora::{LoraPair, TrainLora};
use zhiku_lm::seeded::SplitMix64;

/// The LoRA pairs of one forward and its dropout (p = 0: none). Owned, so that a block
/// recomputed in the backward pass can hold one ([`crate::recompute`]).
#[derive(Clone)]
pub(crate) struct LoraView {
    pub(crate) pairs: Arc<HashMap<String, LoraPair>>,
    pub(crate) dropout: f64,
    pub(crate) rng: Arc<Mutex<SplitMix64>>,
}

impl TrainLora for LoraView {
    fn pair(&self, module: &str) -> Option<&LoraPair> {
        self.pairs.get(module)
    }

    fn lora_mask(&self, _module: &str, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let p = self.dropout;
        if p <= 0.0 {
            return Ok(None);
        }
        let n = x.elem_count();
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("dropout generator poisoned".into()))?;
        let mask = match x.dtype() {
            DType::F64 => {
                let keep = 1.0 / (1.0 - p);
                let mask: Vec<f64> = (0..n)
                    .map(|_| if rng.uniform() < p { 0.0 } else { keep })
                    .collect();
                Tensor::from_vec(mask, x.shape(), x.device())?
            }
            dtype => {
                // The same draws as in f64; the mask is made in f32 (half the bytes).
                let keep = (1.0 / (1.0 - p)) as f32;
                let mask: Vec<f32> = (0..n)
                    .map(|_| if rng.uniform() < p { 0.0 } else { keep })
                    .collect();
                Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(dtype)?
            }
        };
        Ok(Some(mask))
    }
}
