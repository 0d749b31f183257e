//! The embedder's flags (every one also an environment variable).

use std::path::PathBuf;

use crate::batcher::BatchingConfig;
use crate::model::{ModelOptions, Pooling, Precision};

/// The model the embedder loads when none is given. With the files laid out by
/// `scripts/fetch-models` under `--models-dir` it loads offline; otherwise from the hub.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

#[derive(Debug, Clone, clap::Args)]
pub struct EmbedderArgs {
    /// Model to serve: a directory holding config.json, tokenizer.json and
    /// model.safetensors (sentence-transformers layout), or a Hugging Face hub id
    /// `org/name[@revision]`.
    #[arg(long, env = "ZHIKU_EMBEDDER_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    /// Directory of models laid out by scripts/fetch-models. A hub id whose name (after the
    /// last '/') is a directory here is loaded from it, without the network.
    #[arg(long, env = "ZHIKU_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,

    /// Precision of weights and activations. f16/bf16 halve memory; on CPU they are slower.
    #[arg(long, env = "ZHIKU_EMBEDDER_DTYPE", value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,

    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, env = "ZHIKU_EMBEDDER_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Pooling, overriding the model's 1_Pooling/config.json.
    #[arg(long, env = "ZHIKU_EMBEDDER_POOLING", value_enum)]
    pub pooling: Option<Pooling>,

    /// Text put before every query (EMBED_KIND_QUERY). Default: the model's
    /// config_sentence_transformers.json prompt, else the family's known prefix (bge-zh:
    /// "为这个句子生成表示以用于检索相关文章：", e5: "query: "), else none.
    #[arg(long, env = "ZHIKU_EMBEDDER_QUERY_PREFIX")]
    pub query_prefix: Option<String>,

    /// Text put before every passage (EMBED_KIND_PASSAGE). Default as for queries
    /// (e5: "passage: ").
    #[arg(long, env = "ZHIKU_EMBEDDER_PASSAGE_PREFIX")]
    pub passage_prefix: Option<String>,

    /// Lower the longest input in tokens (default: the model's sentence-transformers
    /// max_seq_length, else its position limit). Longer texts are truncated.
    #[arg(long, env = "ZHIKU_EMBEDDER_MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<usize>,

    /// Most tokens in one forward pass (sequences are packed, no padding); concurrent
    /// requests share batches up to this budget.
    #[arg(
        long,
        env = "ZHIKU_EMBEDDER_MAX_BATCH_TOKENS",
        default_value_t = 16_384
    )]
    pub max_batch_tokens: usize,

    /// Most texts in one Embed request.
    #[arg(
        long,
        env = "ZHIKU_EMBEDDER_MAX_CLIENT_BATCH_SIZE",
        default_value_t = 256
    )]
    pub max_client_batch_size: usize,

    /// Longest text (in bytes) of an Embed or Tokenize request, checked before it is
    /// tokenized: the model reads at most its first max-input-tokens tokens anyway.
    #[arg(long, env = "ZHIKU_EMBEDDER_MAX_TEXT_BYTES", default_value_t = 65_536)]
    pub max_text_bytes: usize,

    /// Most texts waiting for a batch; past it requests get RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "ZHIKU_EMBEDDER_MAX_QUEUED_TEXTS", default_value_t = 4_096)]
    pub max_queued_texts: usize,

    /// A cross-encoder for the Rerank call (bge-reranker-base, bge-reranker-v2-m3,
    /// bce-reranker-base_v1, or any BertForSequenceClassification with one label): a
    /// directory or a hub id, loaded as --model is, with the same --dtype and --device.
    /// Unset: Rerank answers FAILED_PRECONDITION.
    #[arg(long, env = "ZHIKU_RERANKER_MODEL")]
    pub reranker_model: Option<String>,

    /// Lower the reranker's longest (query, passage) pair in tokens (default: its position
    /// limit, 512 for bge-reranker-base); longer pairs are truncated. Cross-encoder time
    /// grows with it.
    #[arg(long, env = "ZHIKU_RERANKER_MAX_INPUT_TOKENS")]
    pub reranker_max_input_tokens: Option<usize>,

    /// PP-OCR models for the Recognize call (detection, direction and recognition ONNX
    /// files, with libonnxruntime beside them or at ORT_DYLIB_PATH): a directory or a hub
    /// id, resolved as --model is. Unset: `ppocr` under --models-dir when
    /// `scripts/fetch-models ppocr` put it there, else Recognize answers
    /// FAILED_PRECONDITION. `off`: no OCR. On a CUDA --device (a build with `--features
    /// cuda`) they run on ONNX Runtime's CUDA execution provider, which needs ONNX Runtime's
    /// GPU library (untested: no GPU has run it; without it, the CPU and a warning).
    #[arg(long, env = "ZHIKU_OCR_MODEL")]
    pub ocr_model: Option<String>,

    /// Threads each OCR model computes with. 0: one per core, at most 4.
    #[arg(long, env = "ZHIKU_OCR_THREADS", default_value_t = 0)]
    pub ocr_threads: usize,

    /// Images read at once, each on a blocking thread of its own (OCR is CPU-bound: more
    /// than the cores buys nothing).
    #[arg(long, env = "ZHIKU_OCR_WORKERS", default_value_t = 1)]
    pub ocr_workers: usize,

    /// Images waiting for a worker; past it Recognize answers RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "ZHIKU_OCR_MAX_QUEUED", default_value_t = 64)]
    pub ocr_max_queued: usize,

    /// Largest image Recognize decodes, in pixels (width × height), checked from the
    /// header before any pixel is decoded: a decompression bomb is refused.
    #[arg(long, env = "ZHIKU_OCR_MAX_PIXELS", default_value_t = 100_000_000)]
    pub ocr_max_pixels: u64,

    /// Most images in one Recognize request.
    #[arg(long, env = "ZHIKU_OCR_MAX_IMAGES", default_value_t = 16)]
    pub ocr_max_images: usize,

    /// Most pages of one multi-page image (TIFF); more is INVALID_ARGUMENT.
    #[arg(long, env = "ZHIKU_OCR_MAX_PAGES", default_value_t = 200)]
    pub ocr_max_pages: usize,
}

/// The OCR models' directory name under --models-dir (what `scripts/fetch-models ppocr`
/// writes).
pub const DEFAULT_OCR_MODEL: &str = "ppocr";

/// Where Recognize's models come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OcrModelChoice {
    /// Given with --ocr-model: failing to load it fails the start.
    Explicit(String),
    /// Found under --models-dir: failing to load it (e.g. no ONNX Runtime) leaves OCR off
    /// with a warning, so that an embedder without OCR still starts.
    Found(PathBuf),
    Off,
}

impl EmbedderArgs {
    /// Defaults for a given model (what `clap` would give with only `--model`).
    pub fn for_model(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            models_dir: PathBuf::from("models"),
            dtype: Precision::F32,
            device: "cpu".into(),
            pooling: None,
            query_prefix: None,
            passage_prefix: None,
            max_input_tokens: None,
            max_batch_tokens: 16_384,
            max_client_batch_size: 256,
            max_text_bytes: 65_536,
            max_queued_texts: 4_096,
            reranker_model: None,
            reranker_max_input_tokens: None,
            ocr_model: None,
            ocr_threads: 0,
            ocr_workers: 1,
            ocr_max_queued: 64,
            ocr_max_pixels: 100_000_000,
            ocr_max_images: 16,
            ocr_max_pages: 200,
        }
    }

    /// Where the OCR models come from: --ocr-model, else `ppocr` under --models-dir.
    pub fn ocr_model_choice(&self) -> OcrModelChoice {
        match self.ocr_model.as_deref().map(str::trim) {
            Some(off) if off.is_empty() || off.eq_ignore_ascii_case("off") => OcrModelChoice::Off,
            Some(model) => OcrModelChoice::Explicit(model.to_owned()),
            None => {
                let dir = self.models_dir.join(DEFAULT_OCR_MODEL);
                if dir.join(zhiku_ocr::DETECTION_MODEL).is_file() {
                    OcrModelChoice::Found(dir)
                } else {
                    OcrModelChoice::Off
                }
            }
        }
    }

    /// The CUDA device the OCR models run on: --device's, when it names one.
    pub fn ocr_cuda_device(&self) -> Option<u32> {
        match self.device.trim() {
            "cuda" => Some(0),
            device => device.strip_prefix("cuda:")?.parse().ok(),
        }
    }

    /// Threads per OCR model: the flag, or one per core up to 4.
    pub fn ocr_threads(&self) -> usize {
        match self.ocr_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            n => n,
        }
    }

    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            model: self.model.clone(),
            models_dir: Some(self.models_dir.clone()),
            precision: self.dtype,
            device: self.device.clone(),
            pooling: self.pooling,
            query_prefix: self.query_prefix.clone(),
            passage_prefix: self.passage_prefix.clone(),
            max_input_tokens: self.max_input_tokens,
        }
    }

    /// How to load the reranker, when one is set.
    pub fn reranker_options(&self) -> Option<ModelOptions> {
        let model = self
            .reranker_model
            .as_ref()
            .filter(|m| !m.trim().is_empty())?;
        Some(ModelOptions {
            model: model.clone(),
            max_input_tokens: self.reranker_max_input_tokens,
            pooling: None,
            query_prefix: None,
            passage_prefix: None,
            ..self.model_options()
        })
    }

    pub fn batching(&self) -> BatchingConfig {
        BatchingConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_queued_texts: self.max_queued_texts,
        }
    }
}
