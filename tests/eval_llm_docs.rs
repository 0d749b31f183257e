//! The larger evaluation sets of zhiku's own must keep their retrieval floors:
//! eval/llm-docs-zh (36 Chinese markdown files on deploying and fine-tuning LLMs, questions
//! split into `dev` and `test`), then eval/llm-docs-zh2 (15 more files of other projects)
//! eval/llm-docs-zh3 (16 more, of five other projects), eval/llm-docs-zh4 (15 more, of
//! five others again) and eval/llm-docs-zh5 (15 more, of six others), each written as a
//! held-out set,
//! ingested into the same knowledge base, as their benchmark runs them. Ingested through `zhiku serve` with the offline default embedder
//! (e5-small), each set evaluated retrieval only (no generation) at the default setting.
//! The full eval with generation is a benchmark (docs/src/benchmarks/eval.md), not a test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::Channel;
use zhiku_e2e::{ZhikuServe, models_dir, wait_serving, workspace_root};
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{
    DocumentInput, EvalCase, EvalCaseResult, EvalReport, EvalSetting, EvaluateRequest,
    IngestRequest, evaluate_event,
};

const STARTUP: Duration = Duration::from_secs(180);

/// recall@3 floors of the two halves, a little under what the default setting reaches
/// (docs/src/benchmarks/eval.md has the figures), so that a regression fails and noise
/// does not.
const DEV_RECALL_AT_3_FLOOR: u32 = 21;
const TEST_RECALL_AT_3_FLOOR: u32 = 23;
const ZH2_RECALL_AT_3_FLOOR: u32 = 28;
const ZH3_RECALL_AT_3_FLOOR: u32 = 43;
const ZH4_RECALL_AT_3_FLOOR: u32 = 44;
const ZH5_RECALL_AT_3_FLOOR: u32 = 55;

fn cases(path: &Path) -> Vec<EvalCase> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reads {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
            EvalCase {
                id: v["id"].as_str().unwrap_or_default().into(),
                question: v["question"].as_str().expect("a question").into(),
                gold: v["gold"]
                    .as_array()
                    .expect("gold")
                    .iter()
                    .map(|g| g.as_str().expect("gold text").to_owned())
                    .collect(),
                answerable: v["answerable"].as_bool().expect("answerable"),
                history: Vec::new(),
            }
        })
        .collect()
}

fn documents(dir: &Path) -> Vec<DocumentInput> {
    let mut documents: Vec<DocumentInput> = std::fs::read_dir(dir)
        .expect("the set's documents")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| DocumentInput {
            file_name: path.file_name().unwrap().to_string_lossy().into_owned(),
            content: std::fs::read(&path).expect("a document"),
            ..Default::default()
        })
        .collect();
    documents.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    documents
}

async fn evaluate(
    client: &mut OrchestratorClient<Channel>,
    cases: Vec<EvalCase>,
) -> (EvalReport, Vec<EvalCaseResult>) {
    let mut request = tonic::Request::new(EvaluateRequest {
        knowledge_base: "llm-docs".into(),
        cases,
        retrieval_only: true,
        settings: vec![EvalSetting::default()],
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(900));
    let mut stream = client
        .evaluate(request)
        .await
        .expect("evaluate starts")
        .into_inner();
    let mut results = Vec::new();
    while let Some(event) = stream.next().await {
        match event.expect("evaluate event").event {
            Some(evaluate_event::Event::CaseResult(c)) => results.push(c),
            Some(evaluate_event::Event::Report(r)) => return (r, results),
            _ => {}
        }
    }
    panic!("the evaluation ended without a report");
}

async fn ingest(client: &mut OrchestratorClient<Channel>, dir: &Path) {
    let mut ingest = tonic::Request::new(IngestRequest {
        knowledge_base: "llm-docs".into(),
        documents: documents(dir),
        create_if_missing: true,
        ..Default::default()
    });
    ingest.set_timeout(Duration::from_secs(1200));
    let mut stream = client
        .ingest(ingest)
        .await
        .expect("ingest starts")
        .into_inner();
    while let Some(event) = stream.next().await {
        event.expect("ingest event");
    }
}

fn check_floor(half: &str, report: &EvalReport, results: &[EvalCaseResult], floor: u32) {
    println!(
        "{half} retrieval: recall@1 {}/{a} recall@3 {}/{a} recall@5 {}/{a} MRR {:.3}, \
         refused before generating {}/{a} answerable, {}/{} unanswerable",
        report.recall_at_1,
        report.recall_at_3,
        report.recall_at_k,
        report.mrr,
        report.false_refusals,
        report.abstained,
        report.unanswerable,
        a = report.answerable,
    );
    assert!(
        report.recall_at_3 >= floor,
        "{half}: recall@3 {} is under the floor {floor}: {:?}",
        report.recall_at_3,
        results
            .iter()
            .map(|c| (&c.id, c.gold_rank))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_docs_set_keeps_its_retrieval_floor() {
    let root = workspace_root().join("eval");
    let e5 = models_dir().join("multilingual-e5-small");
    let smollm: PathBuf = models_dir().join("SmolLM2-135M-Instruct-GGUF");
    if !e5.join("model.safetensors").is_file() || !smollm.is_dir() {
        println!("SKIPPED: run `scripts/fetch-models e5-small` (and the default chat model)");
        return;
    }
    let (dev, test) = (
        cases(&root.join("llm-docs-zh.dev.jsonl")),
        cases(&root.join("llm-docs-zh.test.jsonl")),
    );
    assert_eq!(dev.iter().filter(|c| c.answerable).count(), 29);
    assert_eq!(test.iter().filter(|c| c.answerable).count(), 28);

    let data = tempfile::tempdir().unwrap();
    // The generator only counts the passages' tokens: retrieval only generates nothing.
    let ZhikuServe { serve, .. } = ZhikuServe::spawn(
        &e5,
        &smollm,
        data.path(),
        &["--gguf-file", "SmolLM2-135M-Instruct.Q4_1.gguf"],
    );
    wait_serving(&serve, "zhiku.v1.Orchestrator", STARTUP).await;
    let mut client = OrchestratorClient::new(serve.channel(STARTUP).await);

    ingest(&mut client, &root.join("llm-docs-zh/docs")).await;

    let (report, results) = evaluate(&mut client, dev).await;
    assert_eq!((report.answerable, report.unanswerable), (29, 4));
    check_floor("llm-docs-zh dev", &report, &results, DEV_RECALL_AT_3_FLOOR);
    let (report, results) = evaluate(&mut client, test).await;
    assert_eq!((report.answerable, report.unanswerable), (28, 4));
    check_floor(
        "llm-docs-zh test",
        &report,
        &results,
        TEST_RECALL_AT_3_FLOOR,
    );

    let zh2 = cases(&root.join("llm-docs-zh2.jsonl"));
    ingest(&mut client, &root.join("llm-docs-zh2/docs")).await;
    let (report, results) = evaluate(&mut client, zh2).await;
    assert_eq!((report.answerable, report.unanswerable), (31, 8));
    check_floor("llm-docs-zh2", &report, &results, ZH2_RECALL_AT_3_FLOOR);

    let zh3 = cases(&root.join("llm-docs-zh3.jsonl"));
    ingest(&mut client, &root.join("llm-docs-zh3/docs")).await;
    let (report, results) = evaluate(&mut client, zh3).await;
    assert_eq!((report.answerable, report.unanswerable), (47, 10));
    check_floor("llm-docs-zh3", &report, &results, ZH3_RECALL_AT_3_FLOOR);

    let zh4 = cases(&root.join("llm-docs-zh4.jsonl"));
    ingest(&mut client, &root.join("llm-docs-zh4/docs")).await;
    let (report, results) = evaluate(&mut client, zh4).await;
    assert_eq!((report.answerable, report.unanswerable), (53, 13));
    check_floor("llm-docs-zh4", &report, &results, ZH4_RECALL_AT_3_FLOOR);

    let zh5 = cases(&root.join("llm-docs-zh5.jsonl"));
    ingest(&mut client, &root.join("llm-docs-zh5/docs")).await;
    let (report, results) = evaluate(&mut client, zh5).await;
    assert_eq!((report.answerable, report.unanswerable), (64, 14));
    check_floor("llm-docs-zh5", &report, &results, ZH5_RECALL_AT_3_FLOOR);
}
