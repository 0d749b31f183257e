//! Prompts: by default the instructions in the system role and the passages and the question
//! in the user turn ([`PromptTemplate::system_role`]); the article's prompt (known
//! information, then the instruction and the question, in one user turn) on
//! `--prompt-template` and for the one regeneration after an echo.

use std::fmt::Write;
use std::path::Path;

use crate::error::OrchestratorError;

/// The article's template, word for word. `{context}` becomes the numbered passages and
/// `{question}` the user's question.
pub const ARTICLE_TEMPLATE: &str = "已知信息：\n{context}\n\n根据上述已知信息，简洁和专业的来回答用户的问题。\
如果无法从中得到答案，请说 “根据已知信息无法回答该问题” 或 “没有提供足够的相关信息”，\
不允许在答案中添加编造成分，答案请使用中文。问题是：{question}";

/// The article's template without its refusal sentence, for `--abstention evidence`: zhiku
/// refuses from the evidence, and a small model told it may refuse refuses questions whose
/// answer is in its passages (docs/src/guides/ask.md, "The Ask pipeline").
pub const EVIDENCE_TEMPLATE: &str = "已知信息：\n{context}\n\n根据上述已知信息，简洁和专业的来回答用户的问题，\
不允许在答案中添加编造成分，答案请使用中文。问题是：{question}";

/// The default prompt's system role (a template without one puts it at the head of the user
/// turn): who the model is, and nothing else. The rules of the answer sit in the user turn,
/// after the passages and right before the question ([`USER_TEMPLATE`]): far from the
/// question, ahead of the passages (in the system role or the head of the user turn), the
/// article's rule sentence made Qwen2.5-0.5B answer "Langchain-Chatchat 原来叫什么名字？" with
/// the name it was asked about instead of the one its passage gives, while the rules next
/// to the question, or no rules at all, did not (docs/src/guides/ask.md, "The prompt").
pub const SYSTEM_INSTRUCTIONS: &str = "你是知识库问答助手。";

/// [`SYSTEM_INSTRUCTIONS`] for `--abstention model`: the article's refusal sentence, which
/// tells the model how to refuse, is part of who it is.
pub const SYSTEM_INSTRUCTIONS_MAY_REFUSE: &str = "你是知识库问答助手。\
如果无法从已知信息中得到答案，请说 “根据已知信息无法回答该问题” 或 “没有提供足够的相关信息”。";

/// The user turn of the default prompt: the passages, the rules in one short sentence (the
/// article's, without its refusal sentence: zhiku refuses from the evidence), then the
/// question last. Short and not the article's wording, so that an answer that echoes it is
/// told apart ([`crate::verify::echoes_prompt`]) and is not the article's instruction
/// sentence that small models continued.
pub const USER_TEMPLATE: &str =
    "已知信息：\n{context}\n\n请根据上述已知信息，用中文简洁地回答，不要编造。\n问题：{question}";

/// The answer given, without calling the model, when no passage passes the threshold.
pub const REFUSAL: &str = "根据已知信息无法回答该问题";

/// Opens an answer that quotes its evidence first: `依据：[k] <the line of passage k that
/// holds the fact>`, then on the next line [`EVIDENCE_ANSWER`] and the answer (the chain of
/// thought of RAFT, Zhang et al. 2024). Adapters trained with `zhiku tune --evidence-first`
/// answer so; the Ask keeps what follows [`EVIDENCE_ANSWER`] as the answer
/// ([`split_evidence`]). A model not trained so never writes it, and its answers pass
/// through unchanged.
pub const EVIDENCE_OPENING: &str = "依据：";
/// The opening as adapters trained on a few dozen targets write it: the common word for
/// "according to" in place of the target's (Qwen2.5-0.5B, docs/src/benchmarks/tuner.md).
/// Read as [`EVIDENCE_OPENING`] when [`EVIDENCE_ANSWER`] follows.
pub const EVIDENCE_OPENING_AS_WRITTEN: &str = "根据：";
/// Opens the answer after the quoted evidence, on a line of its own.
pub const EVIDENCE_ANSWER: &str = "回答：";

/// `answer` with its evidence quoted first: passage `number`'s line `quote`.
pub fn evidence_first(number: u32, quote: &str, answer: &str) -> String {
    format!("{EVIDENCE_OPENING}[{number}] {quote}\n{EVIDENCE_ANSWER}{answer}")
}

/// An answer written evidence first ([`EVIDENCE_OPENING`]) split into its quoted evidence
/// and the answer after [`EVIDENCE_ANSWER`]; any other text is all answer. An answer that
/// quotes evidence and never gives the answer keeps its whole text: what the model wrote
/// is what verification reads.
pub fn split_evidence(text: &str) -> (Option<&str>, &str) {
    let trimmed = text.trim_start();
    let Some(rest) = [EVIDENCE_OPENING, EVIDENCE_OPENING_AS_WRITTEN]
        .iter()
        .find_map(|opening| trimmed.strip_prefix(opening))
    else {
        return (None, text);
    };
    match rest.split_once(&format!("\n{EVIDENCE_ANSWER}")) {
        Some((quote, answer)) => (Some(quote.trim()), answer.trim()),
        None => (None, text),
    }
}

/// Asks the generator to turn a follow-up into a standalone question before retrieval.
/// `{history}` becomes the last turns ("用户：…\n助手：…"), `{question}` the follow-up.
pub const REWRITE_TEMPLATE: &str = "下面是一段对话和用户的最后一个问题。请把最后一个问题改写成一个\
不依赖对话、意思完整的独立问题：补全其中“它”“这个”等指代的具体名称。只输出改写后的问题，不要回答。\n\n\
对话：\n{history}\n\n最后一个问题：{question}\n\n独立问题：";

#[derive(Debug, Clone)]
pub struct PromptTemplate {
    template: String,
    /// Instructions for the system role; None: the template holds them (the article's, a
    /// --prompt-template file).
    system: Option<String>,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self {
            template: ARTICLE_TEMPLATE.to_owned(),
            system: None,
        }
    }
}

impl PromptTemplate {
    /// The default prompt: the instructions in the system role ([`SYSTEM_INSTRUCTIONS`], or
    /// with the refusal sentence when the model decides to refuse), the passages and the
    /// question in the user turn ([`USER_TEMPLATE`]).
    pub fn system_role(abstention: crate::config::Abstention) -> Self {
        let system = match abstention {
            crate::config::Abstention::Model => SYSTEM_INSTRUCTIONS_MAY_REFUSE,
            crate::config::Abstention::Evidence => SYSTEM_INSTRUCTIONS,
        };
        Self {
            template: USER_TEMPLATE.to_owned(),
            system: Some(system.to_owned()),
        }
    }

    /// The instructions for the system role, if the prompt has any apart from its template.
    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// Every fixed text the model is shown (system instructions, then the template): what
    /// an answer must not echo ([`crate::verify::echoes_prompt`]).
    pub fn instructions(&self) -> String {
        match &self.system {
            Some(system) => format!("{system}\n{}", self.template),
            None => self.template.clone(),
        }
    }

    /// The default template for who decides to refuse: the article's when the model does,
    /// [`EVIDENCE_TEMPLATE`] when zhiku does.
    pub fn for_abstention(abstention: crate::config::Abstention) -> Self {
        let template = match abstention {
            crate::config::Abstention::Model => ARTICLE_TEMPLATE,
            crate::config::Abstention::Evidence => EVIDENCE_TEMPLATE,
        };
        Self {
            template: template.to_owned(),
            system: None,
        }
    }

    /// Reads a template file; it must hold both placeholders.
    pub fn from_file(path: &Path) -> Result<Self, OrchestratorError> {
        let template = std::fs::read_to_string(path).map_err(|e| {
            OrchestratorError::Validation(format!(
                "cannot read prompt template {}: {e}",
                path.display()
            ))
        })?;
        Self::new(template)
    }

    pub fn new(template: String) -> Result<Self, OrchestratorError> {
        for placeholder in ["{context}", "{question}"] {
            if !template.contains(placeholder) {
                return Err(OrchestratorError::Validation(format!(
                    "the prompt template has no {placeholder} placeholder"
                )));
            }
        }
        Ok(Self {
            template,
            system: None,
        })
    }

    /// Fills the template with passages numbered [1], [2], … in the order given and the
    /// question; see [`Self::render_numbered`].
    pub fn render(&self, passages: &[&str], question: &str) -> String {
        let numbered: Vec<(u32, &str)> = passages
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, *p))
            .collect();
        self.render_numbered(&numbered, question)
    }

    /// Fills the template with `(number, passage)` pairs, shown in the order given as
    /// `[number] passage`, and the question, in one pass over the template: passages and
    /// the question are data, so a `{question}` inside a passage stays as written.
    pub fn render_numbered(&self, passages: &[(u32, &str)], question: &str) -> String {
        let question = question.trim();
        let context_len: usize = passages.iter().map(|(_, p)| p.len() + 8).sum();
        let mut out = String::with_capacity(self.template.len() + context_len + question.len());
        let mut rest = self.template.as_str();
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{context}") {
                for (i, (number, passage)) in passages.iter().enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    let _ = write!(out, "[{number}] {}", passage.trim());
                }
                rest = after;
            } else if let Some(after) = tail.strip_prefix("{question}") {
                out.push_str(question);
                rest = after;
            } else {
                out.push('{');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_written_evidence_first_keeps_the_answer_after_its_marker() {
        let written = evidence_first(2, "后端：ArcLight；对应 Agent Skill：arclight", "arclight");
        assert_eq!(
            written,
            "依据：[2] 后端：ArcLight；对应 Agent Skill：arclight\n回答：arclight"
        );
        assert_eq!(
            split_evidence(&written),
            (
                Some("[2] 后端：ArcLight；对应 Agent Skill：arclight"),
                "arclight"
            )
        );
        // Plain answers, and evidence with no answer after it, stay whole.
        assert_eq!(split_evidence("14082 MiB"), (None, "14082 MiB"));
        assert_eq!(
            split_evidence("依据：[1] 显存 6GB"),
            (None, "依据：[1] 显存 6GB")
        );
        assert_eq!(split_evidence("回答：6GB"), (None, "回答：6GB"));
        assert_eq!(
            split_evidence("根据：[1] 显存 6GB\n回答：6GB"),
            (Some("[1] 显存 6GB"), "6GB")
        );
        // The refusal opens with the same word and is not evidence.
        assert_eq!(split_evidence(REFUSAL), (None, REFUSAL));
    }

    #[test]
    fn the_articles_prompt() {
        let prompt = PromptTemplate::default()
            .render(&["小拾喜欢玩手机、打游戏、看电影。"], "小拾喜欢做什么");
        assert_eq!(
            prompt,
            "已知信息：\n[1] 小拾喜欢玩手机、打游戏、看电影。\n\n根据上述已知信息，简洁和专业的来回答用户的问题。\
如果无法从中得到答案，请说 “根据已知信息无法回答该问题” 或 “没有提供足够的相关信息”，\
不允许在答案中添加编造成分，答案请使用中文。问题是：小拾喜欢做什么"
        );
    }

    #[test]
    fn the_evidence_template_is_the_articles_without_its_refusal_sentence() {
        use crate::config::Abstention;
        let article = PromptTemplate::for_abstention(Abstention::Model).render(&["甲"], "乙");
        let evidence = PromptTemplate::for_abstention(Abstention::Evidence).render(&["甲"], "乙");
        assert_eq!(article, PromptTemplate::default().render(&["甲"], "乙"));
        assert!(article.contains(REFUSAL));
        assert!(!evidence.contains(REFUSAL) && !evidence.contains("无法"));
        let sentence =
            "如果无法从中得到答案，请说 “根据已知信息无法回答该问题” 或 “没有提供足够的相关信息”，";
        assert_eq!(
            evidence,
            article
                .replace(sentence, "")
                .replace("问题。不允许", "问题，不允许")
        );
    }

    #[test]
    fn the_default_prompt_puts_the_instructions_in_the_system_role_and_the_question_last() {
        use crate::config::Abstention;
        let prompt = PromptTemplate::system_role(Abstention::Evidence);
        assert_eq!(prompt.system(), Some(SYSTEM_INSTRUCTIONS));
        let user = prompt.render(&["甲", "乙"], "问什么");
        assert_eq!(
            user,
            "已知信息：\n[1] 甲\n[2] 乙\n\n请根据上述已知信息，用中文简洁地回答，不要编造。\n问题：问什么"
        );
        assert!(user.ends_with("问什么"), "the question comes last");
        assert!(
            !user.contains("不允许") && !user.contains("简洁和专业"),
            "not the article's instruction sentence"
        );
        assert!(!SYSTEM_INSTRUCTIONS.contains("无法"));
        let may_refuse = PromptTemplate::system_role(Abstention::Model);
        assert!(may_refuse.system().unwrap().contains(REFUSAL));
        // Echo detection sees both parts; a template file has no system part.
        assert!(prompt.instructions().starts_with(SYSTEM_INSTRUCTIONS));
        assert!(prompt.instructions().ends_with(USER_TEMPLATE));
        let article = PromptTemplate::for_abstention(Abstention::Evidence);
        assert_eq!(
            (article.system(), article.instructions()),
            (None, EVIDENCE_TEMPLATE.to_owned())
        );
    }

    #[test]
    fn the_default_prompts_rules_are_told_apart_from_a_passage_quoting_the_articles() {
        use crate::config::Abstention;
        use crate::verify::echoes_prompt;
        let instructions = PromptTemplate::system_role(Abstention::Evidence).instructions();
        // The knowledge base is the article, whose passages print its instruction sentence.
        let passage = "本项目的 prompt 模板如下：已知信息：{context} 根据上述已知信息，简洁和专业的来回答用户的问题，\
            不允许在答案中添加编造成分，答案请使用中文。问题是：{question}。文本分割时 chunk_size 设为 500。";
        let question = "文本分割的 chunk_size 设为多少？";
        // Answering from that passage, or quoting the sentence it prints, is no echo.
        assert_eq!(
            echoes_prompt("chunk_size 设为 500。", question, &[passage], &instructions),
            None
        );
        assert_eq!(
            echoes_prompt(
                "模板是：根据上述已知信息，简洁和专业的来回答用户的问题，不允许在答案中添加编造成分，答案请使用中文。",
                "项目用的 prompt 模板是什么？",
                &[passage],
                &instructions
            ),
            None
        );
        // The default prompt's own rules, or them followed by the question, are an echo.
        for echoed in [
            "请根据上述已知信息，用中文简洁地回答，不要编造。".to_owned(),
            format!("请根据上述已知信息，用中文简洁地回答，不要编造。问题：{question}"),
        ] {
            assert!(
                echoes_prompt(&echoed, question, &[passage], &instructions).is_some(),
                "{echoed}"
            );
        }
    }

    #[test]
    fn custom_templates_need_both_placeholders() {
        assert!(PromptTemplate::new("{context}".into()).is_err());
        let t = PromptTemplate::new("Q: {question}\nC: {context}".into()).unwrap();
        assert_eq!(t.render(&["a", "b"], "q"), "Q: q\nC: [1] a\n[2] b");
    }

    #[test]
    fn passages_keep_their_numbers_in_any_order() {
        let t = PromptTemplate::new("C: {context}\nQ: {question}".into()).unwrap();
        assert_eq!(
            t.render_numbered(&[(2, "b"), (1, "a")], "q"),
            "C: [2] b\n[1] a\nQ: q"
        );
    }

    #[test]
    fn placeholders_inside_passages_and_questions_stay_literal() {
        let t = PromptTemplate::new("C: {context}\nQ: {question} {other}".into()).unwrap();
        assert_eq!(
            t.render(&["see {question} and {context}"], "why {context}?"),
            "C: [1] see {question} and {context}\nQ: why {context}? {other}"
        );
    }
}
