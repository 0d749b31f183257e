//! zhiku's GGUF tokenizers give llama.cpp's ids. The ids in tests/data/tokenizer_golden.json
//! come from llama-cpp-python (`scripts/tokenizer-golden`): contents as plain text
//! (`special=False`), template text with its control tokens (`special=True`), for the Qwen2.5
//! and SmolLM2 GGUFs, for Qwen2.5's vocabulary under other pre-tokenizer names, and for a
//! tiny SentencePiece vocabulary. Model files that are absent are skipped with a line.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::{self, Value};
use serde::Deserialize;
use zhiku_lm::template::Prompt;
use zhiku_lm::tokenizer::GenTokenizer;

#[derive(Deserialize)]
struct Golden {
    llama_cpp_python: String,
    models: Vec<ModelCases>,
    sentencepiece: SentencePieceCases,
}

#[derive(Deserialize)]
struct ModelCases {
    file: String,
    pre: Option<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    special: bool,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct SentencePieceCases {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    variants: Vec<SentencePieceVariant>,
}

#[derive(Deserialize)]
struct SentencePieceVariant {
    add_space_prefix: bool,
    cases: Vec<Case>,
}

fn golden() -> Golden {
    serde_json::from_str(include_str!("data/tokenizer_golden.json")).unwrap()
}

fn models_dir() -> PathBuf {
    std::env::var_os("ZHIKU_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// Our ids for each case (plain or trusted as the case says); the mismatches, described.
fn mismatches(tokenizer: &GenTokenizer, label: &str, cases: &[Case]) -> Vec<String> {
    let mut wrong = Vec::new();
    for case in cases {
        let ours = if case.special {
            tokenizer.encode(&case.text)
        } else {
            tokenizer.encode_plain(&case.text)
        }
        .unwrap();
        if ours != case.ids {
            wrong.push(format!(
                "{label}: {:?} (special={}):\n  llama.cpp {:?}\n  zhiku     {:?}",
                case.text, case.special, case.ids, ours
            ));
        }
    }
    wrong
}

#[test]
fn gguf_bpe_vocabularies_tokenize_as_llama_cpp() {
    let golden = golden();
    let mut by_file: BTreeMap<&str, Vec<&ModelCases>> = BTreeMap::new();
    for m in &golden.models {
        by_file.entry(m.file.as_str()).or_default().push(m);
    }
    let mut wrong = Vec::new();
    let mut compared = 0;
    for (file, variants) in by_file {
        let path = models_dir().join(file);
        if !path.is_file() {
            println!(
                "skipping {file}: absent (scripts/fetch-models smollm2 qwen2.5-0.5b fetches it)"
            );
            continue;
        }
        let mut reader = std::fs::File::open(&path).unwrap();
        let mut content = gguf_file::Content::read(&mut reader).unwrap();
        let own_pre = content.metadata["tokenizer.ggml.pre"].clone();
        for variant in variants {
            let pre = match &variant.pre {
                Some(pre) => Value::String(pre.clone()),
                None => own_pre.clone(),
            };
            let label = format!("{file} (pre {})", pre.to_string().unwrap());
            content.metadata.insert("tokenizer.ggml.pre".into(), pre);
            let tokenizer = GenTokenizer::from_gguf(&content).unwrap();
            wrong.extend(mismatches(&tokenizer, &label, &variant.cases));
            compared += variant.cases.len();
            // Plain text decodes back to itself.
            for case in variant.cases.iter().filter(|c| !c.special) {
                assert_eq!(tokenizer.decode(&case.ids).unwrap(), case.text, "{label}");
            }
        }
    }
    println!(
        "{compared} cases compared with llama-cpp-python {}",
        golden.llama_cpp_python
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn an_unknown_pre_tokenizer_falls_back_to_llama_cpps_default() {
    let golden = golden();
    let Some(default) = golden
        .models
        .iter()
        .find(|m| m.pre.as_deref() == Some("default"))
    else {
        panic!("the golden file has no `default` variant");
    };
    let path = models_dir().join(&default.file);
    if !path.is_file() {
        println!("skipping: {} is absent", default.file);
        return;
    }
    let mut reader = std::fs::File::open(&path).unwrap();
    let mut content = gguf_file::Content::read(&mut reader).unwrap();
    for pre in [Some("no-such-pre-tokenizer"), None] {
        match pre {
            Some(p) => content
                .metadata
                .insert("tokenizer.ggml.pre".into(), Value::String(p.into())),
            None => content.metadata.remove("tokenizer.ggml.pre"),
        };
        let tokenizer = GenTokenizer::from_gguf(&content).unwrap();
        let wrong = mismatches(&tokenizer, &format!("{pre:?}"), &default.cases);
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

fn sentencepiece_gguf(spm: &SentencePieceCases, add_space_prefix: bool) -> GenTokenizer {
    let metadata = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", common::gguf_strings(&spm.tokens)),
        (
            "tokenizer.ggml.scores",
            Value::Array(spm.scores.iter().copied().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(spm.types.iter().copied().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        (
            "tokenizer.ggml.add_space_prefix",
            Value::Bool(add_space_prefix),
        ),
    ];
    GenTokenizer::from_gguf(&common::gguf_vocab(&metadata)).unwrap()
}

#[test]
fn gguf_sentencepiece_vocabularies_tokenize_as_llama_cpp() {
    let golden = golden();
    let spm = &golden.sentencepiece;
    let mut wrong = Vec::new();
    for variant in &spm.variants {
        let tokenizer = sentencepiece_gguf(spm, variant.add_space_prefix);
        let label = format!(
            "SentencePiece add_space_prefix={}",
            variant.add_space_prefix
        );
        wrong.extend(mismatches(&tokenizer, &label, &variant.cases));
        // Plain text decodes back to itself (the dummy prefix goes again), where no added
        // token put another dummy prefix after it.
        for case in variant
            .cases
            .iter()
            .filter(|c| !c.special && !c.text.contains('<'))
        {
            assert_eq!(tokenizer.decode(&case.ids).unwrap(), case.text, "{label}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_sentencepiece_gguf_works_for_generation() {
    let golden = golden();
    let spm = &golden.sentencepiece;
    let tokenizer = sentencepiece_gguf(spm, true);
    // Prompts start with BOS (llama.cpp's default for SentencePiece), once.
    let bos = tokenizer.token_to_id("<s>").unwrap();
    let ids = tokenizer
        .encode_prompt(&Prompt::trusted("hello world"))
        .unwrap();
    assert_eq!(ids[0], bos);
    assert_eq!(&ids[1..], tokenizer.encode_plain("hello world").unwrap());
    let ids = tokenizer
        .encode_prompt(&Prompt::trusted("<s>hello world"))
        .unwrap();
    assert_eq!(ids.iter().filter(|id| **id == bos).count(), 1);
    // Byte fallback: characters outside the vocabulary are their UTF-8 bytes, and decode back.
    let emoji = tokenizer.encode_plain("😀").unwrap();
    let byte = |b: u8| tokenizer.token_to_id(&format!("<0x{b:02X}>")).unwrap();
    assert!(emoji.ends_with(&[byte(0xF0), byte(0x9F), byte(0x98), byte(0x80)]));
    assert_eq!(tokenizer.decode(&emoji).unwrap(), "😀");
    // Generation stops at </s>; its name is the template's eos.
    let eos = tokenizer.token_to_id("</s>").unwrap();
    assert!(tokenizer.eos_ids.contains(&eos));
    assert_eq!(tokenizer.eos.as_deref(), Some("</s>"));
    assert_eq!(tokenizer.bos.as_deref(), Some("<s>"));
}

#[test]
fn the_pre_tokenizer_follows_the_gguf_name() {
    // Merges that join digits: GLM-4 and Llama 3 keep three digits together, Qwen2 and SmolLM
    // none, GPT-2 all.
    let merges = ["1 2", "12 3", "123 4"];
    let pieces = |pre: &str| {
        let content = common::gguf_vocab(&common::byte_level_gguf_vocab(pre, &merges, &[], &[]));
        let tokenizer = GenTokenizer::from_gguf(&content).unwrap();
        let ids = tokenizer.encode_plain("1234").unwrap();
        ids.iter()
            .map(|id| tokenizer.inner.id_to_token(*id).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(pieces("glm4"), ["123", "4"]);
    assert_eq!(pieces("chatglm-bpe"), ["123", "4"]);
    assert_eq!(pieces("llama-bpe"), ["123", "4"]);
    assert_eq!(pieces("qwen2"), ["1", "2", "3", "4"]);
    assert_eq!(pieces("smollm"), ["1", "2", "3", "4"]);
    assert_eq!(pieces("gpt-2"), ["1234"]);
    // llama.cpp's default splits numbers in threes after its punctuation and GPT-2 splits.
    assert_eq!(pieces("default"), ["123", "4"]);
}
