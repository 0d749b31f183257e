//! The embedded store's disk use stays bounded under re-ingestion (qdrant-edge 0.7 never
//! truncates its WAL; the store compacts it), and nothing acknowledged is lost doing so:
//! every passage is still found after the compactions and after the directory is opened
//! again.
//!
//! `cargo test -p zhiku-retriever --test disk -- --ignored --nocapture` runs the full-size
//! measurement (1,000 passages × 384 dimensions, ingested 50 times) and prints the figures.

mod common;

use common::TestServer;
use tonic::transport::Channel;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, Distance, Passage, SearchMode,
    SearchRequest, UpsertRequest,
};
use zhiku_retriever::store::embedded::tree_bytes;

const KB: &str = "disk";
const CHUNKS: u32 = 10;

fn corpus(passages: usize, dims: usize) -> Vec<Passage> {
    (0..passages)
        .map(|i| {
            let (doc, chunk) = (i / CHUNKS as usize, i as u32 % CHUNKS);
            Passage {
                document_id: format!("doc-{doc:04}"),
                chunk_index: chunk,
                chunk_count: CHUNKS,
                text: format!(
                    "第{doc}篇文档的第{chunk}段：知识库问答先把文档切成段落，为每个段落计算向量并存入向量数据库。"
                ),
                source: format!("doc-{doc:04}.txt"),
                vector: common::splitmix_vector((doc as u64) << 16 | u64::from(chunk), dims),
                ..Default::default()
            }
        })
        .collect()
}

async fn ingest(c: &mut RetrieverClient<Channel>, corpus: &[Passage]) {
    for batch in corpus.chunks(100) {
        c.upsert(UpsertRequest {
            knowledge_base: KB.into(),
            passages: batch.to_vec(),
        })
        .await
        .expect("upsert");
    }
}

/// Every passage is there once: the counts, and each passage is its own nearest neighbour.
async fn assert_all_there(c: &mut RetrieverClient<Channel>, corpus: &[Passage], when: &str) {
    let kb = c
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: KB.into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(kb.passage_count, corpus.len() as u64, "{when}: {kb:?}");
    assert_eq!(
        kb.document_count,
        corpus.len().div_ceil(CHUNKS as usize) as u64,
        "{when}: {kb:?}"
    );
    for p in corpus {
        let r = c
            .search(SearchRequest {
                knowledge_base: KB.into(),
                vector: p.vector.clone(),
                top_k: 1,
                mode: SearchMode::Dense as i32,
                ..Default::default()
            })
            .await
            .expect("search")
            .into_inner();
        let hit = r.hits.first().and_then(|h| h.passage.as_ref());
        assert_eq!(
            hit.map(|h| (h.document_id.as_str(), h.chunk_index)),
            Some((p.document_id.as_str(), p.chunk_index)),
            "{when}"
        );
    }
}

/// (bytes after the first ingest, the largest seen after any later one, after the last).
async fn reingest(dir: &std::path::Path, passages: usize, dims: usize, rounds: usize) -> [u64; 3] {
    let corpus = corpus(passages, dims);
    let server = TestServer::start(common::embedded_retriever(dir).await).await;
    let mut c = server.client().await;
    c.create_knowledge_base(CreateKnowledgeBaseRequest {
        name: KB.into(),
        dimensions: dims as u32,
        distance: Distance::Cosine as i32,
        ..Default::default()
    })
    .await
    .expect("create");
    let size = || tree_bytes(dir).expect("measures the data directory");
    ingest(&mut c, &corpus).await;
    let first = size();
    let mut largest = first;
    for _ in 1..rounds {
        ingest(&mut c, &corpus).await;
        largest = largest.max(size());
    }
    let last = size();
    assert_all_there(&mut c, &corpus, "after the re-ingests").await;
    drop(c);
    server.stop().await;

    let server = TestServer::start(common::embedded_retriever(dir).await).await;
    let mut c = server.client().await;
    assert_all_there(&mut c, &corpus, "after reopening").await;
    drop(c);
    server.stop().await;
    [first, largest, last]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reingesting_keeps_the_data_directory_within_twice_its_first_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [first, largest, _] = reingest(dir.path(), 300, 384, 20).await;
    assert!(
        largest <= 2 * first,
        "{:.2} MiB after the first ingest, up to {:.2} MiB after re-ingests",
        mib(first),
        mib(largest)
    );
}

/// The measurement of docs/src/benchmarks/retriever.md ("Disk of the embedded store"): 1,000 passages × 384 dimensions, ingested 50 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn disk_use_of_fifty_reingests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (passages, dims, rounds) = (1000, 384, 50);
    let [first, largest, last] = reingest(dir.path(), passages, dims, rounds).await;
    println!(
        "embedded store, {passages} passages × {dims} dims ingested {rounds} times: \
         {:.2} MiB after the first ingest, largest {:.2} MiB ({:.2}×), {:.2} MiB after the last ({:.2}×)",
        mib(first),
        mib(largest),
        largest as f64 / first as f64,
        mib(last),
        last as f64 / first as f64,
    );
    assert!(largest <= 2 * first);
}
