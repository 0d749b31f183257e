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
        refuse_adapters_for_gguf(&adapters)?;
        return load_file(model, args.model.clone(), &device);
    }
    let source = ModelSource::resolve(&args.model, Some(&args.models_dir))?;
    match &source {
        ModelSource::Local(dir) => {
            if dir.join("config.json").is_file() && gguf_files(dir).is_empty() {
                return directory::load(dir, source.id(), &device, args.dtype.dtype(), &adapters);
            }
            refuse_adapters_for_gguf(&adapters)?;
            let named = dir.join(&args.gguf_file);
            if named.is_file() {
                return load_file(&named, source.id(), &device);
            }
            let ggufs = gguf_files(dir);
            match ggufs.as_slice() {
                [one] => load_file(one, source.id(), &device),
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
        ModelSource::Hub { .. } => {
            refuse_adapters_for_gguf(&adapters)?;
            let path = source.get(&args.gguf_file)?;
            load_file(&path, source.id(), &device)
        }
    }
}

fn load_file(
    path: &Path,
    model_id: String,
    device: &candle_core::Device,
) -> Result<LoadedModel, GeneratorError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => gguf::load(path, model_id, device),
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

fn refuse_adapters_for_gguf(adapters: &directory::AdapterRequest) -> Result<(), GeneratorError> {
    if adapters.merge.is_empty() && adapters.attach.is_empty() {
        Ok(())
    } else {
        Err(GeneratorError::UnsupportedModel(
            "LoRA adapters (--lora, --merge-lora) apply to safetensors checkpoints, not to \
             quantized GGUF files"
                .into(),
        ))
    }
}
