//! End-to-end: the article's pipeline over real gRPC, with the four service binaries started
//! as separate processes on loopback: MiniLM embeddings, the embedded Qdrant store and a real
//! GGUF chat model (Qwen2.5-0.5B). Ingest Chinese documents, ask an answerable and an
//! unanswerable question, and survive a retriever that dies.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::Code;
use zhiku_e2e::pipeline::{
    STARTUP, Services, UNANSWERABLE, ask, assert_answerable, documents, ingest,
};
use zhiku_e2e::{ServiceProcess, wait_serving};
use zhiku_proto::v1::generator_client::GeneratorClient;
use zhiku_proto::v1::{
    AskRequest, CreateKnowledgeBaseRequest, GeneratorInfoRequest, IngestRequest, SamplingParams,
    Turn, ask_event,
};

/// The orchestrator's default --min-coverage.
const MIN_COVERAGE: f64 = 0.35;

/// Generate requests the generator has received (its own counter, from Info).
async fn generate_requests(generator: &ServiceProcess) -> u64 {
    GeneratorClient::new(generator.channel(STARTUP).await)
        .info(GeneratorInfoRequest {})
        .await
        .expect("generator info")
        .into_inner()
        .generate_requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_ingest_ask_refuse_and_survive_a_dead_retriever() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let mut services = Services::start(&["--data-dir", &data_dir], &[]).await;
    let mut client = services.client().await;

    ingest(&mut client, "demo").await;
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

    // Multi-turn: the follow-up is rewritten into a standalone question by the generator
    // (one Generate request) before retrieval; earlier turns go in through the chat template.
    let requests_before = generate_requests(&services.generator).await;
    let mut follow_up = tonic::Request::new(AskRequest {
        question: "她呢？阿敏喜欢做什么？".into(),
        knowledge_base: "demo".into(),
        top_k: 3,
        history: vec![Turn {
            question: "小拾喜欢做什么？".into(),
            answer: asked.answer.text.clone(),
        }],
        sampling: Some(SamplingParams {
            max_new_tokens: Some(24),
            ..Default::default()
        }),
        ..Default::default()
    });
    follow_up.set_timeout(Duration::from_secs(300));
    let mut stream = client
        .ask(follow_up)
        .await
        .expect("ask with history")
        .into_inner();
    let mut answered = false;
    while let Some(event) = stream.next().await {
        if let Some(ask_event::Event::Answer(a)) = event.expect("event").event {
            assert!(!a.refused && !a.text.is_empty());
            assert!(
                a.prompt_tokens > asked.answer.prompt_tokens,
                "the history is in the prompt"
            );
            assert!(!a.search_question.is_empty());
            answered = true;
        }
    }
    assert!(answered);
    assert_eq!(
        generate_requests(&services.generator).await,
        requests_before + 2,
        "the rewrite and the answer"
    );

    // A deadline that cannot be met fails fast (the pipeline enforces it on the stream). The
    // question was asked before, so its prompt is in the generator's prefix cache and only
    // the answer's tokens take time: the deadline must be shorter than a dozen of them.
    let started = Instant::now();
    let err = ask(
        &mut client,
        "demo",
        "小拾喜欢做什么？",
        None,
        Duration::from_millis(150),
    )
    .await
    .err()
    .expect("the deadline is too short for an answer");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A knowledge base that names a LoRA adapter asks with it (this generator has none).
    let mut with_adapter = tonic::Request::new(CreateKnowledgeBaseRequest {
        name: "legal".into(),
        adapter: "legal-zh".into(),
        ..Default::default()
    });
    with_adapter.set_timeout(Duration::from_secs(60));
    client
        .create_knowledge_base(with_adapter)
        .await
        .expect("create");
    let mut stream = client
        .ingest(IngestRequest {
            knowledge_base: "legal".into(),
            documents: documents()[..1].to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(event) = stream.next().await {
        event.expect("ingest event");
    }
    let err = ask(
        &mut client,
        "legal",
        "小拾喜欢做什么？",
        None,
        Duration::from_secs(60),
    )
    .await
    .err()
    .expect("the generator has no such adapter");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("legal-zh"), "{}", err.message());

    // Unanswerable, with a threshold: refused, and the generator is never called.
    let calls_before = generate_requests(&services.generator).await;
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
    assert_eq!(refused.answer.text, "根据已知信息无法回答该问题");
    assert!(refused.sources.is_empty());
    assert_eq!(
        generate_requests(&services.generator).await,
        calls_before,
        "the generator was called"
    );

    // Unanswerable, without a threshold: the nearest passages come back, but they hold
    // almost none of the question's terms, so zhiku refuses from the evidence (the default
    // --abstention evidence) and the generator is never called either.
    let refused = ask(
        &mut client,
        "demo",
        UNANSWERABLE,
        Some(-1.0),
        Duration::from_secs(60),
    )
    .await
    .expect("ask");
    assert!(refused.answer.refused);
    assert_eq!(refused.answer.text, "根据已知信息无法回答该问题");
    assert!(
        !refused.sources.is_empty(),
        "no threshold: passages came back"
    );
    assert!(
        refused.answer.coverage < MIN_COVERAGE,
        "{}",
        refused.answer.coverage
    );
    assert_eq!(refused.answer.generated_tokens, 0);
    assert_eq!(
        generate_requests(&services.generator).await,
        calls_before,
        "the generator was called"
    );
    assert!(
        asked.answer.coverage >= MIN_COVERAGE,
        "the answerable question was covered: {}",
        asked.answer.coverage
    );

    // The retriever dies: UNAVAILABLE naming it, well within the deadline.
    let retriever_addr = services.retriever.addr;
    services.retriever.kill();
    let started = Instant::now();
    let err = ask(
        &mut client,
        "demo",
        "小拾喜欢做什么？",
        None,
        Duration::from_secs(20),
    )
    .await
    .err()
    .expect("fails while the retriever is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("retriever"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(20));

    // Back on the same port and data: the next Ask works, the orchestrator untouched.
    let retriever = ServiceProcess::start_on(
        "zhiku-retriever",
        retriever_addr,
        &["--data-dir", &data_dir],
        &[],
    );
    wait_serving(&retriever, "zhiku.v1.Retriever", STARTUP).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let asked = loop {
        match ask(
            &mut client,
            "demo",
            "小拾喜欢做什么？",
            None,
            Duration::from_secs(300),
        )
        .await
        {
            Ok(asked) => break asked,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the orchestrator did not reconnect: {e:?}"),
        }
    };
    assert_answerable(&asked);
}
