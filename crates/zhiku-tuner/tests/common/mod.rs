//! Helpers shared by the tests.

use candle_core::{DType, Tensor};

/// A tensor's values as f32, in row-major order.
#[allow(dead_code)] // not every test binary uses both
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A tensor's values as f64, in row-major order (the trainer's f64 checks).
#[allow(dead_code)]
pub fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap()
}

/// The largest absolute difference between two tensors' values.
#[allow(dead_code)]
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    values_f64(a)
        .iter()
        .zip(values_f64(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
