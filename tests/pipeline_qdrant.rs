//! End-to-end on a Qdrant server: the four service binaries as processes, the retriever with
//! `--backend qdrant` on the server of `ZHIKU_TEST_QDRANT_URL` (`scripts/test` starts one);
//! ingest the Chinese documents, answer with citations, refuse the unanswerable, and list
//! and delete what was ingested. Prints SKIPPED without a server.

use std::time::Duration;

use tonic::transport::Channel;
use zhiku_e2e::pipeline::{STARTUP, Services, UNANSWERABLE, ask, assert_answerable, ingest};
use zhiku_e2e::qdrant;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    DeleteKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, KnowledgeBase, ListDocumentsRequest,
    RetrieverInfoRequest,
};

/// The "demo" knowledge base as the retriever describes it (counts included).
async fn describe(store: &mut RetrieverClient<Channel>) -> KnowledgeBase {
    store
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: "demo".into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_on_a_qdrant_server_ingest_and_answer_with_citations() {
    let Some(url) = qdrant::test_url() else {
        qdrant::skipped(
            "the end-to-end test on a Qdrant server",
            "no server (set ZHIKU_TEST_QDRANT_URL, or run under scripts/qdrant-test-server)",
        );
        return;
    };
    let prefix = format!("zhiku_e2e_{}_", std::process::id());
    let services = Services::start(
        &[
            "--backend",
            "qdrant",
            "--qdrant-url",
            &url,
            "--qdrant-collection-prefix",
            &prefix,
        ],
        &[],
    )
    .await;
    let mut store = RetrieverClient::new(services.retriever.channel(STARTUP).await);
    let info = store
        .info(RetrieverInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.backend, "qdrant");
    assert_eq!(info.location, url);
    let mut client = services.client().await;

    ingest(&mut client, "demo").await;
    // The passages are in the server's collection, one document per file.
    let kb = describe(&mut store).await;
    assert_eq!(kb.document_count, 3, "{kb:?}");
    assert!(kb.passage_count >= 3, "{kb:?}");
    let docs = store
        .list_documents(ListDocumentsRequest {
            knowledge_base: "demo".into(),
            ..Default::default()
        })
        .await
        .expect("list documents")
        .into_inner();
    let sources: Vec<_> = docs.documents.iter().map(|d| d.source.as_str()).collect();
    assert_eq!(sources, ["glm.md", "kb.txt", "xiaoshi.txt"]);

    let asked = ask(
        &mut client,
        "demo",
        "小拾喜欢做什么？",
        None,
        Duration::from_secs(300),
    )
    .await
    .expect("ask");
    assert_answerable(&asked);
    assert!(
        asked.sources.iter().all(|c| c.score > 0.0),
        "{:?}",
        asked.sources
    );
    println!(
        "on {url}: {} passages of {} documents; answer {:?} citing {:?}",
        kb.passage_count,
        kb.document_count,
        asked.answer.text,
        asked
            .sources
            .iter()
            .map(|c| c.source.as_str())
            .collect::<Vec<_>>()
    );

    // Re-ingesting the same files replaces their passages.
    ingest(&mut client, "demo").await;
    let again = describe(&mut store).await;
    assert_eq!(
        (again.passage_count, again.document_count),
        (kb.passage_count, kb.document_count)
    );

    // Unanswerable, with a threshold: refused without sources.
    let refused = ask(
        &mut client,
        "demo",
        UNANSWERABLE,
        Some(0.8),
        Duration::from_secs(60),
    )
    .await
    .expect("ask");
    assert!(refused.answer.refused);
    assert!(refused.sources.is_empty());

    store
        .delete_knowledge_base(DeleteKnowledgeBaseRequest {
            name: "demo".into(),
        })
        .await
        .expect("delete the knowledge base");
}
