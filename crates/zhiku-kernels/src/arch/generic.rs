//! The portable kernels: the table of the scalar path, and the reference every SIMD path
//! is tested against.
//!
//! The matmul here defines every path's arithmetic: integer dot products per (sub-)block,
//! exact in i32, then per block the same f32 operations in the same order (fused
//! multiply-adds), so a SIMD path that sums the same integers gives the same bits.

use std::ops::Range;

use super::{Kernels, MatmulJob};
use crate::act::{Acts, RowOut, finish_row, scale_of};
use crate::half::f16_to_f32;
use crate::heads::{HeadGroup, load};
use crate::layout::{Canon, R, gb_to_canon, regions};
use crate::{QuantType, SimdPath};

/// The scalar path: every function portable Rust, safe on any CPU.
pub static KERNELS: Kernels = Kernels {
    path: SimdPath::Scalar,
    quantize_row,
    gemm,
    scores,
    exp_shifted,
    weighted_sum,
    silu_mul,
};

/// Adds one group-block's contribution for activation row `i` and weight row `r`.
#[inline]
fn block_dot(ty: QuantType, c: &Canon, r: usize, a: &Acts, i: usize, b: usize, acc: f32) -> f32 {
    use QuantType::*;
    let k = a.k;
    let e = ty.block_elems();
    let x = &a.qs[i * k + b * e..i * k + (b + 1) * e];
    let q = &c.q[r][..e];
    let dw = f16_to_f32(c.d[r]);
    let dot =
        |lo: usize, hi: usize| -> i32 { (lo..hi).map(|t| i32::from(q[t]) * i32::from(x[t])).sum() };
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => {
            let dx = a.d[i * (k / 32) + b];
            let acc = (dot(0, 32) as f32).mul_add(dw * dx, acc);
            let mw = match ty {
                Q4_0 => dw * -8.0,
                Q5_0 => dw * -16.0,
                Q4_1 | Q5_1 => f16_to_f32(c.m[r]),
                _ => return acc,
            };
            mw.mul_add(a.s[i * (k / 32) + b], acc)
        }
        Q4K | Q5K => {
            let dx = a.d[i * (k / 256) + b];
            let mut isum = 0i32;
            let mut msum = 0i32;
            for j in 0..8 {
                isum += i32::from(c.sc[r][j]) * dot(32 * j, 32 * j + 32);
                msum += i32::from(c.mn[r][j]) * i32::from(a.b32[i * (k / 32) + 8 * b + j]);
            }
            let acc = (isum as f32).mul_add(dw * dx, acc);
            (-(msum as f32)).mul_add(f16_to_f32(c.m[r]) * dx, acc)
        }
        Q6K => {
            let dx = a.d[i * (k / 256) + b];
            let mut isum = 0i32;
            let mut csum = 0i32;
            for j in 0..16 {
                isum += i32::from(c.sc[r][j]) * dot(16 * j, 16 * j + 16);
                csum += i32::from(c.sc[r][j]) * i32::from(a.b16[i * (k / 16) + 16 * b + j]);
            }
            ((isum - 32 * csum) as f32).mul_add(dw * dx, acc)
        }
        F32 | F16 | BF16 => unreachable!("float types use gemm"),
    }
}

/// Computes outputs `rows × groups` (groups of [`R`] weight rows): `out(i, col, v)` stores
/// row `i`, column `col`.
fn gemm_range(
    ty: QuantType,
    w: &[u8],
    nb: usize,
    a: &Acts,
    rows: Range<usize>,
    groups: Range<usize>,
    mut out: impl FnMut(usize, usize, f32),
) {
    let gbs = regions(ty).size;
    let mut c = Canon::default();
    let mut acc = vec![0f32; rows.len() * R];
    for g in groups {
        acc.fill(0.0);
        for b in 0..nb {
            let at = (g * nb + b) * gbs;
            gb_to_canon(ty, &w[at..at + gbs], &mut c);
            for (ii, i) in rows.clone().enumerate() {
                for r in 0..R {
                    let s = &mut acc[ii * R + r];
                    *s = block_dot(ty, &c, r, a, i, b, *s);
                }
            }
        }
        for (ii, i) in rows.clone().enumerate() {
            for r in 0..R {
                out(i, g * R + r, acc[ii * R + r]);
            }
        }
    }
}

/// [`Kernels::gemm`]: the item's rows × groups of `job`, written into `job.y`.
///
/// # Safety
/// `job.y` is valid for writes at rows `rows` × the columns of `groups` (below `job.n`) and
/// nobody else writes there meanwhile.
unsafe fn gemm(ty: QuantType, job: &MatmulJob<'_>, rows: Range<usize>, groups: Range<usize>) {
    let (n, y) = (job.n, job.y);
    gemm_range(ty, job.w, job.nb, job.acts, rows, groups, |i, c, v| {
        if c < n {
            // SAFETY: (i, c) is inside y (i in rows, c < n) and written by this item only
            // (the caller's contract).
            unsafe { *y.get().add(i * n + c) = v };
        }
    });
}

/// Quantizes one row of activations into `o` (see [`crate::act`]).
pub fn quantize_row(x: &[f32], blk: usize, o: &mut RowOut<'_>) {
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

/// scores[h·n + j] = scale · q_h·k_j.
pub fn scores(g: &HeadGroup<'_>, scores: &mut [f32]) {
    let (d, n) = (g.d, g.rows.len());
    for (j, &row) in g.rows.iter().enumerate() {
        let at = row + g.col;
        for h in 0..g.heads {
            let q = &g.q[h * d..(h + 1) * d];
            let s: f32 = q
                .iter()
                .enumerate()
                .map(|(c, x)| x * load(g.keys, at + c))
                .sum();
            scores[h * n + j] = s * g.scale;
        }
    }
}

/// out_h += Σ_j scores[h·n + j] · v_j.
pub fn weighted_sum(g: &HeadGroup<'_>, scores: &[f32], out: &mut [f32]) {
    let (d, n) = (g.d, g.rows.len());
    for h in 0..g.heads {
        let o = &mut out[h * d..(h + 1) * d];
        for (j, &row) in g.rows.iter().enumerate() {
            let w = scores[h * n + j];
            for (c, x) in o.iter_mut().enumerate() {
                *x += w * load(g.values, row + g.col + c);
            }
        }
    }
}

/// scores become exp(s − max) (max subtracted first, so exp cannot overflow); returns
/// (max, Σ exp).
pub fn exp_shifted(scores: &mut [f32]) -> (f32, f32) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    (max, sum)
}

/// out[i] = silu(gate[i]) · up[i], with silu(x) = x / (1 + e^−x).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}
