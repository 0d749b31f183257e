//! What the trainer consumes and produces, shared by its modules: a tokenized example with
//! the tokens that the loss counts, the LoRA hyper-parameters, and the trained A/B pairs.

use candle_core::Tensor;

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
