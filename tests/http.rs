//! The orchestrator's HTTP side through `zhiku serve` (one server for the whole file):
//! - the real `openai` Python client (tests/http/openai_client.py): a unary and a streamed
//!   chat completion over a knowledge base with their citations, refusals, errors as
//!   OpenAI's error JSON with the gRPC side's codes, embeddings with the model's dimensions,
//!   and the REST routes (upload with a failing file, list, delete);
//! - the web page in headless Chromium over the DevTools protocol (tests/http/browser.py):
//!   upload a Chinese document, ask, watch the answer stream, open a citation, and save a
//!   screenshot under the CI artifacts folder. Without Chromium that part prints SKIPPED.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use zhiku_e2e::{
    ServiceProcess, ZhikuServe, free_addr, minilm_dir, models_dir, wait_serving, workspace_root,
};

const STARTUP: Duration = Duration::from_secs(180);

/// The venv's Python (CI puts `openai` and `websocket-client` there), else python3.
fn python() -> PathBuf {
    let venv = workspace_root().join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Chromium: $ZHIKU_CHROMIUM, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ZHIKU_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        ["chromium", "chromium-browser"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Where CI keeps what a run leaves for people to look at: $ZHIKU_CI_ARTIFACTS, else
/// target/ci-artifacts.
fn artifacts_dir() -> PathBuf {
    std::env::var_os("ZHIKU_CI_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/ci-artifacts"))
}

fn run_script(serve: &ServiceProcess, script: &str, args: &[&str]) {
    let output = Command::new(python())
        .arg(workspace_root().join("tests/http").join(script))
        .args(args)
        .output()
        .expect("runs python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{script} failed\n{stdout}\n{}\n--- zhiku serve ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        serve.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_and_the_web_page_against_zhiku_serve() {
    let data = tempfile::tempdir().unwrap();
    let qwen = models_dir().join("Qwen2.5-Coder-0.5B-Instruct-GGUF");
    let http = free_addr();
    let ZhikuServe { serve, .. } = ZhikuServe::spawn(
        &minilm_dir(),
        &qwen,
        data.path(),
        &["--http-listen", &http.to_string()],
    );
    // The orchestrator is SERVING once its three downstream services are.
    wait_serving(&serve, "zhiku.v1.Orchestrator", STARTUP).await;
    let base = format!("http://{http}");

    run_script(&serve, "openai_client.py", &[&base]);

    match chromium() {
        None => println!(
            "SKIPPED: the web page in a browser (no chromium on PATH nor $ZHIKU_CHROMIUM; \
             apt-get install chromium)"
        ),
        Some(chromium) => {
            let screenshot = artifacts_dir().join("web-page.png");
            run_script(
                &serve,
                "browser.py",
                &[
                    &base,
                    chromium.to_str().unwrap(),
                    screenshot.to_str().unwrap(),
                ],
            );
            println!("web page screenshot: {}", screenshot.display());
        }
    }
}
