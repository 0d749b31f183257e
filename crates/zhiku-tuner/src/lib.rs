//! zhiku-tuner: trains LoRA adapters (the article's first method: W0 frozen, W = W0 + B·A,
//! A Gaussian, B zero) on the same model families that the generator serves, and writes
//! them in PEFT's layout so that zhiku, PEFT and vLLM load them. [`job::run_job`] is one
//! training job (the CLI's `zhiku tune` and the service's); [`service`] is the `Tuner` gRPC
//! service that the `zhiku-tuner` binary serves.

mod atomic;
pub mod checkpoint;
pub mod config;
pub mod dataset;
mod digest;
mod error;
pub mod job;
mod memtrace;
pub mod optimizer;
pub mod peft;
mod recompute;
pub mod service;
mod spec;
pub mod trainer;
mod view;

pub use config::TunerArgs;
pub use digest::sha256_file;
pub use error::TuneError;
pub use job::{JobBase, JobEvent, JobOutcome, JobParams, run_job};
pub use service::serve;
pub use spec::{LayerSelection, LoraInit, LoraSpec, TrainExample, TrainedPair};
pub use trainer::{
    CheckpointPlan, Gradients, Padding, StepReport, TrainConfig, Trainer, check_targets,
    epoch_padding, layout_rows, target_modules,
};
