//! The Qdrant server of an end-to-end run: the one `scripts/qdrant-test-server` started
//! (`ZHIKU_TEST_QDRANT_URL`). The cluster tests start their own nodes with the retriever's
//! helpers (`crates/zhiku-retriever/tests/common/qdrant_node.rs`): the retriever's on its
//! Store API, `tests/qdrant_cluster.rs` through the four processes.

use std::io::Write;

/// Says on stderr, past the test harness's capture, that `what` was skipped and why: a
/// skipped test must not read as a plain `ok`.
pub fn skipped(what: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}

/// The Qdrant server of this test run (`ZHIKU_TEST_QDRANT_URL`), if there is one.
pub fn test_url() -> Option<String> {
    std::env::var("ZHIKU_TEST_QDRANT_URL")
        .ok()
        .filter(|u| !u.is_empty())
}
