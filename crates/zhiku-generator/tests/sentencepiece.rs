//! SentencePiece `tokenizer.model` files the test encodes (ModelProto protobuf), read into
//! `tokenizers` pipelines: unigram and BPE with byte fallback.

mod common;

use common::{chatglm_style_bpe_model, piece, sentencepiece_model};
use zhiku_lm::tokenizer::sentencepiece::{
    piece_type, tokenizer_from_model_bytes, tokenizer_from_model_file,
};

fn tokens(t: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
    t.encode(text, false).unwrap().get_tokens().to_vec()
}

#[test]
fn unigram_models_pick_the_likeliest_pieces() {
    let mut pieces = vec![
        piece("<unk>", 0.0, piece_type::UNKNOWN),
        piece("<s>", 0.0, piece_type::CONTROL),
        piece("</s>", 0.0, piece_type::CONTROL),
        piece("▁hello", -1.0, piece_type::NORMAL),
        piece("▁world", -1.0, piece_type::NORMAL),
        piece("▁小拾", -1.5, piece_type::NORMAL),
    ];
    for c in ["▁", "h", "e", "l", "o", "w", "r", "d", "小", "拾"] {
        pieces.push(piece(c, -6.0, piece_type::NORMAL));
    }
    let t = tokenizer_from_model_bytes(&sentencepiece_model(pieces, 1, false), &[]).unwrap();
    assert_eq!(tokens(&t, "hello world"), ["▁hello", "▁world"]);
    assert_eq!(tokens(&t, "小拾 hello"), ["▁小拾", "▁hello"]);
    assert_eq!(tokens(&t, "held"), ["▁", "h", "e", "l", "d"]);
    let ids = t.encode("hello world", false).unwrap().get_ids().to_vec();
    assert_eq!(t.decode(&ids, true).unwrap(), "hello world");
    // Control pieces are matched whole and skipped when decoding.
    assert_eq!(t.encode("</s>", false).unwrap().get_ids(), [2]);
}

#[test]
fn bpe_models_merge_in_vocabulary_order_and_fall_back_to_bytes() {
    let (model, n) = chatglm_style_bpe_model();
    let t = tokenizer_from_model_bytes(&model, &["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"])
        .unwrap();
    assert_eq!(tokens(&t, "hello world"), ["▁hello", "▁world"]);
    // 小 is not a piece: its three UTF-8 bytes.
    assert_eq!(
        tokens(&t, "hello 小"),
        ["▁hello", "▁", "<0xE5>", "<0xB0>", "<0x8F>"]
    );
    for text in ["hello world", "hello 小拾 world", "dr. owl"] {
        let ids = t.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(t.decode(&ids, true).unwrap(), text);
    }
    // The appended specials get the ids after the vocabulary, as ChatGLM's tokenizer gives.
    assert_eq!(t.token_to_id("[gMASK]"), Some(n as u32 + 1));
    assert_eq!(t.token_to_id("sop"), Some(n as u32 + 3));
    let ids = t
        .encode("[gMASK]sop hello", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(&ids[..2], [n as u32 + 1, n as u32 + 3]);
    // "sop" inside a word stays part of the word.
    assert!(
        !t.encode("hellosop", false)
            .unwrap()
            .get_ids()
            .contains(&(n as u32 + 3))
    );
}

#[test]
fn files_that_are_not_sentencepiece_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.model");
    // GLM-4's tokenizer.model is tiktoken: base64 token, space, rank, per line.
    std::fs::write(&path, "IQ== 0\nIg== 1\n").unwrap();
    let err = tokenizer_from_model_file(&path, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a SentencePiece model"), "{err}");
    assert!(err.contains("tokenizer.json"), "{err}");
    let missing = tokenizer_from_model_file(&dir.path().join("nope.model"), &[]);
    assert!(missing.is_err());
}
