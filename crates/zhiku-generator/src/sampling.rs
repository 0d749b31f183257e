//! How the next token is picked: greedy, temperature, top-k, top-p, repetition penalty, seed.

use candle_core::{D, DType, Device, Tensor};
use zhiku_lm::seeded::SplitMix64;
use zhiku_lm::transfer;
use zhiku_proto::limits::{MAX_STOP_STRING_BYTES, MAX_STOP_STRINGS};

use crate::error::GeneratorError;

/// Resolved sampling settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// 1 = off. Applied over the last `repeat_last_n` generated tokens only: penalising the
    /// prompt would keep the model from quoting the passages it must answer from.
    pub repetition_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// Not empty: score instead of generating. The sequence ends at its first logits with
    /// the log-probabilities of these token ids ([`crate::engine::Completion::candidate_logprobs`]),
    /// nothing sampled (NextTokenLogprobs).
    pub score_candidates: Vec<u32>,
}

pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;
pub const DEFAULT_REPETITION_PENALTY: f32 = 1.1;
pub const DEFAULT_REPEAT_LAST_N: usize = 64;
/// Used when a request gives no seed, so that unseeded requests are reproducible too.
pub const DEFAULT_SEED: u64 = 299_792_458;

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            repetition_penalty: DEFAULT_REPETITION_PENALTY,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed: DEFAULT_SEED,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            stop: Vec::new(),
            score_candidates: Vec::new(),
        }
    }
}

impl SamplingConfig {
    /// Checks ranges; the message names the field to fix.
    pub fn validate(&self) -> Result<(), GeneratorError> {
        let bad = |m: String| Err(GeneratorError::Validation(m));
        if !(0.0..=100.0).contains(&self.temperature) || self.temperature.is_nan() {
            return bad(format!(
                "`temperature` {} must be in [0, 100] (0 = greedy)",
                self.temperature
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("`top_p` {p} must be in (0, 1]"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad(format!(
                "`repetition_penalty` {} must be in (0, 10] (1 = off)",
                self.repetition_penalty
            ));
        }
        if self.max_new_tokens == 0 {
            return bad("`max_new_tokens` must be at least 1".into());
        }
        if self.stop.len() > MAX_STOP_STRINGS
            || self.stop.iter().any(|s| s.len() > MAX_STOP_STRING_BYTES)
        {
            return bad(format!(
                "`stop`: at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_STRING_BYTES} bytes"
            ));
        }
        Ok(())
    }

    /// What filters a sampled pick, or `None` for greedy (temperature 0).
    pub fn filter(&self) -> Option<Filter> {
        (self.temperature > 0.0).then(|| Filter {
            temperature: self.temperature as f32,
            top_k: self.top_k.filter(|k| *k > 0),
            top_p: self.top_p.filter(|p| *p < 1.0).map(|p| p as f32),
        })
    }
}

/// A sampled pick's filter: the logits divided by the temperature, then the `top_k` most
/// likely tokens kept (all tokens tied with the k-th too), then of those the most likely
/// ones until their probability reaches `top_p` (a group of tied tokens kept or dropped
/// whole; the group that crosses `top_p` is kept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Filter {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
}

/// A uniform number in [0, 1) from a sequence's seeded generator: one per sampled token,
/// drawn on the host so that a request's output depends only on its seed (never on what
/// shares its batch), whichever path picks the token.
pub fn uniform(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32
}

/// Below the best scaled logit by more than this, a token's probability is 0 in f32
/// (e^-128 underflows): the device clamps logits there, which keeps its threshold search
/// finite for any logits.
const FLOOR: f32 = 128.0;

/// The inverse-CDF draw: the first token in vocabulary order whose cumulative weight
/// exceeds `u` times the total, among tokens of positive weight (the last of them if
/// rounding leaves none).
fn draw(weights: &[f32], u: f32) -> u32 {
    let total: f32 = weights.iter().sum();
    let target = u * total;
    let mut cumulative = 0f32;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            cumulative += w;
            last = i;
            if cumulative > target {
                return i as u32;
            }
        }
    }
    last as u32
}

/// The greedy pick of a row on the host: its largest logit, the first of equals (as the
/// device's argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in logits.iter().enumerate() {
        if *x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The token `filter` and `u` pick from one row of logits, on the host: the kernel path's
/// sampler, and the reference the device's ([`pick_on_device`]) is tested against.
pub fn sample_host(logits: &[f32], filter: &Filter, u: f32) -> u32 {
    let inv = 1.0 / filter.temperature;
    let z: Vec<f32> = logits.iter().map(|l| l * inv).collect();
    let best = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut threshold = f32::NEG_INFINITY;
    if let Some(k) = filter.top_k.filter(|k| *k < z.len()) {
        let mut sorted = z.clone();
        sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        threshold = sorted[k - 1];
    }
    let mut weights: Vec<f32> = z
        .iter()
        .map(|&x| {
            if x >= threshold {
                (x.max(best - FLOOR) - best).exp()
            } else {
                0.0
            }
        })
        .collect();
    if let Some(p) = filter.top_p {
        let bound = p * weights.iter().sum::<f32>();
        let mut order: Vec<usize> = (0..z.len()).filter(|&i| weights[i] > 0.0).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
        let mut above = 0f32;
        let mut cut = f32::NEG_INFINITY;
        for group in order.chunk_by(|&a, &b| z[a] == z[b]) {
            if above >= bound {
                cut = z[group[0]];
                break;
            }
            above += group.iter().map(|&i| weights[i]).sum::<f32>();
        }
        for (w, &x) in weights.iter_mut().zip(&z) {
            if x <= cut {
                *w = 0.0;
            }
        }
    }
    draw(&weights, u)
}

/// What the device does to one row of a step's logits before its sequence sees it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRow<'a> {
    /// The repetition penalty (1 = none) over `recent`, the sequence's last generated tokens.
    pub penalty: f32,
    pub recent: &'a [u32],
    pub pick: Pick,
}

/// How a row's next token is picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    /// Not here: the sequence needs its row (a scoring request).
    None,
    /// The row's argmax (greedy).
    Argmax,
    /// Drawn with `u` from the filtered softmax ([`sample_host`]).
    Sample { filter: Filter, u: f32 },
}

/// Bisection steps of the device's top-k and top-p thresholds: the scaled logits span at
/// most [`FLOOR`] + 1, so the search ends within 129 · 2^-32 ≈ 3e-8 of the threshold; a
/// token closer than that below it is kept with it.
const SEARCH_STEPS: usize = 32;
/// The draw's cumulative sums are taken per chunk of this many tokens, then over chunks
/// (two small triangular matmuls instead of candle's `cumsum`, which would build a
/// vocab × vocab matrix).
const CHUNK: usize = 256;

/// The device's constants for sampling over a vocabulary, made once (uploaded at the
/// first sampled step, not per step).
pub struct DeviceSampler {
    vocab: usize,
    chunks: usize,
    /// Upper-triangular ones [CHUNK, CHUNK] and [chunks, chunks]: a row times it is its
    /// running sum.
    within: Tensor,
    across: Tensor,
    /// For each size: (j + 1) and (2·size − 2j − 1) of position j, [1, size]
    /// ([`first_crossing`]); and the positions 0..CHUNK (f32).
    within_rank: (Tensor, Tensor),
    across_rank: (Tensor, Tensor),
    positions: Tensor,
}

impl DeviceSampler {
    pub fn new(vocab: usize, device: &Device) -> candle_core::Result<Self> {
        let chunks = vocab.div_ceil(CHUNK).max(1);
        let triangle = |n: usize| {
            let ones: Vec<f32> = (0..n * n)
                .map(|i| if i / n <= i % n { 1.0 } else { 0.0 })
                .collect();
            transfer::upload(ones, (n, n), device)
        };
        let ranks = |n: usize| -> candle_core::Result<(Tensor, Tensor)> {
            let up: Vec<f32> = (0..n).map(|j| (j + 1) as f32).collect();
            let down: Vec<f32> = (0..n).map(|j| (2 * n - 2 * j - 1) as f32).collect();
            Ok((
                transfer::upload(up, (1, n), device)?,
                transfer::upload(down, (1, n), device)?,
            ))
        };
        Ok(Self {
            vocab,
            chunks,
            within: triangle(CHUNK)?,
            across: triangle(chunks)?,
            within_rank: ranks(CHUNK)?,
            across_rank: ranks(chunks)?,
            positions: transfer::upload(
                (0..CHUNK).map(|j| j as f32).collect(),
                (1, CHUNK),
                device,
            )?,
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }
}

/// Per row [n, size], the first position whose running sum exceeds `target` [n, 1] among
/// positions of positive weight, else the last position of positive weight: the argmax of
/// a score that ranks crossing positions first (earliest highest), then the others (latest
/// highest), weightless ones last. Robust to running sums that rounding left not quite
/// monotone: it never picks a position of weight 0 while the row has one that is not.
fn first_crossing(
    weights: &Tensor,
    running: &Tensor,
    target: &Tensor,
    (up, lift): &(Tensor, Tensor),
) -> candle_core::Result<Tensor> {
    // Position j scores j + 1, or 2·size − j once crossed (lifted by 2·size − 2j − 1).
    let positive = weights.gt(0f32)?.to_dtype(DType::F32)?;
    let crossed = running.broadcast_gt(target)?.to_dtype(DType::F32)?;
    let score = positive.mul(&crossed.broadcast_mul(lift)?.broadcast_add(up)?)?;
    score.argmax(D::Minus1)
}

/// Per row [n, 1], bisection between `lo` (where `holds` is false) and `hi` (where it is
/// true), [`SEARCH_STEPS`] times; returns the last `lo`, just below where `holds` turns
/// true.
fn search(
    mut lo: Tensor,
    mut hi: Tensor,
    holds: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    for _ in 0..SEARCH_STEPS {
        let mid = ((&lo + &hi)? * 0.5)?;
        let ok = holds(&mid)?;
        hi = ok.where_cond(&mid, &hi)?;
        lo = ok.where_cond(&lo, &mid)?;
    }
    Ok(lo)
}

/// Every row's sampled token [n] (u32), drawn on the device: [`sample_host`]'s filter and
/// draw for the whole batch, with `params` [n, 4] = (1/temperature, k, p, u) per row
/// (k and p infinite where there is no such filter).
fn sample_rows(
    logits: &Tensor,
    params: &Tensor,
    sampler: &DeviceSampler,
    top_k: bool,
    top_p: bool,
) -> candle_core::Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    let column = |i: usize| params.narrow(1, i, 1);
    let scaled = logits.broadcast_mul(&column(0)?)?;
    let best = scaled.max_keepdim(1)?;
    let z = scaled.broadcast_maximum(&(&best - FLOOR as f64)?)?;
    let floor = (z.min_keepdim(1)? - 1.0)?;
    let above =
        |t: &Tensor| -> candle_core::Result<Tensor> { z.broadcast_gt(t)?.to_dtype(DType::F32) };
    // top-k: the highest threshold with at least k tokens above it.
    let lo = if top_k {
        let k = column(1)?;
        search(floor, best.clone(), |t| above(t)?.sum_keepdim(1)?.lt(&k))?
    } else {
        floor
    };
    let exp = z.broadcast_sub(&best)?.exp()?.mul(&above(&lo)?)?;
    // top-p: of those, the highest threshold with at least p of their mass above it.
    let lo = if top_p {
        let bound = exp.sum_keepdim(1)?.mul(&column(2)?)?;
        search(lo, best, |t| {
            above(t)?.mul(&exp)?.sum_keepdim(1)?.lt(&bound)
        })?
    } else {
        lo
    };
    let weights = exp.mul(&above(&lo)?)?;
    // The draw: the chunk the target falls in, then the token within it.
    let padded = weights.pad_with_zeros(1, 0, sampler.chunks * CHUNK - vocab)?;
    let sums = padded.reshape((n, sampler.chunks, CHUNK))?.sum(2)?;
    let running = sums.matmul(&sampler.across)?;
    let target = sums.sum_keepdim(1)?.mul(&column(3)?)?;
    let chunk = first_crossing(&sums, &running, &target, &sampler.across_rank)?.unsqueeze(1)?;
    let before = running.gather(&chunk, 1)?.sub(&sums.gather(&chunk, 1)?)?;
    let base = (chunk.to_dtype(DType::F32)? * CHUNK as f64)?;
    let ids = sampler
        .positions
        .broadcast_add(&base)?
        .to_dtype(DType::U32)?;
    let local = padded.gather(&ids, 1)?;
    let running = local.matmul(&sampler.within)?;
    let within = first_crossing(&local, &running, &(target - before)?, &sampler.within_rank)?;
    (base.squeeze(1)? + within.to_dtype(DType::F32)?)?.to_dtype(DType::U32)
}

/// A step's logits [rows, vocab] (f32) with each row's repetition penalty applied on the
/// device, value for value what `candle_transformers::utils::apply_repeat_penalty` does to
/// one row on the host (a logit ≥ 0 divided by the penalty, else multiplied, each distinct
/// token once), and every row's pick when some row wants one: the argmax for greedy rows,
/// and with a `sampler`, a draw for sampled rows ([`sample_host`]'s, on the device; without
/// one, a sampled row's entry is its argmax and the sequence samples its row on the host).
/// Host traffic: the rows' distinct recent tokens and penalties (two small uploads, none
/// without a penalty), the sampled rows' settings and uniform numbers (one upload), and one
/// read-back of `rows` ids, instead of a round trip of every row's whole vocabulary.
pub fn pick_on_device(
    logits: &Tensor,
    rows: &[DeviceRow<'_>],
    sampler: Option<&DeviceSampler>,
) -> candle_core::Result<(Tensor, Option<Vec<u32>>)> {
    let (n, vocab) = logits.dims2()?;
    if n != rows.len() {
        candle_core::bail!("{n} logits rows for {} sequences", rows.len());
    }
    let logits = logits.to_dtype(DType::F32)?;
    let penalised = if rows
        .iter()
        .any(|r| r.penalty != 1.0 && !r.recent.is_empty())
    {
        let distinct: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                let mut seen = std::collections::HashSet::new();
                r.recent
                    .iter()
                    .copied()
                    .filter(|t| seen.insert(*t))
                    .collect()
            })
            .collect();
        let width = distinct.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(n * width);
        let mut penalties = Vec::with_capacity(n);
        for (r, tokens) in rows.iter().zip(&distinct) {
            // A row pads with its own first token (written back with the same value) or,
            // without tokens, token 0 at penalty 1, which leaves it as it is.
            let pad = tokens.first().copied().unwrap_or(0);
            ids.extend(tokens.iter().copied());
            ids.extend(std::iter::repeat_n(pad, width - tokens.len()));
            penalties.push(if tokens.is_empty() { 1.0 } else { r.penalty });
        }
        let device = logits.device();
        let ids = transfer::upload(ids, (n, width), device)?;
        let penalties = transfer::upload(penalties, (n, 1), device)?;
        let seen = logits.gather(&ids, 1)?;
        let lowered = seen.ge(0f32)?.where_cond(
            &seen.broadcast_div(&penalties)?,
            &seen.broadcast_mul(&penalties)?,
        )?;
        logits.scatter(&ids, &lowered, 1)?
    } else {
        logits
    };
    let sampled = |r: &&DeviceRow<'_>| matches!(r.pick, Pick::Sample { .. });
    let sampler = sampler.filter(|_| rows.iter().any(|r| sampled(&r)));
    let picks = match sampler {
        Some(sampler) => {
            if sampler.vocab != vocab {
                candle_core::bail!(
                    "a sampler for {} tokens over logits of {vocab}",
                    sampler.vocab
                );
            }
            let (mut top_k, mut top_p) = (false, false);
            let mut params = Vec::with_capacity(4 * n);
            for r in rows {
                let (filter, u) = match r.pick {
                    Pick::Sample { filter, u } => (filter, u),
                    // Not drawn (u < 0 marks it): its argmax is taken below.
                    _ => (
                        Filter {
                            temperature: 1.0,
                            top_k: None,
                            top_p: None,
                        },
                        -1.0,
                    ),
                };
                let k = filter.top_k.filter(|k| *k < vocab);
                top_k |= k.is_some();
                top_p |= filter.top_p.is_some();
                params.extend([
                    1.0 / filter.temperature,
                    k.map_or(f32::INFINITY, |k| k as f32),
                    filter.top_p.unwrap_or(f32::INFINITY),
                    u,
                ]);
            }
            let params = transfer::upload(params, (n, 4), penalised.device())?;
            let drawn = sample_rows(&penalised, &params, sampler, top_k, top_p)?;
            let picks = if rows.iter().all(|r| sampled(&r)) {
                drawn
            } else {
                params
                    .narrow(1, 3, 1)?
                    .squeeze(1)?
                    .ge(0f32)?
                    .where_cond(&drawn, &penalised.argmax(D::Minus1)?)?
            };
            Some(transfer::read_back::<u32>(&picks)?)
        }
        None if rows.iter().any(|r| r.pick != Pick::None) => {
            Some(transfer::read_back::<u32>(&penalised.argmax(D::Minus1)?)?)
        }
        None => None,
    };
    Ok((penalised, picks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let bad = SamplingConfig {
            top_p: Some(1.5),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("`top_p`"));
        let bad = SamplingConfig {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("`temperature`")
        );
        assert!(SamplingConfig::default().validate().is_ok());
    }

    #[test]
    fn the_device_penalty_is_candles_host_penalty_value_for_value() {
        use candle_core::Device;
        let vocab = 50;
        let values: Vec<f32> = (0..3 * vocab)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 9.0)
            .collect();
        let logits = Tensor::from_vec(values, (3, vocab), &Device::Cpu).unwrap();
        let recent: [&[u32]; 3] = [&[3, 9, 3, 40, 9, 1], &[], &[49, 0, 0, 17]];
        let rows = [
            DeviceRow {
                penalty: 1.3,
                recent: recent[0],
                pick: Pick::Argmax,
            },
            DeviceRow {
                penalty: 1.3,
                recent: recent[1],
                pick: Pick::None,
            },
            DeviceRow {
                penalty: 0.8,
                recent: recent[2],
                pick: Pick::Argmax,
            },
        ];
        let ((penalised, picks), traffic) =
            transfer::counted(|| pick_on_device(&logits, &rows, None).unwrap());
        assert_eq!((traffic.uploads, traffic.read_backs), (2, 1), "{traffic:?}");
        assert_eq!(traffic.read_back_bytes, 3 * 4);
        let picks = picks.unwrap();
        for (i, r) in rows.iter().enumerate() {
            let row = logits.get(i).unwrap();
            let host = if r.recent.is_empty() {
                row
            } else {
                candle_transformers::utils::apply_repeat_penalty(&row, r.penalty, r.recent).unwrap()
            };
            let host: Vec<f32> = host.to_vec1().unwrap();
            let device: Vec<f32> = penalised.get(i).unwrap().to_vec1().unwrap();
            assert_eq!(
                host.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                device.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "row {i}"
            );
            let argmax = host
                .iter()
                .enumerate()
                .fold(0, |best, (j, x)| if *x > host[best] { j } else { best });
            if r.pick == Pick::Argmax {
                assert_eq!(picks[i] as usize, argmax, "row {i}");
            }
        }
        // Without a penalty nothing goes up, and only the picks come back.
        let plain = [DeviceRow {
            penalty: 1.0,
            recent: &[1, 2],
            pick: Pick::Argmax,
        }; 3];
        let (_, traffic) = transfer::counted(|| pick_on_device(&logits, &plain, None).unwrap());
        assert_eq!((traffic.uploads, traffic.read_backs), (0, 1));
    }

    fn filter(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Filter {
        Filter {
            temperature,
            top_k,
            top_p,
        }
    }

    /// A row of `vocab` logits: multiples of 1/4 in [-6, 6] (many ties) or spread values.
    fn random_row(rng: &mut SplitMix64, vocab: usize, ties: bool) -> Vec<f32> {
        (0..vocab)
            .map(|_| {
                let x = (rng.uniform() * 12.0 - 6.0) as f32;
                if ties { (x * 4.0).round() / 4.0 } else { x }
            })
            .collect()
    }

    /// Rows through the device sampler at once (with a greedy row and a scoring row mixed
    /// in), each pick checked against [`sample_host`] with the same number.
    fn device_matches_host(vocab: usize, filters: &[Filter], rng: &mut SplitMix64, ties: bool) {
        let sampler = DeviceSampler::new(vocab, &Device::Cpu).unwrap();
        let n = filters.len() + 2;
        let values: Vec<Vec<f32>> = (0..n).map(|_| random_row(rng, vocab, ties)).collect();
        let us: Vec<f32> = (0..filters.len()).map(|_| uniform(rng)).collect();
        let mut rows: Vec<DeviceRow<'_>> = filters
            .iter()
            .zip(&us)
            .map(|(f, u)| DeviceRow {
                penalty: 1.0,
                recent: &[],
                pick: Pick::Sample { filter: *f, u: *u },
            })
            .collect();
        for pick in [Pick::Argmax, Pick::None] {
            rows.push(DeviceRow {
                penalty: 1.0,
                recent: &[],
                pick,
            });
        }
        let logits = Tensor::from_vec(values.concat(), (n, vocab), &Device::Cpu).unwrap();
        let ((_, picks), traffic) =
            transfer::counted(|| pick_on_device(&logits, &rows, Some(&sampler)).unwrap());
        assert_eq!(
            (traffic.uploads, traffic.read_backs, traffic.read_back_bytes),
            (1, 1, 4 * n),
            "the settings up, the ids back: {traffic:?}"
        );
        let picks = picks.unwrap();
        for (i, (f, u)) in filters.iter().zip(&us).enumerate() {
            assert_eq!(
                picks[i],
                sample_host(&values[i], f, *u),
                "row {i}: {f:?}, u {u}, logits {:?}",
                values[i]
            );
        }
        let greedy = &values[n - 2];
        let first_max = greedy
            .iter()
            .enumerate()
            .fold(0, |best, (j, x)| if *x > greedy[best] { j } else { best });
        assert_eq!(picks[n - 2] as usize, first_max, "the greedy row");
    }

    #[test]
    fn the_device_draws_the_host_references_token() {
        let mut rng = SplitMix64(11);
        let mut all = 0;
        // 300 tokens: two chunks of the draw's running sums; 1000: four.
        for vocab in [7, 300, 1000] {
            for ties in [true, false] {
                for round in 0..6 {
                    let filters: Vec<Filter> = (0..24)
                        .map(|i| {
                            let t = 0.3 + 1.7 * rng.uniform() as f32;
                            let k = 1 + (rng.next_u64() % 40) as usize;
                            let p = 0.05 + 0.9 * rng.uniform() as f32;
                            match (i + round) % 4 {
                                0 => filter(t, Some(k), None),
                                1 => filter(t, None, Some(p)),
                                2 => filter(t, Some(k), Some(p)),
                                _ => filter(t, None, None),
                            }
                        })
                        .collect();
                    device_matches_host(vocab, &filters, &mut rng, ties);
                    all += filters.len();
                }
            }
        }
        assert_eq!(all, 3 * 2 * 6 * 24);
    }

    /// The host reference itself, on a row worked by hand.
    #[test]
    fn the_host_filter_keeps_what_top_k_and_top_p_say() {
        // Probabilities at temperature 1 ∝ e^logit: 0.474, 0.174 (twice), 0.064 (twice), ...
        let logits = [0.0f32, 2.0, 1.0, 3.0, 1.0, 2.0, -1.0];
        let picks = |f: Filter| -> std::collections::BTreeSet<u32> {
            (0..1000)
                .map(|i| sample_host(&logits, &f, i as f32 / 1000.0))
                .collect()
        };
        assert_eq!(picks(filter(1.0, Some(1), None)), [3].into());
        // The 2nd and 3rd largest are tied: both kept.
        assert_eq!(picks(filter(1.0, Some(2), None)), [1, 3, 5].into());
        // 0.474 < 0.5: the tied pair at 0.174 crosses it, kept whole.
        assert_eq!(picks(filter(1.0, None, Some(0.5))), [1, 3, 5].into());
        assert_eq!(picks(filter(1.0, None, Some(0.4))), [3].into());
        assert_eq!(picks(filter(1.0, None, None)).len(), 7);
        // Top-p over what top-k left: of {3, 1, 5}, 3 alone is 0.58 of it.
        assert_eq!(picks(filter(1.0, Some(2), Some(0.55))), [3].into());
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 0.0]), 1, "the first of equals");
    }

    /// Over many draws (fixed seed), each kept token comes as often as its filtered
    /// softmax says (Pearson's chi-square under its 0.1% critical value) and no dropped
    /// token ever comes.
    #[test]
    fn device_draws_follow_the_filtered_softmax() {
        let logits = [1.5f32, 0.2, 3.0, -0.7, 2.4, 2.4, 0.9, -3.0, 1.1, 0.0];
        let vocab = logits.len();
        let sampler = DeviceSampler::new(vocab, &Device::Cpu).unwrap();
        let mut rng = SplitMix64(5);
        // (filter, kept tokens, chi-square critical value at 0.1% for kept − 1 degrees)
        let cases = [
            (filter(1.0, None, None), 10, 27.88),
            (filter(0.7, Some(4), None), 4, 16.27),
            (filter(1.3, None, Some(0.8)), 5, 18.47),
            (filter(1.0, Some(6), Some(0.7)), 3, 13.82),
        ];
        const BATCH: usize = 500;
        const ROUNDS: usize = 40;
        for (f, kept, critical) in cases {
            let z: Vec<f64> = logits
                .iter()
                .map(|l| f64::from(l / f.temperature))
                .collect();
            // Which tokens the filter keeps, from the host reference at every u.
            let allowed: std::collections::BTreeSet<u32> = (0..4096)
                .map(|i| sample_host(&logits, &f, i as f32 / 4096.0))
                .collect();
            assert_eq!(allowed.len(), kept, "{f:?}");
            let mass: f64 = allowed.iter().map(|&t| z[t as usize].exp()).sum();
            let mut counts = vec![0usize; vocab];
            let row = Tensor::from_slice(&logits, (1, vocab), &Device::Cpu).unwrap();
            let batch = row.repeat((BATCH, 1)).unwrap();
            for _ in 0..ROUNDS {
                let rows: Vec<DeviceRow<'_>> = (0..BATCH)
                    .map(|_| DeviceRow {
                        penalty: 1.0,
                        recent: &[],
                        pick: Pick::Sample {
                            filter: f,
                            u: uniform(&mut rng),
                        },
                    })
                    .collect();
                let (_, picks) = pick_on_device(&batch, &rows, Some(&sampler)).unwrap();
                for t in picks.unwrap() {
                    counts[t as usize] += 1;
                }
            }
            let draws = (BATCH * ROUNDS) as f64;
            let mut chi2 = 0.0;
            for (t, &c) in counts.iter().enumerate() {
                if allowed.contains(&(t as u32)) {
                    let expected = draws * z[t].exp() / mass;
                    chi2 += (c as f64 - expected).powi(2) / expected;
                } else {
                    assert_eq!(c, 0, "{f:?}: dropped token {t} drawn");
                }
            }
            println!("{f:?}: chi-square {chi2:.2} over {kept} tokens (critical {critical})");
            assert!(
                chi2 < critical,
                "{f:?}: chi-square {chi2} ≥ {critical}: {counts:?}"
            );
        }
    }
}
