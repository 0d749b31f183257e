//! all-MiniLM-L6-v2 through zhiku's loading, tokenizing and inference code matches
//! sentence-transformers' own vectors (tests/fixtures/minilm_reference.json, made by
//! tests/fixtures/make_minilm_reference.py).

mod common;

use common::{cosine, minilm_dir};
use serde::Deserialize;
use zhiku_embedder::SentenceEncoder;
use zhiku_embedder::model::{ModelOptions, Precision};
use zhiku_embedder::tokenizer::TextKind;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    vector: Vec<f32>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(precision: Precision) -> SentenceEncoder {
    let mut options = ModelOptions::new(minilm_dir().to_string_lossy());
    options.precision = precision;
    SentenceEncoder::load(&options).expect("MiniLM loads")
}

#[test]
fn matches_sentence_transformers_batched_and_alone() {
    let reference = reference();
    assert!(reference.items.len() >= 20);
    assert!(
        reference
            .items
            .iter()
            .filter(|i| i
                .text
                .chars()
                .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)))
            .count()
            >= 5
    );
    let encoder = load(Precision::F32);
    assert_eq!(encoder.info.dimensions, 384);
    assert_eq!(encoder.info.max_input_tokens, reference.max_seq_length);
    assert_eq!(encoder.info.pooling.as_str(), "mean");

    let tokenized: Vec<_> = reference
        .items
        .iter()
        .map(|item| {
            encoder
                .tokenizer
                .encode(&item.text, TextKind::Passage)
                .unwrap()
        })
        .collect();
    // The two long texts go past 256 tokens and must be truncated exactly as upstream.
    assert_eq!(tokenized.iter().filter(|t| t.truncated).count(), 2);
    assert!(tokenized.iter().all(|t| t.ids.len() <= 256));

    // All at once: padding must not change any vector.
    let inputs: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    let batched = encoder.embed_batch(&inputs).unwrap();
    for (item, vector) in reference.items.iter().zip(&batched) {
        let cos = cosine(vector, &item.vector);
        assert!(cos >= 0.9999, "batched cosine {cos} for {:?}", item.text);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    // One at a time.
    for (item, t) in reference.items.iter().zip(&tokenized) {
        let alone = encoder.embed_batch(&[t.ids.as_slice()]).unwrap();
        let cos = cosine(&alone[0], &item.vector);
        assert!(cos >= 0.9999, "alone cosine {cos} for {:?}", item.text);
    }
}

#[test]
fn half_precisions_stay_close() {
    let reference = reference();
    for precision in [Precision::Bf16, Precision::F16] {
        let encoder = load(precision);
        assert_eq!(encoder.info.precision, precision);
        let tokenized: Vec<_> = reference.items[..6]
            .iter()
            .map(|i| {
                encoder
                    .tokenizer
                    .encode(&i.text, TextKind::Passage)
                    .unwrap()
            })
            .collect();
        let inputs: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
        let vectors = encoder.embed_batch(&inputs).unwrap();
        for (item, vector) in reference.items.iter().zip(&vectors) {
            let cos = cosine(vector, &item.vector);
            assert!(
                cos >= 0.99,
                "{precision:?} cosine {cos} for {:?}",
                item.text
            );
        }
    }
}

#[test]
fn similar_meanings_are_nearer() {
    let encoder = load(Precision::F32);
    let texts = [
        "What is the capital of France?",
        "Paris is the capital and most populous city of France.",
        "I love programming in Rust!",
    ];
    let tokenized: Vec<_> = texts
        .iter()
        .map(|t| encoder.tokenizer.encode(t, TextKind::Query).unwrap())
        .collect();
    let inputs: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    let v = encoder.embed_batch(&inputs).unwrap();
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.2);
}
