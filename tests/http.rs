//! The orchestrator's HTTP side through `zhiku serve` (one server for the whole file, with
//! API keys and TLS on every listener, from a CA the test makes):
//! - the real `openai` Python client (tests/http/openai_client.py): a unary and a streamed
//!   chat completion over a knowledge base with their citations, refusals, errors as
//!   OpenAI's error JSON with the gRPC side's codes, embeddings with the model's dimensions,
//!   the REST routes (upload with a failing file, list, delete), and the keys: a bad or no
//!   key refused with 401, a read-only key that may ask but gets 403 on uploads and deletes;
//!   `/metrics` over https on the HTTP port and on `--metrics-listen`;
//! - the web page in headless Chromium over the DevTools protocol (tests/http/browser.py):
//!   the 401 and 403 messages until a key is set in the page's key field, then upload a
//!   Chinese document, ask, watch the answer stream, open a citation, and save a
//!   screenshot under the CI artifacts folder. Without Chromium that part prints SKIPPED.

use std::path::PathBuf;
use std::process::Command;

use zhiku_e2e::{
    ServiceProcess, ZhikuServe, free_addr, minilm_dir, models_dir, test_certificates,
    tls_and_key_flags, workspace_root,
};

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

const FULL_KEY: &str = "full-key-of-the-http-test";
const READ_ONLY_KEY: &str = "read-only-key-of-the-http-test";

#[test]
fn the_openai_client_and_the_web_page_against_zhiku_serve() {
    let data = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(data.path());
    let qwen = models_dir().join("Qwen2.5-Coder-0.5B-Instruct-GGUF");
    let (http, metrics) = (free_addr(), free_addr());
    let (http_arg, metrics_arg) = (http.to_string(), metrics.to_string());
    // Keys and TLS on every listener: the scripts wait for /healthz (open) over https.
    let ZhikuServe { serve, .. } = ZhikuServe::spawn(
        &minilm_dir(),
        &qwen,
        &data.path().join("data"),
        &[
            "--http-listen",
            http_arg.as_str(),
            "--metrics-listen",
            metrics_arg.as_str(),
        ]
        .into_iter()
        .chain(tls_and_key_flags(&cert, &key, FULL_KEY, READ_ONLY_KEY))
        .collect::<Vec<_>>(),
    );
    let base = format!("https://localhost:{}", http.port());
    let metrics_url = format!("https://localhost:{}/metrics", metrics.port());

    run_script(
        &serve,
        "openai_client.py",
        &[&base, &ca, FULL_KEY, READ_ONLY_KEY, &metrics_url],
    );
    assert!(
        !serve.logs().contains(FULL_KEY),
        "a key in the log\n{}",
        serve.logs()
    );

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
                    FULL_KEY,
                    READ_ONLY_KEY,
                ],
            );
            println!("web page screenshot: {}", screenshot.display());
        }
    }
}
