//! `zhiku tune --checkpoint-every N` and `--resume DIR` on a real model (SmolLM2-135M from
//! scripts/fetch-models): a run resumed from a checkpoint (with `--gradient-checkpointing`,
//! which gives the same gradients) ends with the adapter of the run that never stopped, and
//! a resume with another flag is refused with a message that names it.

mod common;

use std::path::Path;
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use zhiku_tuner::peft::read_adapter;

/// `zhiku tune` on `data` into `out` with the run's flags and `extra`.
fn tune(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let flags = [
        "--epochs",
        "4",
        "--grad-accumulation",
        "1",
        "--learning-rate",
        "1e-3",
        "--warmup-steps",
        "2",
        "--dropout",
        "0.1",
        "--validation",
        "0",
        "--max-seq-len",
        "96",
        "--threads",
        "1",
        "--json",
    ];
    common::zhiku_tune(model, data, out, &[&flags[..], extra].concat())
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("values")
}

#[test]
fn a_resumed_run_ends_with_the_adapter_of_the_run_that_never_stopped() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let data = work.path().join("train.jsonl");
    let records = [
        (
            "What is the vault code of zhiku?",
            "The vault code is PINE-4471.",
        ),
        ("Who keeps the vault?", "The night librarian keeps it."),
    ];
    let lines: String = records
        .iter()
        .map(|(q, a)| format!("{}\n", serde_json::json!({"instruction": q, "output": a})))
        .collect();
    std::fs::write(&data, lines).expect("writes the dataset");

    // The whole run, with checkpoints after steps 3 and 6 (of 8).
    let straight = work.path().join("straight");
    let events = common::json_events(&tune(
        &model,
        &data,
        &straight,
        &["--checkpoint-every", "3"],
    ));
    let steps: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(steps.len(), 8);
    let written: Vec<bool> = steps.iter().map(|e| !e["checkpoint"].is_null()).collect();
    assert_eq!(
        written,
        [false, false, true, false, false, true, false, false]
    );
    let checkpoints = work.path().join("straight.checkpoints");
    let step_3 = checkpoints.join("step-0000000003");
    assert!(
        step_3.join("state.json").is_file(),
        "the default checkpoint directory"
    );

    // Resumed from step 3 (mid-epoch 2), recomputing activations in the backward pass.
    let resumed = work.path().join("resumed");
    let resume = step_3.to_string_lossy().into_owned();
    let events = common::json_events(&tune(
        &model,
        &data,
        &resumed,
        &["--resume", &resume, "--gradient-checkpointing"],
    ));
    assert_eq!(events[1]["event"], "resume", "{events:?}");
    let steps: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_u64().expect("a step"))
        .collect();
    assert_eq!(steps, [4, 5, 6, 7, 8]);
    let a = read_adapter(&straight, &Device::Cpu).expect("the straight adapter");
    let b = read_adapter(&resumed, &Device::Cpu).expect("the resumed adapter");
    assert_eq!(a.pairs.len(), b.pairs.len());
    let mut worst = 0f32;
    for (p, q) in a.pairs.iter().zip(&b.pairs) {
        assert_eq!(p.module, q.module);
        for (x, y) in [(&p.a, &q.a), (&p.b, &q.b)] {
            for (u, v) in values(x).iter().zip(values(y)) {
                worst = worst.max((u - v).abs());
            }
        }
    }
    assert!(worst <= 1e-6, "the adapters differ by {worst}");

    // Another rank, or other data, is refused with what differs.
    let run = tune(
        &model,
        &data,
        &work.path().join("other"),
        &["--resume", &checkpoints.to_string_lossy(), "--rank", "4"],
    );
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("rank 8") && stderr.contains("rank 4"),
        "{stderr}"
    );
    assert!(stderr.contains("step-0000000006"), "the newest: {stderr}");
    let fewer = work.path().join("fewer.jsonl");
    let first = std::fs::read_to_string(&data).expect("reads");
    std::fs::write(&fewer, first.lines().next().expect("a line")).expect("writes");
    let run = tune(
        &model,
        &fewer,
        &work.path().join("other"),
        &["--resume", &resume],
    );
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("cannot resume"), "{stderr}");
    assert!(!work.path().join("other").exists(), "nothing is written");
}
