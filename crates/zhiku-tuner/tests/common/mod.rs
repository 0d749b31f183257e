//! Helpers shared by the tests.

use candle_core::{DType, Tensor};

/// A tensor's values as f32, in row-major order.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
