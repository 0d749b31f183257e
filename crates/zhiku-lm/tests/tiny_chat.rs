//! The tiny chat model (`tiny::write_chat_model`) loads through `load_model` as a user's
//! GGUF does: its tokenizer round-trips text, ChatML renders, `<|im_end|>` ends a turn, and
//! the decoder can be taken apart for training.

use zhiku_lm::template::{Message, Role};
use zhiku_lm::{ComputePath, ModelSpec, load_model, tiny};

#[test]
fn the_tiny_chat_model_loads_as_a_chat_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write_chat_model(dir.path(), 7).unwrap();
    let mut spec = ModelSpec::cpu(dir.path().to_string_lossy(), "");
    spec.compute = ComputePath::Tensors;
    let loaded = load_model(&spec).unwrap();
    assert_eq!(loaded.template.name(), "chatml");
    let text = "the tiny model is here";
    let tokens = loaded.tokenizer.encode_plain(text).unwrap();
    assert!(tokens.len() < text.len(), "the merges apply: {tokens:?}");
    assert_eq!(loaded.tokenizer.decode(&tokens).unwrap(), text);
    let prompt = loaded
        .template
        .render_prompt(&[Message::new(Role::User, "hi")])
        .unwrap();
    let ids = loaded.tokenizer.encode_prompt(&prompt).unwrap();
    let im_start = ids[0];
    assert!(
        loaded.tokenizer.eos_ids.contains(&(im_start + 1)),
        "<|im_end|> follows <|im_start|> and ends a turn: {:?}",
        loaded.tokenizer.eos_ids
    );
    let trainable = load_model(&spec).unwrap().into_trainable().unwrap();
    assert_eq!(trainable.info.architecture, loaded.info.architecture);
    assert!(path.is_file());
}
