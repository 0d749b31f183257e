//! Activations quantized once per matmul: symmetric int8 blocks of 32 (for the 32-element
//! weight types, like ggml's Q8_0) or 256 (for the K-quants, like Q8_K), with the block sums
//! the kernels need for the weights' minimums. Every path rounds the same way (ties to
//! even), so the scalar and SIMD quantizers (the dispatch table's `quantize_row`) give
//! identical bytes; this module holds what they share.

/// The quantized activations of one matmul, row-major.
pub struct Acts {
    /// Elements per scale: 32 or 256.
    pub blk: usize,
    pub k: usize,
    pub qs: Vec<i8>,
    /// One scale per block of `blk`.
    pub d: Vec<f32>,
    /// Per 32 elements: `d · Σq` (the 32-element types' minimum term).
    pub s: Vec<f32>,
    /// Per 32 elements: Σq (Q4_K/Q5_K minimums).
    pub b32: Vec<i16>,
    /// Per 16 elements: Σq (Q6_K's offset of 32).
    pub b16: Vec<i16>,
}

impl Acts {
    pub fn new(m: usize, k: usize, blk: usize) -> Self {
        Acts {
            blk,
            k,
            qs: vec![0; m * k],
            d: vec![0.0; m * k / blk],
            s: vec![0.0; m * k / 32],
            b32: vec![0; m * k / 32],
            b16: vec![0; m * k / 16],
        }
    }
}

/// One row's output slices.
pub struct RowOut<'a> {
    pub qs: &'a mut [i8],
    pub d: &'a mut [f32],
    pub s: &'a mut [f32],
    pub b32: &'a mut [i16],
    pub b16: &'a mut [i16],
}

/// The scale of a block whose largest magnitude is `amax`, and its inverse.
#[inline]
pub fn scale_of(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    (d, id)
}

/// Derives the per-32 sums from the per-16 sums.
pub fn finish_row(blk: usize, o: &mut RowOut<'_>) {
    for j in 0..o.b32.len() {
        let sum = o.b16[2 * j] + o.b16[2 * j + 1];
        o.b32[j] = sum;
        let d = o.d[(32 * j) / blk];
        o.s[j] = d * f32::from(sum);
    }
}
