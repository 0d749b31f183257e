//! Adapters in PEFT's layout, so that zhiku, PEFT/transformers and vLLM load them:
//! `adapter_config.json` (LoraConfig's fields, plus a `zhiku` section) and
//! `adapter_model.safetensors` with PEFT's tensor names
//! (`base_model.model.<module>.lora_A.weight` [r, in], `….lora_B.weight` [out, r]).
//!
//! Writing is atomic: both files go to a temporary directory beside the target, are fsynced,
//! and the directory is renamed into place, so a failure (a full disk, a cancelled job) never
//! leaves half an adapter where the generator would load it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::atomic::{io, remove_stale, replace_dir, sync_dir, sync_file, write_synced};
use crate::digest::sha256_file;
use crate::error::TuneError;
use crate::spec::{LayerSelection, LoraInit, LoraSpec, TrainedPair};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// The base model an adapter was trained on, as its `adapter_config.json` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseModel {
    /// `base_model_name_or_path`: a hub id or a path.
    pub name_or_path: String,
    /// SHA-256 of the base's file, for GGUF bases (a file name says little about its bytes).
    pub sha256: Option<String>,
}

impl BaseModel {
    /// A base named `name_or_path`; when `file` is a GGUF file its SHA-256 is recorded
    /// (streamed: the file may be GBs).
    pub fn new(name_or_path: impl Into<String>, file: Option<&Path>) -> Result<Self, TuneError> {
        let sha256 = match file {
            Some(path)
                if path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf")) =>
            {
                Some(sha256_file(path)?)
            }
            _ => None,
        };
        Ok(Self {
            name_or_path: name_or_path.into(),
            sha256,
        })
    }
}

/// zhiku's own section of `adapter_config.json` (PEFT ignores keys it does not know).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ZhikuSection {
    /// SHA-256 of the GGUF base file the adapter was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha256: Option<String>,
    /// The short target names as given to `zhiku tune --target`.
    #[serde(default)]
    pub targets: Vec<String>,
    /// What wrote the adapter.
    #[serde(default)]
    pub trainer: String,
}

/// An adapter read back from a PEFT directory (for `--init-adapter`).
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// PEFT's `target_modules` (long names: `q_proj`).
    pub target_modules: Vec<String>,
    pub base_model: Option<String>,
    pub zhiku: Option<ZhikuSection>,
    /// Sorted by module path.
    pub pairs: Vec<TrainedPair>,
}

/// Writes `pairs` as a PEFT adapter directory at `dir`, atomically. An existing adapter
/// directory at `dir` is replaced (only once the new one is complete); anything else there
/// is refused.
pub fn write_adapter(
    dir: &Path,
    pairs: &[TrainedPair],
    spec: &LoraSpec,
    base: &BaseModel,
) -> Result<(), TuneError> {
    if pairs.is_empty() {
        return Err(TuneError::Validation(
            "no trained modules: an adapter needs at least one A/B pair".into(),
        ));
    }
    let mut tensors = HashMap::new();
    let mut modules = BTreeSet::new();
    for pair in pairs {
        check_pair(&pair.module, &pair.a, &pair.b, spec.rank)?;
        let leaf = pair.module.rsplit('.').next().unwrap_or(&pair.module);
        modules.insert(leaf.to_owned());
        for (part, tensor) in [("lora_A", &pair.a), ("lora_B", &pair.b)] {
            let key = format!("{PREFIX}{}.{part}.weight", pair.module);
            if tensors.insert(key.clone(), tensor.contiguous()?).is_some() {
                return Err(TuneError::Validation(format!("{key} is given twice")));
            }
        }
    }
    let layers_to_transform = match &spec.layers {
        LayerSelection::All => Value::Null,
        LayerSelection::Only(layers) => {
            // PEFT would skip a pair outside the listed blocks when it loads the adapter.
            for pair in pairs {
                let block = block_index(&pair.module);
                if block.is_none_or(|b| !layers.contains(&b)) {
                    return Err(TuneError::Validation(format!(
                        "{} is not in the blocks the adapter lists ({})",
                        pair.module, spec.layers
                    )));
                }
            }
            Value::from(layers.clone())
        }
        LayerSelection::Last(n) => {
            return Err(TuneError::Validation(format!(
                "layers last:{n} must be resolved against the model's blocks before an \
                 adapter is written"
            )));
        }
    };
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.name_or_path,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": modules.into_iter().collect::<Vec<_>>(),
        // Without a pattern PEFT takes the block index from the first `.name.N.` of the
        // module's path (`model.layers.3.self_attn.q_proj`).
        "layers_to_transform": layers_to_transform,
        "layers_pattern": null,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": match spec.init {
            LoraInit::Gaussian => Value::from("gaussian"),
            LoraInit::Kaiming => Value::from(true),
        },
        "modules_to_save": null,
        "use_rslora": false,
        "use_dora": false,
        "zhiku": ZhikuSection {
            base_sha256: base.sha256.clone(),
            targets: spec.targets.clone(),
            trainer: format!("zhiku-tuner {}", env!("CARGO_PKG_VERSION")),
        },
    });
    let config = serde_json::to_vec_pretty(&config)
        .map_err(|e| TuneError::Training(format!("cannot encode {CONFIG_FILE}: {e}")))?;

    let (parent, name) = split_dir(dir)?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| {
        remove_stale(&staging)?;
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        write_synced(&staging.join(CONFIG_FILE), &config)?;
        let weights = staging.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&tensors, &weights)
            .map_err(|e| TuneError::Training(format!("cannot write {}: {e}", weights.display())))?;
        sync_file(&weights)?;
        sync_dir(&staging)?;
        replace_dir(&staging, dir, &parent, &name, CONFIG_FILE)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Reads a PEFT adapter directory onto `device`: both tensor name styles PEFT writes
/// (`….lora_A.weight`, and `….lora_A.default.weight` from a state dict saved with the
/// adapter's name), with or without the `base_model.model.` prefix.
pub fn read_adapter(dir: &Path, device: &Device) -> Result<PeftAdapter, TuneError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let bad = |what: String| TuneError::Validation(format!("{}: {what}", config_path.display()));
    let config: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    match config.get("peft_type").and_then(Value::as_str) {
        None | Some("LORA") => {}
        Some(other) => return Err(bad(format!("peft_type is {other}; only LORA is supported"))),
    }
    let rank = config
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
    let alpha = match config.get("lora_alpha") {
        None => 8.0, // PEFT's default
        Some(v) => v
            .as_f64()
            .ok_or_else(|| bad("`lora_alpha` must be a number".into()))?,
    };
    let dropout = config
        .get("lora_dropout")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let target_modules = match config.get("target_modules") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let base_model = config
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let zhiku = match config.get("zhiku") {
        Some(section) => Some(
            serde_json::from_value(section.clone())
                .map_err(|e| bad(format!("the `zhiku` section: {e}")))?,
        ),
        None => None,
    };

    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(TuneError::Validation(format!(
            "{} is missing (zhiku reads safetensors adapters; convert an adapter_model.bin \
             with PEFT first)",
            weights.display()
        )));
    }
    let tensors = candle_core::safetensors::load(&weights, device).map_err(|e| {
        TuneError::Validation(format!(
            "{}: not a safetensors file: {e}",
            weights.display()
        ))
    })?;
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (key, tensor) in tensors {
        let name = key.strip_prefix(PREFIX).unwrap_or(&key);
        let (module, is_a) = if let Some(m) = name
            .strip_suffix(".lora_A.weight")
            .or_else(|| name.strip_suffix(".lora_A.default.weight"))
        {
            (m, true)
        } else if let Some(m) = name
            .strip_suffix(".lora_B.weight")
            .or_else(|| name.strip_suffix(".lora_B.default.weight"))
        {
            (m, false)
        } else {
            continue;
        };
        let slot = halves.entry(module.to_owned()).or_default();
        let place = if is_a { &mut slot.0 } else { &mut slot.1 };
        if place.replace(tensor).is_some() {
            return Err(TuneError::Validation(format!(
                "{}: {module} has two lora_{} tensors",
                weights.display(),
                if is_a { 'A' } else { 'B' }
            )));
        }
    }
    let mut pairs = Vec::new();
    for (module, halves) in halves {
        let (Some(a), Some(b)) = halves else {
            return Err(TuneError::Validation(format!(
                "{}: {module} lacks its lora_A or lora_B",
                weights.display()
            )));
        };
        check_pair(&module, &a, &b, rank)
            .map_err(|e| TuneError::Validation(format!("{}: {e}", weights.display())))?;
        pairs.push(TrainedPair { module, a, b });
    }
    if pairs.is_empty() {
        return Err(TuneError::Validation(format!(
            "{} holds no lora_A/lora_B weights",
            weights.display()
        )));
    }
    Ok(PeftAdapter {
        rank,
        alpha,
        dropout,
        target_modules,
        base_model,
        zhiku,
        pairs,
    })
}

/// The block a module's path names: its first all-digit part (`model.layers.3.mlp.up_proj`),
/// as PEFT reads it when `layers_pattern` is unset.
fn block_index(module: &str) -> Option<usize> {
    module.split('.').find_map(|part| part.parse().ok())
}

/// A must be [r, in] and B [out, r].
fn check_pair(module: &str, a: &Tensor, b: &Tensor, rank: usize) -> Result<(), TuneError> {
    match (a.dims(), b.dims()) {
        (&[ra, _], &[_, rb]) if ra == rank && rb == rank => Ok(()),
        (a, b) => Err(TuneError::Validation(format!(
            "{module}: A is {a:?} and B is {b:?}; rank {rank} needs A [{rank}, in] and \
             B [out, {rank}]"
        ))),
    }
}

fn split_dir(dir: &Path) -> Result<(PathBuf, String), TuneError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| TuneError::Validation(format!("{}: not a directory name", dir.display())))?
        .to_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    Ok((parent, name))
}
