//! Conversations to training examples, with the model's own chat template and tokenizer, so
//! that a training prompt is token for token the prompt the generator serves.
//!
//! For the assistant turn at message `j` the prompt is the generator's rendering of messages
//! `..j` (it ends where the answer begins) and the answer is what the model should generate
//! next: the template's own text before the content (GLM's `\n`), the content as plain text,
//! and the end-of-turn token (the stop id that the template writes after an answer, else the
//! first stop id). Only the answer's tokens count in the loss.
//!
//! A multi-turn conversation is one example when each turn's prompt starts with the tokens
//! of the turns before it (ChatML); otherwise (ChatGLM's rounds, a template that drops
//! earlier answers' text) each assistant turn becomes an example of its own, counted in
//! [`DatasetReport::split_conversations`].
//!
//! A model whose prompts end with a suffix (ChatGLM-6B's `[gMASK] <sop>`) gets it after
//! every prompt, as the generator appends it, and reads the prompt through the suffix's
//! last token but one both ways ([`TrainExample::bidirectional`]); each of its assistant
//! turns is an example of its own, since an example has one such part.

use zhiku_lm::template::{ChatTemplate, Message, Role};
use zhiku_lm::tokenizer::GenTokenizer;

use super::formats::Conversation;
use crate::error::TuneError;
use crate::spec::TrainExample;

/// What to do with an example longer than `max_seq_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LengthPolicy {
    /// Keep its first `max_seq_len` tokens (skipped when no answer token is left).
    #[default]
    Truncate,
    /// Leave it out.
    Skip,
}

/// What reading a dataset did, for the user to see.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DatasetReport {
    /// Records read.
    pub read: usize,
    /// Examples made (a split conversation makes one per assistant turn).
    pub examples: usize,
    /// Examples left out as longer than `max_seq_len` (with [`LengthPolicy::Skip`], or with
    /// truncation when no answer token was left).
    pub skipped_too_long: usize,
    /// Examples cut to `max_seq_len`.
    pub truncated: usize,
    /// Multi-turn conversations whose template does not extend turn by turn, trained as one
    /// example per assistant turn.
    pub split_conversations: usize,
    /// Tokens in the examples kept, and those of them that the loss counts.
    pub tokens: usize,
    pub answer_tokens: usize,
    /// The longest example kept, in tokens.
    pub longest: usize,
    /// Training records whose answers' figures were swapped (`JobParams::counterfactual_share`).
    pub counterfactual: super::CounterfactualReport,
}

/// Renders and tokenizes every conversation, applying `max_seq_len` with `policy`;
/// `prompt_suffix`: the tokens the model's prompts end with (`BatchModel::prompt_suffix`).
pub fn render_dataset(
    conversations: &[Conversation],
    template: &ChatTemplate,
    tokenizer: &GenTokenizer,
    prompt_suffix: &[u32],
    max_seq_len: usize,
    policy: LengthPolicy,
) -> Result<(Vec<TrainExample>, DatasetReport), TuneError> {
    if max_seq_len < 2 {
        return Err(TuneError::Validation(format!(
            "--max-seq-len {max_seq_len} is too small: an example needs at least 2 tokens"
        )));
    }
    let mut report = DatasetReport {
        read: conversations.len(),
        ..DatasetReport::default()
    };
    let mut examples = Vec::new();
    for conversation in conversations {
        let rendered = render_conversation(conversation, template, tokenizer, prompt_suffix)?;
        if rendered.len() > 1 {
            report.split_conversations += 1;
        }
        for mut example in rendered {
            if example.tokens.len() > max_seq_len {
                match policy {
                    LengthPolicy::Skip => {
                        report.skipped_too_long += 1;
                        continue;
                    }
                    LengthPolicy::Truncate => {
                        example.tokens.truncate(max_seq_len);
                        example.loss_mask.truncate(max_seq_len);
                        if !example.loss_mask.iter().any(|&m| m) {
                            report.skipped_too_long += 1;
                            continue;
                        }
                        report.truncated += 1;
                    }
                }
            }
            report.tokens += example.tokens.len();
            report.answer_tokens += example.loss_mask.iter().filter(|&&m| m).count();
            report.longest = report.longest.max(example.tokens.len());
            examples.push(example);
        }
    }
    report.examples = examples.len();
    Ok((examples, report))
}

/// One conversation's examples: one, or one per assistant turn (see the module's comment).
pub fn render_conversation(
    conversation: &Conversation,
    template: &ChatTemplate,
    tokenizer: &GenTokenizer,
    prompt_suffix: &[u32],
) -> Result<Vec<TrainExample>, TuneError> {
    let fail = |what: String| TuneError::Validation(format!("{}: {what}", conversation.origin));
    let messages = &conversation.messages;
    let mut turns = Vec::new();
    for (j, message) in messages.iter().enumerate() {
        if message.role != Role::Assistant {
            continue;
        }
        let prompt = template
            .render_prompt(&messages[..j])
            .map_err(|e| fail(format!("the chat template fails: {e}")))?;
        let mut prompt_tokens = tokenizer
            .encode_prompt(&prompt)
            .map_err(|e| fail(format!("cannot tokenize the prompt: {e}")))?;
        prompt_tokens.extend_from_slice(prompt_suffix);
        let answer = answer_tokens(template, tokenizer, &messages[..=j], &prompt.text)
            .map_err(|e| fail(format!("cannot tokenize the answer of turn {j}: {e}")))?;
        turns.push((prompt_tokens, answer));
    }
    if turns.is_empty() {
        return Err(fail(
            "no assistant turn: there is no answer to learn".into(),
        ));
    }
    let mut joined = TrainExample {
        tokens: Vec::new(),
        loss_mask: Vec::new(),
        bidirectional: 0,
    };
    let extends = prompt_suffix.is_empty()
        && turns.iter().all(|(prompt, answer)| {
            let Some(new) = prompt.strip_prefix(joined.tokens.as_slice()) else {
                return false;
            };
            push(&mut joined, new, false);
            push(&mut joined, answer, true);
            true
        });
    if extends {
        return Ok(vec![joined]);
    }
    Ok(turns
        .into_iter()
        .map(|(prompt, answer)| {
            // As the generator sets it: the prompt through the suffix's last token but one.
            let bidirectional = if prompt_suffix.is_empty() {
                0
            } else {
                prompt.len() - 1
            };
            let mut example = TrainExample {
                tokens: Vec::new(),
                loss_mask: Vec::new(),
                bidirectional,
            };
            push(&mut example, &prompt, false);
            push(&mut example, &answer, true);
            example
        })
        .collect())
}

fn push(example: &mut TrainExample, tokens: &[u32], counts: bool) {
    example.tokens.extend_from_slice(tokens);
    example
        .loss_mask
        .extend(std::iter::repeat_n(counts, tokens.len()));
}

/// The tokens the model should generate after `prompt_text` (the rendering of every message
/// but the last, an assistant one): the template's lead-in, the content, the end of turn.
///
/// The template is rendered once more with the answer and a following user turn: the text
/// between the prompt and the answer's content is the lead-in, and the first token after the
/// content is the end of turn when it is a stop id.
fn answer_tokens(
    template: &ChatTemplate,
    tokenizer: &GenTokenizer,
    messages: &[Message],
    prompt_text: &str,
) -> Result<Vec<u32>, String> {
    let Some((answer, _)) = messages.split_last() else {
        return Err("no answer".into());
    };
    let answer_index = messages.len() - 1;
    let Some(&default_end) = tokenizer.eos_ids.first() else {
        return Err("the tokenizer has no end-of-sequence token".into());
    };
    let mut lead = String::new();
    let mut end = default_end;
    let mut with_next = messages.to_vec();
    with_next.push(Message::new(Role::User, "?"));
    // A template that cannot render the answer in history keeps the plain framing.
    if let Ok(full) = template.render_prompt(&with_next)
        && full.text.starts_with(prompt_text)
        && let Some(&(_, start)) = full
            .message_starts()
            .iter()
            .find(|(index, _)| *index == answer_index)
        && start >= prompt_text.len()
    {
        lead = full.text[prompt_text.len()..start].to_owned();
        let content_end = full
            .content_ranges()
            .iter()
            .find(|r| r.start == start)
            .map_or(start, |r| r.end);
        if let Ok(after) = tokenizer.encode(&full.text[content_end..])
            && let Some(first) = after.first()
            && tokenizer.eos_ids.contains(first)
        {
            end = *first;
        }
    }
    let mut tokens = tokenizer.encode(&lead).map_err(|e| e.to_string())?;
    tokens.extend(
        tokenizer
            .encode_plain(&answer.content)
            .map_err(|e| e.to_string())?,
    );
    tokens.push(end);
    Ok(tokens)
}
