//! The tuner's replicas (`--tuner-addr` with several addresses, or a `dns://` name). A
//! training job lives on the replica that runs it: its queue, its events and its checkpoints
//! are that process's, in its memory and on its disk. So the tuner is not balanced call by
//! call as the stateless services are:
//!
//! - a new job goes to the serving replica with the fewest unfinished (queued or running)
//!   jobs, asked of each with ListJobs; one that refuses it (its queue is full, it is
//!   shutting down, it cannot be reached) hands it to the next;
//! - an adapter name that an unfinished job writes on any replica is refused (the replicas
//!   write to one adapters' volume that the generators read);
//! - a job's reads and its cancel go to the replica that holds it, remembered from the job's
//!   creation or a listing (a bounded table), else found by asking every replica (another
//!   orchestrator replica may have created it). When that replica cannot be reached the call
//!   is UNAVAILABLE, naming it;
//! - a listing merges every replica's jobs, oldest first; the replicas that could not be
//!   asked are returned beside them, not hidden.
//!
//! Calls go through the tuner's [`ReplicaSet`] pinned to one replica ([`Pinned`]): its
//! health checks, calls-in-flight and metrics are the other services'.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tonic::service::interceptor::InterceptedService;
use zhiku_proto::v1::tuner_client::TunerClient;
use zhiku_proto::v1::{
    CancelJobRequest, CreateJobRequest, GetJobRequest, ListJobsRequest, TuneJob, TuneJobEvent,
    TuneJobState, WatchJobRequest,
};
use zhiku_runtime::request_id::PropagateRequestId;

use crate::error::OrchestratorError;
use crate::replicas::{Pinned, ReplicaArgs, ReplicaSet};

type Client = TunerClient<InterceptedService<ReplicaSet, PropagateRequestId>>;

/// Jobs whose replica is remembered (the oldest are forgotten first, and found again by
/// asking every replica).
const REMEMBERED_JOBS: usize = 16_384;

/// The tuner's replicas and where each job lives.
#[derive(Clone)]
pub struct Tuners {
    set: ReplicaSet,
    client: Client,
    owners: Arc<Mutex<Owners>>,
}

impl std::fmt::Debug for Tuners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuners").field("set", &self.set).finish()
    }
}

/// Job id → the address of the replica that holds it, bounded.
#[derive(Default)]
struct Owners {
    by_job: HashMap<String, Arc<str>>,
    order: VecDeque<String>,
}

impl Owners {
    fn remember(&mut self, job: &str, replica: &Arc<str>) {
        if self
            .by_job
            .insert(job.to_owned(), Arc::clone(replica))
            .is_none()
        {
            self.order.push_back(job.to_owned());
        }
        while self.order.len() > REMEMBERED_JOBS {
            if let Some(old) = self.order.pop_front() {
                self.by_job.remove(&old);
            }
        }
    }
}

/// A listing of every replica's jobs.
#[derive(Debug, Default)]
pub struct JobList {
    /// Oldest first (by creation time).
    pub jobs: Vec<TuneJob>,
    /// The replicas that could not be asked, with why.
    pub unreachable: Vec<(String, String)>,
}

/// Whether a call's status says the replica could not be reached (rather than answering).
fn unreachable(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable => true,
        // Made on this side from a broken connection (a status from the wire has no source).
        tonic::Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

fn unfinished(job: &TuneJob) -> bool {
    job.state == TuneJobState::Queued as i32 || job.state == TuneJobState::Running as i32
}

fn pinned<T>(message: T, replica: &Arc<str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(Pinned(Arc::clone(replica)));
    request
}

impl Tuners {
    /// The tuner's replicas at `addresses` (comma-separated, `dns://name:port`); None when
    /// there is no address.
    pub fn new(
        addresses: Option<&str>,
        ca_cert: Option<&std::path::Path>,
        caller: PropagateRequestId,
        settings: ReplicaArgs,
    ) -> Result<Option<Self>, OrchestratorError> {
        let Some(addresses) = addresses.filter(|a| !a.trim().is_empty()) else {
            return Ok(None);
        };
        let set = ReplicaSet::new(
            "tuner",
            zhiku_proto::service_names::TUNER,
            addresses,
            ca_cert,
            caller.clone(),
            settings,
        )
        .map_err(|reason| OrchestratorError::BadAddress {
            service: "tuner",
            address: addresses.to_owned(),
            reason,
        })?;
        let max = 64 * 1024 * 1024;
        let client = TunerClient::with_interceptor(set.clone(), caller)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        Ok(Some(Self {
            set,
            client,
            owners: Arc::default(),
        }))
    }

    /// The replica set (health, addresses).
    pub fn replicas(&self) -> &ReplicaSet {
        &self.set
    }

    fn remember(&self, job: &str, replica: &Arc<str>) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.remember(job, replica);
        }
    }

    fn forget(&self, job: &str) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.by_job.remove(job);
        }
    }

    fn remembered(&self, job: &str) -> Option<Arc<str>> {
        let owner = self.owners.lock().ok()?.by_job.get(job).cloned()?;
        // A replica the set no longer has (its name resolves elsewhere now) is asked again.
        self.set.all().contains(&owner).then_some(owner)
    }

    /// Every replica's jobs, each replica asked once, side by side.
    async fn listings(
        &self,
        replicas: &[Arc<str>],
    ) -> Vec<(Arc<str>, Result<Vec<TuneJob>, tonic::Status>)> {
        let calls = replicas.iter().map(|replica| {
            let mut client = self.client.clone();
            async move {
                let jobs = client
                    .list_jobs(pinned(ListJobsRequest {}, replica))
                    .await
                    .map(|r| r.into_inner().jobs);
                (Arc::clone(replica), jobs)
            }
        });
        futures::future::join_all(calls).await
    }

    /// Every replica's jobs, oldest first, and the replicas that could not be asked.
    /// UNAVAILABLE when none could.
    pub async fn list(&self) -> Result<JobList, OrchestratorError> {
        self.set.start();
        let replicas = self.set.all();
        let mut list = JobList::default();
        let mut last = None;
        for (replica, answer) in self.listings(&replicas).await {
            match answer {
                Ok(jobs) => {
                    for job in &jobs {
                        self.remember(&job.id, &replica);
                    }
                    list.jobs.extend(jobs);
                }
                Err(status) => {
                    tracing::warn!(replica = %replica, error = %status.message(), "a tuner replica could not list its jobs");
                    list.unreachable
                        .push((replica.to_string(), status.message().to_owned()));
                    last = Some(status);
                }
            }
        }
        if list.unreachable.len() == replicas.len()
            && let Some(status) = last
        {
            return Err(OrchestratorError::downstream("tuner")(status));
        }
        list.jobs
            .sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(list)
    }

    /// Queues a job on the serving replica with the fewest unfinished jobs; one that
    /// refuses it for its load (queue full, shutting down) or cannot be reached hands it to
    /// the next. ALREADY_EXISTS when an unfinished job on any replica writes its adapter.
    pub async fn create(&self, request: CreateJobRequest) -> Result<TuneJob, OrchestratorError> {
        self.set.start();
        let candidates = self.set.candidates();
        let mut order = Vec::new();
        let mut last = None;
        for (replica, answer) in self.listings(&candidates).await {
            match answer {
                Ok(jobs) => {
                    if !request.adapter_name.is_empty()
                        && let Some(other) = jobs
                            .iter()
                            .find(|j| unfinished(j) && j.adapter_name == request.adapter_name)
                    {
                        return Err(OrchestratorError::AlreadyExists(format!(
                            "job {} on the tuner replica {replica} already writes adapter `{}`; \
                             cancel it or choose another adapter_name",
                            other.id, request.adapter_name
                        )));
                    }
                    let busy = jobs.iter().filter(|j| unfinished(j)).count();
                    // Ties broken at random: the replicas share the new jobs.
                    let tie = RandomState::new().hash_one(&replica);
                    order.push((busy, tie, replica));
                }
                Err(status) => {
                    tracing::warn!(replica = %replica, error = %status.message(), "a tuner replica could not be asked for its jobs");
                    last = Some(status);
                }
            }
        }
        order.sort();
        for (busy, _, replica) in order {
            match self
                .client
                .clone()
                .create_job(pinned(request.clone(), &replica))
                .await
            {
                Ok(job) => {
                    let job = job.into_inner();
                    tracing::info!(job = %job.id, replica = %replica, unfinished_before = busy, "training job queued");
                    self.remember(&job.id, &replica);
                    return Ok(job);
                }
                Err(status)
                    if status.code() == tonic::Code::ResourceExhausted
                        || status.code() == tonic::Code::Unavailable =>
                {
                    tracing::info!(replica = %replica, error = %status.message(), "a tuner replica refused a job: trying the next");
                    last = Some(status);
                }
                Err(status) => return Err(OrchestratorError::downstream("tuner")(status)),
            }
        }
        Err(OrchestratorError::downstream("tuner")(last.unwrap_or_else(
            || tonic::Status::unavailable("no tuner replica: the address resolves to none"),
        )))
    }

    /// The replica that holds `job`: remembered, else found by asking each (with the job as
    /// that replica has it).
    async fn owner(&self, job: &str) -> Result<(Arc<str>, Option<TuneJob>), OrchestratorError> {
        self.set.start();
        if let Some(owner) = self.remembered(job) {
            return Ok((owner, None));
        }
        let replicas = self.set.all();
        let calls = replicas.iter().map(|replica| {
            let mut client = self.client.clone();
            async move {
                let answer = client
                    .get_job(pinned(
                        GetJobRequest {
                            job_id: job.to_owned(),
                        },
                        replica,
                    ))
                    .await
                    .map(tonic::Response::into_inner);
                (Arc::clone(replica), answer)
            }
        });
        let mut down = Vec::new();
        let mut other = None;
        for (replica, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(found) => {
                    self.remember(job, &replica);
                    return Ok((replica, Some(found)));
                }
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) if unreachable(&status) => {
                    down.push(format!("{replica} ({})", status.message()));
                }
                Err(status) => other = Some(status),
            }
        }
        if let Some(status) = other {
            return Err(OrchestratorError::downstream("tuner")(status));
        }
        if !down.is_empty() {
            return Err(OrchestratorError::JobMaybeOnDownReplica {
                job: job.to_owned(),
                unreachable: down.join(", "),
            });
        }
        Err(OrchestratorError::NotFound(format!(
            "no tuner replica has job `{job}` (the tuner keeps its jobs in memory: a \
             restarted replica has none of its earlier ones)"
        )))
    }

    /// A failed call to the replica `replica` that holds `job`: UNAVAILABLE naming it when
    /// it cannot be reached; the replica's own answer otherwise (NOT_FOUND: it restarted
    /// and lost the job, forgotten here).
    fn failed(&self, job: &str, replica: &Arc<str>, status: tonic::Status) -> OrchestratorError {
        if unreachable(&status) {
            return OrchestratorError::JobReplicaDown {
                job: job.to_owned(),
                replica: replica.to_string(),
                reason: status.message().to_owned(),
            };
        }
        if status.code() == tonic::Code::NotFound {
            self.forget(job);
        }
        OrchestratorError::downstream("tuner")(status)
    }

    /// The answer of `call`, made on `replica` about `job`.
    async fn answer<T>(
        &self,
        job: &str,
        replica: &Arc<str>,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, OrchestratorError> {
        call.await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.failed(job, replica, status))
    }

    /// The job `job`, from its replica.
    pub async fn get(&self, job: &str) -> Result<TuneJob, OrchestratorError> {
        let (replica, found) = self.owner(job).await?;
        if let Some(found) = found {
            return Ok(found);
        }
        let request = GetJobRequest {
            job_id: job.to_owned(),
        };
        let mut client = self.client.clone();
        let call = client.get_job(pinned(request, &replica));
        self.answer(job, &replica, call).await
    }

    /// Cancels `job` on its replica.
    pub async fn cancel(&self, job: &str) -> Result<TuneJob, OrchestratorError> {
        let (replica, _) = self.owner(job).await?;
        let request = CancelJobRequest {
            job_id: job.to_owned(),
        };
        let mut client = self.client.clone();
        let call = client.cancel_job(pinned(request, &replica));
        self.answer(job, &replica, call).await
    }

    /// The events of `job` so far, from its replica.
    pub async fn history(&self, job: &str) -> Result<Vec<TuneJobEvent>, OrchestratorError> {
        let (replica, _) = self.owner(job).await?;
        let request = WatchJobRequest {
            job_id: job.to_owned(),
            history_only: true,
        };
        let mut client = self.client.clone();
        let call = client.watch_job(pinned(request, &replica));
        let mut stream = self.answer(job, &replica, call).await?;
        let mut events = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(event)) => events.push(event),
                Ok(None) => return Ok(events),
                Err(status) => return Err(self.failed(job, &replica, status)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owners_table_is_bounded_and_forgets_the_oldest_first() {
        let mut owners = Owners::default();
        let a: Arc<str> = Arc::from("http://a");
        for i in 0..REMEMBERED_JOBS + 10 {
            owners.remember(&format!("job-{i}"), &a);
        }
        assert_eq!(owners.by_job.len(), REMEMBERED_JOBS);
        assert!(!owners.by_job.contains_key("job-0"));
        assert!(
            owners
                .by_job
                .contains_key(&format!("job-{}", REMEMBERED_JOBS + 9))
        );
        // Remembered again: not counted twice.
        owners.remember("job-20", &a);
        assert_eq!(owners.order.len(), REMEMBERED_JOBS);
    }

    #[test]
    fn only_a_broken_connection_or_unavailable_reads_as_unreachable() {
        assert!(unreachable(&tonic::Status::unavailable(
            "tcp connect error"
        )));
        assert!(!unreachable(&tonic::Status::not_found("no job")));
        assert!(!unreachable(&tonic::Status::unknown("from the wire")));
    }
}
