//! Chinese words by which users name settings, and the names the documents give them.
//!
//! A question asks "学习率是多少"; the answer is `learning_rate: 1.0e-4` in a YAML block or
//! `--lr 2e-5` in a command. Verification needs the pairing to hold a figure to the setting
//! the question names; keyword search needs it to find the line at all (BM25 matches
//! words, and no document line says 学习率).

/// Each Chinese setting word with the setting names (or their last parts: `server-port`,
/// `num-train-epochs`) it stands for, canonical: lower case, words joined by `-`.
pub const SETTING_WORDS: &[(&str, &[&str])] = &[
    ("端口", &["port"]),
    ("学习率", &["lr", "learning-rate"]),
    ("轮数", &["epochs", "epoch"]),
    ("轮次", &["epochs", "epoch"]),
    ("批大小", &["batch-size", "bs"]),
    ("批次大小", &["batch-size", "bs"]),
    ("长度", &["len", "length", "ctx-size"]),
    ("秩", &["rank", "r"]),
    ("梯度累积", &["accumulation-steps", "grad-accum"]),
    ("温度", &["temperature"]),
    ("种子", &["seed"]),
    ("线程", &["threads"]),
    ("步数", &["steps"]),
];

/// The setting names of the Chinese setting words in `text`, as words for keyword search
/// (`learning_rate lr` for 学习率): each name of two characters or more once, `-` as `_`, in
/// the order of [`SETTING_WORDS`]. Empty when `text` names no setting in Chinese.
pub fn setting_keywords(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (word, names) in SETTING_WORDS {
        if !text.contains(word) {
            continue;
        }
        for name in *names {
            // One letter (`r`) is in every other identifier: no keyword.
            let keyword = name.replace('-', "_");
            if keyword.chars().count() >= 2 && !out.contains(&keyword) {
                out.push(keyword);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_setting_words_give_their_names_once() {
        assert_eq!(
            setting_keywords("微调时学习率和批大小是多少？"),
            ["lr", "learning_rate", "batch_size", "bs"]
        );
        // 轮数 and 轮次 share their names; 秩's `r` is too short to search for.
        assert_eq!(
            setting_keywords("轮数、轮次和秩"),
            ["epochs", "epoch", "rank"]
        );
        assert!(setting_keywords("显存要多少？").is_empty());
    }
}
