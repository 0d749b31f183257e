//! The embedded store keeps what it acknowledged: re-ingesting never duplicates, and a
//! restart (the data directory opened again) gives the same answers.

mod common;

use common::TestServer;
use common::conformance::{self, DIMS, corpus_passages, ids, search, search_request};
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, Distance, SearchResponse,
    UpsertRequest,
};
use zhiku_retriever::{Retriever, RetrieverArgs};

fn summary(r: &SearchResponse) -> Vec<(String, u32, String)> {
    ids(r)
        .into_iter()
        .zip(&r.hits)
        .map(|((d, c), h)| (d, c, format!("{:.5}", h.score)))
        .collect()
}

async fn searches(server: &TestServer, kb: &str) -> Vec<Vec<(String, u32, String)>> {
    let mut c = server.client().await;
    let mut out = Vec::new();
    let mut dense = search_request(kb);
    dense.vector = vec![0.3, 0.1, 0.0, 0.9];
    out.push(summary(&search(&mut c, dense.clone()).await));
    let mut sparse = search_request(kb);
    sparse.query_text = "向量数据库 检索".into();
    out.push(summary(&search(&mut c, sparse.clone()).await));
    let mut hybrid = dense;
    hybrid.query_text = sparse.query_text;
    out.push(summary(&search(&mut c, hybrid).await));
    out
}

async fn counts(server: &TestServer, kb: &str) -> (u64, u64) {
    let d = server
        .client()
        .await
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: kb.into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    (d.passage_count, d.document_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reingest_keeps_the_count_and_restart_gives_the_same_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kb = "persist";
    let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    let mut c = server.client().await;
    conformance::create(&mut c, kb).await;
    conformance::upsert_corpus(&mut c, kb).await;
    assert_eq!(counts(&server, kb).await, (5, 2));
    // Re-ingesting the same document three times leaves the same points.
    for _ in 0..3 {
        conformance::upsert_corpus(&mut c, kb).await;
    }
    assert_eq!(counts(&server, kb).await, (5, 2));
    let before = searches(&server, kb).await;
    assert!(before.iter().all(|r| !r.is_empty()), "{before:?}");
    drop(c);
    server.stop().await;

    // Same directory, new process state.
    let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    assert_eq!(counts(&server, kb).await, (5, 2));
    assert_eq!(searches(&server, kb).await, before);

    // Writes after a restart replace what was there (point versions keep growing).
    let mut c = server.client().await;
    let mut changed = corpus_passages();
    changed[3].text = "Qdrant 已更新的段落".into();
    c.upsert(UpsertRequest {
        knowledge_base: kb.into(),
        passages: changed,
    })
    .await
    .expect("upsert after restart");
    assert_eq!(counts(&server, kb).await, (5, 2));
    let mut req = search_request(kb);
    req.vector = vec![0.0, 0.0, 0.0, 1.0];
    req.top_k = 1;
    let r = search(&mut c, req.clone()).await;
    assert_eq!(
        r.hits[0].passage.as_ref().expect("passage").text,
        "Qdrant 已更新的段落"
    );
    drop(c);
    server.stop().await;
    let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    let mut c = server.client().await;
    let r = search(&mut c, req).await;
    assert_eq!(
        r.hits[0].passage.as_ref().expect("passage").text,
        "Qdrant 已更新的段落"
    );
    assert_eq!(counts(&server, kb).await, (5, 2));
}

/// Enough points to build the HNSW index (a tiny indexing threshold), searched before and
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_knowledge_base_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kb = "indexed";
    let dims = 16usize;
    let args = RetrieverArgs {
        indexing_threshold_kb: 1,
        ..RetrieverArgs::embedded(dir.path())
    };
    let opened = zhiku_retriever::open_store(&args).await.expect("opens");
    let embedded = opened.embedded.expect("embedded store");
    let server = TestServer::start(Retriever::new(opened.store).expect("retriever")).await;
    let mut c = server.client().await;
    c.create_knowledge_base(CreateKnowledgeBaseRequest {
        name: kb.into(),
        dimensions: dims as u32,
        distance: Distance::Dot as i32,
        ..Default::default()
    })
    .await
    .expect("create");
    let vector = |i: usize| -> Vec<f32> {
        (0..dims)
            .map(|j| {
                if j == i % dims {
                    1.0 + (i / dims) as f32
                } else {
                    0.01 * j as f32
                }
            })
            .collect()
    };
    let passages: Vec<_> = (0..600)
        .map(|i| conformance::passage(&format!("doc-{i:04}"), 0, 1, "段落", &vector(i)))
        .collect();
    for batch in passages.chunks(200) {
        c.upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: batch.to_vec(),
        })
        .await
        .expect("upsert");
    }
    let e = embedded.clone();
    let optimised = tokio::task::spawn_blocking(move || e.optimize(kb))
        .await
        .expect("thread")
        .expect("optimize");
    assert!(optimised, "the index was not built");
    let mut req = search_request(kb);
    req.vector = vector(599);
    req.top_k = 3;
    let before = summary(&search(&mut c, req.clone()).await);
    assert_eq!(before[0].0, "doc-0599");
    assert_eq!(counts(&server, kb).await, (600, 600));
    drop((c, embedded));
    server.stop().await;

    let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    let mut c = server.client().await;
    assert_eq!(counts(&server, kb).await, (600, 600));
    assert_eq!(summary(&search(&mut c, req).await), before);
    let _ = DIMS;
}

/// A rebinding of the adapter is on disk: a restarted retriever describes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_binding_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kb = "bound";
    let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    let mut c = server.client().await;
    conformance::create(&mut c, kb).await;
    c.set_knowledge_base_adapter(zhiku_proto::v1::SetKnowledgeBaseAdapterRequest {
        name: kb.into(),
        adapter: "tuned".into(),
        adapter_path: "/srv/tuned".into(),
        provenance: Some(zhiku_proto::v1::AdapterProvenance {
            data_file: "train.jsonl".into(),
            ..Default::default()
        }),
    })
    .await
    .expect("bind");
    drop(c);
    server.stop().await;

    let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    let mut c = server.client().await;
    let d = c
        .describe_knowledge_base(zhiku_proto::v1::DescribeKnowledgeBaseRequest {
            name: kb.into(),
            metadata_only: true,
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(
        (d.adapter.as_str(), d.adapter_path.as_str()),
        ("tuned", "/srv/tuned")
    );
    assert_eq!(
        d.adapter_provenance.map(|p| p.data_file).as_deref(),
        Some("train.jsonl")
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A crash while the optimiser swaps segments can leave a point in two segments; opening
/// the store finds and repairs that (qdrant-edge 0.7 does not de-duplicate at load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_points_are_repaired_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kb = "dup";
    {
        let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
        let mut c = server.client().await;
        conformance::create(&mut c, kb).await;
        conformance::upsert_corpus(&mut c, kb).await;
        drop(c);
        server.stop().await;
    }
    // Duplicate the segment, as an interrupted swap would.
    let shard = dir.path().join(kb).join("shard");
    let segments = shard.join("segments");
    let segment = std::fs::read_dir(&segments)
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .find(|p| p.is_dir())
        .expect("a segment");
    copy_dir(&segment, &segments.join(uuid::Uuid::new_v4().to_string()));
    {
        let raw = qdrant_edge::EdgeShard::load(&shard, None).expect("loads");
        let n = raw
            .count(qdrant_edge::CountRequest {
                filter: None,
                exact: true,
            })
            .expect("count");
        assert_eq!(n, 10, "the copy did not duplicate the points");
    }

    // (Only the store is kept: `OpenedStore::embedded` would hold the files open.)
    let store = zhiku_retriever::open_store(&RetrieverArgs::embedded(dir.path()))
        .await
        .expect("opens and repairs")
        .store;
    assert_eq!(store.count(kb).await.expect("count"), 5);
    let server = TestServer::start(Retriever::new(store).expect("retriever")).await;
    let mut c = server.client().await;
    assert_eq!(counts(&server, kb).await, (5, 2));
    let mut req = search_request(kb);
    req.vector = vec![0.0, 0.0, 0.0, 1.0];
    req.top_k = 10;
    let r = search(&mut c, req).await;
    let mut found = ids(&r);
    assert_eq!(found.len(), 5, "{found:?}");
    found.sort();
    found.dedup();
    assert_eq!(found.len(), 5);
    drop(c);
    server.stop().await;
    // Still right after another restart.
    let opened = zhiku_retriever::open_store(&RetrieverArgs::embedded(dir.path()))
        .await
        .expect("opens");
    assert_eq!(opened.store.count(kb).await.expect("count"), 5);
}
