//! The dataset formats users already have, read as LLaMA-Factory reads them: alpaca
//! (`instruction`, `input`, `output`, optional `system` and `history`) and sharegpt
//! (`conversations: [{from, value}]` or `messages: [{role, content}]`, optional `system`),
//! in a JSON array or in JSON lines. Every record becomes a [`Conversation`].

use std::path::Path;

use serde_json::{Map, Value};
use zhiku_lm::template::{Message, Role};

use crate::error::TuneError;

/// One training record as chat messages: an optional system message, then user and
/// assistant turns alternating, ending with an assistant turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// Where the record came from (`data.jsonl line 12`, `data.json record 3`), for errors.
    pub origin: String,
}

/// Reads a dataset file: a JSON array of records, or one record per line (JSON lines).
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>, TuneError> {
    let bytes = std::fs::read(path).map_err(|source| TuneError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        TuneError::Validation(format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_conversations(&text, &path.display().to_string())
}

/// Parses a dataset's text; `source` names it in errors. A text that starts with `[` is a
/// JSON array (errors name the record index); anything else is JSON lines (errors name the
/// line number; blank lines are skipped).
pub fn parse_conversations(text: &str, source: &str) -> Result<Vec<Conversation>, TuneError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        let records: Vec<Value> = serde_json::from_str(text).map_err(|e| {
            TuneError::Validation(format!(
                "{source}: not a JSON array of records (line {}, column {}): {e}",
                e.line(),
                e.column()
            ))
        })?;
        records
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let origin = format!("{source} record {i}");
                conversation(record)
                    .map(|messages| Conversation {
                        messages,
                        origin: origin.clone(),
                    })
                    .map_err(|what| TuneError::Validation(format!("{origin}: {what}")))
            })
            .collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let origin = format!("{source} line {}", i + 1);
            let record: Value = serde_json::from_str(line)
                .map_err(|e| TuneError::Validation(format!("{origin}: not a JSON record: {e}")))?;
            let messages = conversation(&record)
                .map_err(|what| TuneError::Validation(format!("{origin}: {what}")))?;
            out.push(Conversation { messages, origin });
        }
        Ok(out)
    }
}

/// The messages of one record, in either format; the error says what is wrong.
fn conversation(record: &Value) -> Result<Vec<Message>, String> {
    let Some(object) = record.as_object() else {
        return Err(format!(
            "a record must be a JSON object, found {}",
            kind(record)
        ));
    };
    let mut messages = Vec::new();
    if let Some(system) = optional_string(object, "system")?
        && !system.is_empty()
    {
        messages.push(Message::new(Role::System, system));
    }
    if let Some(turns) = object.get("conversations") {
        sharegpt_turns(turns, "conversations", "from", "value", &mut messages)?;
    } else if let Some(turns) = object.get("messages") {
        sharegpt_turns(turns, "messages", "role", "content", &mut messages)?;
    } else if object.contains_key("instruction") || object.contains_key("output") {
        alpaca(object, &mut messages)?;
    } else {
        return Err(
            "neither alpaca (`instruction`, `output`) nor sharegpt (`conversations` or \
             `messages`)"
                .into(),
        );
    }
    check_turns(&messages)?;
    Ok(messages)
}

fn alpaca(object: &Map<String, Value>, messages: &mut Vec<Message>) -> Result<(), String> {
    let instruction = optional_string(object, "instruction")?.unwrap_or_default();
    let input = optional_string(object, "input")?.unwrap_or_default();
    let output = match object.get("output") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(format!("`output` must be a string, found {}", kind(other))),
        None => return Err("alpaca record without `output`".into()),
    };
    if let Some(history) = object.get("history").filter(|h| !h.is_null()) {
        let Some(pairs) = history.as_array() else {
            return Err(format!(
                "`history` must be a list of [question, answer] pairs, found {}",
                kind(history)
            ));
        };
        for (i, pair) in pairs.iter().enumerate() {
            match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(q), Value::String(a)]) => {
                    messages.push(Message::new(Role::User, q.as_str()));
                    messages.push(Message::new(Role::Assistant, a.as_str()));
                }
                _ => {
                    return Err(format!(
                        "`history[{i}]` must be [question, answer] (two strings)"
                    ));
                }
            }
        }
    }
    // LLaMA-Factory's rule: the instruction, then the input on the next line when present.
    let prompt = match (instruction.is_empty(), input.is_empty()) {
        (false, false) => format!("{instruction}\n{input}"),
        (false, true) => instruction.to_owned(),
        (true, false) => input.to_owned(),
        (true, true) => return Err("`instruction` and `input` are both empty".into()),
    };
    messages.push(Message::new(Role::User, prompt));
    messages.push(Message::new(Role::Assistant, output.as_str()));
    Ok(())
}

fn sharegpt_turns(
    turns: &Value,
    field: &str,
    role_key: &str,
    text_key: &str,
    messages: &mut Vec<Message>,
) -> Result<(), String> {
    let Some(turns) = turns.as_array() else {
        return Err(format!("`{field}` must be a list, found {}", kind(turns)));
    };
    for (i, turn) in turns.iter().enumerate() {
        let Some(turn) = turn.as_object() else {
            return Err(format!(
                "`{field}[{i}]` must be an object, found {}",
                kind(turn)
            ));
        };
        let role = match turn.get(role_key) {
            Some(Value::String(r)) => r.as_str(),
            _ => return Err(format!("`{field}[{i}]` has no string `{role_key}`")),
        };
        let text = match turn.get(text_key) {
            Some(Value::String(t)) => t.as_str(),
            _ => return Err(format!("`{field}[{i}]` has no string `{text_key}`")),
        };
        let role = match role {
            "human" | "user" => Role::User,
            "gpt" | "assistant" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err(format!(
                    "`{field}[{i}].{role_key}` is `{other}`; zhiku trains on human/user, \
                     gpt/assistant and system turns"
                ));
            }
        };
        messages.push(Message::new(role, text));
    }
    Ok(())
}

/// A system message may only come first; then user and assistant alternate, starting with
/// the user and ending with the assistant (the answer to learn).
fn check_turns(messages: &[Message]) -> Result<(), String> {
    let start = usize::from(matches!(messages.first(), Some(m) if m.role == Role::System));
    let turns = &messages[start..];
    if turns.is_empty() {
        return Err("no user and assistant turns".into());
    }
    for (i, m) in turns.iter().enumerate() {
        let expected = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if m.role != expected {
            return Err(format!(
                "turn {i} is from the {}; turns must alternate user, assistant (a system \
                 message only first)",
                role_name(m.role)
            ));
        }
    }
    if turns.len() % 2 == 1 {
        return Err("the last turn is from the user: there is no answer to learn".into());
    }
    Ok(())
}

fn optional_string<'a>(
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("`{key}` must be a string, found {}", kind(other))),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
