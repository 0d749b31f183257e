//! Ask and Evaluate rerank through the real services on loopback: the embedder (a tiny
//! sentence encoder and a tiny cross-encoder, both written by the test in the real file
//! formats; no real reranker weights can be had offline), the embedded vector store, SmolLM2
//! and two orchestrators, one with the default `--rerank auto` and one with `--rerank off`.
//!
//! The cross-encoder's relevance grows with the share of "答案" in the pair
//! (zhiku_embedder::testing::write_reranker); keyword search ranks the passage with more of
//! the question's words first, so the reranker changes which passage comes first.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Channel;
use zhiku_orchestrator::{OrchestratorArgs, Rerank};
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{
    Answer, AskRequest, DocumentInput, EvalCase, EvalSetting, EvaluateRequest, IngestRequest,
    SamplingParams, SearchMode, ask_event, evaluate_event,
};
use zhiku_runtime::ServerArgs;

use common::{listener, smollm2_args};

/// A never-ending shutdown signal: the services live as long as the test.
async fn forever() {
    std::future::pending::<()>().await
}

async fn wait_serving(addr: SocketAddr, service: &str) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    for _ in 0..1200 {
        if zhiku_runtime::health::is_serving(channel.clone(), service, Duration::from_secs(1)).await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} at {addr} did not become SERVING");
}

async fn orchestrator(args: OrchestratorArgs) -> OrchestratorClient<Channel> {
    let (l, addr) = listener().await;
    tokio::spawn(zhiku_orchestrator::serve(
        args,
        ServerArgs::default(),
        l,
        forever(),
    ));
    wait_serving(addr, "zhiku.v1.Orchestrator").await;
    OrchestratorClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    )
}

async fn ask(client: &mut OrchestratorClient<Channel>) -> Answer {
    let mut stream = client
        .ask(AskRequest {
            question: "hello world".into(),
            knowledge_base: "rerank".into(),
            top_k: 2,
            score_threshold: Some(-1.0),
            mode: SearchMode::Sparse as i32,
            sampling: Some(SamplingParams {
                max_new_tokens: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("ask")
        .into_inner();
    while let Some(event) = stream.message().await.expect("ask event") {
        if let Some(ask_event::Event::Answer(answer)) = event.event {
            return answer;
        }
    }
    panic!("no answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reranker_decides_which_passage_comes_first() {
    let embedder_dir = tempfile::tempdir().unwrap();
    zhiku_embedder::testing::write_checkpoint(embedder_dir.path(), "bert", 0, 64).unwrap();
    let reranker_dir = tempfile::tempdir().unwrap();
    zhiku_embedder::testing::write_reranker(reranker_dir.path(), "xlm-roberta", 64, "答案")
        .unwrap();
    let data = tempfile::tempdir().unwrap();

    let mut embedder =
        zhiku_embedder::EmbedderArgs::for_model(embedder_dir.path().to_string_lossy());
    embedder.reranker_model = Some(reranker_dir.path().to_string_lossy().into_owned());
    let (embedder_l, embedder_addr) = listener().await;
    let (retriever_l, retriever_addr) = listener().await;
    let (generator_l, generator_addr) = listener().await;
    tokio::spawn(zhiku_embedder::serve(
        embedder,
        ServerArgs::default(),
        embedder_l,
        forever(),
    ));
    tokio::spawn(zhiku_retriever::serve(
        zhiku_retriever::RetrieverArgs::embedded(data.path()),
        ServerArgs::default(),
        retriever_l,
        forever(),
    ));
    tokio::spawn(zhiku_generator::serve(
        smollm2_args(),
        ServerArgs::default(),
        generator_l,
        forever(),
    ));
    wait_serving(embedder_addr, "zhiku.v1.Embedder").await;
    wait_serving(retriever_addr, "zhiku.v1.Retriever").await;
    wait_serving(generator_addr, "zhiku.v1.Generator").await;

    let local = || {
        OrchestratorArgs::local(
            embedder_addr.port(),
            retriever_addr.port(),
            generator_addr.port(),
        )
    };
    let mut reranking = orchestrator(local()).await;
    let mut plain_args = local();
    plain_args.ask.rerank = Rerank::Off;
    let mut plain = orchestrator(plain_args).await;

    let doc = |name: &str, text: &str| DocumentInput {
        file_name: name.into(),
        content: text.as_bytes().to_vec(),
        ..Default::default()
    };
    let mut ingest = reranking
        .ingest(IngestRequest {
            knowledge_base: "rerank".into(),
            documents: vec![
                doc("keywords.txt", "hello world hello world 知识"),
                doc("answer.txt", "hello 答案 答案 问题"),
                doc("other.txt", "模型 检索 段落"),
            ],
            create_if_missing: true,
            ..Default::default()
        })
        .await
        .expect("ingest")
        .into_inner();
    while ingest.message().await.expect("ingest event").is_some() {}

    // Keyword search alone: the passage with more of the question's words first.
    let answer = ask(&mut plain).await;
    let sources: Vec<&str> = answer.citations.iter().map(|c| c.source.as_str()).collect();
    assert_eq!(sources, ["keywords.txt", "answer.txt"], "{answer:?}");
    assert!(answer.citations.iter().all(|c| c.rerank_score.is_none()));
    assert_eq!(answer.timings.unwrap().rerank_ms, 0.0);

    // With the reranker (auto: the embedder has one): the passage it scores higher first,
    // each with its score, and the stage timed.
    let answer = ask(&mut reranking).await;
    let sources: Vec<&str> = answer.citations.iter().map(|c| c.source.as_str()).collect();
    assert_eq!(sources, ["answer.txt", "keywords.txt"], "{answer:?}");
    let scores: Vec<f32> = answer
        .citations
        .iter()
        .map(|c| c.rerank_score.expect("a rerank score"))
        .collect();
    assert!(scores[0] > scores[1], "{scores:?}");
    assert_eq!(answer.citations[0].number, 1);
    assert!(answer.timings.unwrap().rerank_ms > 0.0);
    assert!(!answer.refused);

    // Evaluate goes through the same path: recall@1 without and with the reranker.
    let setting = |rerank| EvalSetting {
        top_k: 2,
        score_threshold: Some(-1.0),
        mode: SearchMode::Sparse as i32,
        context_tokens: None,
        rerank: Some(rerank),
        min_coverage: None,
        min_anchors: None,
        rrf_k: None,
        min_relevance: None,
    };
    let mut events = plain
        .evaluate(EvaluateRequest {
            knowledge_base: "rerank".into(),
            cases: vec![EvalCase {
                id: "1".into(),
                question: "hello world".into(),
                gold: vec!["答案".into()],
                answerable: true,
                history: Vec::new(),
            }],
            settings: vec![setting(false), setting(true)],
            retrieval_only: true,
            ..Default::default()
        })
        .await
        .expect("evaluate")
        .into_inner();
    let mut summary = None;
    while let Some(event) = events.message().await.expect("evaluate event") {
        if let Some(evaluate_event::Event::Summary(s)) = event.event {
            summary = Some(s);
        }
    }
    let summary = summary.expect("a summary");
    let [without, with] = &summary.reports[..] else {
        panic!("{summary:?}");
    };
    assert_eq!((without.recall_at_1, without.recall_at_k), (0, 1));
    assert_eq!(without.reranked_cases, 0);
    assert_eq!((with.recall_at_1, with.reranked_cases), (1, 1));
    assert!(with.rerank.unwrap().p50_ms > 0.0);
    assert_eq!(summary.best, 1);
}
