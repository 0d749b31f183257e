//! The portable kernel, and the definition of every path's arithmetic: integer dot products
//! per (sub-)block, exact in i32, then per block the same f32 operations in the same order
//! (fused multiply-adds), so a SIMD path that sums the same integers gives the same bits.

use std::ops::Range;

use crate::QuantType;
use crate::act::Acts;
use crate::half::f16_to_f32;
use crate::layout::{Canon, R, gb_to_canon, regions};

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
pub fn gemm_range(
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
