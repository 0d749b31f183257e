//! ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B-chat and GLM-4-0414 on tiny checkpoints the tests
//! write: seeded random weights, a config.json in each family's real format, safetensors and
//! tokenizer.json, loaded through `GeneratorState::load` / `load_model` exactly as real
//! checkpoints. Generation is greedy, so the same request twice gives the same text.

mod common;

use std::path::Path;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;
use zhiku_generator::{GeneratorArgs, GeneratorError, GeneratorState};
use zhiku_lm::CausalLm;
use zhiku_lm::decoder::{BatchModel, Solo};
use zhiku_lm::families::{SafetensorsWeights, chatglm_decoder, glm4_0414_decoder};
use zhiku_lm::glm::GlmFamily;
use zhiku_lm::lora::LoraAdapter;
use zhiku_lm::reference::GlmModel;

use common::{
    GLM4_SPECIALS, added_tokens_config, ask, chatglm_style_bpe_model, generate_ids, max_abs_diff,
    tiktoken_file, tiktoken_ranks, try_generate_ids, write_adapter, write_seeded_weights,
    write_wordlevel_tokenizer,
};

/// ChatGLM2's tokenizer: SentencePiece's first three, then the appended specials.
const CHATGLM2_SPECIALS: &[&str] = &[
    "<unk>", "<s>", "</s>", "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
];
const CHATGLM3_SPECIALS: &[&str] = &[
    "<unk>",
    "<s>",
    "</s>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

/// A ChatGLM2/3 / GLM-4-9B config.json (their real format; the sizes are tiny).
fn chatglm_config(name: Option<&str>, vocab: usize, extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "add_bias_linear": false,
        "add_qkv_bias": true,
        "apply_query_key_layer_scaling": true,
        "apply_residual_connection_post_layernorm": false,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": true,
        "bias_dropout_fusion": true,
        "ffn_hidden_size": 64,
        "fp32_residual_connection": false,
        "hidden_dropout": 0.0,
        "hidden_size": 32,
        "kv_channels": 8,
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": true,
        "multi_query_group_num": 2,
        "num_attention_heads": 4,
        "num_layers": 2,
        "original_rope": true,
        "padded_vocab_size": vocab,
        "post_layer_norm": true,
        "rmsnorm": true,
        "seq_length": 128,
        "use_cache": true,
        "torch_dtype": "float32",
        "transformers_version": "4.27.1",
        "tie_word_embeddings": false,
        "eos_token_id": 2,
        "pad_token_id": 0
    });
    if let Some(name) = name {
        c["_name_or_path"] = json!(name);
    }
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// A GLM-4-0414 config.json (model_type "glm4"), tiny.
fn glm4_0414_config(vocab: usize) -> serde_json::Value {
    json!({
        "architectures": ["Glm4ForCausalLM"],
        "attention_bias": true,
        "attention_dropout": 0.0,
        "eos_token_id": [0, 7, 9],
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "model_type": "glm4",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": 0,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "transformers_version": "4.51.3",
        "use_cache": true,
        "vocab_size": vocab
    })
}

/// Writes a tiny checkpoint of `family`: config.json, tokenizer.json, model.safetensors.
fn write_checkpoint(dir: &Path, family: GlmFamily, seed: u64) {
    let specials = match family {
        GlmFamily::ChatGlm2 => CHATGLM2_SPECIALS,
        GlmFamily::ChatGlm3 => CHATGLM3_SPECIALS,
        GlmFamily::Glm4 | GlmFamily::Glm4_0414 => GLM4_SPECIALS,
    };
    let vocab = write_wordlevel_tokenizer(dir, specials);
    write_model(dir, family, seed, vocab);
}

/// Writes config.json (`vocab` tokens) and seeded weights of `family`.
fn write_model(dir: &Path, family: GlmFamily, seed: u64, vocab: usize) {
    let config = match family {
        GlmFamily::ChatGlm2 => chatglm_config(None, vocab, json!({})),
        GlmFamily::ChatGlm3 => chatglm_config(Some("THUDM/chatglm3-6b"), vocab, json!({})),
        GlmFamily::Glm4 => chatglm_config(
            Some("THUDM/glm-4-9b-chat"),
            vocab,
            json!({"rope_ratio": 500, "eos_token_id": [0, 7, 9], "pad_token_id": 0}),
        ),
        GlmFamily::Glm4_0414 => glm4_0414_config(vocab),
    }
    .to_string();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    // The loader's own network, built over a VarMap, names and shapes the weights.
    let varmap = VarMap::new();
    GlmModel::new(
        family,
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    write_seeded_weights(&varmap, seed, &dir.join("model.safetensors"));
}

fn args(dir: &Path) -> GeneratorArgs {
    GeneratorArgs::for_model(dir.to_string_lossy().into_owned())
}

/// Loads the tiny checkpoint through `GeneratorState::load`, checks what Info reports, and
/// asks the same question twice.
fn loads_and_generates(family: GlmFamily, architecture: &str, template: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), family, 5);
    let state = GeneratorState::load(&args(dir.path())).expect("the tiny checkpoint loads");
    assert_eq!(state.shared.info.architecture, architecture);
    assert_eq!(state.shared.template.name(), template);
    assert_eq!(state.shared.info.context_length, 128);
    let first = ask(&state, "小拾 喜欢 什么", 10);
    let again = ask(&state, "小拾 喜欢 什么", 10);
    assert!(first.generated_tokens > 0, "{first:?}");
    assert_eq!(
        first.text, again.text,
        "greedy generation is not reproducible"
    );
    assert_eq!(first.generated_tokens, again.generated_tokens);
    let other = ask(&state, "今天 天气 好", 10);
    assert_eq!(other.text, ask(&state, "今天 天气 好", 10).text);
}

#[test]
fn chatglm2_loads_and_generates_deterministically() {
    // No name in config.json and no role tokens in the tokenizer: ChatGLM2.
    loads_and_generates(GlmFamily::ChatGlm2, "chatglm2", "chatglm2");
}

#[test]
fn chatglm3_loads_and_generates_deterministically() {
    loads_and_generates(GlmFamily::ChatGlm3, "chatglm3", "chatglm3");
}

#[test]
fn glm4_9b_chat_loads_and_generates_deterministically() {
    loads_and_generates(GlmFamily::Glm4, "glm4", "glm4");
}

#[test]
fn glm4_0414_loads_and_generates_deterministically() {
    loads_and_generates(GlmFamily::Glm4_0414, "glm4-0414", "glm4");
}

/// Logits of `prompt` on a batched model, run alone.
fn solo_logits(
    model: &dyn BatchModel,
    prompt: &[u32],
    adapter: Option<Arc<LoraAdapter>>,
) -> Tensor {
    let mut solo = Solo::new(model, 128).unwrap().with_adapter(adapter);
    solo.feed(model, prompt).unwrap()
}

/// Every GLM family on zhiku's decoder gives candle-transformers' logits (the reference
/// network, built from the same checkpoint), after a prompt and after each decoded token.
#[test]
fn glm_families_match_candles_networks() {
    for family in [
        GlmFamily::ChatGlm2,
        GlmFamily::ChatGlm3,
        GlmFamily::Glm4,
        GlmFamily::Glm4_0414,
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), family, 13);
        let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let files = [dir.path().join("model.safetensors")];
        // SAFETY: the test wrote the file and nothing changes it while it is mapped.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu).unwrap()
        };
        let mut reference = GlmModel::new(family, &config, vb).unwrap();
        let mut weights = SafetensorsWeights::open(&files, &Device::Cpu, DType::F32, &[]).unwrap();
        let ours = match family {
            GlmFamily::Glm4_0414 => glm4_0414_decoder(&config, &mut weights).unwrap(),
            _ => chatglm_decoder(&config, &mut weights).unwrap(),
        };
        let prompt = [12u32, 13, 14, 20, 21, 22, 23];
        let mut solo = Solo::new(&ours, 64).unwrap();
        let mut worst = max_abs_diff(
            &solo.feed(&ours, &prompt).unwrap(),
            &reference.forward(&prompt, 0).unwrap(),
        );
        for (i, t) in [30u32, 31, 15].iter().enumerate() {
            let a = solo.feed(&ours, &[*t]).unwrap();
            let b = reference.forward(&[*t], prompt.len() + i).unwrap();
            worst = worst.max(max_abs_diff(&a, &b));
        }
        assert!(worst < 1e-3, "{family:?}: logits differ by {worst}");
    }
}

#[test]
fn chatglm3_prompts_start_with_gmask_sop_once() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), GlmFamily::ChatGlm3, 8);
    let state = GeneratorState::load(&args(dir.path())).unwrap();
    // ChatGLM3 stops at its eos and at the next turn's role tokens.
    for id in [2, 9, 11] {
        assert!(
            state.shared.tokenizer.eos_ids.contains(&id),
            "{:?}",
            state.shared.tokenizer.eos_ids
        );
    }
    assert_eq!(state.shared.prompt_prefix, vec![4, 6]);
    // [gMASK]=4, sop=6: a prompt that already starts with them is not prefixed twice.
    let bare = generate_ids(&state, vec![12, 13, 14], 8);
    let prefixed = generate_ids(&state, vec![4, 6, 12, 13, 14], 8);
    assert_eq!(bare.text, prefixed.text);
    assert_eq!(bare.prompt_tokens + 2, prefixed.prompt_tokens);
    // Past seq_length (128, with the two prefix tokens) is a request error, not a panic.
    match try_generate_ids(&state, vec![12u32; 127], 4) {
        Err(GeneratorError::Validation(m)) => assert!(m.contains("128"), "{m}"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert!(try_generate_ids(&state, vec![12u32; 120], 4).is_ok());
}

/// LoRA on GLM-4-0414: merged at load (B = 0 changes nothing; a trained adapter does), and
/// the same adapter applied per request gives the merged model's logits.
#[test]
fn glm4_0414_lora_merged_and_per_request_agree() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), GlmFamily::Glm4_0414, 9);
    let modules: Vec<(String, usize, usize)> = (0..2)
        .flat_map(|layer| {
            [("q_proj", 32), ("v_proj", 16)]
                .map(|(m, out)| (format!("model.layers.{layer}.self_attn.{m}"), 32, out))
        })
        .collect();
    let zero = dir.path().join("zero");
    let trained = dir.path().join("trained");
    write_adapter(&zero, 1, 0.0, &["q_proj", "v_proj"], &modules);
    write_adapter(&trained, 2, 0.5, &["q_proj", "v_proj"], &modules);
    let prompt = [12u32, 13, 14, 15];
    let logits = |loaded: &zhiku_lm::LoadedModel, adapter: Option<Arc<LoraAdapter>>| {
        solo_logits(loaded.model.batched().unwrap().as_ref(), &prompt, adapter)
    };

    let base = logits(&args(dir.path()).load_model().unwrap(), None);
    let mut zero_args = args(dir.path());
    zero_args.merge_lora = vec![zero.clone()];
    let merged_zero = zero_args.load_model().unwrap();
    assert_eq!(merged_zero.info.adapters.len(), 1);
    assert!(merged_zero.info.adapters[0].merged);
    // B = 0: W0 + 0 is W0 exactly.
    assert_eq!(max_abs_diff(&logits(&merged_zero, None), &base), 0.0);

    let mut trained_args = args(dir.path());
    trained_args.merge_lora = vec![trained.clone()];
    let merged = logits(&trained_args.load_model().unwrap(), None);
    assert!(max_abs_diff(&merged, &base) > 1e-3);

    let mut per_request = args(dir.path());
    per_request.lora = vec![format!("legal={}", trained.display())];
    let loaded = per_request.load_model().unwrap();
    assert_eq!(loaded.info.adapters.len(), 1);
    assert!(!loaded.info.adapters[0].merged);
    let adapter = Arc::new(loaded.adapter_weights[0].clone());
    let unmerged = logits(&loaded, Some(adapter));
    let diff = max_abs_diff(&unmerged, &merged);
    assert!(diff < 1e-4, "per-request vs merged: {diff}");
    assert_eq!(max_abs_diff(&logits(&loaded, None), &base), 0.0);

    // An adapter for another model's modules is refused, not half applied.
    let stray = dir.path().join("stray");
    write_adapter(
        &stray,
        3,
        0.5,
        &["query_key_value"],
        &[(
            "transformer.encoder.layers.0.self_attention.query_key_value".into(),
            32,
            48,
        )],
    );
    let mut stray_args = args(dir.path());
    stray_args.merge_lora = vec![stray.clone()];
    assert!(matches!(
        stray_args.load_model(),
        Err(GeneratorError::Load(_))
    ));
    let mut stray_args = args(dir.path());
    stray_args.lora = vec![format!("stray={}", stray.display())];
    assert!(matches!(
        stray_args.load_model(),
        Err(GeneratorError::Validation(_))
    ));
}

#[test]
fn unknown_model_types_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), GlmFamily::Glm4_0414, 1);
    std::fs::write(
        dir.path().join("config.json"),
        json!({"model_type": "mamba"}).to_string(),
    )
    .unwrap();
    match args(dir.path()).load_model() {
        Err(GeneratorError::UnsupportedModel(m)) => assert!(m.contains("mamba"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a mamba config must be refused"),
    }
}

/// ChatGLM2 as the hub ships it: a SentencePiece tokenizer.model, no tokenizer.json. The
/// specials ChatGLM's Python tokenizer appends get the ids after the pieces.
#[test]
fn chatglm2_with_a_sentencepiece_tokenizer_model() {
    let dir = tempfile::tempdir().unwrap();
    let (model, pieces) = chatglm_style_bpe_model();
    std::fs::write(dir.path().join("tokenizer.model"), model).unwrap();
    write_model(dir.path(), GlmFamily::ChatGlm2, 13, pieces + 5);
    let state = GeneratorState::load(&args(dir.path())).expect("loads with tokenizer.model");
    assert_eq!(state.shared.info.architecture, "chatglm2");
    let tokenizer = &state.shared.tokenizer;
    assert_eq!(
        tokenizer.inner.token_to_id("[gMASK]"),
        Some(pieces as u32 + 1)
    );
    assert_eq!(tokenizer.inner.token_to_id("sop"), Some(pieces as u32 + 3));
    assert_eq!(tokenizer.eos_ids, [2]);
    let first = ask(&state, "hello world", 8);
    assert!(first.generated_tokens > 0, "{first:?}");
    assert_eq!(first.text, ask(&state, "hello world", 8).text);
}

/// GLM-4-9B-chat as the hub ships it: a tiktoken tokenizer.model (`base64 rank` lines) and
/// the special tokens in tokenizer_config.json, no tokenizer.json.
#[test]
fn glm4_9b_chat_with_a_tiktoken_tokenizer_model() {
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<String> = common::WORDS.iter().map(|w| format!(" {w}")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let ranks = tiktoken_ranks(&words, &[]);
    std::fs::write(dir.path().join("tokenizer.model"), tiktoken_file(&ranks)).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        added_tokens_config(GLM4_SPECIALS, ranks.len()),
    )
    .unwrap();
    write_model(
        dir.path(),
        GlmFamily::Glm4,
        21,
        ranks.len() + GLM4_SPECIALS.len(),
    );
    let state = GeneratorState::load(&args(dir.path())).expect("loads with tiktoken");
    assert_eq!(state.shared.info.architecture, "glm4");
    assert_eq!(state.shared.template.name(), "glm4");
    let tokenizer = &state.shared.tokenizer;
    let special =
        |name: &str| (ranks.len() + GLM4_SPECIALS.iter().position(|s| *s == name).unwrap()) as u32;
    let prompt = tokenizer
        .encode("[gMASK]<sop><|user|>\n小拾 喜欢<|assistant|>")
        .unwrap();
    assert_eq!(
        &prompt[..3],
        [special("[gMASK]"), special("<sop>"), special("<|user|>")]
    );
    assert_eq!(prompt.last(), Some(&special("<|assistant|>")));
    // " 喜欢" is one token of the vocabulary.
    let xihuan = ranks.iter().position(|r| r == " 喜欢".as_bytes()).unwrap() as u32;
    assert!(prompt.contains(&xihuan), "{prompt:?}");
    let first = ask(&state, "小拾 喜欢 什么", 8);
    assert!(first.generated_tokens > 0, "{first:?}");
    assert_eq!(first.text, ask(&state, "小拾 喜欢 什么", 8).text);
}

/// Stop ids: config.json's `eos_token_id` list, then generation_config.json's, once each.
#[test]
fn stop_ids_come_from_config_and_generation_config() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), GlmFamily::Glm4_0414, 4);
    std::fs::write(
        dir.path().join("generation_config.json"),
        json!({"eos_token_id": [0, 8], "do_sample": true}).to_string(),
    )
    .unwrap();
    let loaded = args(dir.path()).load_model().unwrap();
    assert_eq!(loaded.tokenizer.eos_ids, [0, 7, 9, 8]);
    assert_eq!(loaded.tokenizer.eos.as_deref(), Some("<|endoftext|>"));
}

/// A hub id of a safetensors checkpoint (no GGUF file in the repository) is fetched through
/// the hub cache: config.json, the tokenizer, generation_config.json and the shards that
/// model.safetensors.index.json names. The cache is written here as hf-hub lays it out
/// (refs/main → snapshots/<commit>/…) and read offline, through the same code that
/// downloads from the hub.
#[test]
fn hub_checkpoints_load_from_the_hub_cache_with_sharded_weights() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--THUDM--chatglm3-6b");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    write_checkpoint(&snapshot, GlmFamily::ChatGlm3, 31);
    std::fs::write(
        snapshot.join("generation_config.json"),
        json!({"eos_token_id": [2, 9]}).to_string(),
    )
    .unwrap();

    // Re-save the weights as two shards and an index, as large checkpoints ship.
    let single = snapshot.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&single, &Device::Cpu).unwrap();
    std::fs::remove_file(&single).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut shards = [
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    ];
    let mut weight_map = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let shard = i % 2;
        shards[shard].insert((*name).clone(), tensors[*name].clone());
        weight_map.insert(
            (*name).clone(),
            json!(format!("model-0000{}-of-00002.safetensors", shard + 1)),
        );
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = snapshot.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        candle_core::safetensors::save(shard, path).unwrap();
    }
    std::fs::write(
        snapshot.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();

    // SAFETY: no other test of this binary reads HF_HOME or HF_HUB_OFFLINE (they load
    // local directories, which never consult the hub cache).
    unsafe {
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let mut hub_args = GeneratorArgs::for_model("THUDM/chatglm3-6b");
    hub_args.models_dir = home.path().join("no-models-dir");
    let state = GeneratorState::load(&hub_args).expect("loads from the hub cache");
    assert_eq!(state.shared.info.architecture, "chatglm3");
    assert_eq!(state.shared.info.model_id, "THUDM/chatglm3-6b");
    assert!(state.shared.tokenizer.eos_ids.contains(&9));
    let first = ask(&state, "小拾 喜欢 什么", 6);
    assert!(first.generated_tokens > 0, "{first:?}");
    // The same checkpoint from its directory gives the same answer.
    let local = GeneratorState::load(&args(&snapshot)).unwrap();
    assert_eq!(first.text, ask(&local, "小拾 喜欢 什么", 6).text);

    // A repository with neither the GGUF file nor config.json: the GGUF error, offline.
    let err = match GeneratorState::load(&GeneratorArgs::for_model("THUDM/nothing-here")) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an empty repository must not load"),
    };
    assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");
}

/// Every GLM family on the tensor path (what a GPU runs) gives the kernel path's logits, for
/// a prompt prefilled in two chunks and each decoded token after it (f32: the paths differ
/// only in the order of their sums).
#[test]
fn glm_families_give_the_same_logits_on_the_tensor_path() {
    use zhiku_generator::config::ComputePathArg;
    for family in [
        GlmFamily::ChatGlm2,
        GlmFamily::ChatGlm3,
        GlmFamily::Glm4,
        GlmFamily::Glm4_0414,
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), family, 17);
        let run = |compute: ComputePathArg| -> Vec<Tensor> {
            let mut a = args(dir.path());
            a.compute_path = compute;
            let loaded = a.load_model().unwrap();
            let model = loaded.model.batched().unwrap().as_ref();
            let mut solo = Solo::new(model, 64).unwrap();
            let mut out = vec![
                solo.feed(model, &[12, 13, 14, 20]).unwrap(),
                solo.feed(model, &[21, 22, 23]).unwrap(),
            ];
            for t in [30u32, 31, 15] {
                out.push(solo.feed(model, &[t]).unwrap());
            }
            out
        };
        let kernels = run(ComputePathArg::Kernels);
        let tensors = run(ComputePathArg::Tensors);
        let worst = kernels
            .iter()
            .zip(&tensors)
            .map(|(a, b)| max_abs_diff(a, b))
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "{family:?}: the paths differ by {worst}");
    }
}
