//! PEFT adapters: written in PEFT's layout, read back, loaded by the generator's own
//! `LoraAdapter::load`, and adapters as PEFT writes them read by zhiku.

use std::path::Path;

mod common;

use candle_core::{DType, Device, Tensor};
use common::values;
use zhiku_lm::lora::LoraAdapter;
use zhiku_tuner::peft::{BaseModel, read_adapter, write_adapter};
use zhiku_tuner::{LoraInit, LoraSpec, TrainedPair, TuneError, sha256_file};

fn spec() -> LoraSpec {
    LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.05,
        targets: vec!["q".into(), "v".into()],
        init: LoraInit::Gaussian,
        layers: zhiku_tuner::LayerSelection::All,
    }
}

fn pairs() -> Vec<TrainedPair> {
    let device = Device::Cpu;
    (0..2)
        .flat_map(|layer| {
            [("q_proj", 16, 16), ("v_proj", 16, 8)].map(|(leaf, input, output)| TrainedPair {
                module: format!("model.layers.{layer}.self_attn.{leaf}"),
                a: Tensor::randn(0f32, 1.0, (4, input), &device).unwrap(),
                b: Tensor::randn(0f32, 1.0, (output, 4), &device).unwrap(),
            })
        })
        .collect()
}

#[test]
fn an_adapter_round_trips_and_the_generator_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let base_file = dir.path().join("base.gguf");
    std::fs::write(&base_file, b"abc").unwrap();
    let base = BaseModel::new("SmolLM2-135M-Instruct.Q4_1.gguf", Some(&base_file)).unwrap();
    assert_eq!(
        base.sha256.as_deref(),
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let out = dir.path().join("adapters/kb-lora");
    let trained = pairs();
    write_adapter(&out, &trained, &spec(), &base).unwrap();

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["lora_dropout"], 0.05);
    assert_eq!(config["bias"], "none");
    assert_eq!(config["init_lora_weights"], "gaussian");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert_eq!(
        config["base_model_name_or_path"],
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    );
    assert_eq!(config["zhiku"]["base_sha256"], base.sha256.clone().unwrap());
    let names: Vec<String> =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(
        names
            .contains(&"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight".to_owned())
    );
    assert_eq!(names.len(), 8);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("adapters"))
        .unwrap()
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary directory is left");

    let read = read_adapter(&out, &Device::Cpu).unwrap();
    assert_eq!((read.rank, read.alpha, read.dropout), (4, 8.0, 0.05));
    assert_eq!(
        read.base_model.as_deref(),
        Some("SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    assert_eq!(read.zhiku.unwrap().targets, ["q", "v"]);
    assert_eq!(read.pairs.len(), trained.len());
    for pair in &trained {
        let back = read.pairs.iter().find(|p| p.module == pair.module).unwrap();
        assert_eq!(values(&back.a), values(&pair.a));
        assert_eq!(values(&back.b), values(&pair.b));
    }

    // What the generator serves: zhiku-lm's loader, same modules, same tensors.
    let served = LoraAdapter::load("kb", &out, DType::F32, &Device::Cpu).unwrap();
    assert_eq!((served.rank, served.alpha), (4, 8.0));
    assert_eq!(served.target_modules, ["q_proj", "v_proj"]);
    assert_eq!(served.pairs.len(), trained.len());
    for pair in &trained {
        let loaded = &served.pairs[&pair.module];
        assert_eq!(values(&loaded.a), values(&pair.a));
        assert_eq!(values(&loaded.b), values(&pair.b));
        assert_eq!(loaded.scale, 2.0);
    }

    // Writing again replaces the adapter whole.
    let mut kaiming = spec();
    kaiming.init = LoraInit::Kaiming;
    write_adapter(
        &out,
        &trained[..1],
        &kaiming,
        &BaseModel::new("hub/id", None).unwrap(),
    )
    .unwrap();
    let read = read_adapter(&out, &Device::Cpu).unwrap();
    assert_eq!(read.pairs.len(), 1);
    assert_eq!(read.zhiku.unwrap().base_sha256, None);
    assert_eq!(
        std::fs::read_dir(dir.path().join("adapters"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn a_refused_write_leaves_what_was_there() {
    let dir = tempfile::tempdir().unwrap();
    let base = BaseModel::new("m", None).unwrap();
    let out = dir.path().join("lora");
    write_adapter(&out, &pairs(), &spec(), &base).unwrap();
    let before = std::fs::read(out.join("adapter_model.safetensors")).unwrap();

    let mut wrong_rank = pairs();
    wrong_rank[1].b = Tensor::zeros((8, 3), DType::F32, &Device::Cpu).unwrap();
    match write_adapter(&out, &wrong_rank, &spec(), &base) {
        Err(TuneError::Validation(m)) => {
            assert!(m.contains("v_proj") && m.contains("rank 4"), "{m}")
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert!(write_adapter(&out, &[], &spec(), &base).is_err());
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        before
    );

    // A directory that holds something else is not overwritten.
    let notes = dir.path().join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("todo.txt"), "keep").unwrap();
    match write_adapter(&notes, &pairs(), &spec(), &base) {
        Err(TuneError::Validation(m)) => {
            assert!(m.contains("holds other files than zhiku writes"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(notes.join("todo.txt")).unwrap(),
        "keep"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temporary left"
    );
}

/// A safetensors file as PyTorch writes it (`{"format": "pt"}` metadata), f32 tensors.
fn torch_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::to_vec(&header).unwrap();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_adapter_as_peft_writes_it_reads_back() {
    // adapter_config.json as PEFT 0.13's save_pretrained writes it.
    let config = r#"{
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 16,
  "lora_dropout": 0.1,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 2,
  "rank_pattern": {},
  "revision": null,
  "target_modules": "q_proj",
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false
}"#;
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
    for style in ["", ".default"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), config).unwrap();
        let module = "base_model.model.model.layers.0.self_attn.q_proj";
        torch_safetensors(
            &dir.path().join("adapter_model.safetensors"),
            &[
                (
                    &format!("{module}.lora_A{style}.weight"),
                    vec![2, 3],
                    a.clone(),
                ),
                (
                    &format!("{module}.lora_B{style}.weight"),
                    vec![4, 2],
                    b.clone(),
                ),
            ],
        );
        let read = read_adapter(dir.path(), &Device::Cpu).unwrap();
        assert_eq!((read.rank, read.alpha, read.dropout), (2, 16.0, 0.1));
        assert_eq!(read.target_modules, ["q_proj"]);
        assert_eq!(
            read.base_model.as_deref(),
            Some("Qwen/Qwen2.5-0.5B-Instruct")
        );
        assert!(read.zhiku.is_none());
        assert_eq!(read.pairs.len(), 1);
        assert_eq!(read.pairs[0].module, "model.layers.0.self_attn.q_proj");
        assert_eq!(read.pairs[0].a.dims(), [2, 3]);
        assert_eq!(values(&read.pairs[0].a), a);
        assert_eq!(values(&read.pairs[0].b), b);
    }

    // What is wrong is said.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), config).unwrap();
    torch_safetensors(
        &dir.path().join("adapter_model.safetensors"),
        &[("base_model.model.x.lora_A.weight", vec![2, 3], a.clone())],
    );
    let message = read_adapter(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("x lacks its lora_A or lora_B"),
        "{message}"
    );
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type": "IA3", "r": 2}"#,
    )
    .unwrap();
    let message = read_adapter(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(message.contains("only LORA"), "{message}");
    std::fs::write(dir.path().join("adapter_config.json"), "{").unwrap();
    assert!(read_adapter(dir.path(), &Device::Cpu).is_err());
    assert!(matches!(
        read_adapter(&dir.path().join("missing"), &Device::Cpu),
        Err(TuneError::Io { .. })
    ));
}

#[test]
fn sha256_is_streamed_across_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.gguf");
    let bytes: Vec<u8> = (0..3_500_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let ours = sha256_file(&file).unwrap();
    match std::process::Command::new("sha256sum").arg(&file).output() {
        Ok(out) if out.status.success() => {
            let theirs = String::from_utf8_lossy(&out.stdout);
            assert_eq!(Some(ours.as_str()), theirs.split_whitespace().next());
        }
        _ => eprintln!("SKIPPED: no sha256sum to compare with"),
    }
    assert!(matches!(
        sha256_file(&dir.path().join("none")),
        Err(TuneError::Io { path, .. }) if path.ends_with("none")
    ));
}

#[test]
fn an_adapter_on_some_blocks_lists_them_as_layers_to_transform() {
    let dir = tempfile::tempdir().unwrap();
    let base = BaseModel::new("m", None).unwrap();
    let mut top = spec();
    top.layers = zhiku_tuner::LayerSelection::Only(vec![1]);
    let block_1: Vec<TrainedPair> = pairs()
        .into_iter()
        .filter(|p| p.module.contains(".1."))
        .collect();
    let out = dir.path().join("top");
    write_adapter(&out, &block_1, &top, &base).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["layers_to_transform"], serde_json::json!([1]));
    assert_eq!(config["layers_pattern"], serde_json::Value::Null);
    assert_eq!(read_adapter(&out, &Device::Cpu).unwrap().pairs.len(), 2);
    let served = LoraAdapter::load("top", &out, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(served.pairs.len(), 2);

    // Every block: no list, as PEFT writes it.
    let all = dir.path().join("all");
    write_adapter(&all, &pairs(), &spec(), &base).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(all.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["layers_to_transform"], serde_json::Value::Null);

    // A pair outside the listed blocks, or a selection not resolved against a model.
    match write_adapter(&dir.path().join("bad"), &pairs(), &top, &base) {
        Err(TuneError::Validation(m)) => assert!(m.contains("model.layers.0."), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    top.layers = zhiku_tuner::LayerSelection::Last(1);
    assert!(matches!(
        write_adapter(&dir.path().join("bad"), &block_1, &top, &base),
        Err(TuneError::Validation(_))
    ));
    assert!(!dir.path().join("bad").exists());
}
