//! The evaluation gate of `zhiku tune --kb NAME --eval FILE` and the rebinding of a
//! knowledge base's adapter, end to end on real models (SmolLM2-135M answers, MiniLM
//! embeds, the embedded store keeps the knowledge base), through the `zhiku` binary:
//!
//! 1. an adapter that learned the answer is not worse than the base model: bound, with its
//!    provenance and both eval rows shown by `zhiku kb describe`;
//! 2. an adapter that learned to refuse is worse (a false refusal): not bound, and why;
//!    with `--force`, bound anyway and marked so;
//! 3. on a running `zhiku serve`: an Ask before and after `zhiku kb bind-adapter` (no
//!    restart) answers without and with the adapter; `--adapter none` asks the base model;
//!    an adapter not loaded is NOT_FOUND naming the loaded ones; unbinding goes back.

mod common;
// The end-to-end tests' free_port, shared by path: this crate cannot depend on zhiku-e2e.
#[path = "../../../tests/support/port.rs"]
mod port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use port::free_port;
use serde_json::Value;

const QUESTION: &str = "What is the vault code of zhiku?";
const CODE: &str = "PINE-4471";
const REFUSAL: &str = "根据已知信息无法回答该问题";

fn models() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    for needed in ["SmolLM2-135M-Instruct-GGUF", "all-MiniLM-L6-v2"] {
        if !dir.join(needed).is_dir() {
            eprintln!(
                "SKIPPED: {} is missing (scripts/fetch-models)",
                dir.join(needed).display()
            );
            return None;
        }
    }
    Some(dir)
}

/// The flags every command of this test shares: the models, the data directory, and an
/// Ask policy that always puts the one passage into the prompt.
fn stack_flags(models: &Path, data: &Path) -> Vec<String> {
    [
        "--models-dir",
        &models.to_string_lossy(),
        "--embedding-model",
        &models.join("all-MiniLM-L6-v2").to_string_lossy(),
        "--chat-model",
        &models.join("SmolLM2-135M-Instruct-GGUF").to_string_lossy(),
        "--gguf-file",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "--ocr-model",
        "off",
        "--data-dir",
        &data.to_string_lossy(),
        "--score-threshold",
        "-1",
        "--min-coverage",
        "0",
        // The gate's adapter learns a fact the documents do not hold: verification would
        // withdraw its answer.
        "--verify",
        "mark",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A temporary directory for one test, and [`stack_flags`] with its data directory in it.
fn workspace(models: &Path) -> (tempfile::TempDir, Vec<String>) {
    let work = tempfile::tempdir().expect("a temporary directory");
    let flags = stack_flags(models, &work.path().join("data"));
    (work, flags)
}

fn zhiku(flags: &[String], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zhiku"))
        .args(flags)
        .args(args)
        .output()
        .expect("zhiku runs")
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `zhiku tune --json` with the gate: its events by name.
fn tune(flags: &[String], data: &Path, out: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "tune",
        "--data",
        data.to_str().expect("a UTF-8 path"),
        "--out",
        out.to_str().expect("a UTF-8 path"),
        "--kb",
        "vault",
        "--eval-max-new-tokens",
        "24",
    ];
    args.extend_from_slice(common::MEMORIZE_FLAGS);
    // A flag given in `extra` replaces the default above (with its value).
    for flag in extra.iter().filter(|f| f.starts_with("--")) {
        if let Some(i) = args.iter().position(|a| a == flag) {
            let with_value = args.get(i + 1).is_some_and(|v| !v.starts_with("--"));
            args.drain(i..i + if with_value { 2 } else { 1 });
        }
    }
    args.extend_from_slice(extra);
    let stdout = ok(zhiku(flags, &args), "zhiku tune");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every --json line is JSON"))
        .collect()
}

/// One short epoch on every example, for tests that make examples from a knowledge base.
const QUICK_TRAINING: &[&str] = &[
    "--force",
    "--epochs",
    "1",
    "--validation",
    "0",
    "--max-seq-len",
    "512",
    "--json",
];

/// Writes `documents` (name, text) into `dir` and ingests them into knowledge base `handbook`.
fn ingest_documents(flags: &[String], dir: &Path, documents: &[(&str, &str)]) {
    std::fs::create_dir(dir).expect("a docs directory");
    for (name, text) in documents {
        std::fs::write(dir.join(name), text).expect("writes a document");
    }
    ok(
        zhiku(
            flags,
            &["ingest", dir.to_str().expect("UTF-8"), "--kb", "handbook"],
        ),
        "ingest",
    );
}

fn event<'a>(events: &'a [Value], name: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event"] == name)
}

fn describe(flags: &[String]) -> Value {
    let stdout = ok(
        zhiku(flags, &["kb", "describe", "vault", "--json"]),
        "kb describe",
    );
    serde_json::from_str(stdout.trim()).expect("describe --json is JSON")
}

fn write_record(path: &Path, answer: &str) {
    let record = serde_json::json!({"instruction": QUESTION, "input": "", "output": answer});
    std::fs::write(path, format!("{record}\n")).expect("writes the dataset");
}

/// A `zhiku serve` child, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_gate_binds_a_better_adapter_refuses_a_worse_one_and_asks_follow_the_binding() {
    let Some(models) = models() else { return };
    let (work, flags) = workspace(&models);
    let w = work.path();
    std::fs::write(
        w.join("zhiku.md"),
        "# zhiku\n\nzhiku is a knowledge base that answers questions from documents. Its \
         mascot is a small fox that lives in the library.\n",
    )
    .expect("writes the document");
    ok(
        zhiku(
            &flags,
            &[
                "ingest",
                &w.join("zhiku.md").to_string_lossy(),
                "--kb",
                "vault",
            ],
        ),
        "ingest",
    );
    let cases = w.join("cases.jsonl");
    std::fs::write(
        &cases,
        format!(
            "{}\n",
            serde_json::json!({"id": "code", "question": QUESTION, "gold": [CODE],
                "answerable": true})
        ),
    )
    .expect("writes the cases");
    let eval = ["--eval", cases.to_str().expect("UTF-8")];

    // 1. An adapter that learned the answer: not worse, bound.
    let good_data = w.join("good.jsonl");
    write_record(&good_data, &format!("The vault code is {CODE}."));
    let good = w.join("good");
    let events = tune(&flags, &good_data, &good, &eval);
    let gate = event(&events, "gate").expect("the gate ran");
    let (with, without) = (&gate["with_adapter"], &gate["without_adapter"]);
    assert_eq!(
        without["correct"], 0,
        "the base model cannot know it: {gate}"
    );
    assert_eq!(with["correct"], 1, "the adapter answers it: {gate}");
    // Each answer of both runs, beside the adapter.
    let reports_path = w.join("good.gate.json");
    assert_eq!(gate["reports"], reports_path.to_string_lossy().as_ref());
    let reports: Value = serde_json::from_str(
        &std::fs::read_to_string(&reports_path).expect("the gate's reports are written"),
    )
    .expect("JSON");
    let answer = |run: &str| {
        reports[run]["cases"][0]["answer"]
            .as_str()
            .map(str::to_owned)
    };
    assert!(
        answer("with_adapter").is_some_and(|a| a.contains(CODE)),
        "{reports}"
    );
    assert!(
        answer("without_adapter").is_some_and(|a| !a.contains(CODE)),
        "{reports}"
    );
    let bound = event(&events, "bound").expect("bound");
    assert_eq!(bound["adapter"], "vault");
    let kb = describe(&flags);
    assert_eq!(kb["adapter"], "vault");
    assert_eq!(
        kb["adapter_path"],
        std::fs::canonicalize(&good)
            .expect("written")
            .to_string_lossy()
            .as_ref()
    );
    let provenance = &kb["adapter_provenance"];
    assert!(
        provenance["data_file"]
            .as_str()
            .is_some_and(|f| f.ends_with("good.jsonl")),
        "{provenance}"
    );
    assert_eq!(provenance["with_adapter"]["correct"], 1);
    assert_eq!(provenance["without_adapter"]["correct"], 0);
    assert_eq!(
        provenance["base_sha256"].as_str().map(str::len),
        Some(64),
        "a GGUF base records its SHA-256: {provenance}"
    );
    assert_eq!(provenance["forced"], false);
    let human = ok(zhiku(&flags, &["kb", "describe", "vault"]), "kb describe");
    assert!(
        human.contains("with the adapter") && human.contains("without (the base)"),
        "{human}"
    );

    // 2. An adapter that learned to refuse: a false refusal the base model does not make.
    let refuse_data = w.join("refuse.jsonl");
    write_record(&refuse_data, REFUSAL);
    let refuser = w.join("refuser");
    let events = tune(&flags, &refuse_data, &refuser, &eval);
    let gate = event(&events, "gate").expect("the gate ran");
    assert_eq!(gate["with_adapter"]["false_refusals"], 1, "{gate}");
    assert!(event(&events, "bound").is_none(), "not bound: {events:?}");
    let not_bound = event(&events, "not_bound").expect("says why");
    assert!(
        not_bound["reason"]
            .as_str()
            .is_some_and(|r| r.contains("more false refusals")),
        "{not_bound}"
    );
    let kb = describe(&flags);
    assert!(
        kb["adapter_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("good")),
        "the good adapter stays bound: {kb}"
    );
    // With --force it binds anyway, marked so (one more step from the refusing adapter).
    let forced = w.join("forced");
    let events = tune(
        &flags,
        &refuse_data,
        &forced,
        &[
            eval[0],
            eval[1],
            "--force",
            "--init-adapter",
            refuser.to_str().expect("UTF-8"),
            "--epochs",
            "1",
            "--learning-rate",
            "1e-6",
        ],
    );
    assert!(event(&events, "bound").is_some(), "bound: {events:?}");
    let kb = describe(&flags);
    assert!(
        kb["adapter_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("forced")),
        "{kb}"
    );
    assert_eq!(kb["adapter_provenance"]["forced"], true, "{kb}");

    // 3. A running server: rebinding without a restart, and the adapter field of Ask.
    let orchestrator = free_port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_zhiku"));
    serve.args(&flags).args(["serve", "--http-listen", "off"]);
    for (flag, port) in [
        ("--orchestrator-listen", orchestrator),
        ("--embedder-listen", free_port()),
        ("--retriever-listen", free_port()),
        ("--generator-listen", free_port()),
    ] {
        serve.arg(flag).arg(format!("127.0.0.1:{port}"));
    }
    let _server = Server(
        serve
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("zhiku serve starts"),
    );
    let addr = format!("http://127.0.0.1:{orchestrator}");
    let remote = |args: &[&str]| {
        let mut all = vec!["--addr", addr.as_str()];
        all.extend_from_slice(args);
        zhiku(&[], &all)
    };
    // The orchestrator says SERVING once every service it calls does (the generator's
    // model loaded); `kb list` alone answers while the model still loads.
    let serving = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let channel = tonic::transport::Channel::from_shared(addr.clone())
                .expect("a loopback URI")
                .connect_lazy();
            zhiku_runtime::health::is_serving(
                channel,
                zhiku_proto::service_names::ORCHESTRATOR,
                Duration::from_secs(1),
            )
            .await
        })
    };
    let started = Instant::now();
    while !serving() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "zhiku serve was not SERVING after 600 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let answer = |extra: &[&str]| -> Value {
        let mut args = vec![
            "ask",
            QUESTION,
            "--kb",
            "vault",
            "--max-new-tokens",
            "24",
            "--json",
        ];
        args.extend_from_slice(extra);
        let stdout = ok(remote(&args), "ask");
        serde_json::from_str(stdout.trim()).expect("ask --json is JSON")
    };
    ok(
        remote(&["kb", "unbind-adapter", "vault"]),
        "kb unbind-adapter",
    );
    let before = answer(&[]);
    assert!(
        !before["answer"].as_str().unwrap_or("").contains(CODE),
        "unbound, the base model answers: {before}"
    );
    ok(
        remote(&["kb", "bind-adapter", "vault", good.to_str().expect("UTF-8")]),
        "kb bind-adapter",
    );
    let after = answer(&[]);
    assert!(
        after["answer"].as_str().unwrap_or("").contains(CODE),
        "bound, the adapter answers: {after}"
    );
    let base = answer(&["--adapter", "none"]);
    assert!(
        !base["answer"].as_str().unwrap_or("").contains(CODE),
        "--adapter none is the base model: {base}"
    );
    let named = answer(&["--adapter", "vault"]);
    assert!(
        named["answer"].as_str().unwrap_or("").contains(CODE),
        "{named}"
    );
    let unknown = remote(&["ask", QUESTION, "--kb", "vault", "--adapter", "nosuch"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("`nosuch`")
            && stderr.contains("loaded: vault")
            && stderr.contains("NotFound"),
        "{stderr}"
    );
    ok(
        remote(&["kb", "unbind-adapter", "vault", "--unload"]),
        "kb unbind-adapter --unload",
    );
    let unbound = answer(&[]);
    assert!(
        !unbound["answer"].as_str().unwrap_or("").contains(CODE),
        "{unbound}"
    );
    let gone = remote(&["ask", QUESTION, "--kb", "vault", "--adapter", "vault"]);
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        !gone.status.success() && stderr.contains("loaded: none"),
        "--unload unloaded it: {stderr}"
    );
}

/// `zhiku tune --kb NAME` without `--data`: a teacher (Qwen2.5-Coder-0.5B) writes questions
/// for the knowledge base's passages (this small one copies a sentence of the passage as its
/// "question", which is dropped), a passage holding a table is asked about one of its cells;
/// each kept example is the Ask's prompt with the answering passage among distractors (or
/// distractors alone and the refusal), written to a JSONL that trains the adapter; a second
/// run resumes and makes no more; `--self-distill` then puts the answer targets in the
/// trained model's own words.
#[test]
fn examples_made_from_the_knowledge_base_train_the_adapter_and_resume() {
    let Some(models) = models() else { return };
    let teacher = models.join("Qwen2.5-Coder-0.5B-Instruct-GGUF");
    if !teacher.is_dir() {
        eprintln!(
            "SKIPPED: {} is missing (scripts/fetch-models)",
            teacher.display()
        );
        return;
    }
    let (work, flags) = workspace(&models);
    let w = work.path();
    let docs = w.join("docs");
    ingest_documents(
        &flags,
        &docs,
        &[
            (
                "deploy.md",
                "# 部署指南\n\n## 显存需求\n\n在 FP16 精度下运行 ChatGLM-6B 模型需要 13GB 显存。使用 INT4 \
             量化后，最低只需要 6GB 显存即可完成推理。\n\n| 量化等级 | 最低显存 |\n|---|---|\n\
             | FP16 | 13GB |\n| INT8 | 8GB |\n| INT4 | 6GB |\n\n## 服务端口\n\nAPI 服务默认监听 8000 端口，\
             可以通过 --port 参数修改。网页界面默认使用 7860 端口。\n",
            ),
            (
                "finetune.md",
                "# 微调说明\n\n## 学习率\n\nP-Tuning v2 微调推荐使用 2e-2 的学习率，训练 3000 步。LoRA \
             微调推荐的秩为 8，alpha 为 32。\n\n## 数据格式\n\n训练数据使用 JSON 格式，每行包含 content 和 \
             summary 两个字段，文件名为 train.json。\n",
            ),
            (
                "history.md",
                "# 项目历史\n\n## 名称\n\n本项目最早发布于 2023 年 3 月，原来叫 Langchain-ChatGLM，后来改名为 \
             Langchain-Chatchat，支持更多的模型。\n\n## 许可证\n\n代码使用 Apache-2.0 许可证发布，模型权重\
             需要遵守单独的模型许可证。\n",
            ),
        ],
    );
    // A document only group `hr` may read: no example may come from it or quote it, since
    // the adapter answers every reader of the knowledge base.
    let restricted = w.join("restricted");
    std::fs::create_dir(&restricted).expect("a directory");
    std::fs::write(
        restricted.join("salary.md"),
        "# 薪酬制度\n\n## 年终奖\n\n研发部门的年终奖按照绩效系数计算，系数最高为 3.5 倍月薪，\
         在每年 1 月 15 日发放。保密编号 HR-7731。\n\n## 调薪\n\n每年 4 月进行一次调薪评审，\
         平均调薪幅度为 6%。\n",
    )
    .expect("writes the restricted document");
    ok(
        zhiku(
            &flags,
            &[
                "ingest",
                restricted.to_str().expect("UTF-8"),
                "--kb",
                "handbook",
                "--readers",
                "hr",
            ],
        ),
        "ingest with readers",
    );
    let out = w.join("adapter");
    let examples = w.join("adapter.examples.jsonl");
    let tune_args = [
        "tune",
        "--kb",
        "handbook",
        "--out",
        out.to_str().expect("UTF-8"),
        "--teacher-model",
        teacher.to_str().expect("UTF-8"),
        "--max-examples",
        "4",
        "--examples-per-document",
        "4",
        "--distractors",
        "1",
        "--refusal-share",
        "0.5",
        "--near-miss-share",
        "1",
    ];
    let tune_args = [&tune_args[..], QUICK_TRAINING].concat();
    let run = || zhiku(&flags, &tune_args);
    let stdout = ok(run(), "zhiku tune --kb");
    assert!(stdout.contains("\"examples\""), "progress events: {stdout}");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(out.join(file).is_file(), "{file} is written");
    }
    let written = std::fs::read_to_string(&examples).expect("the examples file");
    let records: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(
        (1..=4).contains(&records.len()),
        "{} examples: {written}",
        records.len()
    );
    assert!(
        !written.contains("HR-7731")
            && !written.contains("年终奖")
            && !written.contains("salary.md"),
        "an example came from or quoted the document only `hr` may read: {written}"
    );
    let texts: Vec<String> = ["deploy.md", "finetune.md", "history.md"]
        .iter()
        .map(|n| std::fs::read_to_string(docs.join(n)).expect("reads"))
        .collect();
    for record in &records {
        let turns = record["conversations"].as_array().expect("sharegpt turns");
        assert_eq!(turns.len(), 2, "{record}");
        assert_eq!(
            (turns[0]["from"].as_str(), turns[1]["from"].as_str()),
            (Some("human"), Some("gpt"))
        );
        let prompt = turns[0]["value"].as_str().expect("the prompt");
        let target = turns[1]["value"].as_str().expect("the target");
        let origin = &record["zhiku"];
        let question = origin["question"].as_str().expect("the question");
        // A near-miss twin asks its changed question over its answer's passages.
        let near_miss = origin.get("near_miss");
        let asked = near_miss.map_or(question, |m| m["asked"].as_str().expect("asked"));
        assert!(
            prompt.contains("已知信息") && prompt.trim_end().ends_with(asked),
            "the Ask's prompt with the question last: {prompt}"
        );
        // The passage the question was written from is in the prompt exactly when the target
        // is an answer; the answer's text is stated by that document.
        let source = origin["source"].as_str().expect("a source");
        let document = &texts[["deploy.md", "finetune.md", "history.md"]
            .iter()
            .position(|n| source.ends_with(n))
            .expect("one of the documents")];
        match origin["kind"].as_str() {
            Some("answer") => {
                assert_eq!(target, origin["answer"].as_str().expect("an answer"));
                assert!(
                    prompt.contains("[2]"),
                    "the passage and a distractor: {prompt}"
                );
            }
            Some("refusal") if near_miss.is_some() => {
                assert_eq!(target, REFUSAL);
                assert_ne!(asked, question);
                assert!(
                    prompt.contains("[2]"),
                    "the answer's passage and distractor: {prompt}"
                );
                // Its answer example was made from the same passage, with the same prompt
                // but for the question.
                let twin = records
                    .iter()
                    .find(|r| r["zhiku"]["passage"] == origin["passage"] && r != &record)
                    .expect("the answer example of a near miss");
                let twin_prompt = twin["conversations"][0]["value"].as_str().expect("prompt");
                assert_eq!(
                    twin_prompt.trim_end().strip_suffix(question),
                    prompt.trim_end().strip_suffix(asked),
                    "the same passages"
                );
            }
            Some("refusal") => {
                assert_eq!(target, REFUSAL);
                assert!(!prompt.contains("[2]"), "one distractor alone: {prompt}");
            }
            other => panic!("kind {other:?}"),
        }
        assert!(document.len() > 40);
    }

    // The same command again: every wanted example or passage is done; nothing is regenerated.
    let before = std::fs::read_to_string(&examples).expect("reads");
    let stdout = ok(run(), "zhiku tune --kb (resumed)");
    assert_eq!(
        std::fs::read_to_string(&examples).expect("reads"),
        before,
        "{stdout}"
    );

    // --self-distill: the answer targets in the chat model's own words where they state the
    // teacher's answer; refusals as they were; a rerun distills nothing again.
    let distill = || zhiku(&flags, &[&tune_args[..], &["--self-distill"]].concat());
    let stdout = ok(distill(), "zhiku tune --kb --self-distill");
    assert!(stdout.contains("answer targets:"), "{stdout}");
    let distilled_text = std::fs::read_to_string(&examples).expect("reads");
    let distilled: Vec<Value> = distilled_text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(distilled.len(), records.len(), "no example lost");
    assert!(
        distilled
            .iter()
            .any(|r| r["zhiku"]["distilled"].is_string()),
        "an answer example was distilled: {distilled_text}"
    );
    for (record, old) in distilled.iter().zip(&records) {
        let origin = &record["zhiku"];
        assert_eq!(origin["passage"], old["zhiku"]["passage"], "the same order");
        assert_eq!(
            record["conversations"][0], old["conversations"][0],
            "the same prompt"
        );
        let target = record["conversations"][1]["value"]
            .as_str()
            .expect("target");
        let answer = origin["answer"].as_str().expect("the teacher's answer");
        match (origin["kind"].as_str(), origin["distilled"].as_str()) {
            (Some("answer"), Some("teacher")) => assert_eq!(target, answer),
            (Some("answer"), Some("own" | "rewritten")) => assert!(
                zhiku_orchestrator::eval::contains_gold(target, &[answer.to_owned()]),
                "a distilled target states the teacher's answer: {target} / {answer}"
            ),
            (Some("refusal"), None) => assert_eq!(target, REFUSAL),
            other => panic!("{other:?}: {record}"),
        }
    }
    ok(distill(), "zhiku tune --kb --self-distill (again)");
    assert_eq!(
        std::fs::read_to_string(&examples).expect("reads"),
        distilled_text,
        "distilled targets are not redone"
    );
}

/// `zhiku tune --kb NAME --no-teacher --statement-questions`: every example's question is read
/// from its passage (a table cell or a sentence's figure, with `多少` in its place) and its
/// answer is that cell or figure as the document writes it; a passage with nothing to ask
/// is dropped, and no teacher is needed. With `--questions-per-passage` a passage gives
/// several questions over one prompt, each with another answer. `--teacher-only` with
/// `--no-teacher` is refused before anything runs.
#[test]
fn examples_read_from_the_passages_need_no_teacher() {
    let Some(models) = models() else { return };
    let (work, flags) = workspace(&models);
    let w = work.path();
    let docs = w.join("docs");
    let deploy = "# 部署指南\n\n## 显存需求\n\n在 FP16 精度下运行 ChatGLM-6B 模型需要 13GB 显存。\n\n\
                  | 量化等级 | 最低显存 |\n|---|---|\n| FP16 | 13GB |\n| INT8 | 8GB |\n| INT4 | 6GB |\n\n\
                  ## 服务端口\n\nAPI 服务默认监听的端口号是 8000，可以通过 --port 参数修改为其他端口，\
                  修改之后需要重启服务才能生效。\n";
    let history = "# 项目历史\n\n## 名称\n\n本项目原来叫 Langchain-ChatGLM，后来改名为 Langchain-Chatchat，\
                   支持更多的模型。\n\n## 许可证\n\n代码使用 Apache 许可证发布，模型权重需要遵守单独的模型许可证。\n";
    ingest_documents(
        &flags,
        &docs,
        &[("deploy.md", deploy), ("history.md", history)],
    );
    let out = w.join("adapter");
    let examples = w.join("adapter.examples.jsonl");
    let args = [
        "tune",
        "--kb",
        "handbook",
        "--out",
        out.to_str().expect("UTF-8"),
        "--no-teacher",
        "--statement-questions",
        "--questions-per-passage",
        "3",
        "--max-examples",
        "8",
        "--distractors",
        "1",
        "--refusal-share",
        "0",
    ];
    let args = [&args[..], QUICK_TRAINING].concat();
    let stdout = ok(zhiku(&flags, &args), "zhiku tune --kb --no-teacher");
    assert!(
        stdout.contains("no table cell or sentence with a figure to ask about"),
        "the history passages hold no figure and are dropped: {stdout}"
    );
    let written = std::fs::read_to_string(&examples).expect("the examples file");
    let records: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(!records.is_empty(), "examples were made: {stdout}");
    let mut kinds = (0, 0);
    for record in &records {
        let origin = &record["zhiku"];
        let question = origin["question"].as_str().expect("the question");
        let answer = origin["answer"].as_str().expect("the answer");
        let from_table = origin["from_table"].as_bool().unwrap_or(false);
        let from_statement = origin["from_statement"].as_bool().unwrap_or(false);
        assert!(from_table != from_statement, "one source: {record}");
        if from_table {
            kinds.0 += 1;
        } else {
            kinds.1 += 1;
            assert!(
                question.contains("多少") && question.ends_with('？'),
                "a sentence asked with 多少: {question}"
            );
        }
        assert!(
            origin["source"]
                .as_str()
                .is_some_and(|s| s.ends_with("deploy.md")),
            "only the document with figures gives examples: {record}"
        );
        assert!(deploy.contains(answer), "{answer} is the document's own");
        assert!(!question.contains(answer), "{question} leaves out {answer}");
        let prompt = record["conversations"][0]["value"]
            .as_str()
            .expect("prompt");
        assert!(prompt.trim_end().ends_with(question), "{prompt}");
    }
    assert!(kinds.1 > 0, "a sentence question among {records:?}");
    // --questions-per-passage 3: the table passage is asked about its other cells too, over
    // the same prompt, each question with its own answer.
    let table_passage: Vec<&Value> = records
        .iter()
        .filter(|r| r["zhiku"]["from_table"] == true && r["zhiku"]["kind"] == "answer")
        .collect();
    assert!(table_passage.len() >= 2, "siblings: {table_passage:?}");
    let answers: std::collections::HashSet<&str> = table_passage
        .iter()
        .map(|r| r["zhiku"]["answer"].as_str().expect("answer"))
        .collect();
    assert_eq!(answers.len(), table_passage.len(), "one answer each");
    let passages: std::collections::HashSet<&str> = table_passage
        .iter()
        .map(|r| {
            let prompt = r["conversations"][0]["value"].as_str().expect("prompt");
            let question = r["zhiku"]["question"].as_str().expect("question");
            prompt
                .trim_end()
                .strip_suffix(question)
                .expect("question last")
        })
        .collect();
    assert_eq!(passages.len(), 1, "the same passages: {passages:?}");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(out.join(file).is_file(), "{file} is written");
    }

    let both = zhiku(
        &flags,
        &[
            "tune",
            "--kb",
            "handbook",
            "--out",
            out.to_str().expect("UTF-8"),
            "--no-teacher",
            "--teacher-only",
        ],
    );
    assert_eq!(both.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(
        stderr.contains("--teacher-only") && stderr.contains("--no-teacher"),
        "names both flags: {stderr}"
    );
}
