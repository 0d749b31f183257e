//! Tiny checkpoints written by the test (random weights, a real config.json, safetensors and
//! tokenizer.json) load through the same code as real models: XLM-RoBERTa, BERT with CLS
//! pooling, and the clear errors for what is not supported. Cross-encoders in both layouts
//! (XLMRobertaForSequenceClassification as bge-reranker, BertForSequenceClassification),
//! with weights made so that the ordering is known, rank and batch as they should.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::cosine;
use serde_json::json;
use zhiku_embedder::encoder::{AttentionMode, EncoderConfig, Positions, TransformerEncoder};
use zhiku_embedder::model::{ModelOptions, Pooling, Precision};
use zhiku_embedder::tokenizer::TextKind;
use zhiku_embedder::{CrossEncoder, EmbedderError, SentenceEncoder, testing};

/// A sentence encoder with random weights, written in the real formats.
fn write_checkpoint(dir: &Path, model_type: &str, pad_id: u32, max_positions: usize) {
    testing::write_checkpoint(dir, model_type, pad_id, max_positions).unwrap();
}

fn load(dir: &Path) -> Result<SentenceEncoder, EmbedderError> {
    SentenceEncoder::load(&ModelOptions::new(dir.to_string_lossy()))
}

fn embed(encoder: &SentenceEncoder, texts: &[&str]) -> Vec<Vec<f32>> {
    let tokenized: Vec<_> = texts
        .iter()
        .map(|t| encoder.tokenizer.encode(t, TextKind::Passage).unwrap())
        .collect();
    let inputs: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    encoder.embed_batch(&inputs).unwrap()
}

#[test]
fn xlm_roberta_loads_pads_and_truncates_at_its_window() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "xlm-roberta", 1, 18);
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    let encoder = load(dir.path()).unwrap();
    assert_eq!(encoder.info.model_type, "xlm-roberta");
    assert_eq!(encoder.info.dimensions, 32);
    // Positions start after the padding index: 18 - (1 + 1) usable.
    assert_eq!(encoder.info.max_input_tokens, 16);
    // e5-style ids get their prefixes; this one has none.
    assert_eq!(encoder.info.query_prefix, "");

    let texts = [
        "知识 库 问答",
        "hello",
        "模型 检索 段落 答案 问题 hello world 知识",
    ];
    let batched = embed(&encoder, &texts);
    for (text, vector) in texts.iter().zip(&batched) {
        let alone = embed(&encoder, &[text]);
        let cos = cosine(vector, &alone[0]);
        assert!(cos > 0.99999, "padding changed {text:?}: {cos}");
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    // Different texts, different vectors; the same text, the same vector.
    assert!(cosine(&batched[0], &batched[1]) < 0.999);
    assert_eq!(embed(&encoder, &[texts[0]]), embed(&encoder, &[texts[0]]));

    let long = vec!["知识"; 40].join(" ");
    let tokenized = encoder.tokenizer.encode(&long, TextKind::Passage).unwrap();
    assert!(tokenized.truncated);
    assert_eq!(tokenized.ids.len(), 16);
    assert_eq!(embed(&encoder, &[&long]).len(), 1);

    // Half precision is refused by nothing and stays close to f32.
    let mut options = ModelOptions::new(dir.path().to_string_lossy());
    options.precision = Precision::Bf16;
    let half = SentenceEncoder::load(&options).unwrap();
    assert!(cosine(&embed(&half, &[texts[2]])[0], &batched[2]) > 0.98);
}

#[test]
fn bert_with_cls_pooling_and_sentence_transformers_limits() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "bert", 0, 64);
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sentence_bert_config.json"),
        r#"{"max_seq_length": 8}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "问题 ", "passage": ""}}"#,
    )
    .unwrap();
    let encoder = load(dir.path()).unwrap();
    assert_eq!(encoder.info.pooling, Pooling::Cls);
    assert_eq!(encoder.info.max_input_tokens, 8);
    assert_eq!(encoder.info.query_prefix, "问题 ");
    let query = encoder
        .tokenizer
        .encode("知识 库", TextKind::Query)
        .unwrap();
    let passage = encoder
        .tokenizer
        .encode("知识 库", TextKind::Passage)
        .unwrap();
    assert_eq!(
        query.ids.len(),
        passage.ids.len() + 1,
        "the prefix adds a token"
    );

    // CLS pooling reads the first token only, yet attention lets it see the rest.
    let v = embed(&encoder, &["知识 库", "知识 问答"]);
    assert!(cosine(&v[0], &v[1]) < 0.99999);
}

#[test]
fn unsupported_models_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "bert", 0, 64);

    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_max_tokens": true}"#,
    )
    .unwrap();
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("`max` pooling"), "{err}");
    std::fs::remove_dir_all(dir.path().join("1_Pooling")).unwrap();

    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["model_type"] = json!("gpt2");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(matches!(err, EmbedderError::UnsupportedModel(_)));
    assert!(err.to_string().contains("`gpt2`"), "{err}");

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    config["model_type"] = json!("bert");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("has no model.safetensors"), "{err}");

    let err = SentenceEncoder::load(&ModelOptions {
        device: "tpu".into(),
        ..ModelOptions::new(dir.path().to_string_lossy())
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("bad device `tpu`"), "{err}");
}

/// Attention by length (the CPU's mode: sequences sorted by length, each length one batch,
/// rows put back in order) and batched (equal lengths reshaped, mixed lengths padded and
/// masked, or by length when padding would waste too much) give the same hidden states for
/// every token, in the caller's order, for both position schemes.
#[test]
fn attention_modes_agree_on_packed_batches() {
    for (model_type, pad_id, positions) in [
        ("bert", 0, Positions::FromZero),
        ("xlm-roberta", 1, Positions::AfterPadding),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), model_type, pad_id, 64);
        let cfg: EncoderConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.path().join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let encoder = TransformerEncoder::load(vb, &cfg, positions).unwrap();
        let max_len = encoder.max_sequence_length();
        for lengths in [
            vec![3, 7, 5],
            vec![4, 4, 4],
            vec![2, max_len],
            vec![9],
            vec![5, 3, 5, 3, 7, 3],
        ] {
            let ids: Vec<u32> = (0..lengths.iter().sum::<usize>())
                .map(|i| 3 + (i as u32 * 7) % 9)
                .collect();
            let by_length = encoder
                .forward_packed_with(&ids, &lengths, AttentionMode::ByLength)
                .unwrap();
            let batched = encoder
                .forward_packed_with(&ids, &lengths, AttentionMode::Batched)
                .unwrap();
            assert_eq!(by_length.dims(), [ids.len(), 32]);
            let diff: f32 = (by_length - batched)
                .and_then(|d| d.abs()?.max_all()?.to_scalar())
                .unwrap();
            assert!(diff < 1e-4, "{model_type} {lengths:?}: differ by {diff}");
        }
        // Lengths that do not partition the ids are an error, not a panic.
        assert!(encoder.forward_packed(&[1, 2, 3], &[2, 2]).is_err());
        assert!(encoder.forward_packed(&[1, 2], &[2, 0]).is_err());
    }
}

fn load_reranker(dir: &Path) -> Result<CrossEncoder, EmbedderError> {
    CrossEncoder::load(&ModelOptions::new(dir.to_string_lossy()))
}

fn scores(reranker: &CrossEncoder, query: &str, passages: &[&str]) -> Vec<f32> {
    let pairs: Vec<_> = passages
        .iter()
        .map(|p| reranker.encode(query, p).unwrap())
        .collect();
    reranker
        .score_batch(&pairs.iter().collect::<Vec<_>>())
        .unwrap()
}

/// Both layouts load through the embedder's loading code and rank by the share of the
/// relevant word ("答案"), whatever the query; scores of a batch equal those one by one.
#[test]
fn rerankers_of_both_layouts_rank_as_built_and_batch_exactly() {
    let passages = [
        "知识 库 问答 模型",
        "答案 答案 问题",
        "hello world",
        "检索 段落 答案 知识 库 问答",
        "答案",
    ];
    // By the share of 答案 among the pair's tokens (the query's and the special ones
    // included): 2 of 9, 1 of 6, 1 of 11 with XLM-R's template.
    let expected = [1, 4, 3];
    for (model_type, architecture) in [
        ("xlm-roberta", "XLMRobertaForSequenceClassification"),
        ("bert", "BertForSequenceClassification"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        testing::write_reranker(dir.path(), model_type, 40, "答案").unwrap();
        let reranker = load_reranker(dir.path()).unwrap();
        assert_eq!(reranker.info.architecture, architecture);
        assert_eq!(reranker.info.model_type, model_type);

        let batched = scores(&reranker, "问题 检索", &passages);
        let order = zhiku_embedder::reranker::order(&batched);
        assert_eq!(&order[..3], &expected, "{model_type}: {batched:?}");
        // Those without the word score below every one with it.
        let without = batched[0].max(batched[2]);
        assert!(
            expected
                .iter()
                .all(|&i| batched[i as usize] > without + 0.1),
            "{model_type}: {batched:?}"
        );
        for (passage, score) in passages.iter().zip(&batched) {
            let alone = scores(&reranker, "问题 检索", &[passage])[0];
            assert!(
                (alone - score).abs() < 1e-5,
                "{model_type} {passage:?}: batched {score}, alone {alone}"
            );
        }

        // BERT's pair template puts the passage in segment 1; XLM-R's in 0, after </s></s>.
        let pair = reranker.encode("问题", "答案 hello").unwrap();
        let (types, len) = if model_type == "bert" {
            (vec![0, 0, 0, 1, 1, 1], 6)
        } else {
            (vec![0; 7], 7)
        };
        assert_eq!((pair.type_ids.clone(), pair.ids.len()), (types, len));
        assert!(!pair.truncated);
        // Too long for the window (40 positions): the longer side is cut, and it says so.
        let long = vec!["段落"; 60].join(" ");
        let cut = reranker.encode("问题", &long).unwrap();
        assert!(cut.truncated);
        assert_eq!(cut.ids.len(), reranker.info.max_input_tokens);
        assert_eq!(scores(&reranker, "问题", &[&long]).len(), 1);
    }
}

#[test]
fn a_checkpoint_without_a_classification_head_is_not_a_reranker() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "xlm-roberta", 1, 18);
    let err = load_reranker(dir.path()).err().unwrap();
    assert!(matches!(err, EmbedderError::UnsupportedModel(_)), "{err}");
    assert!(err.to_string().contains("--reranker-model"), "{err}");

    // Two labels (a classifier, not a relevance score) are refused by name.
    let dir = tempfile::tempdir().unwrap();
    testing::write_reranker(dir.path(), "bert", 40, "答案").unwrap();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["id2label"] = json!({"0": "no", "1": "yes"});
    std::fs::write(&path, config.to_string()).unwrap();
    let err = load_reranker(dir.path()).err().unwrap().to_string();
    assert!(err.contains("2 labels"), "{err}");
}
