//! The server backend on a 3-node Qdrant cluster (distributed mode, three processes on
//! loopback; node 0 bootstraps, the others join), knowledge bases with 2 shards and 2
//! replicas of each. While searches (the retrieval step of every Ask) and upserts run, node 0
//! — the first URL the retriever has — is killed with SIGKILL: every search still answers
//! (the retriever retries, on the next node), upserts go on or fail UNAVAILABLE naming the
//! cause, and once the node is back every acknowledged chunk is there, counted alike by every
//! node. Prints SKIPPED without a Qdrant binary.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use common::qdrant_node::{QdrantNode, assert_every_node_counts, binary, replica_states, skipped};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, Distance, ListDocumentsRequest,
    Passage, SearchMode, SearchRequest, UpsertRequest,
};
use zhiku_retriever::Retriever;
use zhiku_retriever::store::qdrant::{QdrantSettings, QdrantStore};

const KB: &str = "cluster";
const COLLECTION: &str = "zhiku_cluster";
const REPLICAS: usize = 4; // 2 shards × replication factor 2
const DIMS: usize = 8;
const CHUNKS: u32 = 3;
const WAIT: Duration = Duration::from_secs(120);

/// A pseudo-random vector of its own for every chunk.
fn vector(doc: usize, chunk: u32) -> Vec<f32> {
    common::splitmix_vector((doc as u64) << 8 | u64::from(chunk), DIMS)
}

fn passages(doc: usize) -> Vec<Passage> {
    (0..CHUNKS)
        .map(|chunk| Passage {
            document_id: format!("doc-{doc:05}"),
            chunk_index: chunk,
            chunk_count: CHUNKS,
            text: format!("第{doc}篇文档的第{chunk}段，讲分片和副本。"),
            source: format!("doc-{doc}.txt"),
            vector: vector(doc, chunk),
            ..Default::default()
        })
        .collect()
}

async fn wait_replicas(nodes: &[QdrantNode]) -> Duration {
    let started = Instant::now();
    loop {
        let (active, layout) = replica_states(nodes, COLLECTION);
        if active == REPLICAS {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "replicas not all active: {layout:?}\n{}",
            nodes[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn documents(c: &mut RetrieverClient<Channel>) -> BTreeMap<String, u32> {
    let page = c
        .list_documents(ListDocumentsRequest {
            readable_by: None,
            knowledge_base: KB.into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("list documents")
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.documents
        .into_iter()
        .map(|d| (d.document_id, d.chunk_count))
        .collect()
}

/// Seconds the slowest call started in [from, to) took.
fn slowest<T>(
    log: &[(Instant, Duration, Result<T, tonic::Status>)],
    from: Instant,
    to: Instant,
) -> f64 {
    log.iter()
        .filter(|(t, _, _)| *t >= from && *t < to)
        .map(|(_, d, _)| d.as_secs_f64())
        .fold(0.0, f64::max)
}

/// (start, duration, outcome) of each call.
type Log<T> = Arc<Mutex<Vec<(Instant, Duration, Result<T, tonic::Status>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_cluster_loses_a_node_while_searches_and_upserts_run() {
    let Some(binary) = binary() else {
        skipped(
            "the 3-node Qdrant cluster test",
            "no Qdrant binary (../shared/qdrant/qdrant, or set ZHIKU_TEST_QDRANT_BIN)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = QdrantNode::cluster(&binary, dir.path(), 3);
    let urls: Vec<String> = nodes.iter().map(QdrantNode::grpc_url).collect();
    let store = QdrantStore::connect(QdrantSettings {
        shard_number: Some(2),
        replication_factor: Some(2),
        retries: 8,
        timeout_secs: 10,
        ..QdrantSettings::new(urls.join(","))
    })
    .await
    .expect("connects to the cluster");
    let server = TestServer::start(Retriever::new(Arc::new(store)).expect("retriever")).await;
    let mut c = server.client().await;
    c.create_knowledge_base(CreateKnowledgeBaseRequest {
        name: KB.into(),
        dimensions: DIMS as u32,
        distance: Distance::Cosine as i32,
        ..Default::default()
    })
    .await
    .expect("create");
    const FIRST: usize = 40;
    for doc in 0..FIRST {
        c.upsert(UpsertRequest {
            knowledge_base: KB.into(),
            passages: passages(doc),
        })
        .await
        .expect("upsert");
    }
    let (active, layout) = replica_states(&nodes, COLLECTION);
    assert_eq!(active, REPLICAS, "{layout:?}");
    eprintln!("3 nodes, {} chunks: {layout:?}", FIRST as u32 * CHUNKS);

    // Searches (dense and hybrid, as Asks make them) and upserts, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let searches: Log<()> = Arc::default();
    let searcher = {
        let (stop, searches, mut c) = (stop.clone(), searches.clone(), c.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let doc = i % FIRST;
                let started = Instant::now();
                let result = c
                    .search(SearchRequest {
                        knowledge_base: KB.into(),
                        vector: vector(doc, 1),
                        query_text: if i % 2 == 0 {
                            "分片和副本".into()
                        } else {
                            String::new()
                        },
                        top_k: 3,
                        mode: SearchMode::Unspecified as i32,
                        ..Default::default()
                    })
                    .await
                    .and_then(|r| {
                        let hits = r.into_inner().hits;
                        // Dense: its own chunk first; hybrid (BM25 matches every chunk
                        // alike): a full answer.
                        let first = hits.first().and_then(|h| h.passage.as_ref());
                        let own = first.is_some_and(|p| {
                            p.document_id == format!("doc-{doc:05}") && p.chunk_index == 1
                        });
                        if hits.len() == 3 && (own || i % 2 == 0) {
                            Ok(())
                        } else {
                            Err(tonic::Status::internal(format!("wrong hits: {hits:?}")))
                        }
                    });
                searches
                    .lock()
                    .await
                    .push((started, started.elapsed(), result));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let upserts: Log<usize> = Arc::default();
    let upserter = {
        let (stop, upserts, mut c) = (stop.clone(), upserts.clone(), c.clone());
        tokio::spawn(async move {
            let mut doc = 1000;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = c
                    .upsert(UpsertRequest {
                        knowledge_base: KB.into(),
                        passages: passages(doc),
                    })
                    .await
                    .map(|_| doc);
                upserts
                    .lock()
                    .await
                    .push((started, started.elapsed(), result));
                doc += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGKILL node 0, the first URL: the retriever's calls to it fail and move on.
    let victim = nodes[0].peer_id();
    nodes[0].kill();
    let killed = Instant::now();
    eprintln!("killed node 0 (peer id {victim}) with SIGKILL");
    let deadline = Instant::now() + WAIT;
    loop {
        let after = searches
            .lock()
            .await
            .iter()
            .filter(|(t, _, _)| *t >= killed)
            .count();
        if after >= 30 && killed.elapsed() >= Duration::from_secs(5) {
            break;
        }
        assert!(Instant::now() < deadline, "searches do not progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes[0].restart();
    let restarted = Instant::now();
    assert_eq!(
        nodes[0].peer_id(),
        victim,
        "the node came back as another peer"
    );
    let recovered = wait_replicas(&nodes).await;
    stop.store(true, Ordering::Relaxed);
    searcher.await.expect("searcher");
    upserter.await.expect("upserter");

    let searches = searches.lock().await;
    for (t, _, result) in searches.iter() {
        assert!(
            result.is_ok(),
            "a search {:+.2} s from the kill failed: {result:?}",
            t.duration_since(killed).as_secs_f64()
        );
    }
    let during = |t: &Instant| *t >= killed && *t < restarted;
    let searches_during = searches.iter().filter(|(t, _, _)| during(t)).count();

    let upserts = upserts.lock().await;
    let mut acked = Vec::new();
    let mut refused = 0;
    for (_, _, result) in upserts.iter() {
        match result {
            Ok(doc) => acked.push(*doc),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains("127.0.0.1"), "{status:?}");
                refused += 1;
            }
        }
    }
    let upserts_during = upserts
        .iter()
        .filter(|(t, _, r)| during(t) && r.is_ok())
        .count();
    eprintln!(
        "peer {victim} down {:.1} s: {searches_during} searches during the outage (of {}; \
         slowest {:.2} s), every one answered; {upserts_during} upserts started and acknowledged \
         during it (slowest {:.2} s; {} in all, {refused} refused UNAVAILABLE); all {REPLICAS} \
         replicas active {:.1} s after the restart",
        (restarted - killed).as_secs_f64(),
        searches.len(),
        slowest(&searches, killed, restarted),
        slowest(&upserts, killed, restarted),
        acked.len(),
        recovered.as_secs_f64()
    );
    assert!(searches_during >= 30, "{searches_during}");

    // Whole again: every acknowledged chunk, exactly once, counted alike by every node.
    let docs = documents(&mut c).await;
    for doc in (0..FIRST).chain(acked.iter().copied()) {
        let id = format!("doc-{doc:05}");
        assert_eq!(
            docs.get(&id),
            Some(&CHUNKS),
            "acknowledged {id} lost or incomplete"
        );
    }
    let kb = c
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: KB.into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    let chunks: u64 = docs.values().map(|n| u64::from(*n)).sum();
    assert_eq!(kb.passage_count, chunks);
    assert_eq!(kb.document_count, docs.len() as u64);
    assert_every_node_counts(&nodes, COLLECTION, chunks);
    server.stop().await;
}
