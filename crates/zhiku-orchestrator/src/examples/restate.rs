//! Targets that restate what the question asks about before the fact, read from the
//! question itself: Chinese asks in place, so putting the answer where the question word
//! stands makes the statement (`MiniCPM 的 vllm 版本是多少？` + `0.2.7` →
//! `MiniCPM 的 vllm 版本是 0.2.7。`).
//!
//! Why: trained on bare facts, a small model learns to answer with one copied span and
//! takes the wrong span of the right passage (the full fine-tuning line's figure for
//! LoRA's); writing the subject first is where it reads the right line. The fact is the
//! teacher's (or the table cell) unchanged, and the words around it are the question's, so
//! the target is as right as the bare fact was.

/// Question words that the answer can take the place of: the earliest in the question is
/// replaced, the longest where two start at the same place.
const QUESTION_WORDS: &[&str] = &[
    "哪一个",
    "哪一些",
    "多少",
    "什么",
    "哪个",
    "哪些",
    "哪里",
    "哪儿",
    "多大",
    "多长",
    "多久",
    "几",
];
/// Question words that ask how: the question without them, then the answer.
const HOW_WORDS: &[&str] = &["如何", "怎么", "怎样", "怎么样"];
/// Answers longer than this (characters) are already sentences and are kept as they are.
const MAX_RESTATED_ANSWER_CHARS: usize = 40;
/// Question words that ask why: a reason is not put where they stand.
const WHY_WORDS: &[&str] = &["为什么", "为何"];
/// Question words of a yes-or-no question.
const YES_NO_WORDS: &[&str] = &["吗", "是否"];
/// Question endings dropped before the statement is made.
const QUESTION_MARKS: &[char] = &['？', '?', '。', '！', '!', ' '];

/// Whether the teacher's question reads as one: not a statement, which ends with a full
/// stop and has no question mark or question word. The 1.5B teacher writes a sentence copied
/// from the passage as its "question" about one time in ten; the example would teach
/// answering statements. A query without a full stop (`ChatGLM-6B 的显存需求`) is one, as
/// users type them.
pub fn is_question(question: &str) -> bool {
    let question = question.trim();
    let asks = question.contains(['？', '?'])
        || QUESTION_WORDS
            .iter()
            .chain(HOW_WORDS)
            .chain(WHY_WORDS)
            .chain(YES_NO_WORDS)
            .any(|w| question.contains(w));
    asks || !question.ends_with(['。', '.', '！', '!'])
}

/// The answer as a statement of the question: the first question word replaced by the
/// answer, or for a "how" question the question without its question word, a colon and the
/// answer. None when the answer is already a sentence (longer than a fact, or ending in a
/// full stop), the question asks why, or it has no question word to replace.
pub fn restated_answer(question: &str, answer: &str) -> Option<String> {
    let answer = answer.trim();
    // A reason is not put where the question word was.
    if answer.is_empty()
        || WHY_WORDS.iter().any(|w| question.contains(w))
        || answer.chars().count() > MAX_RESTATED_ANSWER_CHARS
        || answer.ends_with(['。', '.'])
        || answer.contains('\n')
    {
        return None;
    }
    let question = question.trim().trim_end_matches(QUESTION_MARKS);
    if let Some((start, word)) = first_of(question, QUESTION_WORDS) {
        let before = question[..start].trim_end();
        let mut after = question[start + word.len()..].trim_start();
        // `多少周` with the answer `每2-4周`, `哪些训练方法` with `SFT 和 DPO 两种训练方法`:
        // what the answer ends with is said once.
        after = &after[said_twice(answer, after)..];
        // `多大的内存` → `13GB 的内存`: the particle stays, after a space.
        let mut out = String::with_capacity(question.len() + answer.len() + 4);
        push_spaced(&mut out, before);
        push_spaced(&mut out, answer);
        push_spaced(&mut out, after);
        out.push('。');
        return Some(out);
    }
    let (start, word) = first_of(question, HOW_WORDS)?;
    let rest = format!("{}{}", &question[..start], &question[start + word.len()..]);
    let rest = rest.trim();
    (!rest.is_empty()).then(|| format!("{rest}：{answer}"))
}

/// Bytes at the start of `after` that the answer already ends with (the longest such
/// overlap that does not end inside an ASCII word).
fn said_twice(answer: &str, after: &str) -> usize {
    after
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .filter(|&end| answer.ends_with(&after[..end]))
        .filter(|&end| {
            !after[end..].starts_with(|c: char| c.is_ascii_alphanumeric())
                || !after[..end].ends_with(|c: char| c.is_ascii_alphanumeric())
        })
        .max()
        .unwrap_or(0)
}

/// The earliest question word of `words` in `text`, the longest where two start together.
fn first_of<'a>(text: &str, words: &[&'a str]) -> Option<(usize, &'a str)> {
    words
        .iter()
        .filter_map(|w| {
            text.match_indices(w)
                // `几乎` (almost) asks nothing.
                .find(|(i, _)| !(*w == "几" && text[i + w.len()..].starts_with('乎')))
                .map(|(i, _)| (i, *w))
        })
        .min_by_key(|(i, w)| (*i, std::cmp::Reverse(w.len())))
}

/// Appends `part`, with a space between it and what came before where either side is an
/// ASCII letter, digit or code mark: `是 0.2.7`, `0.2.7 版本`, as Chinese technical text
/// writes them, and what the fact reading splits on.
fn push_spaced(out: &mut String, part: &str) {
    if part.is_empty() {
        return;
    }
    let spaced = |c: char| c.is_ascii_alphanumeric() || matches!(c, '`' | '%' | '/' | ')' | '(');
    // Full-width punctuation carries its own space.
    let punctuation = |c: char| "，。：；、（）“”「」《》！？".contains(c);
    let joins = match (out.chars().last(), part.chars().next()) {
        (Some(a), Some(b)) => {
            !a.is_whitespace()
                && !b.is_whitespace()
                && !punctuation(a)
                && !punctuation(b)
                && (spaced(a) || spaced(b))
        }
        _ => false,
    };
    if joins {
        out.push(' ');
    }
    out.push_str(part);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_takes_the_place_of_the_question_word() {
        let cases = [
            (
                "MiniCPM模型的vllm版本是多少？",
                "0.2.7",
                "MiniCPM模型的vllm版本是 0.2.7。",
            ),
            (
                "完整致谢见哪个文件？",
                "NOTICE.md",
                "完整致谢见 NOTICE.md 文件。",
            ),
            (
                "加载半精度的 ChatGLM3-6B 模型需要多大的内存？",
                "13GB",
                "加载半精度的 ChatGLM3-6B 模型需要 13GB 的内存。",
            ),
            (
                "表格里 Qwen-72B 对应的 预训练token数 是多少？",
                "3.0T",
                "表格里 Qwen-72B 对应的 预训练token数 是 3.0T。",
            ),
            (
                "模型参数更新发布的时间间隔是多少周？",
                "每2-4周",
                "模型参数更新发布的时间间隔是每2-4周。",
            ),
            (
                "v1 版本目前支持哪些训练方法？",
                "SFT 和 DPO 两种训练方法",
                "v1 版本目前支持 SFT 和 DPO 两种训练方法。",
            ),
            (
                "0-shot 测试中，哪些数据集采用 0-shot？",
                "GSM8K、MATH",
                "0-shot 测试中，GSM8K、MATH 数据集采用 0-shot。",
            ),
            (
                "哪个模型支持了 `System Prompt`？",
                "GLM-4",
                "GLM-4 模型支持了 `System Prompt`。",
            ),
        ];
        for (question, answer, want) in cases {
            assert_eq!(
                restated_answer(question, answer).as_deref(),
                Some(want),
                "{question}"
            );
        }
    }

    #[test]
    fn a_how_question_is_restated_before_a_colon() {
        assert_eq!(
            restated_answer("如何激活OpenVINO环境？", "source openvino_env/bin/activate")
                .as_deref(),
            Some("激活OpenVINO环境：source openvino_env/bin/activate")
        );
    }

    #[test]
    fn sentences_and_questions_without_a_question_word_are_left_alone() {
        // Already a sentence.
        assert_eq!(
            restated_answer(
                "In-flight Batching功能是什么？",
                "In-flight Batching功能可以提升实际推理服务时的吞吐。"
            ),
            None
        );
        // A code block is not put inside a sentence.
        assert_eq!(restated_answer("用什么代码加载？", "```\nx\n```"), None);
        // Nothing to replace.
        assert_eq!(restated_answer("说说 GLM-4 的版本", "4.1"), None);
        assert_eq!(restated_answer("GLM-4 的版本？", ""), None);
        assert_eq!(restated_answer("为什么几乎都用 4.30？", "兼容"), None);
    }

    #[test]
    fn statements_copied_from_the_passage_are_not_questions() {
        assert!(is_question("MiniCPM 3.0 的参数量是多少？"));
        assert!(is_question("如何启动服务端"));
        assert!(is_question("ChatGLM-6B 支持 INT4 吗"));
        assert!(is_question("ChatGLM-6B 的显存需求"));
        assert!(!is_question(
            "在随机采样时，累积概率超过top_p的token将作为候选token被随机采样。"
        ));
        assert!(!is_question(
            "MiniCPM-2B-dpo-bf16-llama-format 是一个模型路径。"
        ));
    }
}
