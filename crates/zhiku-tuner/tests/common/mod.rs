//! Helpers the trainer's tests share.

use candle_core::{DType, Tensor};

/// The elements of `t` as f64, row-major.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap()
}
