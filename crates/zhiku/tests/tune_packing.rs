//! `zhiku tune --packing` end to end on a tiny chat model the test writes
//! (`zhiku_lm::tiny::write_chat_model`): the records are packed into fewer rows than
//! examples, an epoch takes as many steps as the rows need, the adapter is written; and
//! rows longer than the model's context are refused with exit status 2 and a message.

mod common;

use std::path::Path;
use std::process::Output;

/// `zhiku tune` of the tiny model at `model` on `data` into `out`, with `extra`.
fn tune(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let flags = [
        "--epochs",
        "2",
        "--grad-accumulation",
        "1",
        "--rank",
        "2",
        "--validation",
        "0",
        "--threads",
        "1",
        "--json",
    ];
    common::zhiku_tune(model, data, out, &[&flags[..], extra].concat())
}

/// Records of varied lengths that fit the tiny model's context with ChatML around them.
fn write_records(path: &Path) {
    let lines: String = (0..8)
        .map(|i| {
            let record = serde_json::json!({
                "instruction": format!("q{i}"),
                "output": "ab ".repeat(1 + 3 * (i % 4)),
            });
            format!("{record}\n")
        })
        .collect();
    std::fs::write(path, lines).expect("writes the dataset");
}

#[test]
fn zhiku_tune_packing_trains_on_fewer_fuller_rows() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let model = work.path().join("model");
    std::fs::create_dir_all(&model).expect("a model directory");
    let file = zhiku_lm::tiny::write_chat_model(&model, 11).expect("writes the tiny model");
    let data = work.path().join("train.jsonl");
    write_records(&data);

    let events = common::json_events;
    let padded = events(&tune(
        &file,
        &data,
        &work.path().join("padded"),
        &["--max-seq-len", "60", "--batch-size", "2"],
    ));
    let packed_out = work.path().join("packed");
    let packed = events(&tune(
        &file,
        &data,
        &packed_out,
        &["--max-seq-len", "60", "--batch-size", "2", "--packing"],
    ));
    let data_event = |events: &[serde_json::Value]| {
        events
            .iter()
            .find(|e| e["event"] == "data")
            .cloned()
            .expect("a data event")
    };
    let (p, q) = (data_event(&padded), data_event(&packed));
    assert_eq!(p["packing"], false);
    assert_eq!(q["packing"], true);
    assert_eq!(p["train"], 8);
    assert_eq!(p["rows"], 8, "one example a row");
    let rows = q["rows"].as_u64().expect("rows");
    assert!(rows < 8, "packed into fewer rows: {q}");
    let share = |e: &serde_json::Value| e["padding_share"].as_f64().expect("a share");
    assert!(share(&q) < share(&p), "less padding: {p} vs {q}");
    let steps = |events: &[serde_json::Value]| {
        events.iter().filter(|e| e["event"] == "step").count() as u64
    };
    assert_eq!(steps(&padded), 2 * 4, "8 rows, 2 a step, 2 epochs");
    assert_eq!(steps(&packed), 2 * rows.div_ceil(2));
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(packed_out.join(file).is_file(), "{file}");
    }

    // Rows past the tiny model's context (64 tokens) cannot be packed.
    let refused = tune(
        &file,
        &data,
        &work.path().join("refused"),
        &["--max-seq-len", "4096", "--packing"],
    );
    assert_eq!(refused.status.code(), Some(2), "bad input exits 2");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("packing") && stderr.contains("context"),
        "{stderr}"
    );
    assert!(!work.path().join("refused").exists(), "nothing written");
}
