//! Activations quantized once per matmul: symmetric int8 blocks of 32 (for the 32-element
//! weight types, like ggml's Q8_0) or 256 (for the K-quants, like Q8_K), with the block sums
//! the kernels need for the weights' minimums. Every path rounds the same way (ties to
//! even), so the scalar and SIMD quantizers give identical bytes.

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

pub fn quantize_row_scalar(x: &[f32], blk: usize, o: &mut RowOut<'_>) {
    for (b, xs) in x.chunks_exact(blk).enumerate() {
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let (d, id) = scale_of(amax);
        o.d[b] = d;
        let qs = &mut o.qs[b * blk..(b + 1) * blk];
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
        }
        for (j, c) in qs.chunks_exact(16).enumerate() {
            o.b16[b * blk / 16 + j] = c.iter().map(|&q| i16::from(q)).sum();
        }
    }
    finish_row(blk, o);
}

#[cfg(target_arch = "x86_64")]
pub use x86::quantize_row_avx2;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{RowOut, finish_row, scale_of};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum8(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0x4E>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0xB1>(s));
        _mm_cvtsi128_si32(s)
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `x.len()` a multiple of `blk` (a multiple of
    /// 32) and `o`'s slices sized for it.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_row_avx2(x: &[f32], blk: usize, o: &mut RowOut<'_>) {
        let sign = _mm256_set1_ps(-0.0);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, xs) in x.chunks_exact(blk).enumerate() {
            let mut mx = _mm256_setzero_ps();
            for c in xs.chunks_exact(8) {
                // SAFETY: `c` is 8 f32 long; loadu has no alignment requirement.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
                mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps::<1>(mx));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let (d, id) = scale_of(_mm_cvtss_f32(m4));
            o.d[b] = d;
            let idv = _mm256_set1_ps(id);
            for (j, c) in xs.chunks_exact(32).enumerate() {
                let mut v = [_mm256_setzero_si256(); 4];
                for (t, vt) in v.iter_mut().enumerate() {
                    // SAFETY: `c` is 32 f32 long, so 8t..8t+8 is in bounds.
                    let f = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * t)) };
                    let f = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        _mm256_mul_ps(f, idv),
                    );
                    *vt = _mm256_cvtps_epi32(f);
                }
                let s0 = hsum8(_mm256_add_epi32(v[0], v[1]));
                let s1 = hsum8(_mm256_add_epi32(v[2], v[3]));
                let p = _mm256_packs_epi16(
                    _mm256_packs_epi32(v[0], v[1]),
                    _mm256_packs_epi32(v[2], v[3]),
                );
                let p = _mm256_permutevar8x32_epi32(p, perm);
                let at = b * blk + 32 * j;
                let dst = &mut o.qs[at..at + 32];
                // SAFETY: `dst` is 32 bytes long; storeu has no alignment requirement.
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), p) };
                let k16 = at / 16;
                o.b16[k16] = s0 as i16;
                o.b16[k16 + 1] = s1 as i16;
            }
        }
        finish_row(blk, o);
    }
}
