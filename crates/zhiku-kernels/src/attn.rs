//! Attention: a group of query heads that share one key/value head, against n cached key
//! and value rows that sit anywhere in a cache (a paged cache gives each token its own
//! slot). Scores q·k, softmax, then the weighted sum of values, in chunks of tokens combined
//! in a fixed order; the inner loops are the dispatch table's ([`crate::arch::Kernels`]).

use crate::arch::{self, Kernels};
pub use crate::heads::{HeadGroup, KvRows};
use crate::{KernelError, SimdPath};

/// out [heads, d] = softmax_j(scale · q_h·k_j) · v_j for every head h of the group, over
/// the n = `rows.len()` tokens. `scores` is scratch (resized to heads · n).
pub fn attend(
    g: &HeadGroup<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attend_on(arch::best(), g, scores, out)
}

/// [`attend`] on a chosen path (tests compare the paths).
#[doc(hidden)]
pub fn attend_with(
    path: SimdPath,
    g: &HeadGroup<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attend_on(arch::table(path)?, g, scores, out)
}

fn attend_on(
    kernels: &Kernels,
    g: &HeadGroup<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), KernelError> {
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
    chunk_partials(kernels, g, 0..chunks, scores, &mut parts);
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
    kernels: &Kernels,
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
        partial(kernels, &hg, scores, o, m, l);
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
    kernels: &Kernels,
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
    // SAFETY: the table is one this CPU runs; every row offset plus d is inside its cache
    // (the caller checked); q, out and scores have heads·d, heads·d and heads·n elements.
    unsafe {
        (kernels.scores)(g, scores);
        for (h, sc) in scores.chunks_exact_mut(n).enumerate() {
            (max[h], sum[h]) = (kernels.exp_shifted)(sc);
        }
        (kernels.weighted_sum)(g, scores, out);
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
    attend_batch_on(arch::best(), b, out)
}

/// [`attend_batch`] on a chosen path (tests compare the paths).
#[doc(hidden)]
pub fn attend_batch_with(
    path: SimdPath,
    b: &AttnBatch<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attend_batch_on(arch::table(path)?, b, out)
}

fn attend_batch_on(
    kernels: &Kernels,
    b: &AttnBatch<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
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
                chunk_partials(kernels, &hg, range.clone(), scores, local);
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
                chunk_partials(kernels, &hg, range.clone(), scores, p);
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

    /// Every path's exp stays within a few parts in 10^7 of the portable one.
    #[test]
    fn simd_exp_is_close() {
        let xs: Vec<f32> = (0..2001).map(|i| -100.0 + i as f32 * 0.05).collect();
        let mut reference = xs.clone();
        let (m0, s0) = crate::arch::generic::exp_shifted(&mut reference);
        for path in crate::supported_paths() {
            let kernels = crate::arch::table(path).unwrap();
            let mut got = xs.clone();
            // SAFETY: the table is one this CPU runs; exp_shifted has no other contract.
            let (m1, s1) = unsafe { (kernels.exp_shifted)(&mut got) };
            assert_eq!(m0, m1, "{path:?}");
            assert!((s0 - s1).abs() <= 1e-6 * s0, "{path:?}: {s0} vs {s1}");
            for (a, b) in got.iter().zip(&reference) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs() + 1e-37,
                    "{path:?}: {a} vs {b}"
                );
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
