//! Activation rows quantized in AVX2, to the same bytes as the portable quantizer.

use crate::act::{RowOut, finish_row, scale_of};
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
pub unsafe fn quantize_row(x: &[f32], blk: usize, o: &mut RowOut<'_>) {
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
