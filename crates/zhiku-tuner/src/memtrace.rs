//! Where a training step's memory goes, for measuring: with `ZHIKU_TUNE_MEMORY_TRACE` set
//! in the environment, every micro-batch prints to stderr the process's resident memory
//! (`VmRSS`, and its peak `VmHWM`) before the forward pass, after it (with the bytes of the
//! tensors the graph holds from the loss), after the backward pass and once the graph is
//! dropped. Linux only (elsewhere the figures read 0).

use std::collections::HashMap;

use candle_core::Tensor;

/// Whether tracing is on (read once).
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("ZHIKU_TUNE_MEMORY_TRACE").is_some())
}

/// (VmRSS, VmHWM) in bytes.
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Prints one point of a step.
pub(crate) fn point(what: &str) {
    let (rss, hwm) = resident();
    eprintln!(
        "memory: {what:<16} rss {:6.3} GiB  peak {:6.3} GiB",
        gib(rss),
        gib(hwm)
    );
}

/// Prints the tensors the graph of `loss` holds that lead to a variable: how many, and
/// their bytes (tensors sharing a storage counted once, at the largest view of it).
/// Untracked tensors the graph also holds (constant masks, detached operands) are not
/// counted.
pub(crate) fn graph(loss: &Tensor) {
    let mut storages: HashMap<usize, u64> = HashMap::new();
    let nodes = loss.sorted_nodes();
    for t in &nodes {
        let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let (storage, _) = t.storage_and_layout();
        let key = &*storage as *const candle_core::Storage as usize;
        let have = storages.entry(key).or_default();
        *have = (*have).max(bytes);
    }
    let total: u64 = storages.values().sum();
    point("after forward");
    eprintln!(
        "memory: graph: {} nodes, {} storages, {:.3} GiB",
        nodes.len(),
        storages.len(),
        gib(total)
    );
}
