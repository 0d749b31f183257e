//! Questions read from a passage's own sentences, without a teacher: a sentence that states a
//! figure (`P-Tuning v2 将需要微调的参数量减少到原来的 0.1%`) is asked with `多少` in the
//! figure's place, and the figure is the answer. Right by construction, as the table-cell
//! questions are ([`super::table_question`]); the reading they teach is the one small models
//! get wrong in prose: the figure of the sentence that matches the question, not one of the
//! sentence beside it.

use crate::verify::extract_facts;

use super::{plain_cell, put_drawn_first};

const STATEMENT_SALT: u64 = 0x5e47_e4ce;
/// Characters of a sentence asked about: long enough to name its subject, short enough to be
/// one statement.
const MIN_SENTENCE_CHARS: usize = 8;
const MAX_SENTENCE_CHARS: usize = 160;
/// Characters before the figure at least: the words that say what the figure is of.
const MIN_SUBJECT_CHARS: usize = 6;
/// Characters before the figure at most: more is a paragraph's run-in, not a question.
const MAX_SUBJECT_CHARS: usize = 60;
/// Characters of the question after `多少` at most (the figure's clause, to its comma).
const MAX_TAIL_CHARS: usize = 24;

/// A question about one figure of one sentence of `text` (prose only: not a table row, a
/// heading, or a line inside a code fence; read without markdown marks), and the figure as
/// its answer. The figure must appear once in its sentence, after words that name its
/// subject; which sentence and figure is drawn from `seed` and `key`. None when no sentence
/// qualifies.
pub fn statement_question(text: &str, seed: u64, key: &str) -> Option<(String, String)> {
    statement_questions(text, seed, key).into_iter().next()
}

/// Every figure of `text` that [`statement_question`] may ask about, as (question, figure),
/// the one it asks first and the others after it in the passage's order.
pub fn statement_questions(text: &str, seed: u64, key: &str) -> Vec<(String, String)> {
    let mut asked: Vec<(String, String)> = Vec::new();
    let mut fence = false;
    for line in text.lines() {
        let line = line.trim();
        if zhiku_text::markdown::fence_marker(line).is_some() {
            fence = !fence;
            continue;
        }
        if fence || line.contains('|') || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        for sentence in sentences(line) {
            // Asked as a user writes: without code marks, emphasis and link targets.
            asked.extend(questions_of(&plain_cell(sentence)));
        }
    }
    put_drawn_first(&mut asked, seed ^ STATEMENT_SALT, key);
    asked
}

/// The sentences of one line, without a list marker, each ended where a full stop, an
/// exclamation or a semicolon stands. Questions in the passage are not statements.
fn sentences(line: &str) -> impl Iterator<Item = &str> {
    line.split_inclusive(['。', '！', '；', '!', ';', '？', '?'])
        .map(|s| {
            s.trim()
                .trim_start_matches(['-', '*', '+', '>', '•'])
                .trim_start()
        })
        .filter(|s| !s.ends_with(['？', '?']))
        .map(|s| s.trim_end_matches(['。', '！', '；', '!', ';']))
}

/// Every figure of `sentence` that can be asked about, as (question, figure).
fn questions_of(sentence: &str) -> Vec<(String, String)> {
    let chars = sentence.chars().count();
    if !(MIN_SENTENCE_CHARS..=MAX_SENTENCE_CHARS).contains(&chars) || sentence.contains("http") {
        return Vec::new();
    }
    extract_facts(sentence)
        .into_iter()
        .filter(|fact| fact.kind.is_figure())
        .filter_map(|fact| {
            let figure = fact.text.trim();
            // Once only: two places would make the question ambiguous.
            if figure.is_empty() || sentence.matches(figure).count() != 1 {
                return None;
            }
            let start = sentence.find(figure)?;
            let end = start + figure.len();
            if in_a_list_or_token(&sentence[..start], &sentence[end..]) {
                return None;
            }
            let subject = sentence[..start].trim_end();
            let subject_chars = subject.chars().filter(|c| !c.is_whitespace()).count();
            // The subject must be words that say what the figure is of, and the figure not
            // inside a parenthesis the question would leave open.
            if !(MIN_SUBJECT_CHARS..=MAX_SUBJECT_CHARS).contains(&subject_chars)
                || !subject.chars().any(zhiku_text::is_han)
                || subject.matches(['（', '(']).count() > subject.matches(['）', ')']).count()
            {
                return None;
            }
            // A figure after its label (`首 Token 延迟：1.37s`) is asked as `…是多少`.
            let subject = match subject.strip_suffix(['：', ':']) {
                Some(label) => format!("{}是", label.trim_end()),
                None => subject.to_owned(),
            };
            let tail = first_clause(sentence[end..].trim());
            // Nothing after a clause break would leave the question without what it asks.
            if tail.is_empty() && subject.ends_with(['，', ',']) {
                return None;
            }
            let question = format!("{subject}多少{tail}？");
            Some((question, figure.to_owned()))
        })
        .collect()
}

/// Whether the figure between `before` and `after` is one of a list (`7B/8B/20B`, `7B、13B`),
/// part of a longer token or name (`1120 x 1120`, `9000+`, `MiniCPM-V 4.5`), a value set by
/// `=`, or part of a date (`9月25日`): asking for it alone is not a question a user asks.
fn in_a_list_or_token(before: &str, after: &str) -> bool {
    const JOINERS: &[char] = &[
        '/', '、', '+', '-', '–', 'x', '×', '*', '=', '>', '<', '~', '.',
    ];
    const DATE_BEFORE: &[char] = &['年', '月'];
    // A date's parts, and a number's own scale words (`3万 亿`: the figure is `3万亿`).
    const DATE_AFTER: &[char] = &['年', '月', '日', '号', '万', '亿', '千', '百'];
    let last = before.trim_end().chars().next_back();
    let next = after.trim_start().chars().next();
    let is = |c: Option<char>, set: &[char]| c.is_some_and(|c| set.contains(&c));
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    is(last, JOINERS)
        || is(next, JOINERS)
        || glued(last)
        || glued(next)
        || is(last, DATE_BEFORE)
        || is(next, DATE_AFTER)
}

/// `tail` up to its first comma: the clause after it is another statement. Empty when the
/// clause is longer than a question's tail should be.
fn first_clause(tail: &str) -> &str {
    let clause = tail
        .find(['，', ',', '（', '('])
        .map_or(tail, |end| &tail[..end]);
    if clause.chars().count() <= MAX_TAIL_CHARS {
        clause.trim_end()
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentence_with_a_figure_is_asked_with_the_figure_left_out() {
        let text =
            "P-Tuning v2 将需要微调的参数量减少到原来的 0.1%，再通过模型量化等方法降低显存。";
        let (question, answer) = statement_question(text, 1, "doc#1").expect("a question");
        assert_eq!(answer, "0.1%");
        assert_eq!(question, "P-Tuning v2 将需要微调的参数量减少到原来的多少？");
        assert!(!question.contains("0.1"));
    }

    #[test]
    fn the_figures_clause_stays_in_the_question() {
        let (question, answer) =
            statement_question("ChatGLM3 的 LoRA 微调单卡占用 14082MiB 显存。", 3, "k")
                .expect("a question");
        assert_eq!(answer, "14082MiB");
        assert_eq!(question, "ChatGLM3 的 LoRA 微调单卡占用多少显存？");
    }

    #[test]
    fn code_marks_and_links_are_read_as_plain_words() {
        let text = "其中 `transformers` 库版本推荐为 `4.27.1`，但理论上不低于 `4.23.1` 即可。";
        let (question, answer) = (0..16)
            .filter_map(|seed| statement_question(text, seed, "k"))
            .find(|(_, a)| a == "4.27.1")
            .expect("the first version asked about");
        assert_eq!(question, "其中 transformers 库版本推荐为多少？");
        assert_eq!(answer, "4.27.1");
        let linked =
            "[JittorLLMs](https://github.com/Jittor/JittorLLMs)：最低3G显存或者没有显卡都可运行。";
        let (question, _) = statement_question(linked, 1, "k").expect("a question");
        assert!(!question.contains("http"), "{question}");
    }

    #[test]
    fn figures_in_lists_and_longer_tokens_are_not_asked_and_labels_read_as_is() {
        for listed in [
            "参数量：0.6B/1.7B/4B/8B/14B/32B/80B/235B。",
            "中文Alpaca-2：7B、13B 两种规模可选。",
            "图像支持的分辨率为 1120 x 1120 像素。",
            "推荐采样参数：temperature=0.7。",
            "最高可以实现 9000+ tokens/s 的推理速度。",
            "模型名：MiniCPM-V 4.5。",
            "2023年9月25日 在魔搭社区推出 Qwen-14B。",
            "内存较小的机器（比如 16GB 内存的 MacBook Pro）也能运行。",
        ] {
            assert_eq!(statement_question(listed, 1, "k"), None, "{listed}");
        }
        let (question, answer) =
            statement_question("首 Token 延迟：1.37s", 1, "k").expect("a question");
        assert_eq!(
            (question.as_str(), answer.as_str()),
            ("首 Token 延迟是多少？", "1.37s")
        );
        // A label that is not words says nothing of what the figure is of.
        assert_eq!(statement_question("GSM8K：32.4", 1, "k"), None);
    }

    #[test]
    fn tables_code_headings_and_questions_are_not_asked_about() {
        let text = "# 模型下载需要 13GB 空间\n\
                    | 模型 | 显存 |\n|---|---|\n| ChatGLM-6B 的 INT4 版本 | 6GB |\n\
                    ```\n推理时显存占用约为 13GB。\n```\n\
                    INT4 量化后需要多少显存？约 6GB 吗？";
        assert_eq!(statement_question(text, 1, "k"), None);
    }

    #[test]
    fn a_figure_without_words_before_it_or_twice_in_its_sentence_is_not_asked() {
        // Nothing before the figure names what it is of.
        assert_eq!(
            statement_question("6GB 显存即可运行 INT4 模型。", 1, "k"),
            None
        );
        // The same figure twice: which one the question means is unclear.
        assert_eq!(
            statement_question("模型推理时占用 6GB，微调时也只占用 6GB 左右。", 1, "k"),
            None
        );
    }

    #[test]
    fn every_figure_is_listed_with_the_drawn_one_first() {
        let text = "量化到 INT4 后推理最少只需 6GB 显存。\n\
                    模型最长支持 32768 个 token 的上下文长度。\n\
                    微调时单卡显存占用约为 14082MiB。";
        for seed in 0..8 {
            let all = statement_questions(text, seed, "doc#2");
            assert_eq!(all.len(), 3, "{all:?}");
            assert_eq!(
                all.first().cloned(),
                statement_question(text, seed, "doc#2")
            );
            let answers: std::collections::HashSet<&str> =
                all.iter().map(|(_, a)| a.as_str()).collect();
            assert_eq!(answers.len(), 3, "{all:?}");
        }
    }

    #[test]
    fn the_draw_is_fixed_by_seed_and_key_and_covers_each_figure() {
        let text = "量化到 INT4 后推理最少只需 6GB 显存。\n\
                    模型最长支持 32768 个 token 的上下文长度。";
        let first = statement_question(text, 7, "doc#2");
        assert_eq!(first, statement_question(text, 7, "doc#2"));
        let answers: std::collections::HashSet<String> = (0..32)
            .filter_map(|seed| statement_question(text, seed, "doc#2").map(|(_, a)| a))
            .collect();
        assert!(answers.contains("6GB"), "{answers:?}");
        assert!(answers.contains("32768"), "{answers:?}");
    }
}
