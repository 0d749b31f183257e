//! zhiku-tuner: trains LoRA adapters (the article's first method: W0 frozen, W = W0 + B·A,
//! A Gaussian, B zero) on the same model families that the generator serves, and writes
//! them in PEFT's layout so that zhiku, PEFT and vLLM load them.

mod error;
mod spec;
pub mod trainer;

pub use error::TuneError;
pub use spec::{LoraInit, LoraSpec, TrainExample, TrainedPair};
pub use trainer::{Gradients, StepReport, TrainConfig, Trainer, target_modules};
