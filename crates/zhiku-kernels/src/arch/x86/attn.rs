//! Attention's inner loops in AVX2/FMA (F16C for an f16 cache): the scores q·k, the
//! softmax's exp, and the weighted sum of values, which keeps each output head in registers
//! over all n values (32 floats at a time), so a value row costs one load per multiply-add
//! and the output is written once.

use std::arch::x86_64::*;

use crate::heads::{HeadGroup, KvRows, load};

/// 8 cached elements from `p`, widened to f32.
#[inline(always)]
unsafe fn load8(rows: KvRows<'_>, at: usize) -> __m256 {
    // SAFETY (both arms): the caller guarantees at + 8 <= the cache's length.
    unsafe {
        match rows {
            KvRows::F32(s) => _mm256_loadu_ps(s.as_ptr().add(at)),
            KvRows::F16(s) => _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(at).cast())),
        }
    }
}

/// Tokens ahead whose rows are prefetched: a paged cache scatters rows over blocks
/// (a new page every block), so the hardware prefetcher cannot run ahead of the loop,
/// and each first touch of a row would otherwise wait for memory.
const AHEAD: usize = 8;

/// Asks for the `d` elements at `at` (one cache row) to be brought into L1.
#[inline(always)]
unsafe fn prefetch(rows: KvRows<'_>, at: usize, d: usize) {
    let (p, bytes) = match rows {
        KvRows::F32(s) => (s.as_ptr().wrapping_add(at).cast::<i8>(), 4 * d),
        KvRows::F16(s) => (s.as_ptr().wrapping_add(at).cast::<i8>(), 2 * d),
    };
    let mut off = 0;
    while off < bytes {
        // SAFETY: a prefetch is a hint and never faults; the address is only computed
        // (wrapping), not dereferenced.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
        off += 64;
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only arithmetic; AVX is enabled by the caller's features.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// exp of 8 lanes (Cephes' polynomial on x − n·ln 2, times 2^n): relative error a few
/// parts in 10^7 over the range softmax needs (x ≤ 0); lanes below −87.3 give 2^−126.
#[inline(always)]
pub unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: register-only arithmetic; AVX2 and FMA are enabled by the caller.
    unsafe {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.336_54)),
            _mm256_set1_ps(88.0),
        );
        let fx = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let n = _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127));
        _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n)))
    }
}

/// As the portable `exp_shifted`: scores become exp(s − max); returns (max, Σ exp).
///
/// # Safety
/// AVX2 and FMA are present.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_shifted(sc: &mut [f32]) -> (f32, f32) {
    let n = sc.len();
    let full = n / 8 * 8;
    let p = sc.as_mut_ptr();
    // SAFETY: every vector access is at i + 8 <= full <= n.
    unsafe {
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(8) {
            mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(i)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
        let max = lanes
            .iter()
            .chain(&sc[full..])
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let m = _mm256_set1_ps(max);
        let mut sv = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            sv = _mm256_add_ps(sv, e);
        }
        let mut sum = hsum(sv);
        for x in &mut sc[full..] {
            *x = (*x - max).exp();
            sum += *x;
        }
        (max, sum)
    }
}

/// scores[h·n + j] = scale · q_h·k_j.
///
/// # Safety
/// AVX2, FMA and F16C are present; rows[j] + col + d is inside `keys`; q has heads·d
/// elements and scores heads·n.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores(g: &HeadGroup<'_>, scores: &mut [f32]) {
    let (d, n) = (g.d, g.rows.len());
    let full = d / 8 * 8;
    let q = g.q.as_ptr();
    for &row in g.rows.iter().take(AHEAD) {
        // SAFETY: hints only.
        unsafe {
            prefetch(g.keys, row + g.col, d);
            prefetch(g.values, row + g.col, d);
        }
    }
    for (j, &row) in g.rows.iter().enumerate() {
        let at = row + g.col;
        if let Some(&next) = g.rows.get(j + AHEAD) {
            // SAFETY: hints only. The values are fetched here too: the weighted sum
            // reads them right after, and they would miss as the keys do.
            unsafe {
                prefetch(g.keys, next + g.col, d);
                prefetch(g.values, next + g.col, d);
            }
        }
        for h in 0..g.heads {
            // SAFETY: qh + c + 8 <= heads·d for c < full; at + c + 8 <= the cache
            // (caller); the tail reads stay below d.
            unsafe {
                let qh = q.add(h * d);
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let mut c = 0;
                while c + 16 <= full {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh.add(c)), load8(g.keys, at + c), a0);
                    a1 = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qh.add(c + 8)),
                        load8(g.keys, at + c + 8),
                        a1,
                    );
                    c += 16;
                }
                if c < full {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh.add(c)), load8(g.keys, at + c), a0);
                }
                let mut s = hsum(_mm256_add_ps(a0, a1));
                for c in full..d {
                    s += *qh.add(c) * load(g.keys, at + c);
                }
                *scores.get_unchecked_mut(h * n + j) = s * g.scale;
            }
        }
    }
}

/// out_h = Σ_j scores[h·n + j] · v_j, 32 output floats of a head held in registers
/// over all j.
///
/// # Safety
/// As [`scores`], for `values`; out has heads·d elements (zeroed).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum(g: &HeadGroup<'_>, scores: &[f32], out: &mut [f32]) {
    let (d, n) = (g.d, g.rows.len());
    let full = d / 8 * 8;
    for h in 0..g.heads {
        let w = &scores[h * n..(h + 1) * n];
        let o = out.as_mut_ptr();
        let mut c = 0;
        while c < full {
            let lanes = ((full - c) / 8).min(4);
            // SAFETY: c + 8·lanes <= d, so every load is inside its row (caller) and
            // every store inside head h of out.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); 4];
                for (j, &row) in g.rows.iter().enumerate() {
                    let wj = _mm256_set1_ps(*w.get_unchecked(j));
                    let at = row + g.col + c;
                    for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                        *a = _mm256_fmadd_ps(wj, load8(g.values, at + 8 * l), *a);
                    }
                }
                for (l, a) in acc.iter().enumerate().take(lanes) {
                    _mm256_storeu_ps(o.add(h * d + c + 8 * l), *a);
                }
            }
            c += 8 * lanes;
        }
        for c in full..d {
            let mut s = 0f32;
            for (j, &row) in g.rows.iter().enumerate() {
                s += w[j] * load(g.values, row + g.col + c);
            }
            out[h * d + c] = s;
        }
    }
}
