//! The x86-64 matmul: one generic register tile (`MR` activation rows × one group of 8
//! weight rows, the weight rows in the 8 lanes of each accumulator), instantiated for AVX2
//! and, on CPUs that have them, AVX-512 (VL/BW: 32 registers, so no spills) and
//! AVX-512 VNNI (`vpdpbusd` instead of `vpmaddubsw` + `vpmaddwd`).
//!
//! The generic code is `#[inline(always)]` and has no target features of its own: it is
//! inlined into the `#[target_feature]` entry points below, where the intrinsics it calls
//! are inlined too. It computes exactly the integers and f32 operations of the portable
//! matmul ([`crate::arch::generic`]), so every path gives the same bits.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::QuantType;
use crate::act::Acts;
use crate::arch::MatmulJob;
use crate::layout::{R, nibble_pos, regions, segment};

/// The integer dot-product primitive of one instruction set. `P` is a partial sum of
/// u8 × i8 products: i16 pairs (AVX2, bounded by the caller's flush schedule) or i32.
pub trait Isa {
    /// # Safety
    /// The CPU must have the instruction set.
    unsafe fn acc(p: __m256i, w: __m256i, x: __m256i) -> __m256i;
    /// Signed weights (Q8_0): |w| × (x with w's sign), exact for every i8 pair.
    /// # Safety
    /// As [`Isa::acc`].
    unsafe fn acc_signed(p: __m256i, w: __m256i, x: __m256i) -> __m256i;
    /// Partial → i32 lanes, each the sum over its 4 (or 2 × 2) bytes.
    /// # Safety
    /// As [`Isa::acc`].
    unsafe fn flush(p: __m256i) -> __m256i;
    /// Partial → i32 lanes times a per-lane scale given as i16 pairs `(s, s)`.
    /// # Safety
    /// As [`Isa::acc`].
    unsafe fn flush_scaled(p: __m256i, sc: __m256i) -> __m256i;
}

pub struct Avx2;
pub struct Vnni;

impl Isa for Avx2 {
    #[inline(always)]
    unsafe fn acc(p: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { _mm256_add_epi16(p, _mm256_maddubs_epi16(w, x)) }
    }
    #[inline(always)]
    unsafe fn acc_signed(p: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            _mm256_add_epi16(
                p,
                _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)),
            )
        }
    }
    #[inline(always)]
    unsafe fn flush(p: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { _mm256_madd_epi16(p, _mm256_set1_epi16(1)) }
    }
    #[inline(always)]
    unsafe fn flush_scaled(p: __m256i, sc: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { _mm256_madd_epi16(p, sc) }
    }
}

impl Isa for Vnni {
    #[inline(always)]
    unsafe fn acc(p: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX-512 VNNI and VL.
        unsafe { _mm256_dpbusd_epi32(p, w, x) }
    }
    #[inline(always)]
    unsafe fn acc_signed(p: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX-512 VNNI and VL (which imply AVX2).
        unsafe { _mm256_dpbusd_epi32(p, _mm256_abs_epi8(w), _mm256_sign_epi8(x, w)) }
    }
    #[inline(always)]
    unsafe fn flush(p: __m256i) -> __m256i {
        p
    }
    #[inline(always)]
    unsafe fn flush_scaled(p: __m256i, sc: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2; the high i16 of each lane is the scale.
        unsafe { _mm256_mullo_epi32(p, _mm256_srai_epi32::<16>(sc)) }
    }
}

/// Raw views of the quantized activations (rows of `k`).
#[derive(Clone, Copy)]
struct ActPtrs {
    pub qs: *const i8,
    pub d: *const f32,
    pub s: *const f32,
    pub b32: *const i16,
    pub b16: *const i16,
    pub k: usize,
    /// Scales per row (k / block), and k / 32, k / 16: strides of the other arrays.
    pub nbk: usize,
    pub k32: usize,
    pub k16: usize,
}

impl ActPtrs {
    fn new(a: &Acts) -> Self {
        ActPtrs {
            qs: a.qs.as_ptr(),
            d: a.d.as_ptr(),
            s: a.s.as_ptr(),
            b32: a.b32.as_ptr(),
            b16: a.b16.as_ptr(),
            k: a.k,
            nbk: a.k / a.blk,
            k32: a.k / 32,
            k16: a.k / 16,
        }
    }
}

/// Byte masks that spread the 8 rows' pair-ordered sub-block scales `[row][2]` of pair
/// element `e` into i16 pairs `(s, s)`: unsigned (scale in the low byte) or signed (in the
/// high byte, then shifted down arithmetically).
const fn scale_mask(e: usize, signed: bool) -> [i8; 32] {
    let mut m = [0i8; 32];
    let mut l = 0;
    while l < 16 {
        // Lane l of the i16 view; rows 0..3 in the low 128 bits, 4..7 in the high.
        let row = l / 2;
        let src = (2 * row + e) as i8;
        let (lo, hi) = if signed { (-128, src) } else { (src, -128) };
        m[2 * l] = lo;
        m[2 * l + 1] = hi;
        l += 1;
    }
    m
}

static SC_MASKS: [[i8; 32]; 4] = [
    scale_mask(0, false),
    scale_mask(1, false),
    scale_mask(0, true),
    scale_mask(1, true),
];

/// # Safety
/// AVX2; `p` readable for 16 bytes.
#[inline(always)]
unsafe fn scales_pairs(p: *const u8, e: usize, signed: bool) -> __m256i {
    // SAFETY: the caller guarantees AVX2 and 16 readable bytes; the mask table is 32 bytes.
    unsafe {
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let m = _mm256_loadu_si256(SC_MASKS[e + 2 * usize::from(signed)].as_ptr().cast());
        let v = _mm256_shuffle_epi8(v, m);
        if signed { _mm256_srai_epi16::<8>(v) } else { v }
    }
}

/// Chunk `cs` of segment `seg` (elements `S·seg + 4cs ..+4` of all 8 rows, `S` the
/// segment length) of a group-block, as 32 code bytes. `cs` is a constant wherever this is
/// inlined (the callers unroll over it), so the nibble half and the shifts fold away.
///
/// # Safety
/// AVX2; `gb` points to a whole group-block of `ty` and `seg` is one of its segments.
#[inline(always)]
unsafe fn chunk(ty: QuantType, gb: *const u8, seg: usize, cs: usize) -> __m256i {
    let g = regions(ty);
    let slen = segment(ty);
    // SAFETY: every offset below stays inside the group-block (see `layout`).
    unsafe {
        if ty == QuantType::Q8_0 {
            return _mm256_loadu_si256(gb.add(g.qs + 32 * cs).cast());
        }
        let (off, high) = nibble_pos(slen, cs);
        let v = _mm256_loadu_si256(gb.add(g.qs + seg * slen * R / 2 + off).cast());
        let low4 = _mm256_set1_epi8(0x0F);
        let mut q = if high {
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4)
        } else {
            _mm256_and_si256(v, low4)
        };
        match ty {
            QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q5K => {
                // Bit (chunk % 8) of each byte is that byte's bit 4.
                let c = seg * slen / 4 + cs;
                let h = _mm256_loadu_si256(gb.add(g.qh + 32 * (c / 8)).cast());
                let h = match cs % 8 {
                    0 => _mm256_slli_epi16::<4>(h),
                    1 => _mm256_slli_epi16::<3>(h),
                    2 => _mm256_slli_epi16::<2>(h),
                    3 => _mm256_slli_epi16::<1>(h),
                    4 => h,
                    5 => _mm256_srli_epi16::<1>(h),
                    6 => _mm256_srli_epi16::<2>(h),
                    _ => _mm256_srli_epi16::<3>(h),
                };
                q = _mm256_or_si256(q, _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
            }
            QuantType::Q6K => {
                let c = seg * slen / 4 + cs;
                let h = _mm256_loadu_si256(gb.add(g.qh + 32 * (c / 4)).cast());
                let h = match cs % 4 {
                    0 => _mm256_slli_epi16::<4>(h),
                    1 => _mm256_slli_epi16::<2>(h),
                    2 => h,
                    _ => _mm256_srli_epi16::<2>(h),
                };
                q = _mm256_or_si256(q, _mm256_and_si256(h, _mm256_set1_epi8(0x30)));
            }
            _ => {}
        }
        q
    }
}

/// Expands `$body` once per listed constant, bound to `$i`: chunk loops are unrolled so
/// every layout offset in them is a constant.
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] $body:block) => {
        $( { let $i: usize = $n; $body } )*
    };
}

/// Chunks summed into one i16 partial before it must be widened (the AVX2 bound:
/// products of 4-bit codes × 127 fit 16 of them, 5-bit 8, 6-bit 4, signed 8-bit 2).
const fn flush_every(ty: QuantType) -> usize {
    use QuantType::*;
    match ty {
        Q4_0 | Q4_1 | Q4K => 8,
        Q5_0 | Q5_1 | Q5K => 4,
        Q6K => 2,
        _ => 1,
    }
}

/// One register tile: activation rows `i0..i0+MR` × group `g` over all `nb` blocks,
/// written to `y` rows (stride `ldy`), columns `8g..8g+cols`.
///
/// # Safety
/// The CPU has `S`'s instruction set and AVX2/FMA/F16C; `w` holds `nb` group-blocks of
/// `ty` for this group; `a` has rows `i0..i0+MR`; `y` is writable at those rows and columns.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<S: Isa, const MR: usize>(
    ty: QuantType,
    w: *const u8,
    nb: usize,
    a: ActPtrs,
    i0: usize,
    y: *mut f32,
    ldy: usize,
    col0: usize,
    cols: usize,
) {
    use QuantType::*;
    let g = regions(ty);
    let e = ty.block_elems();
    let fl = flush_every(ty);
    // SAFETY: the caller's contract; all offsets derive from the layout and `nb`, `k`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); MR];
        let zero = _mm256_setzero_si256();
        for b in 0..nb {
            let gb = w.add(b * g.size);
            let x = |i: usize, e0: usize| -> __m256i {
                let p = a.qs.add((i0 + i) * a.k + b * e + e0);
                _mm256_set1_epi32(p.cast::<i32>().read_unaligned())
            };
            let mut isum = [zero; MR];
            let mut part = [zero; MR];
            let slen = segment(ty);
            let cps = slen / 4;
            // Chunks per scale sub-block (K-quants); 32-element types have one scale.
            let sub_chunks = if ty == Q6K { 4 } else { 8 };
            let signed = ty == Q6K;
            let mut sc = zero;
            for seg in 0..e / slen {
                unroll!(cs in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                    if cs < cps {
                        let scaled = ty.block_elems() == 256;
                        if scaled && cs.is_multiple_of(sub_chunks) {
                            let j = seg * (cps / sub_chunks) + cs / sub_chunks;
                            sc = scales_pairs(gb.add(g.sc + 16 * (j / 2)), j % 2, signed);
                        }
                        let wq = chunk(ty, gb, seg, cs);
                        for i in 0..MR {
                            let xv = x(i, seg * slen + 4 * cs);
                            part[i] = if ty == Q8_0 {
                                S::acc_signed(part[i], wq, xv)
                            } else {
                                S::acc(part[i], wq, xv)
                            };
                        }
                        if (cs + 1).is_multiple_of(fl) {
                            for i in 0..MR {
                                let f = if scaled {
                                    S::flush_scaled(part[i], sc)
                                } else {
                                    S::flush(part[i])
                                };
                                isum[i] = _mm256_add_epi32(isum[i], f);
                                part[i] = zero;
                            }
                        }
                    }
                });
            }
            // Per block, the f32 steps of the portable `block_dot` in its order.
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(gb.add(g.d).cast()));
            for i in 0..MR {
                let row = i0 + i;
                let dx = _mm256_set1_ps(*a.d.add(row * a.nbk + b));
                match ty {
                    Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => {
                        let t = _mm256_mul_ps(dw, dx);
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), t, acc[i]);
                        if ty != Q8_0 {
                            let mw = match ty {
                                Q4_0 => _mm256_mul_ps(dw, _mm256_set1_ps(-8.0)),
                                Q5_0 => _mm256_mul_ps(dw, _mm256_set1_ps(-16.0)),
                                _ => _mm256_cvtph_ps(_mm_loadu_si128(gb.add(g.m).cast())),
                            };
                            let sx = _mm256_set1_ps(*a.s.add(row * a.k32 + b));
                            acc[i] = _mm256_fmadd_ps(mw, sx, acc[i]);
                        }
                    }
                    Q4K | Q5K => {
                        let mut msum = zero;
                        for p in 0..4 {
                            let mn =
                                _mm256_cvtepu8_epi16(_mm_loadu_si128(gb.add(g.mn + 16 * p).cast()));
                            let bs = a.b32.add(row * a.k32 + 8 * b + 2 * p);
                            let bs = _mm256_set1_epi32(bs.cast::<i32>().read_unaligned());
                            msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mn, bs));
                        }
                        let t = _mm256_mul_ps(dw, dx);
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), t, acc[i]);
                        let dm = _mm256_cvtph_ps(_mm_loadu_si128(gb.add(g.m).cast()));
                        let t2 = _mm256_mul_ps(dm, dx);
                        acc[i] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), t2, acc[i]);
                    }
                    Q6K => {
                        let mut csum = zero;
                        for p in 0..8 {
                            let sc =
                                _mm256_cvtepi8_epi16(_mm_loadu_si128(gb.add(g.sc + 16 * p).cast()));
                            let bs = a.b16.add(row * a.k16 + 16 * b + 2 * p);
                            let bs = _mm256_set1_epi32(bs.cast::<i32>().read_unaligned());
                            csum = _mm256_add_epi32(csum, _mm256_madd_epi16(sc, bs));
                        }
                        let v = _mm256_sub_epi32(isum[i], _mm256_slli_epi32::<5>(csum));
                        let t = _mm256_mul_ps(dw, dx);
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), t, acc[i]);
                    }
                    F32 | F16 | BF16 => unreachable!("float types use gemm"),
                }
            }
        }
        for (i, v) in acc.iter().enumerate() {
            let dst = y.add((i0 + i) * ldy + col0);
            if cols == R {
                _mm256_storeu_ps(dst, *v);
            } else {
                let mut tmp = [0f32; R];
                _mm256_storeu_ps(tmp.as_mut_ptr(), *v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
            }
        }
    }
}

/// One matmul's weights, activations and output, as raw pointers for the tiles.
#[derive(Clone, Copy)]
struct Job {
    /// `ceil(n/8)` groups of `nb` group-blocks.
    pub w: *const u8,
    pub nb: usize,
    pub a: ActPtrs,
    /// Row-major `m × n`.
    pub y: *mut f32,
    pub n: usize,
}

/// Rows × groups with tiles of at most `MR` rows.
///
/// # Safety
/// As [`tile`], for every row in `rows` and group in `groups` of `j`.
#[inline(always)]
unsafe fn range<S: Isa, const MR: usize>(
    ty: QuantType,
    j: &Job,
    rows: Range<usize>,
    groups: Range<usize>,
) {
    let Job { w, nb, a, y, n } = *j;
    let gsize = nb * regions(ty).size;
    for gi in groups {
        // SAFETY: the caller's contract covers every group and row of the ranges.
        unsafe {
            let wg = w.add(gi * gsize);
            let col0 = gi * R;
            let cols = R.min(n - col0);
            let mut i = rows.start;
            while i < rows.end {
                let left = rows.end - i;
                let step = if left >= MR {
                    tile::<S, MR>(ty, wg, nb, a, i, y, n, col0, cols);
                    MR
                } else if left >= 4 {
                    tile::<S, 4>(ty, wg, nb, a, i, y, n, col0, cols);
                    4
                } else if left == 3 {
                    tile::<S, 3>(ty, wg, nb, a, i, y, n, col0, cols);
                    3
                } else if left == 2 {
                    tile::<S, 2>(ty, wg, nb, a, i, y, n, col0, cols);
                    2
                } else {
                    tile::<S, 1>(ty, wg, nb, a, i, y, n, col0, cols);
                    1
                };
                i += step;
            }
        }
    }
}

/// Monomorphizes `range` per weight type so the type's branches fold away.
macro_rules! per_type {
    ($name:ident, $isa:ty, $mr:literal, $features:literal) => {
        /// The dispatch table's `gemm`.
        ///
        /// # Safety
        /// The CPU has the features named here; `job` is a matrix of `ty` (weights of
        /// `job.nb` blocks a row, activations of its rows) and `job.y` is writable at `rows`
        /// × the columns of `groups`, by this call only.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            ty: QuantType,
            job: &MatmulJob<'_>,
            rows: Range<usize>,
            groups: Range<usize>,
        ) {
            use QuantType::*;
            let j = &Job {
                w: job.w.as_ptr(),
                nb: job.nb,
                a: ActPtrs::new(job.acts),
                y: job.y.get(),
                n: job.n,
            };
            // SAFETY: forwarded contract; `ty` is matched to a constant for each arm.
            unsafe {
                match ty {
                    Q4_0 => range::<$isa, $mr>(Q4_0, j, rows, groups),
                    Q4_1 => range::<$isa, $mr>(Q4_1, j, rows, groups),
                    Q5_0 => range::<$isa, $mr>(Q5_0, j, rows, groups),
                    Q5_1 => range::<$isa, $mr>(Q5_1, j, rows, groups),
                    Q8_0 => range::<$isa, $mr>(Q8_0, j, rows, groups),
                    Q4K => range::<$isa, $mr>(Q4K, j, rows, groups),
                    Q5K => range::<$isa, $mr>(Q5K, j, rows, groups),
                    Q6K => range::<$isa, $mr>(Q6K, j, rows, groups),
                    F32 | F16 | BF16 => {}
                }
            }
        }
    };
}

per_type!(range_avx2, Avx2, 8, "avx2,fma,f16c");
per_type!(
    range_avx512,
    Avx2,
    8,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl"
);
per_type!(
    range_vnni,
    Vnni,
    8,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
);
