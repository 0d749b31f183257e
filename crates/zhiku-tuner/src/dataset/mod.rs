//! Training data: the formats users have ([`formats`]), rendered with the model's own chat
//! template and tokenizer ([`render`]), batched by length with a seed ([`batch`]); the
//! answers' figures optionally swapped for counterfactual ones ([`counterfactual`]).

mod batch;
mod counterfactual;
mod formats;
mod render;

pub use batch::{Batch, BatchOptions, SeededRng, epoch_batches, pack_rows, split_train_validation};
pub use counterfactual::{CounterfactualReport, figure_spans, swap_figures};
pub use formats::{Conversation, parse_conversations, read_conversations};
pub use render::{DatasetReport, LengthPolicy, render_conversation, render_dataset};

use crate::digest::HexSha256;
use crate::spec::TrainExample;

/// A fingerprint of tokenized examples (their tokens, loss masks and bidirectional parts, in
/// order): a checkpoint records it, and a resume refuses data that changed.
pub fn fingerprint(examples: &[TrainExample]) -> String {
    let mut hash = HexSha256::default();
    hash.update(&(examples.len() as u64).to_le_bytes());
    for example in examples {
        hash.update(&(example.tokens.len() as u64).to_le_bytes());
        for (&token, &counts) in example.tokens.iter().zip(&example.loss_mask) {
            hash.update(&token.to_le_bytes());
            hash.update(&[u8::from(counts)]);
        }
        // Only where there is one, so that the causal families' fingerprints stay as they were.
        if example.bidirectional > 0 {
            hash.update(b"bidirectional");
            hash.update(&(example.bidirectional as u64).to_le_bytes());
        }
    }
    hash.finish()
}
