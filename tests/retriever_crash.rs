//! End-to-end: the retriever binary is killed with SIGKILL while a client upserts in a loop;
//! after a restart on the same data directory every acknowledged upsert is there, with exact
//! counts, nothing duplicated, and the store still works.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use zhiku_e2e::{ServiceProcess, wait_serving};
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, Distance, ListDocumentsRequest,
    Passage, SearchMode, SearchRequest, UpsertRequest,
};

const STARTUP: Duration = Duration::from_secs(120);
const DIMS: usize = 8;
const CHUNKS: u32 = 3;

fn vector(doc: usize, chunk: u32) -> Vec<f32> {
    (0..DIMS)
        .map(|j| ((doc * 31 + chunk as usize * 7 + j * 13) % 17) as f32 + 1.0)
        .collect()
}

fn passages(doc: usize) -> Vec<Passage> {
    (0..CHUNKS)
        .map(|chunk| Passage {
            document_id: format!("doc-{doc:05}"),
            chunk_index: chunk,
            chunk_count: CHUNKS,
            text: format!("第{doc}篇文档的第{chunk}段"),
            source: format!("doc-{doc}.txt"),
            vector: vector(doc, chunk),
            ..Default::default()
        })
        .collect()
}

fn start(data_dir: &str) -> ServiceProcess {
    ServiceProcess::start(
        "zhiku-retriever",
        &[
            "--data-dir",
            data_dir,
            "--optimize-interval-seconds",
            "3600",
        ],
        &[],
    )
}

async fn documents(client: &mut RetrieverClient<Channel>) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_documents(ListDocumentsRequest {
                readable_by: None,
                knowledge_base: "crash".into(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .expect("list documents")
            .into_inner();
        for d in page.documents {
            out.insert(d.document_id, d.chunk_count);
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Checks a restarted store against the acknowledged documents; returns the documents found.
async fn check(
    client: &mut RetrieverClient<Channel>,
    acked: &[usize],
    in_flight: &[usize],
) -> BTreeMap<String, u32> {
    let docs = documents(client).await;
    for doc in acked {
        let id = format!("doc-{doc:05}");
        assert_eq!(
            docs.get(&id),
            Some(&CHUNKS),
            "acknowledged {id} lost or incomplete"
        );
    }
    // Only upserts that were in flight at a kill may be there unacknowledged.
    for id in docs.keys() {
        let known = acked
            .iter()
            .chain(in_flight)
            .any(|d| *id == format!("doc-{d:05}"));
        assert!(known, "{id} was never upserted");
    }
    let kb = client
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: "crash".into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    let chunks: u64 = docs.values().map(|c| u64::from(*c)).sum();
    assert_eq!(kb.passage_count, chunks, "duplicated or orphan points");
    assert_eq!(kb.document_count, docs.len() as u64);
    // Searches find each acknowledged chunk by its own vector.
    for doc in acked.iter().rev().take(5) {
        let r = client
            .search(SearchRequest {
                knowledge_base: "crash".into(),
                vector: vector(*doc, 1),
                top_k: 1,
                mode: SearchMode::Dense as i32,
                filter: Some(zhiku_proto::v1::Filter {
                    document_ids: vec![format!("doc-{doc:05}")],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("search")
            .into_inner();
        let p = r.hits[0].passage.as_ref().expect("passage");
        assert_eq!(p.chunk_index, 1);
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriever_survives_kill_9_during_upserts() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = data.path().to_str().expect("utf-8 path").to_owned();
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut next_doc = 0usize;
    let mut in_flight = Vec::new();

    for round in 0..3 {
        let process = start(&data_dir);
        wait_serving(&process, "zhiku.v1.Retriever", STARTUP).await;
        let mut client = RetrieverClient::new(process.channel(STARTUP).await);
        if round == 0 {
            client
                .create_knowledge_base(CreateKnowledgeBaseRequest {
                    name: "crash".into(),
                    dimensions: DIMS as u32,
                    distance: Distance::Euclid as i32,
                    ..Default::default()
                })
                .await
                .expect("create");
        } else {
            let done = acked.lock().expect("lock").clone();
            check(&mut client, &done, &in_flight).await;
        }

        // Upsert in a loop (new documents, and re-ingests of old ones) until killed.
        let writer = {
            let mut client = client.clone();
            let acked = acked.clone();
            let first = next_doc;
            tokio::spawn(async move {
                let mut doc = first;
                loop {
                    // Every third call re-ingests an older document: it must not duplicate.
                    let target = if doc % 3 == 2 && doc > 0 {
                        doc / 2
                    } else {
                        doc
                    };
                    let result = client
                        .upsert(UpsertRequest {
                            knowledge_base: "crash".into(),
                            passages: passages(target),
                        })
                        .await;
                    match result {
                        Ok(_) => {
                            acked.lock().expect("lock").push(target);
                            doc += 1;
                        }
                        // Killed: (next counter, the document that was in flight).
                        Err(_) => return (doc, target),
                    }
                }
            })
        };
        // Let it write a while (at least a few acknowledged upserts, then a little more so
        // the kill lands at varying points), then SIGKILL (ServiceProcess's drop does that).
        let start = acked.lock().expect("lock").len();
        let deadline = std::time::Instant::now() + STARTUP;
        while acked.lock().expect("lock").len() < start + 5 + 5 * round {
            assert!(
                std::time::Instant::now() < deadline,
                "upserts do not progress"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(37 * (round as u64 + 1))).await;
        let before = acked.lock().expect("lock").len();
        drop(process);
        let (counter, interrupted) = writer.await.expect("writer");
        in_flight.push(interrupted);
        next_doc = counter + 1;
        let after = acked.lock().expect("lock").len();
        assert!(after >= before, "acknowledgements went missing");
        eprintln!(
            "round {round}: {after} upserts acknowledged, killed during the upsert of document {interrupted}"
        );
    }

    // Final restart: everything acknowledged is there, exactly once.
    let process = start(&data_dir);
    wait_serving(&process, "zhiku.v1.Retriever", STARTUP).await;
    let mut client = RetrieverClient::new(process.channel(STARTUP).await);
    let done = acked.lock().expect("lock").clone();
    let docs = check(&mut client, &done, &in_flight).await;
    assert!(
        docs.len() >= 10,
        "too few upserts to mean anything: {}",
        docs.len()
    );
    eprintln!(
        "after 3 kills: {} acknowledged upserts of {} documents, all present exactly once",
        done.len(),
        docs.len()
    );
    // And it still takes writes.
    client
        .upsert(UpsertRequest {
            knowledge_base: "crash".into(),
            passages: passages(next_doc + 100),
        })
        .await
        .expect("upsert after crashes");
}
