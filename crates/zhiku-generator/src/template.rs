//! Chat templates: a conversation becomes the prompt text each model family was trained on.
//!
//! The template in the model's own files (GGUF `tokenizer.chat_template`, or
//! `tokenizer_config.json` `chat_template`) wins when present; otherwise the family's.

use minijinja::{Environment, context};
use serde::Serialize;

use crate::error::GeneratorError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// A Jinja template from the model's files.
    Jinja {
        source: String,
        bos: String,
        eos: String,
    },
    /// ChatGLM-6B: "[Round n]\n\n问：…\n\n答：…".
    ChatGlm6b,
    /// ChatGLM2-6B: "[Round n]\n\n问：…\n\n答：" (rounds counted from 1).
    ChatGlm2,
    /// ChatGLM3-6B: "<|system|>\n…<|user|>\n…<|assistant|>".
    ChatGlm3,
    /// GLM-4: `"[gMASK]<sop><|user|>\n…<|assistant|>"`.
    Glm4,
    /// ChatML (Qwen, SmolLM): "<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n".
    ChatMl,
}

impl ChatTemplate {
    pub fn name(&self) -> &'static str {
        match self {
            ChatTemplate::Jinja { .. } => "model",
            ChatTemplate::ChatGlm6b => "chatglm",
            ChatTemplate::ChatGlm2 => "chatglm2",
            ChatTemplate::ChatGlm3 => "chatglm3",
            ChatTemplate::Glm4 => "glm4",
            ChatTemplate::ChatMl => "chatml",
        }
    }

    /// Renders the conversation, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, GeneratorError> {
        if messages.is_empty() {
            return Err(GeneratorError::Validation(
                "`chat.messages` is empty: send at least one user message".into(),
            ));
        }
        match self {
            ChatTemplate::Jinja { source, bos, eos } => {
                let mut env = Environment::new();
                env.add_function(
                    "raise_exception",
                    |msg: String| -> Result<String, minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            msg,
                        ))
                    },
                );
                env.add_template("chat", source).map_err(|e| {
                    GeneratorError::Template(format!("the model's template does not parse: {e}"))
                })?;
                let template = env
                    .get_template("chat")
                    .map_err(|e| GeneratorError::Template(e.to_string()))?;
                template
                    .render(context! {
                        messages => messages,
                        add_generation_prompt => true,
                        bos_token => bos,
                        eos_token => eos,
                    })
                    .map_err(|e| GeneratorError::Template(e.to_string()))
            }
            ChatTemplate::ChatMl => {
                let mut out = String::new();
                for m in messages {
                    out.push_str("<|im_start|>");
                    out.push_str(role_name(m.role));
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str("<|im_end|>\n");
                }
                out.push_str("<|im_start|>assistant\n");
                Ok(out)
            }
            ChatTemplate::ChatGlm3 | ChatTemplate::Glm4 => {
                let mut out = String::new();
                if matches!(self, ChatTemplate::Glm4) {
                    out.push_str("[gMASK]<sop>");
                }
                for m in messages {
                    out.push_str(&format!("<|{}|>\n{}", role_name(m.role), m.content));
                }
                out.push_str("<|assistant|>");
                Ok(out)
            }
            ChatTemplate::ChatGlm6b | ChatTemplate::ChatGlm2 => {
                // System text has no slot in these templates: it goes before the first question.
                let first_round = if matches!(self, ChatTemplate::ChatGlm2) {
                    1
                } else {
                    0
                };
                let mut system = String::new();
                let mut rounds: Vec<(String, Option<String>)> = Vec::new();
                for m in messages {
                    match m.role {
                        Role::System => {
                            system.push_str(&m.content);
                            system.push('\n');
                        }
                        Role::User => rounds.push((m.content.clone(), None)),
                        Role::Assistant => match rounds.last_mut() {
                            Some((_, answer @ None)) => *answer = Some(m.content.clone()),
                            _ => rounds.push((String::new(), Some(m.content.clone()))),
                        },
                    }
                }
                let last_is_question = matches!(rounds.last(), Some((_, None)));
                if !last_is_question {
                    return Err(GeneratorError::Validation(
                        "the last chat message must be from the user".into(),
                    ));
                }
                if rounds.len() == 1 && matches!(self, ChatTemplate::ChatGlm6b) {
                    // ChatGLM-6B takes a single question as is.
                    return Ok(format!("{system}{}", rounds[0].0));
                }
                let mut out = system;
                for (i, (question, answer)) in rounds.iter().enumerate() {
                    out.push_str(&format!(
                        "[Round {}]\n\n问：{}\n\n答：",
                        i + first_round,
                        question
                    ));
                    if let Some(a) = answer {
                        out.push_str(a);
                        out.push_str("\n\n");
                    }
                }
                Ok(out)
            }
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Vec<Message> {
        vec![
            Message::new(Role::User, "你好"),
            Message::new(Role::Assistant, "你好！"),
            Message::new(Role::User, "小拾喜欢做什么"),
        ]
    }

    #[test]
    fn chatglm_rounds() {
        let out = ChatTemplate::ChatGlm6b.render(&chat()).unwrap();
        assert_eq!(
            out,
            "[Round 0]\n\n问：你好\n\n答：你好！\n\n[Round 1]\n\n问：小拾喜欢做什么\n\n答："
        );
        let single = ChatTemplate::ChatGlm6b
            .render(&[Message::new(Role::User, "问题")])
            .unwrap();
        assert_eq!(single, "问题");
        let glm2 = ChatTemplate::ChatGlm2.render(&chat()).unwrap();
        assert!(glm2.starts_with("[Round 1]\n\n问：你好"));
    }

    #[test]
    fn role_token_families() {
        let glm4 = ChatTemplate::Glm4.render(&chat()).unwrap();
        assert_eq!(
            glm4,
            "[gMASK]<sop><|user|>\n你好<|assistant|>\n你好！<|user|>\n小拾喜欢做什么<|assistant|>"
        );
        let chatml = ChatTemplate::ChatMl.render(&chat()[2..]).unwrap();
        assert_eq!(
            chatml,
            "<|im_start|>user\n小拾喜欢做什么<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn jinja_from_the_model_wins() {
        let t = ChatTemplate::Jinja {
            source: "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}".into(),
            bos: "<s>".into(),
            eos: "</s>".into(),
        };
        assert_eq!(
            t.render(&chat()[2..]).unwrap(),
            "<user>小拾喜欢做什么<assistant>"
        );
        let bad = ChatTemplate::Jinja {
            source: "{{ raise_exception('roles must alternate') }}".into(),
            bos: String::new(),
            eos: String::new(),
        };
        assert!(
            bad.render(&chat())
                .unwrap_err()
                .to_string()
                .contains("roles must alternate")
        );
        assert!(ChatTemplate::ChatMl.render(&[]).is_err());
    }
}
