//! Inline citation markers: each sentence of an answer gets the `[n]` of the passage that
//! best supports it, right after its end (`…看电影。[1]`), in the unary and the streamed
//! answer alike.
//!
//! The small models zhiku runs do not write `[n]` reliably, so the markers are placed here:
//! a sentence is attributed to the passage with the highest lexical support (the share of
//! its character bigrams found in the passage, [`crate::grounding::support`], which works for
//! Chinese without a word splitter), when that support reaches [`MIN_SUPPORT`]. A sentence
//! that already holds a marker the model wrote, or a refusal, gets none.
//!
//! [`Citer`] works on text as it streams: everything passes straight through except the few
//! characters after a sentence's end, held until they show whether the model wrote its own
//! marker there (`。[2]`) or, after `.`, `!` or `?`, whether the sentence really ended
//! (`3.5` does not). Feeding it the whole answer at once gives the same text as feeding it
//! token by token.

use zhiku_proto::v1::Citation;

/// Support a sentence needs from a passage to be attributed to it.
pub const MIN_SUPPORT: f64 = 0.3;

/// Marks the sentences of a text pushed piece by piece.
pub struct Citer {
    passages: Vec<(u32, String)>,
    /// The current sentence so far.
    sentence: String,
    /// After a sentence's end: what came since, held back. `definite`: the end was CJK
    /// punctuation or a newline; else `.`, `!` or `?`, confirmed by a space, a marker or the
    /// end of the text.
    after_end: Option<Held>,
}

struct Held {
    text: String,
    definite: bool,
}

/// What the held text after a sentence's end is.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// Spaces, then perhaps the start of a marker (`[`, `[1`): wait for more.
    Undecided,
    /// Spaces and a whole marker (`[12]`): the model cited this sentence itself.
    Marker,
    /// Anything else: a new sentence begins.
    Other,
}

fn tail(held: &str) -> Tail {
    let rest = held.trim_start();
    let Some(inside) = rest.strip_prefix('[') else {
        return if rest.is_empty() {
            Tail::Undecided
        } else {
            Tail::Other
        };
    };
    let digits = inside.chars().take_while(char::is_ascii_digit).count();
    let after = &inside[digits..];
    match after {
        "" if digits <= 3 => Tail::Undecided,
        "]" if (1..=3).contains(&digits) => Tail::Marker,
        _ => Tail::Other,
    }
}

/// Whether `text` holds a marker `[n]` (what the model may write itself).
fn has_marker(text: &str) -> bool {
    text.match_indices('[').any(|(i, _)| {
        let inside = &text[i + 1..];
        let digits = inside.chars().take_while(char::is_ascii_digit).count();
        (1..=3).contains(&digits) && inside[digits..].starts_with(']')
    })
}

fn ends_definitely(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '…')
}

fn ends_maybe(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ';')
}

impl Citer {
    /// For an answer over these passages (their `number`s are the markers).
    pub fn new(citations: &[Citation]) -> Self {
        Self {
            passages: citations
                .iter()
                .map(|c| (c.number, c.text.clone()))
                .collect(),
            sentence: String::new(),
            after_end: None,
        }
    }

    /// The number of the passage that best supports `sentence`, if one does enough.
    pub fn attribute(&self, sentence: &str) -> Option<u32> {
        if sentence.trim().is_empty()
            || has_marker(sentence)
            || crate::grounding::is_refusal(sentence)
        {
            return None;
        }
        let mut best: Option<(u32, f64)> = None;
        for (number, text) in &self.passages {
            let support = crate::grounding::support(sentence, &[text.as_str()]);
            // Ties go to the earlier (better-ranked) passage.
            if support >= MIN_SUPPORT && best.is_none_or(|(_, b)| support > b) {
                best = Some((*number, support));
            }
        }
        best.map(|(number, _)| number)
    }

    /// The text to send for `piece`: the same characters, with markers put in.
    pub fn push(&mut self, piece: &str) -> String {
        let mut out = String::new();
        for c in piece.chars() {
            self.push_char(c, &mut out);
        }
        out
    }

    /// What is left at the end of the answer (a held tail, the last sentence's marker).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        let held = self.after_end.take();
        let own_marker = held.as_ref().is_some_and(|h| tail(&h.text) == Tail::Marker);
        if !own_marker {
            self.close(&mut out);
        }
        self.sentence.clear();
        if let Some(held) = held {
            out.push_str(&held.text);
        }
        out
    }

    /// Ends the current sentence: its marker, when it has a passage.
    fn close(&mut self, out: &mut String) {
        if let Some(number) = self.attribute(&self.sentence) {
            out.push_str(&format!("[{number}]"));
        }
        self.sentence.clear();
    }

    fn push_char(&mut self, c: char, out: &mut String) {
        if let Some(held) = &mut self.after_end {
            held.text.push(c);
            let definite = held.definite;
            match tail(&held.text) {
                Tail::Undecided => return,
                Tail::Marker => {
                    // The model cited the sentence: its marker as written, none of ours.
                    out.push_str(&held.text);
                    self.after_end = None;
                    self.sentence.clear();
                    return;
                }
                Tail::Other => {}
            }
            let text = std::mem::take(&mut held.text);
            self.after_end = None;
            let confirmed = definite || text.starts_with(|c: char| c.is_whitespace());
            if confirmed {
                self.close(out);
            }
            // Not an end after all (`3.5`): the sentence goes on with these characters.
            for c in text.chars() {
                self.push_char(c, out);
            }
            return;
        }
        if c == '\n' {
            // A line ends a sentence too (lists); the marker goes before the line break.
            if !self.sentence.trim().is_empty() {
                self.close(out);
            }
            self.sentence.clear();
            out.push(c);
            return;
        }
        out.push(c);
        self.sentence.push(c);
        if ends_definitely(c) || ends_maybe(c) {
            self.after_end = Some(Held {
                text: String::new(),
                definite: ends_definitely(c),
            });
        }
    }
}

/// `text` with its markers, in one go (the unary answer).
pub fn cite(text: &str, citations: &[Citation]) -> String {
    let mut citer = Citer::new(citations);
    let mut out = citer.push(text);
    out.push_str(&citer.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passages() -> Vec<Citation> {
        let passage = |number: u32, text: &str| Citation {
            number,
            text: text.into(),
            ..Default::default()
        };
        vec![
            passage(1, "小拾喜欢玩手机、打游戏、看电影。阿敏喜欢吐槽小拾。"),
            passage(
                2,
                "知识库问答的流程：先把文档切成段落，再检索最相近的段落。",
            ),
            passage(3, "Qdrant stores the vectors; the retriever searches them."),
        ]
    }

    /// The same text fed whole and one character at a time.
    fn both(text: &str) -> String {
        let whole = cite(text, &passages());
        let mut citer = Citer::new(&passages());
        let mut streamed: String = text.chars().map(|c| citer.push(&c.to_string())).collect();
        streamed.push_str(&citer.finish());
        assert_eq!(whole, streamed, "streamed and unary differ for {text:?}");
        whole
    }

    #[test]
    fn each_sentence_gets_the_passage_that_supports_it() {
        assert_eq!(
            both("小拾喜欢玩手机和看电影。知识库先把文档切成段落，再检索段落。"),
            "小拾喜欢玩手机和看电影。[1]知识库先把文档切成段落，再检索段落。[2]"
        );
        // The last sentence, cut off without punctuation, is cited too.
        assert_eq!(
            both("阿敏喜欢吐槽小拾！The retriever searches the vectors"),
            "阿敏喜欢吐槽小拾！[1]The retriever searches the vectors[3]"
        );
        assert_eq!(
            both("The retriever searches them. Qdrant stores the vectors."),
            "The retriever searches them.[3] Qdrant stores the vectors.[3]"
        );
    }

    #[test]
    fn unsupported_sentences_and_refusals_get_no_marker() {
        assert_eq!(
            both("今天天气很好。小拾喜欢打游戏。"),
            "今天天气很好。小拾喜欢打游戏。[1]"
        );
        assert_eq!(
            both("根据已知信息无法回答该问题。"),
            "根据已知信息无法回答该问题。"
        );
        assert_eq!(cite("小拾喜欢打游戏。", &[]), "小拾喜欢打游戏。");
    }

    #[test]
    fn markers_the_model_wrote_are_not_doubled() {
        for text in [
            "小拾喜欢玩手机。[1]知识库先把文档切成段落。[2]",
            "小拾喜欢玩手机 [1]。",
            "小拾喜欢玩手机。 [2]",
            "The retriever searches them [3]. Qdrant stores the vectors.[3]",
        ] {
            assert_eq!(both(text), text);
        }
        // A bracket that is not a marker does not stop ours.
        assert_eq!(both("小拾喜欢玩手机。[注]"), "小拾喜欢玩手机。[1][注]");
    }

    #[test]
    fn decimals_lines_and_trailing_spaces() {
        // `3.5` does not end a sentence; a line does, the marker before the break.
        assert_eq!(
            both("- 小拾喜欢玩手机\n- 版本 3.5 的检索最相近的段落\n"),
            "- 小拾喜欢玩手机[1]\n- 版本 3.5 的检索最相近的段落[2]\n"
        );
        assert_eq!(both("小拾喜欢玩手机。\n\n"), "小拾喜欢玩手机。[1]\n\n");
        assert_eq!(both(""), "");
    }

    #[test]
    fn attribution_prefers_the_best_supported_passage() {
        let citer = Citer::new(&passages());
        assert_eq!(citer.attribute("检索最相近的段落"), Some(2));
        assert_eq!(citer.attribute("小拾喜欢看电影"), Some(1));
        assert_eq!(citer.attribute("Milvus 是另一种数据库"), None);
        assert_eq!(citer.attribute("   "), None);
    }
}
