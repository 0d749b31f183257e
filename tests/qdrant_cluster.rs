//! End-to-end on a 3-node Qdrant cluster (distributed mode, three processes on loopback):
//! knowledge bases with 2 shards and 2 replicas of each. One node is killed with SIGKILL
//! while Asks run: every Ask still answers (the retriever retries, on the next node), ingest
//! goes on or fails with UNAVAILABLE naming the cause, and once the node is back every
//! acknowledged passage is there, on every node. The four services run as processes
//! (embedder, `zhiku-retriever --backend qdrant` on the cluster, generator on the smallest
//! model with short answers, orchestrator). Prints SKIPPED without a Qdrant binary.

// The retriever's cluster helpers: the same nodes, started and killed the same way.
#[path = "../crates/zhiku-retriever/tests/common/qdrant_node.rs"]
#[allow(dead_code)]
mod qdrant_node;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qdrant_node::{QdrantNode, assert_every_node_counts, replica_states};
use tokio::sync::Mutex;
use zhiku_e2e::pipeline::{STARTUP, Services, ask_request, ask_with, ingest, ingest_files};
use zhiku_e2e::qdrant;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    DescribeKnowledgeBaseRequest, DocumentInput, ListDocumentsRequest, SearchRequest,
};

const KB: &str = "cluster";
const COLLECTION: &str = "zhiku_cluster";
const REPLICAS: usize = 4; // 2 shards × replication factor 2

/// (start, outcome) of each call made while the cluster changes.
type Log<T> = Arc<Mutex<Vec<(Instant, Result<T, String>)>>>;

fn notes(range: std::ops::Range<usize>) -> Vec<DocumentInput> {
    range
        .map(|i| DocumentInput {
            file_name: format!("note-{i:02}.txt"),
            content: format!("第{i}号笔记：集群里的第{i}段文字，讲的是分片和副本。").into_bytes(),
            ..Default::default()
        })
        .collect()
}

async fn describe(store: &mut RetrieverClient<tonic::transport::Channel>) -> (u64, u64) {
    let kb = store
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: KB.into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    (kb.passage_count, kb.document_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_cluster_loses_a_node_while_asks_run() {
    let Some(binary) = qdrant_node::binary() else {
        qdrant::skipped(
            "the 3-node Qdrant cluster test",
            "no Qdrant binary (../shared/qdrant/qdrant, or set ZHIKU_TEST_QDRANT_BIN)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = QdrantNode::cluster(&binary, dir.path(), 3);
    let urls: Vec<String> = nodes.iter().map(QdrantNode::grpc_url).collect();
    let urls = urls.join(",");

    let services = Services::start_with(
        "SmolLM2-135M-Instruct-GGUF",
        &["--backend", "qdrant", "--qdrant-url", &urls],
        &[
            ("ZHIKU_QDRANT_SHARDS", "2"),
            ("ZHIKU_QDRANT_REPLICATION_FACTOR", "2"),
            ("ZHIKU_QDRANT_RETRIES", "8"),
            ("ZHIKU_QDRANT_TIMEOUT_SECONDS", "10"),
        ],
    )
    .await;
    let mut client = services.client().await;
    let mut store = RetrieverClient::new(services.retriever.channel(STARTUP).await);

    // Ingest: the Chinese documents and a few notes, spread over both shards.
    ingest(&mut client, KB).await;
    let summary = ingest_files(&mut client, KB, notes(0..10))
        .await
        .expect("ingest notes");
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let (passages, documents) = describe(&mut store).await;
    assert_eq!(documents, 13);
    let (active, layout) = replica_states(&nodes, COLLECTION);
    assert_eq!(active, REPLICAS, "{layout:?}");
    eprintln!("cluster of 3 nodes, {passages} passages in {documents} documents: {layout:?}");

    // Asks in a loop, and searches straight at the retriever beside them.
    let stop = Arc::new(AtomicBool::new(false));
    let asks: Log<usize> = Arc::default();
    let asker = {
        let (stop, asks, mut client) = (stop.clone(), asks.clone(), client.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let request = ask_request(KB, "小拾喜欢做什么？", None, 8);
                let result = ask_with(&mut client, request, Duration::from_secs(120))
                    .await
                    .map_err(|e| format!("{e:?}"))
                    .and_then(|asked| {
                        let cited = asked.sources.iter().any(|c| c.source == "xiaoshi.txt");
                        if asked.answer.refused || !cited || asked.answer.text.is_empty() {
                            Err(format!(
                                "a poor answer: {:?} {:?}",
                                asked.answer, asked.sources
                            ))
                        } else {
                            Ok(asked.sources.len())
                        }
                    });
                asks.lock().await.push((started, result));
            }
        })
    };
    let searches: Log<()> = Arc::default();
    let searcher = {
        let (stop, searches, mut store) = (stop.clone(), searches.clone(), store.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = store
                    .search(SearchRequest {
                        knowledge_base: KB.into(),
                        query_text: "分片和副本".into(),
                        top_k: 5,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("{e:?}"))
                    .and_then(|r| {
                        if r.get_ref().hits.len() == 5 {
                            Ok(())
                        } else {
                            Err(format!("{} hits", r.get_ref().hits.len()))
                        }
                    });
                searches.lock().await.push((started, result));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let deadline = Instant::now() + STARTUP;
    while asks.lock().await.is_empty() {
        assert!(Instant::now() < deadline, "no Ask finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGKILL node 0: the first URL the retriever has, so its calls must move on.
    let victim = nodes[0].peer_id();
    nodes[0].kill();
    let killed = Instant::now();
    eprintln!("killed node 0 (peer id {victim}) with SIGKILL");
    // Ingest during the outage: stored, or refused as UNAVAILABLE with the cause.
    let outage = ingest_files(&mut client, KB, notes(10..13)).await;
    let outage_stored = match &outage {
        Ok(s) if s.errors.is_empty() => {
            eprintln!(
                "ingest during the outage: {} passages stored",
                s.passages_stored
            );
            Some(s.passages_stored)
        }
        Ok(s) => {
            // Refused, with the node and the call that failed named.
            for e in &s.errors {
                assert!(e.to_lowercase().contains("unavailable"), "{e}");
                assert!(e.contains("127.0.0.1:"), "{e}");
            }
            eprintln!("ingest during the outage refused: {:?}", s.errors);
            None
        }
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
            assert!(e.message().contains("127.0.0.1:"), "{e:?}");
            eprintln!("ingest during the outage refused: {e:?}");
            None
        }
    };
    // Let Asks run on the two nodes left.
    let deadline = Instant::now() + STARTUP;
    loop {
        let done = asks
            .lock()
            .await
            .iter()
            .filter(|(t, _)| *t >= killed)
            .count();
        if done >= 3 && killed.elapsed() > Duration::from_secs(5) {
            break;
        }
        assert!(Instant::now() < deadline, "Asks do not progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    nodes[0].restart();
    let restarted = Instant::now();
    eprintln!(
        "node 0 restarted after {:.1} s (peer id {})",
        (restarted - killed).as_secs_f64(),
        nodes[0].peer_id()
    );
    assert_eq!(
        nodes[0].peer_id(),
        victim,
        "the node came back as another peer"
    );
    let deadline = Instant::now() + STARTUP;
    loop {
        let (active, layout) = replica_states(&nodes, COLLECTION);
        if active == REPLICAS {
            eprintln!(
                "all {REPLICAS} replicas active again after {:.1} s",
                restarted.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not recovered: {layout:?}\n{}",
            nodes[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    asker.await.expect("asker");
    searcher.await.expect("searcher");

    let asks = asks.lock().await;
    let during = asks
        .iter()
        .filter(|(t, _)| *t >= killed && *t < restarted)
        .count();
    for (t, result) in asks.iter() {
        assert!(
            result.is_ok(),
            "an Ask {:+.1} s from the kill failed: {result:?}",
            t.duration_since(killed).as_secs_f64()
        );
    }
    let searches = searches.lock().await;
    let searches_during = searches
        .iter()
        .filter(|(t, _)| *t >= killed && *t < restarted)
        .count();
    for (t, result) in searches.iter() {
        assert!(
            result.is_ok(),
            "a search {:+.1} s from the kill failed: {result:?}",
            t.duration_since(killed).as_secs_f64()
        );
    }
    eprintln!(
        "peer {victim} down {:.1} s: {during} Asks (of {} in all) and {searches_during} searches \
         (of {}) during the outage, every one answered",
        (restarted - killed).as_secs_f64(),
        asks.len(),
        searches.len()
    );
    assert!(during >= 3, "only {during} Asks during the outage");
    // What the retriever did when Qdrant said UNAVAILABLE (its log, printed, not asserted).
    let retries = services
        .retriever
        .logs()
        .matches("Qdrant call failed; retrying")
        .count();
    eprintln!("the retriever retried {retries} Qdrant calls (UNAVAILABLE or timed out)");

    // Whole again: every acknowledged passage, through the retriever and on every node.
    let expected = passages + outage_stored.unwrap_or(0);
    let expected_docs = documents + if outage_stored.is_some() { 3 } else { 0 };
    assert_eq!(describe(&mut store).await, (expected, expected_docs));
    assert_every_node_counts(&nodes, COLLECTION, expected);
    let listed = store
        .list_documents(ListDocumentsRequest {
            knowledge_base: KB.into(),
            ..Default::default()
        })
        .await
        .expect("list documents")
        .into_inner();
    assert_eq!(listed.documents.len() as u64, expected_docs);
    // Ingest works on the whole cluster again.
    let summary = ingest_files(&mut client, KB, notes(20..21))
        .await
        .expect("ingest after the restart");
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
}
