//! `zhiku tune`'s job on a tiny ChatGLM-6B written as a user's checkpoint directory
//! (`zhiku_lm::tiny::write_chatglm6b_model`): the model loads for training, its records
//! render with `[gMASK] <sop>` after each prompt and the prompt read both ways, packed
//! training lowers the loss, and a PEFT adapter is written.

use std::ops::ControlFlow;

use candle_core::Device;
use zhiku_tuner::dataset::parse_conversations;
use zhiku_tuner::job::{JobBase, JobEvent, JobParams, run_job};

/// Alpaca records in the tiny model's words: a prompt of a few words, a two-word answer.
fn records() -> String {
    (0..6)
        .map(|i| {
            format!(
                r#"{{"instruction": "w{} w{} w{}", "output": "w{} w{}"}}"#,
                i,
                i + 7,
                i + 14,
                30 + i,
                36 - i
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn tune_trains_a_chatglm6b_adapter_and_the_loss_falls() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    zhiku_lm::tiny::write_chatglm6b_model(&model, 3).unwrap();
    let base = JobBase {
        model: model.display().to_string(),
        gguf_file: String::new(),
        models_dir: work.path().join("models"),
        device: Device::Cpu,
    };
    let conversations = parse_conversations(&records(), "records.jsonl").unwrap();
    let mut params = JobParams {
        epochs: 15,
        batch_size: 1,
        grad_accumulation: 1,
        learning_rate: 1e-2,
        validation: 0.0,
        packing: true,
        // Rows of two examples (8 tokens each): three steps an epoch.
        max_seq_len: 16,
        threads: Some(1),
        ..JobParams::default()
    };
    params.lora.dropout = 0.0;
    params.lora.targets = ["q", "k", "v", "o", "up", "down"]
        .map(String::from)
        .to_vec();
    let out = work.path().join("adapter");
    let mut losses = Vec::new();
    let mut rendered = None;
    let outcome = run_job(
        &base,
        &conversations,
        "records.jsonl",
        &params,
        &out,
        &mut |event| {
            match event {
                JobEvent::Data { report, .. } => rendered = Some(report.clone()),
                JobEvent::Epoch { train_loss, .. } => losses.push(train_loss),
                _ => {}
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let report = rendered.expect("the records were rendered");
    assert_eq!(report.examples, 6);
    // Each example: its prompt, `[gMASK] <sop>`, then two answer words and `<eop>`.
    assert_eq!(report.answer_tokens, 6 * 3);
    assert_eq!(outcome.train_examples, 6);
    assert_eq!(losses.len(), 15);
    eprintln!("ChatGLM-6B epochs' training loss: {losses:.4?}");
    assert!(
        losses[14] < 0.5 * losses[0],
        "the loss did not fall: {losses:?}"
    );
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(outcome.adapter.join(file).is_file(), "{file} is missing");
    }
}
