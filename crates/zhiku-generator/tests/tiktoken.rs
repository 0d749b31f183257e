//! GLM-4-9B-chat's tiktoken `tokenizer.model` (`base64 rank` lines) read into a byte-level
//! BPE tokenizer, on vocabularies the tests write.

mod common;

use common::{added_tokens_config, tiktoken_file, tiktoken_ranks};
use zhiku_lm::tokenizer::tiktoken::{
    added_tokens, looks_like_tiktoken, read_ranks, tokenizer_from_tiktoken,
};

fn ids(t: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    t.encode(text, false).unwrap().get_ids().to_vec()
}

fn rank(ranks: &[Vec<u8>], token: &str) -> u32 {
    ranks.iter().position(|r| r == token.as_bytes()).unwrap() as u32
}

#[test]
fn merges_follow_the_ranks_and_text_round_trips() {
    let ranks = tiktoken_ranks(&["hello", " world", "小拾", "123", "45"], &["xyz"]);
    let file = tiktoken_file(&ranks);
    assert!(looks_like_tiktoken(file.as_bytes()));
    let specials = vec![
        (ranks.len() as u32, "<|endoftext|>".to_owned()),
        (ranks.len() as u32 + 1, "[gMASK]".to_owned()),
        (ranks.len() as u32 + 2, "<sop>".to_owned()),
    ];
    let t = tokenizer_from_tiktoken(&file, &specials).unwrap();

    assert_eq!(
        ids(&t, "hello world"),
        [rank(&ranks, "hello"), rank(&ranks, " world")]
    );
    // " 小拾" is one pre-token: the space byte stays alone, 小拾's six bytes merge whole.
    assert_eq!(
        ids(&t, "hello 小拾"),
        [rank(&ranks, "hello"), u32::from(b' '), rank(&ranks, "小拾")]
    );
    // Digits are cut in threes before BPE: "12345" is "123" + "45".
    assert_eq!(ids(&t, "12345"), [rank(&ranks, "123"), rank(&ranks, "45")]);
    // A pre-token that is itself a token is one token even without merges to build it.
    assert_eq!(ids(&t, "xyz"), [rank(&ranks, "xyz")]);
    assert_eq!(ids(&t, "xy"), [u32::from(b'x'), u32::from(b'y')]);
    // Specials are matched whole and keep their ids.
    assert_eq!(
        ids(&t, "[gMASK]<sop>hello"),
        [
            ranks.len() as u32 + 1,
            ranks.len() as u32 + 2,
            rank(&ranks, "hello")
        ]
    );
    for text in [
        "hello world",
        "小拾 喜欢 12345\n\n  tabs\tand  spaces",
        "ÿ€😀",
    ] {
        let encoded = ids(&t, text);
        assert_eq!(t.decode(&encoded, true).unwrap(), text);
    }
}

#[test]
fn specials_must_continue_the_ranks() {
    let ranks = tiktoken_ranks(&["hello"], &[]);
    let file = tiktoken_file(&ranks);
    // A gap after the ranks: the special cannot get id n + 5.
    let err =
        tokenizer_from_tiktoken(&file, &[(ranks.len() as u32 + 5, "[gMASK]".into())]).unwrap_err();
    assert!(
        err.contains("[gMASK]") && err.contains("without gaps"),
        "{err}"
    );
    // tokenizer_config.json's added_tokens_decoder, in id order whatever the key order.
    let config = added_tokens_config(&["<|endoftext|>", "[gMASK]"], 300);
    let mut specials = added_tokens(&config).unwrap();
    specials.sort();
    assert_eq!(
        specials,
        [
            (300, "<|endoftext|>".to_owned()),
            (301, "[gMASK]".to_owned())
        ]
    );
}

#[test]
fn malformed_files_are_refused_with_the_line() {
    assert!(!looks_like_tiktoken(b"\x0a\x05hello"));
    assert!(!looks_like_tiktoken(b"not base64! 3\n"));
    let err = read_ranks("aGk= 0\naGk= x\n").unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("not a number"),
        "{err}"
    );
    let err = read_ranks("aGk= 0\nbw== 2\n").unwrap_err();
    assert!(err.contains("rank 1 is missing"), "{err}");
    let err = read_ranks("aGk= 0\nbw== 0\n").unwrap_err();
    assert!(err.contains("twice"), "{err}");
    let err = read_ranks("aGk= 99999999999\n").unwrap_err();
    assert!(err.contains("line 1"), "{err}");
    assert!(read_ranks("").is_err());
}
