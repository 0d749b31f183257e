//! The orchestrator's OpenAI-shaped fine-tuning routes, passed over gRPC to a running
//! `zhiku-tuner` (both binaries as processes) that trains a tiny chat model the test writes:
//! a job created over HTTP runs to `succeeded` with its events (the loss curve) and its
//! adapter on the tuner's volume; a bad record is a 400 naming its line; cancel and an
//! unknown job; and without `--tuner-addr` the routes answer 501 saying what to set.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zhiku_e2e::{ServiceProcess, free_addr, wait_serving};

/// One HTTP/1.1 call (no keep-alive); returns the status and the JSON body.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connects to {addr}: {e}"),
        }
    };
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("sends the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reads the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP response: {response}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a whole JSON body: {head}"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"));
    (status, json)
}

fn orchestrator(http: SocketAddr, extra: &[&str]) -> ServiceProcess {
    let http = http.to_string();
    let mut args = vec!["--http-listen", http.as_str()];
    args.extend_from_slice(extra);
    ServiceProcess::start("zhiku-orchestrator", &args, &[])
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
    let model_dir = work.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    zhiku_lm::tiny::write_chat_model(&model_dir, 5).expect("writes the tiny model");
    let adapters = work.path().join("adapters");
    let tuner = ServiceProcess::start(
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
    );
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
                "learning_rate": 1e-2, "targets": "q,v"},
        })),
    );
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["object"], "fine_tuning.job");
    assert_eq!(job["hyperparameters"]["n_epochs"], 2);
    assert_eq!(job["hyperparameters"]["rank"], 2);
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
