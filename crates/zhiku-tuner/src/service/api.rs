//! The `zhiku.v1.Tuner` handlers: requests checked and turned into jobs
//! ([`super::jobs::JobQueue`]), errors mapped to a status once ([`to_status`]).

use std::path::{Component, Path, PathBuf};
use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zhiku_proto::v1::tuner_server::Tuner;
use zhiku_proto::v1::{
    CancelJobRequest, CreateJobRequest, GetJobRequest, ListJobsRequest, ListJobsResponse,
    TooLongPolicy, TuneHyperparameters, TuneJob, TuneJobEvent, WatchJobRequest, create_job_request,
};
use zhiku_runtime::error::to_status;

use super::jobs::{JobQueue, NewJob};
use crate::dataset::{LengthPolicy, parse_conversations, read_conversations};
use crate::error::TuneError;
use crate::job::JobParams;
use crate::spec::{LayerSelection, LoraInit, LoraSpec};

/// Longest adapter name (a directory name on the adapter volume).
const MAX_ADAPTER_NAME: usize = 100;

pub struct TunerApi {
    queue: JobQueue,
    data_dir: Option<PathBuf>,
    threads: Option<usize>,
}

impl TunerApi {
    pub fn new(queue: JobQueue, data_dir: Option<PathBuf>, threads: Option<usize>) -> Self {
        Self {
            queue,
            data_dir,
            threads,
        }
    }

    /// Checks a CreateJob request and reads its dataset (on a blocking thread).
    async fn new_job(&self, request: CreateJobRequest) -> Result<NewJob, TuneError> {
        let adapter_name = match request.adapter_name.trim() {
            "" => None,
            name => Some(check_adapter_name(name)?),
        };
        let mut params = params(request.hyperparameters.unwrap_or_default())?;
        params.threads = self.threads;
        params.check()?;
        let (records, dataset) = match request.dataset {
            Some(create_job_request::Dataset::DatasetJsonl(text)) => {
                // Up to --max-message-bytes of JSON: parsed off the async runtime.
                let records =
                    tokio::task::spawn_blocking(move || parse_conversations(&text, "dataset"))
                        .await
                        .map_err(|e| TuneError::Training(format!("reading the dataset: {e}")))??;
                (records, "inline".to_owned())
            }
            Some(create_job_request::Dataset::DatasetPath(path)) => {
                let file = self.dataset_file(&path)?;
                let records = tokio::task::spawn_blocking(move || read_conversations(&file))
                    .await
                    .map_err(|e| TuneError::Training(format!("reading the dataset: {e}")))??;
                (records, path)
            }
            None => {
                return Err(TuneError::Validation(
                    "no dataset: give dataset_jsonl (the records) or dataset_path (a file \
                     under the tuner's --data-dir)"
                        .into(),
                ));
            }
        };
        if records.is_empty() {
            return Err(TuneError::Validation(format!(
                "{dataset}: the dataset holds no records"
            )));
        }
        Ok(NewJob {
            records,
            dataset,
            hyperparameters: hyperparameters(&params),
            params,
            adapter_name,
        })
    }

    /// `path` under the data directory: relative, and never out of it.
    fn dataset_file(&self, path: &str) -> Result<PathBuf, TuneError> {
        let Some(dir) = &self.data_dir else {
            return Err(TuneError::Validation(
                "dataset_path needs the tuner's --data-dir; send the records as \
                 dataset_jsonl instead"
                    .into(),
            ));
        };
        let relative = Path::new(path);
        if path.is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(TuneError::Validation(format!(
                "dataset_path `{path}` must be a relative path under the tuner's --data-dir \
                 (no `..`, not absolute)"
            )));
        }
        Ok(dir.join(relative))
    }
}

/// An adapter name is one directory name: letters, digits, `.`, `_`, `-`, not starting with
/// a dot.
fn check_adapter_name(name: &str) -> Result<String, TuneError> {
    let fine = name.len() <= MAX_ADAPTER_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if fine {
        Ok(name.to_owned())
    } else {
        Err(TuneError::Validation(format!(
            "adapter_name `{name}` must be 1 to {MAX_ADAPTER_NAME} letters, digits, `.`, `_` \
             or `-`, not starting with `.`"
        )))
    }
}

/// The job's hyper-parameters: the request's, `zhiku tune`'s defaults for the unset ones.
fn params(h: TuneHyperparameters) -> Result<JobParams, TuneError> {
    let d = JobParams::default();
    let count = |v: Option<u32>, default: usize| v.map_or(default, |n| n as usize);
    let layers = LayerSelection::parse(&h.layers)?;
    Ok(JobParams {
        lora: LoraSpec {
            rank: count(h.rank, d.lora.rank),
            alpha: h.alpha.unwrap_or(d.lora.alpha),
            dropout: h.dropout.unwrap_or(d.lora.dropout),
            targets: if h.targets.is_empty() {
                d.lora.targets.clone()
            } else {
                h.targets.iter().map(|t| t.trim().to_owned()).collect()
            },
            init: match zhiku_proto::v1::LoraInit::try_from(h.init) {
                Ok(zhiku_proto::v1::LoraInit::Kaiming) => LoraInit::Kaiming,
                Ok(zhiku_proto::v1::LoraInit::Gaussian) => LoraInit::Gaussian,
                _ => d.lora.init,
            },
            layers,
        },
        learning_rate: h.learning_rate.unwrap_or(d.learning_rate),
        warmup_steps: count(h.warmup_steps, d.warmup_steps),
        weight_decay: h.weight_decay.unwrap_or(d.weight_decay),
        epochs: count(h.epochs, d.epochs),
        batch_size: count(h.batch_size, d.batch_size),
        grad_accumulation: count(h.grad_accumulation, d.grad_accumulation),
        max_grad_norm: h.max_grad_norm.unwrap_or(d.max_grad_norm),
        max_seq_len: count(h.max_seq_len, d.max_seq_len),
        too_long: match TooLongPolicy::try_from(h.too_long) {
            Ok(TooLongPolicy::Skip) => LengthPolicy::Skip,
            Ok(TooLongPolicy::Truncate) => LengthPolicy::Truncate,
            _ => d.too_long,
        },
        validation: h.validation.unwrap_or(d.validation),
        early_stop: count(h.early_stop, d.early_stop),
        counterfactual_share: h.counterfactual_share.unwrap_or(d.counterfactual_share),
        seed: h.seed.unwrap_or(d.seed),
        gradient_checkpointing: h.gradient_checkpointing.unwrap_or(d.gradient_checkpointing),
        packing: h.packing.unwrap_or(d.packing),
        ..d
    })
}

/// The hyper-parameters a job runs with, every field set.
fn hyperparameters(p: &JobParams) -> TuneHyperparameters {
    let count = |n: usize| Some(u32::try_from(n).unwrap_or(u32::MAX));
    TuneHyperparameters {
        rank: count(p.lora.rank),
        alpha: Some(p.lora.alpha),
        dropout: Some(p.lora.dropout),
        targets: p.lora.targets.clone(),
        init: match p.lora.init {
            LoraInit::Gaussian => zhiku_proto::v1::LoraInit::Gaussian,
            LoraInit::Kaiming => zhiku_proto::v1::LoraInit::Kaiming,
        } as i32,
        learning_rate: Some(p.learning_rate),
        warmup_steps: count(p.warmup_steps),
        weight_decay: Some(p.weight_decay),
        epochs: count(p.epochs),
        batch_size: count(p.batch_size),
        grad_accumulation: count(p.grad_accumulation),
        max_grad_norm: Some(p.max_grad_norm),
        max_seq_len: count(p.max_seq_len),
        too_long: match p.too_long {
            LengthPolicy::Truncate => TooLongPolicy::Truncate,
            LengthPolicy::Skip => TooLongPolicy::Skip,
        } as i32,
        validation: Some(p.validation),
        early_stop: count(p.early_stop),
        counterfactual_share: Some(p.counterfactual_share),
        seed: Some(p.seed),
        gradient_checkpointing: Some(p.gradient_checkpointing),
        packing: Some(p.packing),
        layers: p.lora.layers.to_string(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TuneJobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Tuner for TunerApi {
    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> Result<Response<TuneJob>, Status> {
        let new = self
            .new_job(request.into_inner())
            .await
            .map_err(|e| to_status(&e))?;
        let job = self.queue.create(new).map_err(|e| to_status(&e))?;
        tracing::info!(job = %job.id, adapter = %job.adapter_name, records = job.records, "tuning job queued");
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<TuneJob>, Status> {
        let id = request.into_inner().job_id;
        self.queue
            .get(&id)
            .map(Response::new)
            .map_err(|e| to_status(&e))
    }

    async fn list_jobs(
        &self,
        _request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse {
            jobs: self.queue.list(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<TuneJob>, Status> {
        let id = request.into_inner().job_id;
        let job = self.queue.cancel(&id).map_err(|e| to_status(&e))?;
        tracing::info!(job = %id, "tuning job cancel requested");
        Ok(Response::new(job))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let WatchJobRequest {
            job_id: id,
            history_only,
        } = request.into_inner();
        let queue = self.queue.clone();
        let mut changed = queue.subscribe();
        // The first read here, so that an unknown id is NOT_FOUND on the call itself.
        changed.borrow_and_update();
        let (first, mut finished) = queue.events_after(&id, None).map_err(|e| to_status(&e))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = None;
            let mut events = first;
            loop {
                for (n, event) in events {
                    last = Some(n);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if finished || history_only {
                    return;
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                }
                changed.borrow_and_update();
                match queue.events_after(&id, last) {
                    Ok((more, done)) => (events, finished) = (more, done),
                    Err(e) => {
                        // Forgotten while watched (more finished jobs than --keep-finished).
                        let _ = tx.send(Err(to_status(&e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
