//! The GPU benchmark's program, end to end on the CPU: `gpu-bench --shape tiny` writes a
//! checkpoint of GLM-4-9B-chat's layout and LoRA adapters, loads them as the GPU would (bf16,
//! tensor ops, adapters kept unmerged) and prints every row against a roofline. Everything
//! but CUDA itself; no timings are asserted.

use std::path::Path;
use std::process::{Command, Output};

/// gpu-bench on the CPU on a tiny checkpoint under `model`, with `args`.
fn gpu_bench(model: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpu-bench"))
        .args(["--shape", "tiny", "--device", "cpu", "--dir"])
        .arg(model)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn gpu_bench_runs_its_whole_program_on_a_tiny_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    #[rustfmt::skip]
    let out = gpu_bench(&model, &[
        "--batches", "1,5", "--prefill-tokens", "24,40", "--prefill-chunk", "32",
        "--stream-prompt-tokens", "8", "--decode-tokens", "4", "--runs", "1",
        "--adapters", "2", "--adapter-rank", "4",
        "--bandwidth-tbs", "0.001", "--peak-tflops", "0.01",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for dir_entry in [
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
    ] {
        assert!(dir.path().join(dir_entry).is_file(), "{dir_entry}");
    }
    for adapter in ["adapter-r4-0", "adapter-r4-1"] {
        let peft = dir.path().join("model").join(adapter);
        assert!(peft.join("adapter_config.json").is_file(), "{adapter}");
        assert!(
            peft.join("adapter_model.safetensors").is_file(),
            "{adapter}"
        );
    }
    assert!(stdout.contains("glm4"), "{stdout}");
    assert!(stdout.contains("(flags)"), "{stdout}");
    // Two sets of rows: the base model, then the adapters mixed in.
    for (row, adapters) in [
        ("decode, batch 1", [0, 1]),
        ("decode, batch 5", [0, 2]),
        ("prefill, 24-token prompt", [0, 1]),
        ("prefill, 40-token prompt", [0, 1]),
    ] {
        for a in adapters {
            let line = format!("| {row} | {a} | ");
            let found = stdout.lines().find(|l| l.starts_with(&line));
            let found = found.unwrap_or_else(|| panic!("no row `{line}` in\n{stdout}"));
            // tok/s, both rooflines and the share of the lower one: all numbers.
            let cells: Vec<&str> = found.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 6, "{found}");
            for cell in &cells[2..5] {
                assert!(cell.parse::<f64>().is_ok(), "{found}");
            }
            assert!(cells[5].ends_with('%'), "{found}");
        }
    }
    // A second run finds the checkpoint and adapters and does not rewrite them.
    #[rustfmt::skip]
    let again = gpu_bench(&model, &[
        "--batches", "2", "--prefill-tokens", "8", "--decode-tokens", "2",
        "--runs", "1", "--adapters", "2", "--adapter-rank", "4",
    ]);
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{again_out}");
    assert!(!again_out.contains("wrote "), "{again_out}");
}
