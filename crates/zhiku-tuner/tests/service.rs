//! The `Tuner` gRPC service over real gRPC on loopback, training a tiny chat model that the
//! test writes (`zhiku_lm::tiny::write_chat_model`): a job streams its progress to the end
//! and leaves a PEFT adapter; a second job queues behind the first and a full queue refuses;
//! a cancelled job ends CANCELLED with no adapter; a malformed dataset line is
//! INVALID_ARGUMENT naming the line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;
use zhiku_proto::v1::tuner_client::TunerClient;
use zhiku_proto::v1::{
    CancelJobRequest, CreateJobRequest, GetJobRequest, ListJobsRequest, TuneHyperparameters,
    TuneJob, TuneJobEvent, TuneJobEventKind, TuneJobState, WatchJobRequest, create_job_request,
};
use zhiku_runtime::ServerArgs;
use zhiku_tuner::TunerArgs;

/// How long any one wait of a test may take before it fails (a stuck job, not a slow one).
const PATIENCE: Duration = Duration::from_secs(120);

struct TestTuner {
    addr: std::net::SocketAddr,
    work: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl TestTuner {
    async fn start(max_queued: usize) -> Self {
        let work = tempfile::tempdir().expect("a temporary directory");
        let model = work.path().join("model");
        let data = work.path().join("data");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        zhiku_lm::tiny::write_chat_model(&model, 11).expect("writes the tiny model");
        let args = TunerArgs {
            model: model.display().to_string(),
            gguf_file: String::new(),
            models_dir: work.path().join("models"),
            device: "cpu".into(),
            adapter_dir: work.path().join("adapters"),
            data_dir: Some(data),
            max_queued,
            keep_finished: 100,
            threads: Some(1),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(zhiku_tuner::serve(
            args,
            ServerArgs::default(),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            work,
            stop: Some(stop),
        }
    }

    async fn client(&self) -> TunerClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects");
        TunerClient::new(channel)
    }

    fn adapters(&self) -> PathBuf {
        self.work.path().join("adapters")
    }

    fn data(&self) -> PathBuf {
        self.work.path().join("data")
    }
}

impl Drop for TestTuner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Short records that fit the tiny model's context with ChatML around them.
fn dataset(records: usize) -> String {
    (0..records)
        .map(|i| {
            let record = serde_json::json!({
                "instruction": format!("q{i}"),
                "input": "",
                "output": format!("the {i} is a"),
            });
            format!("{record}\n")
        })
        .collect()
}

fn hyperparameters(epochs: u32) -> TuneHyperparameters {
    TuneHyperparameters {
        rank: Some(2),
        alpha: Some(4.0),
        epochs: Some(epochs),
        grad_accumulation: Some(1),
        max_seq_len: Some(60),
        validation: Some(0.25),
        early_stop: Some(0),
        learning_rate: Some(1e-2),
        targets: vec!["q".into(), "v".into()],
        ..TuneHyperparameters::default()
    }
}

fn inline(records: String, epochs: u32, adapter: &str) -> CreateJobRequest {
    CreateJobRequest {
        dataset: Some(create_job_request::Dataset::DatasetJsonl(records)),
        adapter_name: adapter.into(),
        hyperparameters: Some(hyperparameters(epochs)),
    }
}

/// Follows a job's events until `stop` says so or the stream ends; returns those seen.
async fn watch_until(
    client: &mut TunerClient<Channel>,
    id: &str,
    mut stop: impl FnMut(&TuneJobEvent) -> bool,
) -> Vec<TuneJobEvent> {
    let mut stream = client
        .watch_job(WatchJobRequest {
            job_id: id.into(),
            history_only: false,
        })
        .await
        .expect("WatchJob")
        .into_inner();
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no event for {PATIENCE:?}; seen: {seen:#?}"));
        let Some(event) = next else { return seen };
        let event = event.expect("an event");
        let done = stop(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn state(job: &TuneJob) -> TuneJobState {
    TuneJobState::try_from(job.state).unwrap()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_streams_its_progress_and_writes_a_peft_adapter() {
    let tuner = TestTuner::start(4).await;
    let mut client = tuner.client().await;
    let job = client
        .create_job(inline(dataset(8), 3, "kb-adapter"))
        .await
        .expect("CreateJob")
        .into_inner();
    assert_eq!(job.adapter_name, "kb-adapter");
    assert_eq!(job.records, 8);
    let h = job
        .hyperparameters
        .clone()
        .expect("the job's hyper-parameters");
    assert_eq!((h.rank, h.epochs, h.seed), (Some(2), Some(3), Some(42)));
    assert!(
        matches!(state(&job), TuneJobState::Queued | TuneJobState::Running),
        "{job:?}"
    );

    let events = watch_until(&mut client, &job.id, |_| false).await;
    let last = events.last().expect("events");
    assert_eq!(
        last.state,
        TuneJobState::Succeeded as i32,
        "the stream ends with the job's success: {events:#?}"
    );
    let steps: Vec<&TuneJobEvent> = events
        .iter()
        .filter(|e| e.kind == TuneJobEventKind::Step as i32)
        .collect();
    // 6 training records (2 held out), one per step, 3 epochs.
    assert_eq!(steps.len(), 18, "{events:#?}");
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step.step, i as u64 + 1);
        assert_eq!(step.total_steps, 18);
        assert!(step.loss.is_finite() && step.loss > 0.0, "{step:?}");
        assert!(step.tokens_per_second > 0.0, "{step:?}");
        assert!(step.eta_seconds >= 0.0, "{step:?}");
        assert_eq!(step.state, TuneJobState::Running as i32);
    }
    assert_eq!(steps.last().unwrap().eta_seconds, 0.0);
    let epochs: Vec<&TuneJobEvent> = events
        .iter()
        .filter(|e| e.kind == TuneJobEventKind::Epoch as i32)
        .collect();
    assert_eq!(epochs.len(), 3);
    assert!(
        epochs
            .iter()
            .all(|e| e.validation_loss.is_some_and(f64::is_finite))
    );
    let first_loss = steps[0].loss;
    let late_loss = steps[steps.len() - 6..].iter().map(|s| s.loss).sum::<f64>() / 6.0;
    assert!(
        late_loss < first_loss,
        "the loss falls: first {first_loss}, last epoch {late_loss}"
    );

    let done = client
        .get_job(GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&done), TuneJobState::Succeeded);
    assert_eq!((done.train_examples, done.validation_examples), (6, 2));
    assert!(done.validation_loss.is_some() && done.adapter_epoch >= 1);
    assert!(done.finished_unix_ms >= done.started_unix_ms && done.started_unix_ms > 0);

    let adapter = tuner.adapters().join("kb-adapter");
    assert_eq!(Path::new(&done.adapter_dir), adapter);
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(adapter.join(file).is_file(), "{file} in {adapter:?}");
    }
    let read = zhiku_tuner::peft::read_adapter(&adapter, &candle_core::Device::Cpu)
        .expect("the adapter reads back as PEFT");
    // q and v of both layers of the tiny model.
    assert_eq!(read.pairs.len(), 4);
    assert!(
        read.pairs
            .iter()
            .all(|p| p.module.contains("q_proj") || p.module.contains("v_proj"))
    );
    assert_eq!(leftovers(&tuner.adapters()), vec!["kb-adapter".to_owned()]);

    let listed = client
        .list_jobs(ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, job.id);

    // A watcher that comes late gets the whole story, then the end.
    let replay = watch_until(&mut client, &job.id, |_| false).await;
    assert_eq!(replay.len(), events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_job_queues_behind_the_first_and_a_full_queue_refuses() {
    let tuner = TestTuner::start(1).await;
    let mut client = tuner.client().await;
    let first = client
        .create_job(inline(dataset(8), 10_000, "first"))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .create_job(inline(dataset(4), 1, "second"))
        .await
        .expect("one job may wait")
        .into_inner();
    assert_eq!(state(&second), TuneJobState::Queued);
    assert!(second.queue_position >= 1, "{second:?}");

    let full = client
        .create_job(inline(dataset(4), 1, "third"))
        .await
        .expect_err("the queue holds one waiting job");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("queue is full"), "{full:?}");

    // The first trains while the second waits.
    watch_until(&mut client, &first.id, |e| {
        e.kind == TuneJobEventKind::Step as i32
    })
    .await;
    let waiting = client
        .get_job(GetJobRequest {
            job_id: second.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&waiting), TuneJobState::Queued);
    assert_eq!(waiting.queue_position, 1);
    assert!(waiting.progress.is_none_or(|p| p.step == 0));

    // The same adapter name as an unfinished job is refused.
    let busy = client
        .create_job(inline(dataset(4), 1, "second"))
        .await
        .expect_err("adapter `second` is being written");
    assert_eq!(busy.code(), Code::AlreadyExists, "{busy:?}");

    // Once the first ends, the second runs to the end.
    client
        .cancel_job(CancelJobRequest {
            job_id: first.id.clone(),
        })
        .await
        .unwrap();
    let events = watch_until(&mut client, &second.id, |_| false).await;
    let states: Vec<i32> = events
        .iter()
        .filter(|e| e.kind == TuneJobEventKind::State as i32)
        .map(|e| e.state)
        .collect();
    assert_eq!(states.first(), Some(&(TuneJobState::Queued as i32)));
    assert!(states.contains(&(TuneJobState::Running as i32)));
    assert_eq!(states.last(), Some(&(TuneJobState::Succeeded as i32)));
    let first = client
        .get_job(GetJobRequest { job_id: first.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&first), TuneJobState::Cancelled);
    assert!(second.created_unix_ms >= first.created_unix_ms);
    let started_second = client
        .get_job(GetJobRequest { job_id: second.id })
        .await
        .unwrap()
        .into_inner()
        .started_unix_ms;
    assert!(
        started_second >= first.finished_unix_ms,
        "one job at a time: the second started after the first ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_ends_it_cancelled_with_no_adapter() {
    let tuner = TestTuner::start(2).await;
    let mut client = tuner.client().await;
    let job = client
        .create_job(inline(dataset(8), 10_000, "never"))
        .await
        .unwrap()
        .into_inner();
    watch_until(&mut client, &job.id, |e| {
        e.kind == TuneJobEventKind::Step as i32 && e.step >= 2
    })
    .await;
    // A snapshot of a running job's events ends by itself.
    let snapshot: Vec<TuneJobEvent> = tokio::time::timeout(
        PATIENCE,
        client
            .watch_job(WatchJobRequest {
                job_id: job.id.clone(),
                history_only: true,
            })
            .await
            .unwrap()
            .into_inner()
            .map(|e| e.expect("an event"))
            .collect(),
    )
    .await
    .expect("the snapshot ends");
    assert!(
        snapshot
            .iter()
            .any(|e| e.kind == TuneJobEventKind::Step as i32)
    );
    let cancelling = client
        .cancel_job(CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(
            state(&cancelling),
            TuneJobState::Running | TuneJobState::Cancelled
        ),
        "{cancelling:?}"
    );
    let events = watch_until(&mut client, &job.id, |_| false).await;
    assert_eq!(
        events.last().map(|e| e.state),
        Some(TuneJobState::Cancelled as i32)
    );
    let job = client
        .get_job(GetJobRequest { job_id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&job), TuneJobState::Cancelled);
    assert!(job.error.contains("no adapter"), "{job:?}");
    assert!(!tuner.adapters().join("never").exists());
    assert!(
        leftovers(&tuner.adapters()).is_empty(),
        "nothing half-written: {:?}",
        leftovers(&tuner.adapters())
    );
    // Cancelling again changes nothing.
    let again = client
        .cancel_job(CancelJobRequest { job_id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&again), TuneJobState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_what_to_fix() {
    let tuner = TestTuner::start(2).await;
    let mut client = tuner.client().await;
    let mut records = dataset(3);
    records.push_str("{\"instruction\": \"q\", \"output\": \n");
    let bad = client
        .create_job(inline(records, 1, ""))
        .await
        .expect_err("line 4 is not JSON");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("line 4"), "{bad:?}");

    // A file under --data-dir, its fault named by its line too.
    let mut file = dataset(1);
    file.push_str("{\"instruction\": \"q\"}\n");
    std::fs::write(tuner.data().join("train.jsonl"), file).unwrap();
    let request = |path: &str| CreateJobRequest {
        dataset: Some(create_job_request::Dataset::DatasetPath(path.into())),
        adapter_name: String::new(),
        hyperparameters: Some(hyperparameters(1)),
    };
    let bad = client
        .create_job(request("train.jsonl"))
        .await
        .expect_err("line 2 has no output");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("train.jsonl line 2"), "{bad:?}");
    for escape in ["../model/tiny-chat-qwen2.gguf", "/etc/passwd", ""] {
        let bad = client
            .create_job(request(escape))
            .await
            .expect_err("outside --data-dir");
        assert_eq!(bad.code(), Code::InvalidArgument, "{escape}: {bad:?}");
    }
    let missing = client
        .create_job(request("nope.jsonl"))
        .await
        .expect_err("no such file");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    for (name, h) in [
        (
            "rank",
            TuneHyperparameters {
                rank: Some(0),
                ..hyperparameters(1)
            },
        ),
        (
            "target",
            TuneHyperparameters {
                targets: vec!["q".into(), "attn".into()],
                ..hyperparameters(1)
            },
        ),
        (
            "validation",
            TuneHyperparameters {
                validation: Some(1.0),
                ..hyperparameters(1)
            },
        ),
        (
            "counterfactual",
            TuneHyperparameters {
                counterfactual_share: Some(1.5),
                ..hyperparameters(1)
            },
        ),
        (
            "layers",
            TuneHyperparameters {
                layers: "last:0".into(),
                ..hyperparameters(1)
            },
        ),
    ] {
        let bad = client
            .create_job(CreateJobRequest {
                hyperparameters: Some(h),
                ..inline(dataset(2), 1, "")
            })
            .await
            .expect_err("bad hyper-parameter");
        assert_eq!(bad.code(), Code::InvalidArgument, "{name}: {bad:?}");
        assert!(bad.message().contains(name), "{name}: {bad:?}");
    }
    let bad = client
        .create_job(inline(dataset(2), 1, "../escape"))
        .await
        .expect_err("an adapter name is one directory name");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let unknown = client
        .watch_job(WatchJobRequest {
            job_id: "ftjob-none".into(),
            history_only: false,
        })
        .await
        .expect_err("no such job");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        client
            .list_jobs(ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs
            .is_empty(),
        "no refused request left a job"
    );
}

/// A job with `packing`: the examples go into fewer rows than examples (said in the job's
/// first state message), one optimizer step per row, the adapter written; and a job whose
/// rows would pass the model's context fails saying so, with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_job_trains_on_fewer_rows_and_rows_past_the_context_fail() {
    let tuner = TestTuner::start(4).await;
    let mut client = tuner.client().await;
    let packed = |max_seq_len: u32, adapter: &str| CreateJobRequest {
        hyperparameters: Some(TuneHyperparameters {
            packing: Some(true),
            max_seq_len: Some(max_seq_len),
            ..hyperparameters(2)
        }),
        ..inline(dataset(8), 2, adapter)
    };
    let job = client
        .create_job(packed(60, "packed"))
        .await
        .expect("CreateJob")
        .into_inner();
    assert_eq!(
        job.hyperparameters.as_ref().and_then(|h| h.packing),
        Some(true),
        "the job reports the packing it runs with"
    );
    let events = watch_until(&mut client, &job.id, |_| false).await;
    assert_eq!(
        events.last().map(|e| e.state),
        Some(TuneJobState::Succeeded as i32),
        "{events:#?}"
    );
    let data = events
        .iter()
        .find(|e| e.message.starts_with("training on 6 examples"))
        .expect("the data message");
    assert!(data.message.contains("packed into"), "{}", data.message);
    let steps = events
        .iter()
        .filter(|e| e.kind == TuneJobEventKind::Step as i32)
        .count();
    // 6 training examples, fewer rows, one row a step (batch 1, no accumulation), 2 epochs.
    assert!(steps < 2 * 6 && steps % 2 == 0, "{steps} steps");
    assert!(
        tuner
            .adapters()
            .join("packed/adapter_model.safetensors")
            .is_file()
    );

    let job = client
        .create_job(packed(4096, "too-long"))
        .await
        .expect("CreateJob")
        .into_inner();
    let events = watch_until(&mut client, &job.id, |_| false).await;
    let last = events.last().expect("events");
    assert_eq!(last.state, TuneJobState::Failed as i32, "{events:#?}");
    assert!(
        last.message.contains("packing") && last.message.contains("context"),
        "{}",
        last.message
    );
    assert!(!tuner.adapters().join("too-long").exists());
}
