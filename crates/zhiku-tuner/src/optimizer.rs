//! AdamW whose state (first and second moments, step count) can be read and restored, so
//! that a checkpoint holds it and a resumed run continues as if it had not stopped.
//! candle-nn's `AdamW` keeps its moments private; this one performs exactly its update
//! (the same tensor operations in the same order, so the same values to the last bit).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::TuneError;

/// AdamW's hyper-parameters (candle-nn's `ParamsAdamW`, torch's names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One parameter with its moments (shaped and typed like it).
#[derive(Debug)]
struct Slot {
    var: Var,
    first_moment: Tensor,
    second_moment: Tensor,
}

/// AdamW (Loshchilov & Hutter) with decoupled weight decay and bias correction.
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    step_t: usize,
    params: AdamWParams,
}

impl AdamW {
    /// Moments at zero, step 0, for every floating-point `var`.
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self, TuneError> {
        let slots = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|var| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    var,
                    first_moment: zeros.clone(),
                    second_moment: zeros,
                })
            })
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        Ok(Self {
            slots,
            step_t: 0,
            params,
        })
    }

    pub fn params(&self) -> &AdamWParams {
        &self.params
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Updates taken (t in the bias correction).
    pub fn step_count(&self) -> usize {
        self.step_t
    }

    /// The moments (first, second) of the `index`-th parameter, in the order given to
    /// [`AdamW::new`].
    pub fn moments(&self, index: usize) -> Option<(&Tensor, &Tensor)> {
        self.slots
            .get(index)
            .map(|s| (&s.first_moment, &s.second_moment))
    }

    /// Restores the state a checkpoint saved: the step count and every parameter's moments,
    /// in the order of [`AdamW::new`] (converted to each parameter's dtype and device).
    pub fn restore(
        &mut self,
        step_t: usize,
        moments: Vec<(Tensor, Tensor)>,
    ) -> Result<(), TuneError> {
        if moments.len() != self.slots.len() {
            return Err(TuneError::Validation(format!(
                "the optimizer state holds {} parameters, the model trains {}",
                moments.len(),
                self.slots.len()
            )));
        }
        let mut restored = Vec::with_capacity(moments.len());
        for (slot, (m, v)) in self.slots.iter().zip(moments) {
            let like = slot.var.as_tensor();
            if m.dims() != like.dims() || v.dims() != like.dims() {
                return Err(TuneError::Validation(format!(
                    "optimizer moments {:?} / {:?} do not fit a parameter of shape {:?}",
                    m.dims(),
                    v.dims(),
                    like.dims()
                )));
            }
            let fit = |t: Tensor| t.to_device(like.device())?.to_dtype(like.dtype());
            restored.push((fit(m)?, fit(v)?));
        }
        for (slot, (m, v)) in self.slots.iter_mut().zip(restored) {
            slot.first_moment = m;
            slot.second_moment = v;
        }
        self.step_t = step_t;
        Ok(())
    }

    /// One update of every parameter that has a gradient in `grads`: candle-nn's
    /// `AdamW::step`, operation for operation.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), TuneError> {
        self.step_t += 1;
        let AdamWParams {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let lr_lambda = lr * weight_decay;
        let scale_m = 1f64 / (1f64 - beta1.powi(self.step_t as i32));
        let scale_v = 1f64 / (1f64 - beta2.powi(self.step_t as i32));
        for slot in &mut self.slots {
            let theta = &slot.var;
            let Some(g) = grads.get(theta) else { continue };
            let next_m = ((&slot.first_moment * beta1)? + (g * (1.0 - beta1))?)?;
            let next_v = ((&slot.second_moment * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let next_theta = (theta.as_tensor() * (1f64 - lr_lambda))?;
            let adjusted_grad = (m_hat / (v_hat.sqrt()? + eps)?)?;
            let next_theta = (next_theta - (adjusted_grad * lr)?)?;
            slot.first_moment = next_m;
            slot.second_moment = next_v;
            // In place: the forward's LoRA pairs share this storage.
            theta.set(&next_theta)?;
        }
        Ok(())
    }
}
