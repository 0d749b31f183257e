//! Sentence encoders on candle, the architecture chosen from `config.json`.
//!
//! Supported `model_type`s: `bert` (MiniLM, bge-*-zh, text2vec, m3e), `xlm-roberta`
//! (bge-m3, multilingual-e5) and `gemma3_text` with bidirectional attention
//! (EmbeddingGemma). Pooling comes from sentence-transformers' `1_Pooling/config.json`, then
//! the `Dense` modules that `modules.json` lists (EmbeddingGemma's 768 → 3072 → 768);
//! vectors are L2-normalised.

use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use zhiku_models::ModelSource;
pub use zhiku_models::Precision;

use crate::encoder::{Dense, EncoderConfig, Positions, TransformerEncoder};
use crate::error::EmbedderError;
use crate::gemma::{GemmaConfig, GemmaEncoder};
use crate::tokenizer::TextTokenizer;

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooling {
    /// Average of the token states, padding excluded (MiniLM, text2vec, m3e, e5).
    Mean,
    /// The state of the first ([CLS]) token (bge).
    Cls,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// What to load and how.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub model: String,
    pub models_dir: Option<std::path::PathBuf>,
    pub precision: Precision,
    pub device: String,
    pub pooling: Option<Pooling>,
    pub query_prefix: Option<String>,
    pub passage_prefix: Option<String>,
    pub max_input_tokens: Option<usize>,
}

impl ModelOptions {
    /// Defaults for a model directory or hub id.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            models_dir: None,
            precision: Precision::F32,
            device: "cpu".into(),
            pooling: None,
            query_prefix: None,
            passage_prefix: None,
            max_input_tokens: None,
        }
    }
}

/// Facts about the loaded model, for `Info` and logs.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model_id: String,
    pub model_type: String,
    pub dimensions: usize,
    pub max_input_tokens: usize,
    pub pooling: Pooling,
    pub precision: Precision,
    pub device: String,
    pub query_prefix: String,
    pub passage_prefix: String,
}

/// The transformer that gives the token states.
enum Backbone {
    Bert(TransformerEncoder),
    Gemma(GemmaEncoder),
}

impl Backbone {
    fn forward_packed(&self, ids: &[u32], lengths: &[usize]) -> candle_core::Result<Tensor> {
        match self {
            Backbone::Bert(e) => e.forward_packed(ids, lengths),
            Backbone::Gemma(e) => e.forward_packed(ids, lengths),
        }
    }

    fn max_sequence_length(&self) -> usize {
        match self {
            Backbone::Bert(e) => e.max_sequence_length(),
            Backbone::Gemma(e) => e.max_sequence_length(),
        }
    }
}

/// A sentence-transformers `Dense` module after pooling: y = act(x·Wᵀ + b).
struct PooledDense {
    dense: Dense,
    tanh: bool,
    out_features: usize,
}

/// A loaded sentence encoder and its tokenizer.
pub struct SentenceEncoder {
    encoder: Backbone,
    /// modules.json's Dense modules, in order, applied to the pooled vector.
    dense: Vec<PooledDense>,
    pub info: ModelInfo,
    pub tokenizer: TextTokenizer,
}

#[derive(Deserialize)]
struct ModelTypeOnly {
    model_type: Option<String>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "default_true")]
    bias: bool,
    /// sentence-transformers' default is Tanh.
    #[serde(default = "default_dense_act")]
    activation_function: String,
}

fn default_true() -> bool {
    true
}
fn default_dense_act() -> String {
    "torch.nn.modules.activation.Tanh".into()
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize, Default)]
struct SentenceTransformersConfig {
    #[serde(default)]
    prompts: std::collections::HashMap<String, String>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EmbedderError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EmbedderError::Load(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EmbedderError::Load(format!("invalid {}: {e}", path.display())))
}

/// Prefixes known model families expect when their files do not say.
fn default_prefixes(model_id: &str) -> (String, String) {
    let id = model_id.to_ascii_lowercase();
    if id.contains("e5") {
        ("query: ".into(), "passage: ".into())
    } else if id.contains("bge") && id.contains("zh") {
        (
            "为这个句子生成表示以用于检索相关文章：".into(),
            String::new(),
        )
    } else if id.contains("bge") && id.contains("en") && !id.contains("m3") {
        (
            "Represent this sentence for searching relevant passages: ".into(),
            String::new(),
        )
    } else {
        (String::new(), String::new())
    }
}

/// A model's directory and config.json, before any weights are read.
pub(crate) struct Opened {
    pub source: ModelSource,
    pub device: candle_core::Device,
    pub device_name: String,
    pub config_path: std::path::PathBuf,
    pub config_text: String,
    pub model_type: String,
}

impl Opened {
    /// Resolves `options.model` and reads its config.json's `model_type`.
    pub(crate) fn open(options: &ModelOptions) -> Result<Self, EmbedderError> {
        let source = ModelSource::resolve(&options.model, options.models_dir.as_deref())?;
        let (device, device_name) =
            zhiku_models::parse_device(&options.device).map_err(EmbedderError::Load)?;
        let config_path = source.get("config.json")?;
        let config_text = std::fs::read_to_string(&config_path).map_err(|e| {
            EmbedderError::Load(format!("cannot read {}: {e}", config_path.display()))
        })?;
        let head: ModelTypeOnly = serde_json::from_str(&config_text)
            .map_err(|e| EmbedderError::Load(format!("invalid {}: {e}", config_path.display())))?;
        Ok(Self {
            source,
            device,
            device_name,
            config_path,
            config_text,
            model_type: head.model_type.unwrap_or_default(),
        })
    }

    /// model.safetensors, memory-mapped.
    fn weights(&self, dtype: DType) -> Result<VarBuilder<'static>, EmbedderError> {
        let weights = self.source.get("model.safetensors")?;
        // SAFETY: the file is memory-mapped read-only; zhiku never writes model files while
        // serving them.
        Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, &self.device) }?)
    }
}

/// A BERT-family checkpoint opened from a directory or the hub: what sentence encoders and
/// cross-encoders ([`crate::reranker::CrossEncoder`]) load the same way.
pub(crate) struct Checkpoint {
    pub source: ModelSource,
    pub device_name: String,
    pub model_type: String,
    /// config.json's text, for the fields a model adds to [`EncoderConfig`].
    pub config_text: String,
    pub config: EncoderConfig,
    /// model.safetensors, memory-mapped.
    pub vb: VarBuilder<'static>,
    pub encoder: TransformerEncoder,
}

impl Checkpoint {
    /// Resolves `options.model`, reads config.json (model_type `bert` or `xlm-roberta`) and
    /// loads the encoder's weights from model.safetensors.
    pub(crate) fn open(options: &ModelOptions) -> Result<Self, EmbedderError> {
        Self::from_opened(Opened::open(options)?, options.precision)
    }

    fn from_opened(opened: Opened, precision: Precision) -> Result<Self, EmbedderError> {
        let model_type = opened.model_type.clone();
        let positions = match model_type.as_str() {
            "bert" => Positions::FromZero,
            "xlm-roberta" | "roberta" => Positions::AfterPadding,
            "gemma3_text" => {
                return Err(EmbedderError::UnsupportedModel(
                    "config.json model_type `gemma3_text` (EmbeddingGemma) is a sentence \
                     encoder, not a cross-encoder: serve it with --model"
                        .into(),
                ));
            }
            other => {
                return Err(EmbedderError::UnsupportedModel(format!(
                    "config.json model_type `{other}`; zhiku's embedder runs `bert` (MiniLM, \
                     bge-*-zh, text2vec, m3e), `xlm-roberta` (bge-m3, multilingual-e5, \
                     bge-reranker, bce-reranker) and `gemma3_text` (EmbeddingGemma)"
                )));
            }
        };
        let Opened {
            ref config_path,
            ref config_text,
            ..
        } = opened;
        let config: EncoderConfig = serde_json::from_str(config_text).map_err(|e| {
            EmbedderError::Load(format!(
                "{model_type} config.json {}: {e}",
                config_path.display()
            ))
        })?;

        let vb = opened.weights(precision.dtype())?;
        let encoder = TransformerEncoder::load(vb.clone(), &config, positions)
            .map_err(|e| EmbedderError::Load(format!("{model_type} weights: {e}")))?;
        let config_text = config_text.clone();
        Ok(Self {
            source: opened.source,
            device_name: opened.device_name,
            model_type,
            config_text,
            config,
            vb,
            encoder,
        })
    }
}

/// The longest input: the encoder's `window`, lowered by each of `limits` that is set.
pub(crate) fn input_limit(window: usize, limits: &[Option<usize>]) -> Result<usize, EmbedderError> {
    let mut max_input_tokens = window;
    for limit in limits.iter().flatten() {
        max_input_tokens = max_input_tokens.min(*limit);
    }
    if max_input_tokens < 2 {
        return Err(EmbedderError::Load(format!(
            "max input tokens would be {max_input_tokens}; it must be at least 2"
        )));
    }
    Ok(max_input_tokens)
}

impl SentenceEncoder {
    /// Loads a model from a directory or the hub.
    pub fn load(options: &ModelOptions) -> Result<Self, EmbedderError> {
        let opened = Opened::open(options)?;
        let (source, device, device_name, model_type, hidden_size, encoder) =
            if opened.model_type == "gemma3_text" {
                let (hidden_size, encoder) = load_gemma(&opened, options.precision)?;
                let Opened {
                    source,
                    device,
                    device_name,
                    model_type,
                    ..
                } = opened;
                (
                    source,
                    device,
                    device_name,
                    model_type,
                    hidden_size,
                    Backbone::Gemma(encoder),
                )
            } else {
                let device = opened.device.clone();
                let checkpoint = Checkpoint::from_opened(opened, options.precision)?;
                (
                    checkpoint.source,
                    device,
                    checkpoint.device_name,
                    checkpoint.model_type,
                    checkpoint.config.hidden_size,
                    Backbone::Bert(checkpoint.encoder),
                )
            };
        let checkpoint_window = encoder.max_sequence_length();
        let dense = load_dense_modules(&source, &device)?;

        let pooling = match options.pooling {
            Some(p) => p,
            None => match source.get_optional("1_Pooling/config.json") {
                Some(path) => {
                    let cfg: PoolingConfig = read_json(&path)?;
                    if cfg.pooling_mode_cls_token {
                        Pooling::Cls
                    } else if cfg.pooling_mode_mean_tokens {
                        Pooling::Mean
                    } else {
                        let mode = if cfg.pooling_mode_max_tokens {
                            "max"
                        } else if cfg.pooling_mode_mean_sqrt_len_tokens {
                            "mean_sqrt_len"
                        } else {
                            "none"
                        };
                        return Err(EmbedderError::UnsupportedModel(format!(
                            "1_Pooling/config.json asks for `{mode}` pooling; zhiku supports \
                             mean and cls (override with --pooling)"
                        )));
                    }
                }
                None => {
                    tracing::warn!("no 1_Pooling/config.json; using mean pooling (--pooling)");
                    Pooling::Mean
                }
            },
        };

        // sentence-transformers truncates at max_seq_length, which may be below the window.
        let st_limit = source
            .get_optional("sentence_bert_config.json")
            .map(|p| read_json::<SentenceBertConfig>(&p))
            .transpose()?
            .and_then(|c| c.max_seq_length);
        let max_input_tokens =
            input_limit(checkpoint_window, &[st_limit, options.max_input_tokens])?;

        let st_prompts = source
            .get_optional("config_sentence_transformers.json")
            .map(|p| read_json::<SentenceTransformersConfig>(&p))
            .transpose()?
            .unwrap_or_default();
        let (known_query, known_passage) = default_prefixes(&source.id());
        let query_prefix = options
            .query_prefix
            .clone()
            .or_else(|| st_prompts.prompts.get("query").cloned())
            .unwrap_or(known_query);
        let passage_prefix = options
            .passage_prefix
            .clone()
            .or_else(|| {
                st_prompts
                    .prompts
                    .get("passage")
                    .or_else(|| st_prompts.prompts.get("document"))
                    .cloned()
            })
            .unwrap_or(known_passage);

        let tokenizer = TextTokenizer::from_file(
            &source.get("tokenizer.json")?,
            max_input_tokens,
            query_prefix.clone(),
            passage_prefix.clone(),
        )?;

        let dimensions = dense.last().map_or(hidden_size, |d| d.out_features);
        let mut encoder = Self {
            encoder,
            dense,
            info: ModelInfo {
                model_id: source.id(),
                model_type,
                dimensions: 0,
                max_input_tokens,
                pooling,
                precision: options.precision,
                device: device_name,
                query_prefix,
                passage_prefix,
            },
            tokenizer,
        };
        // The true width comes from a forward pass, so a checkpoint whose config lies fails
        // here, at load, and not on the first request.
        let probe = encoder.embed_batch(&[&[0, 0]])?;
        encoder.info.dimensions = probe.first().map(Vec::len).unwrap_or(0);
        if dimensions != encoder.info.dimensions {
            return Err(EmbedderError::Load(format!(
                "config.json and the Dense modules say {dimensions} dimensions, the weights \
                 give {}",
                encoder.info.dimensions
            )));
        }
        Ok(encoder)
    }

    /// Embeds a batch of token-id sequences; every sequence must be non-empty and within
    /// `max_input_tokens`. Returns one unit-length vector per sequence.
    pub fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let lengths: Vec<usize> = batch.iter().map(|ids| ids.len()).collect();
        let ids: Vec<u32> = batch.iter().flat_map(|ids| ids.iter().copied()).collect();
        let hidden = self.encoder.forward_packed(&ids, &lengths)?;
        // Pool in f32 whatever the model's dtype: sums over hundreds of tokens lose too much
        // in f16.
        let hidden = hidden.to_dtype(DType::F32)?;
        let mut pooled = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for &n in &lengths {
            pooled.push(match self.info.pooling {
                Pooling::Cls => hidden.get(offset)?,
                Pooling::Mean => hidden.narrow(0, offset, n)?.mean(0)?,
            });
            offset += n;
        }
        let mut pooled = Tensor::stack(&pooled, 0)?;
        for dense in &self.dense {
            pooled = dense.dense.forward(&pooled)?;
            if dense.tanh {
                pooled = pooled.tanh()?;
            }
        }
        let norms = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        let normalized = pooled.broadcast_div(&norms)?;
        Ok(normalized.to_vec2::<f32>()?)
    }
}

/// A `gemma3_text` checkpoint (EmbeddingGemma): its hidden size and encoder.
fn load_gemma(
    opened: &Opened,
    precision: Precision,
) -> Result<(usize, GemmaEncoder), EmbedderError> {
    if precision == Precision::F16 {
        return Err(EmbedderError::UnsupportedModel(
            "EmbeddingGemma's activations overflow f16; load it in f32 or bf16 (--precision)"
                .into(),
        ));
    }
    let config: GemmaConfig = serde_json::from_str(&opened.config_text).map_err(|e| {
        EmbedderError::Load(format!(
            "gemma3_text config.json {}: {e}",
            opened.config_path.display()
        ))
    })?;
    let vb = opened.weights(precision.dtype())?;
    let encoder = GemmaEncoder::load(vb, &config)
        .map_err(|e| EmbedderError::Load(format!("gemma3_text weights: {e}")))?;
    Ok((config.hidden_size, encoder))
}

/// The `sentence_transformers.models.Dense` modules modules.json lists after pooling, each
/// from DIR/config.json and DIR/model.safetensors (`linear.weight`, `linear.bias`), in f32
/// as pooling is. None without modules.json.
fn load_dense_modules(
    source: &ModelSource,
    device: &candle_core::Device,
) -> Result<Vec<PooledDense>, EmbedderError> {
    let Some(path) = source.get_optional("modules.json") else {
        return Ok(Vec::new());
    };
    let modules: Vec<StModule> = read_json(&path)?;
    let mut dense = Vec::new();
    for module in modules {
        match module.kind.rsplit('.').next().unwrap_or_default() {
            "Transformer" | "Pooling" | "Normalize" => {}
            "Dense" => {
                let dir = module.path.trim_end_matches('/');
                let cfg: DenseConfig = read_json(&source.get(&format!("{dir}/config.json"))?)?;
                let tanh = match cfg.activation_function.rsplit('.').next() {
                    Some("Identity") => false,
                    Some("Tanh") => true,
                    _ => {
                        return Err(EmbedderError::UnsupportedModel(format!(
                            "{dir}/config.json: activation `{}`; zhiku's Dense modules run \
                             Identity and Tanh",
                            cfg.activation_function
                        )));
                    }
                };
                let weights = source.get(&format!("{dir}/model.safetensors"))?;
                // SAFETY: as for model.safetensors: read-only, never written while served.
                let vb =
                    unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device) }?;
                let load = || -> candle_core::Result<Dense> {
                    let vb = vb.pp("linear");
                    let weight = vb.get((cfg.out_features, cfg.in_features), "weight")?;
                    let bias = if cfg.bias {
                        Some(vb.get(cfg.out_features, "bias")?)
                    } else {
                        None
                    };
                    Dense::new(&weight, bias)
                };
                dense.push(PooledDense {
                    dense: load().map_err(|e| EmbedderError::Load(format!("{dir}: {e}")))?,
                    tanh,
                    out_features: cfg.out_features,
                });
            }
            other => {
                tracing::warn!(
                    module = %module.kind,
                    "modules.json lists a `{other}` module, which zhiku does not run; the \
                     vectors may differ from sentence-transformers'"
                );
            }
        }
    }
    Ok(dense)
}
