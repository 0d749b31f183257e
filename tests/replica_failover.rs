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

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
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

/// The sum of the orchestrator's metric `name` over the series whose labels include `label`
/// (`key="value"`).
fn metric(metrics: SocketAddr, name: &str, label: &str) -> f64 {
    let mut tcp = std::net::TcpStream::connect(metrics).expect("metrics listener");
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = tcp.read_to_string(&mut response);
    response
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

/// Calls the orchestrator sent to `replica` (an address).
fn calls_to(metrics: SocketAddr, replica: &str) -> f64 {
    metric(
        metrics,
        "zhiku_downstream_calls_total",
        &format!("replica=\"{replica}\""),
    )
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

fn embedder(minilm: &str, addr: SocketAddr) -> ServiceProcess {
    ServiceProcess::start_on("zhiku-embedder", addr, &["--model", minilm], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asks_survive_a_killed_generator_and_embedder_which_take_calls_again_after_restart() {
    let smollm = models_dir().join("SmolLM2-135M-Instruct-GGUF");
    if !smollm.is_dir() {
        eprintln!(
            "SKIPPED: {} is missing (scripts/fetch-models smollm2)",
            smollm.display()
        );
        return;
    }
    let smollm = smollm.to_str().unwrap().to_owned();
    let minilm = minilm_dir().to_str().unwrap().to_owned();
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
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (embedder_list, generator_list) = (list(&embedder_addrs), list(&generator_addrs));
    let retriever_addr = retriever.endpoint();
    let metrics = free_addr();
    let metrics_arg = metrics.to_string();
    let orchestrator = ServiceProcess::start(
        "zhiku-orchestrator",
        &[
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
            // Every Ask generates: none is refused for its passages' scores or coverage.
            "--score-threshold",
            "-1",
            "--min-coverage",
            "0",
            "--metrics-listen",
            &metrics_arg,
        ],
        &[],
    );
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
