//! The article's pipeline as the end-to-end tests drive it: Chinese documents to ingest,
//! an Ask that collects the streamed answer and its citations, and what an answer about
//! 小拾 must hold (shared by the embedded-store and the Qdrant-server tests).

use std::time::Duration;

use crate::{ServiceProcess, minilm_dir, models_dir, wait_serving};
use tonic::transport::Channel;
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{
    Answer, AskRequest, Citation, DocumentInput, EvalCaseResult, EvalReport, EvalSummary,
    EvaluateRequest, IngestRequest, IngestStage, IngestSummary, SamplingParams, ask_event,
    evaluate_event, ingest_event,
};

/// How long a service may take to start (loading models).
pub const STARTUP: Duration = Duration::from_secs(180);

/// The four services as processes on loopback: the MiniLM embedder, the retriever (its own
/// flags), a GGUF generator (Qwen2.5-0.5B unless named) and the orchestrator wired to them, all SERVING.
pub struct Services {
    pub embedder: ServiceProcess,
    pub retriever: ServiceProcess,
    pub generator: ServiceProcess,
    pub orchestrator: ServiceProcess,
}

impl Services {
    pub async fn start(retriever_args: &[&str], retriever_envs: &[(&str, &str)]) -> Self {
        Self::start_with(
            "Qwen2.5-Coder-0.5B-Instruct-GGUF",
            retriever_args,
            retriever_envs,
        )
        .await
    }

    /// As [`Services::start`], with the generator on `models/<generator_model>`.
    pub async fn start_with(
        generator_model: &str,
        retriever_args: &[&str],
        retriever_envs: &[(&str, &str)],
    ) -> Self {
        let minilm = minilm_dir();
        let minilm = minilm.to_str().expect("utf-8 path");
        Self::start_custom(
            &["--model", minilm],
            (retriever_args, retriever_envs),
            generator_model,
            &[],
        )
        .await
    }

    /// The four services with the embedder's flags `embedder_args` (its --model among
    /// them), the retriever's flags and variables, the generator on
    /// `models/<generator_model>`, and `orchestrator_args` added to the orchestrator's.
    pub async fn start_custom(
        embedder_args: &[&str],
        (retriever_args, retriever_envs): (&[&str], &[(&str, &str)]),
        generator_model: &str,
        orchestrator_args: &[&str],
    ) -> Self {
        let chat = models_dir().join(generator_model);
        assert!(
            chat.is_dir(),
            "{} is missing: run scripts/fetch-models",
            chat.display()
        );
        let chat = chat.to_str().expect("utf-8 path");
        let embedder = ServiceProcess::start("zhiku-embedder", embedder_args, &[]);
        let retriever = ServiceProcess::start("zhiku-retriever", retriever_args, retriever_envs);
        let generator = ServiceProcess::start("zhiku-generator", &["--model", chat], &[]);
        let (embedder_addr, retriever_addr, generator_addr) = (
            embedder.endpoint(),
            retriever.endpoint(),
            generator.endpoint(),
        );
        let mut args = vec![
            "--embedder-addr",
            &embedder_addr,
            "--retriever-addr",
            &retriever_addr,
            "--generator-addr",
            &generator_addr,
        ];
        args.extend_from_slice(orchestrator_args);
        let orchestrator = ServiceProcess::start("zhiku-orchestrator", &args, &[]);
        wait_serving(&embedder, "zhiku.v1.Embedder", STARTUP).await;
        wait_serving(&retriever, "zhiku.v1.Retriever", STARTUP).await;
        wait_serving(&generator, "zhiku.v1.Generator", STARTUP).await;
        wait_serving(&orchestrator, "zhiku.v1.Orchestrator", STARTUP).await;
        Self {
            embedder,
            retriever,
            generator,
            orchestrator,
        }
    }

    pub async fn client(&self) -> OrchestratorClient<Channel> {
        OrchestratorClient::new(self.orchestrator.channel(STARTUP).await)
    }
}

/// Chinese documents written for the test (the article's example among them).
pub fn documents() -> Vec<DocumentInput> {
    let doc = |name: &str, text: &str| DocumentInput {
        readers: Vec::new(),
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

/// Ingests [`documents`] into `kb` (created if missing); every file must be stored.
pub async fn ingest(client: &mut OrchestratorClient<Channel>, kb: &str) {
    let summary = ingest_files(client, kb, documents()).await.expect("ingest");
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.files_ingested, 3, "{summary:?}");
    assert!(summary.passages_stored >= 3);
}

/// Ingests `documents` into `kb` (created if missing); the summary says what failed.
pub async fn ingest_files(
    client: &mut OrchestratorClient<Channel>,
    kb: &str,
    documents: Vec<DocumentInput>,
) -> Result<IngestSummary, tonic::Status> {
    ingest_request(
        client,
        IngestRequest {
            knowledge_base: kb.into(),
            documents,
            create_if_missing: true,
            ..Default::default()
        },
    )
    .await
}

/// Runs an Ingest of the request's documents, checking its events; its summary.
pub async fn ingest_request(
    client: &mut OrchestratorClient<Channel>,
    request: IngestRequest,
) -> Result<IngestSummary, tonic::Status> {
    let files = request.documents.len();
    let mut stream = client.ingest(request).await?.into_inner();
    let mut stored = 0;
    // Files go through the pipeline side by side; each one's stages come in order, and
    // each file ends once (stored or failed).
    let mut last_stage: std::collections::HashMap<String, i32> = Default::default();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(ingest_event::Event::File(f)) => {
                let before = last_stage.insert(f.source.clone(), f.stage);
                let ended =
                    |s: i32| s == IngestStage::Stored as i32 || s == IngestStage::Failed as i32;
                assert!(
                    before.is_none_or(|b| b <= f.stage && !ended(b)),
                    "{}: stage {} after {before:?}",
                    f.source,
                    f.stage
                );
                if f.stage == IngestStage::Stored as i32 {
                    stored += 1
                }
            }
            Some(ingest_event::Event::Summary(s)) => {
                assert_eq!(s.files_total as usize, files, "{s:?}");
                assert_eq!(s.files_ingested, stored, "{s:?}");
                let ended = last_stage
                    .values()
                    .filter(|&&s| {
                        s == IngestStage::Stored as i32 || s == IngestStage::Failed as i32
                    })
                    .count();
                assert_eq!(ended as u32, s.files_ingested + s.files_failed, "{s:?}");
                return Ok(s);
            }
            None => {}
        }
    }
    Err(tonic::Status::internal(
        "the ingest ended without a summary",
    ))
}

pub struct Asked {
    pub sources: Vec<Citation>,
    pub chunks: usize,
    pub answer: Answer,
}

/// An Ask of `question` in `kb`: the 3 nearest passages, greedy, `max_new_tokens` tokens.
pub fn ask_request(
    kb: &str,
    question: &str,
    threshold: Option<f32>,
    max_new_tokens: u32,
) -> AskRequest {
    AskRequest {
        question: question.into(),
        knowledge_base: kb.into(),
        top_k: 3,
        score_threshold: threshold,
        sampling: Some(SamplingParams {
            max_new_tokens: Some(max_new_tokens),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Asks with a 40-token answer.
pub async fn ask(
    client: &mut OrchestratorClient<Channel>,
    kb: &str,
    question: &str,
    threshold: Option<f32>,
    timeout: Duration,
) -> Result<Asked, tonic::Status> {
    ask_with(client, ask_request(kb, question, threshold, 40), timeout).await
}

/// Sends `request`, collects the streamed sources, chunks and answer.
pub async fn ask_with(
    client: &mut OrchestratorClient<Channel>,
    request: AskRequest,
    timeout: Duration,
) -> Result<Asked, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    let mut stream = client.ask(request).await?.into_inner();
    let mut sources = Vec::new();
    let mut chunks = 0;
    while let Some(event) = stream.message().await? {
        match event.event {
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

/// What an Evaluate streamed: each case's result, each setting's report, the summary.
pub struct Evaluated {
    pub cases: Vec<EvalCaseResult>,
    pub reports: Vec<EvalReport>,
    pub summary: EvalSummary,
}

/// Runs `request` to its summary; panics on an error or a stream without one.
pub async fn evaluate(
    client: &mut OrchestratorClient<Channel>,
    request: EvaluateRequest,
) -> Evaluated {
    let mut stream = client
        .evaluate(request)
        .await
        .expect("evaluate starts")
        .into_inner();
    let (mut cases, mut reports) = (Vec::new(), Vec::new());
    while let Some(event) = stream.message().await.expect("evaluate event") {
        match event.event {
            Some(evaluate_event::Event::CaseResult(c)) => cases.push(c),
            Some(evaluate_event::Event::Report(r)) => reports.push(r),
            Some(evaluate_event::Event::Summary(summary)) => {
                return Evaluated {
                    cases,
                    reports,
                    summary,
                };
            }
            None => {}
        }
    }
    panic!("the evaluation ended without a summary");
}
