//! EmbeddingGemma-300M as `scripts/fetch-models embeddinggemma` lays it out loads as a
//! `gemma3_text` sentence encoder, and its vectors match sentence-transformers' on the same
//! files (tests/fixtures/embeddinggemma_reference.json, made by
//! tests/fixtures/make_embeddinggemma_reference.py): Chinese and English, queries and
//! passages with the model's prompts, one text longer than the sliding window. Prints
//! `SKIPPED` without the model (it is not in the default fetch: 1.2 GB).

mod common;

use std::path::PathBuf;

use common::{cosine, embed_reference_items, reference_items};
use zhiku_embedder::SentenceEncoder;
use zhiku_embedder::model::ModelOptions;
use zhiku_embedder::tokenizer::TextKind;

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
    let items = reference_items("embeddinggemma_reference.json");
    let encoder = SentenceEncoder::load(&ModelOptions::new(dir.to_string_lossy())).expect("loads");
    assert_eq!(encoder.info.model_type, "gemma3_text");
    assert_eq!(encoder.info.dimensions, 768);
    assert_eq!(encoder.info.max_input_tokens, 2048);
    assert_eq!(encoder.info.pooling.as_str(), "mean");
    assert_eq!(encoder.info.query_prefix, "task: search result | query: ");
    assert_eq!(encoder.info.passage_prefix, "title: none | text: ");

    // <bos>, the prompt, the text, <eos>, as sentence-transformers tokenizes; all in one
    // batch: mixed lengths, the long ones past the 512-token window.
    let vectors = embed_reference_items(&encoder, &items);
    let mut worst = 1.0f64;
    for (item, vector) in items.iter().zip(&vectors) {
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
