//! LoRA, as the article teaches: a frozen weight W0 plus a low-rank update, W = W0 + B·A,
//! with A [r, in] (Gaussian at initialisation) and B [out, r] (zero at initialisation, so an
//! untrained adapter changes nothing), scaled by alpha / r.
//!
//! Adapters are PEFT checkpoints: `adapter_config.json` (r, lora_alpha, target_modules) and
//! `adapter_model.safetensors` (`…<module>.lora_A.weight`, `…<module>.lora_B.weight`). An
//! adapter is either merged into the base weights at load (W = W0 + (alpha/r)·B·A, no cost
//! per token) or kept beside them and chosen per request
//! (y = W0·x + (alpha/r)·B·(A·x)), so one base model serves many domain adapters.

use std::collections::HashMap;
use std::path::Path;

#[cfg(feature = "reference")]
use candle_core::Module;
use candle_core::{DType, Device, Tensor};
#[cfg(feature = "reference")]
use candle_nn::Linear;
use serde::Deserialize;

use crate::error::LmError;

#[derive(Debug, Clone, Deserialize)]
struct AdapterConfig {
    r: usize,
    lora_alpha: f32,
    #[serde(default)]
    target_modules: TargetModules,
    #[serde(default)]
    peft_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(untagged)]
enum TargetModules {
    List(Vec<String>),
    One(String),
    #[default]
    None,
}

/// An adapter the model can apply .
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSummary {
    pub name: String,
    pub rank: usize,
    pub alpha: f32,
    pub target_modules: Vec<String>,
    pub merged: bool,
}

/// One module's low-rank pair.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// [r, in]
    pub a: Tensor,
    /// [out, r]
    pub b: Tensor,
    /// alpha / r
    pub scale: f64,
}

impl LoraPair {
    /// (alpha/r)·B·A, shaped like the base weight [out, in].
    pub fn delta(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// A loaded PEFT adapter: module path (as in the base model, e.g.
/// `transformer.layers.0.attention.query_key_value`) → its pair.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub name: String,
    /// Unique per load: K/V cached under one load of a name are never reused by another.
    pub id: u64,
    pub rank: usize,
    pub alpha: f32,
    pub target_modules: Vec<String>,
    pub pairs: HashMap<String, LoraPair>,
}

impl LoraAdapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(name: &str, dir: &Path, dtype: DType, device: &Device) -> Result<Self, LmError> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            LmError::Load(format!(
                "adapter `{name}`: cannot read {}: {e}",
                config_path.display()
            ))
        })?;
        let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| {
            LmError::Load(format!("adapter `{name}`: {}: {e}", config_path.display()))
        })?;
        if let Some(kind) = config.peft_type.as_deref()
            && kind != "LORA"
        {
            return Err(LmError::UnsupportedModel(format!(
                "adapter `{name}` is PEFT `{kind}`; only LORA adapters are supported"
            )));
        }
        if config.r == 0 {
            return Err(LmError::Load(format!(
                "adapter `{name}`: r must be at least 1"
            )));
        }
        let weights = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| LmError::Load(format!("adapter `{name}`: {}: {e}", weights.display())))?;
        let scale = config.lora_alpha as f64 / config.r as f64;
        let mut a_parts: HashMap<String, Tensor> = HashMap::new();
        let mut b_parts: HashMap<String, Tensor> = HashMap::new();
        for (key, tensor) in tensors {
            let key = key
                .strip_prefix("base_model.model.")
                .unwrap_or(&key)
                .to_owned();
            let tensor = tensor.to_dtype(dtype)?;
            if let Some(module) = key.strip_suffix(".lora_A.weight") {
                a_parts.insert(module.to_owned(), tensor);
            } else if let Some(module) = key.strip_suffix(".lora_B.weight") {
                b_parts.insert(module.to_owned(), tensor);
            }
        }
        let mut pairs = HashMap::new();
        for (module, a) in a_parts {
            let b = b_parts.remove(&module).ok_or_else(|| {
                LmError::Load(format!(
                    "adapter `{name}`: {module} has lora_A but no lora_B"
                ))
            })?;
            let (r_a, _) = a.dims2()?;
            let (_, r_b) = b.dims2()?;
            if r_a != config.r || r_b != config.r {
                return Err(LmError::Load(format!(
                    "adapter `{name}`: {module} has rank {r_a}/{r_b}, adapter_config.json says {}",
                    config.r
                )));
            }
            pairs.insert(module, LoraPair { a, b, scale });
        }
        if pairs.is_empty() {
            return Err(LmError::Load(format!(
                "adapter `{name}`: {} holds no lora_A/lora_B weights",
                weights.display()
            )));
        }
        let target_modules = match config.target_modules {
            TargetModules::List(l) => l,
            TargetModules::One(s) => vec![s],
            TargetModules::None => Vec::new(),
        };
        Ok(Self {
            name: name.to_owned(),
            id: NEXT_ADAPTER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            rank: config.r,
            alpha: config.lora_alpha,
            target_modules,
            pairs,
        })
    }

    /// An adapter with no modules (changes nothing).
    pub fn none() -> Self {
        Self {
            name: String::new(),
            id: 0,
            rank: 0,
            alpha: 0.0,
            target_modules: Vec::new(),
            pairs: HashMap::new(),
        }
    }

    /// Identifies this load of the adapter (prefix-cache entries are keyed by it).
    pub fn key(&self) -> String {
        format!("{}#{}", self.name, self.id)
    }

    pub fn summary(&self, merged: bool) -> AdapterSummary {
        AdapterSummary {
            name: self.name.clone(),
            rank: self.rank,
            alpha: self.alpha,
            target_modules: self.target_modules.clone(),
            merged,
        }
    }
}

/// The LoRA pairs a training forward ([`crate::decoder::Decoder::forward_train`]) applies:
/// A and B are tensors of the trainer's variables, so gradients flow to them.
pub trait TrainLora {
    /// The pair on the layer named `module` (PEFT's module path), if it is targeted.
    fn pair(&self, module: &str) -> Option<&LoraPair>;
    /// The dropout mask on the input LoRA's A sees at `module` (x⊙mask, kept entries scaled
    /// by 1/(1-p)), drawn anew at every call; None: no dropout.
    fn lora_mask(&self, _module: &str, _x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
}

/// A loaded adapter applied as it is (no dropout).
impl TrainLora for LoraAdapter {
    fn pair(&self, module: &str) -> Option<&LoraPair> {
        self.pairs.get(module)
    }
}

static NEXT_ADAPTER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// W0 + (alpha/r)·B·A in W0's dtype: the one merge rule, used by our own layers
/// (`LoraLinear::merge`) and by checkpoints merged before candle builds them
/// ([`merge_into_tensors`]).
pub fn merged_weight(weight: &Tensor, pair: &LoraPair) -> Result<Tensor, LmError> {
    let delta = pair.delta()?.to_dtype(weight.dtype())?;
    if delta.dims() != weight.dims() {
        return Err(LmError::Load(format!(
            "adapter update {:?} does not fit weight {:?}",
            delta.dims(),
            weight.dims()
        )));
    }
    Ok((weight + delta)?)
}

/// Merges `adapter` into a checkpoint's tensors, keyed by their safetensors names. PEFT
/// module names are the checkpoint's weight names without ".weight", so module `m` updates
/// `m.weight`. This is how adapters reach architectures whose layers candle-transformers
/// builds (they cannot carry unmerged adapters): merge first, then build the model from the
/// merged tensors. Every module of the adapter must find its weight, so that an adapter made
/// for another model is refused rather than half applied.
pub fn merge_into_tensors(
    tensors: &mut HashMap<String, Tensor>,
    adapter: &LoraAdapter,
    dtype: DType,
) -> Result<(), LmError> {
    let mut modules: Vec<(&String, &LoraPair)> = adapter.pairs.iter().collect();
    modules.sort_by_key(|(module, _)| *module);
    for (module, pair) in modules {
        let key = format!("{module}.weight");
        let weight = tensors.get(&key).ok_or_else(|| {
            LmError::Load(format!(
                "adapter `{}`: module {module} matches no weight of the model (no `{key}`)",
                adapter.name
            ))
        })?;
        let merged = merged_weight(&weight.to_dtype(dtype)?, pair)?;
        tensors.insert(key, merged);
    }
    Ok(())
}

/// A linear layer that may carry unmerged LoRA adapters, one of which is applied per call
/// (the reference ChatGLM-6B network's; the server's layers take adapters per row,
/// `layers::Linear`).
#[cfg(feature = "reference")]
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    adapters: HashMap<String, LoraPair>,
}

#[cfg(feature = "reference")]
impl LoraLinear {
    pub fn new(base: Linear) -> Self {
        Self {
            base,
            adapters: HashMap::new(),
        }
    }

    pub fn base(&self) -> &Linear {
        &self.base
    }

    /// Keeps `pair` beside the base weight under `name`.
    pub fn attach(&mut self, name: &str, pair: LoraPair) -> Result<(), LmError> {
        let (out, inp) = self.base.weight().dims2()?;
        let (_, a_in) = pair.a.dims2()?;
        let (b_out, _) = pair.b.dims2()?;
        if a_in != inp || b_out != out {
            return Err(LmError::Load(format!(
                "adapter `{name}` does not fit a [{out}, {inp}] layer (A takes {a_in}, B gives {b_out})"
            )));
        }
        self.adapters.insert(name.to_owned(), pair);
        Ok(())
    }

    /// Folds `pair` into the base weight: W = W0 + (alpha/r)·B·A.
    pub fn merge(&mut self, pair: &LoraPair) -> Result<(), LmError> {
        let merged = merged_weight(self.base.weight(), pair)?;
        self.base = Linear::new(merged, self.base.bias().cloned());
        Ok(())
    }

    /// y = W0·x (+ (alpha/r)·B·(A·x) when `adapter` is attached here).
    pub fn forward(&self, xs: &Tensor, adapter: Option<&str>) -> candle_core::Result<Tensor> {
        let y = self.base.forward(xs)?;
        match adapter.and_then(|name| self.adapters.get(name)) {
            None => Ok(y),
            Some(pair) => {
                let low = xs.broadcast_matmul(&pair.a.t()?)?;
                let update = (low.broadcast_matmul(&pair.b.t()?)? * pair.scale)?;
                y + update
            }
        }
    }
}
