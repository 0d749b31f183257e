//! End-to-end through `zhiku serve` (all four services in one process) and the `zhiku` CLI:
//! every grpcurl example of the book runs against the live server, and the CLI ingests a
//! directory holding a corrupt pdf and a binary file, answers and refuses.

use std::process::Command;
use std::time::Duration;

use zhiku_e2e::{
    ZhikuServe, binary, grpcurl, minilm_dir, models_dir, wait_serving, workspace_root,
};

const STARTUP: Duration = Duration::from_secs(180);

/// The book's pages in reading order: the links of docs/src/SUMMARY.md.
fn book_pages() -> Vec<std::path::PathBuf> {
    let src = workspace_root().join("docs/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("docs/src/SUMMARY.md");
    summary
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|link| link.ends_with(".md"))
        .map(|link| src.join(link))
        .collect()
}

/// The grpcurl commands of a page's `sh` blocks, in order, continuation lines joined.
fn grpcurl_commands(markdown: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_shell = line == "```sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        let line = line.trim();
        if pending.is_empty() && !line.starts_with("grpcurl ") {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// Every grpcurl command of the book's `sh` blocks (docs/src), page by page in SUMMARY.md's
/// order (the grpcurl guide's Ingest comes before the calls that read what it wrote).
fn book_grpcurl_commands() -> Vec<String> {
    book_pages()
        .iter()
        .flat_map(|page| {
            let text =
                std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            grpcurl_commands(&text)
        })
        .collect()
}

#[test]
fn the_book_holds_the_grpcurl_examples() {
    let commands = book_grpcurl_commands();
    for command in &commands {
        println!("{command}");
    }
    assert!(commands.len() >= 8, "{commands:?}");
    let position = |method: &str| commands.iter().position(|c| c.contains(method));
    let ingest = position("Orchestrator/Ingest").expect("an Ingest example");
    let ask = position("Orchestrator/Ask").expect("an Ask example");
    assert!(
        ingest < ask,
        "the Ask example runs before anything was ingested"
    );
    // A code block that is not `sh` is not run.
    assert!(grpcurl_commands("```text\ngrpcurl -plaintext localhost:1 list\n```\n").is_empty());
    assert_eq!(
        grpcurl_commands("```sh\ngrpcurl -d '{}' \\\n  localhost:1 a/B\necho\n```\n"),
        ["grpcurl -d '{}'  localhost:1 a/B"]
    );
}

fn zhiku(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary("zhiku"))
        .args(args)
        .env("ZHIKU_MODELS_DIR", models_dir())
        .output()
        .expect("runs zhiku");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zhiku_serve_runs_the_readme_examples_and_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let served = tempfile::tempdir().unwrap();
    let ingest_root = served.path().join("root");
    std::fs::create_dir_all(ingest_root.join("kb/sub")).unwrap();
    std::fs::write(ingest_root.join("kb/a.txt"), "阿敏喜欢吐槽小拾。").unwrap();
    std::fs::write(served.path().join("secret.txt"), "outside").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("..", ingest_root.join("kb/sub/up")).unwrap();
    let qwen = models_dir().join("Qwen2.5-Coder-0.5B-Instruct-GGUF");
    let minilm = minilm_dir();
    let stack = ZhikuServe::spawn(
        &minilm,
        &qwen,
        data.path(),
        &["--ingest-root", ingest_root.to_str().unwrap()],
    );
    let serve = &stack.serve;
    let (orchestrator, embedder, retriever, generator) =
        (serve.addr, stack.embedder, stack.retriever, stack.generator);
    wait_serving(serve, "zhiku.v1.Orchestrator", STARTUP).await;
    for (addr, service) in [
        (embedder, "zhiku.v1.Embedder"),
        (retriever, "zhiku.v1.Retriever"),
        (generator, "zhiku.v1.Generator"),
    ] {
        let status = zhiku_e2e::health(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
            service,
        );
        let deadline = std::time::Instant::now() + STARTUP;
        let mut status = status.await;
        while status.as_ref().ok()
            != Some(&tonic_health::pb::health_check_response::ServingStatus::Serving)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{service} not serving\n{}",
                serve.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            status = zhiku_e2e::health(channel, service).await;
        }
    }

    // Every grpcurl example of the book, against the live server.
    let commands = book_grpcurl_commands();
    assert!(commands.len() >= 8, "{commands:?}");
    let grpcurl_path = grpcurl();
    for command in &commands {
        let concrete = command
            .replacen("grpcurl", &grpcurl_path.to_string_lossy(), 1)
            .replace("localhost:50051", &orchestrator.to_string())
            .replace("localhost:50052", &embedder.to_string())
            .replace("localhost:50053", &retriever.to_string())
            .replace("localhost:50054", &generator.to_string());
        let output = Command::new("sh")
            .arg("-c")
            .arg(&concrete)
            .output()
            .expect("sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "book example failed: {command}\n{}\n{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        if command.contains("Orchestrator/Ask") {
            assert!(stdout.contains("\"answer\""), "{stdout}");
        }
        if command.contains("Orchestrator/Ingest") {
            assert!(stdout.contains("\"filesIngested\": 1"), "{stdout}");
        }
    }

    // The CLI against the running server: a directory with a corrupt pdf and a binary file.
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(
        docs.path().join("good.txt"),
        "小拾喜欢玩手机、打游戏、看电影。阿敏喜欢吐槽小拾。",
    )
    .unwrap();
    std::fs::write(
        docs.path().join("notes.md"),
        "# 笔记\n\n知识库问答先检索段落，再让模型回答。",
    )
    .unwrap();
    std::fs::write(
        docs.path().join("broken.pdf"),
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage",
    )
    .unwrap();
    std::fs::write(
        docs.path().join("blob.bin"),
        (0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let url = format!("http://{orchestrator}");
    let (code, stdout, stderr) = zhiku(&[
        "ingest",
        docs.path().to_str().unwrap(),
        "--kb",
        "cli",
        "--addr",
        &url,
    ]);
    assert_ne!(
        code, 0,
        "failures must make the exit code non-zero\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ingested 2 file(s)"), "{stdout}\n{stderr}");
    assert!(stdout.contains("broken.pdf"), "{stdout}");
    assert!(stdout.contains("blob.bin"), "{stdout}");

    let (code, stdout, stderr) = zhiku(&[
        "ask",
        "小拾喜欢做什么？",
        "--kb",
        "cli",
        "--json",
        "--max-new-tokens",
        "40",
        "--addr",
        &url,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(answer["refused"], false);
    assert!(answer["answer"].as_str().unwrap().chars().count() > 0);
    assert!(
        answer["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["source"] == "good.txt"),
        "{answer}"
    );
    assert!(answer["timings"]["total_ms"].as_f64().unwrap() > 0.0);

    let (code, stdout, _) = zhiku(&[
        "ask",
        "量子计算机的纠错码有哪些种类？",
        "--kb",
        "cli",
        "--json",
        "--threshold",
        "0.8",
        "--addr",
        &url,
    ]);
    assert_eq!(code, 0);
    let refused: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(refused["refused"], true);
    assert_eq!(refused["answer"], "根据已知信息无法回答该问题");

    let (code, stdout, _) = zhiku(&["kb", "list", "--addr", &url]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("cli") && stdout.contains("demo"),
        "{stdout}"
    );
    let (code, stdout, _) = zhiku(&["docs", "list", "--kb", "cli", "--addr", &url]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("good.txt") && stdout.contains("notes.md"),
        "{stdout}"
    );
    let (code, stdout, _) = zhiku(&["docs", "delete", "--kb", "cli", "good.txt", "--addr", &url]);
    assert_eq!(code, 0, "{stdout}");
    // Same-named files in two directories are two documents.
    let tree = tempfile::tempdir().unwrap();
    for (dir, text) in [("a", "小拾喜欢看电影。"), ("b", "阿敏喜欢吐槽小拾。")] {
        std::fs::create_dir_all(tree.path().join(dir)).unwrap();
        std::fs::write(tree.path().join(dir).join("README.md"), text).unwrap();
    }
    let a = tree.path().join("a/README.md");
    let b = tree.path().join("b/README.md");
    let (code, stdout, stderr) = zhiku(&[
        "ingest",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--kb",
        "pair",
        "--addr",
        &url,
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("ingested 2 file(s)"), "{stdout}");
    assert_eq!(documents(&url, "pair"), ["a/README.md", "b/README.md"]);

    // A symlink loop is ingested once; a 200 MiB file fails alone and the rest goes on.
    #[cfg(unix)]
    std::os::unix::fs::symlink("..", tree.path().join("b/up")).unwrap();
    std::fs::File::create(tree.path().join("b/big.txt"))
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let (code, stdout, stderr) = zhiku(&[
        "ingest",
        tree.path().to_str().unwrap(),
        "--kb",
        "tree",
        "--addr",
        &url,
    ]);
    assert_ne!(code, 0, "the big file failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("ingested 2 file(s)"), "{stdout}\n{stderr}");
    assert!(stdout.contains("b/big.txt: too large"), "{stdout}");
    assert_eq!(documents(&url, "tree"), ["a/README.md", "b/README.md"]);

    // Server-side paths: the loop under the ingest root is walked once, and every path
    // outside the root gets the same answer, whether it exists or not.
    let mut client = zhiku_proto::v1::orchestrator_client::OrchestratorClient::new(
        tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let secret = served.path().join("secret.txt");
    let summary = ingest_paths(
        &mut client,
        "served",
        &[
            "kb",
            "../secret.txt",
            secret.to_str().unwrap(),
            "../missing.txt",
        ],
    )
    .await;
    assert_eq!(summary.files_ingested, 1, "{summary:?}");
    assert_eq!(summary.files_failed, 3, "{summary:?}");
    let reasons: Vec<&str> = summary
        .errors
        .iter()
        .map(|e| e.rsplit(": ").next().unwrap())
        .collect();
    assert_eq!(reasons, ["outside the ingest root"; 3], "{summary:?}");
    #[cfg(unix)]
    assert_eq!(summary.files_skipped, 1, "{summary:?}");
    assert_eq!(documents(&url, "served"), ["kb/a.txt"]);

    // A client that goes away mid-answer: CANCELLED in the log, not an error.
    let mut request = zhiku_proto::v1::AskRequest {
        question: "知识库问答先做什么？请详细地说。".into(),
        knowledge_base: "cli".into(),
        sampling: Some(zhiku_proto::v1::SamplingParams {
            max_new_tokens: Some(400),
            ..Default::default()
        }),
        ..Default::default()
    };
    request.top_k = 3;
    // No threshold: the note must reach the prompt, or the Ask is refused without
    // generating (nothing to cancel). The question is on the note, the one document of
    // `cli` left by now, so its passage covers it.
    request.score_threshold = Some(-1.0);
    let mut stream = client.ask(request).await.unwrap().into_inner();
    loop {
        let event = stream.message().await.unwrap();
        let Some(event) = event else {
            panic!("the answer came before any chunk: refused without generating?");
        };
        match event.event {
            Some(zhiku_proto::v1::ask_event::Event::Chunk(_)) => break,
            Some(zhiku_proto::v1::ask_event::Event::Answer(answer)) => {
                panic!("an answer before any chunk: {answer:?}")
            }
            _ => {}
        }
    }
    drop(stream);
    zhiku_e2e::wait_log(serve, "the client went away; the ask stopped", STARTUP).await;
    let logs = serve.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("the client went away; the ask stopped"))
        .unwrap();
    assert!(
        line.contains("INFO") && line.contains("CANCELLED"),
        "{line}"
    );
    assert!(!logs.contains("internal error"), "{logs}");

    let (code, stdout, stderr) = zhiku(&["kb", "delete", "nope-kb", "--addr", &url]);
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains("NotFound")
            || stderr.contains("not found")
            || stderr.contains("no knowledge base"),
        "{stderr}"
    );
}

/// The document ids of a knowledge base, from `zhiku docs list`.
fn documents(url: &str, kb: &str) -> Vec<String> {
    let (code, stdout, stderr) = zhiku(&["docs", "list", "--kb", kb, "--addr", url]);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Ingests server-side `paths`; the summary.
async fn ingest_paths(
    client: &mut zhiku_proto::v1::orchestrator_client::OrchestratorClient<
        tonic::transport::Channel,
    >,
    kb: &str,
    paths: &[&str],
) -> zhiku_proto::v1::IngestSummary {
    let mut stream = client
        .ingest(zhiku_proto::v1::IngestRequest {
            knowledge_base: kb.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            create_if_missing: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(zhiku_proto::v1::ingest_event::Event::Summary(summary)) = event.event {
            return summary;
        }
    }
    panic!("no summary");
}

/// Runs `zhiku ARGS` in process (no --addr) on MiniLM and SmolLM2, its store in `data`,
/// with no log filter from the environment.
fn in_process(data: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let minilm = minilm_dir();
    let smollm = models_dir().join("SmolLM2-135M-Instruct-GGUF");
    let output = Command::new(binary("zhiku"))
        .args(args)
        .args(["--embedding-model", minilm.to_str().unwrap()])
        .args(["--chat-model", smollm.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap()])
        .env("ZHIKU_MODELS_DIR", models_dir())
        .env_remove("ZHIKU_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("runs zhiku");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_cli_runs_the_pipeline_in_process_without_a_server() {
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| in_process(data.path(), args);
    let (code, stdout, stderr) = run(&["kb", "create", "local"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("created `local` (384 dimensions)"),
        "{stdout}"
    );
    // The embedded store persists between runs.
    let (code, stdout, stderr) = run(&["kb", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("local"), "{stdout}");
}

/// Lines of other crates' operator logs that an in-process command must not print: the
/// orchestrator's readiness while its services load, and qdrant-edge's start-up warnings.
fn operator_noise(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| {
            line.contains(" WARN ")
                || line.contains("Feature flags not initialized")
                || line.contains("MULTI_MMAP_SUPPORT_CHECK_RESULT")
        })
        .collect()
}

#[test]
fn the_in_process_cli_prints_only_its_own_output() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(
        docs.path().join("handbook.md"),
        "# 手册\n\n小拾喜欢在周末做木工，做过一把椅子和一张书桌。\n",
    )
    .unwrap();
    let run = |args: &[&str]| in_process(data.path(), args);
    let (code, stdout, stderr) = run(&["ingest", docs.path().to_str().unwrap(), "--kb", "quiet"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("ingested 1 file(s)"), "{stdout}\n{stderr}");
    assert_eq!(operator_noise(&stderr), Vec::<&str>::new(), "{stderr}");

    let (code, stdout, stderr) = run(&[
        "ask",
        "小拾周末喜欢做什么？",
        "--kb",
        "quiet",
        "--max-new-tokens",
        "16",
        "--threshold",
        "-1",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        !stdout.trim().is_empty(),
        "an answer or the refusal\n{stderr}"
    );
    assert_eq!(operator_noise(&stderr), Vec::<&str>::new(), "{stderr}");

    // --log asks for the services' warnings: the same command shows them again.
    let (code, stdout, stderr) = run(&["kb", "list", "--log", "warn"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(!operator_noise(&stderr).is_empty(), "{stderr}");
}

/// An idle `zhiku serve` says nothing after start-up at the default level: the services'
/// health probes, the readiness polling and the retriever's optimiser log at DEBUG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_zhiku_serve_logs_nothing_for_a_minute() {
    let data = tempfile::tempdir().unwrap();
    let smollm = models_dir().join("SmolLM2-135M-Instruct-GGUF");
    let stack = ZhikuServe::spawn_with_env(
        &minilm_dir(),
        &smollm,
        data.path(),
        &[],
        &[("ZHIKU_LOG", "info")],
    );
    wait_serving(&stack.serve, "zhiku.v1.Orchestrator", STARTUP).await;
    // The last start-up lines (every service ready) land within moments of SERVING.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = stack.serve.logs();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = stack.serve.logs();
    let new = after.get(before.len()..).unwrap_or_default();
    assert!(
        new.trim().is_empty(),
        "an idle zhiku serve logged in a minute:\n{new}"
    );
}
