//! The ONNX models on ONNX Runtime (through `ort`, the library loaded at run time), or on
//! tract (pure Rust) where the crate is built with its `tract` feature. ONNX Runtime is the
//! default: `ocr-bench --runtime both` measures the two on the same pages
//! (docs/src/benchmarks/ocr.md).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
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
    backend: Backend,
}

/// Where a model runs, resolved from [`crate::OcrRuntime`] by the engine.
#[derive(Debug, Clone)]
pub(crate) enum Runtime {
    /// ONNX Runtime, from this library, on the CPU or a CUDA device.
    OnnxRuntime {
        library: PathBuf,
        cuda_device: Option<u32>,
    },
    #[cfg(feature = "tract")]
    Tract,
}

enum Backend {
    OnnxRuntime(Mutex<Session>),
    #[cfg(feature = "tract")]
    Tract(Box<tract::TractModel>),
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// `spatial_step`: the input's free height and width are multiples of it (the
    /// detector's 32); tract plans with that, where ONNX Runtime needs no hint.
    pub fn load(
        name: &'static str,
        path: &Path,
        runtime: &Runtime,
        threads: usize,
        spatial_step: usize,
    ) -> Result<Self, OcrError> {
        #[cfg(not(feature = "tract"))]
        let _ = spatial_step;
        let backend = match runtime {
            Runtime::OnnxRuntime {
                library,
                cuda_device,
            } => Backend::OnnxRuntime(Mutex::new(ort_session(
                path,
                library,
                threads,
                *cuda_device,
            )?)),
            #[cfg(feature = "tract")]
            Runtime::Tract => Backend::Tract(Box::new(
                tract::TractModel::load(path, threads, spatial_step).map_err(|e| {
                    OcrError::BadModel {
                        model: path.display().to_string(),
                        reason: format!("{e:#}"),
                    }
                })?,
            )),
        };
        Ok(Self { name, backend })
    }

    /// A custom metadata entry of the model.
    pub fn metadata(&self, key: &str) -> Option<String> {
        match &self.backend {
            Backend::OnnxRuntime(session) => {
                let session = session
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                session.metadata().ok()?.custom(key)
            }
            #[cfg(feature = "tract")]
            Backend::Tract(model) => model.metadata(key),
        }
    }

    /// Runs the model on one f32 tensor; returns the first output's shape and values.
    pub fn run(
        &self,
        shape: [usize; 4],
        data: Vec<f32>,
    ) -> Result<(Vec<usize>, Vec<f32>), OcrError> {
        match &self.backend {
            Backend::OnnxRuntime(session) => self.run_ort(session, shape, data),
            #[cfg(feature = "tract")]
            Backend::Tract(model) => model.run(shape, data).map_err(|e| OcrError::Inference {
                model: self.name,
                reason: format!("{e:#}"),
            }),
        }
    }

    fn run_ort(
        &self,
        session: &Mutex<Session>,
        shape: [usize; 4],
        data: Vec<f32>,
    ) -> Result<(Vec<usize>, Vec<f32>), OcrError> {
        let fail = |e: ort::Error| OcrError::Inference {
            model: self.name,
            reason: e.to_string(),
        };
        let input = Tensor::from_array((shape, data)).map_err(fail)?;
        let mut session = session
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

fn ort_session(
    path: &Path,
    library: &Path,
    threads: usize,
    cuda_device: Option<u32>,
) -> Result<Session, OcrError> {
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
        .map_err(|e| bad(e.to_string()))?;
    let session = match cuda_device {
        Some(device) => on_cuda(session, device, path),
        None => session,
    }
    .commit_from_file(path)
    .map_err(|e| bad(e.to_string()))?;
    if session.inputs().len() != 1 || session.outputs().is_empty() {
        return Err(bad("expected one input and at least one output".into()));
    }
    Ok(session)
}

/// ONNX Runtime's CUDA execution provider on `device`, or the CPU (with a warning) where
/// the loaded library has no such provider or the build lacks the `cuda` feature.
#[cfg(feature = "cuda")]
fn on_cuda(builder: SessionBuilder, device: u32, path: &Path) -> SessionBuilder {
    let cuda = ort::ep::CUDA::default()
        .with_device_id(i32::try_from(device).unwrap_or(i32::MAX))
        .build()
        .error_on_failure();
    match builder.with_execution_providers([cuda]) {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!(
                model = %path.display(),
                "OCR on the CPU: ONNX Runtime's CUDA execution provider on cuda:{device} \
                 failed ({e}); its GPU library (onnxruntime-gpu) must be the one loaded \
                 (ORT_DYLIB_PATH)"
            );
            e.recover()
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(builder: SessionBuilder, device: u32, path: &Path) -> SessionBuilder {
    tracing::warn!(
        model = %path.display(),
        "OCR on the CPU, not cuda:{device}: this build has no CUDA for ONNX Runtime \
         (build the embedder with `--features cuda`)"
    );
    builder
}

#[cfg(feature = "tract")]
mod tract {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use tract_linalg::multithread::{Executor, multithread_tract_scope};
    use tract_onnx::prelude::*;
    use tract_onnx::tract_hir::infer::Factoid;

    /// A model optimised once with its free dimensions (batch, height, width) left
    /// symbolic, so one plan serves every input; where tract cannot reason about those
    /// dimensions symbolically (the detector's feature pyramid), a plan per input shape,
    /// kept for the next input of that shape.
    pub struct TractModel {
        plans: Plans,
        executor: Executor,
        metadata: HashMap<String, String>,
    }

    enum Plans {
        Symbolic(Arc<TypedRunnableModel>),
        PerShape {
            model: Box<InferenceModel>,
            plans: Mutex<HashMap<[usize; 4], Arc<TypedRunnableModel>>>,
        },
    }

    impl TractModel {
        pub fn load(path: &Path, threads: usize, spatial_step: usize) -> TractResult<Self> {
            let model = tract_onnx::onnx().model_for_path(path)?;
            let metadata = model
                .properties
                .iter()
                .filter_map(|(key, value)| {
                    let key = key.strip_prefix("onnx.metadata_props.")?;
                    let value = value.to_plain_array_view::<String>().ok()?;
                    Some((key.to_string(), value.iter().next()?.clone()))
                })
                .collect();
            let declared = model.input_fact(0)?.shape.clone();
            let mut dims: TVec<TDim> = tvec![];
            for i in 0..4 {
                let fixed = declared
                    .dim(i)
                    .and_then(|d| d.concretize())
                    .and_then(|d| d.to_i64().ok())
                    .filter(|&d| d > 0);
                let free = TDim::from(model.sym(&format!("d{i}")));
                dims.push(match fixed {
                    Some(d) => TDim::from(d),
                    None if i >= 2 && spatial_step > 1 => free * spatial_step as i64,
                    None => free,
                });
            }
            let symbolic = model
                .clone()
                .with_input_fact(0, f32::fact(dims).into())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable());
            let plans = match symbolic {
                Ok(plan) => Plans::Symbolic(plan),
                Err(e) => {
                    tracing::debug!(model = %path.display(), "tract plans per input shape: {e}");
                    Plans::PerShape {
                        model: Box::new(model),
                        plans: Mutex::new(HashMap::new()),
                    }
                }
            };
            let executor = if threads > 1 {
                Executor::multithread(threads)
            } else {
                Executor::SingleThread
            };
            Ok(Self {
                plans,
                executor,
                metadata,
            })
        }

        fn plan(&self, shape: [usize; 4]) -> TractResult<Arc<TypedRunnableModel>> {
            match &self.plans {
                Plans::Symbolic(plan) => Ok(plan.clone()),
                Plans::PerShape { model, plans } => {
                    let mut plans = plans.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(plan) = plans.get(&shape) {
                        return Ok(plan.clone());
                    }
                    let plan = model
                        .clone()
                        .with_input_fact(0, f32::fact(shape).into())?
                        .into_optimized()?
                        .into_runnable()?;
                    plans.insert(shape, plan.clone());
                    Ok(plan)
                }
            }
        }

        pub fn metadata(&self, key: &str) -> Option<String> {
            self.metadata.get(key).cloned()
        }

        pub fn run(
            &self,
            shape: [usize; 4],
            data: Vec<f32>,
        ) -> TractResult<(Vec<usize>, Vec<f32>)> {
            let input = Tensor::from_shape(&shape, &data)?;
            let plan = self.plan(shape)?;
            let outputs = multithread_tract_scope(self.executor.clone(), || {
                plan.run(tvec![input.into_tvalue()])
            })?;
            let output = outputs
                .first()
                .ok_or_else(|| TractError::msg("no output"))?;
            let view = output.to_plain_array_view::<f32>()?;
            Ok((view.shape().to_vec(), view.iter().copied().collect()))
        }
    }
}
