//! The private weight layout: rows interleaved in groups of [`R`], one "group-block" per
//! ggml block column, so that one 32-byte load holds 4 consecutive elements of each of the
//! 8 rows and the dot products leave one output row per 32-bit lane.
//!
//! Every type is described by the same few regions inside a group-block (all sizes are
//! multiples of 16 bytes; every load is unaligned):
//! - `d` (8 × f16) and, for the types with a minimum, `m` / `dmin` (8 × f16);
//! - K-quants: sub-block scales (and mins) in pair order `[pair p][row r][2]`, u8 (Q6_K: i8);
//! - high bits, per byte `4r + t` of a 32-byte register: 5-bit types, for 8 chunks of 4
//!   elements, bit `c % 8` is bit 4 of row r's element `4c + t`; Q6_K, for 4 chunks, bits
//!   `2(c % 4)..` are bits 4..5 of that element (so one shift and one mask extract a chunk);
//! - the low 4 bits, nibble-packed: for a segment of `S` elements (32, or 64 for K-quants)
//!   register `i` holds elements `4i..4i+4` in its low nibbles and `S/2 + 4i..` in its high
//!   nibbles, 4 bytes per row; Q8_0 instead holds plain i8 chunks.
//!
//! Repacking goes through [`Canon`], an unpacked form of one group-block (integers and f16
//! bits, never floats), so parsing ggml blocks, writing the layout and reading it back are
//! separate, testable steps.

use crate::QuantType;

/// Weight rows per group (the lanes of one 256-bit accumulator).
pub const R: usize = 8;

/// One group-block unpacked: the integer codes and the raw f16 scale bits.
#[derive(Clone)]
pub struct Canon {
    /// Codes: unsigned 0..2^bits, or signed for Q8_0.
    pub q: [[i16; 256]; R],
    pub d: [u16; R],
    /// Q4_1/Q5_1: m; K-quants: dmin.
    pub m: [u16; R],
    /// K-quants: per sub-block scale (Q6_K: signed, 16 subs of 16).
    pub sc: [[i16; 16]; R],
    /// Q4_K/Q5_K: per sub-block min.
    pub mn: [[i16; 8]; R],
}

impl Default for Canon {
    fn default() -> Self {
        Canon {
            q: [[0; 256]; R],
            d: [0; R],
            m: [0; R],
            sc: [[0; 16]; R],
            mn: [[0; 8]; R],
        }
    }
}

/// Byte offsets of the regions inside one group-block of a quantized type.
#[derive(Debug, Clone, Copy)]
pub struct Regions {
    pub d: usize,
    pub m: usize,
    pub sc: usize,
    pub mn: usize,
    pub qh: usize,
    pub qs: usize,
    pub size: usize,
}

pub const fn regions(ty: QuantType) -> Regions {
    use QuantType::*;
    // (has m, scale bytes, min bytes, high-bit bytes, low-bit bytes)
    let (hm, sc, mn, qh, qs) = match ty {
        Q4_0 => (false, 0, 0, 0, 128),
        Q4_1 => (true, 0, 0, 0, 128),
        Q5_0 => (false, 0, 0, 32, 128),
        Q5_1 => (true, 0, 0, 32, 128),
        Q8_0 => (false, 0, 0, 0, 256),
        Q4K => (true, 64, 64, 0, 1024),
        Q5K => (true, 64, 64, 256, 1024),
        Q6K => (false, 128, 0, 512, 1024),
        F32 | F16 | BF16 => (false, 0, 0, 0, 0),
    };
    let d = 0;
    let m = 16;
    let scs = if hm { 32 } else { 16 };
    let mns = scs + sc;
    let qhs = mns + mn;
    let qss = qhs + qh;
    Regions {
        d,
        m,
        sc: scs,
        mn: mns,
        qh: qhs,
        qs: qss,
        size: qss + qs,
    }
}

/// Segment length of the nibble packing.
pub const fn segment(ty: QuantType) -> usize {
    if ty.block_elems() == 256 { 64 } else { 32 }
}

/// Where chunk `c` (elements `4c..4c+4` of the block) lives in the nibble region: the byte
/// offset of its 32-byte register and whether it is the high nibble.
#[inline(always)]
pub const fn nibble_pos(seg: usize, c: usize) -> (usize, bool) {
    let e = 4 * c;
    let s = e / seg;
    let w = e % seg;
    let half = seg / 2;
    let regs = half / 4;
    if w < half {
        ((s * regs + w / 4) * 32, false)
    } else {
        ((s * regs + (w - half) / 4) * 32, true)
    }
}

#[inline]
fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn wr16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}

/// ggml's 6-bit scale/min packing of Q4_K and Q5_K (`get_scale_min_k4`).
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Parse one ggml block (`b`, exactly `ty.block_bytes()` long) into row `r` of `c`.
pub fn ggml_to_canon(ty: QuantType, b: &[u8], r: usize, c: &mut Canon) {
    use QuantType::*;
    let q = &mut c.q[r];
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 => {
            c.d[r] = rd16(b, 0);
            let (qh, qs) = match ty {
                Q4_0 => (None, 2),
                Q4_1 => (None, 4),
                Q5_0 => (Some(2), 6),
                _ => (Some(4), 8),
            };
            if matches!(ty, Q4_1 | Q5_1) {
                c.m[r] = rd16(b, 2);
            }
            let h = qh.map_or(0, |o| {
                u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
            });
            for j in 0..16 {
                let lo = b[qs + j] & 0xF;
                let hi = b[qs + j] >> 4;
                q[j] = i16::from(lo) | (((h >> j) & 1) << 4) as i16;
                q[j + 16] = i16::from(hi) | (((h >> (j + 16)) & 1) << 4) as i16;
            }
        }
        Q8_0 => {
            c.d[r] = rd16(b, 0);
            for j in 0..32 {
                q[j] = i16::from(b[2 + j] as i8);
            }
        }
        Q4K | Q5K => {
            c.d[r] = rd16(b, 0);
            c.m[r] = rd16(b, 2);
            let scales = &b[4..16];
            for j in 0..8 {
                let (s, m) = get_scale_min_k4(j, scales);
                c.sc[r][j] = i16::from(s);
                c.mn[r][j] = i16::from(m);
            }
            let (qh, qs) = if ty == Q5K {
                (Some(16), 48)
            } else {
                (None, 16)
            };
            for s in 0..4 {
                for l in 0..32 {
                    let byte = b[qs + 32 * s + l];
                    let (h0, h1) = match qh {
                        Some(o) => (
                            i16::from((b[o + l] >> (2 * s)) & 1) << 4,
                            i16::from((b[o + l] >> (2 * s + 1)) & 1) << 4,
                        ),
                        None => (0, 0),
                    };
                    q[64 * s + l] = i16::from(byte & 0xF) | h0;
                    q[64 * s + 32 + l] = i16::from(byte >> 4) | h1;
                }
            }
        }
        Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            c.d[r] = rd16(b, 208);
            for (j, &s) in sc.iter().enumerate() {
                c.sc[r][j] = i16::from(s as i8);
            }
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                let y = &mut q[128 * half..];
                for l in 0..32 {
                    y[l] = i16::from((ql[l] & 0xF) | ((qh[l] & 3) << 4));
                    y[l + 32] = i16::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                    y[l + 64] = i16::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                    y[l + 96] = i16::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
                }
            }
        }
        F32 | F16 | BF16 => unreachable!("float types are not block-packed"),
    }
}

/// Write `c` as one group-block of the private layout (`out.len() == regions(ty).size`).
pub fn canon_to_gb(ty: QuantType, c: &Canon, out: &mut [u8]) {
    use QuantType::*;
    let g = regions(ty);
    let e = ty.block_elems();
    for r in 0..R {
        wr16(out, g.d + 2 * r, c.d[r]);
        if matches!(ty, Q4_1 | Q5_1 | Q4K | Q5K) {
            wr16(out, g.m + 2 * r, c.m[r]);
        }
    }
    match ty {
        Q4K | Q5K => {
            for p in 0..4 {
                for r in 0..R {
                    for t in 0..2 {
                        out[g.sc + 16 * p + 2 * r + t] = c.sc[r][2 * p + t] as u8;
                        out[g.mn + 16 * p + 2 * r + t] = c.mn[r][2 * p + t] as u8;
                    }
                }
            }
        }
        Q6K => {
            for p in 0..8 {
                for r in 0..R {
                    for t in 0..2 {
                        out[g.sc + 16 * p + 2 * r + t] = c.sc[r][2 * p + t] as i8 as u8;
                    }
                }
            }
        }
        _ => {}
    }
    if ty == Q8_0 {
        for ch in 0..8 {
            for r in 0..R {
                for t in 0..4 {
                    out[g.qs + 32 * ch + 4 * r + t] = c.q[r][4 * ch + t] as i8 as u8;
                }
            }
        }
        return;
    }
    let seg = segment(ty);
    for ch in 0..e / 4 {
        let (off, high) = nibble_pos(seg, ch);
        for r in 0..R {
            for t in 0..4 {
                let v = (c.q[r][4 * ch + t] & 0xF) as u8;
                let byte = &mut out[g.qs + off + 4 * r + t];
                if high {
                    *byte |= v << 4;
                } else {
                    *byte = (*byte & 0xF0) | v;
                }
            }
        }
        match ty {
            Q5_0 | Q5_1 | Q5K => {
                let (reg, bit) = (ch / 8, ch % 8);
                for r in 0..R {
                    for t in 0..4 {
                        let b4 = (c.q[r][4 * ch + t] >> 4) as u8 & 1;
                        out[g.qh + 32 * reg + 4 * r + t] |= b4 << bit;
                    }
                }
            }
            Q6K => {
                let (reg, a) = (ch / 4, ch % 4);
                for r in 0..R {
                    for t in 0..4 {
                        let two = ((c.q[r][4 * ch + t] >> 4) & 3) as u8;
                        out[g.qh + 32 * reg + 4 * r + t] |= two << (2 * a);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Read one group-block of the private layout back into `c` (the inverse of [`canon_to_gb`]).
pub fn gb_to_canon(ty: QuantType, b: &[u8], c: &mut Canon) {
    use QuantType::*;
    let g = regions(ty);
    let e = ty.block_elems();
    for r in 0..R {
        c.d[r] = rd16(b, g.d + 2 * r);
        if matches!(ty, Q4_1 | Q5_1 | Q4K | Q5K) {
            c.m[r] = rd16(b, g.m + 2 * r);
        }
    }
    match ty {
        Q4K | Q5K => {
            for p in 0..4 {
                for r in 0..R {
                    for t in 0..2 {
                        c.sc[r][2 * p + t] = i16::from(b[g.sc + 16 * p + 2 * r + t]);
                        c.mn[r][2 * p + t] = i16::from(b[g.mn + 16 * p + 2 * r + t]);
                    }
                }
            }
        }
        Q6K => {
            for p in 0..8 {
                for r in 0..R {
                    for t in 0..2 {
                        c.sc[r][2 * p + t] = i16::from(b[g.sc + 16 * p + 2 * r + t] as i8);
                    }
                }
            }
        }
        _ => {}
    }
    if ty == Q8_0 {
        for ch in 0..8 {
            for r in 0..R {
                for t in 0..4 {
                    c.q[r][4 * ch + t] = i16::from(b[g.qs + 32 * ch + 4 * r + t] as i8);
                }
            }
        }
        return;
    }
    let seg = segment(ty);
    for ch in 0..e / 4 {
        let (off, high) = nibble_pos(seg, ch);
        for r in 0..R {
            for t in 0..4 {
                let byte = b[g.qs + off + 4 * r + t];
                let mut v = i16::from(if high { byte >> 4 } else { byte & 0xF });
                match ty {
                    Q5_0 | Q5_1 | Q5K => {
                        let byte = b[g.qh + 32 * (ch / 8) + 4 * r + t];
                        v |= i16::from((byte >> (ch % 8)) & 1) << 4;
                    }
                    Q6K => {
                        let (reg, a) = (ch / 4, ch % 4);
                        let two = (b[g.qh + 32 * reg + 4 * r + t] >> (2 * a)) & 3;
                        v |= i16::from(two) << 4;
                    }
                    _ => {}
                }
                c.q[r][4 * ch + t] = v;
            }
        }
    }
}

/// Row `r` of a canonical group-block as f32, with the float operations in the order of
/// ggml's (and candle's) dequantizers, so the values are bit-identical to theirs.
pub fn canon_row_f32(ty: QuantType, c: &Canon, r: usize, out: &mut [f32]) {
    use crate::half::f16_to_f32;
    use QuantType::*;
    let d = f16_to_f32(c.d[r]);
    let m = f16_to_f32(c.m[r]);
    let q = &c.q[r];
    match ty {
        Q4_0 => (0..32).for_each(|j| out[j] = (q[j] - 8) as f32 * d),
        Q5_0 => (0..32).for_each(|j| out[j] = (q[j] - 16) as f32 * d),
        Q4_1 | Q5_1 => (0..32).for_each(|j| out[j] = q[j] as f32 * d + m),
        Q8_0 => (0..32).for_each(|j| out[j] = q[j] as f32 * d),
        Q4K | Q5K => {
            for j in 0..8 {
                let d1 = d * c.sc[r][j] as f32;
                let m1 = m * c.mn[r][j] as f32;
                for l in 0..32 {
                    out[32 * j + l] = d1 * q[32 * j + l] as f32 - m1;
                }
            }
        }
        Q6K => {
            for j in 0..16 {
                let ds = d * c.sc[r][j] as f32;
                for l in 0..16 {
                    out[16 * j + l] = ds * (q[16 * j + l] - 32) as f32;
                }
            }
        }
        F32 | F16 | BF16 => unreachable!("float types are not block-packed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_sizes_are_eight_ggml_blocks_or_close() {
        use QuantType::*;
        for (ty, want) in [
            (Q4_0, 8 * 18),
            (Q4_1, 8 * 20),
            (Q5_0, 8 * 22),
            (Q5_1, 8 * 24),
            (Q8_0, 8 * 34),
            (Q4K, 8 * 148),
            (Q5K, 8 * 180),
            (Q6K, 8 * 210),
        ] {
            assert_eq!(regions(ty).size, want, "{ty:?}");
        }
    }

    #[test]
    fn nibble_positions_cover_every_register_half_once() {
        for (seg, elems) in [(32, 32), (64, 256)] {
            let mut seen = std::collections::HashSet::new();
            for c in 0..elems / 4 {
                let (off, high) = nibble_pos(seg, c);
                assert!(off + 32 <= elems * R / 2);
                assert!(seen.insert((off, high)));
            }
        }
    }
}
