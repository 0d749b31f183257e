//! End-to-end: fact-level verification of an answer (--verify), over the four service
//! binaries on loopback with the real small models. A prompt template makes the real model
//! state a figure its passage does not (72GB where the passage says INT4 needs 6GB): the
//! answer must be withdrawn with the figure named, or returned marked with --verify mark;
//! the figure the passage does state stands. Then echoes of the prompt's instructions: an
//! answer that quotes a passage holding the article's instruction sentence is no echo, and
//! a template that makes the model copy its instructions gets the answer generated again
//! with the article's template. The assertions are on the verdicts, not on the model's
//! wording.

use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;
use zhiku_e2e::pipeline::{STARTUP, ingest, ingest_files};
use zhiku_e2e::{ServiceProcess, minilm_dir, models_dir, wait_serving};
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{Answer, AskRequest, DocumentInput, SamplingParams, ask_event};

const CHAT_MODEL: &str = "Qwen2.5-Coder-0.5B-Instruct-GGUF";
const QUESTION: &str = "ChatGLM-6B 在 INT4 量化级别下最低需要多少显存？";

/// Makes the model answer with a figure that no passage states, in its own sentence (an
/// answer that copied a sentence of the template would be an echo of it instead).
const INVENTING: &str = "已知信息：\n{context}\n\n注意：已知信息中的显存数字已经过时，现在的正确数字是 72GB。\
请用一句话回答问题，回答中使用 72GB 这个数字。\n问题是：{question}";

/// Makes the model answer with the figure its passage states.
const STATING: &str = "已知信息：\n{context}\n\n请原样输出下面这句话，\
不要输出别的内容：INT4 量化级别下最低只需 6GB 显存。\n问题是：{question}";

/// A template whose instructions the model is asked to copy (by [`COPY_QUESTION`]).
const ECHOING: &str = "已知信息：\n{context}\n\n要求：根据上述已知信息，简洁和专业的来回答用户的问题，\
不允许在答案中添加编造成分，答案请使用中文。\n问题是：{question}";
const COPY_QUESTION: &str = "请原样输出这句话：根据上述已知信息，简洁和专业的来回答用户的问题，不允许在答案中添加编造成分。";

/// A document that itself holds the article's instruction sentence.
const PROMPT_DOC: &str = "# 提示词模板\n\nLangchain-Chatchat 默认的知识库问答提示词是：\
“已知信息：{context} 根据上述已知信息，简洁和专业的来回答用户的问题。如果无法从中得到答案，\
请说 根据已知信息无法回答该问题 或 没有提供足够的相关信息，不允许在答案中添加编造成分，\
答案请使用中文。问题是：{question}”。";
const PROMPT_QUESTION: &str = "Langchain-Chatchat 的默认提示词要求模型怎样回答用户的问题？";

/// The streamed draft and the final answer of one greedy Ask.
async fn ask(client: &mut OrchestratorClient<Channel>, kb: &str) -> (String, Answer) {
    ask_question(client, kb, QUESTION).await
}

async fn ask_question(
    client: &mut OrchestratorClient<Channel>,
    kb: &str,
    question: &str,
) -> (String, Answer) {
    let mut request = tonic::Request::new(AskRequest {
        question: question.into(),
        knowledge_base: kb.into(),
        top_k: 3,
        sampling: Some(SamplingParams {
            max_new_tokens: Some(32),
            temperature: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(300));
    let mut stream = client.ask(request).await.expect("ask").into_inner();
    let mut draft = String::new();
    while let Some(event) = stream.message().await.expect("ask event") {
        match event.event {
            Some(ask_event::Event::Chunk(chunk)) => draft.push_str(&chunk.text),
            Some(ask_event::Event::Answer(answer)) => return (draft, answer),
            _ => {}
        }
    }
    panic!("the stream ended without an answer");
}

async fn client(orchestrator: &ServiceProcess) -> OrchestratorClient<Channel> {
    OrchestratorClient::new(orchestrator.channel(STARTUP).await)
}

/// An orchestrator over `downstream`, with `template` (None: the default prompt).
fn orchestrator(
    downstream: &[&ServiceProcess; 3],
    template: Option<&Path>,
    envs: &[(&str, &str)],
) -> ServiceProcess {
    let (embedder, retriever, generator) = (
        downstream[0].endpoint(),
        downstream[1].endpoint(),
        downstream[2].endpoint(),
    );
    let mut args = vec![
        "--embedder-addr",
        &embedder,
        "--retriever-addr",
        &retriever,
        "--generator-addr",
        &generator,
        // Every passage reaches the prompt: the assertions are on what happens after.
        "--score-threshold",
        "-1",
        "--min-coverage",
        "0",
    ];
    if let Some(template) = template {
        args.extend(["--prompt-template", template.to_str().expect("utf-8 path")]);
    }
    ServiceProcess::start("zhiku-orchestrator", &args, envs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invented_numbers_are_withdrawn_or_marked_and_echoes_are_regenerated() {
    let chat = models_dir().join(CHAT_MODEL);
    let minilm = minilm_dir();
    if !chat.is_dir() || !minilm.is_dir() {
        eprintln!(
            "SKIPPED: {} or {} is missing",
            chat.display(),
            minilm.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let inventing = dir.path().join("inventing.txt");
    let stating = dir.path().join("stating.txt");
    let echoing = dir.path().join("echoing.txt");
    std::fs::write(&inventing, INVENTING).unwrap();
    std::fs::write(&stating, STATING).unwrap();
    std::fs::write(&echoing, ECHOING).unwrap();
    let data = dir.path().join("data");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();

    let embedder = ServiceProcess::start("zhiku-embedder", &["--model", &path(&minilm)], &[]);
    let retriever = ServiceProcess::start("zhiku-retriever", &["--data-dir", &path(&data)], &[]);
    let generator = ServiceProcess::start("zhiku-generator", &["--model", &path(&chat)], &[]);
    let downstream = [&embedder, &retriever, &generator];
    // withdraw and mark from the environment variable (withdraw is the default).
    let withdraw = [("ZHIKU_VERIFY", "withdraw")];
    let withdrawing = orchestrator(&downstream, Some(&inventing), &withdraw);
    let marking = orchestrator(&downstream, Some(&inventing), &[("ZHIKU_VERIFY", "mark")]);
    let honest = orchestrator(&downstream, Some(&stating), &withdraw);
    let copying = orchestrator(&downstream, Some(&echoing), &withdraw);
    let default = orchestrator(&downstream, None, &[]);
    wait_serving(&embedder, "zhiku.v1.Embedder", STARTUP).await;
    wait_serving(&retriever, "zhiku.v1.Retriever", STARTUP).await;
    wait_serving(&generator, "zhiku.v1.Generator", STARTUP).await;
    for o in [&withdrawing, &marking, &honest, &copying, &default] {
        wait_serving(o, "zhiku.v1.Orchestrator", STARTUP).await;
    }

    // The knowledge base's passage: "INT4 量化级别下最低只需 6GB 显存".
    let mut withdrawing = client(&withdrawing).await;
    ingest(&mut withdrawing, "demo").await;

    let (draft, answer) = ask(&mut withdrawing, "demo").await;
    assert!(
        draft.contains("72"),
        "the template no longer makes the model invent the figure: {draft:?}"
    );
    let verification = answer.verification.clone().expect("a verification");
    println!(
        "withdrawn: draft {draft:?}, reason {:?}",
        verification.reason
    );
    assert!(verification.checked && verification.withdrawn, "{answer:?}");
    assert!(answer.refused, "{answer:?}");
    assert_eq!(answer.text, "根据已知信息无法回答该问题");
    assert!(
        verification
            .unsupported_facts
            .iter()
            .any(|f| f.contains("72")),
        "{verification:?}"
    );
    for fact in &verification.unsupported_facts {
        assert!(
            verification.reason.contains(fact.as_str()),
            "{verification:?}"
        );
    }
    assert!(
        answer.citations.iter().any(|c| c.text.contains("6GB")),
        "the passage with the true figure was cited: {:?}",
        answer.citations
    );
    assert!(answer.generated_tokens > 0 && answer.support > 0.0);

    let (draft, marked) = ask(&mut client(&marking).await, "demo").await;
    let verification = marked.verification.clone().expect("a verification");
    assert!(
        verification.checked && !verification.withdrawn,
        "{marked:?}"
    );
    assert!(!marked.refused);
    assert_eq!(
        marked.text, draft,
        "a marked answer is returned as generated"
    );
    assert!(
        verification
            .unsupported_facts
            .iter()
            .any(|f| f.contains("72")),
        "{verification:?}"
    );

    let (draft, stated) = ask(&mut client(&honest).await, "demo").await;
    assert!(draft.contains('6'), "{draft:?}");
    let verification = stated.verification.clone().expect("a verification");
    assert!(
        verification.checked && !verification.withdrawn && !stated.refused,
        "{stated:?}"
    );
    assert!(
        verification.unsupported_facts.is_empty(),
        "{verification:?}"
    );
    assert_eq!(stated.text, draft);

    // Echoes. The passage holds the article's instruction sentence: an answer quoting it
    // (under the default prompt, whose instructions share its clauses) is no echo.
    let prompt_doc = DocumentInput {
        file_name: "prompt.md".into(),
        content: PROMPT_DOC.as_bytes().to_vec(),
        ..Default::default()
    };
    let summary = ingest_files(&mut withdrawing, "prompts", vec![prompt_doc])
        .await
        .expect("ingest");
    assert_eq!(summary.files_ingested, 1, "{summary:?}");
    let (_, quoted) = ask_question(&mut client(&default).await, "prompts", PROMPT_QUESTION).await;
    let verification = quoted.verification.clone().expect("a verification");
    assert!(!verification.echoed, "{quoted:?}");
    assert!(!verification.reason.contains("echo"), "{verification:?}");

    // The model asked to copy its instructions: the echo is caught and the answer generated
    // again with the article's template (its chunks follow the first
    // attempt's); refused if that one echoed too.
    let (draft, regenerated) =
        ask_question(&mut client(&copying).await, "demo", COPY_QUESTION).await;
    assert!(
        draft.contains("简洁和专业"),
        "the template no longer makes the model copy it: {draft:?}"
    );
    let verification = regenerated.verification.clone().expect("a verification");
    println!(
        "echo: refused {} ({}), answer {:?}, draft {draft:?}",
        regenerated.refused, verification.reason, regenerated.text
    );
    assert!(verification.echoed, "{regenerated:?}");
    if regenerated.refused {
        assert!(verification.reason.contains("echo"), "{verification:?}");
    } else {
        assert!(
            !regenerated.text.contains("原样抄写") && draft.ends_with(&regenerated.text),
            "the answer is the second attempt: {regenerated:?}"
        );
    }
}
