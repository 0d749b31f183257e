//! Document-level access control end to end, over real gRPC and HTTP on loopback: the four
//! services in this process (MiniLM, the embedded store, SmolLM2), the orchestrator and the
//! retriever guarded by one key file of principals, the services among themselves by a
//! service key.
//!
//! Two groups' secret documents and a public one: a reader of group A never gets B's
//! passage (sources, answer text, eval output, listings, the retriever's own Search, the
//! OpenAI and REST endpoints), even with B's question copied, nor counts that include B's
//! documents, nor the readers of what it lists; an admin does (so the test could fail); an editor of one knowledge base cannot ingest into another nor create one;
//! a reader list over the limit is INVALID_ARGUMENT; a revoked key is refused within a
//! second of the key file changing, and a malformed file keeps the keys in force.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use zhiku_orchestrator::OrchestratorArgs;
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    AskRequest, CreateKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, DocumentInput, EvalCase,
    EvaluateRequest, IngestRequest, ListDocumentsRequest, ListKnowledgeBasesRequest, ReaderScope,
    SamplingParams, SearchRequest, ask_event, evaluate_event, ingest_event,
};
use zhiku_runtime::auth::key_hash;
use zhiku_runtime::request_id::PropagateRequestId;
use zhiku_runtime::{AuthArgs, Secret, ServerArgs};

use common::{listener, smollm2_args};

const KB: &str = "acl";
const ROOT: &str = "root-key-of-the-access-test";
const ANN: &str = "ann-key-of-group-a";
const BOB: &str = "bob-key-of-group-b";
const ED: &str = "ed-key-editor-of-acl";
const PUBLIC_ONLY: &str = "legacy-read-only-key";
const SERVICE: &str = "service-key-among-the-services";

const A_SECRET: &str = "The vault code of project Alpha is ALPHA-7731.";
const B_SECRET: &str = "The vault code of project Bravo is BRAVO-4402.";
const PUBLIC: &str = "The cafeteria of the office opens at eight in the morning.";
const B_QUESTION: &str = "What is the vault code of project Bravo?";

type Client = OrchestratorClient<InterceptedService<Channel, PropagateRequestId>>;

fn principal(name: &str, key: &str, role: &str, extra: &str) -> String {
    format!(
        r#"{{"name": "{name}", "sha256": "{}", "role": "{role}"{extra}}}"#,
        key_hash(key)
    )
}

fn key_file(with_ann: bool) -> String {
    let mut lines = vec![
        "# the access test's principals".to_string(),
        principal("root", ROOT, "admin", ""),
        principal("bob", BOB, "reader", r#", "groups": ["b"]"#),
        principal(
            "ed",
            ED,
            "editor",
            r#", "knowledge_bases": ["acl"], "groups": ["a"]"#,
        ),
        format!("{PUBLIC_ONLY} read-only"),
    ];
    if with_ann {
        lines.push(principal("ann", ANN, "reader", r#", "groups": ["a"]"#));
    }
    lines.join("\n") + "\n"
}

fn minilm() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} is missing (scripts/fetch-models)",
            dir.display()
        );
        None
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy()
}

fn client(channel: &Channel, key: &str) -> Client {
    let caller = PropagateRequestId::with_api_key(Some(key)).expect("key");
    OrchestratorClient::with_interceptor(channel.clone(), caller)
}

fn retriever(
    channel: &Channel,
    key: &str,
) -> RetrieverClient<InterceptedService<Channel, PropagateRequestId>> {
    let caller = PropagateRequestId::with_api_key(Some(key)).expect("key");
    RetrieverClient::with_interceptor(channel.clone(), caller)
}

/// The sources' document ids and the answer text of an Ask.
async fn ask(client: &mut Client, question: &str) -> Result<(Vec<String>, String), tonic::Status> {
    let mut stream = client
        .ask(AskRequest {
            question: question.into(),
            knowledge_base: KB.into(),
            top_k: 3,
            score_threshold: Some(-1.0),
            sampling: Some(SamplingParams {
                max_new_tokens: Some(24),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut sources = Vec::new();
    let mut text = String::new();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(ask_event::Event::Sources(s)) => {
                sources.extend(s.citations.into_iter().map(|c| c.document_id));
            }
            Some(ask_event::Event::Answer(a)) => {
                sources.extend(a.citations.iter().map(|c| c.document_id.clone()));
                text = a.text;
            }
            _ => {}
        }
    }
    Ok((sources, text))
}

async fn ingest(
    client: &mut Client,
    kb: &str,
    documents: Vec<DocumentInput>,
    create: bool,
) -> Result<u32, tonic::Status> {
    let mut stream = client
        .ingest(IngestRequest {
            knowledge_base: kb.into(),
            documents,
            create_if_missing: create,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut stored = 0;
    while let Some(event) = stream.message().await? {
        if let Some(ingest_event::Event::Summary(s)) = event.event {
            stored = s.files_ingested;
        }
    }
    Ok(stored)
}

fn document(id: &str, text: &str, readers: &[&str]) -> DocumentInput {
    DocumentInput {
        file_name: format!("{id}.txt"),
        content: text.as_bytes().to_vec(),
        document_id: id.into(),
        readers: readers.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

/// One HTTP/1.1 request: (status code, body).
fn http(addr: SocketAddr, method: &str, path: &str, key: &str, body: &str) -> (u16, String) {
    let mut tcp = std::net::TcpStream::connect(addr).expect("http listener");
    tcp.set_read_timeout(Some(Duration::from_secs(120))).ok();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("writes");
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn server_args(keys: &Path, service_key: bool) -> ServerArgs {
    ServerArgs {
        auth: AuthArgs {
            api_keys: if service_key {
                vec![Secret(SERVICE.into())]
            } else {
                Vec::new()
            },
            api_key_file: Some(keys.to_path_buf()),
            ..AuthArgs::default()
        },
        ..ServerArgs::default()
    }
}

#[test]
fn a_reader_never_gets_another_groups_passage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = zhiku_retriever::RetrieverArgs::embedded(dir.path().join("data"));
    run_no_leak(dir.path(), store);
}

/// The same over a Qdrant server (`ZHIKU_TEST_QDRANT_URL`, as `scripts/qdrant-test-server`
/// sets it): the readers filter is applied by the server while it ranks.
#[test]
fn a_reader_never_gets_another_groups_passage_on_a_qdrant_server() {
    let Some(url) = std::env::var("ZHIKU_TEST_QDRANT_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED access control on a Qdrant server: no server (set ZHIKU_TEST_QDRANT_URL, \
             or run under scripts/qdrant-test-server)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = zhiku_retriever::RetrieverArgs::embedded(dir.path().join("data"));
    store.backend = zhiku_retriever::Backend::Qdrant;
    store.qdrant_url = url;
    store.qdrant_collection_prefix = format!("zhiku_access_{}_", std::process::id());
    run_no_leak(dir.path(), store);
}

fn run_no_leak(dir: &Path, store: zhiku_retriever::RetrieverArgs) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(no_leak(dir, store));
    // Every service stops (the retriever's shards flush) before the directory goes.
    runtime.shutdown_timeout(Duration::from_secs(10));
}

async fn no_leak(dir: &Path, store: zhiku_retriever::RetrieverArgs) {
    let Some(minilm) = minilm() else { return };
    if common::smollm2_or_skip().is_none() {
        return;
    }
    let keys = dir.join("keys.jsonl");
    std::fs::write(&keys, key_file(true)).expect("key file");
    let service_only = ServerArgs {
        auth: AuthArgs {
            api_keys: vec![Secret(SERVICE.into())],
            ..AuthArgs::default()
        },
        ..ServerArgs::default()
    };
    let never = std::future::pending::<()>;

    let (embedder_listener, embedder_addr) = listener().await;
    let (retriever_listener, retriever_addr) = listener().await;
    let (generator_listener, generator_addr) = listener().await;
    let (orchestrator_listener, orchestrator_addr) = listener().await;
    let (http_listener, http_addr) = listener().await;
    tokio::spawn(zhiku_embedder::serve(
        zhiku_embedder::EmbedderArgs::for_model(minilm.to_string_lossy()),
        service_only.clone(),
        embedder_listener,
        never(),
    ));
    tokio::spawn(zhiku_retriever::serve(
        store,
        server_args(&keys, true),
        retriever_listener,
        never(),
    ));
    tokio::spawn(zhiku_generator::serve(
        smollm2_args(),
        service_only,
        generator_listener,
        never(),
    ));
    let mut args = OrchestratorArgs::local(
        embedder_addr.port(),
        retriever_addr.port(),
        generator_addr.port(),
    );
    args.downstream_api_key = Some(Secret(SERVICE.into()));
    tokio::spawn(zhiku_orchestrator::serve_with_http(
        args,
        server_args(&keys, false),
        orchestrator_listener,
        Some(http_listener),
        never(),
    ));

    let orchestrator = channel(orchestrator_addr).await;
    let mut root = client(&orchestrator, ROOT);
    // The models load in the background: UNAVAILABLE until they have.
    let started = Instant::now();
    loop {
        match root
            .create_knowledge_base(CreateKnowledgeBaseRequest {
                name: KB.into(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => break,
            Err(status) => {
                assert!(
                    started.elapsed() < Duration::from_secs(600),
                    "not ready: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let stored = ingest(
        &mut root,
        KB,
        vec![
            document("a-secret", A_SECRET, &["a"]),
            document("b-secret", B_SECRET, &["b"]),
            document("public", PUBLIC, &[]),
        ],
        false,
    )
    .await
    .expect("ingest");
    assert_eq!(stored, 3);

    // The admin reads everything: B's question finds B's document (so the filter below is
    // what keeps it from ann).
    // The generator's model may still be loading (a knowledge-base call does not need it).
    let started = Instant::now();
    let (sources, _) = loop {
        match ask(&mut root, B_QUESTION).await {
            Err(status)
                if status.code() == Code::Unavailable
                    && started.elapsed() < Duration::from_secs(600) =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            asked => break asked.expect("root asks"),
        }
    };
    assert!(sources.iter().any(|d| d == "b-secret"), "{sources:?}");

    // Ann (group a), with B's question copied: neither B's passage nor its code.
    let mut ann = client(&orchestrator, ANN);
    for question in [B_QUESTION, B_SECRET, "vault code BRAVO-4402"] {
        let (sources, answer) = ask(&mut ann, question).await.expect("ann asks");
        assert!(!sources.iter().any(|d| d == "b-secret"), "{sources:?}");
        assert!(sources.iter().all(|d| d == "a-secret" || d == "public"));
        // (A question holding the code may be echoed: only the others' answers tell.)
        if !question.contains("4402") {
            assert!(!answer.contains("4402"), "{answer}");
        }
    }
    let (sources, _) = ask(&mut ann, "vault code of project Alpha")
        .await
        .expect("ask");
    assert!(sources.iter().any(|d| d == "a-secret"), "{sources:?}");
    // Bob the other way round.
    let mut bob = client(&orchestrator, BOB);
    let (sources, _) = ask(&mut bob, "What is the vault code of project Alpha?")
        .await
        .expect("bob asks");
    assert!(!sources.iter().any(|d| d == "a-secret"), "{sources:?}");

    // Evaluate, retrieval only and answered: no B passage in the output.
    for retrieval_only in [true, false] {
        let mut stream = ann
            .evaluate(EvaluateRequest {
                knowledge_base: KB.into(),
                cases: vec![EvalCase {
                    question: B_QUESTION.into(),
                    gold: vec!["BRAVO-4402".into()],
                    answerable: true,
                    ..Default::default()
                }],
                retrieval_only,
                sampling: Some(SamplingParams {
                    max_new_tokens: Some(24),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("evaluate")
            .into_inner();
        let mut results = 0;
        while let Some(event) = stream.message().await.expect("eval event") {
            if let Some(evaluate_event::Event::CaseResult(r)) = event.event {
                results += 1;
                assert!(!r.correct && r.gold_rank == 0, "{r:?}");
                assert!(!r.answer.contains("4402"), "{}", r.answer);
                assert!(r.citations.iter().all(|c| c.document_id != "b-secret"));
            }
        }
        assert_eq!(results, 1);
    }

    // Listings.
    let listed = ann
        .list_documents(ListDocumentsRequest {
            knowledge_base: KB.into(),
            // Asking for B's scope changes nothing for a reader.
            readable_by: Some(ReaderScope {
                groups: vec!["b".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = listed
        .documents
        .iter()
        .map(|d| d.document_id.as_str())
        .collect();
    assert_eq!(ids, ["a-secret", "public"]);
    // Who else may read them is for admins and editors: a reader is not told.
    assert!(listed.documents.iter().all(|d| d.readers.is_empty()));
    let listed = root
        .list_documents(ListDocumentsRequest {
            knowledge_base: KB.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let readers: Vec<(&str, Vec<String>)> = listed
        .documents
        .iter()
        .map(|d| (d.document_id.as_str(), d.readers.clone()))
        .collect();
    assert_eq!(
        readers,
        [
            ("a-secret", vec!["a".to_string()]),
            ("b-secret", vec!["b".to_string()]),
            ("public", vec![])
        ]
    );

    // Counts: a reader's are of what it may read, not of B's documents too.
    let mut counts = Vec::new();
    let describe = DescribeKnowledgeBaseRequest {
        name: KB.into(),
        ..Default::default()
    };
    for client in [&mut root, &mut ann] {
        let kb = client
            .describe_knowledge_base(describe.clone())
            .await
            .expect("describe")
            .into_inner();
        counts.push((kb.document_count, kb.passage_count));
    }
    let (all, anns) = (counts[0], counts[1]);
    assert_eq!(all.0, 3, "{all:?}");
    assert_eq!(anns.0, 2, "{anns:?}");
    assert!(anns.1 < all.1, "{anns:?} of {all:?}");
    let listed = ann
        .list_knowledge_bases(ListKnowledgeBasesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let acl = listed.knowledge_bases.iter().find(|kb| kb.name == KB);
    assert_eq!(acl.map(|kb| kb.document_count), Some(2), "{listed:?}");

    // The retriever itself: a reader's forwarded groups give way to its own, a key without
    // groups sees public documents only; the service key is trusted.
    let retriever_channel = channel(retriever_addr).await;
    let search = |groups: &[&str]| SearchRequest {
        knowledge_base: KB.into(),
        query_text: "vault code project Bravo BRAVO-4402".into(),
        top_k: 10,
        filter: Some(zhiku_proto::v1::Filter {
            readable_by: Some(ReaderScope {
                groups: groups.iter().map(|g| g.to_string()).collect(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let found = |response: zhiku_proto::v1::SearchResponse| -> Vec<String> {
        response
            .hits
            .into_iter()
            .filter_map(|h| h.passage.map(|p| p.document_id))
            .collect()
    };
    let hits = found(
        retriever(&retriever_channel, ANN)
            .search(search(&["b"]))
            .await
            .expect("search")
            .into_inner(),
    );
    assert!(!hits.iter().any(|d| d == "b-secret"), "{hits:?}");
    let hits = found(
        retriever(&retriever_channel, PUBLIC_ONLY)
            .search(SearchRequest {
                filter: None,
                ..search(&[])
            })
            .await
            .expect("search")
            .into_inner(),
    );
    assert!(hits.iter().all(|d| d == "public"), "{hits:?}");
    let hits = found(
        retriever(&retriever_channel, SERVICE)
            .search(search(&["b"]))
            .await
            .expect("search")
            .into_inner(),
    );
    assert!(hits.iter().any(|d| d == "b-secret"), "{hits:?}");

    // HTTP: the OpenAI endpoint and the REST listing.
    let body = format!(
        r#"{{"model": "kb:{KB}", "max_tokens": 24, "messages": [{{"role": "user", "content": "{B_QUESTION}"}}]}}"#
    );
    let (status, text) = http(http_addr, "POST", "/v1/chat/completions", ANN, &body);
    assert_eq!(status, 200, "{text}");
    assert!(
        !text.contains("b-secret") && !text.contains("4402"),
        "{text}"
    );
    let (status, text) = http(http_addr, "POST", "/v1/chat/completions", ROOT, &body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("b-secret"), "{text}");
    let path = format!("/v1/knowledge_bases/{KB}/documents");
    let (status, text) = http(http_addr, "GET", &path, ANN, "");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("a-secret") && !text.contains("b-secret"),
        "{text}"
    );
    // The web page's listing: a reader is not shown the readers, an admin is.
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let docs = json["data"].as_array().expect("data");
    assert!(docs.iter().all(|d| d.get("readers").is_none()), "{text}");
    let (status, text) = http(http_addr, "GET", &path, ROOT, "");
    assert_eq!(status, 200, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let b = json["data"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["document_id"] == "b-secret"));
    assert_eq!(
        b.map(|b| &b["readers"]),
        Some(&serde_json::json!(["b"])),
        "{text}"
    );
    // The knowledge bases the page lists, with counts of what the key may read.
    let (status, text) = http(http_addr, "GET", "/v1/knowledge_bases", ANN, "");
    assert_eq!(status, 200, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let acl = json["data"]
        .as_array()
        .and_then(|d| d.iter().find(|kb| kb["name"] == KB));
    assert_eq!(
        acl.map(|kb| &kb["document_count"]),
        Some(&serde_json::json!(2)),
        "{text}"
    );
    let (status, text) = http(
        http_addr,
        "GET",
        &format!("/v1/knowledge_bases/{KB}"),
        ANN,
        "",
    );
    assert_eq!(status, 200, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["document_count"], 2, "{text}");

    // An editor of `acl` cannot ingest elsewhere nor create a knowledge base; in `acl` it can.
    let mut ed = client(&orchestrator, ED);
    let status = ingest(&mut ed, "other", vec![document("x", PUBLIC, &[])], true)
        .await
        .expect_err("ingest into another knowledge base");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("other"), "{status:?}");
    let status = ed
        .create_knowledge_base(CreateKnowledgeBaseRequest {
            name: "mine".into(),
            ..Default::default()
        })
        .await
        .expect_err("create");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        ingest(
            &mut ed,
            KB,
            vec![document("ed-note", PUBLIC, &["a"])],
            false
        )
        .await
        .expect("ingest into its own"),
        1
    );
    let status = ann
        .ingest(IngestRequest {
            knowledge_base: KB.into(),
            documents: vec![document("x", PUBLIC, &[])],
            ..Default::default()
        })
        .await
        .expect_err("a reader ingests");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A group no key holds.
    let status = ingest(&mut root, KB, vec![document("x", PUBLIC, &["hr"])], false)
        .await
        .expect_err("an unknown group");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("unknown reader group `hr`"),
        "{status:?}"
    );

    // A reader list over the limit.
    let too_many: Vec<String> = (0..65).map(|i| format!("g{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let status = ingest(&mut root, KB, vec![document("x", PUBLIC, &too_many)], false)
        .await
        .expect_err("65 readers");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 64"), "{status:?}");

    // Revoked: refused within a second of the file changing.
    std::fs::write(&keys, key_file(false)).expect("key file");
    let revoked = Instant::now();
    loop {
        match ann
            .list_knowledge_bases(ListKnowledgeBasesRequest::default())
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => break,
            _ => assert!(
                revoked.elapsed() < Duration::from_secs(1),
                "ann still served after a second"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A malformed file keeps the keys in force: bob still in, ann still out.
    std::fs::write(&keys, key_file(true) + "{\"name\": \"broken\"\n").expect("key file");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    bob.list_knowledge_bases(ListKnowledgeBasesRequest::default())
        .await
        .expect("bob still served");
    let status = ann
        .list_knowledge_bases(ListKnowledgeBasesRequest::default())
        .await
        .expect_err("ann still out");
    assert_eq!(status.code(), Code::Unauthenticated);
}
