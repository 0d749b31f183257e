//! The Tuner service's jobs: a bounded queue in front of one worker thread that trains one
//! job at a time ([`crate::job::run_job`], on its own thread, never on the async runtime),
//! each job's events kept for its watchers, cancellation at the next optimizer step.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use zhiku_proto::v1::{TuneJob, TuneJobEvent, TuneJobEventKind, TuneJobState};

use crate::dataset::Conversation;
use crate::error::TuneError;
use crate::job::{JobBase, JobEvent, JobParams, run_job};

/// Events kept per job; past it, every other step event is dropped (the loss curve keeps its
/// shape, state and epoch events all stay).
const MAX_EVENTS: usize = 10_000;

/// What the queue needs to know about its jobs.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub base: JobBase,
    pub adapter_dir: PathBuf,
    /// Jobs that may wait behind the running one.
    pub max_queued: usize,
    /// Finished jobs remembered.
    pub keep_finished: usize,
}

/// A job to queue: its records (checked) and hyper-parameters (checked).
pub struct NewJob {
    pub records: Vec<Conversation>,
    /// "inline", or the path under the data directory.
    pub dataset: String,
    pub params: JobParams,
    /// The adapter's directory name (checked); None: the job's id.
    pub adapter_name: Option<String>,
    /// The hyper-parameters as the job reports them.
    pub hyperparameters: zhiku_proto::v1::TuneHyperparameters,
}

/// The jobs and the worker that trains them; cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    shared: Arc<Shared>,
}

struct Shared {
    config: QueueConfig,
    state: Mutex<State>,
    /// Wakes the worker when a job is queued or the service stops.
    work: Condvar,
    /// Bumped on every change of any job: watchers wait on it.
    changed: watch::Sender<u64>,
    /// Makes ids unique across restarts of the service (adapters outlive it).
    id_prefix: String,
}

#[derive(Default)]
struct State {
    /// Every remembered job, oldest first.
    jobs: Vec<Job>,
    /// Ids of the queued jobs, next first.
    queue: VecDeque<String>,
    running: Option<String>,
    created: u64,
    stopping: bool,
}

struct Job {
    view: TuneJob,
    /// (sequence number, event), in order.
    events: Vec<(u64, TuneJobEvent)>,
    next_event: u64,
    /// Taken by the worker when the job starts.
    work: Option<(Vec<Conversation>, JobParams)>,
    cancel: Arc<AtomicBool>,
}

impl Job {
    fn push(&mut self, mut event: TuneJobEvent) {
        event.job_id = self.view.id.clone();
        event.state = self.view.state;
        event.unix_ms = now_ms();
        if event.kind != TuneJobEventKind::State as i32 {
            self.view.progress = Some(event.clone());
        }
        if self.events.len() >= MAX_EVENTS {
            let mut step = 0usize;
            self.events.retain(|(_, e)| {
                if e.kind != TuneJobEventKind::Step as i32 {
                    return true;
                }
                step += 1;
                step.is_multiple_of(2)
            });
        }
        self.events.push((self.next_event, event));
        self.next_event += 1;
    }

    fn set_state(&mut self, state: TuneJobState, message: String) {
        self.view.state = state as i32;
        let (step, total_steps, epoch, epochs) = match &self.view.progress {
            Some(p) => (p.step, p.total_steps, p.epoch, p.epochs),
            None => (0, 0, 0, 0),
        };
        self.push(TuneJobEvent {
            kind: TuneJobEventKind::State as i32,
            step,
            total_steps,
            epoch,
            epochs,
            message,
            ..TuneJobEvent::default()
        });
    }

    fn finished(&self) -> bool {
        is_finished(self.view.state)
    }
}

/// Whether a job in `state` will change no more.
pub fn is_finished(state: i32) -> bool {
    [
        TuneJobState::Succeeded,
        TuneJobState::Failed,
        TuneJobState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl JobQueue {
    /// Starts the worker thread.
    pub fn start(config: QueueConfig) -> Result<Self, TuneError> {
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            changed: watch::Sender::new(0),
            // The start time and the process: ids of replicas started in the same millisecond
            // differ (an orchestrator over several tuners finds a job by its id).
            id_prefix: format!("ftjob-{:x}{:05x}", now_ms(), std::process::id() & 0xf_ffff),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("zhiku-tuner-job".into())
            .spawn(move || worker.work())
            .map_err(|e| TuneError::Training(format!("cannot start the job thread: {e}")))?;
        Ok(Self { shared })
    }

    /// Queues a job; refused when the queue is full or another unfinished job writes the
    /// same adapter.
    pub fn create(&self, new: NewJob) -> Result<TuneJob, TuneError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.stopping {
            return Err(TuneError::QueueFull(
                "the tuner is shutting down and takes no new jobs".into(),
            ));
        }
        if let Some(name) = &new.adapter_name
            && let Some(other) = state
                .jobs
                .iter()
                .find(|j| !j.finished() && j.view.adapter_name == *name)
        {
            return Err(TuneError::AdapterBusy(format!(
                "job {} already writes adapter `{name}`; cancel it or choose another \
                 adapter_name",
                other.view.id
            )));
        }
        let waiting = state.queue.len() + usize::from(state.running.is_some());
        if waiting > shared.config.max_queued {
            return Err(TuneError::QueueFull(format!(
                "the queue is full ({} jobs wait behind the running one, the tuner's \
                 --max-queued); retry once a job has finished",
                state.queue.len()
            )));
        }
        state.created += 1;
        let id = format!("{}-{}", shared.id_prefix, state.created);
        let adapter_name = new.adapter_name.unwrap_or_else(|| id.clone());
        let view = TuneJob {
            id: id.clone(),
            state: TuneJobState::Queued as i32,
            base_model: shared.config.base.model.clone(),
            adapter_dir: shared
                .config
                .adapter_dir
                .join(&adapter_name)
                .display()
                .to_string(),
            adapter_name,
            hyperparameters: Some(new.hyperparameters),
            dataset: new.dataset,
            records: new.records.len() as u32,
            created_unix_ms: now_ms(),
            ..TuneJob::default()
        };
        let mut job = Job {
            view,
            events: Vec::new(),
            next_event: 0,
            work: Some((new.records, new.params)),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        job.set_state(TuneJobState::Queued, "queued".into());
        state.jobs.push(job);
        state.queue.push_back(id.clone());
        let view = state.view(&id);
        drop(state);
        shared.work.notify_all();
        shared.bump();
        view.ok_or(TuneError::JobNotFound(id))
    }

    pub fn get(&self, id: &str) -> Result<TuneJob, TuneError> {
        self.shared
            .lock()
            .view(id)
            .ok_or_else(|| TuneError::JobNotFound(id.to_owned()))
    }

    pub fn list(&self) -> Vec<TuneJob> {
        let state = self.shared.lock();
        state
            .jobs
            .iter()
            .filter_map(|j| state.view(&j.view.id))
            .collect()
    }

    /// Cancels a queued job at once, a running one at its next step (the worker then marks
    /// it CANCELLED); a finished job stays as it is.
    pub fn cancel(&self, id: &str) -> Result<TuneJob, TuneError> {
        let mut state = self.shared.lock();
        let queued = state.queue.iter().position(|q| q == id);
        let job = state
            .job_mut(id)
            .ok_or_else(|| TuneError::JobNotFound(id.to_owned()))?;
        if !job.finished() {
            job.cancel.store(true, Ordering::SeqCst);
            if queued.is_some() {
                job.work = None;
                job.view.finished_unix_ms = now_ms();
                job.view.error = "cancelled while queued".into();
                job.set_state(TuneJobState::Cancelled, "cancelled while queued".into());
            } else {
                job.push(TuneJobEvent {
                    kind: TuneJobEventKind::State as i32,
                    message: "cancelling at the next optimizer step".into(),
                    ..TuneJobEvent::default()
                });
            }
        }
        if let Some(i) = queued {
            state.queue.remove(i);
        }
        state.forget_old(self.shared.config.keep_finished);
        let view = state.view(id);
        drop(state);
        self.shared.bump();
        view.ok_or_else(|| TuneError::JobNotFound(id.to_owned()))
    }

    /// The job's events after sequence number `after` (all with None), and whether the job
    /// has finished (its last event is then among them).
    pub fn events_after(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> Result<(Vec<(u64, TuneJobEvent)>, bool), TuneError> {
        let mut state = self.shared.lock();
        let job = state
            .job_mut(id)
            .ok_or_else(|| TuneError::JobNotFound(id.to_owned()))?;
        let events = job
            .events
            .iter()
            .filter(|(n, _)| after.is_none_or(|a| *n > a))
            .cloned()
            .collect();
        Ok((events, job.finished()))
    }

    /// Changes to any job: a watcher waits on it between reads of [`JobQueue::events_after`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Takes no new jobs, cancels the queued ones and stops the running one at its next step.
    pub fn stop(&self) {
        let mut state = self.shared.lock();
        state.stopping = true;
        let queued: Vec<String> = state.queue.drain(..).collect();
        for id in &queued {
            if let Some(job) = state.job_mut(id) {
                job.work = None;
                job.view.finished_unix_ms = now_ms();
                job.set_state(TuneJobState::Cancelled, "the tuner stopped".into());
            }
        }
        if let Some(id) = state.running.clone()
            && let Some(job) = state.job_mut(&id)
        {
            job.cancel.store(true, Ordering::SeqCst);
        }
        drop(state);
        self.shared.work.notify_all();
        self.shared.bump();
    }
}

impl State {
    fn job_mut(&mut self, id: &str) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|j| j.view.id == id)
    }

    /// The job as clients see it (its place in the queue filled in).
    fn view(&self, id: &str) -> Option<TuneJob> {
        let job = self.jobs.iter().find(|j| j.view.id == id)?;
        let mut view = job.view.clone();
        view.queue_position = self
            .queue
            .iter()
            .position(|q| q == id)
            .map_or(0, |p| p as u32 + 1);
        Some(view)
    }

    /// Forgets the oldest finished jobs beyond `keep`.
    fn forget_old(&mut self, keep: usize) {
        let finished = self.jobs.iter().filter(|j| j.finished()).count();
        let mut forget = finished.saturating_sub(keep);
        self.jobs.retain(|j| {
            if forget > 0 && j.finished() {
                forget -= 1;
                return false;
            }
            true
        });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The worker: waits for a queued job, trains it, records how it ended; until stopped.
    fn work(&self) {
        loop {
            let Some((id, records, params, cancel, out)) = self.next_job() else {
                return;
            };
            tracing::info!(job = %id, adapter = %out.display(), "tuning job started");
            let started = Instant::now();
            let mut trained_from: Option<Instant> = None;
            let mut on_event = |event: JobEvent<'_>| {
                self.record(&id, &event, started, &mut trained_from);
                if cancel.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let source = "dataset";
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_job(
                    &self.config.base,
                    &records,
                    source,
                    &params,
                    &out,
                    &mut on_event,
                )
            }))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(TuneError::Training(format!("the trainer panicked: {what}")))
            });
            let mut state = self.lock();
            state.running = None;
            if let Some(job) = state.job_mut(&id) {
                job.view.finished_unix_ms = now_ms();
                match result {
                    Ok(outcome) => {
                        job.view.adapter_epoch = outcome.epoch as u32;
                        job.view.validation_loss = outcome.validation_loss;
                        tracing::info!(job = %id, seconds = outcome.seconds, "tuning job succeeded");
                        job.set_state(
                            TuneJobState::Succeeded,
                            format!("adapter written to {}", outcome.adapter.display()),
                        );
                    }
                    Err(TuneError::Cancelled) => {
                        tracing::info!(job = %id, "tuning job cancelled");
                        job.view.error = "cancelled; no adapter was written".into();
                        job.set_state(TuneJobState::Cancelled, job.view.error.clone());
                    }
                    Err(e) => {
                        tracing::warn!(job = %id, error = %e, "tuning job failed");
                        job.view.error = e.to_string();
                        job.set_state(TuneJobState::Failed, e.to_string());
                    }
                }
            }
            state.forget_old(self.config.keep_finished);
            drop(state);
            self.bump();
        }
    }

    /// Waits for the next queued job and marks it running; None once stopped.
    #[allow(clippy::type_complexity)]
    fn next_job(
        &self,
    ) -> Option<(
        String,
        Vec<Conversation>,
        JobParams,
        Arc<AtomicBool>,
        PathBuf,
    )> {
        let mut state = self.lock();
        loop {
            if state.stopping {
                return None;
            }
            while let Some(id) = state.queue.pop_front() {
                let Some(job) = state.job_mut(&id) else {
                    continue;
                };
                let Some((records, params)) = job.work.take() else {
                    continue;
                };
                job.view.started_unix_ms = now_ms();
                job.set_state(TuneJobState::Running, "loading the model".into());
                let out = self.config.adapter_dir.join(&job.view.adapter_name);
                let cancel = job.cancel.clone();
                state.running = Some(id.clone());
                drop(state);
                self.bump();
                return Some((id, records, params, cancel, out));
            }
            state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Records one of a running job's events.
    fn record(
        &self,
        id: &str,
        event: &JobEvent<'_>,
        started: Instant,
        trained_from: &mut Option<Instant>,
    ) {
        let mut state = self.lock();
        let Some(job) = state.job_mut(id) else {
            return;
        };
        let epochs = job
            .view
            .hyperparameters
            .as_ref()
            .and_then(|h| h.epochs)
            .unwrap_or(0);
        // The rows' length when the job packs (its hyper-parameters are all set).
        let packing = job
            .view
            .hyperparameters
            .as_ref()
            .filter(|h| h.packing == Some(true))
            .and_then(|h| h.max_seq_len)
            .map(|n| n as usize);
        let last = job.view.progress.clone().unwrap_or_default();
        let elapsed_seconds = started.elapsed().as_secs_f64();
        match event {
            JobEvent::Data {
                train,
                validation,
                total_steps,
                report,
                padding,
                ..
            } => {
                job.view.train_examples = *train as u32;
                job.view.validation_examples = *validation as u32;
                *trained_from = Some(Instant::now());
                job.push(TuneJobEvent {
                    kind: TuneJobEventKind::State as i32,
                    total_steps: *total_steps as u64,
                    epochs,
                    elapsed_seconds,
                    message: format!(
                        "training on {train} examples ({validation} held out; {} truncated, \
                         {} skipped as too long); {}",
                        report.truncated,
                        report.skipped_too_long,
                        padding.summary(packing)
                    ),
                    ..TuneJobEvent::default()
                });
                job.view.progress = Some(TuneJobEvent {
                    total_steps: *total_steps as u64,
                    epochs,
                    ..TuneJobEvent::default()
                });
            }
            JobEvent::Resumed { step, epoch, .. } => job.push(TuneJobEvent {
                kind: TuneJobEventKind::State as i32,
                step: *step as u64,
                epoch: *epoch as u32,
                epochs,
                elapsed_seconds,
                message: "resumed from a checkpoint".into(),
                ..TuneJobEvent::default()
            }),
            JobEvent::Step { epoch, report } => {
                let training = trained_from.map_or(elapsed_seconds, |t| t.elapsed().as_secs_f64());
                let per_step = training / report.step.max(1) as f64;
                job.push(TuneJobEvent {
                    kind: TuneJobEventKind::Step as i32,
                    step: report.step as u64,
                    total_steps: report.total_steps as u64,
                    epoch: *epoch as u32,
                    epochs,
                    loss: report.loss,
                    learning_rate: report.lr,
                    tokens_per_second: report.tokens_per_second,
                    eta_seconds: per_step * report.total_steps.saturating_sub(report.step) as f64,
                    elapsed_seconds,
                    ..TuneJobEvent::default()
                });
            }
            JobEvent::Epoch {
                epoch,
                train_loss,
                validation_loss,
            } => job.push(TuneJobEvent {
                kind: TuneJobEventKind::Epoch as i32,
                step: last.step,
                total_steps: last.total_steps,
                epoch: *epoch as u32,
                epochs,
                loss: last.loss,
                learning_rate: last.learning_rate,
                tokens_per_second: last.tokens_per_second,
                eta_seconds: last.eta_seconds,
                train_loss: Some(*train_loss),
                validation_loss: *validation_loss,
                elapsed_seconds,
                ..TuneJobEvent::default()
            }),
            JobEvent::EarlyStop {
                epochs_without_improvement,
            } => job.push(TuneJobEvent {
                kind: TuneJobEventKind::State as i32,
                step: last.step,
                total_steps: last.total_steps,
                epoch: last.epoch,
                epochs,
                elapsed_seconds,
                message: format!(
                    "early stop: no better validation loss for {epochs_without_improvement} \
                     epoch(s)"
                ),
                ..TuneJobEvent::default()
            }),
        }
        drop(state);
        self.bump();
    }
}
