//! The `zhiku-tuner` service's flags (every one also an environment variable).

use std::path::PathBuf;

/// The model trained when none is given: the generator's default, since an adapter serves
/// only on the model it was trained on (set both from one variable, as compose does).
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF";
pub const DEFAULT_GGUF_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

#[derive(Debug, Clone, clap::Args)]
pub struct TunerArgs {
    /// Model whose adapters are trained (the generator's --model): a .gguf file, a directory
    /// (holding one .gguf file, or config.json + safetensors), or a Hugging Face hub id.
    #[arg(long, env = "ZHIKU_TUNER_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    /// The GGUF file to use inside a directory or hub repository holding several.
    #[arg(long, env = "ZHIKU_TUNER_GGUF_FILE", default_value = DEFAULT_GGUF_FILE)]
    pub gguf_file: String,

    /// Directory of models laid out by scripts/fetch-models (a hub id whose name is a
    /// directory here loads from it, without the network).
    #[arg(long, env = "ZHIKU_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,

    /// Device: cpu (trains in f32), cuda or cuda:N (bf16; needs a build with `--features cuda`).
    #[arg(long, env = "ZHIKU_TUNER_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Where adapters are written, one directory per job (its adapter name): the volume the
    /// generator reads (LoadAdapter with the path it has there).
    #[arg(long, env = "ZHIKU_TUNER_ADAPTER_DIR", default_value = "data/adapters")]
    pub adapter_dir: PathBuf,

    /// Directory that a job's `dataset_path` is read from (unset: only inline datasets).
    #[arg(long, env = "ZHIKU_TUNER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Jobs that may wait behind the running one; more are refused (RESOURCE_EXHAUSTED).
    #[arg(long, env = "ZHIKU_TUNER_MAX_QUEUED", default_value_t = 8)]
    pub max_queued: usize,

    /// Finished jobs remembered for GetJob, ListJobs and WatchJob (the oldest are forgotten).
    #[arg(long, env = "ZHIKU_TUNER_KEEP_FINISHED", default_value_t = 100)]
    pub keep_finished: usize,

    /// CPU threads for training (default: every core).
    #[arg(long, env = "ZHIKU_TUNER_THREADS")]
    pub threads: Option<usize>,
}
