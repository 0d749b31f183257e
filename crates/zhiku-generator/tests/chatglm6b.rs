//! ChatGLM-6B (the article's GLM) on a tiny checkpoint the test writes: seeded random
//! weights, a real config.json, safetensors and tokenizer.json, loaded through the same code
//! as a real checkpoint. Shows the article's attention (Part A bidirectional, Part B causal),
//! its 2-D positions, and LoRA (B = 0 changes nothing; merged = unmerged; two adapters per
//! request in one server).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;
use tokio::sync::oneshot;
use zhiku_generator::config::ComputePathArg;
use zhiku_generator::sampling::SamplingConfig;
use zhiku_generator::{GeneratorArgs, GeneratorState};
use zhiku_lm::chatglm6b::{ChatGlm6b, ChatGlm6bConfig, position_ids};
use zhiku_lm::decoder::{Batch, BatchModel, Decoder, Solo, prepare_adapter};
use zhiku_lm::families::{SafetensorsWeights, chatglm6b_decoder};
use zhiku_lm::kv::{KvCache, KvDtype};
use zhiku_lm::lora::LoraAdapter;
use zhiku_lm::{CausalLm, ComputePath};
use zhiku_proto::v1::generator_client::GeneratorClient;
use zhiku_proto::v1::{GenerateRequest, GeneratorInfoRequest, SamplingParams, generate_request};
use zhiku_runtime::ServerArgs;

use common::{WORDS, max_abs_diff, write_seeded_weights, write_wordlevel_tokenizer};

fn config() -> serde_json::Value {
    json!({
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "vocab_size": 5 + WORDS.len(),
        "hidden_size": 32,
        "num_layers": 2,
        "num_attention_heads": 4,
        "inner_hidden_size": 64,
        "layernorm_epsilon": 1e-5,
        "max_sequence_length": 64,
        "position_encoding_2d": true,
        "bos_token_id": 3,
        "eos_token_id": 4,
        "mask_token_id": 1,
        "gmask_token_id": 2,
        "pad_token_id": 0
    })
}

/// Writes config.json, model.safetensors (seeded weights) and tokenizer.json.
fn write_checkpoint(dir: &Path, seed: u64) {
    std::fs::write(dir.join("config.json"), config().to_string()).unwrap();
    write_wordlevel_tokenizer(dir, &["<unk>", "[MASK]", "[gMASK]", "<sop>", "<eop>"]);
    let cfg: ChatGlm6bConfig = serde_json::from_value(config()).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    ChatGlm6b::load(&cfg, vb).unwrap();
    write_seeded_weights(&varmap, seed, &dir.join("model.safetensors"));
}

/// Writes a PEFT LoRA adapter for the attention layers; `b_scale` 0 is the article's
/// initialisation (B = 0).
fn write_adapter(dir: &Path, seed: u64, b_scale: f32) {
    let modules: Vec<(String, usize, usize)> = (0..2)
        .flat_map(|layer| {
            [("query_key_value", 96), ("dense", 32)].map(|(module, out)| {
                (
                    format!("transformer.layers.{layer}.attention.{module}"),
                    32,
                    out,
                )
            })
        })
        .collect();
    common::write_adapter(dir, seed, b_scale, &["query_key_value", "dense"], &modules);
}

fn load_model(dir: &Path) -> ChatGlm6b {
    let cfg: ChatGlm6bConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // SAFETY: the test wrote the file and nothing changes it while it is mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    ChatGlm6b::load(&cfg, vb).unwrap()
}

#[test]
fn position_ids_follow_the_articles_figure() {
    // x1 x2 x3 x4 [gMASK] <sop> y1 y2: Part A = 0..=4, Part B starts at <sop> (index 5).
    let (positions, blocks) = position_ids(8, 5, 4);
    assert_eq!(positions, vec![0, 1, 2, 3, 4, 4, 4, 4]);
    assert_eq!(blocks, vec![0, 0, 0, 0, 0, 1, 2, 3]);
    // The shared decoder's, from the bidirectional length (through [gMASK]: 5 tokens).
    let shared: Vec<(u32, u32)> = (0..8)
        .map(|i| zhiku_lm::rotary::Rotary::two_d_positions(i, 5))
        .collect();
    assert_eq!(
        shared,
        positions.into_iter().zip(blocks).collect::<Vec<_>>()
    );
}

#[test]
fn part_a_is_bidirectional_and_part_b_is_causal() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), 42);
    let mut model = load_model(dir.path());

    // Part A: an early prompt token's hidden state changes when a LATER prompt token changes.
    let a = [5u32, 6, 7, 8, 2, 3];
    let mut a2 = a;
    a2[3] = 9;
    let h = model.hidden_states(&a, 5, 4).unwrap();
    let h2 = model.hidden_states(&a2, 5, 4).unwrap();
    let first = |t: &Tensor| t.get(0).unwrap();
    assert!(
        max_abs_diff(&first(&h), &first(&h2)) > 1e-3,
        "prompt attention is not bidirectional"
    );

    // Part B: a generated token's logits do not depend on any token after it.
    let b = [5u32, 6, 7, 8, 2, 3, 10, 11];
    let mut b2 = b;
    b2[7] = 12;
    let l = model.all_logits(&b, 5, 4).unwrap();
    let l2 = model.all_logits(&b2, 5, 4).unwrap();
    for row in 0..7 {
        let d = max_abs_diff(&l.get(row).unwrap(), &l2.get(row).unwrap());
        assert!(d == 0.0, "row {row} saw a later token (diff {d})");
    }
    assert!(max_abs_diff(&l.get(7).unwrap(), &l2.get(7).unwrap()) > 1e-3);

    // The cached, token-by-token path gives the same logits as the whole sequence at once.
    let prefill = model.forward(&[5, 6, 7, 8], 0).unwrap();
    assert!(max_abs_diff(&prefill, &l.get(5).unwrap()) < 1e-4);
    let step = model.forward(&[10], 4).unwrap();
    assert!(max_abs_diff(&step, &l.get(6).unwrap()) < 1e-4);
    let step = model.forward(&[11], 5).unwrap();
    assert!(max_abs_diff(&step, &l.get(7).unwrap()) < 1e-4);
}

#[test]
fn lora_zero_b_changes_nothing_and_merged_equals_unmerged() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), 7);
    let zero = dir.path().join("zero");
    let trained = dir.path().join("trained");
    write_adapter(&zero, 1, 0.0);
    write_adapter(&trained, 2, 0.5);
    let prompt = [5u32, 6, 7, 8, 9];

    let mut base = load_model(dir.path());
    let base_logits = base.forward(&prompt, 0).unwrap();

    // B = 0, as LoRA initialises it: merged, the logits are exactly the base model's.
    let zero_adapter = LoraAdapter::load("zero", &zero, DType::F32, &Device::Cpu).unwrap();
    let mut merged_zero = load_model(dir.path());
    merged_zero.merge_adapter(&zero_adapter).unwrap();
    assert_eq!(
        max_abs_diff(&merged_zero.forward(&prompt, 0).unwrap(), &base_logits),
        0.0
    );

    // A trained adapter: merged W0 + (alpha/r)·B·A equals W0·x + (alpha/r)·B·(A·x).
    let adapter = LoraAdapter::load("trained", &trained, DType::F32, &Device::Cpu).unwrap();
    let mut merged = load_model(dir.path());
    merged.merge_adapter(&adapter).unwrap();
    let merged_logits = merged.forward(&prompt, 0).unwrap();
    let mut unmerged = load_model(dir.path());
    unmerged.attach_adapter(&adapter).unwrap();
    unmerged.set_adapter(Some("trained")).unwrap();
    let unmerged_logits = unmerged.forward(&prompt, 0).unwrap();
    let diff = max_abs_diff(&merged_logits, &unmerged_logits);
    // Tolerance: f32 rounding of the two association orders, far below the adapter's effect.
    assert!(diff < 1e-3, "merged and unmerged differ by {diff}");
    assert!(
        max_abs_diff(&merged_logits, &base_logits) > 1e-2,
        "the adapter had no effect"
    );
    // Without the adapter selected, the unmerged model is the base model.
    unmerged.set_adapter(None).unwrap();
    assert_eq!(
        max_abs_diff(&unmerged.forward(&prompt, 0).unwrap(), &base_logits),
        0.0
    );
    assert!(unmerged.set_adapter(Some("nope")).is_err());
}

/// The tiny checkpoint (seed 11) with the adapters `legal` and `medical`, loaded as
/// `zhiku serve` loads it.
fn serving_state(dir: &Path) -> GeneratorState {
    serving_state_on(dir, ComputePathArg::Kernels)
}

fn serving_state_on(dir: &Path, compute: ComputePathArg) -> GeneratorState {
    if !dir.join("config.json").is_file() {
        write_checkpoint(dir, 11);
        write_adapter(&dir.join("legal"), 3, 0.8);
        write_adapter(&dir.join("medical"), 4, 0.8);
    }
    let mut args = GeneratorArgs::for_model(dir.to_string_lossy().into_owned());
    args.compute_path = compute;
    args.lora = vec![
        format!("legal={}", dir.join("legal").display()),
        format!("medical={}", dir.join("medical").display()),
    ];
    GeneratorState::load(&args).expect("the tiny ChatGLM-6B loads")
}

/// One recorded answer of [`ANSWERS`].
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Answer {
    prompt: Vec<u32>,
    adapter: Option<String>,
    /// "greedy", "penalty" (greedy with the default repetition penalty) or "sampled"
    /// (temperature 0.8, top-k 8, top-p 0.9, seed 5).
    sampling: String,
    text: String,
    generated_tokens: usize,
}

const ANSWERS: &str = "tests/data/chatglm6b_answers.json";

fn sampling(kind: &str) -> SamplingConfig {
    let base = SamplingConfig {
        max_new_tokens: 12,
        ..Default::default()
    };
    match kind {
        "greedy" => SamplingConfig {
            repetition_penalty: 1.0,
            ..base
        },
        "penalty" => base,
        "sampled" => SamplingConfig {
            temperature: 0.8,
            top_k: Some(8),
            top_p: Some(0.9),
            seed: 5,
            ..base
        },
        other => panic!("no sampling kind {other}"),
    }
}

/// The answers the single-sequence loop (`engine/legacy.rs`, since replaced by the batched
/// engine) gave on the tiny checkpoint, recorded with `ZHIKU_BLESS=1` before it went: the
/// engine gives them token for token (the word-level tokenizer makes each word one token),
/// on both compute paths.
#[test]
fn chatglm6b_answers_are_the_recorded_ones() {
    let dir = tempfile::tempdir().unwrap();
    for compute in [ComputePathArg::Kernels, ComputePathArg::Tensors] {
        let state = serving_state_on(dir.path(), compute);
        check_answers(&state, compute == ComputePathArg::Kernels);
    }
}

fn check_answers(state: &GeneratorState, bless: bool) {
    let prompts: [&[u32]; 3] = [&[5, 6, 7], &[8, 9, 10, 11, 12, 5, 6], &[13]];
    let mut answers = Vec::new();
    for prompt in prompts {
        for adapter in [None, Some("legal"), Some("medical")] {
            for kind in ["greedy", "penalty", "sampled"] {
                let done = common::try_generate(state, prompt.to_vec(), sampling(kind), adapter)
                    .expect("generation succeeds");
                answers.push(Answer {
                    prompt: prompt.to_vec(),
                    adapter: adapter.map(str::to_owned),
                    sampling: kind.into(),
                    text: done.text,
                    generated_tokens: done.generated_tokens,
                });
            }
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(ANSWERS);
    if bless && std::env::var_os("ZHIKU_BLESS").is_some() {
        let json = serde_json::to_string_pretty(&answers).unwrap();
        std::fs::write(&path, json + "\n").unwrap();
        println!("wrote {}", path.display());
    }
    let recorded: Vec<Answer> = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    assert!(recorded.iter().any(|a| a.generated_tokens > 1));
    assert_eq!(answers, recorded);
}

fn request(adapter: &str) -> GenerateRequest {
    GenerateRequest {
        input: Some(generate_request::Input::Prompt("小拾 喜欢 什么".into())),
        sampling: Some(SamplingParams {
            max_new_tokens: Some(12),
            repetition_penalty: Some(1.0),
            ..Default::default()
        }),
        adapter: adapter.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_adapters_chosen_per_request_in_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let state = Arc::new(
        tokio::task::spawn_blocking(move || serving_state(&path))
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(zhiku_generator::serve_loaded(
        state,
        ServerArgs::default(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = GeneratorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let info = client
        .info(GeneratorInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.architecture, "chatglm");
    assert_eq!(info.chat_template, "chatglm");
    let mut names: Vec<_> = info
        .adapters
        .iter()
        .map(|a| (a.name.clone(), a.rank, a.merged))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![("legal".into(), 4, false), ("medical".into(), 4, false)]
    );

    let mut outputs = HashMap::new();
    for adapter in ["", "legal", "medical"] {
        let first = client
            .generate(request(adapter))
            .await
            .unwrap()
            .into_inner();
        let again = client
            .generate(request(adapter))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            first.text, again.text,
            "adapter {adapter:?} is not reproducible"
        );
        assert!(first.generated_tokens > 0);
        assert_eq!(first.adapter, adapter);
        outputs.insert(adapter, first.text);
    }
    assert_ne!(outputs["legal"], outputs["medical"], "{outputs:?}");
    assert!(
        outputs[""] != outputs["legal"] || outputs[""] != outputs["medical"],
        "{outputs:?}"
    );

    let err = client.generate(request("finance")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// Image tokens before the text pieces in the tiny `ice_text.model` checkpoint.
const IMAGE_TOKENS: usize = 2;

/// A unigram `ice_text.model` like ChatGLM-6B's: `<n>`, `<|tab|>` and `<|blank_2..80|>`
/// pieces, the words with and without "▁", their characters, then the GLM specials.
/// Returns the model and the piece index of each named piece.
fn ice_text_model() -> (Vec<u8>, HashMap<String, usize>) {
    use common::{piece, sentencepiece_model};
    use zhiku_lm::tokenizer::sentencepiece::piece_type;
    let mut pieces = vec![
        piece("<unk>", 0.0, piece_type::UNKNOWN),
        piece("<s>", 0.0, piece_type::CONTROL),
        piece("</s>", 0.0, piece_type::CONTROL),
        piece("<n>", 0.0, piece_type::USER_DEFINED),
        piece("<|tab|>", 0.0, piece_type::USER_DEFINED),
    ];
    for n in 2..=80 {
        pieces.push(piece(
            &format!("<|blank_{n}|>"),
            0.0,
            piece_type::USER_DEFINED,
        ));
    }
    pieces.push(piece("▁", -4.0, piece_type::NORMAL));
    for w in WORDS {
        pieces.push(piece(&format!("▁{w}"), -2.0, piece_type::NORMAL));
        pieces.push(piece(w, -3.0, piece_type::NORMAL));
    }
    let mut chars: Vec<char> = WORDS.iter().flat_map(|w| w.chars()).collect();
    chars.extend('a'..='z');
    chars.sort();
    chars.dedup();
    for c in chars {
        if !WORDS.contains(&c.to_string().as_str()) {
            pieces.push(piece(&c.to_string(), -8.0, piece_type::NORMAL));
        }
    }
    for s in [
        "[MASK]",
        "[gMASK]",
        "[sMASK]",
        "<unused_0>",
        "<sop>",
        "<eop>",
    ] {
        pieces.push(piece(s, 0.0, piece_type::CONTROL));
    }
    let index = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.clone().unwrap(), i))
        .collect();
    (sentencepiece_model(pieces, 1, false), index)
}

/// A ChatGLM-6B checkpoint as the hub ships it: `ice_text.model`, no tokenizer.json; model
/// ids are piece ids + IMAGE_TOKENS. `declared` writes tokenizer_config.json's
/// `num_image_tokens`.
fn write_ice_text_checkpoint(dir: &Path, declared: Option<usize>) -> HashMap<String, usize> {
    let (model, index) = ice_text_model();
    std::fs::write(dir.join("ice_text.model"), model).unwrap();
    if let Some(n) = declared {
        std::fs::write(
            dir.join("tokenizer_config.json"),
            json!({"num_image_tokens": n, "tokenizer_class": "ChatGLMTokenizer"}).to_string(),
        )
        .unwrap();
    }
    let id = |name: &str| IMAGE_TOKENS + index[name];
    let mut config = config();
    config["vocab_size"] = json!(IMAGE_TOKENS + index.len());
    config["mask_token_id"] = json!(id("[MASK]"));
    config["gmask_token_id"] = json!(id("[gMASK]"));
    config["bos_token_id"] = json!(id("<sop>"));
    config["eos_token_id"] = json!(id("<eop>"));
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let cfg: ChatGlm6bConfig = serde_json::from_value(config).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    ChatGlm6b::load(&cfg, vb).unwrap();
    write_seeded_weights(&varmap, 17, &dir.join("model.safetensors"));
    index
}

/// ChatGLM-6B's `ice_text.model`: newlines, tabs and runs of spaces become their pieces as
/// the Python tokenizer makes them, ids are shifted by the image tokens, and text round-trips.
#[test]
fn chatglm6b_reads_ice_text_model_with_its_whitespace_pieces_and_id_offset() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_ice_text_checkpoint(dir.path(), Some(IMAGE_TOKENS));
    let id = |name: &str| (IMAGE_TOKENS + index[name]) as u32;
    let state = GeneratorState::load(&GeneratorArgs::for_model(
        dir.path().to_string_lossy().into_owned(),
    ))
    .expect("loads with ice_text.model");
    assert_eq!(state.shared.info.architecture, "chatglm");
    let t = &state.shared.tokenizer;
    assert_eq!(t.token_to_id("[gMASK]"), Some(id("[gMASK]")));
    assert_eq!(t.eos_ids, [id("<eop>")]);

    assert_eq!(
        t.encode("小拾\n喜欢").unwrap(),
        [id("▁小拾"), id("<n>"), id("喜欢")]
    );
    assert_eq!(
        t.encode("小拾   喜欢\t看电影").unwrap(),
        [
            id("▁小拾"),
            id("<|blank_3|>"),
            id("喜欢"),
            id("<|tab|>"),
            id("看电影")
        ]
    );
    // 85 spaces: the longest blank first, then the rest.
    let long = format!("小拾{}喜欢", " ".repeat(85));
    assert_eq!(
        t.encode(&long).unwrap(),
        [
            id("▁小拾"),
            id("<|blank_80|>"),
            id("<|blank_5|>"),
            id("喜欢")
        ]
    );
    for text in [
        "小拾\n喜欢   看电影\t好",
        "  小拾 喜欢",
        "今天\n\n天气 好",
        long.as_str(),
    ] {
        let ids = t.encode(text).unwrap();
        assert!(ids.iter().all(|i| *i >= IMAGE_TOKENS as u32));
        assert_eq!(t.decode(&ids).unwrap(), text, "{ids:?}");
    }
    // Image-token ids (below the offset) decode to nothing.
    assert_eq!(t.decode(&[0, 1]).unwrap(), "");

    let first = common::ask(&state, "小拾 喜欢 什么", 6);
    assert!(first.generated_tokens > 0, "{first:?}");
    assert_eq!(first.text, common::ask(&state, "小拾 喜欢 什么", 6).text);
}

/// Without tokenizer_config.json the offset is what config.json's vocabulary has beyond the
/// pieces; a declared offset that puts [gMASK] elsewhere is refused with what to fix.
#[test]
fn chatglm6b_ice_text_offset_is_inferred_or_checked() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_ice_text_checkpoint(dir.path(), None);
    let state = GeneratorState::load(&GeneratorArgs::for_model(
        dir.path().to_string_lossy().into_owned(),
    ))
    .expect("the offset is inferred");
    assert_eq!(
        state.shared.tokenizer.token_to_id("<sop>"),
        Some((IMAGE_TOKENS + index["<sop>"]) as u32)
    );

    let wrong = tempfile::tempdir().unwrap();
    write_ice_text_checkpoint(wrong.path(), Some(0));
    let err = match GeneratorState::load(&GeneratorArgs::for_model(
        wrong.path().to_string_lossy().into_owned(),
    )) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a wrong num_image_tokens must be refused"),
    };
    assert!(
        err.contains("gmask_token_id") && err.contains("num_image_tokens"),
        "{err}"
    );
}

/// The shared decoder built from the tiny checkpoint, on `compute`.
fn engine_decoder(dir: &Path, compute: ComputePath) -> Decoder {
    let cfg: ChatGlm6bConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut w = SafetensorsWeights::open(
        &[dir.join("model.safetensors")],
        &Device::Cpu,
        DType::F32,
        &[],
    )
    .unwrap();
    chatglm6b_decoder(&cfg, &mut w)
        .unwrap()
        .with_compute(compute)
}

/// `[gMASK] <sop>` of the tiny config.
const SUFFIX: [u32; 2] = [2, 3];
const FOLLOW: [u32; 4] = [10, 11, 5, 12];

/// Logits at `<sop>` after `prompt`, then after each of [`FOLLOW`], on the shared decoder.
fn decoder_logits(
    model: &Decoder,
    prompt: &[u32],
    adapter: Option<Arc<LoraAdapter>>,
) -> Vec<Tensor> {
    let ids: Vec<u32> = prompt.iter().chain(&SUFFIX).copied().collect();
    let mut solo = Solo::new(model, 64)
        .unwrap()
        .with_adapter(adapter)
        .with_bidirectional(ids.len() - 1);
    let mut out = vec![solo.feed(model, &ids).unwrap()];
    for t in FOLLOW {
        out.push(solo.feed(model, &[t]).unwrap());
    }
    out
}

/// The same from the single-sequence network (the reference).
fn reference_logits(model: &mut ChatGlm6b, prompt: &[u32], adapter: Option<&str>) -> Vec<Tensor> {
    model.set_adapter(adapter).unwrap();
    let mut out = vec![model.forward(prompt, 0).unwrap()];
    for (i, t) in FOLLOW.iter().enumerate() {
        out.push(model.forward(&[*t], prompt.len() + 2 + i).unwrap());
    }
    out
}

fn adapter_for(model: &Decoder, dir: &Path, name: &str) -> Arc<LoraAdapter> {
    let a = LoraAdapter::load(name, &dir.join(name), DType::F32, &Device::Cpu).unwrap();
    Arc::new(prepare_adapter(a, model).unwrap())
}

/// ChatGLM-6B on the shared decoder (2-D positions, the prompt bidirectional, DeepNorm):
/// the single-sequence network's logits on both compute paths, for the prompt and decode
/// steps, with and without an adapter. Tolerance 1e-4: f32 on both sides, the sums in
/// another order.
#[test]
fn the_shared_decoder_gives_the_single_sequence_networks_logits() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), 42);
    write_adapter(&dir.path().join("legal"), 3, 0.8);
    let mut reference = load_model(dir.path());
    let legal =
        LoraAdapter::load("legal", &dir.path().join("legal"), DType::F32, &Device::Cpu).unwrap();
    reference.attach_adapter(&legal).unwrap();
    let prompt = [5u32, 6, 7, 8, 9, 13, 14];
    for compute in [ComputePath::Kernels, ComputePath::Tensors] {
        let model = engine_decoder(dir.path(), compute);
        assert_eq!(model.compute_path(), compute);
        assert_eq!(model.prompt_suffix(), SUFFIX);
        assert!(model.bidirectional_prompt());
        for adapter in [None, Some("legal")] {
            let ours = decoder_logits(
                &model,
                &prompt,
                adapter.map(|a| adapter_for(&model, dir.path(), a)),
            );
            let theirs = reference_logits(&mut reference, &prompt, adapter);
            let diff = common::worst(&ours, &theirs);
            println!("{compute:?}, adapter {adapter:?}: {diff:.2e} from the reference");
            assert!(
                diff < 1e-4,
                "{compute:?}, adapter {adapter:?}: off by {diff}"
            );
        }
    }
}

/// Two ChatGLM-6B sequences and their adapters in one batch (one prefilling its whole
/// prompt while the other decodes, then both decoding, with scattered blocks) get the
/// logits each gets alone, on both paths; and the paths agree.
#[test]
fn batching_changes_nothing_for_chatglm6b() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), 11);
    write_adapter(&dir.path().join("legal"), 3, 0.8);
    write_adapter(&dir.path().join("medical"), 4, 0.8);
    let prompts: [&[u32]; 2] = [&[5, 6, 7, 8, 9, 13, 14], &[10, 11, 12]];
    let mut by_path = Vec::new();
    for compute in [ComputePath::Kernels, ComputePath::Tensors] {
        let model = engine_decoder(dir.path(), compute);
        let adapters = [
            Some(adapter_for(&model, dir.path(), "legal")),
            Some(adapter_for(&model, dir.path(), "medical")),
        ];
        let alone: Vec<Vec<Tensor>> = prompts
            .iter()
            .zip(&adapters)
            .map(|(p, a)| decoder_logits(&model, p, a.clone()))
            .collect();
        let mut cache = KvCache::new(
            model.kv_shape(),
            16 * 4,
            KvDtype::F32,
            model.device(),
            model.kv_dtype(),
            model.compute_path(),
        )
        .unwrap();
        let tables: [Vec<u32>; 2] = [vec![3, 0], vec![2, 1]];
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| p.iter().chain(&SUFFIX).copied().collect())
            .collect();
        let step = |cache: &mut KvCache, parts: &[(usize, &[u32], usize)]| -> Tensor {
            let mut batch = Batch::default();
            for &(s, tokens, at) in parts {
                batch.push(tokens, at, &tables[s], adapters[s].clone(), true);
                batch.bidirectional(ids[s].len() - 1);
            }
            // Host traffic on the tensor path, as for every family: 5 uploads for a step
            // with a prompt (its mask among them), 4 for a decode step, nothing read back.
            let prompt = parts.iter().any(|p| p.1.len() > 1);
            let (logits, traffic) =
                zhiku_lm::transfer::counted(|| model.forward(&batch, cache).unwrap());
            if compute == ComputePath::Tensors {
                let uploads = if prompt { 5 } else { 4 };
                assert_eq!(
                    (traffic.uploads, traffic.read_backs),
                    (uploads, 0),
                    "{traffic:?}"
                );
            }
            logits
        };
        let mut together = [Vec::new(), Vec::new()];
        // The first prompt alone, then the second prompt beside the first's decode step.
        let l = step(&mut cache, &[(0, &ids[0], 0)]);
        together[0].push(l.get(0).unwrap());
        let l = step(
            &mut cache,
            &[(1, &ids[1], 0), (0, &FOLLOW[..1], ids[0].len())],
        );
        together[1].push(l.get(0).unwrap());
        together[0].push(l.get(1).unwrap());
        for i in 0..FOLLOW.len() - 1 {
            let l = step(
                &mut cache,
                &[
                    (0, &FOLLOW[i + 1..i + 2], ids[0].len() + i + 1),
                    (1, &FOLLOW[i..i + 1], ids[1].len() + i),
                ],
            );
            together[0].push(l.get(0).unwrap());
            together[1].push(l.get(1).unwrap());
        }
        together[1].push(
            step(&mut cache, &[(1, &FOLLOW[3..], ids[1].len() + 3)])
                .get(0)
                .unwrap(),
        );
        for s in 0..2 {
            let diff = common::worst(&alone[s], &together[s]);
            assert!(
                diff < 1e-5,
                "{compute:?}, sequence {s}: batching moved it by {diff}"
            );
        }
        by_path.push(alone);
    }
    for (s, (kernels, tensors)) in by_path[0].iter().zip(&by_path[1]).enumerate() {
        let diff = common::worst(kernels, tensors);
        println!("sequence {s}: tensor path {diff:.2e} from the kernel path");
        assert!(diff < 1e-4, "sequence {s}: the paths differ by {diff}");
    }
}

/// Through the engine: two ChatGLM-6B requests served in one batch give the tokens each
/// gets alone, and a prompt read bidirectionally is never served from the prefix cache.
#[test]
fn two_chatglm6b_requests_in_one_batch_answer_as_alone() {
    let dir = tempfile::tempdir().unwrap();
    for compute in [ComputePathArg::Kernels, ComputePathArg::Tensors] {
        let state = serving_state_on(dir.path(), compute);
        let jobs: [(&[u32], Option<&str>); 2] = [(&[5, 6, 7], Some("legal")), (&[13, 8], None)];
        let stats = &state.shared.stats;
        let steps = || stats.steps.load(std::sync::atomic::Ordering::Relaxed);
        let before = steps();
        let alone: Vec<String> = jobs
            .iter()
            .map(|(p, a)| {
                let done =
                    common::try_generate(&state, p.to_vec(), sampling("greedy"), *a).unwrap();
                assert_eq!(
                    done.cached_prompt_tokens, 0,
                    "a bidirectional prompt is not shared"
                );
                done.text
            })
            .collect();
        let alone_steps = steps() - before;
        let mut batched = false;
        for _ in 0..20 {
            let before = steps();
            let runs: Vec<_> = jobs
                .iter()
                .map(|(p, a)| {
                    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
                    state
                        .engine
                        .submit(zhiku_generator::engine::Job {
                            prompt: p.to_vec(),
                            sampling: sampling("greedy"),
                            adapter: a.map(str::to_owned),
                            deadline: None,
                            events,
                        })
                        .unwrap();
                    rx
                })
                .collect();
            let texts: Vec<String> = runs.into_iter().map(common::completion).collect();
            assert_eq!(texts, alone, "{compute:?}");
            // Together in a batch, they take fewer steps than one after the other.
            if steps() - before < alone_steps {
                batched = true;
                break;
            }
        }
        assert!(batched, "{compute:?}: the two requests never shared a step");
    }
}
