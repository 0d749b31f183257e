//! End-to-end: every service binary starts as its own process, serves grpc.health.v1 and
//! reflection, and answers its API over real gRPC and real grpcurl.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use zhiku_e2e::{ServiceProcess, minilm_dir, models_dir, run_grpcurl, wait_log, wait_serving};
use zhiku_proto::v1::embedder_client::EmbedderClient;
use zhiku_proto::v1::{EmbedKind, EmbedRequest};

const STARTUP: Duration = Duration::from_secs(120);

/// grpcurl's `list` output for a server.
fn grpcurl_list(process: &ServiceProcess) -> Vec<String> {
    let addr = process.addr.to_string();
    let (ok, stdout, stderr) = run_grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "grpcurl list failed: {stderr}");
    stdout.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedder_binary_health_reflection_and_grpcurl_embed() {
    let model = minilm_dir();
    let process = ServiceProcess::start(
        "zhiku-embedder",
        &["--model", model.to_str().expect("utf-8 path")],
        &[],
    );
    // The model loads after the server listens: health says NOT_SERVING first.
    let seen = wait_serving(&process, "zhiku.v1.Embedder", STARTUP).await;
    assert_eq!(
        seen,
        vec![ServingStatus::NotServing, ServingStatus::Serving],
        "{}",
        process.logs()
    );

    let services = grpcurl_list(&process);
    assert!(
        services.contains(&"zhiku.v1.Embedder".to_owned()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_owned()),
        "{services:?}"
    );
    // Only this server's service is advertised, not the other zhiku services.
    assert!(
        !services.iter().any(|s| s == "zhiku.v1.Generator"),
        "{services:?}"
    );

    let addr = process.addr.to_string();
    let (ok, stdout, stderr) =
        run_grpcurl(&["-plaintext", &addr, "describe", "zhiku.v1.Embedder.Embed"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("rpc Embed ( .zhiku.v1.EmbedRequest ) returns ( .zhiku.v1.EmbedResponse )"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"texts": ["知识库问答", "hello world"], "kind": "EMBED_KIND_QUERY", "id": "grpcurl-1"}"#,
        &addr,
        "zhiku.v1.Embedder/Embed",
    ]);
    assert!(ok, "grpcurl Embed failed: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("grpcurl prints JSON");
    let embeddings = json["embeddings"].as_array().expect("embeddings");
    assert_eq!(embeddings.len(), 2);
    for e in embeddings {
        let values = e["values"].as_array().expect("values");
        assert_eq!(values.len(), 384);
        let norm: f64 = values.iter().map(|v| v.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-3, "not unit length: {norm}");
    }
    assert_eq!(json["dimensions"], 384);
    assert_eq!(json["id"], "grpcurl-1");

    // Bad input through grpcurl: INVALID_ARGUMENT with a message saying what to fix.
    let (ok, _, stderr) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"texts": []}"#,
        &addr,
        "zhiku.v1.Embedder/Embed",
    ]);
    assert!(!ok);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(stderr.contains("`texts` is empty"), "{stderr}");

    // The x-request-id a client sends comes back and is on the server's log lines.
    let (ok, stdout, stderr) = run_grpcurl(&[
        "-plaintext",
        "-v",
        "-H",
        "x-request-id: e2e-trace-7",
        "-d",
        "{}",
        &addr,
        "zhiku.v1.Embedder/Info",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("x-request-id: e2e-trace-7"), "{stdout}");
    assert!(stdout.contains("\"modelType\": \"bert\""), "{stdout}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(process.logs().contains("e2e-trace-7"), "{}", process.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedder_drains_in_flight_calls_on_sigterm() {
    let model = minilm_dir();
    // Debug logs of the runtime say when a call has reached the server.
    let mut process = ServiceProcess::start(
        "zhiku-embedder",
        &["--model", model.to_str().expect("utf-8 path")],
        &[
            ("ZHIKU_LOG", "zhiku_runtime=debug,info"),
            ("ZHIKU_SHUTDOWN_GRACE_SECONDS", "300"),
            // Small batches: the call spans many forward passes.
            ("ZHIKU_EMBEDDER_MAX_BATCH_TOKENS", "256"),
        ],
    );
    wait_serving(&process, "zhiku.v1.Embedder", STARTUP).await;
    let channel = process.channel(STARTUP).await;
    // A large request that takes a while on CPU.
    // Enough work to be in flight for a moment (tens of batches), far within the grace time.
    let texts: Vec<String> = (0..48)
        .map(|i| format!("第{i}段：检索增强生成先检索相关段落，再让模型据此回答问题。").repeat(2))
        .collect();
    let mut client = EmbedderClient::new(channel);
    let call = tokio::spawn(async move {
        client
            .embed(EmbedRequest {
                texts,
                kind: EmbedKind::Passage as i32,
                ..Default::default()
            })
            .await
    });
    let deadline = std::time::Instant::now() + STARTUP;
    while !process
        .logs()
        .lines()
        .any(|l| l.contains("/zhiku.v1.Embedder/Embed") && l.contains("started"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "call never arrived\n{}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = process
        .terminate(Duration::from_secs(60))
        .expect("exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        process.logs()
    );
    let response = call
        .await
        .expect("task")
        .unwrap_or_else(|e| panic!("the in-flight call failed: {e:?}\n{}", process.logs()));
    assert_eq!(response.into_inner().embeddings.len(), 48);
    assert!(process.logs().contains("draining"), "{}", process.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedder_with_a_missing_model_exits_with_a_clear_error() {
    let mut process = ServiceProcess::start(
        "zhiku-embedder",
        &[
            "--model",
            "/nonexistent/model-dir",
            "--models-dir",
            "/nonexistent",
        ],
        &[("HF_HUB_OFFLINE", "1")],
    );
    let deadline = std::time::Instant::now() + STARTUP;
    let status = loop {
        if let Some(status) = process.try_wait() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running\n{}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
    let logs = process.logs();
    assert!(
        logs.contains("invalid model id") || logs.contains("--model"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriever_binary_health_reflection_and_grpcurl_upsert_search() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let process = ServiceProcess::start("zhiku-retriever", &["--data-dir", data_dir], &[]);
    let seen = wait_serving(&process, "zhiku.v1.Retriever", STARTUP).await;
    assert_eq!(seen.last(), Some(&ServingStatus::Serving));
    let services = grpcurl_list(&process);
    assert!(
        services.contains(&"zhiku.v1.Retriever".to_owned()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_owned()),
        "{services:?}"
    );
    let addr = process.addr.to_string();
    let (ok, stdout, stderr) =
        run_grpcurl(&["-plaintext", &addr, "describe", "zhiku.v1.Retriever"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("rpc Search ("), "{stdout}");

    let call = |method: &str, body: &str| -> serde_json::Value {
        let (ok, stdout, stderr) = run_grpcurl(&[
            "-plaintext",
            "-d",
            body,
            &addr,
            &format!("zhiku.v1.Retriever/{method}"),
        ]);
        assert!(ok, "grpcurl {method} failed: {stderr}");
        serde_json::from_str(&stdout).expect("grpcurl prints JSON")
    };
    let kb = call(
        "CreateKnowledgeBase",
        r#"{"name": "docs", "dimensions": 3, "distance": "DISTANCE_COSINE"}"#,
    );
    assert_eq!(kb["name"], "docs");
    assert_eq!(kb["dimensions"], 3);
    let upserted = call(
        "Upsert",
        r#"{"knowledge_base": "docs", "passages": [
            {"document_id": "guide.md", "chunk_index": 0, "chunk_count": 2,
             "text": "安装知识库服务", "source": "guide.md", "vector": [1, 0, 0]},
            {"document_id": "guide.md", "chunk_index": 1, "chunk_count": 2,
             "text": "向量检索与混合检索", "source": "guide.md", "vector": [0, 1, 0]}]}"#,
    );
    assert_eq!(upserted["upserted"], "2");
    let found = call(
        "Search",
        r#"{"knowledge_base": "docs", "vector": [0, 0.9, 0.1], "query_text": "混合检索", "top_k": 1}"#,
    );
    assert_eq!(found["mode"], "SEARCH_MODE_HYBRID");
    let hits = found["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["passage"]["text"], "向量检索与混合检索");

    // Bad input: INVALID_ARGUMENT with what to fix.
    let (ok, _, stderr) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"knowledge_base": "docs", "vector": [1, 0]}"#,
        &addr,
        "zhiku.v1.Retriever/Search",
    ]);
    assert!(!ok);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(stderr.contains("2 dimensions"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_binary_health_reflection_and_grpcurl_generate() {
    let model = zhiku_e2e::models_dir().join("SmolLM2-135M-Instruct-GGUF");
    assert!(
        model.is_dir(),
        "{} is missing: run `scripts/fetch-models smollm2`",
        model.display()
    );
    let process = ServiceProcess::start(
        "zhiku-generator",
        &["--model", model.to_str().expect("utf-8 path")],
        &[],
    );
    let seen = wait_serving(&process, "zhiku.v1.Generator", STARTUP).await;
    assert_eq!(seen.last(), Some(&ServingStatus::Serving));
    let services = grpcurl_list(&process);
    assert!(
        services.contains(&"zhiku.v1.Generator".to_owned()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_owned()),
        "{services:?}"
    );

    let addr = process.addr.to_string();
    let (ok, stdout, stderr) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"chat": {"messages": [{"role": "ROLE_USER", "content": "What is the capital of France?"}]}, "sampling": {"maxNewTokens": 16}}"#,
        &addr,
        "zhiku.v1.Generator/Generate",
    ]);
    assert!(ok, "grpcurl Generate failed: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("grpcurl prints JSON");
    // The words are not asserted: SmolLM2-135M's first token on this question is a near tie
    // (llama.cpp's top two logits are 0.35 apart), so any change of rounding may pick the
    // other one. The generator's tests assert real-model tokens against llama.cpp's.
    let text = json["text"].as_str().unwrap_or("");
    assert!(
        !text.trim().is_empty() && !text.contains('\u{FFFD}'),
        "{stdout}"
    );
    assert_eq!(json["generatedTokens"], 16, "{stdout}");
    assert_eq!(json["finishReason"], "FINISH_REASON_LENGTH", "{stdout}");

    let (ok, stdout, stderr) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"prompt": "The capital of France is", "sampling": {"maxNewTokens": 4}}"#,
        &addr,
        "zhiku.v1.Generator/GenerateStream",
    ]);
    assert!(ok, "grpcurl GenerateStream failed: {stderr}");
    assert!(stdout.contains("\"chunk\""), "{stdout}");
    assert!(stdout.contains("\"done\""), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_binary_serves_and_names_a_downstream_service_that_is_down() {
    // Nothing listens on these ports: the downstream services are "down".
    let down = |_| format!("http://127.0.0.1:{}", zhiku_e2e::free_port());
    let (embedder, retriever, generator) = (down(0), down(1), down(2));
    let process = ServiceProcess::start(
        "zhiku-orchestrator",
        &[
            "--embedder-addr",
            &embedder,
            "--retriever-addr",
            &retriever,
            "--generator-addr",
            &generator,
        ],
        &[],
    );
    // Loaded, but its downstream services are down: NOT_SERVING.
    wait_log(&process, "health follows its readiness", STARTUP).await;
    let channel = process.channel(STARTUP).await;
    assert_eq!(
        zhiku_e2e::health(channel, "zhiku.v1.Orchestrator")
            .await
            .ok(),
        Some(ServingStatus::NotServing)
    );
    let services = grpcurl_list(&process);
    assert!(
        services.contains(&"zhiku.v1.Orchestrator".to_owned()),
        "{services:?}"
    );

    let addr = process.addr.to_string();
    // The container health-check probe agrees, and fails on a closed port.
    let probe = std::process::Command::new(zhiku_e2e::binary("zhiku-healthcheck"))
        .args([addr.as_str(), "zhiku.v1.Orchestrator"])
        .output()
        .expect("runs zhiku-healthcheck");
    assert!(!probe.status.success(), "{probe:?}");
    assert!(String::from_utf8_lossy(&probe.stdout).contains("NOT_SERVING"));
    let closed = format!("127.0.0.1:{}", zhiku_e2e::free_port());
    let probe = std::process::Command::new(zhiku_e2e::binary("zhiku-healthcheck"))
        .args([closed.as_str(), "zhiku.v1.Orchestrator"])
        .output()
        .expect("runs zhiku-healthcheck");
    assert!(!probe.status.success());

    let (ok, stdout, stderr) =
        run_grpcurl(&["-plaintext", &addr, "describe", "zhiku.v1.Orchestrator"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("rpc Ask ("), "{stdout}");

    let (ok, _, stderr) =
        run_grpcurl(&["-plaintext", "-d", "{}", &addr, "zhiku.v1.Orchestrator/Ask"]);
    assert!(!ok);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("`question` is empty"),
        "{stderr}"
    );

    let (ok, _, stderr) = run_grpcurl(&[
        "-plaintext",
        "-max-time",
        "20",
        "-d",
        r#"{"question": "小拾喜欢做什么？", "knowledgeBase": "demo"}"#,
        &addr,
        "zhiku.v1.Orchestrator/Ask",
    ]);
    assert!(!ok);
    assert!(stderr.contains("Unavailable"), "{stderr}");
    assert!(stderr.contains("retriever"), "{stderr}");
}

/// The orchestrator's health, then the generator's: read in that order, so that a SERVING
/// orchestrator must be followed by a SERVING generator.
async fn orchestrator_then_generator(
    orchestrator: &ServiceProcess,
    generator_addr: std::net::SocketAddr,
) -> (Option<ServingStatus>, Option<ServingStatus>) {
    let orchestrator_status =
        zhiku_e2e::health(orchestrator.channel(STARTUP).await, "zhiku.v1.Orchestrator")
            .await
            .ok();
    let generator_status =
        match tonic::transport::Channel::from_shared(format!("http://{generator_addr}"))
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(channel) => zhiku_e2e::health(channel, "zhiku.v1.Generator").await.ok(),
            Err(_) => None,
        };
    (orchestrator_status, generator_status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_is_not_serving_until_its_generator_loads_and_while_it_is_down() {
    let data = tempfile::tempdir().expect("temp dir");
    let embedder = ServiceProcess::start(
        "zhiku-embedder",
        &["--model", minilm_dir().to_str().expect("utf-8 path")],
        &[],
    );
    let retriever = ServiceProcess::start(
        "zhiku-retriever",
        &["--data-dir", data.path().to_str().expect("utf-8 path")],
        &[],
    );
    let generator_addr = zhiku_e2e::free_addr();
    let orchestrator = ServiceProcess::start(
        "zhiku-orchestrator",
        &[
            "--embedder-addr",
            &embedder.endpoint(),
            "--retriever-addr",
            &retriever.endpoint(),
            "--generator-addr",
            &format!("http://{generator_addr}"),
        ],
        &[],
    );
    wait_serving(&embedder, "zhiku.v1.Embedder", STARTUP).await;
    wait_serving(&retriever, "zhiku.v1.Retriever", STARTUP).await;
    // Two services up, the generator not started: NOT_SERVING.
    wait_log(&orchestrator, "health follows its readiness", STARTUP).await;
    let (status, _) = orchestrator_then_generator(&orchestrator, generator_addr).await;
    assert_eq!(status, Some(ServingStatus::NotServing));

    let smollm = models_dir().join("SmolLM2-135M-Instruct-GGUF");
    let smollm = smollm.to_str().expect("utf-8 path");
    for round in 0..2 {
        let mut generator =
            ServiceProcess::start_on("zhiku-generator", generator_addr, &["--model", smollm], &[]);
        // While the generator loads the orchestrator stays NOT_SERVING; it turns SERVING by
        // itself once the generator is.
        let deadline = std::time::Instant::now() + STARTUP;
        loop {
            let (orchestrator_status, generator_status) =
                orchestrator_then_generator(&orchestrator, generator_addr).await;
            if orchestrator_status == Some(ServingStatus::Serving) {
                assert_eq!(
                    generator_status,
                    Some(ServingStatus::Serving),
                    "round {round}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the orchestrator did not turn SERVING\n{}",
                orchestrator.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The generator dies: NOT_SERVING again, by itself.
        generator.kill();
        let deadline = std::time::Instant::now() + STARTUP;
        while orchestrator_then_generator(&orchestrator, generator_addr)
            .await
            .0
            != Some(ServingStatus::NotServing)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: still SERVING with the generator down"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
