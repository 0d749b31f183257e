//! Whether an adapter was trained on the model this generator serves. `zhiku tune` records
//! the SHA-256 of its GGUF base in the adapter's config (`zhiku.base_sha256`); a file name
//! says little about its bytes, so `LoadAdapter` compares that digest with the served GGUF
//! file's and refuses another base, naming both. Adapters without the record (PEFT's own),
//! or a model that is not one GGUF file, are not compared here: their shapes still are.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::config::GeneratorArgs;
use crate::error::GeneratorError;

/// The served model's identity, its digest computed at the first adapter that asks (a GGUF
/// base is GBs: never at start-up).
#[derive(Debug, Default)]
pub struct ServedBase {
    model: String,
    gguf_file: String,
    models_dir: PathBuf,
    digest: OnceLock<Option<String>>,
}

impl ServedBase {
    pub fn of(args: &GeneratorArgs) -> Self {
        Self {
            model: args.model.clone(),
            gguf_file: args.gguf_file.clone(),
            models_dir: args.models_dir.clone(),
            digest: OnceLock::new(),
        }
    }

    /// The GGUF file the model loads from, as the loader picks it: the file named, the
    /// --gguf-file of a directory or hub repository, or a directory's only .gguf file.
    fn gguf(&self) -> Option<PathBuf> {
        let model = Path::new(&self.model);
        if model.is_file() {
            return is_gguf(model).then(|| model.to_path_buf());
        }
        let source =
            zhiku_models::ModelSource::resolve(&self.model, Some(&self.models_dir)).ok()?;
        if let Some(named) = source.get_optional(&self.gguf_file).filter(|p| is_gguf(p)) {
            return Some(named);
        }
        let zhiku_models::ModelSource::Local(dir) = source else {
            return None;
        };
        let mut ggufs = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_gguf(p));
        match (ggufs.next(), ggufs.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// The served GGUF file's SHA-256 (lowercase hex); None when the model is not one GGUF
    /// file or it cannot be read.
    fn sha256(&self) -> Option<&str> {
        self.digest
            .get_or_init(|| {
                let path = self.gguf()?;
                match sha256_file(&path) {
                    Ok(digest) => Some(digest),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot hash the served model");
                        None
                    }
                }
            })
            .as_deref()
    }

    /// Refuses the adapter at `dir` when its config records a GGUF base other than the
    /// served one; `model_id` names the served model in the error.
    pub fn check(&self, name: &str, dir: &Path, model_id: &str) -> Result<(), GeneratorError> {
        // A missing or malformed config is the adapter loader's error to report.
        let Some(config) = std::fs::read_to_string(dir.join("adapter_config.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        else {
            return Ok(());
        };
        let Some(recorded) = config["zhiku"]["base_sha256"].as_str() else {
            return Ok(());
        };
        let Some(served) = self.sha256() else {
            return Ok(());
        };
        if served.eq_ignore_ascii_case(recorded) {
            return Ok(());
        }
        let trained_on = config["base_model_name_or_path"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("an unnamed model");
        Err(GeneratorError::Validation(format!(
            "adapter `{name}` was trained on `{trained_on}` (GGUF sha256 {recorded}), but this \
             generator serves `{model_id}` (sha256 {served}): train it on the served model, \
             or serve its base"
        )))
    }
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The lowercase hex SHA-256 of a file, read in blocks.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&block[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
