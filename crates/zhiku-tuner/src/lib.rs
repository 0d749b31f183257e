//! zhiku-tuner: trains LoRA adapters (the article's first method: W0 frozen, W = W0 + B·A,
//! A Gaussian, B zero) on the same model families that the generator serves, and writes
//! them in PEFT's layout so that zhiku, PEFT and vLLM load them.

mod atomic;
pub mod checkpoint;
pub mod dataset;
mod digest;
mod error;
pub mod optimizer;
pub mod peft;
mod recompute;
mod spec;
pub mod trainer;
mod view;

pub use digest::sha256_file;
pub use error::TuneError;
pub use spec::{LoraInit, LoraSpec, TrainExample, TrainedPair};
pub use trainer::{CheckpointPlan, Gradients, StepReport, TrainConfig, Trainer, target_modules};
