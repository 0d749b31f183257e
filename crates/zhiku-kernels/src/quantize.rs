//! Reference quantizers, f32 → ggml block bytes, for tests and benchmarks: the block
//! layouts are exactly ggml's (ggml-quants.c `quantize_row_*_ref`), the choice of scales is
//! the simple one (min/max per block or sub-block, no iterative search), which is enough to
//! produce valid, realistic data of every type.

use crate::QuantType;
use crate::half::{f16_to_f32, f32_to_f16};

/// Quantizes `x` (a whole number of blocks) into ggml's block format of `ty`.
/// Float types are written as their raw little-endian values.
pub fn quantize(ty: QuantType, x: &[f32]) -> Vec<u8> {
    use QuantType::*;
    let be = ty.block_elems();
    assert!(
        x.len().is_multiple_of(be),
        "length is no multiple of the block size"
    );
    let mut out = Vec::with_capacity(x.len() / be * ty.block_bytes());
    for xs in x.chunks_exact(be) {
        match ty {
            F32 => xs
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            F16 => xs
                .iter()
                .for_each(|&v| out.extend_from_slice(&f32_to_f16(v).to_le_bytes())),
            BF16 => xs.iter().for_each(|&v| {
                let b = (v.to_bits() + 0x7fff + ((v.to_bits() >> 16) & 1)) >> 16;
                out.extend_from_slice(&(b as u16).to_le_bytes())
            }),
            Q4_0 | Q5_0 => {
                let nmax = if ty == Q4_0 { 8.0 } else { 16.0 };
                let top = if ty == Q4_0 { 15 } else { 31 };
                let max = signed_max(xs);
                let d = max / -nmax;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u8> = xs
                    .iter()
                    .map(|&v| ((v * id + nmax + 0.5) as i32).clamp(0, top) as u8)
                    .collect();
                out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                push_5bit(ty == Q5_0, &q, &mut out);
            }
            Q4_1 | Q5_1 => {
                let top = if ty == Q4_1 { 15.0 } else { 31.0 };
                let (mn, mx) = min_max(xs);
                let d = (mx - mn) / top;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u8> = xs
                    .iter()
                    .map(|&v| (((v - mn) * id + 0.5) as i32).clamp(0, top as i32) as u8)
                    .collect();
                out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                out.extend_from_slice(&f32_to_f16(mn).to_le_bytes());
                push_5bit(ty == Q5_1, &q, &mut out);
            }
            Q8_0 => {
                let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                out.extend(xs.iter().map(|&v| (v * id).round() as i8 as u8));
            }
            Q4K | Q5K => quantize_q45k(ty == Q5K, xs, &mut out),
            Q6K => quantize_q6k(xs, &mut out),
        }
    }
    out
}

fn signed_max(xs: &[f32]) -> f32 {
    xs.iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn min_max(xs: &[f32]) -> (f32, f32) {
    xs.iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)))
}

/// qs (and for 5 bits qh first): element j in the low nibble of byte j, element j+16 in the
/// high nibble; bit 4 of element j is bit j of qh.
fn push_5bit(five: bool, q: &[u8], out: &mut Vec<u8>) {
    if five {
        let mut qh = 0u32;
        for (j, &v) in q.iter().enumerate() {
            qh |= u32::from(v >> 4) << j;
        }
        out.extend_from_slice(&qh.to_le_bytes());
    }
    for j in 0..16 {
        out.push((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
    }
}

fn nearest(v: f32) -> i32 {
    v.round() as i32
}

fn quantize_q45k(five: bool, xs: &[f32], out: &mut Vec<u8>) {
    let top = if five { 31.0 } else { 15.0 };
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let (mn, mx) = min_max(&xs[32 * j..32 * j + 32]);
        let mn = mn.min(0.0);
        scales[j] = (mx - mn) / top;
        mins[j] = -mn;
    }
    let max_scale = scales.iter().fold(0f32, |a, &b| a.max(b));
    let max_min = mins.iter().fold(0f32, |a, &b| a.max(b));
    let d = f16_to_f32(f32_to_f16(max_scale / 63.0));
    let dmin = f16_to_f32(f32_to_f16(max_min / 63.0));
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = if d > 0.0 {
            nearest(scales[j] / d).clamp(0, 63) as u8
        } else {
            0
        };
        lm[j] = if dmin > 0.0 {
            nearest(mins[j] / dmin).clamp(0, 63) as u8
        } else {
            0
        };
    }
    let mut q = [0u8; 256];
    for j in 0..8 {
        let dl = d * f32::from(ls[j]);
        let ml = dmin * f32::from(lm[j]);
        for l in 0..32 {
            let v = xs[32 * j + l];
            q[32 * j + l] = if dl > 0.0 {
                nearest((v + ml) / dl).clamp(0, top as i32) as u8
            } else {
                0
            };
        }
    }
    // The 12-byte 6-bit packing read back by `get_scale_min_k4`.
    let mut sc = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            sc[j] = ls[j];
            sc[j + 4] = lm[j];
        } else {
            sc[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            sc[j - 4] |= (ls[j] >> 4) << 6;
            sc[j] |= (lm[j] >> 4) << 6;
        }
    }
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    out.extend_from_slice(&f32_to_f16(dmin).to_le_bytes());
    out.extend_from_slice(&sc);
    if five {
        let mut qh = [0u8; 32];
        for s in 0..4 {
            for l in 0..32 {
                qh[l] |= (q[64 * s + l] >> 4) << (2 * s);
                qh[l] |= (q[64 * s + 32 + l] >> 4) << (2 * s + 1);
            }
        }
        out.extend_from_slice(&qh);
    }
    for s in 0..4 {
        for l in 0..32 {
            out.push((q[64 * s + l] & 0xF) | ((q[64 * s + 32 + l] & 0xF) << 4));
        }
    }
}

fn quantize_q6k(xs: &[f32], out: &mut Vec<u8>) {
    let mut scales = [0f32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        *s = signed_max(&xs[16 * j..16 * j + 16]) / -32.0;
    }
    let max_scale = signed_max(&scales);
    let iscale = if max_scale != 0.0 {
        -128.0 / max_scale
    } else {
        0.0
    };
    let d = f16_to_f32(f32_to_f16(if iscale != 0.0 { 1.0 / iscale } else { 0.0 }));
    let mut sc = [0i8; 16];
    let mut q = [32u8; 256];
    for j in 0..16 {
        sc[j] = nearest(iscale * scales[j]).clamp(-128, 127) as i8;
        let ds = d * f32::from(sc[j]);
        if ds == 0.0 {
            continue;
        }
        for l in 0..16 {
            q[16 * j + l] = (nearest(xs[16 * j + l] / ds).clamp(-32, 31) + 32) as u8;
        }
    }
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for half in 0..2 {
        let q = &q[128 * half..];
        for l in 0..32 {
            let (q1, q2, q3, q4) = (q[l], q[l + 32], q[l + 64], q[l + 96]);
            ql[64 * half + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            ql[64 * half + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            qh[32 * half + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
}
