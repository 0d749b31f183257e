//! Attention's inner loops: a group of query heads that share one key/value head, against
//! n cached key and value rows that sit anywhere in a cache (a paged cache gives each token
//! its own slot). Scores q·k, softmax, then the weighted sum of values, with the dot
//! products and the accumulation in AVX2/FMA (F16C for an f16 cache) where the CPU has it,
//! portable code elsewhere.
//!
//! The weighted sum keeps each output head in registers over all n values (32 floats at a
//! time), so a value row costs one load per multiply-add and the output is written once.

use crate::{KernelError, SimdPath, best_path, half::f16_to_f32};

/// Cached key or value rows, f32 or IEEE half (as bits).
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl KvRows<'_> {
    fn len(&self) -> usize {
        match self {
            KvRows::F32(s) => s.len(),
            KvRows::F16(s) => s.len(),
        }
    }
}

/// One attention head group.
pub struct HeadGroup<'a> {
    /// Query heads, [heads, d] row-major.
    pub q: &'a [f32],
    pub heads: usize,
    pub d: usize,
    pub keys: KvRows<'a>,
    pub values: KvRows<'a>,
    /// Where token j's key (and value) starts: `rows[j] + col` in `keys` / `values`.
    pub rows: &'a [usize],
    pub col: usize,
    /// Multiplies every score (1/√d).
    pub scale: f32,
}

/// out [heads, d] = softmax_j(scale · q_h·k_j) · v_j for every head h of the group, over
/// the n = `rows.len()` tokens. `scores` is scratch (resized to heads · n).
pub fn attend(
    g: &HeadGroup<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attend_with(best_path(), g, scores, out)
}

/// [`attend`] on a chosen path (tests compare the paths).
#[doc(hidden)]
pub fn attend_with(
    path: SimdPath,
    g: &HeadGroup<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !path.supported() {
        return Err(KernelError::Unsupported(path));
    }
    let (heads, d, n) = (g.heads, g.d, g.rows.len());
    let bad = |what, expected, got| {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    };
    if g.q.len() != heads * d {
        return bad("attention queries [heads, d]", heads * d, g.q.len());
    }
    if out.len() != heads * d {
        return bad("attention output [heads, d]", heads * d, out.len());
    }
    // Every row inside both caches: the loops below then read without checks.
    let need = g.rows.iter().map(|&r| r + g.col + d).max().unwrap_or(0);
    for (what, rows) in [("attention keys", g.keys), ("attention values", g.values)] {
        if need > rows.len() {
            return bad(what, need, rows.len());
        }
    }
    out.fill(0.0);
    if n == 0 || heads == 0 || d == 0 {
        return Ok(());
    }
    scores.clear();
    scores.resize(heads * n, 0.0);
    match path {
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 | SimdPath::Avx512 | SimdPath::Avx512Vnni => {
            // SAFETY: the path is supported (AVX2, FMA and F16C were detected); every row
            // offset plus d is inside its cache (checked above); q, out and scores have
            // heads·d, heads·d and heads·n elements.
            unsafe { x86::scores(g, scores) };
            softmax_rows(scores, n);
            // SAFETY: as above.
            unsafe { x86::weighted_sum(g, scores, out) };
        }
        _ => {
            scalar_scores(g, scores);
            softmax_rows(scores, n);
            scalar_weighted_sum(g, scores, out);
        }
    }
    Ok(())
}

#[inline]
fn load(rows: KvRows<'_>, i: usize) -> f32 {
    match rows {
        KvRows::F32(s) => s[i],
        KvRows::F16(s) => f16_to_f32(s[i]),
    }
}

fn scalar_scores(g: &HeadGroup<'_>, scores: &mut [f32]) {
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

fn scalar_weighted_sum(g: &HeadGroup<'_>, scores: &[f32], out: &mut [f32]) {
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

/// Each run of n scores becomes its softmax (max subtracted first, so exp cannot overflow).
fn softmax_rows(scores: &mut [f32], n: usize) {
    for sc in scores.chunks_exact_mut(n) {
        let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in sc.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in sc.iter_mut() {
            *x *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{HeadGroup, KvRows};

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
        for (j, &row) in g.rows.iter().enumerate() {
            let at = row + g.col;
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
                        s += *qh.add(c) * super::load(g.keys, at + c);
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
                    s += w[j] * super::load(g.values, row + g.col + c);
                }
                out[h * d + c] = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::half::f32_to_f16;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Every SIMD path agrees with the portable one, f32 and f16 caches, odd sizes
    /// included (d not a multiple of 8 or 16; rows scattered and out of order).
    #[test]
    fn simd_paths_match_the_portable_one() {
        let mut seed = 7;
        for &(heads, d, n) in &[
            (1, 64, 1),
            (7, 64, 37),
            (2, 128, 300),
            (3, 40, 17),
            (4, 12, 5),
        ] {
            let width = 3 * d + 5;
            let slots = n + 9;
            let keys: Vec<f32> = (0..slots * width).map(|_| lcg(&mut seed) * 4.0).collect();
            let values: Vec<f32> = (0..slots * width).map(|_| lcg(&mut seed)).collect();
            let keys16: Vec<u16> = keys.iter().map(|&x| f32_to_f16(x)).collect();
            let values16: Vec<u16> = values.iter().map(|&x| f32_to_f16(x)).collect();
            let q: Vec<f32> = (0..heads * d).map(|_| lcg(&mut seed)).collect();
            let rows: Vec<usize> = (0..n).map(|j| ((j * 7 + 3) % slots) * width).collect();
            for half in [false, true] {
                let (k, v) = if half {
                    (KvRows::F16(&keys16), KvRows::F16(&values16))
                } else {
                    (KvRows::F32(&keys), KvRows::F32(&values))
                };
                let g = HeadGroup {
                    q: &q,
                    heads,
                    d,
                    keys: k,
                    values: v,
                    rows: &rows,
                    col: d + 2,
                    scale: 1.0 / (d as f32).sqrt(),
                };
                let mut scratch = Vec::new();
                let mut reference = vec![0f32; heads * d];
                attend_with(SimdPath::Scalar, &g, &mut scratch, &mut reference).unwrap();
                for path in crate::supported_paths() {
                    let mut out = vec![1f32; heads * d];
                    attend_with(path, &g, &mut scratch, &mut out).unwrap();
                    for (a, b) in out.iter().zip(&reference) {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{path:?} heads {heads} d {d} n {n} f16 {half}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// The softmax weights sum to one: with every value row equal to v, out is v.
    #[test]
    fn equal_values_come_back_unchanged() {
        let d = 16;
        let v: Vec<f32> = (0..d).map(|c| c as f32 - 3.5).collect();
        let values: Vec<f32> = v.repeat(50);
        let keys: Vec<f32> = (0..50 * d).map(|i| (i % 13) as f32 * 0.3).collect();
        let q = vec![0.7f32; 2 * d];
        let rows: Vec<usize> = (0..50).map(|j| j * d).collect();
        let g = HeadGroup {
            q: &q,
            heads: 2,
            d,
            keys: KvRows::F32(&keys),
            values: KvRows::F32(&values),
            rows: &rows,
            col: 0,
            scale: 0.25,
        };
        let mut out = vec![0f32; 2 * d];
        attend(&g, &mut Vec::new(), &mut out).unwrap();
        for h in 0..2 {
            for c in 0..d {
                assert!((out[h * d + c] - v[c]).abs() < 1e-5, "{out:?}");
            }
        }
    }

    /// A row past the cache, or a query of the wrong size, is an error, not a read.
    #[test]
    fn rows_outside_the_cache_are_refused() {
        let keys = vec![0f32; 64];
        let q = vec![0f32; 16];
        let mut out = vec![0f32; 16];
        let rows = [0usize, 49];
        let g = HeadGroup {
            q: &q,
            heads: 1,
            d: 16,
            keys: KvRows::F32(&keys),
            values: KvRows::F32(&keys),
            rows: &rows,
            col: 0,
            scale: 1.0,
        };
        assert!(matches!(
            attend(&g, &mut Vec::new(), &mut out),
            Err(KernelError::Length { .. })
        ));
        let g = HeadGroup {
            rows: &rows[..1],
            q: &q[..8],
            ..g
        };
        assert!(attend(&g, &mut Vec::new(), &mut out).is_err());
    }
}
