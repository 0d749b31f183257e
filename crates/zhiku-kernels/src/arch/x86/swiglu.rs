//! SwiGLU's gate in AVX2/FMA, with the softmax's vectorised exp.

use std::arch::x86_64::*;

use super::attn::exp8;
use crate::arch::generic;

/// out[i] = silu(gate[i]) · up[i], 8 lanes at a time, the tail portable.
///
/// # Safety
/// AVX2 and FMA are present; the slices have one length.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len();
    let full = n / 8 * 8;
    let (g, u, o) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < full {
        // SAFETY: i + 8 <= full <= n for all three slices.
        unsafe {
            let x = _mm256_loadu_ps(g.add(i));
            let neg = _mm256_sub_ps(_mm256_setzero_ps(), x);
            let e = exp8(neg);
            let s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(o.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(u.add(i))));
        }
        i += 8;
    }
    generic::silu_mul(&gate[full..], &up[full..], &mut out[full..]);
}
