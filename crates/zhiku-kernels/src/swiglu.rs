//! SwiGLU's gate, silu(g) · u, for a whole batch: candle runs it as three passes on one
//! thread (silu with libm's exp, then a multiply); here it is one pass with the vectorised
//! exp of the attention softmax, split over the kernel pool when the batch is large.

use crate::arch::{self, Kernels};
use crate::{KernelError, SimdPath};

/// Elements below which one thread does the whole batch (waking a worker costs more).
const MIN_PARALLEL: usize = 1 << 14;
/// Elements per work item of the pool.
const ITEM: usize = 1 << 12;

/// out[i] = silu(gate[i]) · up[i], with silu(x) = x / (1 + e^−x).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    silu_mul_on(arch::best(), gate, up, out)
}

/// [`silu_mul`] on a chosen path (tests compare the paths).
#[doc(hidden)]
pub fn silu_mul_with(
    path: SimdPath,
    gate: &[f32],
    up: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    silu_mul_on(arch::table(path)?, gate, up, out)
}

fn silu_mul_on(
    kernels: &Kernels,
    gate: &[f32],
    up: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
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
    // SAFETY (both calls): the table is one this CPU runs; the three slices have one
    // length (checked above).
    if n < MIN_PARALLEL || crate::threads() == 1 {
        unsafe { (kernels.silu_mul)(gate, up, out) };
        return Ok(());
    }
    let items = n.div_ceil(ITEM);
    let dst = crate::OutPtr(out.as_mut_ptr());
    crate::pool::parallel_for(items, |i| {
        let r = i * ITEM..n.min((i + 1) * ITEM);
        // SAFETY: item i owns out[r] alone, inside `out` (r.end <= n), which outlives the
        // parallel section.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(r.start), r.len()) };
        unsafe { (kernels.silu_mul)(&gate[r.clone()], &up[r], o) };
    });
    Ok(())
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
        let want: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect();
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
