//! End-to-end: the article's pipeline over real gRPC, with the four service binaries started
//! as separate processes on loopback: MiniLM embeddings, the embedded Qdrant store and a real
//! GGUF chat model (Qwen2.5-0.5B). Ingest Chinese documents, ask an answerable and an
//! unanswerable question, and survive a retriever that dies.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use zhiku_e2e::{ServiceProcess, minilm_dir, models_dir, wait_serving};
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{
    Answer, AskRequest, Citation, CreateKnowledgeBaseRequest, DocumentInput, IngestRequest,
    IngestStage, SamplingParams, Turn, ask_event, ingest_event,
};

const STARTUP: Duration = Duration::from_secs(180);

/// Chinese documents written for the test (the article's example among them).
pub fn documents() -> Vec<DocumentInput> {
    let doc = |name: &str, text: &str| DocumentInput {
        file_name: name.into(),
        content: text.as_bytes().to_vec(),
        document_id: String::new(),
        metadata: Default::default(),
    };
    vec![
        doc(
            "xiaoshi.txt",
            "小拾喜欢玩手机、打游戏、看电影。阿敏喜欢吐槽小拾。",
        ),
        doc(
            "glm.md",
            "# ChatGLM\n\nChatGLM-6B 是一个开源的、支持中英双语的对话语言模型，基于 General Language Model 架构，\
具有 62 亿参数。结合模型量化技术，用户可以在消费级的显卡上进行本地部署，INT4 量化级别下最低只需 6GB 显存。\n\n\
## LoRA\n\nLoRA 的思想是在原始预训练模型旁边增加一个旁路，做一个降维再升维的操作。训练时固定原模型的参数，只训练降维矩阵 A 与升维矩阵 B。",
        ),
        doc(
            "kb.txt",
            "知识库问答的流程：先把文档切成段落，为每个段落计算向量并存入向量数据库；提问时计算问题的向量，\
找出最相近的 K 个段落，和问题一起组成提示词交给大模型回答。",
        ),
    ]
}

pub async fn ingest(client: &mut OrchestratorClient<Channel>, kb: &str) {
    let mut stream = client
        .ingest(IngestRequest {
            knowledge_base: kb.into(),
            documents: documents(),
            create_if_missing: true,
            ..Default::default()
        })
        .await
        .expect("ingest starts")
        .into_inner();
    let mut stored = Vec::new();
    let mut summary = None;
    while let Some(event) = stream.next().await {
        match event.expect("ingest event").event {
            Some(ingest_event::Event::File(f)) if f.stage == IngestStage::Stored as i32 => {
                stored.push(f.source)
            }
            Some(ingest_event::Event::File(f)) if f.stage == IngestStage::Failed as i32 => {
                panic!("{} failed: {}", f.source, f.error)
            }
            Some(ingest_event::Event::Summary(s)) => summary = Some(s),
            _ => {}
        }
    }
    let summary = summary.expect("a summary");
    assert_eq!(summary.files_ingested, 3, "{summary:?}");
    assert_eq!(stored.len(), 3);
    assert!(summary.passages_stored >= 3);
}

pub struct Asked {
    pub sources: Vec<Citation>,
    pub chunks: usize,
    pub answer: Answer,
}

pub async fn ask(
    client: &mut OrchestratorClient<Channel>,
    kb: &str,
    question: &str,
    threshold: Option<f32>,
    timeout: Duration,
) -> Result<Asked, tonic::Status> {
    let mut request = tonic::Request::new(AskRequest {
        question: question.into(),
        knowledge_base: kb.into(),
        top_k: 3,
        score_threshold: threshold,
        sampling: Some(SamplingParams {
            max_new_tokens: Some(40),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(timeout);
    let mut stream = client.ask(request).await?.into_inner();
    let mut sources = Vec::new();
    let mut chunks = 0;
    while let Some(event) = stream.next().await {
        match event?.event {
            Some(ask_event::Event::Sources(s)) => sources = s.citations,
            Some(ask_event::Event::Chunk(_)) => chunks += 1,
            Some(ask_event::Event::Answer(answer)) => {
                return Ok(Asked {
                    sources,
                    chunks,
                    answer,
                });
            }
            None => {}
        }
    }
    Err(tonic::Status::internal(
        "the stream ended without an answer",
    ))
}

pub fn assert_answerable(asked: &Asked) {
    assert!(!asked.answer.refused);
    assert!(
        asked
            .sources
            .iter()
            .any(|c| c.source == "xiaoshi.txt" && c.text.contains("玩手机")),
        "the passage is not among the sources: {:?}",
        asked.sources
    );
    assert!(asked.chunks > 0, "the answer did not stream");
    assert!(
        ["玩手机", "打游戏", "看电影"]
            .iter()
            .any(|w| asked.answer.text.contains(w)),
        "{:?}",
        asked.answer.text
    );
    let timings = asked.answer.timings.expect("timings");
    assert!(timings.total_ms >= timings.generate_ms && timings.generate_ms > 0.0);
}

pub const UNANSWERABLE: &str = "量子计算机的纠错码有哪些种类？";

fn generate_calls(generator: &ServiceProcess) -> usize {
    generator
        .logs()
        .matches("/zhiku.v1.Generator/GenerateStream")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_ingest_ask_refuse_and_survive_a_dead_retriever() {
    let data = tempfile::tempdir().unwrap();
    let minilm = minilm_dir();
    let qwen = models_dir().join("Qwen2.5-Coder-0.5B-Instruct-GGUF");
    assert!(qwen.is_dir(), "run scripts/fetch-models qwen2.5-0.5b");
    let embedder = ServiceProcess::start(
        "zhiku-embedder",
        &["--model", minilm.to_str().unwrap()],
        &[],
    );
    let data_dir = data.path().to_str().unwrap().to_owned();
    let mut retriever = ServiceProcess::start("zhiku-retriever", &["--data-dir", &data_dir], &[]);
    let generator =
        ServiceProcess::start("zhiku-generator", &["--model", qwen.to_str().unwrap()], &[]);
    let orchestrator = ServiceProcess::start(
        "zhiku-orchestrator",
        &[
            "--embedder-addr",
            &embedder.endpoint(),
            "--retriever-addr",
            &retriever.endpoint(),
            "--generator-addr",
            &generator.endpoint(),
        ],
        &[],
    );
    wait_serving(&embedder, "zhiku.v1.Embedder", STARTUP).await;
    wait_serving(&retriever, "zhiku.v1.Retriever", STARTUP).await;
    wait_serving(&generator, "zhiku.v1.Generator", STARTUP).await;
    wait_serving(&orchestrator, "zhiku.v1.Orchestrator", STARTUP).await;
    let mut client = OrchestratorClient::new(orchestrator.channel(STARTUP).await);

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

    // Multi-turn: earlier turns go in through the chat template.
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
            answered = true;
        }
    }
    assert!(answered);

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
    let calls_before = generate_calls(&generator);
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        generate_calls(&generator),
        calls_before,
        "the generator was called"
    );

    // The retriever dies: UNAVAILABLE naming it, well within the deadline.
    let retriever_addr = retriever.addr;
    retriever.kill();
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
