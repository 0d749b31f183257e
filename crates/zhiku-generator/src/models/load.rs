//! Finds the model's files and picks the loader.

use std::path::{Path, PathBuf};

use zhiku_models::ModelSource;

use super::{LoadedModel, directory, gguf};
use crate::config::GeneratorArgs;
use crate::error::GeneratorError;

/// Loads the model `args` names.
pub fn load_model(args: &GeneratorArgs) -> Result<LoadedModel, GeneratorError> {
    let (device, _) = zhiku_models::parse_device(&args.device).map_err(GeneratorError::Load)?;
    let adapters = args.adapters()?;
    let model = Path::new(&args.model);
    if model.is_file() {
        return load_file(model, args.model.clone(), &device, &adapters);
    }
    let source = ModelSource::resolve(&args.model, Some(&args.models_dir))?;
    match &source {
        ModelSource::Local(dir) => {
            if dir.join("config.json").is_file() && gguf_files(dir).is_empty() {
                return directory::load(dir, source.id(), &device, args.dtype.dtype(), &adapters);
            }
            let named = dir.join(&args.gguf_file);
            if named.is_file() {
                return load_file(&named, source.id(), &device, &adapters);
            }
            let ggufs = gguf_files(dir);
            match ggufs.as_slice() {
                [one] => load_file(one, source.id(), &device, &adapters),
                [] => Err(GeneratorError::Load(format!(
                    "{} holds neither a .gguf file nor config.json",
                    dir.display()
                ))),
                many => Err(GeneratorError::Load(format!(
                    "{} holds {} .gguf files: name one with --gguf-file",
                    dir.display(),
                    many.len()
                ))),
            }
        }
        // A hub repository holds GGUF files or a safetensors checkpoint: the named GGUF file
        // wins; without it, a repository with config.json is a checkpoint.
        ModelSource::Hub { .. } => match source.get(&args.gguf_file) {
            Ok(path) => load_file(&path, source.id(), &device, &adapters),
            Err(gguf_missing) => match source.get_optional("config.json") {
                Some(config) => {
                    let dir = fetch_checkpoint(&source, &config)?;
                    directory::load(&dir, source.id(), &device, args.dtype.dtype(), &adapters)
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
fn fetch_checkpoint(source: &ModelSource, config: &Path) -> Result<PathBuf, GeneratorError> {
    let dir = config
        .parent()
        .ok_or_else(|| GeneratorError::Load(format!("{} has no directory", config.display())))?
        .to_path_buf();
    for file in CHECKPOINT_EXTRAS {
        let _ = source.get_optional(file);
    }
    if source.get_optional("model.safetensors").is_some() {
        return Ok(dir);
    }
    let index = source.get("model.safetensors.index.json").map_err(|e| {
        GeneratorError::Load(format!(
            "{} has neither a GGUF file named by --gguf-file nor model.safetensors: {e}",
            source.id()
        ))
    })?;
    let shards = directory::index_shards(&index)?;
    if shards.is_empty() {
        return Err(GeneratorError::Load(format!(
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
            return Err(GeneratorError::Load(format!(
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
    device: &candle_core::Device,
    adapters: &directory::AdapterRequest,
) -> Result<LoadedModel, GeneratorError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => gguf::load(path, model_id, device, adapters),
        _ => Err(GeneratorError::UnsupportedModel(format!(
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
