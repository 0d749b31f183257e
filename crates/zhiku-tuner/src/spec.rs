//! What the trainer consumes and produces, shared by its modules: a tokenized example with
//! the tokens that the loss counts, the LoRA hyper-parameters, and the trained A/B pairs.

use std::fmt;

use candle_core::Tensor;

use crate::error::TuneError;

/// One tokenized training example. `loss_mask[i]` says whether predicting `tokens[i]` (from
/// the tokens before it) counts in the loss: true for the answer's tokens only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainExample {
    pub tokens: Vec<u32>,
    pub loss_mask: Vec<bool>,
    /// Its first so many tokens see each other: ChatGLM-6B's prompt through `[gMASK]`, as
    /// the generator reads it (`Batch::bidirectional`); 0 for the causal families.
    pub bidirectional: usize,
}

/// How A is initialised (B always starts at zero, so training starts from the base model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraInit {
    /// A ~ N(0, 1/r): the article's description.
    #[default]
    Gaussian,
    /// Kaiming-uniform with a = sqrt(5), as PEFT's default (`init_lora_weights=True`).
    Kaiming,
}

/// LoRA's hyper-parameters, as PEFT's `LoraConfig` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Short target names: q, k, v, o, gate, up, down (qkv for fused projections).
    pub targets: Vec<String>,
    pub init: LoraInit,
    /// The blocks that get adapters (PEFT's `layers_to_transform`).
    pub layers: LayerSelection,
}

impl LoraSpec {
    /// alpha / r, the factor on B·A.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One trained pair for the module at `module` (the checkpoint's path, e.g.
/// `model.layers.0.self_attn.q_proj`): A is [r, in], B is [out, r].
#[derive(Debug, Clone)]
pub struct TrainedPair {
    pub module: String,
    pub a: Tensor,
    pub b: Tensor,
}

/// Which of the model's blocks (decoder layers) get adapters. Blocks below the lowest
/// adapted one need no backward pass, so `Last(n)` makes a step cheaper as well as the
/// adapter smaller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LayerSelection {
    /// Every block.
    #[default]
    All,
    /// The top `n` blocks.
    Last(usize),
    /// These block indices, 0-based as PEFT's `layers_to_transform` counts them (sorted,
    /// without repeats).
    Only(Vec<usize>),
}

impl LayerSelection {
    /// Reads `all`, `last:N`, or indices and inclusive ranges such as `0,2,20-23`.
    pub fn parse(text: &str) -> Result<Self, TuneError> {
        let text = text.trim();
        let bad = |why: String| {
            TuneError::Validation(format!(
                "layers `{text}`: {why}; give `all`, `last:N` (the top N blocks) or block \
                 indices and ranges counted from 0, such as `0,2,20-23`"
            ))
        };
        if text.is_empty() || text.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        if let Some(n) = text.strip_prefix("last:") {
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{n}` is not a number of blocks")))?;
            if n == 0 {
                return Err(bad("last:0 selects no block".into()));
            }
            return Ok(Self::Last(n));
        }
        let index = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("`{}` is not a block index", s.trim())))
        };
        let mut layers = Vec::new();
        for part in text.split(',') {
            match part.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (index(from)?, index(to)?);
                    if from > to {
                        return Err(bad(format!("the range {from}-{to} runs backwards")));
                    }
                    layers.extend(from..=to);
                }
                None => layers.push(index(part)?),
            }
        }
        layers.sort_unstable();
        layers.dedup();
        Ok(Self::Only(layers))
    }

    /// The block indices selected in a model of `blocks` blocks, ascending.
    pub fn resolve(&self, blocks: usize) -> Result<Vec<usize>, TuneError> {
        match self {
            Self::All => Ok((0..blocks).collect()),
            Self::Last(n) if *n <= blocks => Ok((blocks - n..blocks).collect()),
            Self::Last(n) => Err(TuneError::Validation(format!(
                "layers last:{n} asks for more blocks than the model's {blocks}"
            ))),
            Self::Only(layers) => match layers.iter().find(|&&l| l >= blocks) {
                Some(l) => Err(TuneError::Validation(format!(
                    "layers {self} names block {l}, but the model has {blocks} blocks (0 to {})",
                    blocks.saturating_sub(1)
                ))),
                None => Ok(layers.clone()),
            },
        }
    }
}

/// For `--layers` flags (clap reads a `FromStr` type itself): [`LayerSelection::parse`].
impl std::str::FromStr for LayerSelection {
    type Err = TuneError;

    fn from_str(text: &str) -> Result<Self, TuneError> {
        Self::parse(text)
    }
}

/// The form [`LayerSelection::parse`] reads back: `all`, `last:N` or `0,2,20-23`.
impl fmt::Display for LayerSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Last(n) => write!(f, "last:{n}"),
            Self::Only(layers) => {
                let mut runs: Vec<String> = Vec::new();
                let mut i = 0;
                while i < layers.len() {
                    let mut j = i;
                    while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
                        j += 1;
                    }
                    runs.push(if j == i {
                        layers[i].to_string()
                    } else {
                        format!("{}-{}", layers[i], layers[j])
                    });
                    i = j + 1;
                }
                f.write_str(&runs.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_parse_resolve_and_print_back() {
        assert_eq!(LayerSelection::parse("all").unwrap(), LayerSelection::All);
        assert_eq!(LayerSelection::parse("").unwrap(), LayerSelection::All);
        let last = LayerSelection::parse("last:3").unwrap();
        assert_eq!(last.resolve(24).unwrap(), vec![21, 22, 23]);
        assert_eq!(last.to_string(), "last:3");
        let only = LayerSelection::parse("5, 0-2,2,7-8").unwrap();
        assert_eq!(only, LayerSelection::Only(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(only.to_string(), "0-2,5,7-8");
        assert_eq!(LayerSelection::parse(&only.to_string()).unwrap(), only);
        assert_eq!(only.resolve(9).unwrap(), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(LayerSelection::All.resolve(2).unwrap(), vec![0, 1]);
    }

    #[test]
    fn layers_refuse_what_selects_nothing_or_too_much() {
        for bad in ["last:0", "last:x", "3-1", "a", "1,,2", "-1"] {
            let e = LayerSelection::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("layers `{bad}`")), "{bad}: {e}");
        }
        let e = LayerSelection::Last(30)
            .resolve(24)
            .unwrap_err()
            .to_string();
        assert!(e.contains("24"), "{e}");
        let e = LayerSelection::Only(vec![3, 24])
            .resolve(24)
            .unwrap_err()
            .to_string();
        assert!(e.contains("block 24") && e.contains("0 to 23"), "{e}");
    }
}
