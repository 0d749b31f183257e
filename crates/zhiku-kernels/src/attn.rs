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
    let (heads, d) = (g.heads, g.d);
    if g.q.len() != heads * d {
        return length("attention queries [heads, d]", heads * d, g.q.len());
    }
    if out.len() != heads * d {
        return length("attention output [heads, d]", heads * d, out.len());
    }
    // Every row inside both caches: the loops below then read without checks.
    let need = g.rows.iter().map(|&r| r + g.col + d).max().unwrap_or(0);
    check_caches(g.keys, g.values, need)?;
    let chunks = g.rows.len().div_ceil(CHUNK).max(1);
    let mut parts = vec![0f32; chunks * heads * (d + 2)];
    chunk_partials(path, g, 0..chunks, scores, &mut parts);
    combine(&parts, chunks, heads, d, out);
    Ok(())
}

/// Tokens per partial softmax. Every (row, KV group) is computed in chunks of this many
/// tokens, combined in order, whatever else shares its batch and however the work is spread
/// over threads: a row's result is then the same bits alone or in any batch.
const CHUNK: usize = 64;

/// Partials of chunks `range` of `g`'s tokens into `parts` (one stride of heads·(d + 2)
/// per chunk: the unnormalised outputs, then the maxima, then the sums).
fn chunk_partials(
    path: SimdPath,
    g: &HeadGroup<'_>,
    range: std::ops::Range<usize>,
    scores: &mut Vec<f32>,
    parts: &mut [f32],
) {
    let (heads, d) = (g.heads, g.d);
    let stride = heads * (d + 2);
    for (c, p) in range.zip(parts.chunks_exact_mut(stride)) {
        let tokens = &g.rows[(c * CHUNK).min(g.rows.len())..g.rows.len().min((c + 1) * CHUNK)];
        let hg = HeadGroup { rows: tokens, ..*g };
        let (o, ml) = p.split_at_mut(heads * d);
        let (m, l) = ml.split_at_mut(heads);
        partial(path, &hg, scores, o, m, l);
    }
}

/// out_h = Σ_c e^(m_c − M) o_c / Σ_c e^(m_c − M) l_c over the chunks' partials, in chunk
/// order (the one combination every path uses).
fn combine(parts: &[f32], chunks: usize, heads: usize, d: usize, out: &mut [f32]) {
    let stride = heads * (d + 2);
    let at = |c: usize, k: usize| parts[c * stride + k];
    for h in 0..heads {
        let big = (0..chunks)
            .map(|c| at(c, heads * d + h))
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f32;
        let oh = &mut out[h * d..(h + 1) * d];
        oh.fill(0.0);
        for c in 0..chunks {
            let m = at(c, heads * d + h);
            if m == f32::NEG_INFINITY {
                continue;
            }
            let w = (m - big).exp();
            total += w * at(c, heads * d + heads + h);
            let base = c * stride + h * d;
            for (x, &y) in oh.iter_mut().zip(&parts[base..base + d]) {
                *x += w * y;
            }
        }
        let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
        oh.iter_mut().for_each(|x| *x *= inv);
    }
}

fn length<T>(what: &'static str, expected: usize, got: usize) -> Result<T, KernelError> {
    Err(KernelError::Length {
        what,
        expected,
        got,
    })
}

fn check_caches(keys: KvRows<'_>, values: KvRows<'_>, need: usize) -> Result<(), KernelError> {
    for (what, rows) in [("attention keys", keys), ("attention values", values)] {
        if need > rows.len() {
            return length(what, need, rows.len());
        }
    }
    Ok(())
}

/// The group's attention over its tokens before normalisation: out_h = Σ_j e_hj · v_j with
/// e_hj = exp(s_hj − max_h), and sum_h = Σ_j e_hj. Chunks of one token range computed
/// apart combine exactly through (max, sum) (see [`attend_batch`]).
///
/// The caller has checked every length and that every row lies inside both caches.
fn partial(
    path: SimdPath,
    g: &HeadGroup<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
) {
    let (heads, d, n) = (g.heads, g.d, g.rows.len());
    out.fill(0.0);
    max.fill(f32::NEG_INFINITY);
    sum.fill(0.0);
    if n == 0 || heads == 0 || d == 0 {
        return;
    }
    scores.clear();
    scores.resize(heads * n, 0.0);
    match path {
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 | SimdPath::Avx512 | SimdPath::Avx512Vnni => {
            // SAFETY: the path is supported (AVX2, FMA and F16C were detected); every row
            // offset plus d is inside its cache (the caller checked); q, out and scores
            // have heads·d, heads·d and heads·n elements.
            unsafe { x86::scores(g, scores) };
            for (h, sc) in scores.chunks_exact_mut(n).enumerate() {
                // SAFETY: as above (AVX2 and FMA present).
                (max[h], sum[h]) = unsafe { x86::exp_shifted(sc) };
            }
            // SAFETY: as above.
            unsafe { x86::weighted_sum(g, scores, out) };
        }
        _ => {
            scalar_scores(g, scores);
            for (h, sc) in scores.chunks_exact_mut(n).enumerate() {
                (max[h], sum[h]) = exp_shifted(sc);
            }
            scalar_weighted_sum(g, scores, out);
        }
    }
}

/// Many query rows at once (a batched step: several sequences, each row at its own
/// position), every row with all its heads, run on the kernel pool.
pub struct AttnBatch<'a> {
    /// Queries, [rows, heads, d] row-major.
    pub q: &'a [f32],
    pub heads: usize,
    /// Key/value heads; `heads` is a multiple of it (grouped-query attention).
    pub kv_heads: usize,
    pub d: usize,
    /// Caches of rows of kv_heads · d elements (KV head g at column g · d).
    pub keys: KvRows<'a>,
    pub values: KvRows<'a>,
    /// Per query row, where each token it attends to starts in the caches.
    pub tokens: &'a [&'a [usize]],
    /// Multiplies every score (1/√d).
    pub scale: f32,
}

thread_local! {
    /// Per worker: the scores of one chunk, and the partials of a pair done whole.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// out [rows, heads, d]: every row of the batch attends to its own tokens. Work is split
/// over (row, KV group) pairs, and a pair's chunks of tokens over several jobs when pairs
/// are too few for the threads; either way each pair is computed in the same chunks and
/// combined in the same order (see [`CHUNK`]), so the split changes no bit.
pub fn attend_batch(b: &AttnBatch<'_>, out: &mut [f32]) -> Result<(), KernelError> {
    attend_batch_with(best_path(), b, out)
}

/// [`attend_batch`] on a chosen path (tests compare the paths).
#[doc(hidden)]
pub fn attend_batch_with(
    path: SimdPath,
    b: &AttnBatch<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !path.supported() {
        return Err(KernelError::Unsupported(path));
    }
    let (heads, kv, d) = (b.heads, b.kv_heads, b.d);
    let rows = b.tokens.len();
    if kv == 0 || heads % kv != 0 {
        return Err(KernelError::Attention(format!(
            "{heads} query heads are no multiple of {kv} key/value heads"
        )));
    }
    if b.q.len() != rows * heads * d {
        return length(
            "attention queries [rows, heads, d]",
            rows * heads * d,
            b.q.len(),
        );
    }
    if out.len() != rows * heads * d {
        return length(
            "attention output [rows, heads, d]",
            rows * heads * d,
            out.len(),
        );
    }
    // Every token of every row inside both caches. Rows of one sequence usually share one
    // token list, each a prefix of the next: only the new part of such a list is scanned.
    let width = kv * d;
    let mut need = 0usize;
    let mut seen: Option<(*const usize, usize)> = None;
    for t in b.tokens {
        let from = match seen {
            Some((p, len)) if p == t.as_ptr() && len <= t.len() => len,
            _ => 0,
        };
        need = need.max(t[from..].iter().map(|&r| r + width).max().unwrap_or(0));
        seen = Some((t.as_ptr(), t.len()));
    }
    check_caches(b.keys, b.values, need)?;
    out.fill(0.0);
    let group = heads / kv;
    if rows == 0 || group == 0 || d == 0 {
        return Ok(());
    }

    // Jobs of a pair: all its chunks in one job when pairs are enough to balance the
    // threads, else its chunks spread over several jobs (at least one chunk each).
    let threads = crate::threads();
    let pairs = rows * kv;
    let jobs_per_pair = if threads == 1 || pairs >= 4 * threads {
        1
    } else {
        (8 * threads).div_ceil(pairs)
    };
    // Jobs: (row, group, chunk range, first partial slot, or None when the job is the
    // whole pair and combines it itself).
    let mut jobs = Vec::with_capacity(pairs);
    let mut split = Vec::new();
    let mut slots = 0usize;
    for (r, t) in b.tokens.iter().enumerate() {
        let chunks = t.len().div_ceil(CHUNK).max(1);
        let per_job = chunks.div_ceil(jobs_per_pair);
        for g in 0..kv {
            if per_job >= chunks {
                jobs.push((r, g, 0..chunks, None));
            } else {
                split.push((r, g, slots, chunks));
                let mut c = 0;
                while c < chunks {
                    let end = chunks.min(c + per_job);
                    jobs.push((r, g, c..end, Some(slots + c)));
                    c = end;
                }
                slots += chunks;
            }
        }
    }
    let stride = group * (d + 2);
    let mut partials = vec![0f32; slots * stride];
    let out_ptr = crate::OutPtr(out.as_mut_ptr());
    let part_ptr = crate::OutPtr(partials.as_mut_ptr());
    crate::pool::parallel_for(jobs.len(), |i| {
        let (r, g, ref range, slot) = jobs[i];
        let hg = HeadGroup {
            q: &b.q[(r * heads + g * group) * d..(r * heads + (g + 1) * group) * d],
            heads: group,
            d,
            keys: b.keys,
            values: b.values,
            rows: b.tokens[r],
            col: g * d,
            scale: b.scale,
        };
        SCRATCH.with_borrow_mut(|(scores, local)| match slot {
            None => {
                local.resize(range.len() * stride, 0.0);
                chunk_partials(path, &hg, range.clone(), scores, local);
                // SAFETY: row r's group g occupies out[(r·heads + g·group)·d ..][..group·d],
                // written by this job only; `out` outlives the parallel section.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.get().add((r * heads + g * group) * d),
                        group * d,
                    )
                };
                combine(local, range.len(), group, d, o);
            }
            Some(first) => {
                // SAFETY: slots first..first + range.len() are partials[first·stride ..]
                // [..range.len()·stride], written by this job only; `partials` outlives
                // the parallel section.
                let p = unsafe {
                    std::slice::from_raw_parts_mut(
                        part_ptr.get().add(first * stride),
                        range.len() * stride,
                    )
                };
                chunk_partials(path, &hg, range.clone(), scores, p);
            }
        });
    });
    // Pairs split over jobs, combined here from their chunks' partials.
    for (r, g, first, chunks) in split {
        let o = &mut out[(r * heads + g * group) * d..(r * heads + (g + 1) * group) * d];
        combine(
            &partials[first * stride..(first + chunks) * stride],
            chunks,
            group,
            d,
            o,
        );
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

/// scores become exp(s − max) (max subtracted first, so exp cannot overflow); returns
/// (max, Σ exp).
fn exp_shifted(scores: &mut [f32]) -> (f32, f32) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    (max, sum)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
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
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
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

    /// A batch (one long row split into chunks; many rows of one sequence sharing one
    /// token list; rows of other sequences) equals each row's groups attended alone on the
    /// portable path, on every path and both cache types.
    #[test]
    fn batches_match_rows_attended_alone() {
        let mut seed = 11;
        for &(heads, kv, d, lens) in &[
            (9, 3, 64, &[1000usize][..]),
            (14, 2, 64, &[1, 2, 3, 17, 300, 301][..]),
            (4, 4, 40, &[70, 5, 129][..]),
            (6, 1, 16, &[][..]),
        ] {
            let width = kv * d;
            let slots = lens.iter().copied().max().unwrap_or(0) + 7;
            let keys: Vec<f32> = (0..slots * width).map(|_| lcg(&mut seed) * 4.0).collect();
            let values: Vec<f32> = (0..slots * width).map(|_| lcg(&mut seed)).collect();
            let keys16: Vec<u16> = keys.iter().map(|&x| f32_to_f16(x)).collect();
            let values16: Vec<u16> = values.iter().map(|&x| f32_to_f16(x)).collect();
            // One shared list (slots scattered), each row attending to a prefix of it.
            let all: Vec<usize> = (0..slots).map(|j| ((j * 5 + 2) % slots) * width).collect();
            let tokens: Vec<&[usize]> = lens.iter().map(|&n| &all[..n]).collect();
            let rows = tokens.len();
            let q: Vec<f32> = (0..rows * heads * d).map(|_| lcg(&mut seed)).collect();
            for half in [false, true] {
                let (k, v) = if half {
                    (KvRows::F16(&keys16), KvRows::F16(&values16))
                } else {
                    (KvRows::F32(&keys), KvRows::F32(&values))
                };
                let group = heads / kv;
                let mut reference = vec![0f32; rows * heads * d];
                for (r, t) in tokens.iter().enumerate() {
                    for g in 0..kv {
                        let at = (r * heads + g * group) * d;
                        let hg = HeadGroup {
                            q: &q[at..at + group * d],
                            heads: group,
                            d,
                            keys: k,
                            values: v,
                            rows: t,
                            col: g * d,
                            scale: 0.125,
                        };
                        let o = &mut reference[at..at + group * d];
                        attend_with(SimdPath::Scalar, &hg, &mut Vec::new(), o).unwrap();
                    }
                }
                let b = AttnBatch {
                    q: &q,
                    heads,
                    kv_heads: kv,
                    d,
                    keys: k,
                    values: v,
                    tokens: &tokens,
                    scale: 0.125,
                };
                for path in crate::supported_paths() {
                    let mut out = vec![1f32; rows * heads * d];
                    attend_batch_with(path, &b, &mut out).unwrap();
                    for (i, (a, r)) in out.iter().zip(&reference).enumerate() {
                        assert!(
                            (a - r).abs() <= 1e-5 * (1.0 + r.abs()),
                            "{path:?} heads {heads}/{kv} lens {lens:?} f16 {half} at {i}: {a} vs {r}"
                        );
                    }
                }
            }
        }
    }

    /// A row's output is the same bits alone (its chunks spread over jobs), in a batch big
    /// enough to give every pair one job, and through `attend`: batching changes nothing.
    #[test]
    fn a_row_gives_the_same_bits_alone_and_in_any_batch() {
        let mut seed = 11;
        let (heads, kv, d) = (6, 2, 64);
        let width = kv * d;
        let slots = 700;
        let keys: Vec<u16> = (0..slots * width)
            .map(|_| f32_to_f16(lcg(&mut seed) * 4.0))
            .collect();
        let values: Vec<u16> = (0..slots * width)
            .map(|_| f32_to_f16(lcg(&mut seed)))
            .collect();
        let all: Vec<usize> = (0..slots).map(|j| ((j * 7 + 3) % slots) * width).collect();
        let lens = [650usize, 1, 63, 64, 65, 129, 300, 512, 640, 200];
        let tokens: Vec<&[usize]> = lens.iter().map(|&n| &all[..n]).collect();
        let q: Vec<f32> = (0..lens.len() * heads * d)
            .map(|_| lcg(&mut seed))
            .collect();
        let batch = |rows: std::ops::Range<usize>| AttnBatch {
            q: &q[rows.start * heads * d..rows.end * heads * d],
            heads,
            kv_heads: kv,
            d,
            keys: KvRows::F16(&keys),
            values: KvRows::F16(&values),
            tokens: &tokens[rows],
            scale: 0.125,
        };
        for path in crate::supported_paths() {
            let mut together = vec![0f32; lens.len() * heads * d];
            attend_batch_with(path, &batch(0..lens.len()), &mut together).unwrap();
            for r in 0..lens.len() {
                let mut alone = vec![0f32; heads * d];
                attend_batch_with(path, &batch(r..r + 1), &mut alone).unwrap();
                let want = &together[r * heads * d..(r + 1) * heads * d];
                assert!(
                    alone
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{path:?}: row {r} ({} tokens) differs alone",
                    lens[r]
                );
                let group = heads / kv;
                for g in 0..kv {
                    let at = (r * heads + g * group) * d;
                    let hg = HeadGroup {
                        q: &q[at..at + group * d],
                        heads: group,
                        d,
                        keys: KvRows::F16(&keys),
                        values: KvRows::F16(&values),
                        rows: tokens[r],
                        col: g * d,
                        scale: 0.125,
                    };
                    let mut one = vec![0f32; group * d];
                    attend_with(path, &hg, &mut Vec::new(), &mut one).unwrap();
                    assert!(
                        one.iter()
                            .zip(&together[at..at + group * d])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{path:?}: row {r} group {g} differs through attend"
                    );
                }
            }
        }
    }

    /// Heads that do not group, queries of the wrong size and tokens past the cache are
    /// errors, not reads.
    #[test]
    fn bad_batches_are_refused() {
        let cache = vec![0f32; 4 * 32];
        let q = vec![0f32; 3 * 16];
        let tokens: Vec<&[usize]> = vec![&[0, 32]];
        let b = AttnBatch {
            q: &q,
            heads: 3,
            kv_heads: 2,
            d: 16,
            keys: KvRows::F32(&cache),
            values: KvRows::F32(&cache),
            tokens: &tokens,
            scale: 1.0,
        };
        let mut out = vec![0f32; 3 * 16];
        assert!(matches!(
            attend_batch(&b, &mut out),
            Err(KernelError::Attention(_))
        ));
        let b = AttnBatch { heads: 2, ..b };
        assert!(matches!(
            attend_batch(&b, &mut out),
            Err(KernelError::Length { .. })
        ));
        let past: Vec<&[usize]> = vec![&[0, 97]];
        let b = AttnBatch {
            q: &q[..32],
            tokens: &past,
            ..b
        };
        assert!(matches!(
            attend_batch(&b, &mut out[..32]),
            Err(KernelError::Length { .. })
        ));
        let fits: Vec<&[usize]> = vec![&[0, 96]];
        let b = AttnBatch { tokens: &fits, ..b };
        assert!(attend_batch(&b, &mut out[..32]).is_ok());
    }

    /// The SIMD exp stays within a few parts in 10^7 of the portable one.
    #[test]
    fn simd_exp_is_close() {
        if !SimdPath::Avx2.supported() {
            return;
        }
        let mut xs: Vec<f32> = (0..2001).map(|i| -100.0 + i as f32 * 0.05).collect();
        let mut reference = xs.clone();
        let (m0, s0) = exp_shifted(&mut reference);
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: AVX2 was detected above (FMA comes with it on every CPU of this path).
            let (m1, s1) = unsafe { x86::exp_shifted(&mut xs) };
            assert_eq!(m0, m1);
            assert!((s0 - s1).abs() <= 1e-6 * s0, "{s0} vs {s1}");
            for (a, b) in xs.iter().zip(&reference) {
                assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-37, "{a} vs {b}");
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
