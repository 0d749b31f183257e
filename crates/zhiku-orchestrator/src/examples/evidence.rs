//! Targets that quote their evidence before the answer (`zhiku tune --evidence-first`):
//! `依据：[2] 方法：Q-LoRA；2048：13.9G / 7.0s/it` on one line, then `回答：` and the
//! target ([`crate::prompt::evidence_first`]). The quote is the line of the prompt's
//! passages that holds the answer, cut to the part that says it: for a table row the row's
//! name and the answer's cell under their column names, for prose the sentence.
//!
//! Why: adapters trained on answers alone move the small model's reading of tables (the
//! neighbouring row's or column's figure). RAFT (Zhang et al. 2024) trains the model to
//! quote the passage before answering; copying the right line is the step a small model
//! can learn, and with the row quoted the cell is next to its column's name.

use zhiku_text::markdown::{is_table_delimiter, row_cells};

use super::{ExampleKind, TrainingExample};
use crate::prompt::{EVIDENCE_OPENING, evidence_first};

/// Characters of a quoted sentence at most: a window around the answer beyond it.
const MAX_QUOTE_CHARS: usize = 120;
/// Where a sentence ends.
const SENTENCE_ENDS: &[char] = &['。', '！', '？', '!', '?', '；', ';'];

/// The number of the prompt's passage that holds `answer` and the quote of it: of the
/// lines that hold it, the one sharing most characters with `question`. None when no
/// passage line holds it (a refusal, or a target the passages word otherwise).
pub fn evidence_quote(prompt: &str, question: &str, answer: &str) -> Option<(u32, String)> {
    let answer = answer.trim();
    if answer.is_empty() {
        return None;
    }
    let lines: Vec<&str> = prompt.lines().collect();
    let mut number = None;
    let mut header: Option<Vec<String>> = None;
    // (characters shared with the question, passage number, quote)
    let mut best: Option<(usize, u32, String)> = None;
    for (i, raw) in lines.iter().enumerate() {
        let mut line = raw.trim();
        if let Some((n, rest)) = passage_marker(line) {
            number = Some(n);
            header = None;
            line = rest;
            if crate::context::header_label(line).is_some() {
                continue;
            }
        }
        let Some(n) = number else { continue };
        if line.starts_with("问题：") {
            break;
        }
        if line.contains('|') && lines.get(i + 1).is_some_and(|l| is_table_delimiter(l)) {
            header = Some(row_cells(line));
            continue;
        }
        if is_table_delimiter(line) || !line.contains(answer) {
            continue;
        }
        let quote = if line.contains('|') {
            table_row_quote(line, header.as_deref(), answer)
        } else if let Some(q) = rendered_row_quote(line, answer) {
            q
        } else {
            sentence_quote(line, answer)
        };
        let shared = shared_chars(question, line);
        if best.as_ref().is_none_or(|(s, _, _)| shared > *s) {
            best = Some((shared, n, quote));
        }
    }
    best.map(|(_, n, q)| (n, q))
}

/// What [`with_evidence`] did with a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceOutcome {
    /// The target now quotes its evidence first.
    Quoted,
    /// It did already.
    AlreadyQuoted,
    /// An answer whose fact no passage line holds word for word: left as it was.
    NoLine,
    /// A refusal, or a record that is not one prompt and one target: left as it was.
    NotAnAnswer,
}

/// Puts `example`'s answer target after its evidence ([`evidence_quote`]), and says what it
/// did; anything but [`EvidenceOutcome::Quoted`] leaves the example as it was.
pub fn with_evidence(example: &mut TrainingExample) -> EvidenceOutcome {
    if example.zhiku.kind != ExampleKind::Answer {
        return EvidenceOutcome::NotAnAnswer;
    }
    let [prompt, target] = example.conversations.as_mut_slice() else {
        return EvidenceOutcome::NotAnAnswer;
    };
    if target.value.trim_start().starts_with(EVIDENCE_OPENING) {
        return EvidenceOutcome::AlreadyQuoted;
    }
    let origin = &example.zhiku;
    let Some((number, quote)) = evidence_quote(&prompt.value, &origin.question, &origin.answer)
    else {
        return EvidenceOutcome::NoLine;
    };
    target.value = evidence_first(number, &quote, target.value.trim());
    EvidenceOutcome::Quoted
}

/// `[3] rest` → (3, rest).
fn passage_marker(line: &str) -> Option<(u32, &str)> {
    let rest = line.strip_prefix('[')?;
    let (digits, rest) = rest.split_once("] ")?;
    let number = digits.parse().ok()?;
    Some((number, rest.trim_start()))
}

/// A markdown row holding `answer`: the row's first cell and the answer's cell, each under
/// its column's name where the table's header is known; else the row itself.
fn table_row_quote(line: &str, header: Option<&[String]>, answer: &str) -> String {
    let cells = row_cells(line);
    let (Some(header), Some(at)) = (header, cells.iter().position(|c| c.contains(answer))) else {
        return line.trim().to_owned();
    };
    let named = |k: usize| match header.get(k).filter(|h| !h.is_empty()) {
        Some(h) => format!("{h}：{}", cells[k]),
        None => cells[k].clone(),
    };
    if at == 0 {
        named(0)
    } else {
        format!("{}；{}", named(0), named(at))
    }
}

/// A row as the prompt shows a table cut from its header (`方法：Q-LoRA；2048：13.9G`): its
/// first pair and the pair holding `answer`. None for a line of another shape.
fn rendered_row_quote(line: &str, answer: &str) -> Option<String> {
    let pairs: Vec<&str> = line.split('；').collect();
    if pairs.len() < 2 || !pairs.iter().all(|p| p.contains('：')) {
        return None;
    }
    let at = pairs.iter().position(|p| p.contains(answer))?;
    Some(if at == 0 {
        pairs[0].trim().to_owned()
    } else {
        format!("{}；{}", pairs[0].trim(), pairs[at].trim())
    })
}

/// The sentence of `line` holding `answer`, at most [`MAX_QUOTE_CHARS`] characters around
/// it.
fn sentence_quote(line: &str, answer: &str) -> String {
    let Some(at) = line.find(answer) else {
        return line.trim().to_owned();
    };
    let start = line[..at].rfind(SENTENCE_ENDS).map_or(0, |i| {
        i + line[i..].chars().next().map_or(1, char::len_utf8)
    });
    let end = line[at + answer.len()..]
        .find(SENTENCE_ENDS)
        .map_or(line.len(), |i| {
            let e = at + answer.len() + i;
            e + line[e..].chars().next().map_or(0, char::len_utf8)
        });
    let sentence: Vec<char> = line[start..end].trim().chars().collect();
    if sentence.len() <= MAX_QUOTE_CHARS {
        return sentence.into_iter().collect();
    }
    // A window around the answer: its characters' offset within the sentence.
    let trimmed: String = sentence.iter().collect();
    let offset = trimmed
        .find(answer)
        .map_or(0, |b| trimmed[..b].chars().count());
    // From the sentence's start when the answer ends within the first MAX_QUOTE_CHARS
    // (no word cut at the front), else centred on it.
    let from = if offset + answer.chars().count() <= MAX_QUOTE_CHARS {
        0
    } else {
        offset.saturating_sub(MAX_QUOTE_CHARS / 2)
    };
    let to = (from + MAX_QUOTE_CHARS).min(sentence.len());
    let from = to.saturating_sub(MAX_QUOTE_CHARS);
    sentence[from..to].iter().collect()
}

/// How many distinct characters of `question` (letters, digits, Han) `line` holds.
fn shared_chars(question: &str, line: &str) -> usize {
    let mut seen = std::collections::HashSet::new();
    question
        .chars()
        .filter(|c| c.is_alphanumeric())
        .filter(|c| seen.insert(*c))
        .filter(|c| line.contains(*c))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples::{ExampleOrigin, Turn};
    use crate::prompt::split_evidence;

    const PROMPT: &str = "已知信息：\n\
[1] （来源：qwen.md；章节：微调）\n\
| 方法 | 256 | 2048 |\n\
| --- | --- | --- |\n\
| LoRA | 20.1G / 1.2s/it | 23.5G / 22.3s/it |\n\
| Q-LoRA | 11.5G / 3.0s/it | 13.9G / 7.0s/it |\n\
[2] （来源：chatglm.md；章节：量化）\n\
量化等级为 INT4 时最低需要 6 GB 显存。INT8 时需要 8 GB。\n\
[3] （来源：qwen.md；章节：微调）\n\
方法：Q-LoRA；4096：16.9G / 11.6s/it\n\
[4] （章节：INT2 显存 1.5 GB）\n\n\
请根据上述已知信息，用中文简洁地回答，不要编造。\n问题：{q}";

    fn prompt(q: &str) -> String {
        PROMPT.replace("{q}", q)
    }

    #[test]
    fn a_table_cell_is_quoted_with_its_row_and_column_names() {
        let q = "Q-LoRA 微调序列长度 2048 时显存占用多少？";
        assert_eq!(
            evidence_quote(&prompt(q), q, "13.9G / 7.0s/it"),
            Some((1, "方法：Q-LoRA；2048：13.9G / 7.0s/it".to_owned()))
        );
        // A row shown under its column names keeps its first pair and the answer's.
        assert_eq!(
            evidence_quote(&prompt(q), q, "16.9G"),
            Some((3, "方法：Q-LoRA；4096：16.9G / 11.6s/it".to_owned()))
        );
    }

    #[test]
    fn prose_is_quoted_by_the_sentence_that_holds_the_answer() {
        let q = "ChatGLM 用 INT8 量化要多少显存？";
        assert_eq!(
            evidence_quote(&prompt(q), q, "8 GB"),
            Some((2, "INT8 时需要 8 GB。".to_owned()))
        );
        // A passage's header line, the section-only one too, is not evidence.
        assert_eq!(evidence_quote(&prompt(q), q, "1.5 GB"), None);
        // Nothing holds it: no quote (the question's own line is not evidence).
        assert_eq!(
            evidence_quote(&prompt("要 99 GB 吗？"), "要 99 GB 吗？", "99 GB"),
            None
        );
        let long = format!("{}答案是 42 个{}", "长".repeat(200), "尾".repeat(200));
        let quote = sentence_quote(&long, "42 个");
        assert_eq!(quote.chars().count(), MAX_QUOTE_CHARS);
        assert!(quote.contains("42 个"));
        // An answer near the start: the quote starts where the sentence does.
        let early = format!("ChatGLM-6B 的 star 数达到 2 万，{}", "后".repeat(200));
        let quote = sentence_quote(&early, "2 万");
        assert!(quote.starts_with("ChatGLM-6B"), "{quote}");
        assert_eq!(quote.chars().count(), MAX_QUOTE_CHARS);
    }

    #[test]
    fn an_answer_target_gets_its_evidence_once_and_a_refusal_none() {
        let q = "Q-LoRA 微调序列长度 2048 时显存占用多少？";
        let mut example = TrainingExample {
            system: None,
            conversations: vec![
                Turn {
                    from: "human".into(),
                    value: prompt(q),
                },
                Turn {
                    from: "gpt".into(),
                    value: "显存占用 13.9G / 7.0s/it。".into(),
                },
            ],
            zhiku: ExampleOrigin {
                passage: "qwen.md#3".into(),
                source: "qwen.md".into(),
                kind: ExampleKind::Answer,
                question: q.into(),
                answer: "13.9G / 7.0s/it".into(),
                restated: None,
                distilled: None,
                support: 1.0,
                from_table: true,
                from_statement: false,
                near_miss: None,
            },
        };
        assert_eq!(with_evidence(&mut example), EvidenceOutcome::Quoted);
        let target = example.conversations[1].value.clone();
        assert_eq!(
            split_evidence(&target),
            (
                Some("[1] 方法：Q-LoRA；2048：13.9G / 7.0s/it"),
                "显存占用 13.9G / 7.0s/it。"
            )
        );
        assert_eq!(
            with_evidence(&mut example),
            EvidenceOutcome::AlreadyQuoted,
            "written so already"
        );
        assert_eq!(example.conversations[1].value, target);
        example.zhiku.kind = ExampleKind::Refusal;
        example.conversations[1].value = crate::prompt::REFUSAL.into();
        assert_eq!(with_evidence(&mut example), EvidenceOutcome::NotAnAnswer);
        assert_eq!(example.conversations[1].value, crate::prompt::REFUSAL);
    }
}
