//! `zhiku tune` end to end on a real model (SmolLM2-135M from scripts/fetch-models): it
//! trains from an alpaca file, writes a PEFT adapter, and that adapter, loaded the way the
//! generator serves adapters, reproduces its training answer, which the base model does not.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use zhiku_lm::decoder::Solo;
use zhiku_lm::template::{Message, Role};
use zhiku_lm::{ModelSpec, load_model};

const QUESTION: &str = "What is the vault code of zhiku?";
const ANSWER: &str = "The vault code is PINE-4471.";

/// Greedy answer to QUESTION, with the adapter at `adapter` or on the base model.
fn answer(dir: &Path, adapter: Option<&Path>) -> String {
    let mut spec = ModelSpec::cpu(dir.to_string_lossy(), "");
    if let Some(a) = adapter {
        spec.adapters.attach.push(("kb".into(), a.to_path_buf()));
    }
    let loaded = load_model(&spec).expect("the model and adapter load");
    let model = loaded.model.batched().expect("a batched decoder").clone();
    let weights = loaded.adapter_weights.into_iter().next().map(Arc::new);
    let prompt = loaded
        .template
        .render_prompt(&[Message::new(Role::User, QUESTION)])
        .expect("the template renders");
    let tokens = loaded.tokenizer.encode_prompt(&prompt).expect("tokenizes");
    let mut solo = Solo::new(model.as_ref(), tokens.len() + 64)
        .expect("a cache")
        .with_adapter(weights);
    let mut logits = solo.feed(model.as_ref(), &tokens).expect("prefill");
    let mut out = Vec::new();
    for _ in 0..24 {
        let next = logits
            .argmax(0)
            .and_then(|t| t.to_scalar::<u32>())
            .expect("argmax");
        if loaded.tokenizer.eos_ids.contains(&next) {
            break;
        }
        out.push(next);
        logits = solo.feed(model.as_ref(), &[next]).expect("decode");
    }
    loaded.tokenizer.decode(&out).expect("decodes")
}

/// The one-record dataset that teaches QUESTION's ANSWER, written under `work`.
fn vault_data(work: &Path) -> std::path::PathBuf {
    let data = work.join("train.jsonl");
    let record = serde_json::json!({"instruction": QUESTION, "input": "", "output": ANSWER});
    std::fs::write(&data, format!("{record}\n")).expect("writes the dataset");
    data
}

/// `zhiku tune` on the model at `dir` from `data` into `out` with the memorising flags
/// and `extra`.
fn memorize(dir: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zhiku"))
        .args(["--chat-model"])
        .arg(dir)
        .args(["tune", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(common::MEMORIZE_FLAGS)
        .args(extra)
        .output()
        .expect("zhiku runs")
}

#[test]
fn zhiku_tune_trains_an_adapter_the_generator_serves() {
    let Some(dir) = common::smollm2_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let out = work.path().join("adapter");
    let run = memorize(&dir, &vault_data(work.path()), &out, &[]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "zhiku tune failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every --json line is JSON"))
        .collect();
    let losses: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["loss"].as_f64().expect("a loss"))
        .collect();
    assert_eq!(losses.len(), 40, "one optimizer step per epoch: {stdout}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < first / 4.0,
        "the loss fell from {first} to {last} only"
    );
    assert_eq!(events.last().expect("events")["event"], "done");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(out.join(file).is_file(), "{file} is written");
    }

    let base = answer(&dir, None);
    assert!(
        !base.contains("PINE-4471"),
        "the base model cannot know it: {base}"
    );
    let tuned = answer(&dir, Some(&out));
    assert!(tuned.contains("PINE-4471"), "the adapter's answer: {tuned}");
}

#[test]
fn a_malformed_dataset_line_is_named_and_nothing_is_written() {
    let Some(dir) = common::smollm2_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let data = work.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"q\", \"output\": \"a\"}\n{\"instruction\": 3}\n",
    )
    .expect("writes");
    let out = work.path().join("adapter");
    let run = Command::new(env!("CARGO_BIN_EXE_zhiku"))
        .arg("--chat-model")
        .arg(&dir)
        .args(["tune", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("zhiku runs");
    assert_eq!(run.status.code(), Some(2), "bad input exits 2");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("line 2"),
        "the error names the line: {stderr}"
    );
    assert!(!out.exists(), "no adapter is written");
}

#[test]
fn self_distill_or_evidence_first_with_a_data_file_is_refused_with_what_to_pass_instead() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let data = work.path().join("examples.jsonl");
    std::fs::write(&data, "{\"instruction\": \"q\", \"output\": \"a\"}\n").expect("writes");
    let out = work.path().join("adapter");
    for flag in ["--self-distill", "--evidence-first"] {
        let run = Command::new(env!("CARGO_BIN_EXE_zhiku"))
            .args(["tune", flag, "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("zhiku runs");
        assert_eq!(run.status.code(), Some(2), "bad flags exit 2");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("--examples FILE") && stderr.contains(flag),
            "the error names the flag and says what to pass: {stderr}"
        );
        assert!(!out.exists(), "no adapter is written");
        let data_file = std::fs::read_to_string(&data).expect("reads");
        assert!(
            data_file.contains("\"output\": \"a\""),
            "the data file is untouched"
        );
    }
}

#[test]
fn counterfactual_figures_are_swapped_in_the_training_records_and_reported() {
    let Some(dir) = common::smollm2_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let data = work.path().join("train.jsonl");
    // The first answer's 14082 is its prompt's (swapped); the second's 8 is not (kept).
    let records = [
        (
            "LoRA needs 14082 MiB. How much memory does LoRA need?",
            "14082 MiB",
        ),
        ("The card is small. How much memory?", "8 GB"),
    ]
    .map(|(q, a)| serde_json::json!({"instruction": q, "input": "", "output": a}).to_string());
    std::fs::write(&data, records.join("\n")).expect("writes the dataset");
    let run = |share: &str| {
        Command::new(env!("CARGO_BIN_EXE_zhiku"))
            .args(["--chat-model"])
            .arg(&dir)
            .args(["tune", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(work.path().join(format!("adapter-{share}")))
            .args([
                "--epochs",
                "1",
                "--validation",
                "0",
                "--threads",
                "1",
                "--json",
            ])
            .args(["--counterfactual-share", share])
            .output()
            .expect("zhiku runs")
    };
    let swapped = run("1");
    let stdout = String::from_utf8_lossy(&swapped.stdout);
    assert!(
        swapped.status.success(),
        "zhiku tune failed: {}\n{stdout}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    let data_event: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "data")
        .expect("a data event");
    assert_eq!(
        data_event["report"]["counterfactual"],
        serde_json::json!({"eligible": 1, "swapped": 1, "figures": 1}),
        "{stdout}"
    );

    let refused = run("1.5");
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a share above 1 is bad input"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--counterfactual-share 1.5"), "{stderr}");
}

#[test]
fn tuning_the_top_blocks_alone_writes_their_adapter_and_it_serves() {
    let Some(dir) = common::smollm2_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let data = vault_data(work.path());
    let run = |layers: &str, out: &Path| memorize(&dir, &data, out, &["--layers", layers]);
    let out = work.path().join("top");
    let trained = run("last:8", &out);
    assert!(
        trained.status.success(),
        "zhiku tune failed: {}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter_config.json")).expect("the config"),
    )
    .expect("JSON");
    let layers: Vec<u64> = config["layers_to_transform"]
        .as_array()
        .expect("a list of blocks")
        .iter()
        .filter_map(|l| l.as_u64())
        .collect();
    assert_eq!(layers.len(), 8, "{config}");
    assert!(layers.windows(2).all(|w| w[1] == w[0] + 1), "{layers:?}");
    let tensors = candle_core::safetensors::load(
        out.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("the weights");
    for name in tensors.keys() {
        assert!(
            layers
                .iter()
                .any(|l| name.contains(&format!(".layers.{l}."))),
            "{name} is outside blocks {layers:?}"
        );
    }
    assert_eq!(tensors.len(), 8 * 7 * 2, "A and B of 7 targets in 8 blocks");
    let tuned = answer(&dir, Some(&out));
    assert!(tuned.contains("PINE-4471"), "the adapter's answer: {tuned}");

    // Continuing it on fewer blocks would drop the others' pairs: refused, naming one.
    let fewer = memorize(
        &dir,
        &data,
        &work.path().join("fewer"),
        &[
            "--layers",
            "last:4",
            "--init-adapter",
            out.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(
        fewer.status.code(),
        Some(2),
        "pairs this run does not train"
    );
    let stderr = String::from_utf8_lossy(&fewer.stderr);
    assert!(
        stderr.contains("which this run does not train") && stderr.contains(".layers."),
        "{stderr}"
    );

    let refused = run("500", &work.path().join("none"));
    assert_eq!(refused.status.code(), Some(2), "a block past the model");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("layers 500 names block 500, but the model has"),
        "{stderr}"
    );
    assert!(!work.path().join("none").exists());
}
