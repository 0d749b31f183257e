//! End-to-end: abstention on anchors (--min-anchors), over the four service binaries on
//! loopback with the real small models. Two documents state ChatGLM3-6B's FP16 figure and
//! ChatGLM-6B's INT8 one; a question on ChatGLM3-6B with INT8 (a near miss: each passage
//! holds one of its two names, together they hold nearly all of its words) is refused before
//! the model is called, while the question the second document answers is not. Evaluate
//! counts the same through a sweep of the level.

use std::time::Duration;

use tonic::transport::Channel;
use zhiku_e2e::pipeline::{Services, evaluate, ingest_files};
use zhiku_e2e::{minilm_dir, models_dir};
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{
    Answer, AskRequest, DocumentInput, EvalCase, EvalSetting, EvaluateRequest, SamplingParams,
    ask_event,
};

const CHAT_MODEL: &str = "Qwen2.5-Coder-0.5B-Instruct-GGUF";
const NEAR_MISS: &str = "ChatGLM3-6B 用 INT8 量化推理最少需要多少显存？";
const ANSWERED: &str = "ChatGLM-6B 用 INT8 量化推理最少需要多少显存？";

fn documents() -> Vec<DocumentInput> {
    let doc = |name: &str, text: &str| DocumentInput {
        file_name: name.into(),
        content: text.as_bytes().to_vec(),
        ..Default::default()
    };
    vec![
        doc(
            "chatglm3.md",
            "# 推理\n\nChatGLM3-6B 以 FP16 精度加载运行，最少需要 13GB 显存；也可以按需对模型进行量化。",
        ),
        doc(
            "chatglm-6b.md",
            "# 硬件需求\n\nChatGLM-6B 各量化等级推理所需的最低显存：FP16 需要 13 GB，INT8 需要 8 GB，\
INT4 需要 6 GB。",
        ),
    ]
}

async fn ask(
    client: &mut OrchestratorClient<Channel>,
    question: &str,
    min_anchors: Option<f64>,
) -> Answer {
    let mut request = tonic::Request::new(AskRequest {
        question: question.into(),
        knowledge_base: "anchors".into(),
        top_k: 2,
        score_threshold: Some(-1.0),
        min_anchors,
        sampling: Some(SamplingParams {
            max_new_tokens: Some(2),
            temperature: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(300));
    let mut stream = client.ask(request).await.expect("ask").into_inner();
    while let Some(event) = stream.message().await.expect("ask event") {
        if let Some(ask_event::Event::Answer(answer)) = event.event {
            return answer;
        }
    }
    panic!("the stream ended without an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_miss_is_refused_on_anchors_and_the_answered_question_is_not() {
    let chat = models_dir().join(CHAT_MODEL);
    if !chat.is_dir() {
        eprintln!("SKIPPED: {} is missing", chat.display());
        return;
    }
    let _ = minilm_dir();
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().expect("utf-8 path").to_owned();
    // The orchestrator's level is 0 (never): the requests set theirs. Answers are marked,
    // not withdrawn: this is about refusing before generating.
    let services = Services::start_custom(
        &["--model", minilm_dir().to_str().expect("utf-8 path")],
        (&["--data-dir", &data], &[]),
        CHAT_MODEL,
        &[
            "--min-anchors",
            "0",
            "--min-coverage",
            "0.35",
            "--verify",
            "mark",
        ],
    )
    .await;
    let mut client = services.client().await;
    let summary = ingest_files(&mut client, "anchors", documents())
        .await
        .expect("ingest");
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);

    let refused = ask(&mut client, NEAR_MISS, Some(1.0)).await;
    println!(
        "near miss: coverage {:.2}, anchors {:.2}, sources {:?}",
        refused.coverage,
        refused.anchors,
        refused
            .citations
            .iter()
            .map(|c| (c.source.as_str(), c.anchors))
            .collect::<Vec<_>>()
    );
    assert!(refused.refused, "{refused:?}");
    assert_eq!(refused.generated_tokens, 0, "refused before generating");
    assert!(
        refused.coverage >= 0.35,
        "coverage alone would not refuse it: {}",
        refused.coverage
    );
    assert_eq!(
        refused.anchors, 0.5,
        "one of chatglm36b and int8 per passage"
    );
    assert_eq!(refused.citations.len(), 2);
    for citation in &refused.citations {
        assert_eq!(citation.anchors, Some(0.5), "{citation:?}");
    }

    // The orchestrator's level (0) answers it.
    let answered = ask(&mut client, NEAR_MISS, None).await;
    assert!(
        !answered.refused && answered.generated_tokens > 0,
        "{answered:?}"
    );
    assert_eq!(answered.anchors, 0.5);

    let answered = ask(&mut client, ANSWERED, Some(1.0)).await;
    assert!(
        !answered.refused && answered.generated_tokens > 0,
        "{answered:?}"
    );
    assert_eq!(answered.anchors, 1.0, "{answered:?}");

    // A level outside 0..1 is the caller's error (before or as the stream's first item).
    let mut bad = client.clone();
    let status = match bad
        .ask(AskRequest {
            question: ANSWERED.into(),
            knowledge_base: "anchors".into(),
            min_anchors: Some(1.5),
            ..Default::default()
        })
        .await
    {
        Err(status) => status,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("an out-of-range level is refused"),
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("min_anchors"), "{status:?}");

    // Evaluate, retrieval only, with the level swept: the near miss is refused at 1 and
    // the refusal costs no found gold.
    let setting = |level| EvalSetting {
        top_k: 2,
        score_threshold: Some(-1.0),
        min_anchors: Some(level),
        ..Default::default()
    };
    let summary = evaluate(
        &mut client,
        EvaluateRequest {
            knowledge_base: "anchors".into(),
            cases: vec![
                EvalCase {
                    id: "near-miss".into(),
                    question: NEAR_MISS.into(),
                    answerable: false,
                    ..Default::default()
                },
                EvalCase {
                    id: "answered".into(),
                    question: ANSWERED.into(),
                    gold: vec!["8 GB".into()],
                    answerable: true,
                    ..Default::default()
                },
            ],
            settings: vec![setting(0.0), setting(1.0)],
            retrieval_only: true,
            ..Default::default()
        },
    )
    .await
    .summary;
    let (never, all) = (&summary.reports[0], &summary.reports[1]);
    assert_eq!((never.abstained, never.false_refusals), (0, 0), "{never:?}");
    assert_eq!((all.abstained, all.false_refusals), (1, 0), "{all:?}");
    assert_eq!((never.recall_at_k, all.recall_at_k), (1, 1));
    assert_eq!(all.refused_with_gold, 0);
    assert_eq!(summary.best, 1, "the level that refuses the near miss");
}
