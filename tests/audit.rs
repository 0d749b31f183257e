//! The audit file end to end: the retriever binary, started with `--audit-file` behind API
//! keys, writes one JSON line per Search to that file (the principal, the knowledge base,
//! the documents returned, the request id), even with `--log warn`, and nothing else; a
//! path that cannot be written stops the orchestrator, the retriever and `zhiku serve` at
//! start-up with an error that names it.

use std::path::Path;
use std::time::{Duration, Instant};

use zhiku_e2e::{ServiceProcess, free_addr, wait_serving};
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, Distance, Passage, SearchRequest, UpsertRequest,
};

const STARTUP: Duration = Duration::from_secs(120);
const ADMIN: &str = "admin-key-of-the-audit-test";
const READER: &str = "reader-key-of-the-audit-test";
const REQUEST_ID: &str = "audit-test-search-1";

/// `message` with `key` and a request id, as a caller sends it.
fn call<T>(message: T, key: &str, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let bearer = format!("Bearer {key}").parse().expect("ascii key");
    request.metadata_mut().insert("authorization", bearer);
    let id = request_id.parse().expect("ascii id");
    request.metadata_mut().insert("x-request-id", id);
    request
}

fn passage(document_id: &str, vector: [f32; 3]) -> Passage {
    Passage {
        document_id: document_id.into(),
        chunk_index: 0,
        chunk_count: 1,
        text: format!("the text of {document_id}"),
        source: document_id.into(),
        vector: vector.to_vec(),
        ..Default::default()
    }
}

/// The audit file's lines as JSON, once one has `request_id` (or after a few seconds).
async fn audit_lines(path: &Path, request_id: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.iter().any(|l| l["request_id"] == request_id) || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_leaves_its_json_line_in_the_audit_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // A directory that does not exist yet: the retriever makes it.
    let audit = dir.path().join("audit").join("zhiku-audit.jsonl");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let (data_arg, audit_arg) = (path(&data), path(&audit));
    let process = ServiceProcess::start(
        "zhiku-retriever",
        &[
            "--data-dir",
            &data_arg,
            "--audit-file",
            &audit_arg,
            "--open-health",
        ],
        &[
            ("ZHIKU_API_KEY", ADMIN),
            ("ZHIKU_READ_ONLY_API_KEY", READER),
            // The audit file does not depend on what the log lets through.
            ("ZHIKU_LOG", "warn"),
            ("ZHIKU_AUDIT_ROTATION", "never"),
        ],
    );
    wait_serving(&process, "zhiku.v1.Retriever", STARTUP).await;
    let mut retriever = RetrieverClient::new(process.channel(STARTUP).await);
    retriever
        .create_knowledge_base(call(
            CreateKnowledgeBaseRequest {
                name: "audited".into(),
                dimensions: 3,
                distance: Distance::Cosine as i32,
                ..Default::default()
            },
            ADMIN,
            "audit-test-create",
        ))
        .await
        .expect("create");
    retriever
        .upsert(call(
            UpsertRequest {
                knowledge_base: "audited".into(),
                passages: vec![
                    passage("handbook.md", [1.0, 0.0, 0.0]),
                    passage("menu.md", [0.0, 1.0, 0.0]),
                ],
            },
            ADMIN,
            "audit-test-upsert",
        ))
        .await
        .expect("upsert");
    let found = retriever
        .search(call(
            SearchRequest {
                knowledge_base: "audited".into(),
                vector: vec![1.0, 0.1, 0.0],
                top_k: 1,
                ..Default::default()
            },
            READER,
            REQUEST_ID,
        ))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(found.hits.len(), 1);

    let lines = audit_lines(&audit, REQUEST_ID).await;
    let search = lines
        .iter()
        .find(|l| l["request_id"] == REQUEST_ID)
        .unwrap_or_else(|| {
            panic!(
                "no audit line of the search in {lines:?}\n{}",
                process.logs()
            )
        });
    assert_eq!(search["target"], "zhiku::audit");
    assert_eq!(search["action"], "search");
    assert_eq!(search["principal"], "read-only-api-key-1");
    assert_eq!(search["knowledge_base"], "audited");
    assert_eq!(search["documents"], r#"["handbook.md"]"#);
    assert_eq!(search["outcome"], "ok");
    assert!(search["timestamp"].is_string(), "{search}");
    // Audit lines only: the retriever's start-up and the upsert are not in the file...
    assert!(
        lines.iter().all(|l| l["target"] == "zhiku::audit"),
        "{lines:?}"
    );
    // ...and with --log warn, not the audit line on stderr either.
    assert!(!process.logs().contains(REQUEST_ID), "{}", process.logs());
}

/// Runs `binary` with `args` until it exits: (exit code, its output).
fn run_to_exit(binary: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut process = ServiceProcess::spawn(binary, free_addr(), args, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = process.try_wait() {
            return (status.code(), process.logs());
        }
        assert!(
            Instant::now() < deadline,
            "{binary} still running with a bad --audit-file\n{}",
            process.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_audit_file_that_cannot_be_written_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A path under a regular file: its directory cannot be made.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").expect("file");
    let audit = blocker.join("audit.jsonl");
    let audit = audit.to_str().expect("utf-8 path");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let listen = free_addr().to_string();
    for (binary, args) in [
        (
            "zhiku-retriever",
            vec![
                "--listen",
                &listen,
                "--data-dir",
                data,
                "--audit-file",
                audit,
            ],
        ),
        (
            "zhiku-orchestrator",
            vec!["--listen", &listen, "--audit-file", audit],
        ),
        (
            "zhiku",
            vec![
                "serve",
                "--orchestrator-listen",
                &listen,
                "--data-dir",
                data,
                "--audit-file",
                audit,
            ],
        ),
    ] {
        let (code, output) = run_to_exit(binary, &args);
        assert_eq!(code, Some(2), "{binary}: {output}");
        assert!(
            output.contains(&format!("cannot write the audit file {audit}")),
            "{binary}: {output}"
        );
    }
}
