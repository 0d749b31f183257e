//! Which GLM successor of ChatGLM-6B a `config.json` describes: ChatGLM2-6B / ChatGLM3-6B
//! (GLM v2: causal decoder, multi-query attention, RMSNorm, rotary on half of each head),
//! GLM-4-9B-chat (the same network with a rope base scaled by `rope_ratio` and a 151k
//! vocabulary) or GLM-4-0414 (`model_type` "glm4": Llama-like names, partial rotary, extra
//! post-attention and post-MLP norms). All run on zhiku's decoder (`crate::families`).

use serde::Deserialize;

/// Which network a `config.json` describes (ChatGLM-6B, our own, is not among these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlmFamily {
    ChatGlm2,
    ChatGlm3,
    /// GLM-4-9B-chat and its variants (model_type "chatglm", 151k vocabulary).
    Glm4,
    /// GLM-4-0414 (model_type "glm4").
    Glm4_0414,
}

impl GlmFamily {
    /// The `ModelInfo.architecture` name.
    pub fn architecture(self) -> &'static str {
        match self {
            GlmFamily::ChatGlm2 => "chatglm2",
            GlmFamily::ChatGlm3 => "chatglm3",
            GlmFamily::Glm4 => "glm4",
            GlmFamily::Glm4_0414 => "glm4-0414",
        }
    }
}

/// ChatGLM2/3 and GLM-4-9B ship the 6B's vocabulary size or GLM-4's 151,552 (padded).
const CHATGLM2_VOCAB: usize = 65_024;

/// The config.json fields that tell the GLM families apart.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GlmHead {
    pub model_type: Option<String>,
    pub position_encoding_2d: Option<bool>,
    pub padded_vocab_size: Option<usize>,
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
}

/// Picks the family of a `model_type` "chatglm" or "glm4" checkpoint; `None` for ChatGLM-6B
/// (2-D positions, served by our own implementation) and anything else.
///
/// The rule, in order (the configs of the families share `model_type` "chatglm"):
/// 1. `model_type` "glm4" → GLM-4-0414;
/// 2. `position_encoding_2d` → ChatGLM-6B (None here);
/// 3. `_name_or_path` naming glm-4 / chatglm3 / chatglm2 → that family (real configs name
///    their hub repository there);
/// 4. a padded vocabulary larger than ChatGLM2/3's 65,024 → GLM-4-9B (151,552);
/// 5. otherwise ChatGLM3 when the tokenizer knows ChatGLM3's role tokens (`<|user|>`), which
///    ChatGLM2 lacks, else ChatGLM2.
pub fn detect_family(head: &GlmHead, tokenizer_has_role_tokens: bool) -> Option<GlmFamily> {
    match head.model_type.as_deref() {
        Some("glm4") => return Some(GlmFamily::Glm4_0414),
        Some("chatglm") => {}
        _ => return None,
    }
    if head.position_encoding_2d == Some(true) {
        return None;
    }
    let name = head
        .name_or_path
        .as_deref()
        .unwrap_or_default()
        .to_lowercase();
    if name.contains("glm-4") || name.contains("glm4") {
        return Some(GlmFamily::Glm4);
    }
    if name.contains("chatglm3") {
        return Some(GlmFamily::ChatGlm3);
    }
    if name.contains("chatglm2") {
        return Some(GlmFamily::ChatGlm2);
    }
    if head.padded_vocab_size.is_some_and(|v| v > CHATGLM2_VOCAB) {
        return Some(GlmFamily::Glm4);
    }
    if tokenizer_has_role_tokens {
        Some(GlmFamily::ChatGlm3)
    } else {
        Some(GlmFamily::ChatGlm2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(model_type: &str, vocab: Option<usize>, name: Option<&str>) -> GlmHead {
        GlmHead {
            model_type: Some(model_type.into()),
            position_encoding_2d: None,
            padded_vocab_size: vocab,
            name_or_path: name.map(str::to_owned),
        }
    }

    #[test]
    fn families_are_told_apart() {
        use GlmFamily::*;
        assert_eq!(
            detect_family(&head("glm4", None, None), false),
            Some(Glm4_0414)
        );
        let mut glm6b = head("chatglm", Some(130_528), None);
        glm6b.position_encoding_2d = Some(true);
        assert_eq!(detect_family(&glm6b, false), None);
        assert_eq!(
            detect_family(&head("chatglm", Some(151_552), None), false),
            Some(Glm4)
        );
        assert_eq!(
            detect_family(
                &head("chatglm", Some(65_024), Some("THUDM/glm-4-9b-chat")),
                false
            ),
            Some(Glm4)
        );
        assert_eq!(
            detect_family(
                &head("chatglm", Some(65_024), Some("THUDM/chatglm3-6b")),
                false
            ),
            Some(ChatGlm3)
        );
        assert_eq!(
            detect_family(
                &head("chatglm", Some(65_024), Some("THUDM/chatglm2-6b")),
                true
            ),
            Some(ChatGlm2)
        );
        assert_eq!(
            detect_family(&head("chatglm", Some(65_024), None), true),
            Some(ChatGlm3)
        );
        assert_eq!(
            detect_family(&head("chatglm", Some(65_024), None), false),
            Some(ChatGlm2)
        );
        assert_eq!(detect_family(&head("llama", None, None), false), None);
    }
}
