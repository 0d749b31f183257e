//! Counterfactual figures: the figures of an example's answer that its prompt also states
//! (`14082` MiB, `6`GB, version `0.2.7`) swapped for other figures of the same shape, in
//! every turn at once, so that the example stays consistent but its figures are not the
//! real ones. A model trained on the real figures learns them as facts of the topic and
//! later answers a neighbouring question of the same passage with the learnt figure (a
//! full fine-tuning figure for LoRA's); trained on swapped ones, the only way to the answer
//! is to read it from the passage. Entity substitution for context reliance: Longpre et
//! al. 2021, "Entity-Based Knowledge Conflicts in Question Answering"; KAFT, Li et al. 2022.

use std::collections::{HashMap, HashSet};

use zhiku_lm::template::Role;

use super::batch::SeededRng;
use super::formats::Conversation;

/// What [`swap_figures`] did, for the user to see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterfactualReport {
    /// Records whose answer states a figure that their prompt states too.
    pub eligible: usize,
    /// Records whose figures were swapped (a share of the eligible ones).
    pub swapped: usize,
    /// Distinct figures swapped, over all records.
    pub figures: usize,
}

/// The byte ranges of the figures in `text`: maximal runs of ASCII digits with single dots
/// between digits (`6`, `13.9`, `0.2.7`). A run that follows an ASCII letter, `_` or `.` is
/// part of a name (`ChatGLM3`, `INT4`, `Qwen2.5`, `v1`) and is not a figure; one that
/// follows `-` or anything else is (`ChatGLM3-6B`'s `6`, `13GB`'s `13`). A passage's number
/// in the prompt (`[2]`) is not a figure either.
pub fn figure_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_digit()
                || (bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)))
        {
            i += 1;
        }
        let in_name = start > 0 && {
            let before = bytes[start - 1];
            before.is_ascii_alphabetic() || before == b'_' || before == b'.'
        };
        // `[2]`: a passage's number in the prompt, not a fact of it.
        let marker = start > 0 && bytes[start - 1] == b'[' && bytes.get(i) == Some(&b']');
        if !in_name && !marker {
            spans.push((start, i));
        }
    }
    spans
}

fn figures(text: &str) -> impl Iterator<Item = &str> {
    figure_spans(text)
        .into_iter()
        .map(move |(a, b)| &text[a..b])
}

/// A figure of the same shape as `figure` (the same groups of digits between dots, a
/// group's first digit zero only where the original's is), drawn with `rng`.
fn same_shape(figure: &str, rng: &mut SeededRng) -> String {
    let digit = |rng: &mut SeededRng, from: u8| {
        char::from(b'0' + from + rng.below(u64::from(10 - from)) as u8)
    };
    figure
        .split('.')
        .map(|group| {
            group
                .bytes()
                .enumerate()
                .map(|(i, b)| match (i, b) {
                    (0, b'0') => '0',
                    (0, _) => digit(rng, 1),
                    _ => digit(rng, 0),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The figures of `record`'s last assistant turn that an earlier user turn states too (and
/// no system turn: the instructions stay as they are), in the order the answer gives them.
fn swappable(record: &Conversation) -> Vec<String> {
    let Some(answer) = record
        .messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)
    else {
        return Vec::new();
    };
    let in_system: HashSet<&str> = record
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .flat_map(|m| figures(&m.content))
        .collect();
    let in_prompt: HashSet<&str> = record.messages[..answer]
        .iter()
        .filter(|m| m.role == Role::User)
        .flat_map(|m| figures(&m.content))
        .collect();
    let mut seen = HashSet::new();
    figures(&record.messages[answer].content)
        .filter(|f| in_prompt.contains(f) && !in_system.contains(f) && seen.insert(*f))
        .map(str::to_owned)
        .collect()
}

/// `text` with every figure that `swaps` names replaced by its swap.
fn replace_figures(text: &str, swaps: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (a, b) in figure_spans(text) {
        if let Some(new) = swaps.get(&text[a..b]) {
            out.push_str(&text[last..a]);
            out.push_str(new);
            last = b;
        }
    }
    out.push_str(&text[last..]);
    out
}

/// Swaps the answer's figures (those its prompt states too) in a `share` (0-1) of the
/// records that have any, drawn with `seed`; each swapped figure gets a new one of its shape
/// that the record states nowhere, replaced in every turn. Other records are kept as they
/// are. Deterministic for the same records, share and seed.
pub fn swap_figures(
    records: &[Conversation],
    share: f64,
    seed: u64,
) -> (Vec<Conversation>, CounterfactualReport) {
    let mut rng = SeededRng::new(seed ^ 0x5EED_C0FF_EE00_F16E);
    let mut report = CounterfactualReport::default();
    let out = records
        .iter()
        .map(|record| {
            let wanted = swappable(record);
            if wanted.is_empty() {
                return record.clone();
            }
            report.eligible += 1;
            // Drawn for every eligible record, so that the share picks the same records
            // whatever was drawn for the swaps before.
            if rng.uniform() >= share {
                return record.clone();
            }
            let mut taken: HashSet<String> = record
                .messages
                .iter()
                .flat_map(|m| figures(&m.content))
                .map(str::to_owned)
                .collect();
            let mut swaps = HashMap::new();
            for figure in wanted {
                // A single digit has 8 others; give up on a figure after a few draws rather
                // than loop where the record states most of them already.
                let new = (0..16)
                    .map(|_| same_shape(&figure, &mut rng))
                    .find(|new| !taken.contains(new));
                if let Some(new) = new {
                    taken.insert(new.clone());
                    swaps.insert(figure, new);
                }
            }
            if swaps.is_empty() {
                return record.clone();
            }
            report.swapped += 1;
            report.figures += swaps.len();
            let mut swapped = record.clone();
            for message in &mut swapped.messages {
                message.content = replace_figures(&message.content, &swaps);
            }
            swapped
        })
        .collect();
    (out, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zhiku_lm::template::Message;

    fn record(system: &str, user: &str, answer: &str) -> Conversation {
        let message = |role, content: &str| Message {
            role,
            content: content.to_owned(),
        };
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(message(Role::System, system));
        }
        messages.push(message(Role::User, user));
        messages.push(message(Role::Assistant, answer));
        Conversation {
            messages,
            origin: "test".into(),
        }
    }

    fn texts(text: &str) -> Vec<&str> {
        figures(text).collect()
    }

    #[test]
    fn figures_are_digit_runs_outside_names() {
        assert_eq!(
            texts(
                "ChatGLM3-6B 的 INT4 量化需要 6GB，LoRA 14082 MiB，Qwen2.5 用 vllm 0.2.7，v1 与 13.9G。"
            ),
            ["6", "6", "14082", "0.2.7", "13.9"]
        );
        assert_eq!(texts("2048。"), ["2048"]);
        assert_eq!(texts("[2] （来源：a.md）\n[12 GB] 与 [3"), ["12", "3"]);
        assert_eq!(texts("a_1 x.5 版本1.2."), ["1.2"]);
        assert!(texts("没有数字").is_empty());
    }

    #[test]
    fn the_answers_figures_are_swapped_in_every_turn_and_keep_their_shape() {
        let r = record(
            "回答不超过 100 字。",
            "已知信息：\nChatGLM3-6B 全参数微调 48346 MiB，LoRA 14082 MiB，版本 0.2.7，100 张卡。\n问题：LoRA 要多少显存？",
            "LoRA 微调需要 14082 MiB（版本 0.2.7），不超过 100。",
        );
        let (out, report) = swap_figures(std::slice::from_ref(&r), 1.0, 7);
        assert_eq!(
            report,
            CounterfactualReport {
                eligible: 1,
                swapped: 1,
                figures: 2
            }
        );
        let (user, answer) = (&out[0].messages[1].content, &out[0].messages[2].content);
        // The new figures: the answer's, now in the passage where the old ones stood.
        let new: Vec<&str> = figures(answer).collect();
        assert_eq!(new.len(), 3);
        assert_ne!(new[0], "14082");
        assert_eq!(new[0].len(), 5);
        assert!(!new[0].starts_with('0'));
        assert_ne!(new[1], "0.2.7");
        assert_eq!(new[1].len(), 5);
        assert!(new[1].starts_with("0.") && new[1].as_bytes()[3] == b'.');
        // 100 is in the system message: an instruction, not a fact of the passage.
        assert_eq!(new[2], "100");
        assert!(user.contains(&format!("LoRA {} MiB", new[0])));
        assert!(user.contains(&format!("版本 {}，100 张卡", new[1])));
        assert!(!user.contains("14082") && !user.contains("0.2.7"));
        // What the answer does not state is untouched.
        assert!(user.contains("ChatGLM3-6B 全参数微调 48346 MiB"));
        assert_eq!(out[0].messages[0].content, "回答不超过 100 字。");
    }

    #[test]
    fn records_without_a_figure_of_the_prompt_and_unpicked_ones_stay_as_they_are() {
        let refusal = record(
            "",
            "已知信息：\n显存 6GB。\n问题：多少层？",
            "根据已知信息无法回答该问题",
        );
        let invented = record("", "已知信息：\n显存 6GB。\n问题：多少？", "需要 8GB。");
        let answer = record("", "已知信息：\n显存 6GB。\n问题：多少？", "需要 6GB。");
        let records = [refusal.clone(), invented.clone(), answer.clone()];
        let (out, report) = swap_figures(&records, 0.0, 1);
        assert_eq!(out, records);
        assert_eq!(report.eligible, 1);
        assert_eq!(report.swapped, 0);
        let (out, report) = swap_figures(&records, 1.0, 1);
        assert_eq!(&out[..2], &records[..2]);
        assert_eq!(report.swapped, 1);
        assert_ne!(out[2], answer);
        let new = figures(&out[2].messages[0].content).next().unwrap_or("?");
        assert_ne!(new, "6");
        assert_eq!(out[2].messages[1].content, format!("需要 {new}GB。"));
        assert_eq!(
            out[2].messages[0].content.replace(new, "6"),
            answer.messages[0].content
        );
    }

    #[test]
    fn the_same_seed_swaps_the_same_way_and_the_share_is_about_kept() {
        let records: Vec<Conversation> = (0..400)
            .map(|i| record("", &format!("已知信息：\n值 {i}。"), &format!("是 {i}。")))
            .collect();
        let (a, report) = swap_figures(&records, 0.5, 3);
        let (b, _) = swap_figures(&records, 0.5, 3);
        let (c, _) = swap_figures(&records, 0.5, 4);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(report.eligible, 400);
        assert!((150..250).contains(&report.swapped), "{report:?}");
        // Every swapped record stays consistent: its answer's figure is its prompt's.
        for r in &a {
            let answer: Vec<&str> = figures(&r.messages[1].content).collect();
            let prompt: Vec<&str> = figures(&r.messages[0].content).collect();
            assert_eq!(answer, prompt);
        }
    }
}
