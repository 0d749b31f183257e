//! The ONNX models on ONNX Runtime (through `ort`, the library loaded at run time).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use crate::OcrError;

/// ONNX Runtime allows one environment per process; every engine shares it. The first
/// library path that loads is the one used for the life of the process.
static ENVIRONMENT: OnceLock<Result<Environment, (PathBuf, String)>> = OnceLock::new();

fn environment(library: &Path) -> Result<&'static Environment, OcrError> {
    let env = ENVIRONMENT.get_or_init(|| {
        let fail = |reason: String| (library.to_path_buf(), reason);
        ort::init_from(library)
            .map_err(|e| fail(e.to_string()))?
            .with_name("zhiku-ocr")
            .build()
            .map_err(|e| fail(e.to_string()))
    });
    env.as_ref().map_err(|(path, reason)| OcrError::Runtime {
        path: path.clone(),
        reason: reason.clone(),
    })
}

/// One model's session. ONNX Runtime runs a session from one caller at a time here; the
/// session's own threads do the parallel work.
pub(crate) struct Model {
    name: &'static str,
    session: Mutex<Session>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Model {
    pub fn load(
        name: &'static str,
        path: &Path,
        library: &Path,
        threads: usize,
    ) -> Result<Self, OcrError> {
        let env = environment(library)?;
        let bad = |reason: String| OcrError::BadModel {
            model: path.display().to_string(),
            reason,
        };
        let session = Session::builder(env)
            .map_err(|e| bad(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| bad(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| bad(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| bad(e.to_string()))?
            .commit_from_file(path)
            .map_err(|e| bad(e.to_string()))?;
        if session.inputs().len() != 1 || session.outputs().is_empty() {
            return Err(bad("expected one input and at least one output".into()));
        }
        Ok(Self {
            name,
            session: Mutex::new(session),
        })
    }

    /// A custom metadata entry of the model.
    pub fn metadata(&self, key: &str) -> Option<String> {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        session.metadata().ok()?.custom(key)
    }

    /// Runs the model on one f32 tensor; returns the first output's shape and values.
    pub fn run(
        &self,
        shape: [usize; 4],
        data: Vec<f32>,
    ) -> Result<(Vec<usize>, Vec<f32>), OcrError> {
        let fail = |e: ort::Error| OcrError::Inference {
            model: self.name,
            reason: e.to_string(),
        };
        let input = Tensor::from_array((shape, data)).map_err(fail)?;
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session.run(ort::inputs![input]).map_err(fail)?;
        let Some((_, value)) = outputs.iter().next() else {
            return Err(OcrError::Inference {
                model: self.name,
                reason: "no output".into(),
            });
        };
        let (shape, values) = value.try_extract_tensor::<f32>().map_err(fail)?;
        let dims = shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect();
        Ok((dims, values.to_vec()))
    }
}
