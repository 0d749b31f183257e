//! Tiny checkpoints in the real file formats (config.json, model.safetensors,
//! tokenizer.json), for this crate's tests and the workspace's: they load through the same
//! code as real models. No real reranker weights can be had offline, so the cross-encoder is
//! tested on [`write_reranker`]'s, whose scores are predictable by construction.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;

use crate::encoder::{EncoderConfig, Positions, TransformerEncoder};

/// The words of the tiny vocabulary (after four special tokens); text is split on spaces.
pub const WORDS: &[&str] = &[
    "知识", "库", "问答", "模型", "检索", "段落", "答案", "问题", "hello", "world",
];

const HIDDEN: usize = 32;
const INTERMEDIATE: usize = 64;

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Writes a WordLevel tokenizer.json over [`WORDS`] with the family's special tokens and
/// pair template (BERT: `[CLS] a [SEP] b [SEP]`, the second segment type 1; XLM-R:
/// `<s> a </s></s> b </s>`); returns the vocabulary size.
pub fn write_tokenizer(dir: &Path, model_type: &str) -> Result<usize, String> {
    let bert = model_type == "bert";
    let specials: &[&str] = if bert {
        &["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    } else {
        &["<s>", "<pad>", "</s>", "<unk>"]
    };
    let (bos, eos, unk) = if bert {
        (specials[2], specials[3], specials[1])
    } else {
        (specials[0], specials[2], specials[3])
    };
    let mut vocab = serde_json::Map::new();
    for (i, token) in specials.iter().chain(WORDS).enumerate() {
        vocab.insert(token.to_string(), json!(i));
    }
    let id = |t: &str| vocab[t].as_u64().unwrap_or(0);
    let special = |t: &str| {
        json!({"id": id(t), "content": t, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let token = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let sequence = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let second = if bert { 1 } else { 0 };
    let mut pair = vec![token(bos, 0), sequence("A", 0), token(eos, 0)];
    if !bert {
        pair.push(token(eos, 0));
    }
    pair.extend([sequence("B", second), token(eos, second)]);
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": specials.iter().map(|t| special(t)).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [token(bos, 0), sequence("A", 0), token(eos, 0)],
            "pair": pair,
            "special_tokens": {
                bos: {"id": bos, "ids": [id(bos)], "tokens": [bos]},
                eos: {"id": eos, "ids": [id(eos)], "tokens": [eos]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).map_err(io)?;
    Ok(specials.len() + WORDS.len())
}

/// Writes config.json (hidden 32, 4 heads, `layers` layers; `extra` fields merged in).
fn write_config(
    dir: &Path,
    model_type: &str,
    vocab_size: usize,
    pad_id: u32,
    max_positions: usize,
    layers: usize,
    extra: serde_json::Value,
) -> Result<EncoderConfig, String> {
    let mut config = json!({
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": INTERMEDIATE,
        "hidden_act": "gelu",
        "max_position_embeddings": max_positions,
        "type_vocab_size": if model_type == "bert" { 2 } else { 1 },
        "layer_norm_eps": 1e-5,
        "pad_token_id": pad_id,
        "position_embedding_type": "absolute"
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(io)?;
    serde_json::from_value(config).map_err(io)
}

/// A sentence encoder of `model_type` (`bert` or `xlm-roberta`) with random weights: two
/// layers, hidden 32, over [`WORDS`].
pub fn write_checkpoint(
    dir: &Path,
    model_type: &str,
    pad_id: u32,
    max_positions: usize,
) -> Result<(), String> {
    let vocab = write_tokenizer(dir, model_type)?;
    let cfg = write_config(dir, model_type, vocab, pad_id, max_positions, 2, json!({}))?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let positions = if model_type == "bert" {
        Positions::FromZero
    } else {
        Positions::AfterPadding
    };
    TransformerEncoder::load(vb, &cfg, positions).map_err(io)?;
    varmap.save(dir.join("model.safetensors")).map_err(io)
}

/// A cross-encoder whose relevance grows with the share of the word `relevant` among the
/// pair's tokens: `bert` writes BertForSequenceClassification (`bert.*`, `bert.pooler`,
/// `classifier`), `xlm-roberta` XLMRobertaForSequenceClassification (`roberta.*`,
/// `classifier.dense`, `classifier.out_proj`), as bge-reranker and bce-reranker are laid out.
///
/// How: each token's embedding is its own axis; one layer whose attention is uniform (zero
/// queries and keys) with identity values and output, and a zero feed-forward, so the first
/// token's state is the normalised mean of the pair's tokens plus its own; the head reads
/// the `relevant` axis of it. So a pair without the word scores low, and more of it scores
/// higher.
pub fn write_reranker(
    dir: &Path,
    model_type: &str,
    max_positions: usize,
    relevant: &str,
) -> Result<(), String> {
    let bert = model_type == "bert";
    let vocab = write_tokenizer(dir, model_type)?;
    let axis = 4 + WORDS
        .iter()
        .position(|w| *w == relevant)
        .ok_or_else(|| format!("`{relevant}` is not one of the tiny vocabulary's words"))?;
    let architecture = if bert {
        "BertForSequenceClassification"
    } else {
        "XLMRobertaForSequenceClassification"
    };
    let pad_id = if bert { 0 } else { 1 };
    let cfg = write_config(
        dir,
        model_type,
        vocab,
        pad_id,
        max_positions,
        1,
        json!({"architectures": [architecture], "id2label": {"0": "LABEL_0"}}),
    )?;
    let dev = &Device::Cpu;
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, dev);
    let ones = |n: usize| Tensor::ones(n, DType::F32, dev);
    let eye = |n: usize| Tensor::eye(n, DType::F32, dev);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, t: candle_core::Result<Tensor>| -> Result<(), String> {
        tensors.insert(name, t.map_err(io)?);
        Ok(())
    };
    let p = if bert { "bert" } else { "roberta" };
    let one_hot: Vec<f32> = (0..vocab * HIDDEN)
        .map(|i| if i / HIDDEN == i % HIDDEN { 1.0 } else { 0.0 })
        .collect();
    put(
        format!("{p}.embeddings.word_embeddings.weight"),
        Tensor::from_vec(one_hot, (vocab, HIDDEN), dev),
    )?;
    put(
        format!("{p}.embeddings.position_embeddings.weight"),
        zeros(&[cfg.max_position_embeddings, HIDDEN]),
    )?;
    put(
        format!("{p}.embeddings.token_type_embeddings.weight"),
        zeros(&[cfg.type_vocab_size, HIDDEN]),
    )?;
    let layer = format!("{p}.encoder.layer.0");
    let norms = [
        format!("{p}.embeddings.LayerNorm"),
        format!("{layer}.attention.output.LayerNorm"),
        format!("{layer}.output.LayerNorm"),
    ];
    for norm in norms {
        put(format!("{norm}.weight"), ones(HIDDEN))?;
        put(format!("{norm}.bias"), zeros(&[HIDDEN]))?;
    }
    let linears = [
        ("attention.self.query", zeros(&[HIDDEN, HIDDEN])),
        ("attention.self.key", zeros(&[HIDDEN, HIDDEN])),
        ("attention.self.value", eye(HIDDEN)),
        ("attention.output.dense", eye(HIDDEN)),
        ("intermediate.dense", zeros(&[INTERMEDIATE, HIDDEN])),
        ("output.dense", zeros(&[HIDDEN, INTERMEDIATE])),
    ];
    for (name, weight) in linears {
        let weight = weight.map_err(io)?;
        let out = weight.dims()[0];
        put(format!("{layer}.{name}.weight"), Ok(weight))?;
        put(format!("{layer}.{name}.bias"), zeros(&[out]))?;
    }
    let (dense, out) = if bert {
        ("bert.pooler.dense", "classifier")
    } else {
        ("classifier.dense", "classifier.out_proj")
    };
    put(format!("{dense}.weight"), eye(HIDDEN))?;
    put(format!("{dense}.bias"), zeros(&[HIDDEN]))?;
    let reader: Vec<f32> = (0..HIDDEN)
        .map(|i| if i == axis { 4.0 } else { 0.0 })
        .collect();
    put(
        format!("{out}.weight"),
        Tensor::from_vec(reader, (1, HIDDEN), dev),
    )?;
    put(format!("{out}.bias"), zeros(&[1]))?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).map_err(io)
}
