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
use crate::gemma::{GemmaConfig, GemmaEncoder};

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
/// `<s> a </s></s> b </s>`; Gemma: `<bos> a <eos>`, ids as Gemma's: pad 0, eos 1, bos 2);
/// returns the vocabulary size.
pub fn write_tokenizer(dir: &Path, model_type: &str) -> Result<usize, String> {
    let bert = model_type == "bert";
    let specials: &[&str] = match model_type {
        "bert" => &["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
        "gemma3_text" => &["<pad>", "<eos>", "<bos>", "<unk>"],
        _ => &["<s>", "<pad>", "</s>", "<unk>"],
    };
    let (bos, eos, unk) = match model_type {
        "bert" => (specials[2], specials[3], specials[1]),
        "gemma3_text" => (specials[2], specials[1], specials[3]),
        _ => (specials[0], specials[2], specials[3]),
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

/// Hidden size of [`write_gemma_checkpoint`]'s encoder; its Dense modules map it to
/// [`GEMMA_INNER_DENSE`] and then to [`GEMMA_DIMENSIONS`].
pub const GEMMA_HIDDEN: usize = 32;
pub const GEMMA_INNER_DENSE: usize = 64;
pub const GEMMA_DIMENSIONS: usize = 24;

/// An EmbeddingGemma-shaped sentence encoder with random weights, in the layout
/// sentence-transformers saves: a `gemma3_text` config.json (hidden 32, 4 query heads over 2
/// key/value heads of 16, bidirectional, one layer per entry of `layer_types`, window
/// `sliding_window` (`sliding_window / 2` each side), 64 positions), model.safetensors (norm weights random too, so that
/// Gemma's 1 + w matters), tokenizer.json over [`WORDS`], mean pooling, two bias-free
/// Identity Dense modules (32 → 64 → 24), modules.json and EmbeddingGemma's prompts.
pub fn write_gemma_checkpoint(
    dir: &Path,
    layer_types: &[&str],
    sliding_window: usize,
) -> Result<(), String> {
    let vocab = write_tokenizer(dir, "gemma3_text")?;
    let config = json!({
        "architectures": ["Gemma3TextModel"],
        "model_type": "gemma3_text",
        "vocab_size": vocab,
        "hidden_size": GEMMA_HIDDEN,
        "intermediate_size": 48,
        "num_hidden_layers": layer_types.len(),
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "query_pre_attn_scalar": 16,
        "sliding_window": sliding_window,
        "layer_types": layer_types,
        "max_position_embeddings": 64,
        "use_bidirectional_attention": true,
        "attention_bias": false,
        "attn_logit_softcapping": null,
        "rope_scaling": null,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1
    });
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(io)?;
    let cfg: GemmaConfig = serde_json::from_value(config).map_err(io)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    GemmaEncoder::load(vb, &cfg).map_err(io)?;
    for (name, var) in varmap.data().lock().map_err(io)?.iter() {
        if name.ends_with("norm.weight") {
            let noise = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).map_err(io)?;
            var.set(&noise).map_err(io)?;
        }
    }
    varmap.save(dir.join("model.safetensors")).map_err(io)?;

    let write = |rel: &str, value: serde_json::Value| -> Result<(), String> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(path, value.to_string()).map_err(io)
    };
    write(
        "1_Pooling/config.json",
        json!({"word_embedding_dimension": GEMMA_HIDDEN, "pooling_mode_cls_token": false,
               "pooling_mode_mean_tokens": true, "include_prompt": true}),
    )?;
    for (name, inputs, outputs) in [
        ("2_Dense", GEMMA_HIDDEN, GEMMA_INNER_DENSE),
        ("3_Dense", GEMMA_INNER_DENSE, GEMMA_DIMENSIONS),
    ] {
        write(
            &format!("{name}/config.json"),
            json!({"in_features": inputs, "out_features": outputs, "bias": false,
                   "activation_function": "torch.nn.modules.linear.Identity"}),
        )?;
        let weight = Tensor::randn(0f32, 0.2, (outputs, inputs), &Device::Cpu).map_err(io)?;
        let tensors = HashMap::from([("linear.weight".to_string(), weight)]);
        candle_core::safetensors::save(&tensors, dir.join(format!("{name}/model.safetensors")))
            .map_err(io)?;
    }
    let module = |idx: usize, path: &str, kind: &str| {
        json!({"idx": idx, "name": idx.to_string(), "path": path,
               "type": format!("sentence_transformers.models.{kind}")})
    };
    write(
        "modules.json",
        json!([
            module(0, "", "Transformer"),
            module(1, "1_Pooling", "Pooling"),
            module(2, "2_Dense", "Dense"),
            module(3, "3_Dense", "Dense"),
            module(4, "4_Normalize", "Normalize"),
        ]),
    )?;
    write(
        "config_sentence_transformers.json",
        json!({"prompts": {"query": "task: search result | query: ",
                           "document": "title: none | text: "},
               "default_prompt_name": null}),
    )?;
    write(
        "sentence_bert_config.json",
        json!({"max_seq_length": 2048, "do_lower_case": false}),
    )
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
