//! Cross-encoders: a (query, passage) pair read together by a BERT-family encoder with a
//! sequence-classification head, one relevance logit per pair.
//!
//! Two head layouts, both "first token → dense → tanh → one logit":
//! - `XLMRobertaForSequenceClassification` (bge-reranker-base, bge-reranker-v2-m3,
//!   bce-reranker-base_v1): `classifier.dense` and `classifier.out_proj`;
//! - `BertForSequenceClassification` (the ms-marco cross-encoders): the encoder's pooler
//!   (`bert.pooler.dense`) and `classifier`.
//!
//! The encoder, config.json, safetensors and tokenizer.json load through the same code as
//! the sentence encoder's ([`crate::model::Checkpoint`]).

use std::collections::HashMap;

use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear};
use serde::Deserialize;

use crate::batcher::BatchBackend;
use crate::encoder::TransformerEncoder;
use crate::error::EmbedderError;
use crate::model::{Checkpoint, ModelOptions, Precision, input_limit};
use crate::tokenizer::{PairInput, TextTokenizer};

/// Facts about the loaded reranker, for `Info` and logs.
#[derive(Debug, Clone)]
pub struct RerankerInfo {
    pub model_id: String,
    pub model_type: String,
    /// `XLMRobertaForSequenceClassification` or `BertForSequenceClassification` (from the
    /// head found in the weights).
    pub architecture: &'static str,
    pub max_input_tokens: usize,
    pub precision: Precision,
    pub device: String,
}

/// A loaded cross-encoder and its tokenizer.
pub struct CrossEncoder {
    encoder: TransformerEncoder,
    dense: Linear,
    out: Linear,
    /// Token types the model knows: pairs' type ids are kept below it (XLM-R has one).
    type_vocab_size: u32,
    pub info: RerankerInfo,
    pub tokenizer: TextTokenizer,
}

#[derive(Deserialize)]
struct LabelsConfig {
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: HashMap<String, String>,
}

/// Where a head's two layers are in the weights, and its architecture's name.
fn find_head(vb: &VarBuilder) -> Option<(&'static str, &'static str, &'static str)> {
    if vb.contains_tensor("classifier.out_proj.weight") {
        return Some((
            "XLMRobertaForSequenceClassification",
            "classifier.dense",
            "classifier.out_proj",
        ));
    }
    if vb.contains_tensor("classifier.weight") {
        for pooler in ["bert.pooler.dense", "pooler.dense"] {
            if vb.contains_tensor(&format!("{pooler}.weight")) {
                return Some(("BertForSequenceClassification", pooler, "classifier"));
            }
        }
    }
    None
}

impl CrossEncoder {
    /// Loads a reranker from a directory or the hub (`options.max_input_tokens` may lower
    /// its window; pooling and prefixes do not apply).
    pub fn load(options: &ModelOptions) -> Result<Self, EmbedderError> {
        let checkpoint = Checkpoint::open(options)?;
        let labels: LabelsConfig = serde_json::from_str(&checkpoint.config_text)
            .map_err(|e| EmbedderError::Load(format!("reranker config.json: {e}")))?;
        let num_labels = labels.num_labels.unwrap_or(labels.id2label.len().max(1));
        if num_labels != 1 {
            return Err(EmbedderError::UnsupportedModel(format!(
                "the reranker's config.json has {num_labels} labels; zhiku reranks with \
                 one-logit cross-encoders (bge-reranker, bce-reranker, ms-marco)"
            )));
        }
        let Some((architecture, dense_at, out_at)) = find_head(&checkpoint.vb) else {
            return Err(EmbedderError::UnsupportedModel(format!(
                "{} has no sequence-classification head (classifier.dense + \
                 classifier.out_proj of XLMRobertaForSequenceClassification, or pooler + \
                 classifier of BertForSequenceClassification): it looks like an embedding \
                 model; serve it with --model, and a cross-encoder with --reranker-model",
                checkpoint.source.id()
            )));
        };
        let hidden = checkpoint.config.hidden_size;
        let head = |at: &str, out: usize| {
            linear(hidden, out, checkpoint.vb.pp(at))
                .map_err(|e| EmbedderError::Load(format!("reranker head `{at}`: {e}")))
        };
        let dense = head(dense_at, hidden)?;
        let out = head(out_at, 1)?;
        let max_input_tokens = input_limit(
            checkpoint.encoder.max_sequence_length(),
            &[options.max_input_tokens],
        )?;
        let tokenizer = TextTokenizer::from_file(
            &checkpoint.source.get("tokenizer.json")?,
            max_input_tokens,
            String::new(),
            String::new(),
        )?;
        let reranker = Self {
            type_vocab_size: checkpoint.config.type_vocab_size.max(1) as u32,
            encoder: checkpoint.encoder,
            dense,
            out,
            info: RerankerInfo {
                model_id: checkpoint.source.id(),
                model_type: checkpoint.model_type,
                architecture,
                max_input_tokens,
                precision: options.precision,
                device: checkpoint.device_name,
            },
            tokenizer,
        };
        // A forward pass at load, so that a broken checkpoint fails here and not on the
        // first request.
        let probe = PairInput {
            ids: vec![0, 0],
            type_ids: vec![0, 0],
            truncated: false,
        };
        reranker.score_batch(&[&probe])?;
        Ok(reranker)
    }

    /// Tokenizes a (query, passage) pair for [`Self::score_batch`].
    pub fn encode(&self, query: &str, passage: &str) -> Result<PairInput, EmbedderError> {
        self.tokenizer.encode_pair(query, passage)
    }

    /// The relevance logit of each pair (each non-empty, within the window), in order.
    pub fn score_batch(&self, batch: &[&PairInput]) -> Result<Vec<f32>, EmbedderError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let lengths: Vec<usize> = batch.iter().map(|p| p.ids.len()).collect();
        let ids: Vec<u32> = batch.iter().flat_map(|p| p.ids.iter().copied()).collect();
        let hidden = if self.type_vocab_size > 1 {
            let last = self.type_vocab_size - 1;
            let types: Vec<u32> = batch
                .iter()
                .flat_map(|p| p.type_ids.iter().map(|&t| t.min(last)))
                .collect();
            self.encoder.forward_packed_pairs(&ids, &types, &lengths)?
        } else {
            self.encoder.forward_packed(&ids, &lengths)?
        };
        // The first token of each pair.
        let mut firsts = Vec::with_capacity(batch.len());
        let mut offset = 0u32;
        for &n in &lengths {
            firsts.push(offset);
            offset += n as u32;
        }
        let firsts = Tensor::from_vec(firsts, batch.len(), hidden.device())?;
        let cls = hidden.index_select(&firsts, 0)?;
        let logits = self.out.forward(&self.dense.forward(&cls)?.tanh()?)?;
        Ok(logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

impl BatchBackend for CrossEncoder {
    type Input = PairInput;
    type Output = f32;
    const STAGE: &'static str = zhiku_runtime::metrics::stage::RERANK;
    const QUEUE: &'static str = "reranker_pairs";

    fn tokens(input: &PairInput) -> usize {
        input.ids.len()
    }

    fn run_batch(&self, batch: &[&PairInput]) -> Result<Vec<f32>, EmbedderError> {
        self.score_batch(batch)
    }
}

/// The logistic function: a logit as a relevance in (0, 1).
pub fn sigmoid(logit: f32) -> f32 {
    1.0 / (1.0 + (-logit).exp())
}

/// Indices of `scores`, highest first; equal scores keep their order.
pub fn order(scores: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_best_first_and_stable() {
        assert_eq!(order(&[0.1, 0.9, 0.5, 0.9]), vec![1, 3, 2, 0]);
        assert!(order(&[]).is_empty());
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-6);
        assert!(sigmoid(8.0) > 0.999 && sigmoid(-8.0) < 0.001);
    }
}
