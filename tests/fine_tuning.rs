//! The orchestrator's OpenAI-shaped fine-tuning routes, passed over gRPC to a running
//! `zhiku-tuner` (both binaries as processes) that trains a tiny chat model the test writes:
//! a job created over HTTP runs to `succeeded` with its events (the loss curve) and its
//! adapter on the tuner's volume; a bad record is a 400 naming its line; cancel and an
//! unknown job; and without `--tuner-addr` the routes answer 501 saying what to set. Then two
//! tuner replicas: jobs spread, read where they live, listed together, and a killed replica's
//! jobs UNAVAILABLE naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zhiku_e2e::http::call_json as call;
use zhiku_e2e::{ServiceProcess, free_addr, wait_serving};
use zhiku_proto::v1::GetJobRequest;
use zhiku_proto::v1::tuner_client::TunerClient;

fn orchestrator(http: SocketAddr, extra: &[&str]) -> ServiceProcess {
    let http = http.to_string();
    let mut args = vec!["--http-listen", http.as_str()];
    args.extend_from_slice(extra);
    ServiceProcess::start("zhiku-orchestrator", &args, &[])
}

/// A tiny chat model written under `work`, and the adapters' directory beside it.
fn tiny_model(work: &Path) -> (PathBuf, PathBuf) {
    let model_dir = work.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    zhiku_lm::tiny::write_chat_model(&model_dir, 5).expect("writes the tiny model");
    (model_dir, work.join("adapters"))
}

fn records(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{}\n",
                json!({"instruction": format!("q{i}"), "output": format!("the {i} is a")})
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tuning_jobs_over_http_train_on_the_tuner() {
    let work = tempfile::tempdir().unwrap();
    let (model_dir, adapters) = tiny_model(work.path());
    let tuner = tuner(&model_dir, &adapters);
    wait_serving(&tuner, "zhiku.v1.Tuner", Duration::from_secs(60)).await;
    let http = free_addr();
    let tuner_addr = tuner.endpoint();
    let _orchestrator = orchestrator(http, &["--tuner-addr", tuner_addr.as_str()]);

    // A malformed record: 400, naming the line.
    let (status, body) = call(
        http,
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&json!({"training_data": format!("{}not json\n", records(2))})),
    );
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("line 3"), "{body}");
    let (status, body) = call(
        http,
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&json!({"training_data": records(2), "hyperparameters": {"packing": "yes"}})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("`packing` must be true or false"),
        "{body}"
    );
    for (layers, says) in [
        (json!("last:0"), "layers `last:0`: last:0 selects no block"),
        (json!({"from": 1}), "`layers` must be"),
        (json!([]), "`layers` must be"),
    ] {
        let (status, body) = call(
            http,
            "POST",
            "/v1/fine_tuning/jobs",
            Some(&json!({"training_data": records(2), "hyperparameters": {"layers": layers}})),
        );
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(says), "{body}");
    }

    let (status, job) = call(
        http,
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&json!({
            "model": "ignored",
            "training_data": records(8),
            "suffix": "http-adapter",
            "seed": 3,
            "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "rank": 2,
                "grad_accumulation": 1, "max_seq_len": 60, "validation": 0.25,
                "learning_rate": 1e-2, "targets": "q,v", "layers": [1]},
        })),
    );
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        job["hyperparameters"]["layers"], "1",
        "the top block of two"
    );
    assert_eq!(job["object"], "fine_tuning.job");
    assert_eq!(job["hyperparameters"]["n_epochs"], 2);
    assert_eq!(job["hyperparameters"]["rank"], 2);
    assert_eq!(
        job["hyperparameters"]["packing"], false,
        "the default, reported"
    );
    assert_eq!(job["seed"], 3);
    let id = job["id"].as_str().expect("an id").to_owned();

    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let (status, job) = call(http, "GET", &format!("/v1/fine_tuning/jobs/{id}"), None);
        assert_eq!(status, 200, "{job}");
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
        assert!(Instant::now() < deadline, "still {job}\n{}", tuner.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["fine_tuned_model"], "http-adapter");
    assert!(done["finished_at"].as_i64().is_some());
    let adapter = adapters.join("http-adapter");
    assert_eq!(done["zhiku"]["adapter_dir"], adapter.display().to_string());
    assert!(adapter.join("adapter_model.safetensors").is_file());
    assert!(adapter.join("adapter_config.json").is_file());

    let (status, events) = call(
        http,
        "GET",
        &format!("/v1/fine_tuning/jobs/{id}/events?limit=1000"),
        None,
    );
    assert_eq!(status, 200, "{events}");
    let data = events["data"].as_array().expect("events");
    // Newest first: the success, then the last epoch.
    assert_eq!(data[0]["data"]["status"], "succeeded", "{events}");
    let steps: Vec<&Value> = data
        .iter()
        .filter(|e| e["type"] == "metrics" && e["data"]["kind"] == "step")
        .collect();
    assert_eq!(steps.len(), 12, "6 training records, 2 epochs: {events}");
    assert!(
        steps
            .iter()
            .all(|e| e["data"]["train_loss"].as_f64().is_some_and(f64::is_finite))
    );
    assert!(
        data.iter()
            .any(|e| e["data"]["valid_loss"].as_f64().is_some())
    );
    let (_, few) = call(
        http,
        "GET",
        &format!("/v1/fine_tuning/jobs/{id}/events?limit=5"),
        None,
    );
    assert_eq!(few["data"].as_array().map(Vec::len), Some(5));
    assert_eq!(few["has_more"], true);

    // A long job, cancelled while it runs.
    let (_, long) = call(
        http,
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&json!({"training_data": records(8), "suffix": "cancelled",
            "hyperparameters": {"n_epochs": 100000, "grad_accumulation": 1, "max_seq_len": 60}})),
    );
    let long_id = long["id"].as_str().expect("an id").to_owned();
    let (status, cancelled) = call(
        http,
        "POST",
        &format!("/v1/fine_tuning/jobs/{long_id}/cancel"),
        None,
    );
    assert_eq!(status, 200, "{cancelled}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, job) = call(
            http,
            "GET",
            &format!("/v1/fine_tuning/jobs/{long_id}"),
            None,
        );
        if job["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!adapters.join("cancelled").exists());

    let (status, list) = call(http, "GET", "/v1/fine_tuning/jobs", None);
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, vec![long_id.as_str(), id.as_str()], "newest first");

    let (status, body) = call(http, "GET", "/v1/fine_tuning/jobs/ftjob-nope", None);
    assert_eq!(status, 404, "{body}");

    // Without --tuner-addr: 501, saying what to set.
    let plain = free_addr();
    let _without = orchestrator(plain, &[]);
    let (status, body) = call(plain, "GET", "/v1/fine_tuning/jobs", None);
    assert_eq!(status, 501, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--tuner-addr")),
        "{body}"
    );
}

fn tuner(model_dir: &Path, adapters: &Path) -> ServiceProcess {
    ServiceProcess::start(
        "zhiku-tuner",
        &[
            "--model",
            model_dir.to_str().unwrap(),
            "--gguf-file",
            "",
            "--adapter-dir",
            adapters.to_str().unwrap(),
            "--threads",
            "1",
        ],
        &[],
    )
}

/// The replica (index into `tuners`) that holds job `id`, asked of each tuner directly.
async fn holder(tuners: &[ServiceProcess], id: &str) -> Vec<usize> {
    let mut found = Vec::new();
    for (i, t) in tuners.iter().enumerate() {
        let mut client = TunerClient::new(t.channel(Duration::from_secs(30)).await);
        let request = GetJobRequest {
            job_id: id.to_owned(),
        };
        if client.get_job(request).await.is_ok() {
            found.push(i);
        }
    }
    found
}

fn job_id(job: &Value) -> String {
    job["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a job id: {job}"))
        .to_owned()
}

/// Creates a job through `http`; its id.
fn create(http: SocketAddr, body: &Value) -> String {
    let (status, job) = call(http, "POST", "/v1/fine_tuning/jobs", Some(body));
    assert_eq!(status, 200, "{job}");
    job_id(&job)
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// Job `id` read through `http`: the status and the body.
fn job(http: SocketAddr, id: &str) -> (u16, Value) {
    call(http, "GET", &format!("/v1/fine_tuning/jobs/{id}"), None)
}

/// Polls job `id` through `http` until `done` says so.
async fn wait_job(http: SocketAddr, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, read) = job(http, id);
        assert_eq!(status, 200, "{read}");
        if done(&read) {
            return read;
        }
        assert!(Instant::now() < deadline, "still {read}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two tuner replicas behind two orchestrators (one adapters' volume): new jobs go to the
/// replica without an unfinished job; a job is read and cancelled through the replica that
/// holds it, from the orchestrator that created it and from one that finds it by asking
/// each; an adapter name an unfinished job writes on another replica is refused; the listing
/// merges both. One replica killed (SIGKILL): its job's reads are UNAVAILABLE naming it, the
/// listing names it as unreachable beside the other's jobs, and a new job trains on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_jobs_spread_over_tuner_replicas_and_are_read_where_they_live() {
    let work = tempfile::tempdir().unwrap();
    let (model_dir, adapters) = tiny_model(work.path());
    let mut tuners: Vec<ServiceProcess> = (0..2).map(|_| tuner(&model_dir, &adapters)).collect();
    for t in &tuners {
        wait_serving(t, "zhiku.v1.Tuner", Duration::from_secs(60)).await;
    }
    let list = format!("{},{}", tuners[0].endpoint(), tuners[1].endpoint());
    let (creator, reader) = (free_addr(), free_addr());
    let _creator = orchestrator(creator, &["--tuner-addr", list.as_str()]);
    let _reader = orchestrator(reader, &["--tuner-addr", list.as_str()]);
    let long = |name: &str| {
        json!({"training_data": records(8), "suffix": name,
            "hyperparameters": {"n_epochs": 100000, "grad_accumulation": 1, "max_seq_len": 60}})
    };

    // Two long jobs: the second goes to the replica without an unfinished job.
    let (first, second) = (
        create(creator, &long("first")),
        create(creator, &long("second")),
    );
    let (on_first, on_second) = (
        holder(&tuners, &first).await,
        holder(&tuners, &second).await,
    );
    eprintln!("job {first} on tuner {on_first:?}, job {second} on tuner {on_second:?}");
    assert_eq!(on_first.len(), 1, "one replica holds {first}");
    assert_eq!(on_second.len(), 1, "one replica holds {second}");
    assert_ne!(on_first, on_second, "both jobs went to one replica");
    let killed = on_second[0];

    // The adapter an unfinished job writes, on whichever replica: refused.
    let (status, body) = call(
        creator,
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&long("first")),
    );
    assert_eq!(status, 409, "{body}");
    assert!(message(&body).contains(&first), "{body}");

    // Each job read where it lives, through the orchestrator that created it; the reader
    // finds the first by asking each replica.
    for id in [&first, &second] {
        let (status, read) = job(creator, id);
        assert_eq!(status, 200, "{read}");
        assert_eq!(&job_id(&read), id);
    }
    let (status, read) = job(reader, &first);
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["zhiku"]["adapter_name"], "first");

    // The listing merges both replicas (newest first: created in one millisecond, the two
    // may come in either order).
    let (status, listed) = call(creator, "GET", "/v1/fine_tuning/jobs", None);
    assert_eq!(status, 200, "{listed}");
    let mut ids: Vec<String> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(job_id)
        .collect();
    ids.sort();
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(ids, both, "{listed}");
    assert_eq!(listed["zhiku"]["unreachable"], json!([]));

    // Cancelled through the reader, on its replica.
    let (status, _) = call(
        reader,
        "POST",
        &format!("/v1/fine_tuning/jobs/{first}/cancel"),
        None,
    );
    assert_eq!(status, 200);
    wait_job(creator, &first, |j| j["status"] == "cancelled").await;

    // The second job's replica killed.
    let gone = tuners[killed].endpoint();
    tuners[killed].kill();
    eprintln!("killed tuner {gone} (SIGKILL)");
    // The creator knows where the job was: UNAVAILABLE naming the replica.
    let (status, body) = job(creator, &second);
    eprintln!("{body}");
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains(&gone), "{body}");
    assert!(message(&body).contains("cannot be reached"), "{body}");
    // The reader never saw it: no replica that answered has it, and the dead one may.
    let (status, body) = job(reader, &second);
    eprintln!("{body}");
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains(&gone), "{body}");
    let (status, body) = call(
        creator,
        "GET",
        &format!("/v1/fine_tuning/jobs/{second}/events"),
        None,
    );
    assert_eq!(status, 503, "{body}");
    // The listing: the live replica's jobs, and the dead one named.
    let (status, listed) = call(reader, "GET", "/v1/fine_tuning/jobs", None);
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<String> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(job_id)
        .collect();
    assert_eq!(ids, vec![first.clone()], "{listed}");
    assert_eq!(
        listed["zhiku"]["unreachable"][0]["replica"], gone,
        "{listed}"
    );

    // A new job trains on the live replica; its adapter is on the shared volume.
    let after = create(
        reader,
        &json!({"training_data": records(8), "suffix": "after",
            "hyperparameters": {"n_epochs": 1, "grad_accumulation": 1, "max_seq_len": 60}}),
    );
    let done = wait_job(creator, &after, |j| {
        !matches!(j["status"].as_str(), Some("queued" | "running"))
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(adapters.join("after/adapter_model.safetensors").is_file());
    let live = 1 - killed;
    assert_eq!(
        holder(&tuners[live..=live], &after).await,
        vec![0],
        "on the live replica"
    );
}
