//! End-to-end: the orchestrator over replicas, on loopback: 2 embedders (MiniLM), 3
//! generators (SmolLM2-135M, one thread each), the retriever (on a 3-node Qdrant cluster when
//! there is a Qdrant binary, else on its embedded store) and the orchestrator with each
//! downstream address a list. Asks loop on 3 clients; one generator and one embedder are
//! killed with SIGKILL mid-loop, then restarted on their addresses. Every Ask that had not
//! started streaming its answer is answered (a call that failed before its first token was
//! sent again to another replica), an Ask whose answer was streaming from the killed
//! generator ends with UNAVAILABLE, none outlives its deadline, and the restarted replicas
//! take calls again. Prints the counts.

// The retriever's Qdrant cluster helpers.
#[path = "../crates/zhiku-retriever/tests/common/qdrant_node.rs"]
#[allow(dead_code)]
mod qdrant_node;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use zhiku_e2e::http::metric;
use zhiku_e2e::pipeline::{STARTUP, ask_request, ingest};
use zhiku_e2e::{ServiceProcess, free_addr, minilm_dir, models_dir, wait_serving};
use zhiku_proto::v1::ask_event;
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;

/// Each Ask's deadline: generous, the test runs on 2 shared cores.
const DEADLINE: Duration = Duration::from_secs(90);
const CLIENTS: usize = 3;

#[derive(Debug)]
enum Outcome {
    Answered,
    /// Failed after some of the answer had streamed.
    FailedStreaming(tonic::Code),
    /// Failed before any of the answer had streamed.
    FailedBefore(String),
}

struct Record {
    started: Instant,
    took: Duration,
    outcome: Outcome,
}

async fn ask_once(client: &mut OrchestratorClient<Channel>, question: &str) -> Outcome {
    let mut request = tonic::Request::new(ask_request("replicas", question, None, 24));
    request.set_timeout(DEADLINE);
    let mut streamed = false;
    let failed = |status: tonic::Status, streamed: bool| match streamed {
        true => Outcome::FailedStreaming(status.code()),
        false => Outcome::FailedBefore(format!("{:?}: {}", status.code(), status.message())),
    };
    let mut stream = match client.ask(request).await {
        Ok(s) => s.into_inner(),
        Err(status) => return failed(status, false),
    };
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(ask_event::Event::Chunk(_)) => streamed = true,
                Some(ask_event::Event::Answer(_)) => return Outcome::Answered,
                _ => {}
            },
            Ok(None) => {
                return failed(tonic::Status::internal("no answer event"), streamed);
            }
            Err(status) => return failed(status, streamed),
        }
    }
}

/// Calls the orchestrator sent to `replica` (an address).
fn calls_to(metrics: SocketAddr, replica: &str) -> f64 {
    metric(
        metrics,
        "zhiku_downstream_calls_total",
        &format!("replica=\"{replica}\""),
    )
}

/// The SmolLM2 and MiniLM models' directories; None (the test SKIPPED) when SmolLM2 is
/// missing.
fn models() -> Option<(String, String)> {
    let smollm = models_dir().join("SmolLM2-135M-Instruct-GGUF");
    if !smollm.is_dir() {
        eprintln!(
            "SKIPPED: {} is missing (scripts/fetch-models smollm2)",
            smollm.display()
        );
        return None;
    }
    let minilm = minilm_dir().to_str()?.to_owned();
    Some((smollm.to_str()?.to_owned(), minilm))
}

fn generator(smollm: &str, addr: SocketAddr) -> ServiceProcess {
    ServiceProcess::start_on(
        "zhiku-generator",
        addr,
        &[
            "--model",
            smollm,
            "--gguf-file",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ],
        &[("ZHIKU_THREADS", "1")],
    )
}

/// The orchestrator with `args`, every Ask generating: none is refused for its passages'
/// scores or coverage.
fn orchestrator(args: &[&str]) -> ServiceProcess {
    let every_ask_generates = ["--score-threshold", "-1", "--min-coverage", "0"];
    ServiceProcess::start(
        "zhiku-orchestrator",
        &[args, &every_ask_generates].concat(),
        &[],
    )
}

/// `addrs` as a downstream address list.
fn addresses(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn embedder(minilm: &str, addr: SocketAddr) -> ServiceProcess {
    ServiceProcess::start_on("zhiku-embedder", addr, &["--model", minilm], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asks_survive_a_killed_generator_and_embedder_which_take_calls_again_after_restart() {
    let Some((smollm, minilm)) = models() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let generator_addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let embedder_addrs: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
    let mut generators: Vec<ServiceProcess> = generator_addrs
        .iter()
        .map(|&a| generator(&smollm, a))
        .collect();
    let mut embedders: Vec<ServiceProcess> = embedder_addrs
        .iter()
        .map(|&a| embedder(&minilm, a))
        .collect();
    // The retriever on a 3-node Qdrant cluster (each shard on 2 nodes) when there is a
    // Qdrant binary, else on its embedded store.
    let qdrant_nodes = qdrant_node::binary()
        .map(|binary| qdrant_node::QdrantNode::cluster(&binary, data.path(), 3))
        .unwrap_or_default();
    let retriever = if qdrant_nodes.is_empty() {
        eprintln!("no Qdrant binary: the retriever runs on its embedded store");
        ServiceProcess::start(
            "zhiku-retriever",
            &["--data-dir", data.path().to_str().unwrap()],
            &[],
        )
    } else {
        let urls: Vec<String> = qdrant_nodes.iter().map(|n| n.grpc_url()).collect();
        eprintln!(
            "the retriever on a 3-node Qdrant cluster: {}",
            urls.join(",")
        );
        ServiceProcess::start(
            "zhiku-retriever",
            &["--backend", "qdrant", "--qdrant-url", &urls.join(",")],
            &[
                ("ZHIKU_QDRANT_SHARDS", "2"),
                ("ZHIKU_QDRANT_REPLICATION_FACTOR", "2"),
            ],
        )
    };
    let (embedder_list, generator_list) = (addresses(&embedder_addrs), addresses(&generator_addrs));
    let retriever_addr = retriever.endpoint();
    let metrics = free_addr();
    let metrics_arg = metrics.to_string();
    let orchestrator = orchestrator(&[
        "--embedder-addr",
        &embedder_list,
        "--retriever-addr",
        &retriever_addr,
        "--generator-addr",
        &generator_list,
        // Checks far enough apart that calls meet the killed replicas before a check
        // does: they are sent again elsewhere.
        "--downstream-health-interval-ms",
        "2000",
        // Prefix routing, but no replica ahead of another: the Asks share their passages,
        // and the test wants every generator busy.
        "--generator-max-imbalance",
        "0",
        "--metrics-listen",
        &metrics_arg,
    ]);
    for g in &generators {
        wait_serving(g, "zhiku.v1.Generator", STARTUP).await;
    }
    for e in &embedders {
        wait_serving(e, "zhiku.v1.Embedder", STARTUP).await;
    }
    wait_serving(&retriever, "zhiku.v1.Retriever", STARTUP).await;
    wait_serving(&orchestrator, "zhiku.v1.Orchestrator", STARTUP).await;
    let channel = orchestrator.channel(STARTUP).await;
    ingest(&mut OrchestratorClient::new(channel.clone()), "replicas").await;

    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let questions = [
        "小拾喜欢做什么？",
        "LoRA 训练时固定什么？",
        "知识库问答的流程是什么？",
    ];
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let (records, stop, channel) = (records.clone(), stop.clone(), channel.clone());
            tokio::spawn(async move {
                let mut client = OrchestratorClient::new(channel);
                let mut i = w;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome = ask_once(&mut client, questions[i % questions.len()]).await;
                    i += 1;
                    records.lock().unwrap().push(Record {
                        started,
                        took: started.elapsed(),
                        outcome,
                    });
                }
            })
        })
        .collect();
    let answered = || {
        records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Answered))
            .count()
    };
    let wait_answers = |n: usize, what: &'static str| {
        let answered = &answered;
        async move {
            let until = Instant::now() + STARTUP;
            while answered() < n {
                assert!(Instant::now() < until, "fewer than {n} answers {what}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_answers(2 * CLIENTS, "before the kill").await;

    // Kill while a generation is in flight on the generator.
    let g0_label = format!("replica=\"http://{}\"", generator_addrs[0]);
    let until = Instant::now() + STARTUP;
    while metric(metrics, "zhiku_downstream_in_flight", &g0_label) < 1.0 {
        assert!(
            Instant::now() < until,
            "generator 0 never had a call in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    generators[0].kill();
    embedders[0].kill();
    let killed = Instant::now();
    let before_kill = answered();
    eprintln!(
        "killed generator {} and embedder {} with SIGKILL",
        generator_addrs[0], embedder_addrs[0]
    );
    wait_answers(before_kill + 3 * CLIENTS, "after the kill").await;

    generators[0] = generator(&smollm, generator_addrs[0]);
    embedders[0] = embedder(&minilm, embedder_addrs[0]);
    wait_serving(&generators[0], "zhiku.v1.Generator", STARTUP).await;
    wait_serving(&embedders[0], "zhiku.v1.Embedder", STARTUP).await;
    let restarted = Instant::now();
    let (g0, e0) = (
        format!("http://{}", generator_addrs[0]),
        format!("http://{}", embedder_addrs[0]),
    );
    let (g0_before, e0_before) = (calls_to(metrics, &g0), calls_to(metrics, &e0));
    let until = Instant::now() + STARTUP;
    while calls_to(metrics, &g0) <= g0_before || calls_to(metrics, &e0) <= e0_before {
        assert!(
            Instant::now() < until,
            "the restarted replicas took no calls: generator {} -> {}, embedder {} -> {}",
            g0_before,
            calls_to(metrics, &g0),
            e0_before,
            calls_to(metrics, &e0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let back = restarted.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let records = records.lock().unwrap();
    let around_kill: Vec<&Record> = records
        .iter()
        .filter(|r| r.started + r.took >= killed)
        .collect();
    let count = |f: &dyn Fn(&Outcome) -> bool| around_kill.iter().filter(|r| f(&r.outcome)).count();
    let ok = count(&|o| matches!(o, Outcome::Answered));
    let cut = count(&|o| matches!(o, Outcome::FailedStreaming(_)));
    let lost: Vec<&Outcome> = around_kill
        .iter()
        .map(|r| &r.outcome)
        .filter(|o| matches!(o, Outcome::FailedBefore(_)))
        .collect();
    let slowest = records.iter().map(|r| r.took).max().unwrap_or_default();
    eprintln!(
        "{} Asks in all; from the kill on: {ok} answered, {cut} cut off mid-answer (UNAVAILABLE), \
         {} failed before streaming; slowest Ask {:.1} s (deadline {} s); the restarted replicas \
         took calls {:.1} s after they were SERVING",
        records.len(),
        lost.len(),
        slowest.as_secs_f64(),
        DEADLINE.as_secs(),
        back.as_secs_f64()
    );
    let in_flight_at_kill = records
        .iter()
        .filter(|r| r.started < killed && r.started + r.took > killed)
        .count();
    let retries = |service: &str| {
        metric(
            metrics,
            "zhiku_downstream_retries_total",
            &format!("service=\"{service}\""),
        )
    };
    eprintln!(
        "{in_flight_at_kill} Asks in flight at the kill; calls sent again to another replica: \
         generator {}, embedder {}",
        retries("generator"),
        retries("embedder")
    );
    for addr in generator_addrs.iter().chain(&embedder_addrs) {
        eprintln!(
            "{addr}: {} calls",
            calls_to(metrics, &format!("http://{addr}"))
        );
    }
    let lost: Vec<&String> = lost
        .into_iter()
        .filter_map(|o| match o {
            Outcome::FailedBefore(why) => Some(why),
            _ => None,
        })
        .collect();
    assert!(lost.is_empty(), "Asks failed before streaming: {lost:?}");
    for r in around_kill.iter() {
        if let Outcome::FailedStreaming(code) = r.outcome {
            assert_eq!(code, tonic::Code::Unavailable, "a cut-off answer's code");
        }
    }
    assert!(
        slowest < DEADLINE + Duration::from_secs(5),
        "an Ask hung past its deadline"
    );
    assert!(ok >= 3 * CLIENTS);
}

/// A question whose answer runs long (SmolLM2 goes on until max_new_tokens or near it).
const LONG_QUESTION: &str =
    "请详细地、一步一步地介绍知识库问答的完整流程，每一步都写出详细的解释和例子。";

/// The generator replica (of `addrs`) with a call in flight now; panics unless exactly one.
fn serving_one(metrics: SocketAddr, addrs: &[SocketAddr]) -> usize {
    let busy: Vec<usize> = (0..addrs.len())
        .filter(|&i| {
            let label = format!("replica=\"http://{}\"", addrs[i]);
            metric(metrics, "zhiku_downstream_in_flight", &label) >= 1.0
        })
        .collect();
    assert_eq!(busy.len(), 1, "one generator streams the answer: {busy:?}");
    busy[0]
}

fn generator_retries(metrics: SocketAddr) -> f64 {
    metric(
        metrics,
        "zhiku_downstream_retries_total",
        "service=\"generator\"",
    )
}

/// The kill of the generator streaming an answer.
struct Kill {
    killed: usize,
    /// Calls sent to the other generator, and generations sent again, when it was killed.
    survivor_calls: f64,
    retries: f64,
    at: Instant,
}

impl Kill {
    /// Kills (SIGKILL) the one generator of `addrs` with a call in flight.
    fn serving(
        metrics: SocketAddr,
        addrs: &[SocketAddr],
        generators: &mut [ServiceProcess],
    ) -> Self {
        let killed = serving_one(metrics, addrs);
        let survivor_calls = calls_to(metrics, &format!("http://{}", addrs[1 - killed]));
        let retries = generator_retries(metrics);
        generators[killed].kill();
        Kill {
            killed,
            survivor_calls,
            retries,
            at: Instant::now(),
        }
    }
}

/// What the client saw of an answer whose generator was killed after its first chunk.
struct Cut {
    kill: Kill,
    /// Chunks that came after the kill (sent before it, still on their way).
    chunks_after: usize,
    /// The error the stream ended with: its code (or HTTP error code) and message.
    code: String,
    message: String,
    took: Duration,
}

/// The orchestrator's Ask over gRPC: after its first chunk the generator streaming it is
/// killed; reads on until the stream ends.
async fn cut_grpc_ask(
    channel: Channel,
    metrics: SocketAddr,
    addrs: &[SocketAddr],
    generators: &mut [ServiceProcess],
) -> Cut {
    let mut client = OrchestratorClient::new(channel);
    let mut request = tonic::Request::new(ask_request("replicas", LONG_QUESTION, None, 1500));
    request.set_timeout(DEADLINE);
    let mut stream = client
        .ask(request)
        .await
        .expect("the Ask starts")
        .into_inner();
    loop {
        let event = stream.message().await.expect("streams").expect("an event");
        match event.event {
            Some(ask_event::Event::Chunk(_)) => break,
            Some(ask_event::Event::Answer(a)) => panic!("answered before any chunk: {a:?}"),
            _ => {}
        }
    }
    let kill = Kill::serving(metrics, addrs, generators);
    let mut chunks_after = 0;
    let read = async {
        loop {
            match stream.message().await {
                Ok(Some(event)) => match event.event {
                    Some(ask_event::Event::Chunk(_)) => chunks_after += 1,
                    Some(ask_event::Event::Answer(a)) => {
                        panic!("the answer ended before the kill took effect: {}", a.text)
                    }
                    _ => {}
                },
                Ok(None) => panic!("the stream ended without an error or an answer"),
                Err(status) => return status,
            }
        }
    };
    let status = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the cut Ask ends within its deadline");
    Cut {
        chunks_after,
        code: format!("{:?}", status.code()),
        message: status.message().to_owned(),
        took: kill.at.elapsed(),
        kill,
    }
}

/// The same through the OpenAI API: a streamed chat completion on `kb:replicas` (HTTP/1.0,
/// so that the SSE body is the raw stream until the server closes it).
fn cut_http_ask(
    http: SocketAddr,
    metrics: SocketAddr,
    addrs: &[SocketAddr],
    generators: &mut [ServiceProcess],
) -> Cut {
    use std::io::{BufRead, BufReader, Write};
    let body = serde_json::json!({
        "model": "kb:replicas",
        "stream": true,
        "max_tokens": 1500,
        "messages": [{"role": "user", "content": LONG_QUESTION}],
    })
    .to_string();
    let mut tcp = zhiku_e2e::http::connect(http);
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.0\r\nhost: {http}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut lines = BufReader::new(tcp).lines();
    let mut data = || -> Option<serde_json::Value> {
        loop {
            let line = lines.next()?.expect("reads the SSE stream");
            if let Some(json) = line.strip_prefix("data: ") {
                if json == "[DONE]" {
                    return None;
                }
                return Some(serde_json::from_str(json).expect("a JSON event"));
            }
        }
    };
    let content = |v: &serde_json::Value| {
        v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    };
    loop {
        let event = data().expect("a chunk before the end");
        assert!(
            event.get("error").is_none(),
            "failed before any chunk: {event}"
        );
        if content(&event) {
            break;
        }
    }
    let kill = Kill::serving(metrics, addrs, generators);
    let mut chunks_after = 0;
    let error = loop {
        let event = data().expect("an error event before the stream ends");
        if let Some(error) = event.get("error") {
            break error.clone();
        }
        assert!(
            event["choices"][0]["finish_reason"].is_null(),
            "the answer ended before the kill took effect: {event}"
        );
        chunks_after += usize::from(content(&event));
    };
    assert!(data().is_none(), "[DONE] after the error, nothing else");
    Cut {
        chunks_after,
        code: error["code"].as_str().unwrap_or_default().to_owned(),
        message: error["message"].as_str().unwrap_or_default().to_owned(),
        took: kill.at.elapsed(),
        kill,
    }
}

/// The answer's stream cut after its first chunk: 2 generators (SmolLM2, one thread each),
/// an Ask streaming a long answer; after its first chunk the generator streaming it is
/// killed (SIGKILL; which one from the orchestrator's calls in flight). The stream ends with
/// UNAVAILABLE saying the generator was lost mid-answer, naming it, within the deadline;
/// nothing was sent again to the other replica; a fresh Ask is answered by the survivor. The
/// same over the OpenAI API (an `error` event in the SSE stream), the killed one restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_mid_stream_ends_unavailable_and_is_not_retried() {
    let Some((smollm, minilm)) = models() else {
        return;
    };
    let addrs: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
    let mut generators: Vec<ServiceProcess> =
        addrs.iter().map(|&a| generator(&smollm, a)).collect();
    let embedder = embedder(&minilm, free_addr());
    let data = tempfile::tempdir().unwrap();
    let retriever = ServiceProcess::start(
        "zhiku-retriever",
        &["--data-dir", data.path().to_str().unwrap()],
        &[],
    );
    let (embedder_addr, retriever_addr) = (embedder.endpoint(), retriever.endpoint());
    let (metrics, http) = (free_addr(), free_addr());
    let (metrics_arg, http_arg) = (metrics.to_string(), http.to_string());
    let orchestrator = orchestrator(&[
        "--embedder-addr",
        &embedder_addr,
        "--retriever-addr",
        &retriever_addr,
        "--generator-addr",
        &addresses(&addrs),
        "--metrics-listen",
        &metrics_arg,
        "--http-listen",
        &http_arg,
    ]);
    for g in &generators {
        wait_serving(g, "zhiku.v1.Generator", STARTUP).await;
    }
    wait_serving(&embedder, "zhiku.v1.Embedder", STARTUP).await;
    wait_serving(&retriever, "zhiku.v1.Retriever", STARTUP).await;
    wait_serving(&orchestrator, "zhiku.v1.Orchestrator", STARTUP).await;
    let channel = orchestrator.channel(STARTUP).await;
    ingest(&mut OrchestratorClient::new(channel.clone()), "replicas").await;

    let check = |cut: &Cut, over: &str| {
        let lost = format!("http://{}", addrs[cut.kill.killed]);
        let survivor = format!("http://{}", addrs[1 - cut.kill.killed]);
        eprintln!(
            "{over}: generator {lost} killed after the first chunk; {} more chunks, then {} \
             after {:.1} s: {}",
            cut.chunks_after,
            cut.code,
            cut.took.as_secs_f64(),
            cut.message
        );
        assert!(
            matches!(cut.code.as_str(), "Unavailable" | "unavailable"),
            "{over}: {}",
            cut.code
        );
        for words in ["lost mid-answer", lost.as_str(), "not retried"] {
            assert!(cut.message.contains(words), "{over}: {}", cut.message);
        }
        assert_eq!(
            generator_retries(metrics),
            cut.kill.retries,
            "{over}: a generation was sent again after its first chunk"
        );
        assert_eq!(
            calls_to(metrics, &survivor),
            cut.kill.survivor_calls,
            "{over}: the survivor took a call for the cut answer"
        );
    };
    let calls = |i: usize| calls_to(metrics, &format!("http://{}", addrs[i]));

    // Over gRPC.
    let cut = cut_grpc_ask(channel.clone(), metrics, &addrs, &mut generators).await;
    check(&cut, "gRPC Ask");
    // A fresh Ask: answered by the survivor.
    let survivor = 1 - cut.kill.killed;
    let survivor_before = calls(survivor);
    let outcome = ask_once(
        &mut OrchestratorClient::new(channel.clone()),
        "小拾喜欢做什么？",
    )
    .await;
    assert!(matches!(outcome, Outcome::Answered), "{outcome:?}");
    assert!(calls(survivor) > survivor_before, "the survivor answered");

    // Over the OpenAI API, the killed generator back first.
    let killed = cut.kill.killed;
    generators[killed] = generator(&smollm, addrs[killed]);
    wait_serving(&generators[killed], "zhiku.v1.Generator", STARTUP).await;
    let label = format!("replica=\"http://{}\"", addrs[killed]);
    let until = Instant::now() + STARTUP;
    while metric(metrics, "zhiku_downstream_serving", &label) < 1.0 {
        assert!(Instant::now() < until, "the orchestrator never saw it back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut = tokio::task::spawn_blocking({
        let addrs = addrs.clone();
        let mut generators = std::mem::take(&mut generators);
        move || {
            let cut = cut_http_ask(http, metrics, &addrs, &mut generators);
            (cut, generators)
        }
    })
    .await
    .unwrap();
    let (cut, _generators) = cut;
    check(&cut, "OpenAI API");
    let outcome = ask_once(&mut OrchestratorClient::new(channel), "小拾喜欢做什么？").await;
    assert!(matches!(outcome, Outcome::Answered), "{outcome:?}");
}
