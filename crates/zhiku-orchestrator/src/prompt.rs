//! The article's prompt: known information (numbered passages), then the instruction and the
//! question.

use std::path::Path;

use crate::error::OrchestratorError;

/// The article's template, word for word. `{context}` becomes the numbered passages and
/// `{question}` the user's question.
pub const ARTICLE_TEMPLATE: &str = "已知信息：\n{context}\n\n根据上述已知信息，简洁和专业的来回答用户的问题。\
如果无法从中得到答案，请说 “根据已知信息无法回答该问题” 或 “没有提供足够的相关信息”，\
不允许在答案中添加编造成分，答案请使用中文。问题是：{question}";

/// The answer given, without calling the model, when no passage passes the threshold.
pub const REFUSAL: &str = "根据已知信息无法回答该问题";

#[derive(Debug, Clone)]
pub struct PromptTemplate {
    template: String,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self {
            template: ARTICLE_TEMPLATE.to_owned(),
        }
    }
}

impl PromptTemplate {
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
        Ok(Self { template })
    }

    /// Fills the template with passages numbered [1], [2], … and the question.
    pub fn render(&self, passages: &[&str], question: &str) -> String {
        let context = passages
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[{}] {}", i + 1, p.trim()))
            .collect::<Vec<_>>()
            .join("\n");
        self.template
            .replace("{context}", &context)
            .replace("{question}", question.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn custom_templates_need_both_placeholders() {
        assert!(PromptTemplate::new("{context}".into()).is_err());
        let t = PromptTemplate::new("Q: {question}\nC: {context}".into()).unwrap();
        assert_eq!(t.render(&["a", "b"], "q"), "Q: q\nC: [1] a\n[2] b");
    }
}
