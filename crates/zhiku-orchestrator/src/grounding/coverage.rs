//! Question coverage: how much of what a question asks about its passages mention. With
//! `--abstention evidence` an Ask whose passages cover too little of its question is refused
//! before the model is called: retrieval always returns the nearest passages, and a question
//! on another subject (a football final, a Kubernetes deployment) still gets some.
//!
//! The question's terms are its ASCII words (English stop words left out) and the pairs of
//! adjacent characters inside each run of CJK text, except pairs holding an interrogative,
//! a particle, a preposition, conjunction, pronoun or auxiliary that joins the question's
//! words (在, 做, 要, 里, 和 …), or the classifier after 哪 or 几 (什么, 哪个, 多少, 的是,
//! 上做: the form of the question, not its subject). A term is covered when a
//! passage holds it (words as whole words, pairs inside a CJK run), case ignored. Lexical on
//! purpose: it needs no model and no word segmenter, and reads any language the passages share
//! with the question.

use std::collections::HashSet;

/// Characters that make a CJK pair part of the question's form rather than its subject:
/// interrogatives, and the particles 的, 了 and the copula 是 that join its words.
const FORM_CHARS: &[char] = &[
    '什', '么', '哪', '谁', '几', '吗', '呢', '怎', '何', '多', '少', '啥', '的', '了', '是',
    // Prepositions, conjunctions, pronouns and auxiliaries that join a question's words:
    // a pair across them (卡上做, 要调) is no term of any passage.
    '在', '里', '做', '要', '想', '把', '和', '与', '或', '就', '都', '还', '也', '让', '给', '从',
    '被', '这', '那', '我', '你', '它', '该', '请', '吧', '啊', '又', '再', '才',
];

/// English words that carry no subject.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "be", "by", "can", "do", "does", "for", "how", "i", "in", "is", "it",
    "of", "on", "or", "the", "to", "what", "when", "where", "which", "who", "why", "with", "you",
];

/// The terms of `text`: ASCII words, and the CJK character pairs of each CJK run.
#[derive(Default)]
struct Terms {
    words: Vec<String>,
    pairs: Vec<(char, char)>,
}

fn terms(text: &str) -> Terms {
    let mut out = Terms::default();
    let mut word = String::new();
    let mut previous: Option<char> = None;
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            word.push(c);
            previous = None;
            continue;
        }
        if !word.is_empty() {
            out.words.push(std::mem::take(&mut word));
        }
        if !c.is_ascii() && c.is_alphanumeric() {
            if let Some(p) = previous {
                out.pairs.push((p, c));
            }
            previous = Some(c);
        } else {
            previous = None;
        }
    }
    if !word.is_empty() {
        out.words.push(word);
    }
    out
}

/// The share (0 to 1) of the question's terms that the passages hold. A question with no
/// terms (all question words) is fully covered: there is nothing to check it by.
pub fn question_coverage(question: &str, passages: &[&str]) -> f64 {
    // The classifier after 哪 or 几 (哪种, 哪个, 几张) is part of the question's form too.
    let mut previous = ' ';
    let question: String = question
        .chars()
        .map(|c| {
            let form = matches!(previous, '哪' | '几') && !c.is_ascii();
            previous = c;
            if form { '么' } else { c }
        })
        .collect();
    let asked = terms(&question);
    let words: Vec<&str> = asked
        .words
        .iter()
        .map(String::as_str)
        .filter(|w| !STOP_WORDS.contains(w))
        .collect();
    let pairs: Vec<(char, char)> = asked
        .pairs
        .into_iter()
        .filter(|(a, b)| !FORM_CHARS.contains(a) && !FORM_CHARS.contains(b))
        .collect();
    let total = words.len() + pairs.len();
    if total == 0 {
        return 1.0;
    }
    let mut known_words: HashSet<String> = HashSet::new();
    let mut known_pairs: HashSet<(char, char)> = HashSet::new();
    for passage in passages {
        let t = terms(passage);
        known_words.extend(t.words);
        known_pairs.extend(t.pairs);
    }
    let found = words.iter().filter(|w| known_words.contains(**w)).count()
        + pairs.iter().filter(|p| known_pairs.contains(p)).count();
    found as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSAGE: &str = "默认使用的知识库类型为 FAISS，默认监听地址 DEFAULT_BIND_HOST 为 127.0.0.1。\
        软件方面，本项目已支持在 Python 3.8-3.11 环境中进行使用。";

    #[test]
    fn a_question_on_the_passages_subject_is_covered() {
        let c = question_coverage("默认使用哪种知识库类型？", &[PASSAGE]);
        assert_eq!(c, 1.0, "哪种 (and 种知) is the question's form, not a term");
        let c = question_coverage("默认监听地址 DEFAULT_BIND_HOST 是什么？", &[PASSAGE]);
        assert_eq!(c, 1.0);
    }

    #[test]
    fn pairs_across_joining_words_are_not_terms() {
        // 在显, 上做 and 做推 join the words; 显卡, 卡上 and 推理 are the terms.
        let c = question_coverage("在显卡上做推理", &["显卡推理"]);
        assert!((c - 2.0 / 3.0).abs() < 1e-9, "{c}");
        let c = question_coverage(
            "想在两张显卡上做推理，要调用哪个函数？",
            &["两张显卡推理时调用函数"],
        );
        assert!(c > 0.6, "{c}");
    }

    #[test]
    fn a_question_on_another_subject_is_not() {
        let c = question_coverage("2022 年世界杯的冠军是哪支球队？", &[PASSAGE]);
        assert!(c < 0.2, "{c}");
        let c = question_coverage("如何在 Kubernetes 上配置自动扩缩容？", &[PASSAGE]);
        assert!(c < 0.2, "{c}");
    }

    #[test]
    fn english_words_count_whole_and_stop_words_not_at_all() {
        // python and project are in the passage (as 项目 is not), support and versions not.
        let c = question_coverage(
            "Which Python versions does the project support?",
            &[PASSAGE],
        );
        assert_eq!(c, 0.25, "python of python, versions, project, support");
        let c = question_coverage(
            "Which Python versions does the project support?",
            &[PASSAGE, "the project page"],
        );
        assert_eq!(c, 0.5, "terms may come from any passage");
        assert_eq!(
            question_coverage("py?", &["python"]),
            0.0,
            "whole words only"
        );
    }

    #[test]
    fn pairs_do_not_cross_runs_and_case_is_ignored() {
        // 置自 would join 配置 and 自动 across the space: not a pair of either text.
        assert_eq!(question_coverage("配置 自动", &["配置，自动"]), 1.0);
        assert_eq!(question_coverage("FAISS", &["faiss"]), 1.0);
        assert_eq!(question_coverage("配置自动", &["配置，自动"]), 2.0 / 3.0);
    }

    #[test]
    fn a_question_of_question_words_only_is_covered() {
        assert_eq!(question_coverage("什么？", &[]), 1.0);
        assert_eq!(question_coverage("", &["x"]), 1.0);
        assert_eq!(
            question_coverage("世界杯", &[]),
            0.0,
            "no passages cover nothing"
        );
    }
}
