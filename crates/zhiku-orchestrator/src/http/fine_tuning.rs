//! OpenAI-shaped fine-tuning routes, passed to the tuner (`zhiku.v1.Tuner`, `--tuner-addr`)
//! over gRPC, over its replicas ([`crate::tuners`]: a job's calls go to the replica that
//! holds it, a listing merges them all); without `--tuner-addr` they answer 501.
//!
//! | route | gRPC |
//! |---|---|
//! | `POST /v1/fine_tuning/jobs` | CreateJob |
//! | `GET /v1/fine_tuning/jobs` | ListJobs (newest first) |
//! | `GET /v1/fine_tuning/jobs/ID` | GetJob |
//! | `POST /v1/fine_tuning/jobs/ID/cancel` | CancelJob |
//! | `GET /v1/fine_tuning/jobs/ID/events` `?limit=N` | WatchJob (the events so far, newest first) |
//!
//! A job is OpenAI's `fine_tuning.job` object (`status` queued, running, succeeded, failed,
//! cancelled; `fine_tuned_model` the adapter's name once written) with zhiku's own fields
//! under `zhiku` (the adapter's path on the tuner's volume, the place in the queue, the
//! latest step). The request takes OpenAI's `training_file` as a path under the tuner's
//! `--data-dir`, or `training_data` (the records themselves), `suffix` (or `adapter_name`)
//! for the adapter's name, `seed`, and `hyperparameters`: `n_epochs` and `batch_size`
//! (`"auto"`: the default) and zhiku's own (`rank`, `alpha`, `dropout`, `targets`,
//! `layers`, `learning_rate`, …). The base model is the tuner's: `model` is not used.

use axum::extract::{Path, RawQuery, State};
use serde_json::{Value, json};
use zhiku_proto::v1::{
    CreateJobRequest, LoraInit, TooLongPolicy, TuneHyperparameters, TuneJob, TuneJobEvent,
    TuneJobEventKind, TuneJobState, create_job_request,
};

use super::{ApiError, HttpState, Json};
use crate::tuners::Tuners;

impl HttpState {
    fn tuner(&self) -> Result<&Tuners, ApiError> {
        self.tuner.as_ref().ok_or_else(|| {
            ApiError::unimplemented(
                "fine-tuning needs the tuner: start zhiku-tuner and give the orchestrator \
                 --tuner-addr (ZHIKU_TUNER_ADDR)",
            )
        })
    }
}

fn status_name(state: i32) -> &'static str {
    match TuneJobState::try_from(state) {
        Ok(TuneJobState::Queued) => "queued",
        Ok(TuneJobState::Running) => "running",
        Ok(TuneJobState::Succeeded) => "succeeded",
        Ok(TuneJobState::Failed) => "failed",
        Ok(TuneJobState::Cancelled) => "cancelled",
        _ => "validating_files",
    }
}

fn seconds(unix_ms: i64) -> Option<i64> {
    (unix_ms > 0).then_some(unix_ms / 1000)
}

fn event_json(e: &TuneJobEvent) -> Value {
    json!({
        "kind": match TuneJobEventKind::try_from(e.kind) {
            Ok(TuneJobEventKind::Step) => "step",
            Ok(TuneJobEventKind::Epoch) => "epoch",
            _ => "state",
        },
        "status": status_name(e.state),
        "step": e.step,
        "total_steps": e.total_steps,
        "epoch": e.epoch,
        "epochs": e.epochs,
        "train_loss": match TuneJobEventKind::try_from(e.kind) {
            Ok(TuneJobEventKind::Step) => Some(e.loss),
            _ => e.train_loss,
        },
        "valid_loss": e.validation_loss,
        "learning_rate": e.learning_rate,
        "tokens_per_second": e.tokens_per_second,
        "eta_seconds": e.eta_seconds,
        "elapsed_seconds": e.elapsed_seconds,
    })
}

/// A job as OpenAI's `fine_tuning.job`, with zhiku's fields under `zhiku`.
pub fn job_json(job: &TuneJob) -> Value {
    let h = job.hyperparameters.clone().unwrap_or_default();
    let state = TuneJobState::try_from(job.state).unwrap_or(TuneJobState::Unspecified);
    let estimated_finish = match (&job.progress, state) {
        (Some(p), TuneJobState::Running) if p.step > 0 => {
            Some((p.unix_ms / 1000) + p.eta_seconds.round() as i64)
        }
        _ => None,
    };
    json!({
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.base_model,
        "created_at": seconds(job.created_unix_ms),
        "finished_at": seconds(job.finished_unix_ms),
        "fine_tuned_model": (state == TuneJobState::Succeeded).then_some(&job.adapter_name),
        "status": status_name(job.state),
        "training_file": job.dataset,
        "validation_file": null,
        "result_files": [],
        "trained_tokens": null,
        "seed": h.seed,
        "estimated_finish": estimated_finish,
        "error": (state == TuneJobState::Failed).then(|| json!({
            "code": "training_failed",
            "message": job.error,
            "param": null,
        })),
        "hyperparameters": {
            "n_epochs": h.epochs,
            "batch_size": h.batch_size,
            "learning_rate": h.learning_rate,
            "rank": h.rank,
            "alpha": h.alpha,
            "dropout": h.dropout,
            "targets": h.targets,
            "layers": h.layers,
            "init": match LoraInit::try_from(h.init) {
                Ok(LoraInit::Kaiming) => "kaiming",
                _ => "gaussian",
            },
            "warmup_steps": h.warmup_steps,
            "weight_decay": h.weight_decay,
            "grad_accumulation": h.grad_accumulation,
            "max_grad_norm": h.max_grad_norm,
            "max_seq_len": h.max_seq_len,
            "too_long": match TooLongPolicy::try_from(h.too_long) {
                Ok(TooLongPolicy::Skip) => "skip",
                _ => "truncate",
            },
            "validation": h.validation,
            "early_stop": h.early_stop,
            "gradient_checkpointing": h.gradient_checkpointing,
            "packing": h.packing,
        },
        "zhiku": {
            "adapter_name": job.adapter_name,
            "adapter_dir": job.adapter_dir,
            "queue_position": job.queue_position,
            "records": job.records,
            "train_examples": job.train_examples,
            "validation_examples": job.validation_examples,
            "started_at": seconds(job.started_unix_ms),
            "adapter_epoch": job.adapter_epoch,
            "validation_loss": job.validation_loss,
            "progress": job.progress.as_ref().map(event_json),
            "error": job.error,
        },
    })
}

/// A number field: absent, null or "auto" is unset.
fn number(object: &Value, key: &'static str) -> Result<Option<f64>, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be a number or \"auto\""))),
    }
}

/// A whole, non-negative number field.
fn count<T: TryFrom<u64>>(object: &Value, key: &'static str) -> Result<Option<T>, ApiError> {
    let bad = || ApiError::invalid(key, format!("`{key}` must be a whole number or \"auto\""));
    match number(object, key)? {
        None => Ok(None),
        Some(n) if n >= 0.0 && n.fract() == 0.0 => {
            T::try_from(n as u64).map(Some).map_err(|_| bad())
        }
        Some(_) => Err(bad()),
    }
}

/// A true/false field.
fn flag(object: &Value, key: &'static str) -> Result<Option<bool>, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be true or false"),
        )),
    }
}

fn text<'a>(object: &'a Value, key: &'static str) -> Result<Option<&'a str>, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be a string"))),
    }
}

/// The CreateJob request of an OpenAI-shaped body.
fn create_request(body: &Value) -> Result<CreateJobRequest, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_body("the body must be a JSON object"));
    }
    let dataset = match (text(body, "training_data")?, text(body, "training_file")?) {
        (Some(records), None) => create_job_request::Dataset::DatasetJsonl(records.to_owned()),
        (None, Some(path)) => create_job_request::Dataset::DatasetPath(path.to_owned()),
        _ => {
            return Err(ApiError::invalid(
                "training_file",
                "give `training_file` (a file under the tuner's --data-dir) or \
                 `training_data` (the records, one JSON object a line), one of them",
            ));
        }
    };
    let adapter_name = match (text(body, "adapter_name")?, text(body, "suffix")?) {
        (Some(name), _) | (None, Some(name)) => name.to_owned(),
        (None, None) => String::new(),
    };
    let empty = json!({});
    let h = match body.get("hyperparameters") {
        None | Some(Value::Null) => &empty,
        Some(h @ Value::Object(_)) => h,
        Some(_) => {
            return Err(ApiError::invalid(
                "hyperparameters",
                "`hyperparameters` must be an object",
            ));
        }
    };
    if number(h, "learning_rate_multiplier")?.is_some() {
        return Err(ApiError::invalid(
            "learning_rate_multiplier",
            "zhiku takes the learning rate itself: give `learning_rate` (default 2e-4)",
        ));
    }
    let targets = match h.get("targets") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split(',').map(|t| t.trim().to_owned()).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("targets", "`targets` must be names"))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "targets",
                "`targets` must be a list such as [\"q\", \"v\"] or \"q,v\"",
            ));
        }
    };
    // "last:8", "0,2,20-23", or a list of block indices (PEFT's layers_to_transform); the
    // tuner reads the text and names what is wrong with it.
    let layers = match h.get("layers") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|l| l.as_u64().map(|l| l.to_string()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("layers", "`layers` must be block indices"))?
            .join(","),
        Some(_) => {
            return Err(ApiError::invalid(
                "layers",
                "`layers` must be \"all\", \"last:N\", \"0,2,20-23\" or a list of block indices",
            ));
        }
    };
    let init = match text(h, "init")? {
        None => LoraInit::Unspecified,
        Some("gaussian") => LoraInit::Gaussian,
        Some("kaiming") => LoraInit::Kaiming,
        Some(_) => {
            return Err(ApiError::invalid("init", "`init` is gaussian or kaiming"));
        }
    };
    let too_long = match text(h, "too_long")? {
        None => TooLongPolicy::Unspecified,
        Some("truncate") => TooLongPolicy::Truncate,
        Some("skip") => TooLongPolicy::Skip,
        Some(_) => {
            return Err(ApiError::invalid(
                "too_long",
                "`too_long` is truncate or skip",
            ));
        }
    };
    Ok(CreateJobRequest {
        dataset: Some(dataset),
        adapter_name,
        hyperparameters: Some(TuneHyperparameters {
            rank: count(h, "rank")?,
            alpha: number(h, "alpha")?,
            dropout: number(h, "dropout")?,
            targets,
            init: init as i32,
            learning_rate: number(h, "learning_rate")?,
            warmup_steps: count(h, "warmup_steps")?,
            weight_decay: number(h, "weight_decay")?,
            epochs: count(h, "n_epochs")?,
            batch_size: count(h, "batch_size")?,
            grad_accumulation: count(h, "grad_accumulation")?,
            max_grad_norm: number(h, "max_grad_norm")?,
            max_seq_len: count(h, "max_seq_len")?,
            too_long: too_long as i32,
            validation: number(h, "validation")?,
            early_stop: count(h, "early_stop")?,
            counterfactual_share: number(h, "counterfactual_share")?,
            seed: count(body, "seed")?,
            gradient_checkpointing: flag(h, "gradient_checkpointing")?,
            packing: flag(h, "packing")?,
            layers,
        }),
    })
}

/// `POST /v1/fine_tuning/jobs`.
pub async fn create_job(
    State(state): State<HttpState>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let request = create_request(&body)?;
    let job = state.tuner()?.create(request).await?;
    Ok(Json(job_json(&job)))
}

/// `GET /v1/fine_tuning/jobs`: every tuner replica's jobs, newest first, as OpenAI lists
/// them; the replicas that could not be asked are named under `zhiku.unreachable`.
pub async fn list_jobs(State(state): State<HttpState>) -> Result<Json<Value>, ApiError> {
    let list = state.tuner()?.list().await?;
    Ok(Json(json!({
        "object": "list",
        "data": list.jobs.iter().rev().map(job_json).collect::<Vec<_>>(),
        "has_more": false,
        "zhiku": {
            "unreachable": list.unreachable.iter()
                .map(|(replica, error)| json!({"replica": replica, "error": error}))
                .collect::<Vec<_>>(),
        },
    })))
}

/// `GET /v1/fine_tuning/jobs/ID`.
pub async fn get_job(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state.tuner()?.get(&id).await?;
    Ok(Json(job_json(&job)))
}

/// `POST /v1/fine_tuning/jobs/ID/cancel`.
pub async fn cancel_job(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state.tuner()?.cancel(&id).await?;
    Ok(Json(job_json(&job)))
}

/// Events returned when `limit` is not given (OpenAI's default).
const DEFAULT_EVENTS: usize = 20;

/// `GET /v1/fine_tuning/jobs/ID/events`: the events so far, newest first; step and epoch
/// events are `metrics` with their figures in `data` (the loss curve).
pub async fn job_events(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut limit = DEFAULT_EVENTS;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("limit", n)) => {
                limit = n.parse().map_err(|_| {
                    ApiError::invalid("limit", format!("limit `{n}` is not a whole number"))
                })?;
            }
            // OpenAI's paging cursor: every event comes in one page here.
            Some(("after", _)) => {}
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("`{pair}`: the parameters are limit=N and after=ID"),
                ));
            }
        }
    }
    let events = state.tuner()?.history(&id).await?;
    let has_more = events.len() > limit;
    let data: Vec<Value> = events
        .iter()
        .enumerate()
        .rev()
        .take(limit)
        .map(|(n, e)| {
            let kind = TuneJobEventKind::try_from(e.kind).unwrap_or_default();
            let message = match kind {
                TuneJobEventKind::Step => format!(
                    "Step {}/{}: training loss={:.4}",
                    e.step, e.total_steps, e.loss
                ),
                TuneJobEventKind::Epoch => format!(
                    "Epoch {}/{}: training loss={:.4}{}",
                    e.epoch,
                    e.epochs,
                    e.train_loss.unwrap_or_default(),
                    e.validation_loss
                        .map_or_else(String::new, |v| format!(", validation loss={v:.4}"))
                ),
                _ => e.message.clone(),
            };
            let metrics = matches!(kind, TuneJobEventKind::Step | TuneJobEventKind::Epoch);
            json!({
                "object": "fine_tuning.job.event",
                "id": format!("ftevent-{id}-{n}"),
                "created_at": e.unix_ms / 1000,
                "level": if e.state == TuneJobState::Failed as i32 { "error" } else { "info" },
                "message": message,
                "type": if metrics { "metrics" } else { "message" },
                "data": event_json(e),
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
    })))
}
