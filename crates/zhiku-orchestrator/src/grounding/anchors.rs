//! Anchors: the question's names and figures (model names, versions, quantisation levels,
//! hardware, sizes: its ASCII words, such as `ChatGLM3-6B`, `INT8`, `3-bit`, `RTX 4090`,
//! `Q4_K`) and whether one passage holds them all.
//!
//! Coverage ([`super::coverage`]) asks whether the passages together hold the question's
//! terms. In a knowledge base on one subject they nearly always do, also for a question that
//! combines facts no document states together ("ChatGLM3-6B with INT8" where one file gives
//! ChatGLM3-6B's FP16 figure and another ChatGLM-6B's INT8 one): the near miss that a small
//! model answers with an invented figure. A document that states the answer names what the
//! answer is about in the same passage (or in its source name or heading path, which the
//! rendered passage carries), so the anchor share of a passage is the share of the question's
//! anchors it holds, and the Ask's is its best passage's.
//!
//! Matching ignores case and the joiners `-`, `_`, `.` and `/` inside a name (and, in a
//! passage, the spaces between ASCII words), and respects the name's parts: `Qwen-72B`
//! matches `Qwen-72B-Chat`, `qwen72b` and `Qwen 72B`, `7B` does not match `17B`, `3-bit`
//! does not match `2-bit`. A name whose parts the passage holds apart also matches
//! (`Chinese-LLaMA-2` in a passage of `chinese-llama-alpaca-2--README.md`): documents name
//! a model's family and size in different places.

use std::collections::HashSet;

/// Characters that join the parts of one name (`ChatGLM3-6B`, `Q4_K`, `llama.cpp`).
const JOINERS: &[char] = &['-', '_', '.', '/'];

/// The most parts of a passage's name joined into one (`chinese-alpaca-2-13b` has four):
/// bounds the names a long run of English words yields.
const MAX_JOINED_PARTS: usize = 6;

/// English words that name nothing.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "be", "by", "can", "do", "does", "for", "how", "i", "in", "is", "it",
    "of", "on", "or", "the", "to", "what", "when", "where", "which", "who", "why", "with", "you",
    "vs",
];

/// One ASCII name of a text.
struct Name {
    /// Its lower-case parts (split at the joiners).
    parts: Vec<String>,
    /// As written, joiners included.
    written: String,
    /// It opens the text or a sentence, where a plain word is capitalised too.
    opens_sentence: bool,
}

impl Name {
    /// A name rather than a plain word: it holds a digit, joins parts, or is capitalised
    /// where a plain word would not be (`INT8`, `3-bit`, `QLoRA`, `Ollama`; not `port`, and
    /// not `List` opening a sentence).
    fn is_anchor(&self) -> bool {
        let w = &self.written;
        w.chars().any(|c| c.is_ascii_digit())
            || self.parts.len() > 1
            || w.chars().skip(1).any(|c| c.is_ascii_uppercase())
            || (!self.opens_sentence && w.starts_with(|c: char| c.is_ascii_uppercase()))
    }
}

/// The ASCII names of `text`; with `join_spaces`, words apart by one space are parts of one
/// name (`RTX 4090`, `MiniCPM 2B`).
fn names(text: &str, join_spaces: bool) -> Vec<Name> {
    let mut out = Vec::new();
    let mut name = Name {
        parts: Vec::new(),
        written: String::new(),
        opens_sentence: true,
    };
    let mut part = String::new();
    let mut sentence_open = true;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if name.written.is_empty() {
                name.opens_sentence = sentence_open;
            }
            part.push(c.to_ascii_lowercase());
            name.written.push(c);
            sentence_open = false;
            continue;
        }
        if (JOINERS.contains(&c) || (join_spaces && c == ' ')) && !part.is_empty() {
            name.parts.push(std::mem::take(&mut part));
            name.written.push(c);
            continue;
        }
        if !part.is_empty() {
            name.parts.push(std::mem::take(&mut part));
        }
        // A joiner that ends the name punctuates the text: "… the API. List …".
        if name.written.ends_with(JOINERS) || name.written.ends_with(' ') {
            sentence_open |= name.written.pop() == Some('.');
        }
        if !name.parts.is_empty() {
            out.push(std::mem::replace(
                &mut name,
                Name {
                    parts: Vec::new(),
                    written: String::new(),
                    opens_sentence: false,
                },
            ));
        } else {
            name.written.clear();
        }
        if matches!(c, '.' | '?' | '!' | '。' | '？' | '！' | '\n') {
            sentence_open = true;
        } else if !c.is_whitespace() {
            sentence_open = false;
        }
    }
    if !part.is_empty() {
        name.parts.push(part);
    }
    if !name.parts.is_empty() {
        out.push(name);
    }
    out
}

/// One of the question's names and figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Anchor {
    /// Its parts joined, joiners dropped (`chatglm36b`).
    pub name: String,
    /// Its lower-case parts (`chatglm3`, `6b`).
    pub parts: Vec<String>,
}

impl Anchor {
    /// Whether it names a model: it joins parts, one of them a parameter count (`6b`, `32b`,
    /// `13b`, the `5b` of `1.5B`), as `ChatGLM3-6B`, `GLM-4-32B-0414` and `Qwen-72B` do.
    pub fn is_model(&self) -> bool {
        self.parts.len() > 1
            && self.parts.iter().any(|p| {
                p.len() >= 2
                    && p.ends_with('b')
                    && p[..p.len() - 1].chars().all(|c| c.is_ascii_digit())
            })
    }

    /// Whether it names a product release: it joins parts, and its first is a name of three
    /// letters or more with its version in digits (`CogVLM2-LLaMA3`, `Qwen2-VL`,
    /// `InternLM2-Chat`), not a precision or a card (`INT8-KV`, `RTX4090-24G`). Such a name
    /// has no parameter count, so [`Anchor::is_model`] does not hold, yet a document that
    /// leaves it out is about another release.
    pub fn is_release(&self) -> bool {
        const NOT_RELEASES: &[&str] = &["int", "fp", "bf", "rtx", "gtx", "sm", "cuda", "python"];
        self.parts.len() > 1
            && self.parts.first().is_some_and(|first| {
                let letters = first.trim_end_matches(|c: char| c.is_ascii_digit());
                letters.len() >= 3
                    && letters.len() < first.len()
                    && letters.chars().all(|c| c.is_ascii_alphabetic())
                    && !NOT_RELEASES.contains(&letters)
            })
    }

    /// Whether [`documents_missing_a_model`] holds documents to it: a model or a release.
    /// Every other anchor that is no figure is [`unnamed_subject`]'s.
    fn names_a_model(&self) -> bool {
        self.is_model() || self.is_release()
    }

    /// Whether `names` (a passage's, [`passage_names`]) hold it: whole, or every part of it.
    fn named_in(&self, names: &HashSet<String>) -> bool {
        names.contains(&self.name) || self.parts.iter().all(|x| names.contains(x))
    }
}

/// For each passage, whether its document (`documents[i]`: passages with the same source
/// are one document, their names pooled) leaves out a model (or a release,
/// [`Anchor::is_release`]: `CogVLM2-LLaMA3`) that the question names and
/// another of the documents names. A model no document names marks every document when
/// none names its family either (its first part: `glm` of `GLM-4-32B-0414`), since the
/// passages are then about other models; when some document names the family (`MiniCPM`
/// for `MiniCPM-2B`: a README names its variants less often than itself) it marks none.
/// `passages` as rendered, with their source names and heading paths: a README names its
/// model in its file name and headings more often than in a table.
pub fn documents_missing_a_model(
    question: &str,
    passages: &[&str],
    documents: &[&str],
) -> Vec<bool> {
    let models: Vec<Anchor> = question_anchors(question)
        .into_iter()
        .filter(Anchor::names_a_model)
        .collect();
    if models.is_empty() {
        return vec![false; passages.len()];
    }
    let mut named: Vec<(&str, HashSet<String>)> = Vec::new();
    for (passage, &document) in passages.iter().zip(documents) {
        let names = passage_names(passage);
        match named.iter_mut().find(|(d, _)| *d == document) {
            Some((_, pooled)) => pooled.extend(names),
            None => named.push((document, names)),
        }
    }
    let names_model = |names: &HashSet<String>, a: &Anchor| a.named_in(names);
    let names_family = |names: &HashSet<String>, a: &Anchor| {
        a.parts.first().is_some_and(|family| names.contains(family))
    };
    let lacking: Vec<&str> = named
        .iter()
        .filter(|(_, names)| {
            models.iter().any(|m| {
                if names_model(names, m) {
                    return false;
                }
                let anywhere = |named_by: &dyn Fn(&HashSet<String>, &Anchor) -> bool| {
                    named.iter().any(|(_, other)| named_by(other, m))
                };
                anywhere(&names_model) || !anywhere(&names_family)
            })
        })
        .map(|(d, _)| *d)
        .collect();
    documents.iter().map(|d| lacking.contains(d)).collect()
}

/// The first of the question's anchors that is neither a model (those are
/// [`documents_missing_a_model`]'s) nor a figure (its first part a number: `100K`, `8bit`,
/// `2048`), and that no passage names, as the question writes it (lower case): the
/// benchmark, method, language or product that the question asks a figure of (`MMBench`,
/// `GRPO`, `Go`, `CogVLM2`). Passages that never name it cannot state a figure of it; a
/// figure they give is another's (BELLE-VL's MME score for its MMBench). `passages` as
/// rendered, with their source names, heading paths and context (a table's header row
/// names its columns).
pub fn unnamed_subject(question: &str, passages: &[&str]) -> Option<String> {
    let subjects: Vec<Anchor> = question_anchors(question)
        .into_iter()
        .filter(|a| !a.names_a_model())
        .filter(|a| {
            !a.parts
                .first()
                .is_some_and(|p| p.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    if subjects.is_empty() || passages.is_empty() {
        return None;
    }
    let named: HashSet<String> = passages.iter().flat_map(|p| passage_names(p)).collect();
    subjects
        .into_iter()
        .find(|a| !a.named_in(&named))
        .map(|a| a.name)
}

/// The question's anchors, without repeats.
pub fn question_anchors(question: &str) -> Vec<Anchor> {
    let mut seen = HashSet::new();
    names(question, false)
        .into_iter()
        .filter(Name::is_anchor)
        .map(|name| Anchor {
            name: name.parts.concat(),
            parts: name.parts,
        })
        .filter(|a| !STOP_WORDS.contains(&a.name.as_str()))
        .filter(|a| seen.insert(a.name.clone()))
        .collect()
}

/// What a passage names: every run of up to [`MAX_JOINED_PARTS`] consecutive parts of each
/// of its names, joined, so that an anchor matches a whole name or a whole-part piece of one.
fn passage_names(passage: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for Name { parts, .. } in names(passage, true) {
        for start in 0..parts.len() {
            let mut joined = String::new();
            for part in parts[start..].iter().take(MAX_JOINED_PARTS) {
                joined.push_str(part);
                out.insert(joined.clone());
            }
        }
    }
    out
}

/// The share (0 to 1) of `anchors` that each passage holds. No anchors: 1 each (nothing to
/// check by).
pub fn anchor_shares(anchors: &[Anchor], passages: &[&str]) -> Vec<f64> {
    passages
        .iter()
        .map(|p| {
            if anchors.is_empty() {
                return 1.0;
            }
            let named = passage_names(p);
            let held = anchors.iter().filter(|a| a.named_in(&named)).count();
            held as f64 / anchors.len() as f64
        })
        .collect()
}

/// The question's anchor share: its best passage's. No anchors: 1; no passages: 0.
pub fn best_share(anchors: &[Anchor], shares: &[f64]) -> f64 {
    if anchors.is_empty() {
        return 1.0;
    }
    shares.iter().copied().fold(0.0, f64::max)
}

/// The share (0 to 1) of the question's anchors held by the passage that holds most of them.
/// No anchors: 1; no passages: 0.
pub fn question_anchor_share(question: &str, passages: &[&str]) -> f64 {
    let anchors = question_anchors(question);
    best_share(&anchors, &anchor_shares(&anchors, passages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(question: &str) -> Vec<String> {
        question_anchors(question)
            .into_iter()
            .map(|a| a.name)
            .collect()
    }

    #[test]
    fn anchors_are_the_questions_ascii_names_with_joiners_dropped() {
        assert_eq!(
            names_of("ChatGLM3-6B 用 INT8 量化推理最少需要多少显存？"),
            ["chatglm36b", "int8"]
        );
        assert_eq!(
            names_of("用 LLaMA-Factory 做 3-bit QLoRA 微调 7B 模型需要多少显存？"),
            ["llamafactory", "3bit", "qlora", "7b"]
        );
        assert_eq!(
            names_of("Chinese-Alpaca-2-13B 在 llama.cpp 里 Q4_K 量化后文件有多大？"),
            ["chinesealpaca213b", "llamacpp", "q4k"]
        );
        assert_eq!(
            names_of("What is the default port of the API? List the API keys."),
            ["api"],
            "plain words, and a capital opening a sentence, name nothing"
        );
        assert_eq!(
            names_of("Does Ollama serve RTX 4090 cards?"),
            ["ollama", "rtx", "4090"]
        );
        assert!(names_of("默认使用哪种知识库类型？").is_empty());
    }

    #[test]
    fn a_document_that_leaves_out_the_questions_model_is_marked() {
        let question = "ChatGLM3-6B 用 INT8 量化推理最少需要多少显存？";
        let passages = [
            "（来源：chatglm-6b--README.md；章节：ChatGLM-6B > 硬件需求）\n| INT8 | 8 GB |",
            "（来源：chatglm3--README.md；章节：ChatGLM3 > 推理）\nChatGLM3-6B 以 FP16 加载需要 13GB 显存。",
            "（来源：chatglm-6b--README.md；章节：ChatGLM-6B > 量化）\n按需以 INT4 加载。",
        ];
        let documents = [
            "chatglm-6b--README.md",
            "chatglm3--README.md",
            "chatglm-6b--README.md",
        ];
        assert_eq!(
            documents_missing_a_model(question, &passages, &documents),
            [true, false, true]
        );
        // A model no document names, of a family one names, marks none: the documents
        // cannot be told apart by it.
        assert_eq!(
            documents_missing_a_model("ChatGLM-9B 要多少显存？", &passages, &documents),
            [false, false, false]
        );
        // A model whose family no document names marks them all: they are about others.
        assert_eq!(
            documents_missing_a_model("GLM-4-32B-0414 用 INT4 要多少显存？", &passages, &documents),
            [true, true, true]
        );
        // A question that names no model (INT8 is a precision, RTX 4090 hardware) marks none.
        assert_eq!(
            documents_missing_a_model("INT8 在 RTX 4090 上要多少显存？", &passages, &documents),
            [false, false, false]
        );
        let models: Vec<String> = question_anchors("Qwen1.5-72B 和 GLM-4-32B-0414 与 INT4、A100")
            .into_iter()
            .filter(Anchor::is_model)
            .map(|a| a.name)
            .collect();
        assert_eq!(models, ["qwen1572b", "glm432b0414"]);
    }

    #[test]
    fn a_release_without_a_parameter_count_is_held_to_the_model_rule() {
        let releases: Vec<String> = question_anchors(
            "CogVLM2-LLaMA3、Qwen2-VL、INT8-KV、RTX4090-24G、MME、CogVLM2 和 GPT-4",
        )
        .into_iter()
        .filter(Anchor::is_release)
        .map(|a| a.name)
        .collect();
        assert_eq!(releases, ["cogvlm2llama3", "qwen2vl"]);
        // BELLE's document states an MME score but never names CogVLM2-LLaMA3, which
        // CogVLM2's README does: BELLE's is off the subject.
        let passages = [
            "（来源：belle--README.md；章节：BELLE-VL）\n| 模型 | MME Cognition |\n| BELLE-VL | 305.36 |",
            "（来源：cogvlm2--README.md；章节：CogVLM2）\ncogvlm2-llama3-chat-19B 基于 Meta-Llama-3-8B-Instruct。",
        ];
        let documents = ["belle--README.md", "cogvlm2--README.md"];
        assert_eq!(
            documents_missing_a_model("CogVLM2-LLaMA3 在 MME 上得分多少？", &passages, &documents),
            [true, false]
        );
    }

    #[test]
    fn a_subject_no_passage_names_is_reported() {
        let passages = [
            "（来源：belle--README.md；章节：BELLE-VL > 评测）\n| 模型 | MME Perception | MME Cognition |\n| BELLE-VL | 1620.10 | 305.36 |",
            "（来源：belle--README.md；章节：BELLE-VL）\nBELLE-VL 以 Qwen-14B 为底座。",
        ];
        // MMBench is in no passage: their figures are MME's.
        assert_eq!(
            unnamed_subject("BELLE-VL 在 MMBench 上得分多少？", &passages).as_deref(),
            Some("mmbench")
        );
        // Named in a header row, or in parts apart: nothing to report.
        assert_eq!(
            unnamed_subject("BELLE-VL 的 MME Cognition 是多少？", &passages),
            None
        );
        assert_eq!(unnamed_subject("BELLE VL 的 MME 是多少？", &passages), None);
        // Models and figures are left to the other checks: Qwen-7B is a model, 100K a figure.
        assert_eq!(
            unnamed_subject("Qwen-7B 在 100K 上下文下多少分？", &passages),
            None
        );
        // A product no passage names (CogVLM2: no parameter count, so not a model here).
        assert_eq!(
            unnamed_subject("CogVLM2 用 Int8 需要多少显存？", &passages).as_deref(),
            Some("cogvlm2")
        );
        // Nothing in the question to name, or nothing to look in.
        assert_eq!(unnamed_subject("默认端口是多少？", &passages), None);
        assert_eq!(
            unnamed_subject("BELLE-VL 在 MMBench 上得分多少？", &[]),
            None
        );
    }

    #[test]
    fn a_name_matches_whole_parts_only() {
        let share = |q: &str, p: &str| question_anchor_share(q, &[p]);
        assert_eq!(share("Qwen-72B 呢", "Qwen-72B-Chat 的显存"), 1.0);
        assert_eq!(share("qwen72b 呢", "Qwen-72B-Chat"), 1.0);
        assert_eq!(share("Qwen 72B 呢", "Qwen-72B-Chat"), 1.0);
        assert_eq!(share("7B 呢", "Qwen-17B"), 0.0, "7b is not a part of 17b");
        assert_eq!(share("3-bit 呢", "2-bit、4-bit 和 8-bit"), 0.0);
        assert_eq!(share("RTX 4090 呢", "在 RTX 4090 上"), 1.0);
        assert_eq!(
            share("RTX4090 呢", "在 RTX 4090 上"),
            1.0,
            "joined by the space"
        );
        assert_eq!(share("MiniCPM-2B 呢", "MiniCPM 2B 的 LoRA"), 1.0);
        assert_eq!(
            share(
                "Chinese-LLaMA-2 呢",
                "（来源：chinese-llama-alpaca-2--README.md）"
            ),
            1.0,
            "the parts, apart"
        );
        assert_eq!(
            share("ChatGLM3-6B 呢", "ChatGLM-6B 的量化"),
            0.0,
            "chatglm3 is not chatglm"
        );
        assert_eq!(share("Q4_K 呢", "q4_k_m.gguf"), 1.0);
        assert_eq!(share("INT4 呢", "int4"), 1.0, "case is ignored");
    }

    #[test]
    fn the_best_single_passage_counts_not_the_union() {
        let q = "ChatGLM3-6B 用 INT8 量化推理最少需要多少显存？";
        let fp16 =
            "[1] chatglm3--README.md · 推理\nChatGLM3-6B 以 FP16 精度加载运行需要 13GB 显存。";
        let int8 = "[2] chatglm-6b--README.md · 硬件需求\n| INT8 | 8 GB | 10 GB |";
        assert_eq!(
            question_anchor_share(q, &[fp16, int8]),
            0.5,
            "each passage holds one of the two anchors"
        );
        let both = "[3] chatglm3--README.md\nChatGLM3-6B 在 INT8 量化下需要 8GB 显存。";
        assert_eq!(question_anchor_share(q, &[fp16, int8, both]), 1.0);
        assert_eq!(
            question_anchor_share(
                "ChatGLM-6B 用 INT4 要多少显存",
                &["[1] chatglm-6b--README.md · 硬件需求\n| INT4 | 6 GB |"]
            ),
            1.0,
            "the source name rendered with the passage names its subject"
        );
    }

    #[test]
    fn no_anchors_is_fully_held_and_no_passages_hold_nothing() {
        assert_eq!(question_anchor_share("默认端口是多少？", &[]), 1.0);
        assert_eq!(question_anchor_share("INT8 呢", &[]), 0.0);
    }
}
