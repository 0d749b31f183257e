//! The generator's flags (every one also an environment variable).

use std::path::PathBuf;

use zhiku_lm::kv::KvDtype;
use zhiku_lm::load::AdapterRequest;
use zhiku_lm::{ComputePath, ModelSpec};
pub use zhiku_models::{Precision, PrecisionArg};

use crate::engine::EngineConfig;
use crate::error::GeneratorError;

/// Element type of the KV cache on the CPU (`--kv-cache-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCacheDtype {
    F32,
    /// Half the memory; K/V are rounded to f16 when stored.
    F16,
}

impl From<KvCacheDtype> for KvDtype {
    fn from(d: KvCacheDtype) -> Self {
        match d {
            KvCacheDtype::F32 => KvDtype::F32,
            KvCacheDtype::F16 => KvDtype::F16,
        }
    }
}

/// Which code runs the model on the CPU (`--compute-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ComputePathArg {
    /// zhiku's CPU kernels (quantized matmuls, attention over a host KV cache).
    Kernels,
    /// candle's tensor ops, as on a GPU: slower on the CPU; for checking the GPU's code.
    Tensors,
}

impl From<ComputePathArg> for ComputePath {
    fn from(p: ComputePathArg) -> Self {
        match p {
            ComputePathArg::Kernels => ComputePath::Kernels,
            ComputePathArg::Tensors => ComputePath::Tensors,
        }
    }
}

/// The model served when none is given: a small Qwen2.5 GGUF that answers Chinese RAG
/// prompts on a CPU. `scripts/fetch-models qwen2.5-0.5b` puts it under `--models-dir`, where
/// it loads offline; otherwise it comes from the hub.
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF";
pub const DEFAULT_GGUF_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

#[derive(Debug, Clone, clap::Args)]
pub struct GeneratorArgs {
    /// Model to serve: a .gguf file, a directory (holding one .gguf file, or config.json +
    /// safetensors), or a Hugging Face hub id `org/name[@revision]` (the --gguf-file in it,
    /// else its safetensors checkpoint).
    #[arg(long, env = "ZHIKU_GENERATOR_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    /// The GGUF file to use inside a directory or hub repository holding several.
    #[arg(long, env = "ZHIKU_GENERATOR_GGUF_FILE", default_value = DEFAULT_GGUF_FILE)]
    pub gguf_file: String,

    /// Directory of models laid out by scripts/fetch-models. A hub id whose name (after the
    /// last '/') is a directory here is loaded from it, without the network.
    #[arg(long, env = "ZHIKU_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,

    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, env = "ZHIKU_GENERATOR_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Precision of safetensors checkpoints (GGUF files keep their quantisation). auto: bf16
    /// on a GPU (half the memory and bytes per token of f32), f32 on the CPU.
    #[arg(long, env = "ZHIKU_GENERATOR_DTYPE", value_enum, default_value_t = PrecisionArg::Auto)]
    pub dtype: PrecisionArg,

    /// A LoRA adapter to keep unmerged and apply per request, as NAME=DIR (a PEFT directory
    /// with adapter_config.json and adapter_model.safetensors). Repeat for several; requests
    /// pick one with `adapter: NAME`. Comma-separated in the environment variable.
    #[arg(long = "lora", env = "ZHIKU_GENERATOR_LORA", value_delimiter = ',')]
    pub lora: Vec<String>,

    /// A LoRA adapter (PEFT directory) to merge into the weights at load, W = W0 + (alpha/r)·B·A:
    /// it then applies to every request at no cost per token. Repeatable.
    #[arg(
        long = "merge-lora",
        env = "ZHIKU_GENERATOR_MERGE_LORA",
        value_delimiter = ','
    )]
    pub merge_lora: Vec<PathBuf>,

    /// Requests that may wait while one is generated; past it, RESOURCE_EXHAUSTED at once.
    #[arg(
        long,
        env = "ZHIKU_GENERATOR_MAX_QUEUED_REQUESTS",
        default_value_t = 32
    )]
    pub max_queued_requests: usize,

    /// Default `max_new_tokens` for requests that give none.
    #[arg(long, env = "ZHIKU_GENERATOR_MAX_NEW_TOKENS", default_value_t = 512)]
    pub max_new_tokens: usize,

    /// Longest input of Generate, GenerateStream and CountTokens, in bytes (a `prompt`, or
    /// the sum of a `chat`'s message contents), checked before it is rendered or tokenized.
    #[arg(
        long,
        env = "ZHIKU_GENERATOR_MAX_PROMPT_BYTES",
        default_value_t = 1 << 20
    )]
    pub max_prompt_bytes: usize,

    /// Most messages in one `chat`, checked with --max-prompt-bytes.
    #[arg(
        long,
        env = "ZHIKU_GENERATOR_MAX_CHAT_MESSAGES",
        default_value_t = 1024
    )]
    pub max_chat_messages: usize,

    /// Tokens the KV cache holds, over all running sequences (preallocated; pages become
    /// resident as they are used). A request reserves its prompt plus max_new_tokens.
    #[arg(
        long,
        env = "ZHIKU_GENERATOR_KV_CACHE_TOKENS",
        default_value_t = 16_384
    )]
    pub kv_cache_tokens: usize,

    /// Element type of the KV cache on the CPU: f16 (as llama.cpp's default) halves its
    /// memory and the bytes a decode step reads from it; f32 keeps every rounding out of it
    /// (on a GPU the cache takes the model's dtype).
    #[arg(long, env = "ZHIKU_GENERATOR_KV_CACHE_DTYPE", value_enum, default_value_t = KvCacheDtype::F16)]
    pub kv_cache_dtype: KvCacheDtype,

    /// Which code runs the model on the CPU: `kernels` (zhiku's quantized kernels and
    /// attention, the fast path) or `tensors` (candle's tensor ops, the code a GPU runs, to
    /// check it on a machine without one). Off the CPU it is always `tensors`.
    #[arg(long, env = "ZHIKU_GENERATOR_COMPUTE_PATH", value_enum, default_value_t = ComputePathArg::Kernels)]
    pub compute_path: ComputePathArg,

    /// Sequences decoded together in one batched step (continuous batching).
    #[arg(long, env = "ZHIKU_GENERATOR_MAX_BATCH_SIZE", default_value_t = 16)]
    pub max_batch_size: usize,

    /// Prompt tokens prefilled per step; longer prompts are split into chunks interleaved
    /// with the decode steps of the other streams.
    #[arg(long, env = "ZHIKU_GENERATOR_PREFILL_CHUNK", default_value_t = 512)]
    pub prefill_chunk: usize,

    /// Compute threads of the CPU kernels (default: the cores this process may use, from
    /// its CPU affinity and cgroup quota).
    #[arg(long, env = "ZHIKU_THREADS")]
    pub threads: Option<usize>,

    /// Turn off reuse of cached prompt prefixes (the chat template, repeated passages,
    /// earlier turns).
    #[arg(long, env = "ZHIKU_GENERATOR_NO_PREFIX_CACHE")]
    pub no_prefix_cache: bool,
}

impl GeneratorArgs {
    /// Defaults for a given model (what `clap` would give with only `--model`).
    pub fn for_model(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            gguf_file: DEFAULT_GGUF_FILE.into(),
            models_dir: PathBuf::from("models"),
            device: "cpu".into(),
            dtype: PrecisionArg::Auto,
            lora: Vec::new(),
            merge_lora: Vec::new(),
            max_queued_requests: 32,
            max_new_tokens: 512,
            max_prompt_bytes: 1 << 20,
            max_chat_messages: 1024,
            kv_cache_tokens: 16_384,
            kv_cache_dtype: KvCacheDtype::F16,
            compute_path: ComputePathArg::Kernels,
            max_batch_size: 16,
            prefill_chunk: 512,
            threads: None,
            no_prefix_cache: false,
        }
    }

    /// The engine's settings.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_queued: self.max_queued_requests.max(1),
            max_batch: self.max_batch_size.max(1),
            kv_cache_tokens: self.kv_cache_tokens.max(zhiku_lm::kv::BLOCK_SIZE),
            kv_dtype: self.kv_cache_dtype.into(),
            prefill_chunk: self.prefill_chunk.max(1),
            prefix_cache: !self.no_prefix_cache,
        }
    }
}

impl GeneratorArgs {
    /// The model to load, as the model code takes it.
    pub fn model_spec(&self) -> Result<ModelSpec, GeneratorError> {
        let (device, _) = zhiku_models::parse_device(&self.device).map_err(GeneratorError::Load)?;
        let dtype = self.dtype.resolve(&device).dtype();
        Ok(ModelSpec {
            model: self.model.clone(),
            gguf_file: self.gguf_file.clone(),
            models_dir: self.models_dir.clone(),
            device,
            dtype,
            adapters: self.adapters()?,
            compute: self.compute_path.into(),
        })
    }

    /// Loads the model these flags name (blocking: call from a blocking thread).
    pub fn load_model(&self) -> Result<zhiku_lm::LoadedModel, GeneratorError> {
        Ok(zhiku_lm::load_model(&self.model_spec()?)?)
    }

    /// The adapters to load, from `--lora NAME=DIR` and `--merge-lora DIR`.
    pub fn adapters(&self) -> Result<AdapterRequest, GeneratorError> {
        let attach = self
            .lora
            .iter()
            .map(|spec| match spec.split_once('=') {
                Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
                    Ok((name.to_owned(), PathBuf::from(dir)))
                }
                _ => Err(GeneratorError::Load(format!(
                    "--lora `{spec}`: expected NAME=DIR (e.g. legal=adapters/legal-zh)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut names: Vec<&String> = attach.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        if names.len() != attach.len() {
            return Err(GeneratorError::Load("--lora names must be distinct".into()));
        }
        Ok(AdapterRequest {
            merge: self.merge_lora.clone(),
            attach,
        })
    }
}
