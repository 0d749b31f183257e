//! Where model files come from: a local directory, or a Hugging Face hub repository.
//!
//! A `--model` value that names an existing directory is used as is. Anything else is a hub
//! id (`BAAI/bge-small-zh-v1.5`, optionally `id@revision`): files are looked up in the local
//! hub cache first (so a machine without network works once the files are cached, and with
//! `HF_HUB_OFFLINE=1` never touches the network), then downloaded with `hf-hub`.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

/// Floating-point precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F16 => candle_core::DType::F16,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The precision a user asks for: a [`Precision`], or `auto` (bf16 on a GPU, where it halves
/// memory and bandwidth at no loss that matters for inference; f32 on the CPU, where
/// candle's half-precision matmuls are slower than f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Auto,
    F32,
    F16,
    Bf16,
}

impl PrecisionArg {
    /// The precision to load with on `device`.
    pub fn resolve(self, device: &candle_core::Device) -> Precision {
        match self {
            PrecisionArg::Auto if device.is_cpu() => Precision::F32,
            PrecisionArg::Auto => Precision::Bf16,
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

/// Fixes the number of CPU threads candle computes with, once, and returns it.
///
/// candle asks its thread count on every matmul, and unless `RAYON_NUM_THREADS` is set it
/// re-reads `/proc/cpuinfo` each time: 36 reads per MiniLM forward pass, about 3 ms of a
/// short text's 10. Setting the variable to the count candle would compute turns every
/// later ask into an environment lookup. A value the user set (`RAYON_NUM_THREADS` or
/// `CANDLE_NUM_THREADS`) is kept.
///
/// # Safety
/// It writes the process environment: call it first thing in `main`, before any other
/// thread exists (the async runtime included).
pub unsafe fn pin_cpu_threads() -> usize {
    let threads = candle_core::utils::get_num_threads();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread is running.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    threads
}

/// Parses `cpu`, `cuda` or `cuda:N` into a candle device and its printable name.
pub fn parse_device(spec: &str) -> Result<(candle_core::Device, String), String> {
    match spec {
        "cpu" => Ok((candle_core::Device::Cpu, "cpu".into())),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| format!("bad device `{s}`: use cpu, cuda or cuda:N"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(format!(
                    "device `{s}` asked for, but this binary was built without the `cuda` \
                     feature (cargo build --features cuda) or no CUDA device is present"
                ));
            }
            let device = candle_core::Device::new_cuda(ordinal)
                .map_err(|e| format!("cannot open {s}: {e}"))?;
            Ok((device, format!("cuda:{ordinal}")))
        }
        other => Err(format!("bad device `{other}`: use cpu, cuda or cuda:N")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelSourceError {
    #[error("model directory {dir} has no {file}")]
    MissingLocalFile { dir: PathBuf, file: String },
    #[error(
        "cannot get {file} of hub model `{repo}`: {reason}. Pass --model a local directory \
         holding the model's files (e.g. one laid out by scripts/fetch-models), or make the \
         Hugging Face hub reachable"
    )]
    Hub {
        repo: String,
        file: String,
        reason: String,
    },
    #[error("invalid model id `{0}`: expected a directory or a hub id like `org/name[@revision]`")]
    InvalidId(String),
}

/// A model's file set, local or on the hub.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Local(PathBuf),
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// Interprets a `--model` value: an existing directory, else a hub id.
    pub fn parse(model: &str) -> Result<Self, ModelSourceError> {
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let (repo, revision) = match model.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (model, "main"),
        };
        let valid = !repo.is_empty()
            && !revision.is_empty()
            && repo.split('/').count() <= 2
            && repo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            && !repo.starts_with('/')
            && !repo.starts_with('.');
        if !valid {
            return Err(ModelSourceError::InvalidId(model.to_owned()));
        }
        Ok(Self::Hub {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
        })
    }

    /// Like [`ModelSource::parse`], but a hub id whose name (the part after the last `/`)
    /// is a directory under `models_dir` is taken from there: the layout
    /// `scripts/fetch-models` makes, so that the default hub ids work offline.
    pub fn resolve(model: &str, models_dir: Option<&Path>) -> Result<Self, ModelSourceError> {
        if let Some(dir) = models_dir
            && !Path::new(model).is_dir()
        {
            let name = model.split('@').next().unwrap_or(model);
            let name = name.rsplit('/').next().unwrap_or(name);
            let candidate = dir.join(name);
            if !name.is_empty() && !name.starts_with('.') && candidate.is_dir() {
                return Ok(Self::Local(candidate));
            }
        }
        Self::parse(model)
    }

    /// A printable id: the directory or `org/name`.
    pub fn id(&self) -> String {
        match self {
            Self::Local(dir) => dir.display().to_string(),
            Self::Hub { repo, .. } => repo.clone(),
        }
    }

    /// The path of a file the model must have.
    pub fn get(&self, file: &str) -> Result<PathBuf, ModelSourceError> {
        match self {
            Self::Local(dir) => {
                let path = dir.join(file);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(ModelSourceError::MissingLocalFile {
                        dir: dir.clone(),
                        file: file.to_owned(),
                    })
                }
            }
            Self::Hub { repo, revision } => {
                let hub_repo = Repo::with_revision(repo.clone(), RepoType::Model, revision.clone());
                if let Some(path) = Cache::from_env().repo(hub_repo.clone()).get(file) {
                    return Ok(path);
                }
                if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
                    return Err(ModelSourceError::Hub {
                        repo: repo.clone(),
                        file: file.to_owned(),
                        reason: "not in the local hub cache and HF_HUB_OFFLINE=1".into(),
                    });
                }
                tracing::info!(repo, file, "downloading from the Hugging Face hub");
                let api = hf_hub::api::sync::ApiBuilder::from_env()
                    .with_progress(false)
                    .build()
                    .map_err(|e| ModelSourceError::Hub {
                        repo: repo.clone(),
                        file: file.to_owned(),
                        reason: e.to_string(),
                    })?;
                api.repo(hub_repo)
                    .get(file)
                    .map_err(|e| ModelSourceError::Hub {
                        repo: repo.clone(),
                        file: file.to_owned(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Whether `file` is already on this machine (a local directory, or the local hub
    /// cache), without touching the network.
    pub fn is_local(&self, file: &str) -> bool {
        match self {
            Self::Local(dir) => dir.join(file).is_file(),
            Self::Hub { repo, revision } => Cache::from_env()
                .repo(Repo::with_revision(
                    repo.clone(),
                    RepoType::Model,
                    revision.clone(),
                ))
                .get(file)
                .is_some(),
        }
    }

    /// The path of a file the model may have; `None` when it has not.
    pub fn get_optional(&self, file: &str) -> Option<PathBuf> {
        match self {
            Self::Local(dir) => Some(dir.join(file)).filter(|p| p.is_file()),
            // A hub repo without the file answers 404; any failure means "not there" here.
            Self::Hub { .. } => self.get(file).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let source = ModelSource::parse(dir.path().to_str().unwrap()).unwrap();
        assert!(matches!(source, ModelSource::Local(_)));
        assert!(source.get("config.json").unwrap().ends_with("config.json"));
        let err = source.get("model.safetensors").unwrap_err();
        assert!(
            err.to_string().contains("has no model.safetensors"),
            "{err}"
        );
        assert!(source.get_optional("1_Pooling/config.json").is_none());
    }

    #[test]
    fn models_dir_layout_wins_over_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("all-MiniLM-L6-v2")).unwrap();
        let source =
            ModelSource::resolve("sentence-transformers/all-MiniLM-L6-v2", Some(dir.path()))
                .unwrap();
        match source {
            ModelSource::Local(path) => assert!(path.ends_with("all-MiniLM-L6-v2")),
            other => panic!("{other:?}"),
        }
        let hub = ModelSource::resolve("BAAI/bge-small-zh-v1.5", Some(dir.path())).unwrap();
        assert!(matches!(hub, ModelSource::Hub { .. }));
    }

    #[test]
    fn devices() {
        assert_eq!(parse_device("cpu").unwrap().1, "cpu");
        let cpu = candle_core::Device::Cpu;
        assert_eq!(PrecisionArg::Auto.resolve(&cpu), Precision::F32);
        assert_eq!(PrecisionArg::Bf16.resolve(&cpu), Precision::Bf16);
        assert!(
            parse_device("tpu")
                .unwrap_err()
                .contains("bad device `tpu`")
        );
        if !candle_core::utils::cuda_is_available() {
            assert!(
                parse_device("cuda:0")
                    .unwrap_err()
                    .contains("`cuda` feature")
            );
        }
    }

    #[test]
    fn hub_ids() {
        match ModelSource::parse("BAAI/bge-small-zh-v1.5@v2").unwrap() {
            ModelSource::Hub { repo, revision } => {
                assert_eq!(repo, "BAAI/bge-small-zh-v1.5");
                assert_eq!(revision, "v2");
            }
            other => panic!("{other:?}"),
        }
        assert!(ModelSource::parse("a/b/c").is_err());
        assert!(ModelSource::parse("/no/such/dir").is_err());
        assert!(ModelSource::parse("bad id").is_err());
    }

    #[test]
    fn offline_hub_miss_is_a_clear_error() {
        let cache = tempfile::tempdir().unwrap();
        // SAFETY: tests in this crate do not read these variables concurrently elsewhere.
        unsafe {
            std::env::set_var("HF_HOME", cache.path());
            std::env::set_var("HF_HUB_OFFLINE", "1");
        }
        let source = ModelSource::parse("sentence-transformers/all-MiniLM-L6-v2").unwrap();
        let err = source.get("config.json").unwrap_err().to_string();
        assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");
        assert!(err.contains("--model"), "{err}");
    }
}
