//! SwiGLU's gate, silu(g) · u, for a whole batch: candle runs it as three passes on one
//! thread (silu with libm's exp, then a multiply); here it is one pass with the vectorised
//! exp of the attention softmax, split over the kernel pool when the batch is large.

use crate::{KernelError, SimdPath, best_path};

/// Elements below which one thread does the whole batch (waking a worker costs more).
const MIN_PARALLEL: usize = 1 << 14;
/// Elements per work item of the pool.
const ITEM: usize = 1 << 12;

/// out[i] = silu(gate[i]) · up[i], with silu(x) = x / (1 + e^−x).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    silu_mul_with(best_path(), gate, up, out)
}

/// [`silu_mul`] on a chosen path (tests compare the paths).
#[doc(hidden)]
pub fn silu_mul_with(
    path: SimdPath,
    gate: &[f32],
    up: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !path.supported() {
        return Err(KernelError::Unsupported(path));
    }
    let n = gate.len();
    for (what, got) in [("swiglu up", up.len()), ("swiglu output", out.len())] {
        if got != n {
            return Err(KernelError::Length {
                what,
                expected: n,
                got,
            });
        }
    }
    if n < MIN_PARALLEL || crate::threads() == 1 {
        run(path, gate, up, out);
        return Ok(());
    }
    let items = n.div_ceil(ITEM);
    let dst = crate::OutPtr(out.as_mut_ptr());
    crate::pool::parallel_for(items, |i| {
        let r = i * ITEM..n.min((i + 1) * ITEM);
        // SAFETY: item i owns out[r] alone, inside `out` (r.end <= n), which outlives the
        // parallel section.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(r.start), r.len()) };
        run(path, &gate[r.clone()], &up[r], o);
    });
    Ok(())
}

fn run(path: SimdPath, gate: &[f32], up: &[f32], out: &mut [f32]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 | SimdPath::Avx512 | SimdPath::Avx512Vnni => {
            // SAFETY: the path is supported, so AVX2 and FMA are present; the three
            // slices have one length.
            unsafe { silu_mul_avx2(gate, up, out) }
        }
        _ => scalar(gate, up, out),
    }
}

fn scalar(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// # Safety
/// AVX2 and FMA are present; the slices have one length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = gate.len();
    let full = n / 8 * 8;
    let (g, u, o) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < full {
        // SAFETY: i + 8 <= full <= n for all three slices.
        unsafe {
            let x = _mm256_loadu_ps(g.add(i));
            let neg = _mm256_sub_ps(_mm256_setzero_ps(), x);
            let e = crate::attn::x86::exp8(neg);
            let s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(o.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(u.add(i))));
        }
        i += 8;
    }
    scalar(&gate[full..], &up[full..], &mut out[full..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path agrees with libm's silu within the vectorised exp's error, over the
    /// range a gate takes and past it (large magnitudes saturate, never NaN).
    #[test]
    fn paths_match_the_portable_silu() {
        let n = 3 * ITEM + 13;
        let gate: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 20.0 - 50.0)
            .chain([-200.0, 200.0, 0.0, -0.0])
            .collect();
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + (i % 5) as f32).collect();
        let mut want = vec![0f32; gate.len()];
        scalar(&gate, &up, &mut want);
        for path in crate::supported_paths() {
            let mut got = vec![f32::NAN; gate.len()];
            silu_mul_with(path, &gate, &up, &mut got).unwrap();
            for (i, (&w, &g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    (w - g).abs() <= 1e-6 * w.abs().max(1.0),
                    "{path:?} at {i} (gate {}): {g} vs {w}",
                    gate[i]
                );
            }
        }
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let mut out = vec![0f32; 4];
        assert!(matches!(
            silu_mul(&[1.0; 4], &[1.0; 3], &mut out),
            Err(KernelError::Length { .. })
        ));
    }
}
