//! EmbeddingGemma's architecture on tiny checkpoints the test writes itself
//! ([`testing::write_gemma_checkpoint`]: a `gemma3_text` config.json, random safetensors, a
//! tokenizer, mean pooling and two Dense modules), loaded through the same code as the real
//! model: attention is bidirectional and windowed on sliding layers, a batch of mixed
//! lengths gives each text's own vector, and the Dense modules and normalisation apply.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::cosine;
use serde_json::json;
use zhiku_embedder::gemma::{GemmaConfig, GemmaEncoder};
use zhiku_embedder::model::{ModelOptions, Precision};
use zhiku_embedder::tokenizer::TextKind;
use zhiku_embedder::{CrossEncoder, EmbedderError, SentenceEncoder, testing};

const MIXED: &[&str] = &["sliding_attention", "sliding_attention", "full_attention"];

fn write(dir: &Path, layer_types: &[&str], window: usize) {
    testing::write_gemma_checkpoint(dir, layer_types, window).unwrap();
}

fn load(dir: &Path) -> Result<SentenceEncoder, EmbedderError> {
    SentenceEncoder::load(&ModelOptions::new(dir.to_string_lossy()))
}

/// The bare encoder, for hidden states per token.
fn bare_encoder(dir: &Path) -> GemmaEncoder {
    let cfg: GemmaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // SAFETY: the test's own file, not written while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    GemmaEncoder::load(vb, &cfg).unwrap()
}

fn first_row(encoder: &GemmaEncoder, ids: &[u32]) -> Vec<f32> {
    encoder
        .forward_packed(ids, &[ids.len()])
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn differs(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-5)
}

fn embed(encoder: &SentenceEncoder, texts: &[&str], kind: TextKind) -> Vec<Vec<f32>> {
    let tokenized: Vec<_> = texts
        .iter()
        .map(|t| encoder.tokenizer.encode(t, kind).unwrap())
        .collect();
    let inputs: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    encoder.embed_batch(&inputs).unwrap()
}

#[test]
fn attention_is_bidirectional_and_windowed_on_sliding_layers() {
    // (a) A full layer among sliding ones: the first token's state depends on the last
    // token, which a causal model would never let it see.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), MIXED, 4);
    let encoder = bare_encoder(dir.path());
    let base = [2u32, 4, 5, 6, 7, 8, 9, 10, 11, 1];
    let mut changed_last = base;
    changed_last[8] = 12;
    assert!(differs(
        &first_row(&encoder, &base),
        &first_row(&encoder, &changed_last)
    ));
    // The same ids give the same states.
    assert!(!differs(
        &first_row(&encoder, &base),
        &first_row(&encoder, &base)
    ));

    // One sliding layer of window 6: a bidirectional Gemma-3 token sees those at most 6 / 2
    // positions away (as transformers reads the config), so a change at 3 reaches token 0
    // and one at 4 does not.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &["sliding_attention"], 6);
    let encoder = bare_encoder(dir.path());
    let mut at3 = base;
    at3[3] = 12;
    let mut at4 = base;
    at4[4] = 12;
    let first = first_row(&encoder, &base);
    assert!(
        differs(&first, &first_row(&encoder, &at3)),
        "token 3 is inside the window"
    );
    assert!(
        !differs(&first, &first_row(&encoder, &at4)),
        "token 4 is outside the window"
    );
    // And symmetrically: the last token sees 3 back, not 4.
    let last = |ids: &[u32]| -> Vec<f32> {
        encoder
            .forward_packed(ids, &[ids.len()])
            .unwrap()
            .get(ids.len() - 1)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut back3 = base;
    back3[6] = 12;
    let mut back4 = base;
    back4[5] = 12;
    assert!(differs(&last(&base), &last(&back3)));
    assert!(!differs(&last(&base), &last(&back4)));
}

#[test]
fn a_batch_of_mixed_lengths_gives_each_text_its_own_vector() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), MIXED, 4);
    let encoder = load(dir.path()).unwrap();
    assert_eq!(encoder.info.model_type, "gemma3_text");
    // (b) Lengths on both sides of the window, two of equal length (one attention batch).
    let texts = [
        "知识 库 问答",
        "hello",
        "模型 检索 段落 答案 问题 hello world 知识",
        "问答 模型 检索",
        "知识 知识 知识 知识 知识 知识 知识 知识 知识 知识 知识 知识",
    ];
    for kind in [TextKind::Query, TextKind::Passage] {
        let batched = embed(&encoder, &texts, kind);
        for (text, vector) in texts.iter().zip(&batched) {
            let alone = embed(&encoder, &[text], kind);
            let cos = cosine(vector, &alone[0]);
            assert!(cos > 0.99999, "batching changed {text:?}: {cos}");
        }
        assert!(cosine(&batched[0], &batched[3]) < 0.9999);
    }
}

#[test]
fn dense_modules_and_normalisation_follow_pooling() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), MIXED, 4);
    let encoder = load(dir.path()).unwrap();
    // (c) 3_Dense's width, not the hidden size; EmbeddingGemma's prompts; the window from
    // config.json (64 positions) under sentence-transformers' 2048.
    assert_eq!(encoder.info.dimensions, testing::GEMMA_DIMENSIONS);
    assert_eq!(encoder.info.max_input_tokens, 64);
    assert_eq!(encoder.info.pooling.as_str(), "mean");
    assert_eq!(encoder.info.query_prefix, "task: search result | query: ");
    assert_eq!(encoder.info.passage_prefix, "title: none | text: ");

    let text = "知识 库 问答 hello";
    let ids = encoder
        .tokenizer
        .encode(text, TextKind::Passage)
        .unwrap()
        .ids;
    assert_eq!(ids.first(), Some(&2), "<bos> first");
    assert_eq!(ids.last(), Some(&1), "<eos> last");
    let vector = encoder.embed_batch(&[&ids]).unwrap().remove(0);
    let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");

    // The same by hand: mean of the token states, 2_Dense, 3_Dense, L2.
    let hidden = bare_encoder(dir.path())
        .forward_packed(&ids, &[ids.len()])
        .unwrap();
    let dense = |name: &str| -> Tensor {
        let tensors = candle_core::safetensors::load(
            dir.path().join(format!("{name}/model.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        tensors["linear.weight"].clone()
    };
    let pooled = hidden.mean_keepdim(0).unwrap();
    let projected = pooled
        .matmul(&dense("2_Dense").t().unwrap())
        .unwrap()
        .matmul(&dense("3_Dense").t().unwrap())
        .unwrap();
    let by_hand: Vec<f32> = projected.squeeze(0).unwrap().to_vec1().unwrap();
    assert!(cosine(&vector, &by_hand) > 0.99999);
    // Without the Dense modules the vector is the pooled state itself (hidden wide).
    std::fs::write(
        dir.path().join("modules.json"),
        json!([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
        .to_string(),
    )
    .unwrap();
    let plain = load(dir.path()).unwrap();
    assert_eq!(plain.info.dimensions, testing::GEMMA_HIDDEN);
    let pooled: Vec<f32> = pooled.squeeze(0).unwrap().to_vec1().unwrap();
    assert!(cosine(&plain.embed_batch(&[&ids]).unwrap()[0], &pooled) > 0.99999);
}

#[test]
fn what_gemma_cannot_do_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), MIXED, 4);
    // Half precision overflows Gemma's activations; bf16 is fine.
    let mut options = ModelOptions::new(dir.path().to_string_lossy());
    options.precision = Precision::F16;
    let err = SentenceEncoder::load(&options).err().unwrap().to_string();
    assert!(err.contains("f16"), "{err}");
    options.precision = Precision::Bf16;
    let half = SentenceEncoder::load(&options).unwrap();
    let full = load(dir.path()).unwrap();
    let text = ["知识 库 问答 hello world"];
    let cos = cosine(
        &embed(&half, &text, TextKind::Query)[0],
        &embed(&full, &text, TextKind::Query)[0],
    );
    assert!(cos > 0.98, "bf16 against f32: {cos}");

    // Not a cross-encoder.
    let err = CrossEncoder::load(&ModelOptions::new(dir.path().to_string_lossy()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a cross-encoder"), "{err}");

    // A causal Gemma-3 is a language model.
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["use_bidirectional_attention"] = json!(false);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("use_bidirectional_attention"), "{err}");
}
