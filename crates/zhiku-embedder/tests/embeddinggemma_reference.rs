//! EmbeddingGemma-300M as `scripts/fetch-models embeddinggemma` lays it out loads as a
//! `gemma3_text` sentence encoder, and its vectors match sentence-transformers' on the same
//! files (tests/fixtures/embeddinggemma_reference.json, made by
//! tests/fixtures/make_embeddinggemma_reference.py): Chinese and English, queries and
//! passages with the model's prompts, one text longer than the sliding window. Prints
//! `SKIPPED` without the model (it is not in the default fetch: 1.2 GB).

mod common;

use std::path::PathBuf;

use common::cosine;
use serde::Deserialize;
use zhiku_embedder::SentenceEncoder;
use zhiku_embedder::model::ModelOptions;
use zhiku_embedder::tokenizer::TextKind;

#[derive(Deserialize)]
struct Reference {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    kind: String,
    tokens: usize,
    vector: Vec<f32>,
}

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ZHIKU_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join("embeddinggemma-300m");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        println!(
            "SKIPPED: {} is missing (scripts/fetch-models embeddinggemma)",
            dir.display()
        );
        None
    }
}

#[test]
fn loads_as_gemma3_and_matches_sentence_transformers() {
    let Some(dir) = model_dir() else { return };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/embeddinggemma_reference.json"
    );
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let encoder = SentenceEncoder::load(&ModelOptions::new(dir.to_string_lossy())).expect("loads");
    assert_eq!(encoder.info.model_type, "gemma3_text");
    assert_eq!(encoder.info.dimensions, 768);
    assert_eq!(encoder.info.max_input_tokens, 2048);
    assert_eq!(encoder.info.pooling.as_str(), "mean");
    assert_eq!(encoder.info.query_prefix, "task: search result | query: ");
    assert_eq!(encoder.info.passage_prefix, "title: none | text: ");

    let tokenized: Vec<_> = reference
        .items
        .iter()
        .map(|item| {
            let kind = if item.kind == "query" {
                TextKind::Query
            } else {
                TextKind::Passage
            };
            let t = encoder.tokenizer.encode(&item.text, kind).unwrap();
            // <bos>, the prompt, the text, <eos>, as sentence-transformers tokenizes.
            assert_eq!(t.ids.len(), item.tokens, "{} {:?}", item.kind, item.text);
            t
        })
        .collect();
    // All in one batch: mixed lengths, the long ones past the 512-token window.
    let inputs: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    let vectors = encoder.embed_batch(&inputs).unwrap();
    let mut worst = 1.0f64;
    for (item, vector) in reference.items.iter().zip(&vectors) {
        let cos = cosine(vector, &item.vector);
        println!("cosine {cos:.6} {} ({} tokens)", item.kind, item.tokens);
        worst = worst.min(cos);
        assert!(
            cos >= 0.999,
            "cosine {cos} for {} {:?}",
            item.kind,
            item.text
        );
    }
    println!(
        "worst cosine against sentence-transformers: {worst:.6} (1 - cos = {:.1e})",
        1.0 - worst
    );

    // A Chinese question lies nearer its passage than an unrelated one.
    let embed = |text: &str, kind| encoder.tokenizer.encode(text, kind).unwrap().ids;
    let q = embed("小拾喜欢做什么？", TextKind::Query);
    let right = embed("小拾喜欢玩手机、打游戏、看电影。", TextKind::Passage);
    let wrong = embed(
        "向量数据库 Qdrant 用于存储段落的向量、文本和来源。",
        TextKind::Passage,
    );
    let v = encoder
        .embed_batch(&[q.as_slice(), right.as_slice(), wrong.as_slice()])
        .unwrap();
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.05);
}
