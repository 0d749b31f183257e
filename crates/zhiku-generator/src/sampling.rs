//! How the next token is picked: greedy, temperature, top-k, top-p, repetition penalty, seed.

use candle_transformers::generation::{LogitsProcessor, Sampling};

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
}
