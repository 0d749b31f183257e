//! Shared helpers of the CLI crate's in-process tests.
#![allow(dead_code)]

use std::path::PathBuf;

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
