//! Near-miss questions for refusal examples: the question of an answer example with one of
//! its qualifiers changed (a model size, a bit width, a GPU) to one that no passage of the
//! prompt states, asked over the same passages, the refusal its target.
//!
//! This is the unanswerable question users actually ask a knowledge base: the passage on
//! the subject is right there, but for 7B where the question says 13B, INT4 where it says
//! INT8, an A100 where it says an RTX 4090. A refusal example made of distractors alone
//! teaches something else (refuse when the answering passage is missing), and where a
//! distractor restates the passage in other words it teaches the model to refuse what it
//! can answer.

use crate::verify::check_answer;

use super::mix;

/// Salt of the draw that orders a question's possible changes.
const NEAR_MISS_SALT: u64 = 0x6e65_6172;

/// Model sizes (billions of parameters) a size may be changed to.
const SIZES: &[&str] = &[
    "0.5", "1.5", "1.8", "3", "6", "7", "8", "9", "13", "14", "32", "34", "70", "72", "110",
];
/// Bit widths a quantisation may be changed to.
const BITS: &[&str] = &["2", "3", "4", "8"];
/// GPUs one may be changed to (matched whole, case-insensitively).
const GPUS: &[&str] = &[
    "A100", "A800", "H100", "H800", "V100", "T4", "A10", "L40S", "RTX 3090", "RTX 4090",
];

/// A near-miss question made from an answerable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    /// The question with one qualifier changed.
    pub question: String,
    /// The qualifier as the original question writes it, and what it became.
    pub replaced: String,
    pub by: String,
}

/// One qualifier of the question that may be changed: its byte range and the texts that
/// may take its place.
#[derive(Debug)]
struct Change {
    start: usize,
    end: usize,
    options: Vec<String>,
}

/// `question` with one qualifier changed so that the passages no longer state what it asks
/// about: the first change, in an order drawn from `seed` and `key`, after which the
/// verification of facts finds a key fact of the question that no passage states (and
/// found none before). `None` when the question has no qualifier to change, or when it
/// already names something the passages lack, or when every change is stated too.
pub fn near_miss_question(
    question: &str,
    passages: &[&str],
    seed: u64,
    key: &str,
) -> Option<NearMiss> {
    if !check_answer("", passages, question)
        .question_unstated
        .is_empty()
    {
        return None;
    }
    let mut tries: Vec<(u64, usize, usize, String)> = changes(question)
        .into_iter()
        .flat_map(
            |Change {
                 start,
                 end,
                 options,
             }| {
                options.into_iter().map(move |option| {
                    let draw = mix(
                        seed ^ NEAR_MISS_SALT,
                        &format!("{key}\u{1f}{start}\u{1f}{option}"),
                    );
                    (draw, start, end, option)
                })
            },
        )
        .collect();
    tries.sort();
    tries.into_iter().find_map(|(_, start, end, by)| {
        let changed = format!("{}{}{}", &question[..start], by, &question[end..]);
        let unstated = check_answer("", passages, &changed).question_unstated;
        unstated
            .iter()
            .any(|f| f.text.to_lowercase().contains(&by.to_lowercase()))
            .then(|| NearMiss {
                question: changed,
                replaced: question[start..end].to_owned(),
                by,
            })
    })
}

/// Every qualifier of `question` that may be changed: a size (`6B` in `ChatGLM3-6B`, `72B`),
/// a bit width (`INT4`, `Int8`, `4-bit`, `4bit`), a GPU (`A100`, `RTX 4090`).
fn changes(question: &str) -> Vec<Change> {
    let mut out = Vec::new();
    for (start, token) in ascii_tokens(question) {
        let mut offset = start;
        for part in token.split('-') {
            if let Some(change) = part_change(part, offset) {
                out.push(change);
            }
            offset += part.len() + 1;
        }
    }
    let lower = question.to_ascii_lowercase();
    for gpu in GPUS {
        let wanted = gpu.to_ascii_lowercase();
        let mut from = 0;
        while let Some(at) = lower[from..].find(&wanted) {
            let start = from + at;
            let end = start + wanted.len();
            from = end;
            let bounded = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric());
            if !bounded(lower[..start].chars().next_back()) || !bounded(lower[end..].chars().next())
            {
                continue;
            }
            out.push(Change {
                start,
                end,
                options: GPUS
                    .iter()
                    .filter(|g| !g.eq_ignore_ascii_case(gpu))
                    .map(|g| (*g).to_owned())
                    .collect(),
            });
        }
    }
    out
}

/// The change of one `-`-separated part of a name starting at byte `offset`: a size
/// (`6B`, `1.8b`), `INT4`/`Int8`, `4bit`.
fn part_change(part: &str, offset: usize) -> Option<Change> {
    let lower = part.to_ascii_lowercase();
    let (prefix, number, suffix, choices): (&str, &str, &str, &[&str]) =
        if let Some(n) = lower.strip_suffix('b').filter(|n| is_number(n)) {
            ("", n, &part[part.len() - 1..], SIZES)
        } else if let Some(n) = lower.strip_prefix("int").filter(|n| is_digits(n)) {
            (&part[..3], n, "", BITS)
        } else if let Some(n) = lower.strip_suffix("bit").filter(|n| is_digits(n)) {
            ("", n, &part[part.len() - 3..], BITS)
        } else {
            return None;
        };
    let options: Vec<String> = choices
        .iter()
        .filter(|c| **c != number)
        .map(|c| format!("{prefix}{c}{suffix}"))
        .collect();
    Some(Change {
        start: offset,
        end: offset + part.len(),
        options,
    })
}

/// Runs of ASCII letters, digits, `.`, `-` and `_` in `text`, with their byte offsets.
fn ascii_tokens(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        let part_of = c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        match (part_of, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, text[s..i].trim_end_matches(['.', '-', '_'])));
                start = None;
            }
            _ => {}
        }
    }
    out
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Digits with at most one decimal point inside them: `6`, `1.8`.
fn is_number(s: &str) -> bool {
    match s.split_once('.') {
        Some((whole, fraction)) => is_digits(whole) && is_digits(fraction),
        None => is_digits(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN_TABLE: &str = "| 模型 | 预训练token数 | 显存 |\n|---|---|---|\n\
        | Qwen-7B | 2.4T | 16GB |\n| Qwen-72B | 3.0T | 144GB |";

    #[test]
    fn a_model_size_becomes_one_the_passages_do_not_state() {
        let asked = "Qwen-72B 在 预训练token数 上是多少？";
        let miss = near_miss_question(asked, &[QWEN_TABLE], 1, "k").expect("a near miss");
        assert_eq!(miss.replaced, "72B");
        assert_ne!(miss.by, "7B", "7B is stated: {miss:?}");
        assert!(miss.question.starts_with("Qwen-"), "{miss:?}");
        assert!(
            miss.question.ends_with(" 在 预训练token数 上是多少？"),
            "{miss:?}"
        );
        // The verification the Ask runs finds the new size unstated, as for a user's near
        // miss.
        assert!(
            !check_answer("", &[QWEN_TABLE], &miss.question)
                .question_unstated
                .is_empty()
        );
    }

    #[test]
    fn the_change_is_fixed_by_seed_and_key_and_varies_with_them() {
        let asked = "Qwen-72B 在 预训练token数 上是多少？";
        let one = near_miss_question(asked, &[QWEN_TABLE], 1, "k");
        assert_eq!(one, near_miss_question(asked, &[QWEN_TABLE], 1, "k"));
        let picked: std::collections::HashSet<String> = (0..20)
            .filter_map(|s| near_miss_question(asked, &[QWEN_TABLE], s, "k"))
            .map(|m| m.by)
            .collect();
        assert!(picked.len() > 3, "{picked:?}");
    }

    #[test]
    fn a_bit_width_and_a_gpu_are_changed_to_unstated_ones() {
        let passage = "ChatGLM-6B 在 INT4 量化下最低只需 6GB 显存，INT8 需要 8GB。";
        for seed in 0..10 {
            let miss = near_miss_question(
                "ChatGLM-6B 用 INT4 量化需要多少显存？",
                &[passage],
                seed,
                "k",
            )
            .expect("a near miss");
            assert!(
                !["INT4", "INT8"].contains(&miss.by.as_str()) || miss.replaced == "6B",
                "{miss:?}"
            );
        }
        let speed = "在 A100-SXM4-80G 上测得 Qwen-7B-Chat-Int4 的生成速度为 50 tokens/s。";
        let asked = "Qwen-7B-Chat-Int4 在 A100 上每秒生成多少 token？";
        let gpus: Vec<NearMiss> = (0..40)
            .filter_map(|s| near_miss_question(asked, &[speed], s, "k"))
            .filter(|m| m.replaced == "A100")
            .collect();
        assert!(!gpus.is_empty());
        assert!(gpus.iter().all(|m| m.by != "A100"));
    }

    #[test]
    fn a_question_without_a_qualifier_or_already_unstated_gives_none() {
        assert_eq!(
            near_miss_question(
                "如何打断模型生成的文本？",
                &["点击 Stop 按钮打断。"],
                1,
                "k"
            ),
            None
        );
        // Already a near miss: the passages never name an RTX 4090.
        assert_eq!(
            near_miss_question(
                "Qwen-7B 在 RTX 4090 上的速度是多少？",
                &["Qwen-7B 在 A100 上的速度是 40 tokens/s。"],
                1,
                "k"
            ),
            None
        );
    }

    #[test]
    fn qualifiers_are_found_inside_names_and_on_their_own() {
        let found: Vec<&str> = {
            let q = "Qwen-1.8B-Chat-Int8 和 7b 在 RTX 4090 上用 4bit 跑";
            changes(q).into_iter().map(|c| &q[c.start..c.end]).collect()
        };
        assert_eq!(found, ["1.8B", "Int8", "7b", "4bit", "RTX 4090"]);
        assert!(changes("ChatGLM3 的 API 地址").is_empty());
    }
}
