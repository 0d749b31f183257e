//! Training checkpoints, for `--resume`: the A/B tensors, AdamW's moments and step count,
//! the LR schedule's step, the data cursor (epoch, batch index) and the RNG state, with the
//! LoRA spec, the training hyper-parameters and the dataset's fingerprint so that a resume
//! with other data or other hyper-parameters is refused instead of silently training
//! something else.
//!
//! A checkpoint is a directory `step-NNNNNNNNNN/` (`state.json`, `tensors.safetensors`)
//! under the run's checkpoint directory. It is written under a temporary name, fsynced and
//! renamed; older checkpoints are removed only once the new one is complete, so a failed
//! write (a full disk) leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::atomic::{io, remove_stale, replace_dir, sync_dir, sync_file, write_synced};
use crate::error::TuneError;
use crate::spec::{LayerSelection, LoraInit, LoraSpec};

const STATE_FILE: &str = "state.json";
const TENSORS_FILE: &str = "tensors.safetensors";
const STEP_PREFIX: &str = "step-";
const FORMAT: u32 = 2;

/// Where training stands: enough to continue as if it had not stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Progress {
    /// Optimizer steps taken (AdamW's t, for its bias correction).
    pub optimizer_step: u64,
    /// The LR schedule's step (differs from `optimizer_step` only if the schedule restarts).
    pub schedule_step: u64,
    /// The data cursor: the epoch, and the index of the next batch in it
    /// ([`crate::dataset::epoch_batches`] rebuilds the epoch's batches from the seed).
    pub epoch: u64,
    pub batch_index: u64,
    /// The trainer's RNG state (dropout masks), e.g. [`crate::dataset::SeededRng::state`].
    pub rng_state: u64,
}

/// One module's trainable state: A [r, in], B [out, r] and AdamW's first and second moments
/// of each (shaped like them).
#[derive(Debug, Clone)]
pub struct ModuleState {
    pub module: String,
    pub a: Tensor,
    pub b: Tensor,
    pub a_first_moment: Tensor,
    pub a_second_moment: Tensor,
    pub b_first_moment: Tensor,
    pub b_second_moment: Tensor,
}

/// What else than the LoRA spec must stay the same for a run to continue: the optimizer,
/// the schedule (its length included), batching and the seed (the data order).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub learning_rate: f64,
    pub warmup_steps: u64,
    /// Optimizer steps of the whole run (the cosine's length).
    pub total_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub batch_size: u64,
    pub grad_accumulation: u64,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// The rows' length with packing (None: unpacked). Absent from checkpoints written
    /// before packing: they were unpacked.
    #[serde(default)]
    pub packing: Option<u64>,
}

impl Hyperparameters {
    /// "name: X then, Y now" for every field that differs.
    fn differences(&self, now: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, then: String, now: String| {
            if then != now {
                out.push(format!("{name} {then} then, {now} now"));
            }
        };
        let opt = |v: Option<f64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        field(
            "learning rate",
            self.learning_rate.to_string(),
            now.learning_rate.to_string(),
        );
        field(
            "warm-up steps",
            self.warmup_steps.to_string(),
            now.warmup_steps.to_string(),
        );
        field(
            "total steps (--epochs, the data's size, the batch)",
            self.total_steps.to_string(),
            now.total_steps.to_string(),
        );
        field(
            "weight decay",
            self.weight_decay.to_string(),
            now.weight_decay.to_string(),
        );
        field("beta1", self.beta1.to_string(), now.beta1.to_string());
        field("beta2", self.beta2.to_string(), now.beta2.to_string());
        field("eps", self.eps.to_string(), now.eps.to_string());
        field(
            "batch size",
            self.batch_size.to_string(),
            now.batch_size.to_string(),
        );
        field(
            "gradient accumulation",
            self.grad_accumulation.to_string(),
            now.grad_accumulation.to_string(),
        );
        field(
            "max gradient norm",
            opt(self.max_grad_norm),
            opt(now.max_grad_norm),
        );
        field("seed", self.seed.to_string(), now.seed.to_string());
        let packing =
            |p: Option<u64>| p.map_or_else(|| "off".to_owned(), |n| format!("{n} tokens"));
        field("packing", packing(self.packing), packing(now.packing));
        out
    }
}

/// A whole checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub progress: Progress,
    pub spec: LoraSpec,
    pub hyperparameters: Hyperparameters,
    /// [`crate::dataset::fingerprint`] of the training examples.
    pub data_fingerprint: String,
    pub modules: Vec<ModuleState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SpecRecord {
    rank: usize,
    alpha: f64,
    dropout: f64,
    targets: Vec<String>,
    init: String,
    /// [`LayerSelection`]'s text; checkpoints from before it trained every block.
    #[serde(default = "all_layers")]
    layers: String,
}

fn all_layers() -> String {
    LayerSelection::All.to_string()
}

impl From<&LoraSpec> for SpecRecord {
    fn from(spec: &LoraSpec) -> Self {
        Self {
            rank: spec.rank,
            alpha: spec.alpha,
            dropout: spec.dropout,
            targets: spec.targets.clone(),
            init: init_name(spec.init).to_owned(),
            layers: spec.layers.to_string(),
        }
    }
}

fn init_name(init: LoraInit) -> &'static str {
    match init {
        LoraInit::Gaussian => "gaussian",
        LoraInit::Kaiming => "kaiming",
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StateRecord {
    format: u32,
    progress: Progress,
    spec: SpecRecord,
    hyperparameters: Hyperparameters,
    data_fingerprint: String,
    modules: Vec<String>,
}

const PARTS: [&str; 6] = ["a", "b", "a.m", "a.v", "b.m", "b.v"];

impl Checkpoint {
    /// Refuses to resume this checkpoint into a run with another spec, other
    /// hyper-parameters or other data; the error says what differs.
    pub fn check_resumable(
        &self,
        spec: &LoraSpec,
        hyperparameters: &Hyperparameters,
        data_fingerprint: &str,
    ) -> Result<(), TuneError> {
        let (was, now) = (SpecRecord::from(&self.spec), SpecRecord::from(spec));
        if was != now {
            return Err(TuneError::Validation(format!(
                "cannot resume: the checkpoint was trained with {} and this run asks for {}; \
                 use the same flags, or train into a new output directory without --resume",
                describe(&was),
                describe(&now)
            )));
        }
        let differ = self.hyperparameters.differences(hyperparameters);
        if !differ.is_empty() {
            return Err(TuneError::Validation(format!(
                "cannot resume: {}; use the same flags, or train into a new output directory \
                 without --resume",
                differ.join("; ")
            )));
        }
        if self.data_fingerprint != data_fingerprint {
            return Err(TuneError::Validation(format!(
                "cannot resume: the training data differ from the checkpoint's (fingerprint \
                 {} now, {} then); the dataset, --max-seq-len or the split changed. Use the \
                 same data, or train without --resume",
                short(data_fingerprint),
                short(&self.data_fingerprint)
            )));
        }
        Ok(())
    }
}

fn describe(spec: &SpecRecord) -> String {
    format!(
        "rank {}, alpha {}, dropout {}, targets {}, init {}, layers {}",
        spec.rank,
        spec.alpha,
        spec.dropout,
        spec.targets.join(","),
        spec.init,
        spec.layers
    )
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// Writes `checkpoint` as `dir/step-N` (N = its optimizer step), atomically, then removes
/// all but the newest `keep` checkpoints (at least this one). Returns the new directory.
pub fn save_checkpoint(
    dir: &Path,
    checkpoint: &Checkpoint,
    keep: usize,
) -> Result<PathBuf, TuneError> {
    let mut tensors = HashMap::new();
    let mut modules = Vec::with_capacity(checkpoint.modules.len());
    for m in &checkpoint.modules {
        let parts = [
            &m.a,
            &m.b,
            &m.a_first_moment,
            &m.a_second_moment,
            &m.b_first_moment,
            &m.b_second_moment,
        ];
        for (part, tensor) in PARTS.iter().zip(parts) {
            let key = format!("{}/{part}", m.module);
            if tensors.insert(key.clone(), tensor.contiguous()?).is_some() {
                return Err(TuneError::Validation(format!(
                    "module {} is given twice",
                    m.module
                )));
            }
        }
        modules.push(m.module.clone());
    }
    let state = StateRecord {
        format: FORMAT,
        progress: checkpoint.progress,
        spec: SpecRecord::from(&checkpoint.spec),
        hyperparameters: checkpoint.hyperparameters,
        data_fingerprint: checkpoint.data_fingerprint.clone(),
        modules,
    };
    let state = serde_json::to_vec_pretty(&state)
        .map_err(|e| TuneError::Training(format!("cannot encode a checkpoint: {e}")))?;

    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = format!("{STEP_PREFIX}{:010}", checkpoint.progress.optimizer_step);
    let target = dir.join(&name);
    let staging = dir.join(format!(".{name}.partial"));
    let result = (|| {
        remove_stale(&staging)?;
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        let weights = staging.join(TENSORS_FILE);
        candle_core::safetensors::save(&tensors, &weights)
            .map_err(|e| TuneError::Training(format!("cannot write {}: {e}", weights.display())))?;
        sync_file(&weights)?;
        // state.json last: a directory with it is complete.
        write_synced(&staging.join(STATE_FILE), &state)?;
        sync_dir(&staging)?;
        replace_dir(&staging, &target, dir, &name, STATE_FILE)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result?;
    let mut all = list_checkpoints(dir)?;
    all.retain(|(_, path)| *path != target);
    let extra = all.len().saturating_sub(keep.saturating_sub(1));
    for (_, old) in all.into_iter().take(extra) {
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(path = %old.display(), error = %e, "cannot remove an old checkpoint");
        }
    }
    Ok(target)
}

/// The complete checkpoints under `dir`, oldest first.
fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, TuneError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let step = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(STEP_PREFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step
            && path.join(STATE_FILE).is_file()
        {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint under `dir`, if any.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>, TuneError> {
    Ok(list_checkpoints(dir)?.pop().map(|(_, path)| path))
}

/// Reads the checkpoint directory `path` (one `step-N`) onto `device`.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint, TuneError> {
    let state_path = path.join(STATE_FILE);
    let bad = |what: String| TuneError::Validation(format!("{}: {what}", path.display()));
    let text = std::fs::read(&state_path).map_err(io(&state_path))?;
    let state: StateRecord =
        serde_json::from_slice(&text).map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
    if state.format != FORMAT {
        return Err(bad(format!(
            "checkpoint format {} (this zhiku reads {FORMAT})",
            state.format
        )));
    }
    let init = match state.spec.init.as_str() {
        "gaussian" => LoraInit::Gaussian,
        "kaiming" => LoraInit::Kaiming,
        other => return Err(bad(format!("unknown init `{other}`"))),
    };
    let layers = LayerSelection::parse(&state.spec.layers).map_err(|e| bad(e.to_string()))?;
    let weights = path.join(TENSORS_FILE);
    let mut tensors = candle_core::safetensors::load(&weights, device)
        .map_err(|e| bad(format!("{TENSORS_FILE}: {e}")))?;
    let mut modules = Vec::with_capacity(state.modules.len());
    for module in state.modules {
        let mut take = |part: &str| {
            tensors
                .remove(&format!("{module}/{part}"))
                .ok_or_else(|| bad(format!("{TENSORS_FILE} lacks {module}/{part}")))
        };
        modules.push(ModuleState {
            a: take("a")?,
            b: take("b")?,
            a_first_moment: take("a.m")?,
            a_second_moment: take("a.v")?,
            b_first_moment: take("b.m")?,
            b_second_moment: take("b.v")?,
            module,
        });
    }
    Ok(Checkpoint {
        progress: state.progress,
        spec: LoraSpec {
            rank: state.spec.rank,
            alpha: state.spec.alpha,
            dropout: state.spec.dropout,
            targets: state.spec.targets,
            init,
            layers,
        },
        hyperparameters: state.hyperparameters,
        data_fingerprint: state.data_fingerprint,
        modules,
    })
}

/// The checkpoint `dir` is (a `step-N` directory), or the newest one under it.
pub fn find_checkpoint(dir: &Path) -> Result<Option<PathBuf>, TuneError> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(Some(dir.to_path_buf()));
    }
    latest_checkpoint(dir)
}

/// `--resume`: the checkpoint at `dir` (one `step-N` directory) or the newest one under it,
/// checked against this run's spec, hyper-parameters and data (None when there is none
/// yet). Returns where it was read from.
pub fn resume_from(
    dir: &Path,
    spec: &LoraSpec,
    hyperparameters: &Hyperparameters,
    data_fingerprint: &str,
    device: &Device,
) -> Result<Option<(PathBuf, Checkpoint)>, TuneError> {
    let Some(path) = find_checkpoint(dir)? else {
        return Ok(None);
    };
    let checkpoint = load_checkpoint(&path, device)?;
    checkpoint
        .check_resumable(spec, hyperparameters, data_fingerprint)
        .map_err(|e| TuneError::Validation(format!("{}: {e}", path.display())))?;
    Ok(Some((path, checkpoint)))
}
