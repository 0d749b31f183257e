//! Finds the model's files and picks the loader: [`ModelSpec`] says which model and how.

pub mod directory;
pub mod gguf;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use zhiku_models::ModelSource;

pub use directory::AdapterRequest;

use crate::ComputePath;
use crate::error::LmError;
use crate::model::LoadedModel;

/// Which model to load, where, and how it runs.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// A .gguf file, a directory (one .gguf file, or config.json + safetensors), or a
    /// Hugging Face hub id `org/name[@revision]`.
    pub model: String,
    /// The GGUF file to use inside a directory or hub repository holding several.
    pub gguf_file: String,
    /// Where a hub id's name is looked up first, offline.
    pub models_dir: PathBuf,
    pub device: Device,
    /// Precision of safetensors checkpoints (GGUF files keep their quantisation).
    pub dtype: DType,
    /// LoRA adapters merged at load or kept beside the weights.
    pub adapters: AdapterRequest,
    /// Kernels or tensor ops (tensors always off the CPU).
    pub compute: ComputePath,
}

impl ModelSpec {
    /// `model` on the CPU in f32, kernel path, no adapters; the GGUF file name when the
    /// model is a directory or hub id holding several is `gguf_file`.
    pub fn cpu(model: impl Into<String>, gguf_file: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            gguf_file: gguf_file.into(),
            models_dir: PathBuf::from("models"),
            device: Device::Cpu,
            dtype: DType::F32,
            adapters: AdapterRequest::default(),
            compute: ComputePath::Kernels,
        }
    }
}

/// Loads the model `spec` names.
pub fn load_model(spec: &ModelSpec) -> Result<LoadedModel, LmError> {
    let device = &spec.device;
    let adapters = &spec.adapters;
    let compute = ComputePath::on(spec.compute, device);
    let model = Path::new(&spec.model);
    if model.is_file() {
        return load_file(model, spec.model.clone(), device, adapters, compute);
    }
    let source = ModelSource::resolve(&spec.model, Some(&spec.models_dir))?;
    match &source {
        ModelSource::Local(dir) => {
            if dir.join("config.json").is_file() && gguf_files(dir).is_empty() {
                return directory::load(dir, source.id(), device, spec.dtype, adapters, compute);
            }
            let named = dir.join(&spec.gguf_file);
            if named.is_file() {
                return load_file(&named, source.id(), device, adapters, compute);
            }
            let ggufs = gguf_files(dir);
            match ggufs.as_slice() {
                [one] => load_file(one, source.id(), device, adapters, compute),
                [] => Err(LmError::Load(format!(
                    "{} holds neither a .gguf file nor config.json",
                    dir.display()
                ))),
                many => Err(LmError::Load(format!(
                    "{} holds {} .gguf files: name one with --gguf-file",
                    dir.display(),
                    many.len()
                ))),
            }
        }
        // A hub repository holds GGUF files or a safetensors checkpoint: the named GGUF file
        // wins; without it, a repository with config.json is a checkpoint.
        ModelSource::Hub { .. } => match source.get(&spec.gguf_file) {
            Ok(path) => load_file(&path, source.id(), device, adapters, compute),
            Err(gguf_missing) => match source.get_optional("config.json") {
                Some(config) => {
                    let dir = fetch_checkpoint(&source, &config)?;
                    directory::load(&dir, source.id(), device, spec.dtype, adapters, compute)
                }
                None => Err(gguf_missing.into()),
            },
        },
    }
}

/// Files a safetensors checkpoint may have besides config.json and its weights.
const CHECKPOINT_EXTRAS: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "ice_text.model",
];

/// Fetches a hub checkpoint (config.json at `config`): the tokenizer and generation files it
/// has, and its weights, one file or the shards its index names. The hub cache keeps one
/// revision's files in one snapshot directory, which is returned for the directory loader.
fn fetch_checkpoint(source: &ModelSource, config: &Path) -> Result<PathBuf, LmError> {
    let dir = config
        .parent()
        .ok_or_else(|| LmError::Load(format!("{} has no directory", config.display())))?
        .to_path_buf();
    for file in CHECKPOINT_EXTRAS {
        let _ = source.get_optional(file);
    }
    if source.get_optional("model.safetensors").is_some() {
        return Ok(dir);
    }
    let index = source.get("model.safetensors.index.json").map_err(|e| {
        LmError::Load(format!(
            "{} has neither a GGUF file named by --gguf-file nor model.safetensors: {e}",
            source.id()
        ))
    })?;
    let shards = directory::index_shards(&index)?;
    if shards.is_empty() {
        return Err(LmError::Load(format!(
            "{}: weight_map names no shard",
            index.display()
        )));
    }
    for shard in &shards {
        // The names come from the repository: keep them inside its snapshot directory.
        let inside = Path::new(shard)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(LmError::Load(format!(
                "{}: shard name `{shard}` leaves the repository",
                index.display()
            )));
        }
        source.get(shard)?;
    }
    Ok(dir)
}

fn load_file(
    path: &Path,
    model_id: String,
    device: &Device,
    adapters: &AdapterRequest,
    compute: ComputePath,
) -> Result<LoadedModel, LmError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => gguf::load(path, model_id, device, adapters, compute),
        _ => Err(LmError::UnsupportedModel(format!(
            "{}: expected a .gguf file or a model directory",
            path.display()
        ))),
    }
}

fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}
