//! How the next token is picked: greedy, temperature, top-k, top-p, repetition penalty, seed.

use candle_core::{D, DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use zhiku_lm::transfer;

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
        if self.stop.len() > 16 || self.stop.iter().any(|s| s.len() > 256) {
            return bad("`stop`: at most 16 strings of at most 256 bytes".into());
        }
        Ok(())
    }

    pub fn logits_processor(&self) -> LogitsProcessor {
        let sampling = if self.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            let temperature = self.temperature;
            match (
                self.top_k.filter(|k| *k > 0),
                self.top_p.filter(|p| *p < 1.0),
            ) {
                (None, None) => Sampling::All { temperature },
                (Some(k), None) => Sampling::TopK { k, temperature },
                (None, Some(p)) => Sampling::TopP { p, temperature },
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
            }
        };
        LogitsProcessor::from_sampling(self.seed, sampling)
    }
}

/// What the device does to one row of a step's logits before its sequence sees it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRow<'a> {
    /// The repetition penalty (1 = none) over `recent`, the sequence's last generated tokens.
    pub penalty: f32,
    pub recent: &'a [u32],
    /// Its next token is the row's argmax (greedy): picked on the device.
    pub argmax: bool,
}

/// A step's logits [rows, vocab] (f32) with each row's repetition penalty applied on the
/// device, value for value what `candle_transformers::utils::apply_repeat_penalty` does to
/// one row on the host (a logit ≥ 0 divided by the penalty, else multiplied, each distinct
/// token once), and every row's argmax when some row wants it. Host traffic: the rows'
/// distinct recent tokens and penalties (two small uploads, none without a penalty) and one
/// read-back of `rows` ids, instead of a round trip of every row's whole vocabulary.
pub fn penalise_on_device(
    logits: &Tensor,
    rows: &[DeviceRow<'_>],
) -> candle_core::Result<(Tensor, Option<Vec<u32>>)> {
    let (n, _) = logits.dims2()?;
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
    let picks = if rows.iter().any(|r| r.argmax) {
        Some(transfer::read_back::<u32>(&penalised.argmax(D::Minus1)?)?)
    } else {
        None
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
                argmax: true,
            },
            DeviceRow {
                penalty: 1.3,
                recent: recent[1],
                argmax: false,
            },
            DeviceRow {
                penalty: 0.8,
                recent: recent[2],
                argmax: true,
            },
        ];
        let ((penalised, picks), traffic) =
            transfer::counted(|| penalise_on_device(&logits, &rows).unwrap());
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
            assert_eq!(picks[i] as usize, argmax, "row {i}");
        }
        // Without a penalty nothing goes up, and only the picks come back.
        let plain = [DeviceRow {
            penalty: 1.0,
            recent: &[1, 2],
            argmax: true,
        }; 3];
        let (_, traffic) = transfer::counted(|| penalise_on_device(&logits, &plain).unwrap());
        assert_eq!((traffic.uploads, traffic.read_backs), (0, 1));
    }
}
