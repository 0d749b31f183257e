//! Shared helpers of the CLI crate's in-process tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// SmolLM2-135M as scripts/fetch-models lays it out.
pub fn smollm2() -> PathBuf {
    let dir = std::env::var_os("ZHIKU_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join("SmolLM2-135M-Instruct-GGUF");
    assert!(
        dir.is_dir(),
        "{} is missing: run `scripts/fetch-models smollm2` first",
        dir.display()
    );
    dir
}

/// SmolLM2-135M's directory, or None after printing SKIPPED when it is not there (for the
/// tests that may run without it).
pub fn smollm2_or_skip() -> Option<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct-GGUF");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} is missing (scripts/fetch-models smollm2)",
            dir.display()
        );
        None
    }
}

/// `zhiku tune` flags that make SmolLM2 learn one record by heart (40 full steps, every
/// projection adapted, no dropout, no validation split), with `--json` events.
pub const MEMORIZE_FLAGS: &[&str] = &[
    "--epochs",
    "40",
    "--learning-rate",
    "3e-3",
    "--grad-accumulation",
    "1",
    "--target",
    "q,k,v,o,gate,up,down",
    "--dropout",
    "0",
    "--validation",
    "0",
    "--max-seq-len",
    "128",
    "--seed",
    "7",
    "--json",
];

/// The generator's flags for SmolLM2.
pub fn smollm2_args() -> zhiku_generator::GeneratorArgs {
    let mut args = zhiku_generator::GeneratorArgs::for_model(smollm2().to_string_lossy());
    args.gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf".into();
    args
}

pub async fn listener() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// `zhiku --chat-model MODEL tune --data DATA --out OUT ARGS…`, run to its end.
pub fn zhiku_tune(model: &Path, data: &Path, out: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zhiku"))
        .arg("--chat-model")
        .arg(model)
        .args(["tune", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("zhiku runs")
}

/// The `--json` lines of a run that must have succeeded.
pub fn json_events(run: &Output) -> Vec<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "zhiku tune failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every --json line is JSON"))
        .collect()
}
